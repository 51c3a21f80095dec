//! `SetFileACLFlags` (`BG_COPY_FILE_*`) for files of local (`file://`) sources: what of
//! the source's owner, group, mode, POSIX ACL and extended attributes the temporary
//! file takes before Complete renames it into place.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use ferry_protocol::job::acl;
use ferry_protocol::{Job, JobFile};

use crate::fs::Sandbox;
use crate::fs::dir::{self, OWNER_XATTR, TEMP_XATTR};

/// The local source of `file` and the job's ACL flags, when both are there: BITS copies
/// owner and ACL information only from file-system sources (SMB), never over HTTP.
pub(super) fn acl_source(job: &Job, file: &JobFile) -> Option<(PathBuf, u32)> {
    let flags = job.props().acl_flags;
    if flags == 0 {
        return None;
    }
    let url = url::Url::parse(&file.remote_url).ok().filter(|u| u.scheme() == "file")?;
    Some((url.to_file_path().ok()?, flags))
}

/// `SetFileACLFlags` for a file of a local source, before its rename: the source's
/// owner (`BG_COPY_FILE_OWNER`) and group (`GROUP`) when the sandbox may give them,
/// its permission bits and POSIX access ACL (`DACL`; never set-id or sticky bits), and
/// its `user.*` extended attributes (`SACL`, the nearest POSIX has to other security
/// information; `security.*` attributes such as file capabilities are never copied).
pub(super) fn copy_acl(
    sandbox: &Sandbox,
    file: &File,
    source: &Path,
    flags: u32,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let place = sandbox.place(source, false)?;
    let from = place.dir.open_file(&place.name, false)?;
    let meta = from.metadata()?;
    let (owner, group) = (flags & acl::OWNER != 0, flags & acl::GROUP != 0);
    if owner || group {
        if !sandbox.may_chown() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} may not give files another owner or group (BG_COPY_FILE_OWNER/GROUP): \
                 that takes an administrator or a principal acting as an OS user",
                    sandbox.principal()
                ),
            ));
        }
        rustix::fs::fchown(
            file,
            owner.then(|| rustix::fs::Uid::from_raw(meta.uid())),
            group.then(|| rustix::fs::Gid::from_raw(meta.gid())),
        )?;
    }
    if flags & acl::DACL != 0 {
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(meta.mode() & 0o777))?;
        copy_xattr(&from, file, "system.posix_acl_access")?;
    }
    if flags & acl::SACL != 0 {
        for name in dir::xattr_names(&from)? {
            if name.starts_with("user.") && name != OWNER_XATTR && name != TEMP_XATTR {
                copy_xattr(&from, file, &name)?;
            }
        }
    }
    Ok(())
}

/// Copies extended attribute `name` of `from` to `to`, if `from` has it.
fn copy_xattr(from: &File, to: &File, name: &str) -> io::Result<()> {
    let Some(value) = dir::read_xattr_bytes(from, name)? else { return Ok(()) };
    rustix::fs::fsetxattr(to, name, &value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}
