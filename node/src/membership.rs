//! How a node takes its place in a cluster at start (DESIGN §8): restart with
//! the identity in its data directory; join with `--join` and a token; or found a new
//! cluster (create the CA, the join token and its own certificate). Also the admission
//! of joining nodes, on every member (each holds the CA key and the token from its own
//! join): check the token, take the next node id through Raft, certify the node's key,
//! add it as a learner and promote it to voter while the cluster wants more voters.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context as _, Error};
use ferry_coordinator::ClusterError;
use ferry_protocol::codec;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::peer::endpoint::Handler;
use crate::peer::identity::{ClusterCa, NodeIdentity, write_private};
use crate::peer::join::{
    JoinAnswer, JoinFailure, JoinRefusal, JoinRequest, JoinToken, request_join,
};
use crate::raft::NodeAddr;
use crate::replica::{ClusterView, Membership};

pub(crate) use ferry_protocol::ids::FIRST_NODE_ID;
/// The join token of the cluster (0600), beside the CA key.
const JOIN_TOKEN_FILE: &str = "join.token";

/// What a node starts with.
pub(crate) struct Start {
    /// This node's id.
    pub(crate) node_id: u64,
    /// Its certificate and key.
    pub(crate) identity: NodeIdentity,
    /// The bound peer (QUIC) socket.
    pub(crate) socket: UdpSocket,
    /// The peer address other members dial (`peer.advertise`): an address, or a name
    /// they resolve.
    pub(crate) peer_addr: String,
    /// What it resolved to at start.
    pub(crate) peer_ip: SocketAddr,
    /// True when this start founded the cluster (it must bootstrap Raft).
    pub(crate) founder: bool,
    /// The CA and join token, with which this node admits new nodes.
    pub(crate) admission: Option<(ClusterCa, JoinToken)>,
}

/// Finds or makes this node's identity (see the module doc).
pub(crate) async fn establish(
    dir: &DataDir,
    config: &Config,
    api_addr: SocketAddr,
) -> crate::error::Result<Start> {
    let socket = UdpSocket::bind(config.peer.listen)
        .with_context(|| format!("cannot listen on {}/udp", config.peer.listen))?;
    let (peer_addr, peer_ip) = advertised(&config.peer, socket.local_addr()?).await?;
    let root = dir.root();
    let known_id = read_id(&root.join(crate::data_dir::files::NODE_ID))?;
    if let Some(id) = known_id
        && let Some(identity) = NodeIdentity::load(root, id)?
    {
        return Ok(Start {
            node_id: id,
            identity,
            socket,
            peer_addr,
            peer_ip,
            founder: false,
            admission: admission(root)?,
        });
    }
    if !config.cluster.join.is_empty() {
        let token: JoinToken = config
            .cluster
            .join_token
            .as_deref()
            .context("--join needs --join-token (printed by the first node, in its data directory's join.token)")?
            .parse()?;
        let key = NodeIdentity::new_key()?;
        let request = JoinRequest {
            secret: token.secret.clone(),
            public_key: key.public_key_raw().to_vec(),
            peer_addr: peer_addr.clone(),
            api_addr: advertised_api(api_addr, peer_ip).to_string(),
        };
        let bootstrap = config.cluster.bootstrap;
        let patience = Duration::from_secs(if bootstrap {
            config.cluster.bootstrap_wait_secs
        } else {
            config.cluster.join_patience_secs
        });
        match join_any(&config.cluster.join, &token, &request, peer_ip, patience).await {
            Ok(answer) => return joined(dir, answer, &token, key, socket, (peer_addr, peer_ip)),
            // Nobody admitted this node: it founds the cluster below.
            Err(Error::Unavailable(why)) if bootstrap => {
                tracing::info!(%why, "no member admitted this node; it founds the cluster");
            }
            Err(e) => return Err(e),
        }
    }
    let node_id = known_id.unwrap_or(FIRST_NODE_ID);
    let (ca, token) = match &config.cluster.identity_dir {
        Some(identity_dir) => read_identity(identity_dir)?,
        None => {
            let ca = ClusterCa::generate()?;
            let token = JoinToken::generate(ca.fingerprint(), node_id)?;
            (ca, token)
        }
    };
    ca.save(root)?;
    let key = NodeIdentity::new_key()?;
    let identity = NodeIdentity::new(
        node_id,
        &key,
        ca.issue(node_id, key.public_key_raw())?,
        ca.cert().clone(),
    );
    identity.save(root)?;
    dir.node_id(node_id)?;
    write_private(&root.join(JOIN_TOKEN_FILE), format!("{token}\n").as_bytes())?;
    tracing::info!(node_id, ca = %ca.fingerprint(), token_file = %root.join(JOIN_TOKEN_FILE).display(), "founded a new cluster; other nodes join with --join {peer_addr} --join-token <the token in token_file>");
    Ok(Start {
        node_id,
        identity,
        socket,
        peer_addr,
        peer_ip,
        founder: true,
        admission: Some((ca, token)),
    })
}

