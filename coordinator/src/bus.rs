//! The QUIC notification bus (ALPN `ferry-events/1`), client side and framing, and the
//! [`Watcher`] that follows the event stream across node losses over HTTP (`crate::sse`,
//! the default) or this bus.
//!
//! A subscriber opens one bidirectional stream to any node, sends a [`Subscribe`]
//! frame (API token, filter, start), reads a [`SubscribeAnswer`], then reads
//! [`Delivery`] frames until it closes the stream. Every frame is a 4-byte big-endian
//! length and a `ferry_protocol::codec` body, bounded in size. The node proves itself
//! with a certificate from the cluster CA (`GET /v1/cluster/ca`) naming it
//! `node-<id>.ferry`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec;
use ferry_protocol::event::{Cursor, Delivery, EventFilter, StartAt, Subscribe, SubscribeAnswer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The bus's ALPN.
pub const ALPN: &[u8] = b"ferry-events/1";
/// Largest subscribe frame (a filter names at most 1,000 jobs).
pub const MAX_SUBSCRIBE_FRAME: usize = 64 * 1024;
/// Largest delivery frame.
pub const MAX_DELIVERY_FRAME: usize = 256 * 1024;
/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the bus could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No connection (unreachable, TLS refused, timed out).
    #[error("cannot connect to the event bus at {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node refused the subscription.
    #[error("the node refused the subscription ({status}): {detail}")]
    Refused {
        /// 401, 403 or 400.
        status: u16,
        /// Why.
        detail: String,
    },
    /// The stream broke or carried a bad frame.
    #[error("the event stream broke: {0}")]
    Stream(String),
}

/// Writes one frame.
pub async fn write_frame<W, T>(out: &mut W, value: &T) -> Result<(), BusError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = codec::encode(value).map_err(|e| BusError::Stream(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| BusError::Stream("frame too large".into()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    out.write_all(&frame).await.map_err(|e| BusError::Stream(e.to_string()))
}

/// Reads one frame of at most `limit` bytes; `None` at a clean end of stream.
pub async fn read_frame<R, T>(input: &mut R, limit: usize) -> Result<Option<T>, BusError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(BusError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(BusError::Stream(format!("a frame of {len} bytes exceeds {limit}")));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body).await.map_err(|e| BusError::Stream(e.to_string()))?;
    codec::decode(&body).map(Some).map_err(|e| BusError::Stream(e.to_string()))
}

/// An open subscription on the bus.
pub struct BusSubscription {
    /// The node serving it.
    pub node: u64,
    /// Where delivery started.
    pub position: Cursor,
    recv: quinn::RecvStream,
    // Kept open: closing them ends the subscription.
    _send: quinn::SendStream,
    _connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl BusSubscription {
    /// Connects to node `node_id` at `addr`, verifying it against `ca_pem`, and
    /// subscribes with `request`.
    pub async fn open(
        addr: SocketAddr,
        node_id: u64,
        ca_pem: &str,
        request: &Subscribe,
    ) -> Result<Self, BusError> {
        let fail = |reason: String| BusError::Connect { addr, reason };
        let opened = async {
            let endpoint = client_endpoint(addr, ca_pem).map_err(fail)?;
            let name = format!("node-{node_id}.ferry");
            let connection = endpoint
                .connect(addr, &name)
                .map_err(|e| fail(e.to_string()))?
                .await
                .map_err(|e| fail(e.to_string()))?;
            let (mut send, mut recv) =
                connection.open_bi().await.map_err(|e| fail(e.to_string()))?;
            write_frame(&mut send, request).await?;
            match read_frame(&mut recv, MAX_SUBSCRIBE_FRAME).await? {
                Some(SubscribeAnswer::Accepted { node, position }) => Ok(Self {
                    node,
                    position,
                    recv,
                    _send: send,
                    _connection: connection,
                    _endpoint: endpoint,
                }),
                Some(SubscribeAnswer::Refused { status, detail }) => {
                    Err(BusError::Refused { status, detail })
                }
                None => Err(BusError::Stream("the node closed the stream".into())),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, opened)
            .await
            .unwrap_or_else(|_| Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))))
    }

    /// The next delivery; `None` when the node ended the stream (it shut down).
    pub async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        read_frame(&mut self.recv, MAX_DELIVERY_FRAME).await
    }
}

