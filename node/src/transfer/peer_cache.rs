//! The peer cache on a node (issue 6; model in [`ferry_protocol::peer_cache`]): this
//! node serves chunks of its copies to other members ([`serve`]), a download takes
//! chunks from other members' copies and checks each against the digest the holder
//! recorded ([`PieceQueue`] routes pieces between the origin and peers; [`fetch_copy`]
//! fetches one), a copy caught serving wrong bytes is withdrawn, and [`keep_limits`]
//! keeps what this node offers within its size and age limits.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::codec::ByteBuf;
use ferry_protocol::command::Command;
pub(crate) use ferry_protocol::peer::{CopyAnswer, CopyRequest};
use ferry_protocol::peer_cache::{ContentKey, FleetMember, PeerCopy, offered_keys};
use ferry_protocol::transfer::Piece;
use ferry_protocol::{JobId, JobState, NodeId, Principal, Proposal, Queue, Timestamp};
use tokio::sync::OwnedSemaphorePermit;

use super::system_caller;
use crate::config::PeerCacheConfig;
use crate::peer::rpc::{Held, Router};
use crate::replica::ClusterView;

/// How long a peer has to deliver a chunk: 5 s plus a second per 4 MiB.
fn copy_deadline(len: u64) -> Duration {
    Duration::from_secs(5 + len / (4 * 1024 * 1024))
}

/// How long a fleet member's copy may go without growing, while its node misses pings
/// or its job stopped, before the others take it for lost and divide its pieces.
const FLEET_PATIENCE: Duration = Duration::from_secs(5);

/// How long a fleet member's copy may go without growing at all (its node answers,
/// its job runs, but nothing arrives) before the others take it for lost anyway.
const FLEET_SAFETY: Duration = Duration::from_secs(120);

/// This node's side of serving copies: how many chunk reads run at once, and (test
/// builds only) the switch that makes it serve wrong bytes.
pub(crate) struct Serving {
    permits: Arc<tokio::sync::Semaphore>,
    /// Every principal's sandbox: copies are read through their owner's.
    sandboxes: Arc<crate::fs::Sandboxes>,
    #[cfg(feature = "fault-injection")]
    lie: bool,
}

impl Serving {
    /// Serving as `[peer_cache]` configures it, reading through `sandboxes`.
    pub(crate) fn new(config: &PeerCacheConfig, sandboxes: Arc<crate::fs::Sandboxes>) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_serving.max(1))),
            sandboxes,
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
/// max_serving` chunks are read or on their way at once).
async fn serve(
    cluster: &ClusterView,
    serving: &Serving,
    request: &CopyRequest,
) -> (CopyAnswer, Option<OwnedSemaphorePermit>) {
    let located = locate(&cluster.state.read().queue, cluster.node_id, request);
    let (owner, path, offset, len) = match located {
        Ok(found) => found,
        Err(why) => return (CopyAnswer::Missing(why), None),
    };
    let Ok(permit) = serving.permits.clone().acquire_owned().await else {
        return (CopyAnswer::Missing("the node is stopping".into()), None);
    };
    let sandboxes = serving.sandboxes.clone();
    let read = tokio::task::spawn_blocking(move || {
        super::local::read_range(&sandboxes, &owner, path, offset, len)
    })
    .await;
    let answer = match read {
        Ok(Ok(mut bytes)) => {
            serving.tamper(&mut bytes);
            CopyAnswer::Bytes(ByteBuf::from(bytes))
        }
        Ok(Err(e)) => CopyAnswer::Missing(format!("cannot read the copy: {e}")),
        Err(e) => CopyAnswer::Missing(e.to_string()),
    };
    (answer, Some(permit))
}

