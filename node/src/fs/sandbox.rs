//! A principal's sandbox: the roots its jobs may name local files in, opened once as
//! directory capabilities, and the OS identity its file operations run as.
//!
//! [`Sandbox::place`] turns a job's absolute path into an opened parent directory and
//! a name, reached from a root without following symlinks (see [`super::dir`]).
//! Principals this node has no token entry for get the node's default roots and no
//! identity, as users.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_coordinator::TokenEntry;
use ferry_protocol::{Principal, Role};

use super::dir::{self, Dir, FileId, OWNER_XATTR, Stamp};
use super::identity::{Identity, acting_as};

/// An opened root directory.
#[derive(Debug)]
struct Root {
    /// As configured.
    configured: PathBuf,
    /// With symlinks resolved (jobs may name either form).
    real: PathBuf,
    dir: Dir,
}

/// One principal's sandbox.
#[derive(Debug)]
pub(crate) struct Sandbox {
    principal: String,
    roots: Vec<Arc<Root>>,
    /// The OS identity its file operations run as; `None`: ferryd's own.
    identity: Option<Identity>,
    /// Administrators may replace files that are not theirs.
    admin: bool,
}

/// A sandbox of a principal of the cluster, with what it was opened for.
type ClusterSandbox = ((Role, Option<Vec<PathBuf>>), Arc<Sandbox>);

/// Opens a root directory.
fn open_root(path: &Path) -> io::Result<Arc<Root>> {
    let real = path.canonicalize().map_err(|e| {
        io::Error::new(e.kind(), format!("the root {} cannot be used: {e}", path.display()))
    })?;
    let dir = Dir::open_root(&real)?;
    Ok(Arc::new(Root { configured: path.to_path_buf(), real, dir }))
}

/// A file's place: its opened parent directory and its name there.
pub(crate) struct Place {
    /// The parent directory.
    pub(crate) dir: Dir,
    /// The file's name in it.
    pub(crate) name: OsString,
}

fn refused(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, detail)
}

impl Sandbox {
    /// Runs `f` as this principal's identity (on a thread of its own) or as ferryd.
    pub(crate) fn run<T, F>(self: &Arc<Self>, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Self>) -> io::Result<T> + Send + 'static,
    {
        let me = self.clone();
        acting_as(self.identity, move || f(&me))
    }

    /// The uid files of this principal are owned by.
    pub(crate) fn file_owner(&self) -> u32 {
        self.identity.map_or_else(|| rustix::process::geteuid().as_raw(), |i| i.uid)
    }

    /// Whether this principal's files carry their owner in an xattr (no OS identity).
    pub(crate) fn marks_owner(&self) -> bool {
        self.identity.is_none()
    }

    /// Whether a file may be given another owner or group through this sandbox: for an
    /// administrator, or as the OS user the principal acts as (the kernel then decides,
    /// as for that user). Never for a principal that acts as ferryd itself.
    pub(crate) fn may_chown(&self) -> bool {
        self.admin || self.identity.is_some()
    }

    /// The principal's name.
    pub(crate) fn principal(&self) -> &str {
        &self.principal
    }

