//! The peer cache on a node (model in [`ferry_protocol::peer_cache`]): this node
//! serves chunks of its copies to other members ([`serve`]), a copy caught serving
//! wrong bytes is withdrawn ([`withdraw`]), and [`keep_limits`] keeps what this node
//! offers within its size and age limits. Downloads take chunks from members' copies
//! in `download::peers`, routed by [`super::router`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::ReadAt;
use ferry_protocol::codec::ByteBuf;
use ferry_protocol::command::Command;
pub(crate) use ferry_protocol::peer::{CopyAnswer, CopyRequest};
use ferry_protocol::peer_cache::offered_keys;
use ferry_protocol::transfer::ChunkRecord;
use ferry_protocol::{Job, JobId, JobState, NodeId, Principal, Proposal, Queue, Timestamp};
use tokio::sync::OwnedSemaphorePermit;

use super::system_caller;
use crate::config::PeerCacheConfig;
use crate::feed::Feed;
use crate::peer::rpc::{Held, Router};
use crate::replica::ClusterView;

/// This node's side of serving copies: how many chunk reads run at once, and (test
/// builds only) the switch that makes it serve wrong bytes.
pub(crate) struct Serving {
    permits: Arc<tokio::sync::Semaphore>,
    /// Its slots in all (`[peer_cache] max_serving`).
    slots: usize,
    /// Every principal's sandbox: copies are read through their owner's.
    sandboxes: Arc<crate::fs::Sandboxes>,
    /// Copies (job, file) found gone and being checked again: one check each at a time.
    gone: std::sync::Mutex<HashSet<(JobId, u32)>>,
    #[cfg(feature = "fault-injection")]
    lie: bool,
}