/// Where chunk `request.index` of a copy held here lies: its owner, path, offset and
/// length.
fn locate(
    queue: &Queue,
    me: NodeId,
    request: &CopyRequest,
) -> Result<(Principal, PathBuf, u64, u64), String> {
    let job = queue.job(&request.job).ok_or("the job is gone")?;
    let index = request.file as usize;
    if job.home_node != me || offered_keys(job, index).is_empty() {
        return Err("the copy is not offered here".into());
    }
    let file = &job.files[index];
    let chunk = file
        .chunks
        .binary_search_by_key(&request.index, |c| c.index)
        .map(|at| file.chunks[at])
        .map_err(|_| format!("the copy does not hold chunk {}", request.index))?;
    if chunk.len > super::helper::MAX_HELPER_PIECE {
        return Err("the chunk is too large to serve".into());
    }
    // After Complete the bytes are at the destination; before, in the temporary file.
    let path =
        if job.state == JobState::Acknowledged { &file.local_path } else { &file.temporary_name };
    let offset = u64::from(request.index) * file.chunk_size;
    Ok((job.owner.clone(), PathBuf::from(path), offset, chunk.len))
}

/// Why a copy's chunk did not arrive.
pub(crate) enum CopyError {
    /// The holder is unreachable or no longer has it.
    Missing(String),
    /// The bytes do not match the digest the holder recorded: its copy is withdrawn.
    Wrong(String),
}

/// A holder of a piece: member `node`'s copy in file `file` of job `job`, with the
/// digest it recorded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holder {
    pub(crate) node: NodeId,
    pub(crate) job: JobId,
    pub(crate) file: u32,
    pub(crate) digest: [u8; 32],
}

