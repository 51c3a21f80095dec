//! Starting and stopping a node: open the data directory and stores, start Raft
//! (bootstrapping a one-node cluster on first start), the proposer and the API server;
//! on shutdown, drain the server and stop Raft.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context as _, Error};
use actix::Actor;
use ferry_coordinator::auth::Directory;
use ferry_coordinator::{ApiState, Auth, Limits, LocalRoots, TokenEntry};
use ferry_protocol::Role;

use crate::cluster::{NodeCluster, Parts};
use crate::config::{OnStorageFailure, Settings};
use crate::data_dir::{DataDir, files};
use crate::egress::EgressPolicy;
use crate::leader::LeaderDuties;
use crate::membership;
use crate::peer::endpoint::PeerEndpoint;
use crate::peer::liveness::Liveness;
use crate::peer::rpc::{AddressBook, Peers, Router};
use crate::proposer::Proposer;
use crate::raft::{self, LogStore, Network, NodeAddr, StateMachineStore};
use crate::scheduler::{Scheduler, SchedulerSettings};
use crate::transfer::{EngineSettings, HttpTimeouts, Transfers};

/// How [`run`] ended, when it ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// `shutdown` resolved.
    Shutdown,
    /// Raft had stopped on a storage failure and the data directory has room again
    /// (`raft.on_storage_failure = "wait_for_space"`): the caller starts the node again,
    /// in this process (`ferryd` executes itself).
    Restart,
}

/// Free bytes the data directory needs before a node waiting for space restarts.
pub const ROOM_TO_RESTART: u64 = 64 * 1024 * 1024;

