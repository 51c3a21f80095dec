//! The QUIC peer endpoint (DESIGN §8, G13): one quinn endpoint per node, server and
//! client at once, mutual TLS with the cluster CA both ways. A request is one
//! bidirectional stream carrying one frame each way (versioned, size-limited by
//! `protocol::codec`); connections are cached per peer and re-established lazily.
//!
//! Who calls is proven, not claimed: the client's certificate must be signed by the
//! cluster CA (rustls refuses the handshake otherwise) and must name the node id the
//! request says it comes from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Context as _;
use ferry_coordinator::BoxFuture;
use ferry_protocol::codec::{self, ByteBuf};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::identity::{NodeIdentity, node_name};
use super::join::{JOIN_ALPN, MAX_JOIN_FRAME};

/// The ALPN of the peer protocol (client certificate required).
pub(crate) const ALPN: &[u8] = b"ferry-peer/1";
/// Largest request or answer frame.
pub(crate) const MAX_FRAME: usize = codec::FRAME_LIMIT;
/// Keep-alives keep idle cluster connections open (quinn's idle timeout is 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers larger than this go at a lower priority than the rest.
const BULK_ANSWER: usize = 64 * 1024;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection attempt in progress: its outcome once known.
type Pending = tokio::sync::watch::Receiver<Option<Result<quinn::Connection, String>>>;

/// Serves requests: (verified caller id, request body) → answer body.
pub(crate) type Handler = Arc<dyn Fn(u64, Vec<u8>) -> BoxFuture<'static, Served> + Send + Sync>;

/// What a [`Handler`] answers: the bytes, and what must live until they are written (a
/// permit that bounds the answers a node holds in memory at once).
pub(crate) struct Served {
    /// The answer.
    pub(crate) bytes: Vec<u8>,
    /// Released once the answer is written (or the stream is gone).
    pub(crate) hold: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl From<Vec<u8>> for Served {
    fn from(bytes: Vec<u8>) -> Self {
        Self { bytes, hold: None }
    }
}
/// Tells a caller when the answer it awaits is about a round trip from its last byte:
/// a caller that pipelines sends its next request then, and that request reaches the
/// peer as this answer's last bytes leave it.
pub(crate) struct NearEnd {
    /// The answer's expected size in bytes (its framing adds a few).
    pub(crate) expected: usize,
    /// How many round trips from its end the answer is when `tell` is told.
    pub(crate) round_trips: u32,
    /// Told once, if the answer flows long enough to tell (a dropped sender is no
    /// signal).
    pub(crate) tell: tokio::sync::oneshot::Sender<()>,
}

/// Serves a whole connection of another protocol (the event bus).
pub(crate) type ConnectionHandler =
    Arc<dyn Fn(quinn::Connection) -> BoxFuture<'static, ()> + Send + Sync>;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// No connection could be made (unreachable, or the TLS handshake failed).
    #[error("cannot connect to node {node} at {addr}: {reason}")]
    Connect {
        /// The node called.
        node: u64,
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No answer came in time.
    #[error("node {node} did not answer within {after:?}")]
    Timeout {
        /// The node called.
        node: u64,
        /// How long the call waited.
        after: Duration,
    },
    /// The connection broke during the call.
    #[error("the call to node {node} failed: {0}", node = .1)]
    Stream(String, u64),
    /// The peer refused the request.
    #[error("node {node} refused the request: {reason}")]
    Refused {
        /// The node called.
        node: u64,
        /// Its reason.
        reason: String,
    },
    /// A frame could not be encoded or decoded.
    #[error("bad frame: {0}")]
    Frame(#[from] codec::CodecError),
}

/// A request as it travels: who sends it (checked against the certificate) and what.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: u64,
    body: ByteBuf,
}

/// An answer as it travels.
#[derive(Serialize, Deserialize)]
enum Answer {
    Ok(ByteBuf),
    Refused(String),
}

/// This node's QUIC endpoint.
pub(crate) struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    node_id: u64,
    /// Open connections by peer node id.
    connections: Arc<Mutex<HashMap<u64, quinn::Connection>>>,
    /// Connection attempts in progress, by peer node id. An attempt runs as its own
    /// task, so a call that times out does not cancel it: the next call finds the
    /// connection made (a handshake may take longer than one short RPC deadline).
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
}

