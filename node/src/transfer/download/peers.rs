//! Peer workers: a file's pieces fetched from members' copies (each checked against
//! the digest its holder recorded; a copy caught serving wrong bytes is withdrawn), and
//! the fleet watcher that tells the router which fleet members miss pings.

use std::collections::BTreeSet;
use std::future::Future as _;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use ferry_protocol::transfer::{ChunkRecord, Piece};
use ferry_protocol::{JobId, NodeId};
use tokio::sync::{mpsc, oneshot};

use super::desk::{Ask, Desk};
use super::helper_client::write_piece;
use crate::peer::endpoint::NearEnd;
use crate::peer::liveness::PING_EVERY;
use crate::replica::ClusterView;
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::{ChunkWriter, Fetch};
use crate::transfer::helper;
use crate::transfer::peer_cache::{self, CopyAnswer, CopyRequest};
use crate::transfer::router::{Holder, PIPELINE_ROUND_TRIPS};
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
/// bytes do not match the recorded digest has its copy withdrawn. It pipelines: when
/// its current piece is [`PIPELINE_ROUND_TRIPS`] from its last byte, it asks for the
/// next one, and asks again at once if that one is answered busy (a worker that asked
/// only once its piece was in left its share of the node's download idle for a round
/// trip per piece, and for every busy answer after).
/// It writes each piece while it fetches the next, one write at a time.
pub(super) async fn from_peers(
    cluster: &ClusterView,
    fetch: &Fetch,
    queue: &Desk,
    done: &mpsc::Sender<ChunkRecord>,
) -> Result<(), Stop> {
    let mut writing: Option<tokio::task::JoinHandle<Result<(), Stop>>> = None;
    // At most two fetches at once: the current one, and the next once the current
    // one nears its end; none started once the desk has no piece left for peers.
    let mut flights: Vec<Flight> = Vec::with_capacity(2);
    let mut exhausted = false;
    let outcome = loop {
        if !exhausted && flights.len() < 2 && flights.iter().all(|f| f.told) {
            flights.push(Flight::start(cluster, queue));
        }
        if flights.is_empty() {
            break Ok(());
        }
        let (i, landed) = match turn(&mut flights).await {
            Turn::Near => continue,
            Turn::Landed(i, landed) => (i, landed),
        };
        flights.swap_remove(i);
        let Fetched { piece, holder, asked, result } = match landed {
            Ok(Some(fetched)) => fetched,
            Ok(None) => {
                exhausted = true;
                continue;
            }
            Err(_) => break Err(super::internal(fetch.file, "a peer fetch failed")),
        };
        match result {
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
    // Stopped: the download ends, and the pieces still on their way with it.
    for flight in flights {
        flight.task.abort();
    }
    if let Some(previous) = writing.take() {
        finished(previous, fetch).await?;
    }
    outcome
}

/// A peer worker's fetch on its way, in a task of its own (so that the worker's next
/// fetch can run beside it), and whether its answer was told to near its end.
struct Flight {
    task: tokio::task::JoinHandle<Option<Fetched>>,
    /// Until told, or until the fetch ends without telling (a busy answer, this
    /// node's own copy).
    near: Option<oneshot::Receiver<()>>,
    told: bool,
}

/// A piece asked of a holder, and what came of it.
struct Fetched {
    piece: Piece,
    holder: Holder,
    asked: tokio::time::Instant,
    result: Result<Vec<u8>, CopyError>,
}

impl Flight {
    /// Asks the desk for a piece and fetches it from its best holder; the task ends
    /// with `None` once no piece is left for peers.
    fn start(cluster: &ClusterView, queue: &Desk) -> Self {
        let (tell, near) = oneshot::channel();
        let (cluster, queue) = (cluster.clone(), queue.clone());
        let task = scope::spawn(async move {
            let (piece, holders) = queue.next_peer().await?;
            let holder = *holders.first()?;
            let asked = tokio::time::Instant::now();
            let result = fetch_copy(&cluster, holder, piece, tell).await;
            Some(Fetched { piece, holder, asked, result })
        });
        Self { task, near: Some(near), told: false }
    }
}

/// What happened next to a worker's flights.
enum Turn {
    /// One was told its answer nears its end.
    Near,
    /// One (by index) ended.
    Landed(usize, Result<Option<Fetched>, tokio::task::JoinError>),
}

/// Waits for the next [`Turn`] of `flights`.
async fn turn(flights: &mut [Flight]) -> Turn {
    std::future::poll_fn(|cx| {
        for (i, flight) in flights.iter_mut().enumerate() {
            if let Poll::Ready(landed) = Pin::new(&mut flight.task).poll(cx) {
                return Poll::Ready(Turn::Landed(i, landed));
            }
            if let Some(near) = &mut flight.near
                && let Poll::Ready(told) = Pin::new(near).poll(cx)
            {
                flight.near = None;
                if told.is_ok() {
                    flight.told = true;
                    return Poll::Ready(Turn::Near);
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// A peer worker's write, awaited.
async fn finished(
    write: tokio::task::JoinHandle<Result<(), Stop>>,
    fetch: &Fetch,
) -> Result<(), Stop> {
    write.await.map_err(|_| super::internal(fetch.file, "a write failed"))?
}

/// How long a peer has to deliver a chunk: 5 s plus a second per 128 KiB. A holder
/// sends up to twenty of a fleet's pieces at once over its upload (`max_serving`),
/// and the asker takes up to twenty at once over its download: on 5 MB/s links a
/// piece flows at about 0.25 MB/s. A second per 4 MiB (the deadline before) cut such
/// chunks off, and they went to the origin again (calibrate at 5 MB/s: origin egress
/// 1.14-2.44 × the file).
fn copy_deadline(len: u64) -> Duration {
    Duration::from_secs(5 + len / (128 * 1024))
}

/// Why a copy's chunk did not arrive.
enum CopyError {
    /// The holder is unreachable or no longer has it.
    Missing(String),
    /// Every serving slot of the holder is taken: another holder, or this one later.
    Busy,
    /// The bytes do not match the digest the holder recorded: its copy is withdrawn.
    Wrong(String),
}

/// Fetches `piece` from `holder` (through the peer link, or read here when this node
/// holds it) and checks length and digest; `near` is told when the bytes are a round
/// trip from their end.
async fn fetch_copy(
    cluster: &ClusterView,
    holder: Holder,
    piece: Piece,
    near: oneshot::Sender<()>,
) -> Result<Vec<u8>, CopyError> {
    let request = CopyRequest { job: holder.job, file: holder.file, index: piece.index };
    // A holder that is this node answers through its own router, like any other.
    let answer = ask_copy(cluster, holder.node, request, piece.len, near)
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

/// Asks member `node` for a chunk of its copy (`len` bytes), telling `near` when the
/// bytes are a round trip from their end.
async fn ask_copy(
    cluster: &ClusterView,
    node: NodeId,
    request: CopyRequest,
    len: u64,
    tell: oneshot::Sender<()>,
) -> crate::error::Result<CopyAnswer> {
    let expected = usize::try_from(len).unwrap_or(usize::MAX);
    let near = NearEnd { expected, round_trips: PIPELINE_ROUND_TRIPS, tell };
    cluster.call_near(node, &request, copy_deadline(len), near).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::copy_deadline;

    #[test]
    fn a_chunk_shared_twenty_ways_over_a_slow_link_is_not_cut_off() {
        // Twenty serves over a holder's 2.5 MB/s upload: 125 KB/s for each chunk.
        for len in [1 << 20, 2 << 20, 8 << 20, 12 << 20] {
            let takes = Duration::from_secs_f64(len as f64 / 125_000.0);
            assert!(copy_deadline(len) > takes, "{len} bytes: {:?}", copy_deadline(len));
        }
    }
}