/// A client endpoint trusting only the cluster CA in `ca_pem`.
fn client_endpoint(addr: SocketAddr, ca_pem: &str) -> Result<quinn::Endpoint, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = pem::parse_many(ca_pem).map_err(|e| format!("bad cluster CA: {e}"))?;
    for cert in certs.iter().filter(|c| c.tag() == "CERTIFICATE") {
        roots
            .add(rustls::pki_types::CertificateDer::from(cert.contents().to_vec()))
            .map_err(|e| format!("bad cluster CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the cluster CA PEM holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10)).map_err(|e| e.to_string())?,
    ));
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// What [`Watcher::next`] yields.
#[derive(Debug)]
pub enum Watched {
    /// A delivery from the stream.
    Delivery(Delivery),
    /// Now subscribed at `node` (first connection or after a loss), from `position`.
    Connected {
        /// The node serving the subscription.
        node: u64,
        /// The cursor delivery resumes at.
        position: Cursor,
    },
}

/// How a [`Watcher`] reaches the event stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// `GET /v1/events` on the API port (Server-Sent Events): works wherever the API
    /// does.
    #[default]
    Http,
    /// The QUIC bus on the peer port (UDP), for services that want it.
    Quic,
}

/// An open subscription of either transport.
enum Subscription {
    Quic(BusSubscription),
    Http(crate::sse::SseSubscription),
}

impl Subscription {
    fn node(&self) -> u64 {
        match self {
            Self::Quic(s) => s.node,
            Self::Http(s) => s.node,
        }
    }

    fn position(&self) -> Cursor {
        match self {
            Self::Quic(s) => s.position,
            Self::Http(s) => s.position,
        }
    }

    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        match self {
            Self::Quic(s) => s.next().await,
            Self::Http(s) => s.next().await,
        }
    }
}

/// How often a subscribed [`Watcher`] asks the cluster who its members are, so that it
/// can resume at members that joined since it connected (a fleet replaced node by node
/// would otherwise leave it only addresses of nodes that are gone).
const MEMBER_REFRESH: Duration = Duration::from_secs(10);

/// How long a [`Watcher`] given a gap waits for each other member to subscribe and
/// deliver its first event, when it looks for one that still holds the missing events.
const GAP_PROBE: Duration = Duration::from_secs(2);

/// A subscription that survives the loss of its node: it reconnects to another member
/// and resumes after the last event it delivered (`ferry watch`). Events may repeat
/// across a reconnect only if the new node replays what the old one already sent;
/// none are skipped without a [`Delivery::Gap`], and a gap is delivered only when no
/// other member holds the missing events either (a node that installed a snapshot or
/// joined late lacks what the others still hold: the watcher moves to one of those).
/// While subscribed it keeps learning the members (every [`MEMBER_REFRESH`]), so that a
/// member that joined later can take it.
pub struct Watcher {
    token: String,
    filter: EventFilter,
    /// Where to resume: the first subscription's start, then after the last event.
    resume: StartAt,
    /// The members' API URLs, the one to try first at the front; shared with the task
    /// that refreshes them.
    nodes: Arc<std::sync::Mutex<Members>>,
    /// The task refreshing `nodes` (started at the first connection).
    refresher: Option<tokio::task::JoinHandle<()>>,
    current: Option<Subscription>,
    /// A delivery read ahead from a member that took over (see [`Watcher::elsewhere`]),
    /// delivered next.
    ahead: Option<Delivery>,
    /// Over HTTP (the default) or the QUIC bus.
    transport: Transport,
    /// Give up when no member takes the subscription for this long.
    patience: Duration,
    /// The CA the members' `https://` APIs are verified with, PEM (see
    /// [`crate::Client::with_ca`]).
    api_ca: Option<Vec<u8>>,
}

/// The API URLs a [`Watcher`] may subscribe at.
struct Members {
    /// The URL the watcher was given: never forgotten (it may name the cluster rather
    /// than one node).
    first: url::Url,
    /// Every URL to try, in order.
    urls: Vec<url::Url>,
}

