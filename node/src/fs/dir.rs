//! [`Dir`]: a directory capability. Every file a job names is reached from an opened
//! root directory one component at a time with `O_NOFOLLOW`, so no symbolic link,
//! `..` or rename of a parent during the walk can lead outside the root: a component
//! that is a symlink fails the walk instead of being followed. Files are then opened
//! relative to the opened directory, never by path, and only regular files are used
//! (`O_NONBLOCK` so that a FIFO swapped in cannot block the open).
//!
//! Blocking system calls; callers run them on the blocking pool (or on the thread that
//! acts as the job owner, [`super::identity`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The xattr naming the principal a file was written for (principals without an OS
/// identity of their own share ferryd's uid; this tells their files apart).
pub(crate) const OWNER_XATTR: &str = "user.ferry.owner";
/// The xattr naming the job file a temporary file belongs to (`<job>/<index>`).
pub(crate) const TEMP_XATTR: &str = "user.ferry.temp";

/// An opened directory.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

/// What a file's metadata says about who may replace or reuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    /// Device.
    pub(crate) dev: u64,
    /// Inode.
    pub(crate) ino: u64,
    /// Owner.
    pub(crate) uid: u32,
    /// Hard links to it.
    pub(crate) nlink: u64,
}

/// What changes whenever a file's bytes do: its identity, size and change time (ctime,
/// which no one can set back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: i64,
    ctime: i64,
    ctime_nsec: u64,
}

impl Stamp {
    /// The stamp of an open file now.
    pub(crate) fn of(file: &File) -> io::Result<Self> {
        Ok(Self::from_stat(&rustix::fs::fstat(file)?))
    }

    fn from_stat(stat: &rustix::fs::Stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: stat.st_size,
            ctime: stat.st_ctime,
            ctime_nsec: stat.st_ctime_nsec,
        }
    }
}

impl FileId {
    /// The identity of an open file; an error unless it is a regular file.
    pub(crate) fn of(file: &File) -> io::Result<Self> {
        Self::from_stat(&rustix::fs::fstat(file)?)
    }

    /// The identity and the stamp of an open file, from one look at it; an error unless
    /// it is a regular file.
    pub(crate) fn with_stamp(file: &File) -> io::Result<(Self, Stamp)> {
        let stat = rustix::fs::fstat(file)?;
        Ok((Self::from_stat(&stat)?, Stamp::from_stat(&stat)))
    }

    fn from_stat(stat: &rustix::fs::Stat) -> io::Result<Self> {
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(not_regular());
        }
        Ok(Self { dev: stat.st_dev, ino: stat.st_ino, uid: stat.st_uid, nlink: stat.st_nlink })
    }
}

fn not_regular() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "not a regular file")
}

/// True if `e` is what `O_NOFOLLOW` answers for a symbolic link.
pub(crate) fn is_symlink_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ELOOP || code == libc::ENOTDIR)
}

