//! The node's data directory: created private (0700), holding the node id, the
//! generated admin token (0600) when no tokens are configured, and the address the API
//! is bound to. The redb files live here too (see [`crate::raft`]).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Context as _, Error};

/// File names inside the data directory.
pub mod files {
    /// The Raft log database.
    pub const RAFT_LOG: &str = "raft-log.redb";
    /// The state-machine database.
    pub const STATE: &str = "state.redb";
    /// This node's Raft id, decimal.
    pub const NODE_ID: &str = "node.id";
    /// The generated admin token (only when no tokens are configured).
    pub const ADMIN_TOKEN: &str = "admin.token";
    /// The address the API is bound to, while the node runs.
    pub const API_ADDR: &str = "api.addr";
    /// The peer (QUIC) address, while the node runs.
    pub const PEER_ADDR: &str = "peer.addr";
    /// The key that seals job passwords (32 bytes, 0600).
    pub const SECRET_KEY: &str = "secret.key";
    /// BITS upload fragments received by this node, by session and offset.
    pub const UPLOAD_PIECES: &str = "upload-pieces";
    /// Completed uploads, unless `[upload] root` says otherwise.
    pub const UPLOADS: &str = "uploads";
}

/// An opened data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory if needed and makes it private (0700): it holds the job
    /// queue and credentials.
    pub fn open(root: &Path) -> crate::error::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("cannot create data directory {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make data directory {} private", root.display()))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// The names in the directory now.
    pub fn entries(&self) -> crate::error::Result<BTreeSet<OsString>> {
        let listing = fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?;
        let mut names = BTreeSet::new();
        for entry in listing {
            names.insert(
                entry.with_context(|| format!("cannot list {}", self.root.display()))?.file_name(),
            );
        }
        Ok(names)
    }

    /// Removes what was made in the directory since `before` was listed (a first start
    /// that failed to join leaves nothing behind); a failure is only logged.
    pub fn remove_new(&self, before: &BTreeSet<OsString>) {
        let Ok(now) = self.entries() else { return };
        for name in now.difference(before) {
            let path = self.root.join(name);
            let removed =
                if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The node id: read from `node.id`, or `first` written there on first start.
    pub fn node_id(&self, first: u64) -> crate::error::Result<u64> {
        let path = self.path(files::NODE_ID);
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a node id", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_new(&path, format!("{first}\n").as_bytes(), 0o600)?;
                Ok(first)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The generated admin token: read from `admin.token`, or created there (0600).
    pub fn admin_token(&self) -> crate::error::Result<String> {
        let path = self.path(files::ADMIN_TOKEN);
        match fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= 16 => Ok(text.trim().to_owned()),
            Ok(_) => Err(Error::Config(format!(
                "{} holds no usable token; delete it to get a new one",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(|e| {
                    Error::Config(format!("no randomness for the admin token: {e}"))
                })?;
                let token = hex::encode(secret);
                write_new(&path, format!("{token}\n").as_bytes(), 0o600)?;
                tracing::info!(path = %path.display(), "created an admin token (no API tokens are configured)");
                Ok(token)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The key that seals secrets at rest: read from `secret.key`, or created there.
    pub fn secret_key(&self) -> crate::error::Result<ferry_coordinator::SecretKey> {
        let path = self.path(files::SECRET_KEY);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ferry_coordinator::SecretKey::generate()?;
                write_new(&path, &key, 0o600)?;
                key.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        ferry_coordinator::SecretKey::from_bytes(&bytes)
            .with_context(|| format!("{} does not hold a secret key", path.display()))
    }

    /// Records the bound API address (replaced atomically).
    pub fn write_api_addr(&self, addr: std::net::SocketAddr) -> crate::error::Result<()> {
        self.write_addr(files::API_ADDR, addr)
    }

    /// Records the bound peer address (replaced atomically).
    pub fn write_peer_addr(&self, addr: std::net::SocketAddr) -> crate::error::Result<()> {
        self.write_addr(files::PEER_ADDR, addr)
    }

    fn write_addr(&self, name: &str, addr: std::net::SocketAddr) -> crate::error::Result<()> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        write_new(&tmp, format!("{addr}\n").as_bytes(), 0o644)?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Removes the recorded addresses (the node is stopping).
    pub fn clear_api_addr(&self) {
        let _ = fs::remove_file(self.path(files::API_ADDR));
        let _ = fs::remove_file(self.path(files::PEER_ADDR));
    }
}

/// Creates `path` exclusively with `mode` and writes `bytes`, durably.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> crate::error::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_token_persist_with_private_modes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::open(&tmp.path().join("d")).expect("open");
        assert_eq!(dir.node_id(1).expect("id"), 1);
        assert_eq!(dir.node_id(7).expect("id"), 1, "the first id sticks");
        let token = dir.admin_token().expect("token");
        assert_eq!(token.len(), 64);
        assert_eq!(dir.admin_token().expect("again"), token);
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        fs::set_permissions(tmp.path().join("d"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        DataDir::open(&tmp.path().join("d")).expect("reopen");
        assert_eq!(mode(&dir.path(files::ADMIN_TOKEN)), 0o600);
        assert_eq!(mode(&tmp.path().join("d")), 0o700);
    }
}
