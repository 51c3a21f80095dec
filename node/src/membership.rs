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

/// The id the first node of a cluster takes.
const FIRST_NODE_ID: u64 = 1;
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
    let peer_addr = socket.local_addr()?;
    let root = dir.root();
    let known_id = read_id(&root.join(crate::data_dir::files::NODE_ID))?;
    if let Some(id) = known_id
        && let Some(identity) = NodeIdentity::load(root, id)?
    {
        return Ok(Start {
            node_id: id,
            identity,
            socket,
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
            peer_addr: peer_addr.to_string(),
            api_addr: api_addr.to_string(),
        };
        let patience = Duration::from_secs(config.cluster.join_patience_secs);
        let answer = join_any(&config.cluster.join, &token, &request, patience).await?;
        if answer.secret_key.len() != ferry_coordinator::secrets::KEY_LEN {
            return Err(Error::Config("the cluster sent no usable secret key".to_string()));
        }
        let ca = ClusterCa::from_parts(answer.ca.clone().into(), &answer.ca_key_pem)?;
        if ca.fingerprint() != token.ca_fingerprint {
            return Err(Error::Config(
                "the cluster sent a CA that its join token does not name".to_string(),
            ));
        }
        let identity =
            NodeIdentity::new(answer.node_id, &key, answer.cert.into(), answer.ca.into());
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
        return Ok(Start {
            node_id: answer.node_id,
            identity,
            socket,
            founder: false,
            admission: Some((ca, token)),
        });
    }
    let node_id = known_id.unwrap_or(FIRST_NODE_ID);
    let ca = ClusterCa::generate()?;
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
    let token = JoinToken::generate(ca.fingerprint(), node_id)?;
    write_private(&root.join(JOIN_TOKEN_FILE), format!("{token}\n").as_bytes())?;
    tracing::info!(node_id, ca = %ca.fingerprint(), token_file = %root.join(JOIN_TOKEN_FILE).display(), "founded a new cluster; other nodes join with --join {peer_addr} --join-token <the token in token_file>");
    Ok(Start { node_id, identity, socket, founder: true, admission: Some((ca, token)) })
}

/// Tries each seed (addresses or names resolving to several) until one admits us,
/// round after round with backoff while failures are transient, for `patience`.
async fn join_any(
    seeds: &[String],
    token: &JoinToken,
    request: &JoinRequest,
    patience: Duration,
) -> crate::error::Result<JoinAnswer> {
    if seeds.is_empty() {
        return Err(Error::Config("no --join address given".to_string()));
    }
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
            for addr in addrs {
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
        let peer_addr: SocketAddr = request
            .peer_addr
            .parse()
            .map_err(|_| BadRequest("the peer address is not an address".into()))?;
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