impl PeerEndpoint {
    /// Binds `addr` (UDP) with `identity`.
    #[cfg(test)]
    pub(crate) fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
    ) -> crate::error::Result<Arc<Self>> {
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("cannot listen on {addr}/udp"))?;
        Self::from_socket(socket, identity)
    }

    /// Serves on an already bound socket (a joining node binds first, to tell the
    /// cluster its address, and gets its identity after).
    pub(crate) fn from_socket(
        socket: std::net::UdpSocket,
        identity: &NodeIdentity,
    ) -> crate::error::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.ca.clone()).context("the cluster CA certificate is not usable")?;
        let roots = Arc::new(roots);
        let chain = vec![identity.cert.clone()];

        // Clients without a certificate may connect for joining and for the event bus
        // only (`serve_connection` enforces it). The server also sends the CA certificate, so
        // that a joining node can check it against its token's fingerprint.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .context("cannot build the peer certificate verifier")?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![identity.cert.clone(), identity.ca.clone()],
                identity.private_key(),
            )
            .context("the node certificate or key is not usable")?;
        server_tls.alpn_protocols =
            vec![ALPN.to_vec(), JOIN_ALPN.to_vec(), ferry_coordinator::bus::ALPN.to_vec()];
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, identity.private_key())
            .context("the node certificate or key is not usable")?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];

        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?));
        transport.max_concurrent_bidi_streams(256u32.into());
        let transport = Arc::new(transport);

        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        server.transport_config(transport.clone());
        let mut client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
        client.transport_config(transport);
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        // The stateless reset key is derived from the node's private key, so it is the
        // same after a restart: a peer still holding a connection to the node's previous
        // run gets a valid reset at its first packet and reconnects at once, instead of
        // waiting for the idle timeout while its calls go unanswered.
        let reset_seed = ring::digest::digest(&ring::digest::SHA256, identity.key_der());
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_seed.as_ref());
        let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // quinn's default connection ids carry a per-run key, and packets whose ids fail
        // it are dropped without a reset: random ids are never refused.
        config.cid_generator(|| Box::new(RandomCids));
        let mut endpoint = quinn::Endpoint::new(config, Some(server), socket, runtime)
            .context("cannot start the QUIC endpoint")?;
        endpoint.set_default_client_config(client);
        Ok(Arc::new(Self {
            endpoint,
            node_id: identity.node_id,
            connections: Arc::new(Mutex::new(HashMap::new())),
            pending: Arc::new(Mutex::new(HashMap::new())),
        }))
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> crate::error::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Sends `body` to node `node` at `addr` and returns its answer, giving up after
    /// `timeout` (a dead peer does not answer; QUIC would wait for its idle timeout).
    /// `near`, if given, is told when the answer is a round trip from its end.
    pub(crate) async fn call(
        &self,
        node: u64,
        addr: SocketAddr,
        body: Vec<u8>,
        timeout: Duration,
        near: Option<NearEnd>,
    ) -> Result<Vec<u8>, PeerError> {
        match tokio::time::timeout(timeout, self.call_unbounded(node, addr, body, near)).await {
            Ok(result) => result,
            // The connection stays: a slow answer is not a dead peer (QUIC's idle
            // timeout and stateless resets tell those).
            Err(_) => Err(PeerError::Timeout { node, after: timeout }),
        }
    }

    async fn call_unbounded(
        &self,
        node: u64,
        addr: SocketAddr,
        body: Vec<u8>,
        mut near: Option<NearEnd>,
    ) -> Result<Vec<u8>, PeerError> {
        let frame = codec::encode(&Envelope { from: self.node_id, body: ByteBuf::from(body) })?;
        let mut connection = self.connection(node, addr).await?;
        let mut result = exchange(&connection, &frame, &mut near).await;
        if result.is_err() {
            // Reconnect on the next call.
            self.connections.lock().await.remove(&node);
            // A stateless reset means the peer restarted and holds no state of this
            // connection: the request never reached it, so it goes once more, at once.
            if matches!(connection.close_reason(), Some(quinn::ConnectionError::Reset)) {
                connection = self.connection(node, addr).await?;
                result = exchange(&connection, &frame, &mut near).await;
                if result.is_err() {
                    self.connections.lock().await.remove(&node);
                }
            }
        }
        let answer: Answer = codec::decode(&result.map_err(|e| PeerError::Stream(e, node))?)?;
        match answer {
            Answer::Ok(body) => Ok(body.into_vec()),
            Answer::Refused(reason) => Err(PeerError::Refused { node, reason }),
        }
    }

    async fn connection(
        &self,
        node: u64,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, PeerError> {
        let cached = self.connections.lock().await.get(&node).cloned();
        if let Some(open) = cached {
            if open.close_reason().is_none() && open.remote_address() == addr {
                return Ok(open);
            }
            // Closed, or the peer moved to another address.
            self.connections.lock().await.remove(&node);
        }
        // Start or join an attempt. It runs on its own (see `pending`) and never holds
        // the cache while it connects: a dead peer must not delay calls to others.
        let mut attempt = {
            let mut pending = self.pending.lock().await;
            match pending.get(&node) {
                Some(attempt) => attempt.clone(),
                None => {
                    let attempt = self.start_connecting(node, addr);
                    pending.insert(node, attempt.clone());
                    attempt
                }
            }
        };
        let outcome = attempt
            .wait_for(Option::is_some)
            .await
            .map_err(|_| PeerError::Connect { node, addr, reason: "the attempt was lost".into() })?
            .clone();
        match outcome {
            Some(Ok(connection)) => Ok(connection),
            Some(Err(reason)) => Err(PeerError::Connect { node, addr, reason }),
            None => Err(PeerError::Connect { node, addr, reason: "no outcome".into() }),
        }
    }

    /// Connects to `node` at `addr` in a task of its own, caching the connection.
    fn start_connecting(&self, node: u64, addr: SocketAddr) -> Pending {
        let (done, attempt) = tokio::sync::watch::channel(None);
        let (endpoint, connections, pending) =
            (self.endpoint.clone(), self.connections.clone(), self.pending.clone());
        tokio::spawn(async move {
            let outcome = match endpoint.connect(addr, &node_name(node)) {
                Ok(connecting) => match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                    Ok(Ok(connection)) => Ok(connection),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no handshake within {CONNECT_TIMEOUT:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Ok(connection) = &outcome {
                connections.lock().await.insert(node, connection.clone());
            }
            pending.lock().await.remove(&node);
            let _ = done.send(Some(outcome));
        });
        attempt
    }

    /// Accepts connections and serves each request with `handler` until the endpoint
    /// is closed.
    pub(crate) fn serve(
        self: &Arc<Self>,
        handler: Handler,
        join: Option<Handler>,
        events: Option<ConnectionHandler>,
    ) -> tokio::task::JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let handler = handler.clone();
                let join = join.clone();
                let events = events.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(connection) => {
                            serve_connection(connection, handler, join, events).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "a peer connection failed to open"),
                    }
                });
            }
        })
    }

    /// Closes every connection and waits until the peers know (streams are flushed).
    pub(crate) async fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