impl Dir {
    /// Opens a root directory named by configuration (symlinks in its own path are
    /// followed: the administrator chose it).
    pub(crate) fn open_root(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    /// The directory `relative` (plain components only) below this one, reached without
    /// following any symlink; with `create`, missing directories are made (mode 0755).
    pub(crate) fn open_beneath(&self, relative: &Path, create: bool) -> io::Result<Self> {
        let mut current: Option<OwnedFd> = None;
        for component in relative.components() {
            let Component::Normal(name) = component else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only plain path components are allowed below a root",
                ));
            };
            let parent = current.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(parent, name, flags, Mode::empty())?
                }
                other => other?,
            };
            current = Some(next);
        }
        let Some(path_fd) = current else {
            return Ok(Self { fd: self.fd.try_clone()? });
        };
        // O_PATH descriptors cannot be synced: reopen the last one for reading.
        let fd = rustix::fs::openat(
            &path_fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    /// Opens the regular file `name` here without following a symlink (a symlink is
    /// refused as `PermissionDenied`).
    pub(crate) fn open_file(&self, name: &OsStr, write: bool) -> io::Result<File> {
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is a symbolic link, which Ferry never follows", name.display()),
            ),
            other => other.into(),
        })?;
        let file = File::from(fd);
        FileId::of(&file)?;
        set_blocking(&file)?;
        Ok(file)
    }

    /// Creates `name` here exclusively (never an existing file or a symlink's target).
    pub(crate) fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// What is at `name` (a symlink is reported as itself), or `None`.
    pub(crate) fn stat(&self, name: &OsStr) -> io::Result<Option<(FileType, u32)>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some((FileType::from_raw_mode(stat.st_mode), stat.st_uid))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Device and inode of the entry `name` itself (a symlink is not followed), if any.
    pub(crate) fn identity(&self, name: &OsStr) -> io::Result<Option<(u64, u64)>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some((stat.st_dev, stat.st_ino))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the entry `name` (a symlink itself, never its target); absent is fine.
    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to`, both in this directory (replacing what `to` names).
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(Into::into)
    }

    /// Moves `from` here to `to` in directory `other` (replacing what `to` names).
    pub(crate) fn rename_into(&self, from: &OsStr, other: &Self, to: &OsStr) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &other.fd, to).map_err(Into::into)
    }

    /// Makes `to` here a hard link of the file at `from` (a path, not followed if a
    /// symlink); `false` if they lie on different file systems.
    pub(crate) fn link_from(&self, from: &Path, to: &OsStr) -> io::Result<bool> {
        match rustix::fs::linkat(rustix::fs::CWD, from, &self.fd, to, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::XDEV) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the directory's entries durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(Into::into)
    }
}

/// Clears `O_NONBLOCK` (set only so that opening a FIFO could not block).
fn set_blocking(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::NONBLOCK)?;
    Ok(())
}

/// Reads a short xattr of an open file (`None`: absent or unsupported).
pub(crate) fn read_xattr(file: &File, name: &str) -> Option<OsString> {
    let mut buffer = [0u8; 256];
    let len = rustix::fs::fgetxattr(file, name, &mut buffer[..]).ok()?;
    Some(OsStr::from_bytes(&buffer[..len]).to_owned())
}

/// Reads an xattr of an open file of any length (`None`: absent or unsupported).
pub(crate) fn read_xattr_bytes(file: &File, name: &str) -> io::Result<Option<Vec<u8>>> {
    let mut buffer = vec![0u8; 64 * 1024];
    match rustix::fs::fgetxattr(file, name, &mut buffer[..]) {
        Ok(len) => {
            buffer.truncate(len);
            Ok(Some(buffer))
        }
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names of an open file's xattrs (none where they are unsupported).
pub(crate) fn xattr_names(file: &File) -> io::Result<Vec<String>> {
    let mut buffer = vec![0u8; 64 * 1024];
    let len = match rustix::fs::flistxattr(file, &mut buffer[..]) {
        Ok(len) => len,
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(buffer[..len]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .filter_map(|name| std::str::from_utf8(name).ok().map(str::to_owned))
        .collect())
}

/// Sets an xattr of an open file; filesystems without user xattrs are tolerated (the
/// file then cannot be recognised later, which only ever refuses more).
pub(crate) fn write_xattr(file: &File, name: &str, value: &str) -> io::Result<()> {
    match rustix::fs::fsetxattr(file, name, value.as_bytes(), rustix::fs::XattrFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_below_a_root_are_never_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("f"), tmp.path().join("real/f"))
            .expect("symlink");
        let root = Dir::open_root(tmp.path()).expect("root");

        let err = root.open_beneath(Path::new("link"), false).expect_err("a symlink");
        assert!(is_symlink_refusal(&err), "{err}");
        let err = root.open_beneath(Path::new("link/sub"), true).expect_err("a symlink");
        assert!(is_symlink_refusal(&err), "{err}");
        assert!(!outside.path().join("sub").exists(), "nothing made through the link");
        assert!(root.open_beneath(Path::new("../x"), false).is_err());

        let real = root.open_beneath(Path::new("real"), false).expect("a directory");
        let err = real.open_file(OsStr::new("f"), true).expect_err("a symlink");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        let err = real.create_new(OsStr::new("f"), 0o600).expect_err("exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(!outside.path().join("f").exists(), "nothing created at the link's target");
        real.remove(OsStr::new("f")).expect("the link itself is removed");
        assert!(real.create_new(OsStr::new("f"), 0o600).is_ok());
    }

    #[test]
    fn only_regular_files_are_opened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("d")).expect("mkdir");
        let fifo = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("p"))
            .status()
            .is_ok_and(|s| s.success());
        let root = Dir::open_root(tmp.path()).expect("root");
        assert!(root.open_file(OsStr::new("d"), false).is_err());
        if fifo {
            // O_NONBLOCK: the open returns at once, and the FIFO is refused.
            assert!(root.open_file(OsStr::new("p"), true).is_err());
        }
        let made = root.open_beneath(Path::new("new/deeper"), true).expect("created");
        made.create_new(OsStr::new("x"), 0o600).expect("file");
        assert!(tmp.path().join("new/deeper/x").is_file());
    }
}