    /// Opens the directory of `path` beneath one of the roots (creating missing
    /// directories with `create_dirs`) and names the file in it. Call it through
    /// [`Sandbox::run`] so that the walk has the principal's rights.
    pub(crate) fn place(&self, path: &Path, create_dirs: bool) -> io::Result<Place> {
        if self.roots.is_empty() {
            return Err(refused(format!(
                "{} may not name local files on this node: no roots are configured for it \
                 (set `roots` on its [[api.tokens]] entry or [transfer] destination_roots)",
                self.principal
            )));
        }
        let below = self
            .roots
            .iter()
            .flat_map(|root| {
                [&root.configured, &root.real].into_iter().filter_map(move |form| {
                    ferry_coordinator::roots::beneath(form, path).map(|rest| (root, rest))
                })
            })
            .filter(|(_, rest)| rest.components().count() > 0)
            .min_by_key(|(_, rest)| rest.components().count());
        let Some((root, rest)) = below else {
            let list: Vec<String> =
                self.roots.iter().map(|r| r.configured.display().to_string()).collect();
            return Err(refused(format!(
                "{} is outside the directories {} may use ({})",
                path.display(),
                self.principal,
                list.join(", ")
            )));
        };
        let name = rest.file_name().map(ToOwned::to_owned).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
        })?;
        let parent = rest.parent().unwrap_or(Path::new(""));
        let dir = root.dir.open_beneath(parent, create_dirs).map_err(|e| {
            if dir::is_symlink_refusal(&e) {
                refused(format!(
                    "{}: a directory on the way is a symbolic link; Ferry follows none below \
                     a root (name the real path)",
                    path.display()
                ))
            } else {
                io::Error::new(e.kind(), format!("the directory of {}: {e}", path.display()))
            }
        })?;
        Ok(Place { dir, name })
    }

    /// Refuses to replace what is at `place` unless it is a regular file of this
    /// principal (its owner uid, or its owner xattr for principals without an OS
    /// identity); administrators may replace any regular file.
    pub(crate) fn check_replaceable(
        &self,
        dir: &Dir,
        name: &OsStr,
        shown: &Path,
    ) -> io::Result<()> {
        let Some((kind, uid)) = dir.stat(name)? else {
            return Ok(());
        };
        if kind != rustix::fs::FileType::RegularFile {
            return Err(refused(format!("{} exists and is not a regular file", shown.display())));
        }
        if self.admin {
            return Ok(());
        }
        let theirs = match self.identity {
            Some(identity) => uid == identity.uid,
            None => {
                let file = dir.open_file(name, false)?;
                FileId::of(&file)?;
                dir::read_xattr(&file, OWNER_XATTR).is_some_and(|o| o == self.principal.as_str())
            }
        };
        if theirs {
            Ok(())
        } else {
            Err(refused(format!(
                "{} exists and belongs to someone other than {}; it is never replaced",
                shown.display(),
                self.principal
            )))
        }
    }
}

/// Every principal's sandbox on this node, plus what the engine knows of the
/// temporary files it made.
#[derive(Debug)]
pub(crate) struct Sandboxes {
    by_principal: HashMap<String, Arc<Sandbox>>,
    default_roots: Vec<Arc<Root>>,
    /// The cluster's principals, for owners no token entry of this node names.
    directory: Option<Arc<dyn ferry_coordinator::auth::Directory>>,
    /// Their sandboxes, opened on first use, with the role and roots they were opened
    /// for (a principal made again with other roots gets a new one).
    cluster_sandboxes: Mutex<HashMap<String, ClusterSandbox>>,
    /// Device and inode of every temporary file this process created or verified,
    /// by path: a reopen must find the same file.
    known_temps: Mutex<HashMap<PathBuf, (u64, u64)>>,
    /// Temporary files this process finished, with their stamp then: one whose stamp is
    /// unchanged at Complete holds the bytes this process wrote and checked.
    sealed_temps: Mutex<HashMap<PathBuf, Stamp>>,
}