/// Takes the identity a member handed out: certificate, CA, the cluster's secret key
/// and join token.
fn joined(
    dir: &DataDir,
    answer: JoinAnswer,
    token: &JoinToken,
    key: rcgen::KeyPair,
    socket: UdpSocket,
    (peer_addr, peer_ip): (String, SocketAddr),
) -> crate::error::Result<Start> {
    let root = dir.root();
    if answer.secret_key.len() != ferry_coordinator::secrets::KEY_LEN {
        return Err(Error::Config("the cluster sent no usable secret key".to_string()));
    }
    let ca = ClusterCa::from_parts(answer.ca.clone().into(), &answer.ca_key_pem)?;
    if ca.fingerprint() != token.ca_fingerprint {
        return Err(Error::Config(
            "the cluster sent a CA that its join token does not name".into(),
        ));
    }
    let identity = NodeIdentity::new(answer.node_id, &key, answer.cert.into(), answer.ca.into());
    identity.save(root)?;
    // The cluster's key replaces any this data directory had: sealed secrets must
    // open on every member.
    write_private(&root.join(crate::data_dir::files::SECRET_KEY), &answer.secret_key)?;
    // With the CA key and the token, this node admits joins in its turn.
    ca.save(root)?;
    let token: JoinToken = answer.token.parse()?;
    write_private(&root.join(JOIN_TOKEN_FILE), format!("{token}\n").as_bytes())?;
    dir.node_id(answer.node_id)?;
    tracing::info!(node_id = answer.node_id, "joined the cluster");
    Ok(Start {
        node_id: answer.node_id,
        identity,
        socket,
        peer_addr,
        peer_ip,
        founder: false,
        admission: Some((ca, token)),
    })
}

