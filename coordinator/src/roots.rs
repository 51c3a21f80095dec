//! Where each principal may name local files: its own roots (`[[api.tokens]] roots`),
//! else the node's `[transfer] destination_roots`; none means no local file at all.
//!
//! The API checks every local path of a request here, by its components, before
//! anything is proposed, so a path outside the caller's roots costs no log entry and
//! gets a 403 naming the setting. The home node enforces the same roots structurally
//! when it touches the files (its directory capabilities); this check is the early,
//! clear answer, not the guard.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::NewFile;
use ferry_protocol::command::{Command, PropertyChanges};
use ferry_protocol::{BitsCode, Caller, Principal};

use crate::auth::TokenEntry;
use crate::problem::ApiError;

/// Each principal's roots.
#[derive(Clone, Default)]
pub struct LocalRoots {
    own: HashMap<String, Vec<PathBuf>>,
    default: Vec<PathBuf>,
    directory: Option<Arc<dyn crate::auth::Directory>>,
}

impl LocalRoots {
    /// Roots from token entries, with `default` for principals that set none.
    pub fn new(entries: &[TokenEntry], default: Vec<PathBuf>) -> Self {
        let own = entries
            .iter()
            .filter_map(|e| e.roots.clone().map(|roots| (e.principal.clone(), roots)))
            .collect();
        Self { own, default, directory: None }
    }

    /// These roots, with those of the cluster's principals from `directory` for
    /// principals that no token entry of this node names.
    pub fn with_directory(mut self, directory: Arc<dyn crate::auth::Directory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The roots of `principal`: its token entry's, else its own as a principal of the
    /// cluster, else the node's default.
    pub fn of(&self, principal: &Principal) -> Cow<'_, [PathBuf]> {
        if let Some(own) = self.own.get(principal.as_str()) {
            return Cow::Borrowed(own);
        }
        match self.directory.as_ref().and_then(|d| d.entry(principal)).and_then(|(_, r)| r) {
            Some(roots) => Cow::Owned(roots),
            None => Cow::Borrowed(&self.default),
        }
    }

    /// Refuses a command naming a local file outside the caller's roots.
    pub fn check(&self, caller: &Caller, command: &Command) -> Result<(), ApiError> {
        let roots = self.of(&caller.principal);
        for path in local_paths(command) {
            check_path(&caller.principal, &roots, path)?;
        }
        Ok(())
    }
}

/// The local paths a command names (`file://` sources with their URL path as is: a
/// percent-encoded one that decodes outside the roots is refused by the home node).
fn local_paths(command: &Command) -> Vec<&str> {
    fn props(p: &PropertyChanges) -> Vec<&str> {
        let reply = p.reply_file_name.as_ref().and_then(Option::as_deref);
        let certificate = p.client_certificate.as_ref().and_then(Option::as_deref);
        reply.into_iter().chain(certificate).collect()
    }
    /// A file's destination, and its source when that is a local `file://` URL.
    fn of_file(file: &NewFile) -> impl Iterator<Item = &str> {
        let source = file.remote_url.strip_prefix("file://");
        std::iter::once(file.local_path.as_str()).chain(source)
    }
    match command {
        Command::CreateJob { spec, .. } | Command::CreateFleet { spec, .. } => {
            let mut paths: Vec<&str> = spec.files.iter().flat_map(of_file).collect();
            paths.extend(props(&spec.properties));
            paths
        }
        Command::AddFiles { files, .. } => files.iter().flat_map(of_file).collect(),
        Command::SetProperties { changes, .. } => props(changes),
        Command::ChangeFile { changes, .. } => changes
            .remote_url
            .as_deref()
            .and_then(|u| u.strip_prefix("file://"))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// The part of `path` below `root`, if `path` lies beneath it (by whole components).
pub fn beneath<'a>(root: &Path, path: &'a Path) -> Option<&'a Path> {
    path.strip_prefix(root).ok()
}

/// 403 unless `path` lies beneath one of `roots`.
fn check_path(principal: &Principal, roots: &[PathBuf], path: &str) -> Result<(), ApiError> {
    if roots.is_empty() {
        return Err(ApiError::new(
            403,
            BitsCode::E_ACCESSDENIED,
            format!(
                "{principal} may not name local files on this node: no roots are configured \
                 for it (set `roots` on its [[api.tokens]] entry or [transfer] destination_roots)"
            ),
        ));
    }
    let path = Path::new(path);
    if roots
        .iter()
        .any(|root| beneath(root, path).is_some_and(|rest| rest.components().count() > 0))
    {
        return Ok(());
    }
    let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(ApiError::new(
        403,
        BitsCode::E_ACCESSDENIED,
        format!(
            "{} is outside the directories {principal} may use ({}; the `roots` of its \
             [[api.tokens]] entry or [transfer] destination_roots)",
            path.display(),
            list.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::Role;

    fn caller(name: &str) -> Caller {
        Caller { principal: Principal::new(name.to_owned()).expect("name"), role: Role::User }
    }

    #[test]
    fn paths_must_lie_beneath_the_callers_roots() {
        let mut alice = TokenEntry::new("alice-token-0123456789", "alice", Role::User);
        alice.roots = Some(vec!["/srv/alice".into()]);
        let roots = LocalRoots::new(&[alice], vec!["/srv/shared".into()]);
        let alice = caller("alice");
        let bob = caller("bob");
        assert!(check_path(&alice.principal, &roots.of(&alice.principal), "/srv/alice/f").is_ok());
        assert!(check_path(&alice.principal, &roots.of(&alice.principal), "/srv/alice").is_err());
        assert!(
            check_path(&alice.principal, &roots.of(&alice.principal), "/srv/alicex/f").is_err()
        );
        assert!(
            check_path(&alice.principal, &roots.of(&alice.principal), "/srv/shared/f").is_err()
        );
        assert!(check_path(&bob.principal, &roots.of(&bob.principal), "/srv/shared/f").is_ok());
        let none = LocalRoots::new(&[], Vec::new());
        let refused =
            check_path(&bob.principal, &none.of(&bob.principal), "/tmp/f").expect_err("no roots");
        assert_eq!(refused.problem.status, 403);
    }
}
