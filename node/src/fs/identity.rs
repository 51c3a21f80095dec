//! Acting as a job owner's OS identity, as BITS impersonates the owner for every file
//! operation: the kernel then checks the owner's own rights, and what is created
//! belongs to the owner.
//!
//! Linux keeps credentials per thread (the C library makes `setuid` process-wide by
//! signalling every thread; the raw system calls do not). An operation that acts as a
//! user runs on a fresh thread that sets its supplementary groups, effective gid and
//! effective uid, runs, and ends: nothing of the identity can leak into a thread that
//! serves another job. Switching needs `CAP_SETUID` and `CAP_SETGID` (ferryd as root,
//! or a unit granting those two capabilities).

use std::io;

use rustix::process::{Gid, Uid};

/// An OS user and group to act as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// User id.
    pub(crate) uid: u32,
    /// Group id (also the only supplementary group while acting).
    pub(crate) gid: u32,
}

impl Identity {
    /// Runs `f` as this identity on a thread of its own, and waits for it.
    pub(crate) fn run<T, F>(self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let thread = std::thread::Builder::new().name(format!("ferry-fs-uid-{}", self.uid)).spawn(
            move || {
                self.assume()?;
                f()
            },
        )?;
        thread.join().map_err(|_| io::Error::other("a file operation panicked"))?
    }

    /// Switches the calling thread to this identity (for good: the thread must end).
    fn assume(self) -> io::Result<()> {
        let gid = Gid::from_raw(self.gid);
        rustix::thread::set_thread_groups(&[gid])?;
        rustix::thread::set_thread_res_gid(None, Some(gid), None)?;
        rustix::thread::set_thread_res_uid(None, Some(Uid::from_raw(self.uid)), None)?;
        if rustix::process::geteuid().as_raw() != self.uid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot act as uid {}", self.uid),
            ));
        }
        Ok(())
    }

    /// Checks at start that this process may act as the identity.
    pub(crate) fn check(self) -> io::Result<()> {
        self.run(|| Ok(()))
    }
}

/// Runs `f` as `identity`, or as ferryd itself when there is none.
pub(crate) fn acting_as<T, F>(identity: Option<Identity>, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match identity {
        Some(identity) => identity.run(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_made_while_acting_belong_to_the_user() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: acting as another user needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        let nobody = Identity { uid: 65534, gid: 65534 };
        let made = dir.join("made");
        nobody
            .run({
                let made = made.clone();
                move || std::fs::write(made, b"x")
            })
            .expect("written as nobody");
        let meta = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).expect("meta"));
        assert_eq!(meta, 65534);
        // The kernel checks the user's rights: root's private file is out of reach.
        let private = dir.join("private");
        std::fs::write(&private, b"secret").expect("write");
        std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let read = nobody.run(move || std::fs::read(private));
        assert_eq!(read.expect_err("refused").kind(), io::ErrorKind::PermissionDenied);
        // This thread was never switched.
        assert!(rustix::process::geteuid().is_root());
    }
}