/// Makes a cluster identity in `out` (`ferryd init-cluster`): a new CA (`ca.pem`,
/// `ca.key`) and a join token naming it (`join.token`), for a founder started with
/// `cluster.identity_dir`. Returns the CA's fingerprint. Refuses to overwrite.
pub fn init_cluster(out: &Path) -> crate::error::Result<String> {
    use std::os::unix::fs::DirBuilderExt as _;
    let names = [
        crate::peer::identity::files::CA_CERT,
        crate::peer::identity::files::CA_KEY,
        JOIN_TOKEN_FILE,
    ];
    if let Some(existing) = names.iter().map(|n| out.join(n)).find(|p| p.exists()) {
        return Err(Error::Config(format!(
            "{} exists: init-cluster does not replace a cluster identity",
            existing.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let ca = ClusterCa::generate()?;
    let token = JoinToken::generate(ca.fingerprint(), FIRST_NODE_ID)?;
    ca.save(out)?;
    write_private(&out.join(JOIN_TOKEN_FILE), format!("{token}\n").as_bytes())?;
    Ok(ca.fingerprint())
}

/// Refuses a `cluster.identity_dir` whose CA and token cannot be read or do not belong
/// together (`check-config`, and before a start touches the data directory).
pub(crate) fn check_identity(cluster: &crate::config::ClusterConfig) -> crate::error::Result<()> {
    match &cluster.identity_dir {
        Some(dir) => read_identity(dir).map(drop),
        None => Ok(()),
    }
}

/// The CA and join token of `cluster.identity_dir`, checked to belong together.
fn read_identity(dir: &Path) -> crate::error::Result<(ClusterCa, JoinToken)> {
    let ca = ClusterCa::load(dir).context("cluster.identity_dir")?;
    let path = dir.join(JOIN_TOKEN_FILE);
    let token: JoinToken = std::fs::read_to_string(&path)
        .with_context(|| format!("cluster.identity_dir: cannot read {}", path.display()))?
        .parse()?;
    if token.ca_fingerprint != ca.fingerprint() || token.issuer != FIRST_NODE_ID {
        return Err(Error::Config(format!(
            "cluster.identity_dir: {} does not belong to the CA beside it",
            path.display()
        )));
    }
    Ok((ca, token))
}

/// The peer address other members dial (see `peer.advertise`) and what it resolves to
/// now: a name given in `peer.advertise` is announced as the name, which members
/// resolve when they call, so that it may move.
async fn advertised(
    config: &crate::config::PeerConfig,
    local: SocketAddr,
) -> crate::error::Result<(String, SocketAddr)> {
    let (host, port, named) = match &config.advertise {
        Some(advertise) => {
            let (host, port) = advertise.rsplit_once(':').ok_or_else(|| {
                Error::Config(format!("peer.advertise {advertise:?} is not host:port"))
            })?;
            let port = port.parse::<u16>().map_err(|_| {
                Error::Config(format!("peer.advertise {advertise:?} has no valid port"))
            })?;
            let host = host.trim_matches(['[', ']']).to_string();
            if host.is_empty() {
                return Err(Error::Config(format!("peer.advertise {advertise:?} names no host")));
            }
            let named = host.parse::<std::net::IpAddr>().is_err();
            (host, port, named)
        }
        None if !local.ip().is_unspecified() => return Ok((local.to_string(), local)),
        None => {
            let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("peer.listen is a wildcard address and this host's name is unknown: set peer.advertise")?;
            (name.trim().to_string(), local.port(), false)
        }
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host} (peer.advertise)"))?
        .collect();
    // The first address that is not loopback, unless the name means loopback only.
    let ip =
        addrs.iter().find(|a| !a.ip().is_loopback()).or(addrs.first()).copied().ok_or_else(
            || Error::Config(format!("{host} resolves to no address (peer.advertise)")),
        )?;
    let announced = if named { format!("{host}:{port}") } else { ip.to_string() };
    Ok((announced, ip))
}

/// Checks a peer address a joining node announces: an address, or `name:port`.
fn check_peer_addr(addr: &str) -> Result<(), JoinRefusal> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || JoinRefusal::BadRequest("the peer address is not an address or name:port".into());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !name_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// The API address announced to the other members: the bound one, or with a wildcard
/// listen address, the advertised peer address's host.
pub(crate) fn advertised_api(api: SocketAddr, peer: SocketAddr) -> SocketAddr {
    if api.ip().is_unspecified() { SocketAddr::new(peer.ip(), api.port()) } else { api }
}

/// Tries each seed (addresses or names resolving to several) until one admits us,
/// round after round with backoff while failures are transient, for `patience`.
async fn join_any(
    seeds: &[String],
    token: &JoinToken,
    request: &JoinRequest,
    me: SocketAddr,
    patience: Duration,
) -> crate::error::Result<JoinAnswer> {
    if seeds.is_empty() {
        return Err(Error::Config("no --join address given".to_string()));
    }
    // Every node may be given the same seed list: a node does not ask itself.
    with_patience(patience, || async {
        let mut last = None;
        for seed in seeds {
            // A name that does not resolve yet (a container not started) is transient.
            let addrs: Vec<SocketAddr> = match seed.to_socket_addrs() {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    let why = Error::Unavailable(format!("cannot resolve {seed}: {e}"));
                    last = Some(JoinFailure::Failed(why));
                    continue;
                }
            };
            for addr in addrs.into_iter().filter(|a| *a != me) {
                match request_join(addr, token, request).await {
                    Ok(answer) => return Ok(answer),
                    Err(e) if !e.is_transient() => return Err(e),
                    Err(e) => {
                        tracing::info!(%addr, error = %e, "join attempt failed");
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            JoinFailure::Failed(Error::Unavailable("no join address resolved".into()))
        }))
    })
    .await
    .map_err(|e| match e {
        JoinFailure::Refused(refusal) => {
            Error::Config(format!("the cluster refused the join: {refusal}"))
        }
        JoinFailure::Failed(e) => Error::Unavailable(format!("cannot join the cluster: {e}")),
    })
}

/// First wait between join rounds; doubled after each, up to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between join rounds.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, fails for good, or `patience` is spent (the last
/// failure is returned), waiting longer after each transient failure.
async fn with_patience<T, F, Fut>(patience: Duration, mut attempt: F) -> Result<T, JoinFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, JoinFailure>>,
{
    let give_up = tokio::time::Instant::now() + patience;
    let mut wait = JOIN_BACKOFF;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() + wait < give_up => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(JOIN_BACKOFF_MAX);
            }
            outcome => return outcome,
        }
    }
}

/// The CA and token, if this node holds the CA key (every member since it joined).
fn admission(root: &Path) -> crate::error::Result<Option<(ClusterCa, JoinToken)>> {
    if !root.join(crate::peer::identity::files::CA_KEY).exists() {
        return Ok(None);
    }
    let ca = ClusterCa::load(root)?;
    let token = std::fs::read_to_string(root.join(JOIN_TOKEN_FILE))
        .context("the join token is missing beside the CA key")?
        .parse()?;
    Ok(Some((ca, token)))
}

/// Serves join requests (on every member that holds the CA key).
pub(crate) fn admission_handler(
    cluster: ClusterView,
    membership: Arc<dyn Membership>,
    ca: ClusterCa,
    token: JoinToken,
    voters: usize,
    root: PathBuf,
) -> Handler {
    let voters = u32::try_from(voters).unwrap_or(u32::MAX);
    let admit = Arc::new(Admit {
        cluster,
        membership,
        ca,
        token,
        voters,
        root,
        lock: tokio::sync::Mutex::new(()),
    });
    Arc::new(move |_, body: Vec<u8>| {
        let admit = admit.clone();
        Box::pin(async move {
            let answer = match codec::decode::<JoinRequest>(&body) {
                Ok(request) => admit.admit(request).await,
                Err(e) => Err(JoinRefusal::BadRequest(format!("unreadable join request: {e}"))),
            };
            if let Err(refusal) = &answer {
                tracing::warn!(%refusal, "a join was refused");
            }
            codec::encode(&answer).unwrap_or_default().into()
        })
    })
}

struct Admit {
    cluster: ClusterView,
    membership: Arc<dyn Membership>,
    ca: ClusterCa,
    token: JoinToken,
    voters: u32,
    root: PathBuf,
    /// Serializes admissions: one node id, one membership change at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Admit {
    async fn admit(&self, request: JoinRequest) -> Result<JoinAnswer, JoinRefusal> {
        use JoinRefusal::{BadRequest, BadToken, Busy};

        if !self.token.admits(&request.secret) {
            return Err(BadToken);
        }
        if request.public_key.len() != 65 || request.public_key[0] != 4 {
            return Err(BadRequest("the public key is not an uncompressed P-256 point".into()));
        }
        check_peer_addr(&request.peer_addr)?;
        let peer_addr = request.peer_addr.clone();
        let _serial = self.lock.lock().await;
        let node_id = self.next_node_id().await.map_err(|e| Busy(e.to_string()))?;
        let cert =
            self.ca.issue(node_id, &request.public_key).map_err(|e| BadRequest(e.to_string()))?;
        let secret_key = std::fs::read(self.root.join(crate::data_dir::files::SECRET_KEY))
            .map_err(|e| Busy(format!("this member cannot read the cluster secret key: {e}")))?;
        let addr = NodeAddr { api_addr: request.api_addr, peer_addr: peer_addr.to_string() };
        // Any refusal here (no leader, a membership change in progress) passes.
        self.membership
            .add_member(node_id, addr, self.voters)
            .await
            .map_err(|e| Busy(format!("cannot add node {node_id}: {e}")))?;
        tracing::info!(node_id, %peer_addr, "admitted a node as a learner");
        Ok(JoinAnswer {
            node_id,
            cert: cert.to_vec(),
            ca: self.ca.cert().to_vec(),
            secret_key,
            ca_key_pem: self.ca.key_pem(),
            token: self.token.to_string(),
        })
    }

    /// The next node id, handed out through Raft (members admit concurrently; an id is
    /// never given twice, not even after its node left).
    async fn next_node_id(&self) -> Result<u64, ClusterError> {
        use ferry_protocol::command::{Command, Proposal, Reply};

        let at_least = self.cluster.member_ids().into_iter().max().unwrap_or(0);
        let proposal = Proposal {
            // A retry after a lost answer would hand out a second id: harmless (ids are
            // only skipped), so no request id.
            request_id: None,
            caller: crate::transfer::system_caller(),
            command: Command::AllocateNodeId { at_least },
        };
        match self.cluster.write(proposal).await?.result {
            Ok(Reply::NodeId(id)) => Ok(id),
            Ok(other) => Err(ClusterError::Unavailable(format!(
                "unexpected answer to a node id request: {other:?}"
            ))),
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }
}

fn read_id(path: &Path) -> crate::error::Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            text.trim().parse().with_context(|| format!("{} holds no node id", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Refuses a configuration that cannot join.
pub(crate) fn check(config: &Config) -> crate::error::Result<()> {
    if config.cluster.voters == 0 {
        return Err(Error::Config("cluster.voters must be at least 1".to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn the_advertised_address_is_the_listen_address_or_the_named_one() {
        use crate::config::PeerConfig;
        let bound: SocketAddr = "127.0.0.9:7171".parse().expect("address");
        let plain = PeerConfig { listen: bound, advertise: None };
        let (announced, ip) = advertised(&plain, bound).await.expect("listen address");
        assert_eq!((announced.as_str(), ip), ("127.0.0.9:7171", bound));
        // A name is announced as the name (members resolve it when they call).
        let named = PeerConfig { advertise: Some("localhost:7200".into()), ..plain.clone() };
        let (announced, ip) = advertised(&named, bound).await.expect("a name that resolves");
        assert_eq!(announced, "localhost:7200");
        assert_eq!((ip.ip().is_loopback(), ip.port()), (true, 7200));
        let literal = PeerConfig { advertise: Some("[::1]:7300".into()), ..plain.clone() };
        assert_eq!(advertised(&literal, bound).await.expect("an address").0, "[::1]:7300");
        let wildcard: SocketAddr = "0.0.0.0:7171".parse().expect("address");
        let host = PeerConfig { listen: wildcard, advertise: None };
        let (announced, ip) = advertised(&host, wildcard).await.expect("this host's name");
        assert!(!ip.ip().is_unspecified() && ip.port() == 7171, "{ip}");
        assert_eq!(announced, ip.to_string());
        assert_eq!(advertised_api("0.0.0.0:7070".parse().expect("a"), ip).ip(), ip.ip());
        for bad in ["no-port", "host:port", "[::1]:99999", ":7000"] {
            let config = PeerConfig { advertise: Some(bad.into()), ..plain.clone() };
            let error = advertised(&config, bound).await.expect_err(bad).to_string();
            assert!(error.contains("peer.advertise"), "{bad}: {error}");
        }
        for good in ["10.0.0.1:7071", "ferry-0.ferry-peers.ns.svc:7071", "[::1]:7071"] {
            assert!(check_peer_addr(good).is_ok(), "{good}");
        }
        for bad in ["ferry-0", "a b:7071", "x:70000", ":7071", "evil/name:1"] {
            assert!(check_peer_addr(bad).is_err(), "{bad}");
        }
    }

    fn busy() -> JoinFailure {
        JoinFailure::Refused(JoinRefusal::Busy("a membership change is in progress".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_refusals_are_asked_again_with_backoff() {
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let outcome = with_patience(Duration::from_secs(60), || async {
            match tries.fetch_add(1, Ordering::Relaxed) {
                0 => Err(busy()),
                1 => Err(JoinFailure::Failed(Error::Unavailable("unreachable".into()))),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(outcome.ok(), Some(7));
        assert_eq!(tries.load(Ordering::Relaxed), 3);
        // 250 ms, then 500 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_token_or_a_foreign_cluster_is_not_asked_again() {
        for failure in [
            || JoinFailure::Refused(JoinRefusal::BadToken),
            || JoinFailure::Failed(Error::Config("not part of the cluster".into())),
        ] {
            let tries = AtomicU32::new(0);
            let outcome: Result<(), _> = with_patience(Duration::from_secs(60), || async {
                tries.fetch_add(1, Ordering::Relaxed);
                Err(failure())
            })
            .await;
            assert!(outcome.is_err());
            assert_eq!(tries.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn patience_ends_with_the_last_failure() {
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let outcome: Result<(), _> = with_patience(Duration::from_secs(20), || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Err(busy())
        })
        .await;
        assert!(matches!(outcome, Err(JoinFailure::Refused(JoinRefusal::Busy(_)))));
        assert!(started.elapsed() <= Duration::from_secs(20));
        // 0.25 + 0.5 + 1 + 2 + 4 + 5 + 5 = 17.75 s, the next wait would pass 20 s.
        assert_eq!(tries.load(Ordering::Relaxed), 8);
    }
}
