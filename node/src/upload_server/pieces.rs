//! The pieces of upload sessions this node received: written durably at their offset
//! into one file per session, `<data-dir>/upload-pieces/<session>/received` (so a
//! session whose pieces all came here is whole in it, and is handed over by a link,
//! not a copy), served to the member that gathers a session, and swept once their
//! session ended. A session's reply is kept beside it as the piece `u64::MAX`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_coordinator::ClusterError;
use ferry_protocol::codec::ByteBuf;
use ferry_protocol::peer::UploadPiece;

use crate::feed::Feed;
use crate::peer::rpc::Router;
use crate::replica::ClusterView;

/// Most bytes of a piece fetched from another node in one call.
pub(crate) const GATHER_CHUNK: u32 = 4 * 1024 * 1024;
/// How long a member has to send [`GATHER_CHUNK`] bytes of a piece.
const GATHER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Serves [`UploadPiece`] for other members: bytes of the pieces this node received,
/// kept under `pieces`.
pub(crate) fn register(router: &Router, pieces: PathBuf) {
    let pieces = Arc::new(pieces);
    router.add_handler::<UploadPiece, _, _>(move |_, request| {
        let pieces = pieces.clone();
        async move {
            let UploadPiece { session, offset, from, len } = request;
            let read = tokio::task::spawn_blocking(move || {
                read_piece(&pieces, &session, offset, from, len)
            })
            .await;
            match read {
                Ok(Ok(bytes)) => Ok(ByteBuf::from(bytes)),
                Ok(Err(e)) => Err(ClusterError::Unavailable(format!("upload piece: {e}"))),
                Err(e) => Err(ClusterError::Unavailable(e.to_string())),
            }
        }
    });
}

/// Bytes `from..from + len` of the upload piece at `offset` of `session` that `node`
/// holds (see [`UploadPiece`]).
pub(super) async fn fetch_piece(
    cluster: &ClusterView,
    node: ferry_protocol::NodeId,
    session: &str,
    offset: u64,
    from: u64,
    len: u32,
) -> crate::Result<Vec<u8>> {
    let request = UploadPiece { session: session.to_owned(), offset, from, len };
    cluster.call(node, &request, GATHER_TIMEOUT).await.map(ByteBuf::into_vec)
}

/// A session's piece directory name (ids are printable; keep only safe characters).
pub(super) fn dir_name(session: &str) -> String {
    session.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

pub(super) fn piece_path(pieces: &Path, session: &str, offset: u64) -> PathBuf {
    pieces.join(dir_name(session)).join(offset.to_string())
}

/// The file a session's pieces received here are written into, each at its offset.
pub(super) fn received_path(pieces: &Path, session: &str) -> PathBuf {
    pieces.join(dir_name(session)).join(RECEIVED)
}

/// Name of the file of [`received_path`] in a session's directory.
const RECEIVED: &str = "received";

/// A session's received file, open to write a fragment's bytes at their offsets.
pub(super) struct Received {
    file: std::fs::File,
    /// The session's directory, if this opening created the file (synced with it).
    created_in: Option<PathBuf>,
}

impl Received {
    /// Opens (creating it and its directory) the received file of `session`.
    pub(super) fn open(pieces: &Path, session: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = received_path(pieces, session);
        let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent"))?;
        std::fs::create_dir_all(dir)?;
        let open = |create| {
            std::fs::OpenOptions::new().write(true).create_new(create).mode(0o644).open(&path)
        };
        match open(true) {
            Ok(file) => Ok(Self { file, created_in: Some(dir.to_owned()) }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(Self { file: open(false)?, created_in: None })
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `frames`, one after another, from `offset` of the file.
    pub(super) fn write_all_at(&self, frames: &[Bytes], mut offset: u64) -> std::io::Result<()> {
        for frame in frames {
            std::os::unix::fs::FileExt::write_all_at(&self.file, frame, offset)?;
            offset += frame.len() as u64;
        }
        Ok(())
    }

    /// Makes what was written durable (and the file's name, if it was created).
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()?;
        match &self.created_in {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }
}

/// Writes `bytes` to `path` (creating its directory) and makes it durable.
pub(super) fn durable_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads `len` bytes from `from` of the piece at `offset` of `session` (for a member
/// gathering a session; the caller is authenticated by the peer transport).
pub(crate) fn read_piece(
    pieces: &Path,
    session: &str,
    offset: u64,
    from: u64,
    len: u32,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = len.min(GATHER_CHUNK);
    let (path, at) = if offset == super::REPLY_PIECE {
        (piece_path(pieces, session, offset), from)
    } else {
        let at = offset.checked_add(from).ok_or_else(|| std::io::Error::other("past the end"))?;
        (received_path(pieces, session), at)
    };
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(at))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(u64::from(len)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Removes, every minute after sessions changed, the pieces of sessions that ended
/// (closed, cancelled or timed out on any node): each node holds pieces only while
/// their session lives.
pub(crate) async fn sweep_pieces(cluster: ClusterView, pieces: PathBuf) {
    let mut feed = cluster.state.feed().subscribe();
    let mut changed = true;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.tick().await;
    loop {
        tokio::select! {
            delivery = feed.next() => match delivery {
                Some(Feed::Changed(batch)) => changed |= batch.sessions,
                Some(Feed::Reset) => changed = true,
                None => return,
            },
            _ = tick.tick(), if changed => {
                changed = false;
                let open: std::collections::HashSet<String> =
                    cluster.state.read().queue.upload_sessions().map(|s| dir_name(&s.id)).collect();
                let Ok(entries) = std::fs::read_dir(&pieces) else { continue };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !open.contains(&name) {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
    }
}

pub(super) async fn durable_write_async(path: &Path, bytes: Vec<u8>) -> crate::error::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || durable_write(&path, &bytes)).await??;
    Ok(())
}
