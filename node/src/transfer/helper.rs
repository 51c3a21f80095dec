//! Helpers: other members fetch chunks of a file for its home
//! node, so a download spreads over the cluster's connections and source addresses.
//!
//! The home node asks a member for one piece ([`ChunkRequest`]) over the mutual-TLS
//! peer link. The helper reads the job from its own applied copy of the queue (waiting
//! until it has applied what the home node had), opens the job's sealed credentials with
//! the cluster key every member holds, and fetches the piece from the origin with the
//! job's headers, proxy, credentials and validators: no secret travels, and none is
//! written to the helper's disk. It answers with the bytes and their BLAKE3 digest; the
//! home node checks both, writes the bytes at their offset and records the chunk as if
//! it had fetched it. A helper that fails, stalls (see [`deadline`]) or stops answering
//! pings ([`MISSED_PINGS`]) gives its piece back to the home node's queue, and is not
//! asked again for that file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_coordinator::{ReadAt, SecretKey};
pub(crate) use ferry_protocol::peer::{ChunkAnswer, ChunkRequest};
use ferry_protocol::transfer::Piece;
use ferry_protocol::{BitsCode, JobId, NodeId};

use super::failure::{Failure, Stop};
use super::fetch::request_piece;
use super::http::HttpSession;
use super::{EngineSettings, job_http};
use crate::peer::rpc::Router;
use crate::replica::ClusterView;

/// Largest piece a helper is asked for: its answer is one peer frame.
pub(crate) const MAX_HELPER_PIECE: u64 = 12 * 1024 * 1024;
/// HTTP sessions a helper keeps for the runs it helps (one client each, connections
/// kept alive between pieces).
const KEPT_SESSIONS: usize = 64;

/// A run this member helps: its HTTP client, and the permits for origin requests (the
/// job's connections per file: a home node may keep more pieces asked than that, so
/// that a piece travels to it while the next one is being fetched).
#[derive(Clone)]
struct Helped {
    http: Arc<HttpSession>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// What a member needs to help: the engine's settings and the cluster key.
pub(crate) struct HelperContext {
    settings: EngineSettings,
    secrets: Arc<SecretKey>,
    sessions: Mutex<HashMap<(JobId, u64), Helped>>,
}

impl HelperContext {
    /// A context with the node's engine settings and secret key.
    pub(crate) fn new(settings: EngineSettings, secrets: Arc<SecretKey>) -> Self {
        Self { settings, secrets, sessions: Mutex::new(HashMap::new()) }
    }