/// One request/answer exchange on a new stream; `near` is told (and taken) when the
/// answer is a round trip from its end.
async fn exchange(
    connection: &quinn::Connection,
    frame: &[u8],
    near: &mut Option<NearEnd>,
) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let Some((expected, round_trips)) = near.as_ref().map(|n| (n.expected, n.round_trips)) else {
        return recv.read_to_end(MAX_FRAME + 64).await.map_err(|e| e.to_string());
    };
    let mut answer = Vec::with_capacity(expected.min(MAX_FRAME) + 64);
    // When the first bytes came, and how many: the rate is measured from there.
    let mut first: Option<(std::time::Instant, usize)> = None;
    while let Some(chunk) = recv.read_chunk(MAX_FRAME, true).await.map_err(|e| e.to_string())? {
        if answer.len() + chunk.bytes.len() > MAX_FRAME + 64 {
            return Err(format!("the answer is larger than {} bytes", MAX_FRAME + 64));
        }
        answer.extend_from_slice(&chunk.bytes);
        let (since, at_first) = *first.get_or_insert((std::time::Instant::now(), answer.len()));
        let left = expected.saturating_sub(answer.len());
        let lead = connection.rtt() * round_trips;
        if near_end(left, answer.len() - at_first, since.elapsed(), lead)
            && let Some(near) = near.take()
        {
            let _ = near.tell.send(());
        }
    }
    Ok(answer)
}

