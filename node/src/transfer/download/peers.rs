//! Peer workers: a file's pieces fetched from members' copies (each checked against
//! the digest its holder recorded; a copy caught serving wrong bytes is withdrawn), and
//! the fleet watcher that tells the router which fleet members miss pings.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_protocol::transfer::{ChunkRecord, Piece};
use ferry_protocol::{JobId, NodeId};
use tokio::sync::mpsc;

use super::desk::{Ask, Desk};
use super::helper_client::write_piece;
use crate::peer::liveness::PING_EVERY;
use crate::replica::ClusterView;
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::{ChunkWriter, Fetch};
use crate::transfer::helper;
use crate::transfer::peer_cache::{self, CopyAnswer, CopyRequest};
use crate::transfer::router::Holder;
use crate::transfer::scope;

/// Tells `queue`, every [`PING_EVERY`], which other members of fleet `fleet` left pings
/// unanswered for [`helper::SILENCE`] (see `peer::liveness`), until aborted.
pub(super) async fn watch_fleet(cluster: ClusterView, fleet: JobId, queue: Desk) {
    let since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let unreachable: BTreeSet<NodeId> = (cluster.state.read().queue.fleet_jobs(&fleet).iter())
            .map(|job| job.home_node())
            .filter(|node| !cluster.liveness.alive(*node, helper::SILENCE, since))
            .collect();
        queue.tell(Ask::Unreachable(unreachable)).await;
    }
}

/// A peer worker: takes pieces from members' copies until none is left for peers. A
/// piece a holder cannot deliver goes to another holder or the origin; a holder whose
/// bytes do not match the recorded digest has its copy withdrawn. Like an origin
/// worker, it asks for its next piece as soon as the last one's bytes are checked and
/// writes that one meanwhile (one write at a time): a worker waiting for its write
/// leaves a quarter of the node's download idle for it, on every piece.
pub(super) async fn from_peers(
    cluster: &ClusterView,
    fetch: &Fetch,
    queue: &Desk,
    done: &mpsc::Sender<ChunkRecord>,
) -> Result<(), Stop> {
    let mut writing: Option<tokio::task::JoinHandle<Result<(), Stop>>> = None;
    let outcome = loop {
        let Some((piece, holders)) = queue.next_peer().await else { break Ok(()) };
        let holder = holders[0];
        let asked = tokio::time::Instant::now();
        match fetch_copy(cluster, holder, piece).await {
            Ok(bytes) => {
                if let Some(previous) = writing.take()
                    && let Err(stop) = finished(previous, fetch).await
                {
                    break Err(stop);
                }
                let writer = ChunkWriter::new(fetch.temp.clone(), piece.local_offset, piece.len);
                let (done, file) = (done.clone(), fetch.file);
                writing = Some(scope::spawn(async move {
                    let mut record = write_piece(writer, piece, bytes).await.map_err(|e| {
                        Stop::from(Failure::local(
                            &e,
                            "cannot write the temporary file",
                            Some(file),
                        ))
                    })?;
                    crate::metrics::get().received("peer", record.len);
                    record.from_peer = true;
                    let _ = done.send(record).await;
                    Ok(())
                }));
            }
            Err(CopyError::Busy) => {
                tracing::debug!(node = holder.node, piece = piece.index, "a peer is busy");
                crate::metrics::get().peer_busy();
                queue.tell(Ask::PeerBusy(piece, holder.node, asked.elapsed())).await;
            }
            Err(CopyError::Missing(why)) => {
                tracing::debug!(node = holder.node, piece = piece.index, %why, "a peer's copy did not deliver");
                queue.tell(Ask::PeerFailed(piece, holder.node)).await;
            }
            Err(CopyError::Wrong(why)) => {
                tracing::warn!(node = holder.node, job = %holder.job, %why, "a peer's copy is corrupt; withdrawing it");
                let mismatch = Some((piece.index, holder.digest));
                peer_cache::withdraw(cluster, holder.job, holder.file, mismatch).await;
                queue.tell(Ask::PeerFailed(piece, holder.node)).await;
            }
        }
    };
    if let Some(previous) = writing.take() {
        finished(previous, fetch).await?;
    }
    outcome
}

/// A peer worker's write, awaited.
async fn finished(
    write: tokio::task::JoinHandle<Result<(), Stop>>,
    fetch: &Fetch,
) -> Result<(), Stop> {
    write.await.map_err(|_| super::internal(fetch.file, "a write failed"))?
}

/// How long a peer has to deliver a chunk: 5 s plus a second per 256 KiB. A holder
/// sends up to `max_serving` (10) chunks at once over its upload, and the asker takes
/// up to ten at once over its download: on 5 MB/s links a chunk flows at about
/// 0.5 MB/s. A second per 4 MiB (the deadline before) cut such chunks off, and they
/// went to the origin again (calibrate at 5 MB/s: origin egress 1.14-2.44 × the file).
fn copy_deadline(len: u64) -> Duration {
    Duration::from_secs(5 + len / (256 * 1024))
}

/// Why a copy's chunk did not arrive.
pub(crate) enum CopyError {
    /// The holder is unreachable or no longer has it.
    Missing(String),
    /// Every serving slot of the holder is taken: another holder, or this one later.
    Busy,
    /// The bytes do not match the digest the holder recorded: its copy is withdrawn.
    Wrong(String),
}

/// Fetches `piece` from `holder` (through the peer link, or read here when this node
/// holds it) and checks length and digest.
pub(crate) async fn fetch_copy(
    cluster: &ClusterView,
    holder: Holder,
    piece: Piece,
) -> Result<Vec<u8>, CopyError> {
    let request = CopyRequest { job: holder.job, file: holder.file, index: piece.index };
    // A holder that is this node answers through its own router, like any other.
    let answer = ask_copy(cluster, holder.node, request, piece.len)
        .await
        .map_err(|e| CopyError::Missing(e.to_string()))?;
    let bytes = match answer {
        CopyAnswer::Bytes(bytes) => bytes.into_vec(),
        CopyAnswer::Missing(why) => return Err(CopyError::Missing(why)),
        CopyAnswer::Busy => return Err(CopyError::Busy),
    };
    // Hashing megabytes is CPU work: off the runtime threads Raft shares.
    let (bytes, actual) = scope::spawn_blocking(move || {
        let actual = *blake3::hash(&bytes).as_bytes();
        (bytes, actual)
    })
    .await
    .map_err(|e| CopyError::Missing(e.to_string()))?;
    if bytes.len() as u64 != piece.len || actual != holder.digest {
        return Err(CopyError::Wrong(format!(
            "node {} sent {} bytes for chunk {} that do not match the recorded digest",
            holder.node,
            bytes.len(),
            piece.index
        )));
    }
    Ok(bytes)
}

/// Asks member `node` for a chunk of its copy.
async fn ask_copy(
    cluster: &ClusterView,
    node: NodeId,
    request: CopyRequest,
    len: u64,
) -> crate::error::Result<CopyAnswer> {
    cluster.call(node, &request, copy_deadline(len)).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::copy_deadline;

    #[test]
    fn a_chunk_shared_ten_ways_over_a_slow_link_is_not_cut_off() {
        // Ten serves over a holder's 2.5 MB/s upload: 250 KB/s for each chunk.
        for len in [2 << 20, 8 << 20, 12 << 20] {
            let takes = Duration::from_secs_f64(len as f64 / 250_000.0);
            assert!(copy_deadline(len) > takes, "{len} bytes: {:?}", copy_deadline(len));
        }
    }
}