    /// The HTTP session and permits of the run of `job`, made once and kept.
    async fn session(&self, job: &ferry_protocol::Job) -> Result<Helped, Failure> {
        let key = (job.id(), job.run());
        if let Some(kept) = self.lock().get(&key) {
            return Ok(kept.clone());
        }
        let helped = Helped {
            http: job_http(job, &self.settings, &self.secrets).await?,
            permits: Arc::new(tokio::sync::Semaphore::new(self.settings.connections_of(job).0)),
        };
        let mut sessions = self.lock();
        if sessions.len() >= KEPT_SESSIONS {
            sessions.clear();
        }
        Ok(sessions.entry(key).or_insert(helped).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(JobId, u64), Helped>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves [`ChunkRequest`]s of other members on `router`, with `context`.
pub(crate) fn register(router: &Router, cluster: ClusterView, context: HelperContext) {
    let context = Arc::new(context);
    router.add_handler::<ChunkRequest, _, _>(move |_, request| {
        let (cluster, context) = (cluster.clone(), context.clone());
        async move { Ok(serve(&cluster, &context, request).await) }
    });
}

/// Serves a piece for another member's job.
pub(crate) async fn serve(
    cluster: &ClusterView,
    context: &HelperContext,
    request: ChunkRequest,
) -> ChunkAnswer {
    if request.len == 0 || request.len > MAX_HELPER_PIECE {
        return failed(Failure::protocol(
            BitsCode::E_INVALIDARG,
            format!("a helper takes pieces of 1 to {MAX_HELPER_PIECE} bytes"),
            request.file,
        ));
    }
    if cluster.read_barrier(ReadAt::Applied(request.applied)).await.is_err() {
        return ChunkAnswer::Stale;
    }
    let job = cluster.state.read().queue.job(&request.job).cloned();
    let Some(job) = job.filter(|j| j.run() == request.run && j.state().is_active()) else {
        return ChunkAnswer::Stale;
    };
    if let Err(why) = url::Url::parse(&request.url).map_err(|e| e.to_string()).and_then(|u| {
        crate::egress::check_url(context.settings.egress, &u).map_err(|e| e.to_string())
    }) {
        return failed(Failure::blocked(format!("{}: {why}", request.url), request.file));
    }
    let helped = match context.session(&job).await {
        Ok(helped) => helped,
        Err(failure) => return failed(failure),
    };
    // At most the job's connections fetch from the origin at once.
    let Ok(_permit) = helped.permits.acquire().await else { return ChunkAnswer::Stale };
    // And at most the node's caps toward origins.
    let _capped = context.settings.caps.acquire(&request.url).await;
    let piece =
        Piece { index: 0, local_offset: 0, remote_offset: request.offset, len: request.len };
    let _helping = crate::metrics::Helping::start();
    // A piece for a run that ended (its home node died, or moved the job on) is dropped
    // at once rather than fetched for nobody.
    let fetched = tokio::select! {
        fetched = fetch(&helped.http, &request, piece) => fetched,
        () = run_ended(cluster, request.job, request.run, job.home_node()) => Err(Stop::Stale),
    };
    match fetched {
        Ok(bytes) => {
            // Hashing megabytes is CPU work: off the runtime threads Raft shares.
            let hashed = tokio::task::spawn_blocking(move || {
                let digest = *blake3::hash(&bytes).as_bytes();
                (bytes, digest)
            })
            .await;
            match hashed {
                Ok((bytes, digest)) => ChunkAnswer::Bytes {
                    bytes: ferry_protocol::codec::ByteBuf::from(bytes),
                    digest,
                },
                Err(_) => ChunkAnswer::Stale,
            }
        }
        Err(Stop::Stale) => ChunkAnswer::Stale,
        Err(Stop::RestartFile(why) | Stop::DigestMismatch(why)) => ChunkAnswer::Restart(why),
        Err(Stop::Failed(failure)) => failed(failure),
    }
}

/// How often a helper looks whether the run it fetches for still goes on.
const RUN_CHECK_EVERY: Duration = Duration::from_millis(250);
/// A home node silent this long (a ping a second) has most likely died: its helper
/// drops the piece. Shorter than [`SILENCE`]: a wrong guess costs only a piece the home
/// node asks again, while fetching for a dead node costs origin bytes.
const HOME_SILENCE: Duration = Duration::from_millis(1500);

/// Resolves once run `run` of `job` has ended for its helpers: the job moved to another
/// run or out of the active states, or its home node stopped answering pings for
/// [`HOME_SILENCE`] (it cannot take the piece any more).
async fn run_ended(cluster: &ClusterView, job: JobId, run: u64, home: NodeId) {
    let since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RUN_CHECK_EVERY).await;
        let current =
            cluster.state.read().queue.job(&job).map(|j| (j.run(), j.state().is_active()));
        if current != Some((run, true)) || !cluster.liveness.alive(home, HOME_SILENCE, since) {
            tracing::info!(%job, run, home, "the run a helper fetched for ended; dropping its piece");
            return;
        }
    }
}

fn failed(failure: Failure) -> ChunkAnswer {
    ChunkAnswer::Failed { error: failure.error, severity: failure.severity }
}

/// The piece's bytes from the origin, exactly `piece.len` of them.
async fn fetch(http: &HttpSession, request: &ChunkRequest, piece: Piece) -> Result<Vec<u8>, Stop> {
    let (url, file) = (&request.url, request.file);
    let mut response = request_piece(http, url, &request.remote, piece, file).await?;
    let mut bytes = Vec::with_capacity(usize::try_from(piece.len).unwrap_or(0));
    while let Some(more) = response.chunk().await.map_err(|e| Failure::request(&e, url, file))? {
        if (bytes.len() + more.len()) as u64 > piece.len {
            return Err(Failure::protocol(
                BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                format!("{url}: the server sent more than the {} bytes asked for", piece.len),
                file,
            )
            .into());
        }
        // Pieces fetched for other members draw on this node's limit like its own.
        http.throttle.take(more.len()).await;
        bytes.extend_from_slice(&more);
    }
    if bytes.len() as u64 != piece.len {
        return Err(super::fetch::short_body(url, file, bytes.len() as u64, piece.len));
    }
    Ok(bytes)
}

/// How long a helper (or another fleet member) may leave the node's pings unanswered
/// (see `peer::liveness`) before its pieces are given to others.
pub(crate) const SILENCE: Duration = Duration::from_millis(2500);

/// How long the home node waits for a helper's piece: a stalled or dead helper loses it
/// after this (10 s, plus a second per 512 KiB).
pub(crate) fn deadline(len: u64) -> Duration {
    Duration::from_secs(10 + len / (512 * 1024))
}