/// Fetches `piece` from `holder` (through the peer link, or read here when this node
/// holds it) and checks length and digest.
pub(crate) async fn fetch_copy(
    cluster: &ClusterView,
    holder: Holder,
    piece: Piece,
) -> Result<Vec<u8>, CopyError> {
    let request = CopyRequest { job: holder.job, file: holder.file, index: piece.index };
    let answer = cluster
        .call(holder.node, &request, copy_deadline(piece.len))
        .await
        .map_err(|e| CopyError::Missing(e.to_string()))?;
    let bytes = match answer {
        CopyAnswer::Bytes(bytes) => bytes.into_vec(),
        CopyAnswer::Missing(why) => return Err(CopyError::Missing(why)),
    };
    // Hashing megabytes is CPU work: off the runtime threads Raft shares.
    let (bytes, actual) = tokio::task::spawn_blocking(move || {
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

/// Takes a copy out of the peer cache: it served bytes that did not match the digest of
/// `mismatch` (chunk index, digest), or (`None`) this node's limits drop it.
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

/// Where a download's missing pieces come from: the origin (this node and its
/// helpers), members' copies, or (fleet members) later, from the member that fetches
/// them from the origin. Shared by the download's workers behind a mutex.
pub(crate) struct PieceQueue {
    origin: VecDeque<Piece>,
    peers: VecDeque<Piece>,
    waiting: Vec<Piece>,
    sources: Option<Sources>,
    /// Peer workers alive: without one, origin workers take what is for peers.
    peer_workers: usize,
}

/// What routes pieces to peers: the content, this job's place, the applied queue.
pub(crate) struct Sources {
    /// The cluster whose applied queue lists the copies.
    pub(crate) cluster: ClusterView,
    /// The keys the file's content is known by (see [`ContentKey::all_of`]).
    pub(crate) keys: Vec<ContentKey>,
    /// This job (its own copy is not a source).
    pub(crate) job: JobId,
    /// The file's plan: only copies with the same chunk size fit it.
    pub(crate) chunk_size: u64,
    /// The job's place in its fleet, if it is a member.
    pub(crate) fleet: Option<FleetMember>,
    /// Peers that failed a piece, by piece index: not asked for it again.
    failed: HashMap<u32, Vec<NodeId>>,
    /// The applied index the waiting pieces were last checked at.
    seen: Option<u64>,
    /// What this fleet member knows of the others (fleet members only).
    watch: FleetWatch,
}

/// What a fleet member knows of the others: when each one's copy last grew, which
/// nodes miss pings, which members it took for lost, and who fetches the pieces of
/// the lost ones.
#[derive(Default)]
struct FleetWatch {
    /// Chunks each member's copy held at the last check, and when it last grew.
    grown: HashMap<u32, (usize, Instant)>,
    /// Nodes that miss pings (kept up to date by the download's fleet watcher).
    unreachable: BTreeSet<NodeId>,
    /// Members taken for lost, for good.
    lost: BTreeSet<u32>,
    /// Pieces of lost members given to another member: piece index → member.
    owner: HashMap<u32, u32>,
}

/// What a fleet member sees of another at a check.
#[derive(Clone, Copy, Debug)]
struct MemberView {
    /// Since its copy last grew (or since the download started).
    since_growth: Duration,
    /// Its node misses pings.
    unreachable: bool,
    /// Its job does not run (error, transient error, suspended, cancelled, gone).
    stopped: bool,
}

impl MemberView {
    /// Whether its pieces are to be divided among the others: it is dead or stopped
    /// and has not grown for [`FLEET_PATIENCE`], or has not grown for [`FLEET_SAFETY`].
    /// A slow origin makes no member lost: its node answers, its job runs.
    fn lost(self) -> bool {
        self.since_growth >= FLEET_SAFETY
            || (self.since_growth >= FLEET_PATIENCE && (self.unreachable || self.stopped))
    }
}

impl Sources {
    /// Sources for a job's file with content `keys` and plan `chunk_size`.
    pub(crate) fn new(
        cluster: ClusterView,
        keys: Vec<ContentKey>,
        job: JobId,
        chunk_size: u64,
        fleet: Option<FleetMember>,
    ) -> Self {
        Self {
            cluster,
            keys,
            job,
            chunk_size,
            fleet,
            failed: HashMap::new(),
            seen: None,
            watch: FleetWatch::default(),
        }
    }

    /// Other jobs' copies that fit this file's plan.
    fn copies<'q>(&self, queue: &'q Queue) -> Vec<PeerCopy<'q>> {
        let mut copies = queue.peer_copies(&self.keys);
        copies.retain(|copy| copy.job != self.job && copy.chunk_size == self.chunk_size);
        copies
    }

    /// The holders of `piece` not yet failed for it, spread by piece index.
    fn holders(&self, queue: &Queue, piece: &Piece) -> Vec<Holder> {
        let failed = self.failed.get(&piece.index);
        let mut holders: Vec<Holder> = self
            .copies(queue)
            .into_iter()
            .filter(|copy| failed.is_none_or(|nodes| !nodes.contains(&copy.node)))
            .filter_map(|copy| {
                let chunk = copy.chunk(piece.index).filter(|c| c.len == piece.len)?;
                Some(Holder {
                    node: copy.node,
                    job: copy.job,
                    file: copy.file,
                    digest: chunk.digest,
                })
            })
            .collect();
        if !holders.is_empty() {
            let turn = piece.index as usize % holders.len();
            holders.rotate_left(turn);
        }
        holders
    }
}

/// The next piece for a worker.
pub(crate) enum Next<T = Piece> {
    /// Fetch this one.
    Piece(T),
    /// Nothing now, but pieces may come: ask again shortly.
    Wait,
    /// Nothing is left for this kind of worker.
    Done,
}

/// How long a worker with nothing to do waits before asking again.
pub(crate) const IDLE: Duration = Duration::from_millis(100);

impl PieceQueue {
    /// The queue of `missing` pieces; without `sources` they all come from the origin.
    pub(crate) fn new(missing: VecDeque<Piece>, sources: Option<Sources>) -> Self {
        let mut queue = Self {
            origin: VecDeque::new(),
            peers: VecDeque::new(),
            waiting: Vec::new(),
            sources,
            peer_workers: 0,
        };
        match &queue.sources {
            None => queue.origin = missing,
            Some(sources) => {
                let state = sources.cluster.state.read();
                let copies = sources.copies(&state.queue);
                for piece in missing {
                    if holds(&copies, &piece) {
                        queue.peers.push_back(piece);
                    } else if sources.fleet.is_some_and(|f| !f.fetches(piece.index)) {
                        queue.waiting.push(piece);
                    } else {
                        queue.origin.push_back(piece);
                    }
                }
            }
        }
        queue
    }

    /// Pieces left, wherever they are to come from.
    pub(crate) fn len(&self) -> usize {
        self.origin.len() + self.peers.len() + self.waiting.len()
    }

    /// Whether pieces are (or may become) for peer workers.
    pub(crate) fn uses_peers(&self) -> bool {
        !self.peers.is_empty() || !self.waiting.is_empty()
    }

    /// A peer worker starts: pieces for peers wait for it.
    pub(crate) fn peer_worker_started(&mut self) {
        self.peer_workers += 1;
    }

    /// A peer worker ended.
    pub(crate) fn peer_worker_ended(&mut self) {
        self.peer_workers = self.peer_workers.saturating_sub(1);
    }

    /// The next piece to fetch from the origin, at most `max_len` bytes long. A piece
    /// a member's copy came to hold meanwhile (a member taken for lost was only slow)
    /// goes to the peers instead, while a peer worker is there to take it; without one,
    /// pieces left for peers come from the origin.
    pub(crate) fn next_origin(&mut self, max_len: u64) -> Next {
        self.route();
        if self.peer_workers == 0
            && let Some(piece) = self.peers.front().copied()
            && piece.len <= max_len
        {
            self.peers.pop_front();
            return Next::Piece(piece);
        }
        while let Some(piece) = self.origin.front().copied() {
            if piece.len > max_len {
                return Next::Done;
            }
            self.origin.pop_front();
            let held = self.peer_workers > 0
                && self.sources.as_ref().is_some_and(|sources| {
                    let queue = &sources.cluster.state.read().queue;
                    sources.fleet.is_some() && !sources.holders(queue, &piece).is_empty()
                });
            if held {
                self.peers.push_back(piece);
                continue;
            }
            return Next::Piece(piece);
        }
        if self.uses_peers() { Next::Wait } else { Next::Done }
    }

    /// The nodes of fleet members that now miss pings.
    pub(crate) fn set_unreachable(&mut self, nodes: BTreeSet<NodeId>) {
        if let Some(sources) = &mut self.sources {
            sources.watch.unreachable = nodes;
        }
    }

    /// The next piece to take from a peer, with its holders (best first).
    pub(crate) fn next_peer(&mut self) -> Next<(Piece, Vec<Holder>)> {
        self.route();
        let Some(sources) = &self.sources else { return Next::Done };
        let Some(piece) = self.peers.pop_front() else {
            return if self.waiting.is_empty() { Next::Done } else { Next::Wait };
        };
        let holders = sources.holders(&sources.cluster.state.read().queue, &piece);
        if holders.is_empty() {
            self.origin.push_back(piece);
            return Next::Wait;
        }
        Next::Piece((piece, holders))
    }

    /// A piece an origin worker or helper could not deliver: to be fetched again.
    pub(crate) fn give_back(&mut self, piece: Piece) {
        self.origin.push_front(piece);
    }

    /// A piece `node` could not deliver: another holder or the origin gets it.
    pub(crate) fn peer_failed(&mut self, piece: Piece, node: NodeId) {
        if let Some(sources) = &mut self.sources {
            sources.failed.entry(piece.index).or_default().push(node);
        }
        self.peers.push_back(piece);
    }

    /// Moves waiting pieces to peers once a copy holds them (checked when the applied
    /// queue moved). A fleet member whose pieces wait is taken for lost when its
    /// [view](MemberView::lost) says so: its waiting pieces are divided among the
    /// members not lost ([`new_owner`]), this member fetching its part from the origin.
    /// Members that see the same members lost divide alike.
    fn route(&mut self) {
        let Some(sources) = &mut self.sources else { return };
        let Some(fleet) = sources.fleet.filter(|f| f.members > 0) else { return };
        if self.waiting.is_empty() {
            return;
        }
        let state = sources.cluster.state.read();
        let applied = state.applied.map_or(0, |id| id.index);
        let members = state.queue.fleet_jobs(&fleet.fleet);
        if sources.seen != Some(applied) {
            sources.seen = Some(applied);
            let copies = sources.copies(&state.queue);
            for job in &members {
                let Some(tag) = job.fleet else { continue };
                let held = copies.iter().filter(|c| c.job == job.id).map(|c| c.chunks.len()).sum();
                let grown = sources.watch.grown.entry(tag.member).or_insert((0, Instant::now()));
                // Growth, not a high-water mark: after a withdrawal, growth again counts.
                if held > grown.0 {
                    grown.1 = Instant::now();
                }
                grown.0 = held;
            }
            let (now_held, still): (Vec<Piece>, Vec<Piece>) =
                std::mem::take(&mut self.waiting).into_iter().partition(|p| holds(&copies, p));
            self.peers.extend(now_held);
            self.waiting = still;
        }
        let watch = &mut sources.watch;
        let owner = |watch: &FleetWatch, piece: &Piece| {
            watch.owner.get(&piece.index).copied().unwrap_or(piece.index % fleet.members)
        };
        let waited_for: BTreeSet<u32> = self.waiting.iter().map(|p| owner(watch, p)).collect();
        let newly_lost: Vec<u32> = waited_for
            .into_iter()
            .filter(|m| *m != fleet.member && !watch.lost.contains(m))
            .filter(|m| {
                let job = members.iter().find(|j| j.fleet.is_some_and(|f| f.member == *m));
                let since_growth = watch.grown.get(m).map_or(Duration::ZERO, |g| g.1.elapsed());
                let view = MemberView {
                    since_growth,
                    unreachable: job.is_none_or(|j| watch.unreachable.contains(&j.home_node)),
                    stopped: job
                        .is_none_or(|j| !j.state.is_active() && j.state != JobState::Transferred),
                };
                view.lost()
            })
            .collect();
        drop(members);
        drop(state);
        if newly_lost.is_empty() {
            return;
        }
        watch.lost.extend(&newly_lost);
        let mut mine = Vec::new();
        for piece in std::mem::take(&mut self.waiting) {
            if !watch.lost.contains(&owner(watch, &piece)) {
                self.waiting.push(piece);
                continue;
            }
            match new_owner(fleet.members, &watch.lost, piece.index) {
                Some(member) if member != fleet.member => {
                    watch.owner.insert(piece.index, member);
                    self.waiting.push(piece);
                }
                _ => mine.push(piece),
            }
        }
        tracing::info!(job = %sources.job, lost = ?newly_lost, mine = mine.len(), "fleet members lost; fetching a part of their share");
        self.origin.extend(mine);
    }
}

/// The member that fetches piece `index` once the members in `lost` are gone: the
/// `(index / members)`-th of the others in turn (`None` if none is left).
fn new_owner(members: u32, lost: &BTreeSet<u32>, index: u32) -> Option<u32> {
    let alive: Vec<u32> = (0..members).filter(|m| !lost.contains(m)).collect();
    if alive.is_empty() {
        return None;
    }
    Some(alive[(index / members) as usize % alive.len()])
}

/// Whether one of `copies` holds `piece` (whole).
fn holds(copies: &[PeerCopy<'_>], piece: &Piece) -> bool {
    copies.iter().any(|copy| copy.chunk(piece.index).is_some_and(|c| c.len == piece.len))
}

/// Keeps this node's offer within `[peer_cache]` limits: copies older than
/// `max_age_secs`, and the oldest beyond `max_size_bytes` in all, are withdrawn (the
/// files stay; they are only no longer offered). Runs every `check_every_secs`.
pub(crate) async fn keep_limits(cluster: ClusterView, config: PeerCacheConfig) {
    let every = Duration::from_secs(config.check_every_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        let over =
            over_limits(&cluster.state.read().queue, cluster.node_id, &config, Timestamp::now());
        for (job, file) in over {
            tracing::info!(%job, file, "withdrawing a peer copy beyond this node's cache limits");
            withdraw(&cluster, job, file, None).await;
        }
    }
}

/// This node's copies beyond its limits, newest kept first.
fn over_limits(
    queue: &Queue,
    me: NodeId,
    config: &PeerCacheConfig,
    now: Timestamp,
) -> Vec<(JobId, u32)> {
    let mut copies: Vec<(Timestamp, JobId, u32, u64)> = queue
        .jobs()
        .filter(|job| job.home_node == me)
        .flat_map(|job| {
            let made = job.times.transfer_completed.unwrap_or(job.times.modified);
            (0..job.files.len()).filter(|i| !offered_keys(job, *i).is_empty()).map(move |i| {
                let bytes = job.files[i].progress.bytes_transferred;
                (made, job.id, u32::try_from(i).unwrap_or(u32::MAX), bytes)
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

    fn pieces(indexes: &[u32]) -> Vec<Piece> {
        indexes
            .iter()
            .map(|&index| Piece { index, local_offset: 0, remote_offset: 0, len: 1 })
            .collect()
    }

    #[test]
    fn pieces_for_peers_go_to_the_origin_when_no_peer_worker_is_left() {
        let mut queue = PieceQueue::new(pieces(&[0, 1]).into(), None);
        let Next::Piece(first) = queue.next_origin(u64::MAX) else { panic!("no piece") };
        // A peer could not deliver it, and no peer worker runs: the origin takes it.
        queue.peer_failed(first, 2);
        assert!(matches!(queue.next_origin(u64::MAX), Next::Piece(p) if p.index == 0));
        // While a peer worker runs, it is left to the peers.
        queue.peer_worker_started();
        queue.peer_failed(first, 2);
        assert!(matches!(queue.next_origin(u64::MAX), Next::Piece(p) if p.index == 1));
        assert!(matches!(queue.next_origin(u64::MAX), Next::Wait));
        queue.peer_worker_ended();
        assert!(matches!(queue.next_origin(u64::MAX), Next::Piece(p) if p.index == 0));
        assert!(matches!(queue.next_origin(u64::MAX), Next::Done));
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

    #[test]
    fn a_lost_members_share_is_divided_among_the_others() {
        // Member 2 of 3 is lost: its pieces 2, 5, 8, 11 go to members 0 and 1 in turn.
        let lost = BTreeSet::from([2]);
        let owners: Vec<_> = [2, 5, 8, 11].iter().map(|i| new_owner(3, &lost, *i)).collect();
        assert_eq!(owners, vec![Some(0), Some(1), Some(0), Some(1)]);
        // Then member 1 too: member 0 fetches everything.
        let lost = BTreeSet::from([1, 2]);
        assert!([2, 5, 8, 11].iter().all(|i| new_owner(3, &lost, *i) == Some(0)));
        assert_eq!(new_owner(3, &BTreeSet::from([0, 1, 2]), 4), None);
    }

    #[test]
    fn only_a_dead_or_stopped_member_is_lost_soon() {
        let view = |secs, unreachable, stopped| MemberView {
            since_growth: Duration::from_secs(secs),
            unreachable,
            stopped,
        };
        // A slow origin: the node answers, the job runs; lost only after FLEET_SAFETY.
        assert!(!view(60, false, false).lost());
        assert!(view(FLEET_SAFETY.as_secs(), false, false).lost());
        // Dead or stopped: lost once its copy did not grow for FLEET_PATIENCE.
        assert!(!view(2, true, false).lost());
        assert!(view(FLEET_PATIENCE.as_secs(), true, false).lost());
        assert!(view(FLEET_PATIENCE.as_secs(), false, true).lost());
    }
}