/// Runs a node until `shutdown` resolves. Must run inside an actix `System` (the
/// proposer is an actor).
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> crate::error::Result<Ended> {
    let config = &settings.config;
    let dir = DataDir::open(&config.data_dir)?;
    let before = dir.entries()?;

    // Nothing is served from a database that another process holds or that is damaged.
    for file in [files::RAFT_LOG, files::STATE] {
        raft::vet_database(&dir.path(file))?;
    }
    let state = StateMachineStore::open(&dir.path(files::STATE), settings.retention())
        .with_context(|| format!("cannot open {}", dir.path(files::STATE).display()))?;
    let log = LogStore::open(&dir.path(files::RAFT_LOG))
        .with_context(|| format!("cannot open {}", dir.path(files::RAFT_LOG).display()))?
        .purging_behind(state.purge_floor());
    let jobs_on_disk = state.read().queue.unfinished_jobs();
    // The databases are locked now: nothing else writes into this directory.
    membership::check(config)?;
    // Tokens: the node's own (configured, or generated), then the cluster's principals.
    let directory: Arc<dyn Directory> =
        Arc::new(crate::principals::AppliedPrincipals(state.clone()));
    let (auth, principals, generated) = if settings.auth.is_empty() {
        // The generated admin token is the one-node default's operator: full access.
        let token = dir.admin_token()?;
        let mut admin = TokenEntry::new(token.clone(), "admin", Role::Admin);
        admin.roots = Some(vec!["/".into()]);
        let entries = vec![admin];
        (Auth::new(&entries)?, entries, Some(token))
    } else {
        (settings.auth.clone(), config.api.tokens.clone(), None)
    };
    let auth = Arc::new(auth.with_directory(directory.clone()));
    let destination_roots = &config.transfer.destination_roots;
    let sandboxes = Arc::new(
        crate::fs::Sandboxes::open(&principals, destination_roots)
            .context("the principals' roots ([[api.tokens]] roots, transfer.destination_roots)")?
            .with_directory(directory.clone()),
    );
    let local_roots =
        Arc::new(LocalRoots::new(&principals, destination_roots.clone()).with_directory(directory));

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))?;
    let api_addr = listener.local_addr()?;

    let start = match membership::establish(&dir, config, api_addr).await {
        Ok(start) => start,
        Err(e) => {
            if !config.cluster.join.is_empty() {
                // A failed join leaves the directory as it found it.
                drop((log, state));
                dir.remove_new(&before);
            }
            return Err(e);
        }
    };
    let node_id = start.node_id;
    // Before Raft starts: a TLS setting that cannot work stops the start here.
    let server_settings =
        crate::api_server::ServerSettings::new(&config.api, dir.root(), node_id, api_addr)?;
    let endpoint = PeerEndpoint::from_socket(start.socket, &start.identity)?;
    let bound_peer_addr = endpoint.local_addr()?;
    let peer_addr = start.peer_addr.clone();
    let announced_api = membership::advertised_api(api_addr, start.peer_ip);
    let raft_config = raft::raft_config(&settings.raft)?;
    // Every subsystem registers the peer requests it serves on this router.
    let router = Arc::new(Router::default());
    let book = Arc::new(AddressBook::default());
    let peers = Peers::new(node_id, endpoint.clone(), book.clone(), router.clone());
    let raft =
        raft::Raft::new(node_id, raft_config, Network::new(peers.clone()), log, state.clone())
            .await?;
    raft::serve_raft(&raft, &router);
    tokio::spawn(track_addresses(raft.clone(), book));
    if start.founder && !raft.is_initialized().await? {
        let me = NodeAddr { api_addr: announced_api.to_string(), peer_addr: peer_addr.clone() };
        raft.initialize(BTreeMap::from([(node_id, me)])).await?;
        tracing::info!(node_id, "bootstrapped a new one-node cluster");
    }

    let proposer = Proposer::new(raft.clone(), config.proposals.max_batch).start();
    Liveness::register(&router);
    let liveness = Liveness::start(node_id, peers.clone());
    let stopped = raft::stop_token(&raft);
    // One bandwidth limit for the node's background transfers; the API may replace its
    // policy until the node restarts.
    let bandwidth = crate::transfer::bandwidth::Bandwidth::new(config.bandwidth.clone())
        .map_err(|e| Error::Config(format!("bandwidth: {e}")))?;
    tokio::spawn(crate::transfer::bandwidth::keep_schedule(Arc::downgrade(&bandwidth)));
    let live = Arc::new(crate::transfer::live::LiveProgress::default());
    let cluster = NodeCluster::new(
        Parts {
            node_id,
            raft: raft.clone(),
            state: state.clone(),
            proposer,
            peers,
            liveness,
            ca_pem: start.identity.ca_pem().into(),
            sandboxes: sandboxes.clone(),
            stopped: stopped.clone(),
            bandwidth: bandwidth.clone(),
            live: live.clone(),
        },
        &router,
    );
    let handle = cluster.handle().clone();
    // The first node's generated token (a cluster founded by this build, or one
    // upgraded from format 8) becomes the cluster's first principal.
    if node_id == membership::FIRST_NODE_ID
        && let Some(token) = &generated
    {
        let digest = ferry_protocol::principals::digest(token);
        tokio::spawn(crate::principals::seed_admin(handle.clone(), digest));
    }
    crate::upload_server::register(&router, dir.path(files::UPLOAD_PIECES));
    let admission = start.admission.map(|(ca, token)| {
        membership::admission_handler(
            handle.clone(),
            cluster.membership(),
            ca,
            token,
            config.cluster.voters,
            dir.root().to_path_buf(),
        )
    });
    let events = crate::bus::handler(state.events().clone(), auth.clone(), node_id);
    let peer_server = endpoint.serve(router.handler(), admission, Some(events));
    let me = NodeAddr { api_addr: announced_api.to_string(), peer_addr: peer_addr.clone() };
    tokio::spawn({
        let (membership, me) = (cluster.membership(), me.clone());
        async move { membership.announce_address(me).await }
    });
    tokio::spawn(crate::cluster::follow_errors(handle.clone()));
    tokio::spawn(crate::notify::run(
        handle.clone(),
        config.notify.clone(),
        crate::notify::Owners::new(&config.api.tokens),
        dir.root().to_path_buf(),
    ));

    let secrets = Arc::new(dir.secret_key()?);
    let t = &config.transfer;
    let has_users = principals.iter().any(|entry| entry.role == Role::User);
    if has_users && destination_roots.is_empty() {
        tracing::info!(
            "users without roots of their own may name no local files; set transfer.destination_roots or their `roots`"
        );
    }
    let extra_roots = match &t.trusted_ca_file {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| {
                format!("cannot read transfer.trusted_ca_file {}", path.display())
            })?;
            reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?
        }
        None => Vec::new(),
    };
    let engine = EngineSettings {
        extra_roots: Arc::new(extra_roots),
        chunk_size: t.chunk_size_bytes,
        connections: t.connections,
        timeouts: HttpTimeouts {
            connect: Duration::from_secs(t.connect_timeout_secs),
            read: Duration::from_secs(t.read_timeout_secs),
        },
        allow_file_urls: t.allow_file_urls,
        egress: EgressPolicy { refuse_private: t.refuse_private_addresses },
        sandboxes,
        trusted_host_ids: Arc::new(t.trusted_host_ids.clone()),
        preemptive_basic_over_http: t.preemptive_basic_over_http,
        source_addr: t.source_addr,
        max_helpers: t.max_helpers,
        caps: Arc::new(crate::transfer::ConnectionCaps::new(
            t.max_origin_connections,
            t.max_connections_per_origin,
        )),
        bandwidth,
        network: crate::netwatch::NetWatch::start(),
        live,
    };
    // From now on this node fetches pieces for other members' jobs and serves its copies.
    crate::transfer::helper::register(
        &router,
        handle.clone(),
        crate::transfer::helper::HelperContext::new(engine.clone(), secrets.clone()),
    );
    crate::transfer::peer_cache::register(
        &router,
        handle.clone(),
        crate::transfer::peer_cache::Serving::new(&config.peer_cache, engine.sandboxes.clone()),
    );
    tokio::spawn(crate::transfer::peer_cache::keep_limits(
        handle.clone(),
        config.peer_cache.clone(),
    ));
    // Network loss and return for the jobs homed here.
    crate::transfer::Reachability::new(node_id, handle.clone(), &engine).start();
    // The actor lives on through its own subscription to the change feed.
    Transfers::new(node_id, handle.clone(), engine, secrets.clone(), cluster.finisher()).start();
    let scheduler = Scheduler::new(
        node_id,
        handle.clone(),
        SchedulerSettings {
            max_active_jobs: t.max_active_jobs,
            time_slice: Duration::from_millis(t.time_slice_ms),
        },
    )
    .start();
    LeaderDuties {
        cluster: handle.clone(),
        membership: cluster.membership(),
        scheduler: scheduler.recipient(),
        policy: config.policy,
        me,
        running: None,
    }
    .start();

    let limits = Limits { max_body_bytes: config.api.max_body_bytes };
    let server_auth = auth.clone();
    let upload_root = config.upload.root.clone().unwrap_or_else(|| dir.path(files::UPLOADS));
    std::fs::create_dir_all(&upload_root)
        .with_context(|| format!("cannot create the upload root {}", upload_root.display()))?;
    let uploads =
        crate::upload_server::UploadServer {
            cluster: handle.clone(),
            auth: auth.clone(),
            root: Arc::new(crate::fs::dir::Dir::open_root(&upload_root).with_context(|| {
                format!("cannot open the upload root {}", upload_root.display())
            })?),
            pieces: dir.path(files::UPLOAD_PIECES),
            max_size: config.upload.max_size_bytes,
            allow_overwrite: config.upload.allow_overwrite,
            backend: crate::upload_server::Backend {
                mode: config.upload.backend,
                url: config.upload.backend_url.clone().unwrap_or_default(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(config.upload.backend_timeout_secs))
                    .no_proxy()
                    .build()
                    .context("the upload back end's HTTP client")?,
            },
            host_id: config
                .upload
                .host_id
                .clone()
                .map(|host| (host, config.upload.host_id_fallback_timeout_secs)),
            public: api_addr.to_string(),
            scheme: if config.api.uses_tls() { "https" } else { "http" },
            in_flight: crate::upload_server::InFlight::default(),
        };
    tokio::spawn(crate::upload_server::sweep_pieces(
        handle.clone(),
        dir.path(files::UPLOAD_PIECES),
    ));
    let notify = Arc::new(config.notify.policy());
    let app = ferry_coordinator::router(
        ApiState { cluster: Arc::new(cluster), auth, secrets, roots: local_roots, notify },
        limits,
    )
    .merge(crate::upload_server::router(uploads, config.upload.max_fragment_bytes))
    .layer(axum::middleware::from_fn_with_state(
        crate::metrics::get().api.clone(),
        ferry_coordinator::metrics::record,
    ))
    .layer(axum::middleware::map_response_with_state(stopped, close_when_stopped));
    dir.write_peer_addr(bound_peer_addr)?;
    dir.write_api_addr(api_addr)?;
    let scheme = server_settings.scheme();
    tracing::info!(node_id, %api_addr, scheme, data_dir = %config.data_dir.display(), unfinished_jobs = jobs_on_disk, "ferryd is serving");

    let server = crate::api_server::ApiServer::spawn(listener, app, server_auth, server_settings);
    crate::sd_notify::notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=node {node_id} serving the API on {api_addr}",
        std::process::id()
    ));

    let mut shutdown = std::pin::pin!(shutdown);
    let outcome = tokio::select! {
        () = &mut shutdown => Ok(Ended::Shutdown),
        error = raft::stopped_on_error(&raft) => match config.raft.on_storage_failure {
            OnStorageFailure::Exit => {
                tracing::error!(%error, "raft stopped on a fatal error; exiting");
                Err(Error::Config(format!("raft stopped on a fatal error: {error}")))
            }
            OnStorageFailure::WaitForSpace => {
                crate::sd_notify::notify(
                    "STATUS=Raft stopped on a storage failure: writes are refused until the \
                     data directory has room",
                );
                tracing::error!(
                    %error,
                    room = ROOM_TO_RESTART,
                    "raft stopped on a fatal error; writes are refused until the data \
                     directory has room, then ferryd restarts"
                );
                tokio::select! {
                    () = &mut shutdown => Ok(Ended::Shutdown),
                    () = wait_for_room(&config.data_dir) => Ok(Ended::Restart),
                }
            }
        }
    };
    tracing::info!("shutting down");
    crate::sd_notify::notify("STOPPING=1");
    dir.clear_api_addr();
    if !server.stop(Duration::from_secs(10)).await {
        tracing::warn!("API server did not drain within 10 s");
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    if tokio::time::timeout(Duration::from_secs(5), endpoint.close()).await.is_err() {
        tracing::warn!("peer connections did not close within 5 s");
    }
    peer_server.abort();
    outcome
}

