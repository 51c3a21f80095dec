//! Who may set which notify command line (`SetNotifyCmdLine`).
//!
//! The notify command line is a code-execution primitive (MITRE ATT&CK T1197): whatever
//! program a job names runs on its home node. Administrators may name any program;
//! users only the programs an administrator listed in `[notify] allowed_programs`.
//! [`check`] refuses the rest at the API, before anything is proposed; the home node
//! asks [`NotifyPolicy::permits`] again before it runs a program, since its
//! configuration may differ from the accepting node's or have changed since.
//!
//! Who a program runs as (never root) is the home node's business, not this module's.

use std::path::{Component, Path, PathBuf};

use ferry_protocol::command::{Command, PropertyChanges};
use ferry_protocol::{BitsCode, Caller, Role};

use crate::problem::ApiError;

/// The programs users may name in a notify command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyPolicy {
    /// Absolute paths from `[notify] allowed_programs`, compared component by component
    /// (no `..` or symlink resolution: a spelling that differs is refused).
    allowed_programs: Vec<PathBuf>,
}

impl NotifyPolicy {
    /// A policy allowing users `allowed_programs` (absolute paths; the node's
    /// configuration checks them).
    pub fn new(allowed_programs: Vec<PathBuf>) -> Self {
        Self { allowed_programs }
    }

    /// True if a job owned (or changed) by a principal of `role` may run `program`:
    /// administrators any program, users those listed.
    pub fn permits(&self, role: Role, program: &str) -> bool {
        role == Role::Admin || self.lists(program)
    }

    /// True if `program` is one of the allowed programs, spelled as listed.
    fn lists(&self, program: &str) -> bool {
        let program = Path::new(program);
        program.is_absolute()
            && !program.components().any(|c| c == Component::ParentDir)
            && self.allowed_programs.iter().any(|allowed| allowed.as_path() == program)
    }
}

/// Refuses a command by which a user would set a notify command line whose program
/// `policy` does not allow: 403 `E_ACCESSDENIED`, naming the setting. Clearing the
/// command line, and every other command, passes.
pub fn check(policy: &NotifyPolicy, caller: &Caller, command: &Command) -> Result<(), ApiError> {
    let changes: &PropertyChanges = match command {
        Command::CreateJob { spec, .. } | Command::CreateFleet { spec, .. } => &spec.properties,
        Command::SetProperties { changes, .. } => changes,
        _ => return Ok(()),
    };
    let Some(Some(cmdline)) = &changes.notify_cmdline else { return Ok(()) };
    if policy.permits(caller.role, &cmdline.program) {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        BitsCode::E_ACCESSDENIED,
        format!(
            "users may set a notify command line only for programs listed in the node's \
             [notify] allowed_programs setting, and {:?} is not listed; ask an administrator \
             to add it there (every node that may be a job's home node needs it)",
            cmdline.program
        ),
    ))
}

#[cfg(test)]
mod tests {
    use ferry_protocol::command::NewJob;
    use ferry_protocol::job::NotifyCmdLine;
    use ferry_protocol::{JobId, Principal};

    use super::*;

    fn caller(role: Role) -> Caller {
        Caller { principal: Principal::new("alice".to_owned()).expect("name"), role }
    }

    fn set(program: Option<&str>) -> Command {
        let cmdline = program.map(|p| NotifyCmdLine { program: p.into(), args: vec![] });
        let changes = PropertyChanges { notify_cmdline: Some(cmdline), ..Default::default() };
        Command::SetProperties { job: JobId::generate(), changes }
    }

    fn create(program: &str, fleet: bool) -> Command {
        let cmdline = NotifyCmdLine { program: program.into(), args: vec!["-c".into()] };
        let properties =
            PropertyChanges { notify_cmdline: Some(Some(cmdline)), ..Default::default() };
        let spec = NewJob {
            display_name: "j".into(),
            job_type: Default::default(),
            properties,
            files: vec![],
        };
        if fleet {
            Command::CreateFleet {
                fleet: JobId::generate(),
                members: vec![],
                spec,
                credentials: vec![],
            }
        } else {
            Command::CreateJob { id: JobId::generate(), home_node: 1, spec }
        }
    }

    fn refused(r: Result<(), ApiError>) -> bool {
        r.is_err_and(|e| {
            e.problem.status == 403
                && e.problem.code == BitsCode::E_ACCESSDENIED
                && e.problem.detail.contains("[notify] allowed_programs")
        })
    }

    #[test]
    fn users_may_name_only_listed_programs_admins_any() {
        let policy = NotifyPolicy::new(vec!["/usr/bin/logger".into()]);
        let (user, admin) = (caller(Role::User), caller(Role::Admin));
        for command in [set(Some("/bin/sh")), create("/bin/sh", false), create("/bin/sh", true)] {
            assert!(refused(check(&policy, &user, &command)), "{command:?}");
            assert!(check(&policy, &admin, &command).is_ok());
        }
        assert!(check(&policy, &user, &set(Some("/usr/bin/logger"))).is_ok());
        assert!(check(&policy, &user, &create("/usr/bin/logger", true)).is_ok());
        assert!(check(&policy, &user, &set(None)).is_ok(), "clearing is always allowed");
        assert!(refused(check(&NotifyPolicy::default(), &user, &set(Some("/usr/bin/logger")))));
    }

    #[test]
    fn other_spellings_of_a_listed_program_are_refused() {
        let policy = NotifyPolicy::new(vec!["/usr/bin/logger".into()]);
        assert!(policy.permits(Role::User, "/usr/bin//logger"), "same components");
        for spelling in ["/usr/bin/../bin/logger", "usr/bin/logger", "logger", "/usr/bin/logger2"] {
            assert!(!policy.permits(Role::User, spelling), "{spelling}");
        }
        assert!(policy.permits(Role::Admin, "/bin/sh"));
    }
}