/// Whether an answer with `left` bytes to come is within `lead` of its end, `arrived`
/// bytes having come in the `elapsed` time since its first bytes (those not counted).
fn near_end(left: usize, arrived: usize, elapsed: Duration, lead: Duration) -> bool {
    let rate = arrived as f64 / elapsed.as_secs_f64().max(1e-9);
    left as f64 <= rate * lead.as_secs_f64()
}

/// Serves the streams of one authenticated connection.
async fn serve_connection(
    connection: quinn::Connection,
    handler: Handler,
    join: Option<Handler>,
    events: Option<ConnectionHandler>,
) {
    let alpn = connection
        .handshake_data()
        .and_then(|any| any.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if alpn.as_deref() == Some(ferry_coordinator::bus::ALPN) {
        match events {
            Some(events) => events(connection).await,
            None => connection.close(3u32.into(), b"this node serves no event bus"),
        }
        return;
    }
    if alpn.as_deref() == Some(JOIN_ALPN) {
        match join {
            Some(join) => serve_joins(connection, join).await,
            None => connection.close(2u32.into(), b"this node does not admit new nodes"),
        }
        return;
    }
    let certificate = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned());
    let Some(certificate) = certificate else {
        connection.close(1u32.into(), b"a cluster certificate is required");
        return;
    };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let handler = handler.clone();
        let certificate = certificate.clone();
        tokio::spawn(async move {
            let (answer, _hold) = match recv.read_to_end(MAX_FRAME + 64).await {
                Ok(frame) => answer(&certificate, &frame, &handler).await,
                Err(e) => (Answer::Refused(format!("cannot read the request: {e}")), None),
            };
            if let Ok(bytes) = codec::encode(&answer) {
                if bytes.len() > BULK_ANSWER {
                    // Bulk bytes (pieces for a home node) yield to Raft's small messages
                    // on the same connection, so heartbeats are never stuck behind them.
                    let _ = send.set_priority(-1);
                }
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        });
    }
}

/// Serves join requests (unauthenticated callers: the handler checks the token).
async fn serve_joins(connection: quinn::Connection, join: Handler) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let join = join.clone();
        tokio::spawn(async move {
            let Ok(frame) = recv.read_to_end(MAX_JOIN_FRAME).await else { return };
            let answer = join(0, frame).await;
            let _ = send.write_all(&answer.bytes).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        });
    }
}

/// Checks the sender against its certificate, then runs the handler: its answer, and
/// what must live until the answer is written.
async fn answer(
    certificate: &CertificateDer<'static>,
    frame: &[u8],
    handler: &Handler,
) -> (Answer, Option<tokio::sync::OwnedSemaphorePermit>) {
    let envelope: Envelope = match codec::decode(frame) {
        Ok(envelope) => envelope,
        Err(e) => return (Answer::Refused(format!("bad request frame: {e}")), None),
    };
    if let Err(why) = names_node(certificate, envelope.from) {
        return (Answer::Refused(why), None);
    }
    let served = handler(envelope.from, envelope.body.into_vec()).await;
    (Answer::Ok(ByteBuf::from(served.bytes)), served.hold)
}

/// True if `certificate` (already verified against the CA by rustls) names node `id`.
fn names_node(certificate: &CertificateDer<'_>, id: u64) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(certificate)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let name = ServerName::try_from(node_name(id)).map_err(|e| e.to_string())?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the caller's certificate does not belong to node {id}"))
}

/// Random 8-byte connection ids, valid whichever run of the node issued them (so a
/// packet for a connection of a previous run is answered with a stateless reset).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 8];
        // The system generator does not fail on the platforms Ferry runs on; were it to,
        // the id would still be unique enough for one endpoint's handful of peers.
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests;