impl Members {
    /// Learns the members `status` lists (it came from `url`): new ones are tried last,
    /// and when the answer comes from a member that knows a leader, URLs of nodes that
    /// are no longer members are forgotten.
    fn learn(&mut self, url: &url::Url, status: &ferry_protocol::api::ClusterStatus) {
        // Members serve their APIs alike: the scheme of this one is theirs.
        let apis: Vec<url::Url> = status
            .members
            .iter()
            .filter_map(|m| url::Url::parse(&format!("{}://{}", url.scheme(), m.api_addr)).ok())
            .collect();
        let authoritative =
            status.leader.is_some() && status.members.iter().any(|m| m.node_id == status.node_id);
        if authoritative {
            let first = self.first.clone();
            self.urls.retain(|u| *u == first || *u == *url || apis.contains(u));
        }
        for api in apis {
            if !self.urls.contains(&api) {
                self.urls.push(api);
            }
        }
    }

    /// Puts `url` first (it took the subscription).
    fn prefer(&mut self, url: &url::Url) {
        self.urls.retain(|u| u != url);
        self.urls.insert(0, url.clone());
    }

    /// Puts the first URL last (its node went away).
    fn demote_first(&mut self) {
        if !self.urls.is_empty() {
            self.urls.rotate_left(1);
        }
    }
}

fn members(nodes: &std::sync::Mutex<Members>) -> std::sync::MutexGuard<'_, Members> {
    nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(refresher) = &self.refresher {
            refresher.abort();
        }
    }
}

impl Watcher {
    /// A watcher starting at `first` (an API URL), with `token`, `filter` and `from`.
    pub fn new(first: url::Url, token: String, filter: EventFilter, from: StartAt) -> Self {
        let members = Members { urls: vec![first.clone()], first };
        Self {
            token,
            filter,
            resume: from,
            nodes: Arc::new(std::sync::Mutex::new(members)),
            refresher: None,
            current: None,
            ahead: None,
            patience: Duration::from_secs(60),
            api_ca: None,
            transport: Transport::default(),
        }
    }

    /// Watches over `transport` (HTTP unless told otherwise).
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Verifies the members' `https://` APIs with `ca_pem` only.
    pub fn with_api_ca(mut self, ca_pem: Option<&[u8]>) -> Self {
        self.api_ca = ca_pem.map(<[u8]>::to_vec);
        self
    }

    /// The next delivery or connection change; an error once no member has taken the
    /// subscription for a minute, or when a node refuses it.
    pub async fn next(&mut self) -> Result<Watched, BusError> {
        if let Some(delivery) = self.ahead.take() {
            return Ok(self.delivered(delivery));
        }
        loop {
            let Some(subscription) = self.current.as_mut() else {
                let subscription = self.connect().await?;
                let (node, position) = (subscription.node(), subscription.position());
                let watched = Watched::Connected { node, position };
                self.resume = StartAt::Cursor(position);
                self.current = Some(subscription);
                if self.refresher.is_none() {
                    self.refresher = Some(tokio::spawn(refresh_members(
                        self.nodes.clone(),
                        self.token.clone(),
                        self.api_ca.clone(),
                    )));
                }
                return Ok(watched);
            };
            match subscription.next().await {
                Ok(Some(gap @ Delivery::Gap { .. })) => {
                    // Another member may still hold what this one lacks (it installed a
                    // snapshot, or joined after the events): a gap only if none does.
                    let node = subscription.node();
                    let Some((subscription, first)) = self.elsewhere(node).await else {
                        return Ok(self.delivered(gap));
                    };
                    let watched = Watched::Connected {
                        node: subscription.node(),
                        position: subscription.position(),
                    };
                    self.current = Some(subscription);
                    self.ahead = Some(first);
                    return Ok(watched);
                }
                Ok(Some(delivery)) => return Ok(self.delivered(delivery)),
                Ok(None) | Err(_) => {
                    // The node went away: try the others first.
                    self.current = None;
                    members(&self.nodes).demote_first();
                }
            }
        }
    }

    /// Hands `delivery` out, moving the resume point past it.
    fn delivered(&mut self, delivery: Delivery) -> Watched {
        self.resume = match &delivery {
            Delivery::Event(event) => StartAt::Cursor(event.cursor.next()),
            Delivery::Gap { oldest, .. } => StartAt::Cursor(*oldest),
        };
        Watched::Delivery(delivery)
    }