impl Serving {
    /// Serving as `[peer_cache]` configures it, reading through `sandboxes`.
    pub(crate) fn new(config: &PeerCacheConfig, sandboxes: Arc<crate::fs::Sandboxes>) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_serving.max(1))),
            slots: config.max_serving.max(1),
            sandboxes,
            gone: std::sync::Mutex::default(),
            #[cfg(feature = "fault-injection")]
            lie: config.fault_serve_wrong_bytes,
        }
    }

    /// The fault switch: flips the first byte of what is served.
    #[cfg(feature = "fault-injection")]
    fn tamper(&self, bytes: &mut [u8]) {
        if self.lie
            && let Some(first) = bytes.first_mut()
        {
            *first ^= 0xFF;
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn tamper(&self, _bytes: &mut [u8]) {}

    /// Marks copy (`job`, `file`) as being checked; `false` if it already is.
    fn check_gone(&self, job: JobId, file: u32, checking: bool) -> bool {
        let mut gone = self.gone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if checking { gone.insert((job, file)) } else { gone.remove(&(job, file)) }
    }
}

/// Bytes of a chunk one serving slot holds: a fleet's piece takes one slot, an 8 MiB
/// chunk four, so that `max_serving` bounds the bytes a holder has in memory for
/// others (`max_serving` × 2 MiB, or one chunk larger than that).
const SLOT_BYTES: u64 = 2 * 1024 * 1024;

/// Serving slots a chunk of `len` bytes takes, of a holder's `slots`: at least one,
/// at most all of them.
pub(crate) fn slots_for(len: u64, slots: usize) -> usize {
    let wanted = usize::try_from(len.div_ceil(SLOT_BYTES)).unwrap_or(usize::MAX);
    wanted.clamp(1, slots.max(1))
}

/// Serves [`CopyRequest`]s of other members (and of this node's own downloads) on
/// `router` with `serving`; each answer holds its serving permit until it is written.
pub(crate) fn register(router: &Router, cluster: ClusterView, serving: Serving) {
    let serving = Arc::new(serving);
    router.add_holding_handler::<CopyRequest, _, _>(move |_, request| {
        let (cluster, serving) = (cluster.clone(), serving.clone());
        async move {
            let (answer, hold) = serve(&cluster, &serving, &request).await;
            Held { answer: Ok(answer), hold }
        }
    });
}

/// Serves a chunk of one of this node's copies: the answer, and the serving permit it
/// holds, to be released once the answer is written (at most `[peer_cache]
/// max_serving` slots' worth of chunks, see [`slots_for`], are read or on their way at
/// once; beyond them the answer is [`CopyAnswer::Busy`], at once).
async fn serve(
    cluster: &ClusterView,
    serving: &Arc<Serving>,
    request: &CopyRequest,
) -> (CopyAnswer, Option<OwnedSemaphorePermit>) {
    let mut located = locate(&cluster.state.read().queue, cluster.node_id, request);
    if matches!(located, Err(NotServed::NoChunk(_) | NotServed::NotOffered))
        && cluster.read_barrier(ReadAt::Linearizable).await.is_ok()
    {
        // The asker found the chunk in its applied queue, which may be ahead of this
        // node's: once this node has applied what is committed, it holds it too. Told
        // "missing", the asker took the piece from the origin (a fleet's egress rose
        // to 1.2-1.3 x the file whenever a holder applied a chunk's report late).
        located = locate(&cluster.state.read().queue, cluster.node_id, request);
    }
    let Located { owner, path, offset, chunk } = match located {
        Ok(found) => found,
        Err(why) => return (CopyAnswer::Missing(why.to_string()), None),
    };
    let slots = u32::try_from(slots_for(chunk.len, serving.slots)).unwrap_or(u32::MAX);
    let permit = match serving.permits.clone().try_acquire_many_owned(slots) {
        Ok(permit) => permit,
        Err(tokio::sync::TryAcquireError::NoPermits) => return (CopyAnswer::Busy, None),
        Err(tokio::sync::TryAcquireError::Closed) => {
            return (CopyAnswer::Missing("the node is stopping".into()), None);
        }
    };
    let sandboxes = serving.sandboxes.clone();
    let read = tokio::task::spawn_blocking(move || {
        let bytes = super::local::read_range(&sandboxes, &owner, path, offset, chunk.len)?;
        // A copy is checked against its recorded digest before any byte leaves.
        let intact = *blake3::hash(&bytes).as_bytes() == chunk.digest;
        Ok::<_, std::io::Error>((bytes, intact))
    })
    .await;
    let answer = match read {
        Ok(Ok((mut bytes, true))) => {
            serving.tamper(&mut bytes);
            CopyAnswer::Bytes(ByteBuf::from(bytes))
        }
        Ok(Ok((_, false))) => {
            tracing::warn!(job = %request.job, file = request.file, chunk = chunk.index, "a chunk of a copy held here does not match its recorded digest; withdrawing the copy");
            let cluster = cluster.clone();
            let (job, file) = (request.job, request.file);
            tokio::spawn(async move {
                withdraw(&cluster, job, file, Some((chunk.index, chunk.digest))).await;
            });
            CopyAnswer::Missing(format!("chunk {} of the copy is damaged", chunk.index))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            if serving.check_gone(request.job, request.file, true) {
                tokio::spawn(withdraw_if_gone(cluster.clone(), serving.clone(), request.clone()));
            }
            CopyAnswer::Missing(format!("the copy is gone: {e}"))
        }
        Ok(Err(e)) => CopyAnswer::Missing(format!("cannot read the copy: {e}")),
        Err(e) => CopyAnswer::Missing(e.to_string()),
    };
    (answer, Some(permit))
}

/// Why a chunk is not served (sent to the asker as [`CopyAnswer::Missing`]).
#[derive(Debug, thiserror::Error)]
enum NotServed {
    #[error("the job is gone")]
    JobGone,
    #[error("the copy is not offered here")]
    NotOffered,
    #[error("the copy does not hold chunk {0}")]
    NoChunk(u32),
    #[error("the chunk is too large to serve")]
    TooLarge,
}

/// A chunk of a copy held here.
struct Located {
    /// The copy's owner (it is read through the owner's sandbox).
    owner: Principal,
    /// The temporary file, or the destination after Complete.
    path: PathBuf,
    /// Where the chunk starts in it.
    offset: u64,
    /// Its record: length and digest.
    chunk: ChunkRecord,
}

/// Where chunk `request.index` of a copy held here lies.
fn locate(queue: &Queue, me: NodeId, request: &CopyRequest) -> Result<Located, NotServed> {
    let job = queue.job(&request.job).ok_or(NotServed::JobGone)?;
    let (owner, path) = copy_file(job, me, request.file).ok_or(NotServed::NotOffered)?;
    let file = &job.files()[request.file as usize];
    let chunk = file
        .chunks
        .binary_search_by_key(&request.index, |c| c.index)
        .map(|at| file.chunks[at])
        .map_err(|_| NotServed::NoChunk(request.index))?;
    if chunk.len > super::helper::MAX_HELPER_PIECE {
        return Err(NotServed::TooLarge);
    }
    // Copies are of whole files: chunk i starts at i chunk sizes.
    let offset = u64::from(request.index) * file.chunk_size;
    Ok(Located { owner, path, offset, chunk })
}

/// The owner and the path of copy `file` of `job` if node `me` holds and offers it: the
/// destination after Complete, the temporary file before.
pub(crate) fn copy_file(job: &Job, me: NodeId, file: u32) -> Option<(Principal, PathBuf)> {
    let index = file as usize;
    if job.home_node() != me || offered_keys(job, index).is_empty() {
        return None;
    }
    let file = &job.files()[index];
    let path =
        if job.state() == JobState::Acknowledged { &file.local_path } else { &file.temporary_name };
    Some((job.owner().clone(), PathBuf::from(path)))
}

/// Whether the file at `path` is gone (its owner deleted or moved it), looked for as
/// copies are served: through `owner`'s sandbox. Blocking.
pub(crate) fn is_gone(sandboxes: &crate::fs::Sandboxes, owner: &Principal, path: PathBuf) -> bool {
    matches!(
        super::local::read_range(sandboxes, owner, path, 0, 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    )
}

/// A copy held here: its job, file, owner and path.
pub(crate) type HeldCopy = (JobId, u32, Principal, PathBuf);

/// Looks for `copies` on disk newest first (job ids sort by creation), each owner's
/// path once, until one is there: the copies found gone before it, and whether one is
/// there. A live copy is all a download needs to know that it may be served here; an
/// older copy gone unnoticed is withdrawn when first asked for. So a file's cost stays
/// one look however many earlier downloads of its URL the node keeps.
pub(crate) fn gone_until_live(
    mut copies: Vec<HeldCopy>,
    mut is_gone: impl FnMut(&Principal, &PathBuf) -> bool,
) -> (Vec<HeldCopy>, bool) {
    copies.sort_unstable_by_key(|copy| std::cmp::Reverse(copy.0));
    let mut gone_paths: HashSet<(Principal, PathBuf)> = HashSet::new();
    let mut gone = Vec::new();
    for copy in copies {
        let (_, _, owner, path) = &copy;
        let key = (owner.clone(), path.clone());
        if !gone_paths.contains(&key) && !is_gone(owner, path) {
            return (gone, true);
        }
        gone_paths.insert(key);
        gone.push(copy);
    }
    (gone, false)
}

/// How long a copy found gone from its path may still be moving there (Complete renames
/// the temporary file before the job's new state is applied).
const GONE_AFTER: Duration = Duration::from_secs(1);

/// Withdraws the copy `request` asked for if its file is still gone [`GONE_AFTER`]
/// from now (see [`withdraw_if_still_gone`]); one check per copy at a time.
async fn withdraw_if_gone(cluster: ClusterView, serving: Arc<Serving>, request: CopyRequest) {
    withdraw_if_still_gone(&cluster, serving.sandboxes.clone(), request.job, request.file).await;
    serving.check_gone(request.job, request.file, false);
}

/// Withdraws copy `file` of `job`, held here, if its file is still gone [`GONE_AFTER`]
/// from now (its owner deleted or moved it): nobody should ask for it again.
pub(crate) async fn withdraw_if_still_gone(
    cluster: &ClusterView,
    sandboxes: Arc<crate::fs::Sandboxes>,
    job: JobId,
    file: u32,
) {
    tokio::time::sleep(GONE_AFTER).await;
    let held = {
        let state = cluster.state.read();
        state.queue.job(&job).and_then(|j| copy_file(j, cluster.node_id, file))
    };
    let Some((owner, path)) = held else { return };
    let gone = tokio::task::spawn_blocking(move || is_gone(&sandboxes, &owner, path)).await;
    if matches!(gone, Ok(true)) {
        tracing::info!(%job, file, "a copy held here is gone from its path; withdrawing the copy");
        withdraw(cluster, job, file, None).await;
    }
}

/// Takes a copy out of the peer cache: it served bytes that did not match the digest of
/// `mismatch` (chunk index, digest), or (`None`) this node's limits drop it or its file
/// is gone.
pub(crate) async fn withdraw(
    cluster: &ClusterView,
    job: JobId,
    file: u32,
    mismatch: Option<(u32, [u8; 32])>,
) {
    let proposal = Proposal {
        request_id: None,
        caller: system_caller(),
        command: Command::WithdrawPeerCopy { job, file, mismatch },
    };
    if let Err(e) = cluster.write(proposal).await {
        tracing::warn!(%job, file, error = %e, "cannot withdraw a peer copy");
    }
}

/// Keeps this node's offer within `[peer_cache]` limits: copies older than
/// `max_age_secs`, and the oldest beyond `max_size_bytes` in all, are withdrawn (the
/// files stay; they are only no longer offered). Runs every `check_every_secs`.
pub(crate) async fn keep_limits(cluster: ClusterView, config: PeerCacheConfig) {
    let every = Duration::from_secs(config.check_every_secs.max(1));
    // The jobs homed here that offer a copy, kept from the change feed (subscribed
    // before the first look, so no change falls between the two).
    let mut feed = cluster.state.feed().subscribe();
    let mut offering = HashSet::new();
    follow(&cluster, &mut offering, &Feed::Reset);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            delivery = feed.next() => match delivery {
                Some(delivery) => follow(&cluster, &mut offering, &delivery),
                None => return,
            },
            _ = tick.tick() => {
                let over = {
                    let machine = cluster.state.read();
                    let jobs = offering.iter().filter_map(|id| machine.queue.job(id));
                    over_limits(jobs, &config, Timestamp::now())
                };
                for (job, file) in over {
                    tracing::info!(%job, file, "withdrawing a peer copy beyond this node's cache limits");
                    withdraw(&cluster, job, file, None).await;
                }
            }
        }
    }
}

