//! Fetching a file's missing pieces: the origin workers, helpers and peer workers of
//! one file run as tasks around its [`Desk`] (the piece router), and the chunks they
//! make durable are reported as they arrive. Also which sources and helpers a file may
//! use.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_protocol::file::JobFile;
use ferry_protocol::job::peer_caching;
use ferry_protocol::peer_cache::ContentKey;
use ferry_protocol::transfer::{self, ChunkRecord, EngineReport, Piece, RemoteInfo};
use ferry_protocol::{JobId, Principal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::desk::{Ask, Desk, Routing, Sources};
use super::helper_client::Helper;
use super::peers::{from_peers, watch_fleet};
use super::ramp::{self, Ramp};
use super::{Outbox, internal};
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::{Fetch, blocking};
use crate::transfer::helper::MAX_HELPER_PIECE;
use crate::transfer::router::{Worker, peer_workers};
use crate::transfer::scope::scoped;
use crate::transfer::{Run, peer_cache};

/// What members' copies promise for one file (see [`Run::peer_prospects`]).
pub(super) struct Prospects {
    /// Whether they may serve its bytes: if so, a fresh file is probed without data.
    pub(super) may_serve: bool,
    /// Copies held here whose files are gone: not asked for.
    pub(super) gone: Vec<(JobId, u32)>,
}

impl Run {
    /// Fetches `missing` over the job's connections; chunks are reported as they
    /// become durable (several per command when they finish together). This task owns
    /// the file's router; the workers (tasks doing I/O only) ask it for pieces by
    /// message.
    pub(super) async fn fetch_pieces(
        &self,
        fetch: &Fetch,
        chunk_size: u64,
        missing: VecDeque<Piece>,
        gone: Vec<(JobId, u32)>,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let (connections, most) = self.settings.connections_of(&self.job);
        let mut ramp_allowed = most > connections;
        let sources = self.sources(fetch, chunk_size, gone);
        let (mut routing, desk, mut asks) = Routing::new(missing, sources);
        let mut helpers = self.helpers(fetch);
        // A fleet member pings the others while it downloads (stopped with the file).
        let _watcher = self.job.fleet().map(|tag| {
            let watching = watch_fleet(self.reporter.cluster.clone(), tag.fleet, desk.clone());
            tokio_util::task::AbortOnDropHandle::new(crate::transfer::scope::spawn(watching))
        });
        // A helper that fails gives its piece back, perhaps after the local workers
        // found the queue empty and ended: then another round fetches what is left.
        loop {
            let left = routing.router().len();
            if left == 0 {
                // Every worker of the last round ended: a piece still handed out would be
                // missing from the file.
                let handed_out = routing.router().in_flight();
                if handed_out > 0 {
                    return Err(internal(
                        fetch.file,
                        &format!("{handed_out} pieces were handed out to workers that ended"),
                    ));
                }
                return Ok(());
            }
            let (done_tx, done_rx) = mpsc::channel::<ChunkRecord>(64);
            let mut workers =
                Workers { tasks: JoinSet::new(), peers: HashSet::new(), growth: None };
            // Peer workers first: counted before an origin worker looks at the queue.
            if routing.router().uses_peers() {
                for _ in 0..peer_workers(chunk_size) {
                    let (done, fetch, desk) = (done_tx.clone(), fetch.clone(), desk.clone());
                    let cluster = self.reporter.cluster.clone();
                    routing.router().peer_worker_started();
                    let id = workers
                        .tasks
                        .spawn(scoped(
                            async move { from_peers(&cluster, &fetch, &desk, &done).await },
                        ))
                        .id();
                    workers.peers.insert(id);
                }
            }
            for _ in 0..connections.min(left) {
                workers.add_origin(fetch, &desk, &done_tx);
            }
            // The node picks the count: more connections while they add throughput (in
            // the first round only; later ones fetch what helpers gave back).
            if std::mem::take(&mut ramp_allowed) && left > connections {
                let received = fetch.temp.received().load(Ordering::Relaxed);
                let ramp = Ramp::new(most, std::time::Instant::now(), received);
                workers.growth = Some(Growth { ramp, desk: desk.clone(), done: done_tx.clone() });
            }
            // Twice the helper's connections: a piece travels here while the helper
            // fetches the next (it fetches `connections` at a time).
            for helper in std::mem::take(&mut helpers) {
                for _ in 0..2 * connections {
                    let (desk, done, helper) = (desk.clone(), done_tx.clone(), helper.clone());
                    workers.tasks.spawn(scoped(async move { helper.work(&desk, &done).await }));
                }
            }
            drop(done_tx);
            let outcome =
                self.collect(fetch, &mut routing, &mut asks, &mut workers, done_rx, outbox).await;
            workers.tasks.abort_all();
            outcome?;
        }
    }

    /// Answers the workers' asks and reports the chunks they make durable until every
    /// worker ended; the first worker error stops the others. A report is written while
    /// the workers go on (the chunks that become durable meanwhile go in the next).
    async fn collect(
        &self,
        fetch: &Fetch,
        routing: &mut Routing,
        asks: &mut mpsc::Receiver<Ask>,
        workers: &mut Workers,
        mut done_rx: mpsc::Receiver<ChunkRecord>,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let mut durable: Vec<ChunkRecord> = Vec::new();
        type Sending<'a> =
            Pin<Box<dyn Future<Output = (&'a mut Outbox, Result<(), Stop>)> + Send + 'a>>;
        let mut sending: Option<Sending<'_>> = None;
        let mut records_open = true;
        let mut outbox = Some(outbox);
        // The ramp looks every FAST_WINDOW: a window ends after WINDOW, or sooner on a fast link.
        let mut window = tokio::time::interval(ramp::FAST_WINDOW);
        window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The ramp settled, or no piece is left to hand out: no connection is opened
            // any more (and the growth's lines to the router close).
            workers.stop_growing_if(routing.router().len() == 0);
            // Every piece is durable (none left, none handed out).
            let all_durable = routing.router().len() == 0 && routing.router().in_flight() == 0;
            if all_durable && !workers.tasks.is_empty() {
                // The workers left hold no piece and only wait to ask again (a peer
                // worker sleeps `IDLE` between asks): they end now, not one wait later,
                // which was most of a small file's time.
                workers.tasks.shutdown().await;
                continue;
            }
            if sending.is_none()
                && !durable.is_empty()
                && let Some(waiting) = outbox.take()
            {
                let report =
                    EngineReport::Chunks { file: fetch.file, chunks: std::mem::take(&mut durable) };
                if all_durable {
                    // The file's last chunks wait for its end (one write with it).
                    waiting.push(report);
                    outbox = Some(waiting);
                } else {
                    sending = Some(Box::pin(async move {
                        let sent = self.send(waiting, vec![report]).await;
                        (waiting, sent)
                    }));
                }
            }
            if !records_open && workers.tasks.is_empty() && sending.is_none() && durable.is_empty()
            {
                // A worker's last word (a helper lost, a piece given back) is sent before
                // it ends, but may not have been read yet: without it the piece would be
                // neither done nor queued, and the file reported whole without it.
                while let Ok(ask) = asks.try_recv() {
                    routing.answer(ask);
                }
                return Ok(());
            }
            tokio::select! {
                // What workers tell comes before their end is seen.
                biased;
                Some(ask) = asks.recv() => routing.answer(ask),
                record = done_rx.recv(), if records_open => match record {
                    Some(record) => {
                        routing.router().done(record.index);
                        durable.push(record);
                    }
                    None => records_open = false,
                },
                _ = window.tick(), if workers.growth.is_some() => {
                    workers.grow(fetch, routing.router().len());
                },
                Some(joined) = workers.tasks.join_next_with_id() => {
                    let id = match &joined {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if workers.peers.remove(&id) {
                        routing.router().peer_worker_ended();
                    }
                    match joined {
                        Ok((_, Ok(()))) => {}
                        Ok((_, Err(stop))) => return Err(stop),
                        Err(e) if e.is_panic() => {
                            return Err(internal(fetch.file, "a download task panicked"));
                        }
                        Err(_) => return Err(internal(fetch.file, "a download task failed")),
                    }
                },
                Some((back, sent)) = async {
                    match sending.as_mut() {
                        Some(future) => Some(future.await),
                        None => None,
                    }
                }, if sending.is_some() => {
                    sending = None;
                    outbox = Some(back);
                    sent?;
                },
            }
        }
    }

    /// The chunk size of members' copies of this content, so that their chunks fit
    /// this file's plan (only a size a plan could have: within the chunk limits and
    /// small enough to travel between members).
    pub(super) fn copies_chunk_size(
        &self,
        file: &JobFile,
        index: u32,
        remote: &RemoteInfo,
        size: u64,
    ) -> Option<u64> {
        if !self.uses_cluster(index) || !file.ranges.is_empty() || !file.chunks.is_empty() {
            return None;
        }
        let keys = ContentKey::all_of(&file.remote_url, remote);
        let state = self.reporter.cluster.state.read();
        let copies = state.queue.peer_copies(&keys);
        let chunk_size = copies.first()?.chunk_size;
        let fits = (transfer::MIN_CHUNK_SIZE..=MAX_HELPER_PIECE).contains(&chunk_size)
            && size.div_ceil(chunk_size) <= transfer::MAX_CHUNKS_PER_FILE;
        fits.then_some(chunk_size)
    }

    /// Whether members' copies may serve file `index`, fetched from `url` to `dest`:
    /// members hold copies of the URL or of some declared digest (known after a HEAD),
    /// or another member of the job's fleet fetches the first chunk. Copies held here
    /// are looked for on disk first, newest first until one is there
    /// ([`peer_cache::gone_until_live`]): one whose file its owner deleted
    /// is not asked for, so a file downloaded again after the earlier downloads' files
    /// were deleted is probed with data, as a fresh one, not asked of this node first at
    /// a round trip and a HEAD per file. Such a copy is withdrawn a moment later unless
    /// it was this job's owner's and lay at `dest`, which this download fills again with
    /// the same content (one withdrawal per file of a large job, each rewriting the
    /// job's row, would cost more than the download). Another user's copy is withdrawn
    /// whatever `dest` the caller names.
    pub(super) async fn peer_prospects(&self, url: &str, index: u32, dest: &Path) -> Prospects {
        if !self.uses_cluster(index) {
            return Prospects { may_serve: false, gone: Vec::new() };
        }
        let cluster = &self.reporter.cluster;
        let (elsewhere, here) = {
            let state = cluster.state.read();
            let queue = &state.queue;
            if queue.offers_digests() || self.job.fleet().is_some_and(|f| !f.fetches(0)) {
                return Prospects { may_serve: true, gone: Vec::new() };
            }
            let mut elsewhere = false;
            let mut here = Vec::new();
            for (node, job, file) in queue.url_copies(url) {
                if job == self.job.id() {
                    continue;
                }
                if node != cluster.node_id {
                    elsewhere = true;
                } else if let Some((owner, path)) =
                    queue.job(&job).and_then(|j| peer_cache::copy_file(j, node, file))
                {
                    here.push((job, file, owner, path));
                }
            }
            (elsewhere, here)
        };
        if here.is_empty() {
            return Prospects { may_serve: elsewhere, gone: Vec::new() };
        }
        let sandboxes = self.settings.sandboxes.clone();
        let (gone, live) = blocking(move || {
            Ok(peer_cache::gone_until_live(here, |owner, path| {
                peer_cache::is_gone(&sandboxes, owner, path.clone())
            }))
        })
        .await
        .unwrap_or((Vec::new(), true));
        let refilled =
            |owner: &Principal, path: &PathBuf| owner == self.job.owner() && path == dest;
        for (job, file, ..) in gone.iter().filter(|(_, _, owner, path)| !refilled(owner, path)) {
            let (cluster, sandboxes) = (cluster.clone(), self.settings.sandboxes.clone());
            let (job, file) = (*job, *file);
            tokio::spawn(async move {
                peer_cache::withdraw_if_still_gone(&cluster, sandboxes, job, file).await;
            });
        }
        let may_serve = elsewhere || live;
        Prospects { may_serve, gone: gone.into_iter().map(|(job, file, ..)| (job, file)).collect() }
    }

    /// Whether the job may use helpers and peers' copies (`BG_JOB_ENABLE_PEERCACHING_CLIENT`),
    /// and file `index` is not to come from the origin alone.
    pub(super) fn uses_cluster(&self, index: u32) -> bool {
        self.job.props().peer_caching_flags & peer_caching::CLIENT != 0
            && !self.is_origin_only(index)
    }

    /// Where pieces of this file may come from besides the origin: members' copies of
    /// the same content (none for local sources, ranges, jobs that do not use peers, or
    /// chunks too large to travel between members: files over 24 GiB).
    fn sources(&self, fetch: &Fetch, chunk_size: u64, gone: Vec<(JobId, u32)>) -> Option<Sources> {
        if chunk_size > MAX_HELPER_PIECE {
            return None;
        }
        let file = self.reporter.read(self.job.id(), self.run, |job| {
            job.files()
                .get(fetch.file as usize)
                .filter(|f| f.ranges.is_empty())
                .map(|f| f.remote_url.clone())
        });
        let Ok(Some(url)) = file else { return None };
        if !self.uses_cluster(fetch.file) || fetch.url.starts_with("file://") {
            return None;
        }
        let keys = ContentKey::all_of(&url, &fetch.remote);
        if keys.is_empty() {
            return None;
        }
        let cluster = self.reporter.cluster.clone();
        let job = self.job.id();
        Some(Sources { cluster, keys, job, chunk_size, fleet: self.job.fleet(), gone })
    }

    /// The members that may fetch pieces of this file (none for local sources, fleet
    /// members, or jobs that do not use the cluster).
    fn helpers(&self, fetch: &Fetch) -> Vec<Arc<Helper>> {
        let cluster = &self.reporter.cluster;
        // A job with a cap of its own is not helped: the cap is the run's to keep.
        let most = match self.job.props().max_bandwidth {
            Some(_) => 0,
            None => self.job.props().max_helpers.unwrap_or(self.settings.max_helpers),
        };
        let fleet = self.job.fleet().is_some();
        if fetch.url.starts_with("file://") || most == 0 || fleet || !self.uses_cluster(fetch.file)
        {
            return Vec::new();
        }
        let applied = cluster.state.read().applied.map_or(0, |id| id.index);
        cluster
            .member_ids()
            .into_iter()
            .filter(|node| *node != cluster.node_id)
            .take(most as usize)
            .map(|node| {
                Arc::new(Helper {
                    node,
                    cluster: cluster.clone(),
                    fetch: fetch.clone(),
                    job: self.job.id(),
                    run: self.run,
                    applied,
                })
            })
            .collect()
    }
}

/// A round's worker tasks, and which of them are peer workers (counted by the router
/// while they run).
struct Workers {
    tasks: JoinSet<Result<(), Stop>>,
    peers: HashSet<tokio::task::Id>,
    /// While the node picks the count of origin connections: how it grows them.
    growth: Option<Growth>,
}

/// What opening more origin connections takes: the ramp deciding it, and the lines
/// the new workers use (held only while the ramp may still grow).
struct Growth {
    ramp: Ramp,
    desk: Desk,
    done: mpsc::Sender<ChunkRecord>,
}

impl Workers {
    /// Starts an origin worker of `fetch`.
    fn add_origin(&mut self, fetch: &Fetch, desk: &Desk, done: &mpsc::Sender<ChunkRecord>) {
        let (desk, done, fetch) = (desk.clone(), done.clone(), fetch.clone());
        self.tasks.spawn(scoped(async move { from_origin(&fetch, &desk, &done).await }));
    }

    /// Opens the connections the ramp asks for after the window ending now (at most one
    /// per piece `left`).
    fn grow(&mut self, fetch: &Fetch, left: usize) {
        let Some(growth) = &mut self.growth else { return };
        let received = fetch.temp.received().load(Ordering::Relaxed);
        let added = growth.ramp.tick(std::time::Instant::now(), received).min(left);
        if added > 0 {
            tracing::debug!(
                file = fetch.file,
                open = growth.ramp.open(),
                "opening more connections: the last ones added throughput"
            );
            let (desk, done) = (growth.desk.clone(), growth.done.clone());
            for _ in 0..added {
                self.add_origin(fetch, &desk, &done);
            }
        }
    }

    /// Ends the growth if `done` or the ramp settled: its lines to the router close.
    fn stop_growing_if(&mut self, done: bool) {
        if done || self.growth.as_ref().is_some_and(|g| g.ramp.settled()) {
            self.growth = None;
        }
    }
}

/// An origin worker: fetches pieces from the origin until none is left for it. A
/// piece is made durable (and then reported) while the worker already fetches the
/// next one.
async fn from_origin(
    fetch: &Fetch,
    queue: &Desk,
    done: &mpsc::Sender<ChunkRecord>,
) -> Result<(), Stop> {
    let mut syncing: Option<tokio::task::JoinHandle<Result<(), Stop>>> = None;
    let outcome = loop {
        let Some(piece) = queue.next_origin(Worker::Origin, u64::MAX).await else {
            break Ok(());
        };
        let record = match fetch.piece(piece).await {
            Ok(record) => record,
            Err(stop) => break Err(stop),
        };
        if let Some(previous) = syncing.take() {
            previous.await.map_err(|_| internal(fetch.file, "a sync failed"))??;
        }
        let (temp, done, file) = (fetch.temp.clone(), done.clone(), fetch.file);
        syncing = Some(crate::transfer::scope::spawn(async move {
            blocking(move || temp.sync()).await.map_err(|e| {
                Stop::from(Failure::local(&e, "cannot write the temporary file", Some(file)))
            })?;
            let _ = done.send(record).await;
            Ok(())
        }));
    };
    if let Some(previous) = syncing.take() {
        previous.await.map_err(|_| internal(fetch.file, "a sync failed"))??;
    }
    outcome
}
