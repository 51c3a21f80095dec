//! The home node's side of a helper: another member fetching pieces of a file from
//! the origin for this node. A piece the helper cannot deliver goes back to the
//! router and the helper is lost for the file; a helper that misses pings loses its
//! piece in seconds.

use ferry_protocol::transfer::{ChunkRecord, Piece};
use ferry_protocol::{JobId, NodeId};
use tokio::sync::mpsc;

use super::desk::{Ask, Desk};
use crate::peer::liveness::PING_EVERY;
use crate::replica::ClusterView;
use crate::transfer::failure::Stop;
use crate::transfer::fetch::{ChunkWriter, Fetch};
use crate::transfer::helper::{self, ChunkAnswer, ChunkRequest, MAX_HELPER_PIECE};
use crate::transfer::router::Worker;
use crate::transfer::scope;

/// Another member fetching pieces of a file for this (its home) node.
pub(super) struct Helper {
    pub(super) node: NodeId,
    pub(super) cluster: ClusterView,
    pub(super) fetch: Fetch,
    pub(super) job: JobId,
    pub(super) run: u64,
    /// This node's applied index when the file started: the helper waits for it.
    pub(super) applied: u64,
}

impl Helper {
    /// Takes pieces from `queue` until it is empty; a piece the helper cannot deliver
    /// goes back to the queue and the helper stops (it is not asked again this round).
    /// A piece is written (and its record sent on `done` as soon as it is durable)
    /// while the helper already fetches the next one: a crash of this node loses at
    /// most the pieces still on their way.
    pub(super) async fn work(
        &self,
        queue: &Desk,
        done: &mpsc::Sender<ChunkRecord>,
    ) -> Result<(), Stop> {
        let mut writing: Option<tokio::task::JoinHandle<()>> = None;
        let outcome = loop {
            let next = queue.next_origin(Worker::Helper(self.node), MAX_HELPER_PIECE).await;
            let Some(piece) = next else { break Ok(()) };
            let asked = self.ask(piece).await;
            // One piece written at a time: the one before is durable (and reported).
            if let Some(handle) = writing.take() {
                let _ = handle.await;
            }
            match asked {
                Ok(bytes) => {
                    let writer =
                        ChunkWriter::new(self.fetch.temp.clone(), piece.local_offset, piece.len);
                    let (queue, done, job) = (queue.clone(), done.clone(), self.job);
                    writing = Some(scope::spawn(async move {
                        match write_piece(writer, piece, bytes).await {
                            Ok(record) => {
                                crate::metrics::get().received("helper", record.len);
                                let _ = done.send(record).await;
                            }
                            Err(e) => {
                                tracing::warn!(%job, piece = piece.index, error = %e, "cannot write a helper's piece");
                                queue.tell(Ask::GiveBack(piece)).await;
                            }
                        }
                    }));
                }
                Err(HelperError::RemoteChanged(why)) => break Err(Stop::RestartFile(why)),
                Err(HelperError::Lost(why)) => {
                    tracing::info!(job = %self.job, helper = self.node, piece = piece.index, %why, "a helper gave its piece back");
                    queue.tell(Ask::HelperLost(self.node, piece)).await;
                    break Ok(());
                }
            }
        };
        if let Some(handle) = writing.take() {
            let _ = handle.await;
        }
        outcome
    }

    /// Returns once the helper left pings unanswered for [`helper::SILENCE`] (counted
    /// from the call): a dead helper loses its piece in seconds, not at the piece's
    /// deadline.
    async fn gone(&self) {
        let since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(PING_EVERY).await;
            if !self.cluster.liveness.alive(self.node, helper::SILENCE, since) {
                return;
            }
        }
    }

    /// One piece's bytes through the helper, checked (length, digest).
    async fn ask(&self, piece: Piece) -> Result<Vec<u8>, HelperError> {
        let request = ChunkRequest {
            job: self.job,
            run: self.run,
            applied: self.applied,
            file: self.fetch.file,
            url: self.fetch.url.clone(),
            remote: self.fetch.remote.clone(),
            offset: piece.remote_offset,
            len: piece.len,
        };
        let asking = ask_chunk(&self.cluster, self.node, request);
        let answer = tokio::select! {
            answer = asking => answer.map_err(|e| HelperError::Lost(e.to_string()))?,
            () = self.gone() => {
                return Err(HelperError::Lost("the helper stopped answering pings".into()));
            }
        };
        let (bytes, digest) = match answer {
            ChunkAnswer::Bytes { bytes, digest } => (bytes.into_vec(), digest),
            ChunkAnswer::Restart(why) => return Err(HelperError::RemoteChanged(why)),
            ChunkAnswer::Stale => {
                return Err(HelperError::Lost("the helper does not know the run".into()));
            }
            ChunkAnswer::Failed { error, .. } => {
                return Err(HelperError::Lost(format!("{}: {}", error.code, error.detail)));
            }
        };
        // Hashing megabytes is CPU work: off the runtime threads Raft shares.
        let (bytes, actual) = scope::spawn_blocking(move || {
            let actual = *blake3::hash(&bytes).as_bytes();
            (bytes, actual)
        })
        .await
        .map_err(|e| HelperError::Lost(e.to_string()))?;
        if bytes.len() as u64 != piece.len || actual != digest {
            return Err(HelperError::Lost(format!(
                "{} bytes that do not match their digest (wanted {})",
                bytes.len(),
                piece.len
            )));
        }
        Ok(bytes)
    }
}

/// Writes a helper's piece at its offset and makes it durable: its record.
pub(super) async fn write_piece(
    mut writer: ChunkWriter,
    piece: Piece,
    bytes: Vec<u8>,
) -> std::io::Result<ChunkRecord> {
    writer.push(&bytes).await?;
    writer.seal(piece.index, true).await
}

/// Why a helper's piece did not arrive.
enum HelperError {
    /// The remote file changed (the whole run starts the file over).
    RemoteChanged(String),
    /// The helper failed, stalled or is gone: the piece goes back to the queue.
    Lost(String),
}

/// Asks helper `node` for a piece.
async fn ask_chunk(
    cluster: &ClusterView,
    node: NodeId,
    request: ChunkRequest,
) -> crate::error::Result<ChunkAnswer> {
    let deadline = helper::deadline(request.len);
    cluster.call(node, &request, deadline).await
}