/// Whether `job`, homed on `me`, offers a copy of one of its files.
fn offers(job: &Job, me: NodeId) -> bool {
    job.home_node() == me && (0..job.files().len()).any(|i| !offered_keys(job, i).is_empty())
}

/// Keeps `offering` (the jobs homed here that offer a copy) up to date with the feed.
fn follow(cluster: &ClusterView, offering: &mut HashSet<JobId>, feed: &Feed) {
    let machine = cluster.state.read();
    match feed {
        Feed::Reset => {
            *offering = (cluster.state.feed().scan(&machine.queue))
                .filter(|job| offers(job, cluster.node_id))
                .map(|job| job.id())
                .collect();
        }
        Feed::Changed(batch) => {
            for change in &batch.jobs {
                if machine.queue.job(&change.job).is_some_and(|job| offers(job, cluster.node_id)) {
                    offering.insert(change.job);
                } else {
                    offering.remove(&change.job);
                }
            }
        }
    }
}

/// The copies of `jobs` (this node's) beyond its limits, newest kept first.
fn over_limits<'a>(
    jobs: impl Iterator<Item = &'a Job>,
    config: &PeerCacheConfig,
    now: Timestamp,
) -> Vec<(JobId, u32)> {
    let mut copies: Vec<(Timestamp, JobId, u32, u64)> = jobs
        .flat_map(|job| {
            let made = job.times().transfer_completed.unwrap_or(job.times().modified);
            (0..job.files().len()).filter(|i| !offered_keys(job, *i).is_empty()).map(move |i| {
                let bytes = job.files()[i].progress.bytes_transferred;
                (made, job.id(), u32::try_from(i).unwrap_or(u32::MAX), bytes)
            })
        })
        .collect();
    copies.sort_by_key(|copy| std::cmp::Reverse(copy.0));
    let max_age = Duration::from_secs(config.max_age_secs);
    let mut total = 0u64;
    copies
        .into_iter()
        .filter(|(made, _, _, bytes)| {
            total = total.saturating_add(*bytes);
            now.since(*made) > max_age || config.max_size_bytes.is_some_and(|max| total > max)
        })
        .map(|(_, job, file, _)| (job, file))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_slot_holds_two_mib_of_a_chunk() {
        const MIB: u64 = 1 << 20;
        assert_eq!(slots_for(MIB, 20), 1, "a fleet's piece");
        assert_eq!(slots_for(2 * MIB, 20), 1);
        assert_eq!(slots_for(2 * MIB + 1, 20), 2);
        assert_eq!(slots_for(8 * MIB, 20), 4, "a default chunk");
        assert_eq!(slots_for(0, 20), 1);
        // Larger than every slot together: served alone, never refused for good.
        assert_eq!(slots_for(64 * MIB, 20), 20);
        assert_eq!(slots_for(8 * MIB, 1), 1);
    }

    #[test]
    fn copies_are_looked_for_newest_first_until_one_is_there() {
        let alice = Principal::new("alice".to_owned()).expect("name");
        let bob = Principal::new("bob".to_owned()).expect("name");
        let ids: Vec<JobId> = (0..4).map(|_| JobId::generate()).collect();
        let copy = |i: usize, owner: &Principal, path: &str| {
            (ids[i], 0, owner.clone(), PathBuf::from(path))
        };
        // Oldest first, as the queue lists them; /b is gone, /a and /c are there.
        let copies = vec![
            copy(0, &alice, "/a"),
            copy(1, &bob, "/b"),
            copy(2, &alice, "/c"),
            copy(3, &bob, "/b"),
        ];
        let mut looked = Vec::new();
        let (gone, live) = gone_until_live(copies.clone(), |_, path| {
            looked.push(path.clone());
            path == &PathBuf::from("/b")
        });
        assert!(live);
        // The newest, /b, is gone, the next, /c, is there: the older ones are not looked
        // for (bob's older copy at /b is left to be withdrawn when asked for).
        assert_eq!(looked, [PathBuf::from("/b"), PathBuf::from("/c")]);
        let gone: Vec<JobId> = gone.iter().map(|c| c.0).collect();
        assert_eq!(gone, [ids[3]]);
        // All gone: each path looked for once (/b for both of bob's copies), every copy
        // answered gone.
        let mut looks = 0;
        let (gone, live) = gone_until_live(copies, |_, _| {
            looks += 1;
            true
        });
        assert!(!live);
        assert_eq!((gone.len(), looks), (4, 3));
    }

    #[test]
    fn a_holder_reads_regular_files_only_never_through_a_symlink() {
        let dir = tempfile::tempdir().expect("dir");
        let sandboxes =
            crate::fs::Sandboxes::open(&[], &[dir.path().to_path_buf()]).expect("sandboxes");
        let owner = Principal::new("alice".to_owned()).expect("name");
        let read_at = |path: &std::path::Path, offset, len| {
            super::super::local::read_range(&sandboxes, &owner, path.to_path_buf(), offset, len)
        };
        let copy = dir.path().join("copy.bin");
        std::fs::write(&copy, b"0123456789").expect("write");
        assert_eq!(read_at(&copy, 2, 3).expect("read"), b"234");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"do not serve").expect("write");
        let swapped = dir.path().join("swapped.bin");
        std::os::unix::fs::symlink(&secret, &swapped).expect("symlink");
        assert!(read_at(&swapped, 0, 3).is_err(), "read through a symlink");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        assert!(read_at(&dir.path().join("d"), 0, 1).is_err(), "read a directory");
        let outside = tempfile::tempdir().expect("dir");
        std::fs::write(outside.path().join("copy.bin"), b"outside").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        assert!(read_at(&dir.path().join("link/copy.bin"), 0, 3).is_err(), "a linked directory");
        // A FIFO without a writer is refused at once (its open would block).
        let fifo = dir.path().join("fifo.bin");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let sandboxes = Arc::new(sandboxes);
        let owner2 = owner.clone();
        std::thread::spawn(move || {
            let read = super::super::local::read_range(&sandboxes, &owner2, fifo, 0, 1);
            tx.send(read.is_err())
        });
        let refused = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(refused, Ok(true), "a FIFO blocked or was read");
    }
}