/// Returns once `dir` has [`ROOM_TO_RESTART`] free bytes and takes a synced write,
/// checking every second.
async fn wait_for_room(dir: &std::path::Path) {
    let probe = dir.join(".room-probe");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let free = rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
        if free < ROOM_TO_RESTART {
            continue;
        }
        let written = std::fs::File::create(&probe)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, &[0u8; 64 * 1024])?;
                file.sync_all()
            })
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        if written {
            tracing::info!(free, "the data directory has room again; restarting");
            return;
        }
    }
}

/// Once Raft stopped on a fatal error the node is about to exit: every answer says
/// `Connection: close`, so no client sends its next request on a connection that the
/// shutdown is about to close (it reconnects, to another node or a restarted one).
async fn close_when_stopped(
    axum::extract::State(stopped): axum::extract::State<tokio_util::sync::CancellationToken>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if stopped.is_cancelled() {
        response
            .headers_mut()
            .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// Keeps the Raft network's address book equal to the membership's addresses.
async fn track_addresses(raft: raft::Raft, book: Arc<AddressBook>) {
    let mut metrics = raft.metrics();
    loop {
        let nodes: Vec<(u64, String)> = {
            let m = metrics.borrow_and_update();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.peer_addr.clone()))
                .collect()
        };
        book.update(nodes.into_iter());
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