    /// A subscription at another member than `node` that delivers from the resume
    /// point without a gap, with its first delivery; `None` if no member does within
    /// [`GAP_PROBE`] each.
    async fn elsewhere(&mut self, node: u64) -> Option<(Subscription, Delivery)> {
        let urls = members(&self.nodes).urls.clone();
        for url in urls {
            let Ok(Ok(mut other)) = tokio::time::timeout(GAP_PROBE, self.subscribe_at(&url)).await
            else {
                continue;
            };
            if other.node() == node {
                continue;
            }
            // Dropped whole on a timeout: a half-read frame goes with it.
            if let Ok(Ok(Some(first @ Delivery::Event(_)))) =
                tokio::time::timeout(GAP_PROBE, other.next()).await
            {
                members(&self.nodes).prefer(&url);
                return Some((other, first));
            }
        }
        None
    }

    /// Subscribes at the first member that takes it, learning the members on the way.
    async fn connect(&mut self) -> Result<Subscription, BusError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut last = String::from("no member answered");
        loop {
            let urls = members(&self.nodes).urls.clone();
            for url in urls {
                match self.subscribe_at(&url).await {
                    Ok(subscription) => {
                        members(&self.nodes).prefer(&url);
                        return Ok(subscription);
                    }
                    Err(e @ BusError::Refused { .. }) => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Stream(format!(
                    "no member took the subscription for {:?}: {last}",
                    self.patience
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn subscribe_at(&mut self, url: &url::Url) -> Result<Subscription, BusError> {
        // The API's refusal (a bad token) is final; anything else may pass at another node.
        let fail = |e: crate::ClientError| match e {
            crate::ClientError::Api(p) if (400..500).contains(&p.status) => {
                BusError::Refused { status: p.status, detail: p.detail }
            }
            e => BusError::Stream(format!("{url}: {e}")),
        };
        let client = api_client(url, &self.token, self.api_ca.as_deref()).map_err(fail)?;
        let status = client.cluster().await.map_err(fail)?;
        // Remember every member's API, so that a later loss can go elsewhere.
        members(&self.nodes).learn(url, &status);
        if self.transport == Transport::Http {
            let opened = crate::sse::SseSubscription::open(&client, &self.filter, self.resume);
            return opened.await.map(Subscription::Http);
        }
        let ca = client.cluster_ca().await.map_err(fail)?;
        let me = status.members.iter().find(|m| m.node_id == status.node_id);
        let peer: SocketAddr = me
            .and_then(|m| m.peer_addr.parse().ok())
            .ok_or_else(|| BusError::Stream(format!("{url}: no usable peer address")))?;
        let request =
            Subscribe { token: self.token.clone(), filter: self.filter.clone(), from: self.resume };
        BusSubscription::open(peer, status.node_id, &ca, &request).await.map(Subscription::Quic)
    }
}

/// A client of the API at `url` that makes one attempt per call.
fn api_client(
    url: &url::Url,
    token: &str,
    api_ca: Option<&[u8]>,
) -> Result<crate::Client, crate::ClientError> {
    let token = Some(token.to_owned());
    let client = match api_ca {
        Some(ca) => crate::Client::with_ca(url.as_str(), token, ca),
        None => crate::Client::new(url.as_str(), token),
    };
    Ok(client?.with_attempts(1))
}

/// Every [`MEMBER_REFRESH`], asks the members in `nodes` (in order, until one answers)
/// who the members are now.
async fn refresh_members(
    nodes: Arc<std::sync::Mutex<Members>>,
    token: String,
    api_ca: Option<Vec<u8>>,
) {
    loop {
        tokio::time::sleep(MEMBER_REFRESH).await;
        let urls = members(&nodes).urls.clone();
        for url in urls {
            let Ok(client) = api_client(&url, &token, api_ca.as_deref()) else { continue };
            if let Ok(Ok(status)) = tokio::time::timeout(CONNECT_TIMEOUT, client.cluster()).await {
                members(&nodes).learn(&url, &status);
                break;
            }
        }
    }
}