impl Sandboxes {
    /// Opens every root named by `entries` and `default_roots`, and checks that this
    /// process may act as every configured identity.
    pub(crate) fn open(entries: &[TokenEntry], default_roots: &[PathBuf]) -> io::Result<Self> {
        let mut opened: HashMap<PathBuf, Arc<Root>> = HashMap::new();
        let mut open = |path: &PathBuf| -> io::Result<Arc<Root>> {
            if let Some(root) = opened.get(path) {
                return Ok(root.clone());
            }
            let root = open_root(path)?;
            opened.insert(path.clone(), root.clone());
            Ok(root)
        };
        let default: Vec<Arc<Root>> =
            default_roots.iter().map(&mut open).collect::<Result<_, _>>()?;
        let mut by_principal = HashMap::new();
        for entry in entries {
            let roots = match &entry.roots {
                Some(list) => list.iter().map(&mut open).collect::<Result<_, _>>()?,
                None => default.clone(),
            };
            let identity = entry.uid.map(|uid| Identity { uid, gid: entry.gid.unwrap_or(uid) });
            if let Some(identity) = identity {
                identity.check().map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "principal {} is mapped to uid {} gid {}, but ferryd cannot act as \
                             it ({e}); run ferryd as root or with CAP_SETUID and CAP_SETGID",
                            entry.principal, identity.uid, identity.gid
                        ),
                    )
                })?;
            }
            let sandbox = Sandbox {
                principal: entry.principal.clone(),
                roots,
                identity,
                admin: entry.role == Role::Admin,
            };
            by_principal.insert(entry.principal.clone(), Arc::new(sandbox));
        }
        Ok(Self {
            by_principal,
            default_roots: default,
            directory: None,
            cluster_sandboxes: Mutex::default(),
            known_temps: Mutex::default(),
            sealed_temps: Mutex::default(),
        })
    }

    /// These sandboxes, with those of the cluster's principals from `directory`.
    pub(crate) fn with_directory(
        mut self,
        directory: Arc<dyn ferry_coordinator::auth::Directory>,
    ) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The sandbox of the principal owning a job: its token entry's on this node, else
    /// its own as a principal of the cluster (no OS identity: those are per machine),
    /// else the node's default roots, as a user.
    pub(crate) fn of(&self, owner: &Principal) -> Arc<Sandbox> {
        if let Some(sandbox) = self.by_principal.get(owner.as_str()) {
            return sandbox.clone();
        }
        let default = || {
            Arc::new(Sandbox {
                principal: owner.as_str().to_owned(),
                roots: self.default_roots.clone(),
                identity: None,
                admin: false,
            })
        };
        let Some(entry) = self.directory.as_ref().and_then(|d| d.entry(owner)) else {
            return default();
        };
        let mut cache = lock(&self.cluster_sandboxes);
        if let Some((opened_for, sandbox)) = cache.get(owner.as_str())
            && *opened_for == entry
        {
            return sandbox.clone();
        }
        let roots = match &entry.1 {
            // A root missing on this node is left out: paths beneath it are refused.
            Some(list) => list
                .iter()
                .filter_map(|path| {
                    open_root(path)
                        .inspect_err(|e| tracing::warn!(principal = %owner, error = %e, "a root of a principal of the cluster cannot be opened on this node"))
                        .ok()
                })
                .collect(),
            None => self.default_roots.clone(),
        };
        let sandbox = Arc::new(Sandbox {
            principal: owner.as_str().to_owned(),
            roots,
            identity: None,
            admin: entry.0 == Role::Admin,
        });
        cache.insert(owner.as_str().to_owned(), (entry, sandbox.clone()));
        sandbox
    }

    /// Remembers the identity of a temporary file.
    pub(crate) fn remember_temp(&self, path: &Path, id: FileId) {
        lock(&self.known_temps).insert(path.to_path_buf(), (id.dev, id.ino));
    }

    /// The identity remembered for a temporary file.
    pub(crate) fn known_temp(&self, path: &Path) -> Option<(u64, u64)> {
        lock(&self.known_temps).get(path).copied()
    }

    /// Forgets a temporary file (renamed or deleted).
    pub(crate) fn forget_temp(&self, path: &Path) {
        lock(&self.known_temps).remove(path);
        lock(&self.sealed_temps).remove(path);
    }

    /// Records that this process finished the temporary file at `path` (every byte
    /// written, hashed as received, and synced) and how it looked then.
    pub(crate) fn seal_temp(&self, path: &Path, stamp: Stamp) {
        lock(&self.sealed_temps).insert(path.to_path_buf(), stamp);
    }

    /// The stamp a temporary file had when this process finished it.
    pub(crate) fn sealed_temp(&self, path: &Path) -> Option<Stamp> {
        lock(&self.sealed_temps).get(path).copied()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
