//! Typed calls between members over the [`PeerEndpoint`]: the [`Router`] where each
//! subsystem registers the handler of its own requests ([`Router::add_handler`]), and
//! [`Peers`], the client that sends a request and decodes the answer its type names
//! ([`Peers::call`]). The wire types live in [`ferry_protocol::peer`].
//!
//! The router knows no subsystem: it decodes the [`Call`] envelope, finds the handler of
//! its kind, decodes the body as that handler's request and encodes its answer. A call
//! it cannot serve (unknown kind, undecodable body, an answer that cannot be encoded) is
//! answered with a [`RemoteError`], never with an empty answer.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ferry_coordinator::{BoxFuture, ClusterError};
use ferry_protocol::NodeId;
use ferry_protocol::codec::{self, ByteBuf};
use ferry_protocol::peer::{Call, PeerRpc, RemoteError};
use tokio::sync::OwnedSemaphorePermit;

use super::endpoint::{Handler, NearEnd, PeerEndpoint, PeerError, Served};
use crate::error::{Error, Result};

/// A handler with its request type erased: (caller, encoded request) -> encoded answer.
type Erased = Arc<dyn Fn(NodeId, Vec<u8>) -> BoxFuture<'static, Served> + Send + Sync>;

/// What a handler that holds a resource answers: the answer, and what must live until
/// it is written (a serving permit, see [`Served`]).
pub(crate) struct Held<A> {
    /// The answer.
    pub(crate) answer: std::result::Result<A, ClusterError>,
    /// Released once the answer is written.
    pub(crate) hold: Option<OwnedSemaphorePermit>,
}

/// The handlers of this node's peer requests, by kind.
#[derive(Default)]
pub(crate) struct Router {
    handlers: RwLock<HashMap<&'static str, Erased>>,
}

impl Router {
    /// Serves requests of type `R` with `handler` (the caller's node id and the decoded
    /// request in, its answer or refusal out). A later registration of the same kind
    /// replaces the earlier one.
    pub(crate) fn add_handler<R, F, Fut>(&self, handler: F)
    where
        R: PeerRpc,
        F: Fn(NodeId, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R::Answer, ClusterError>> + Send + 'static,
    {
        self.add_holding_handler::<R, _, _>(move |from, request| {
            let answered = handler(from, request);
            async move { Held { answer: answered.await, hold: None } }
        });
    }

    /// As [`add_handler`](Self::add_handler), for a handler whose answer holds a
    /// resource until it is written.
    pub(crate) fn add_holding_handler<R, F, Fut>(&self, handler: F)
    where
        R: PeerRpc,
        F: Fn(NodeId, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Held<R::Answer>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Erased = Arc::new(move |from, body: Vec<u8>| {
            let handler = handler.clone();
            Box::pin(async move {
                let request = match codec::decode::<R>(&body) {
                    Ok(request) => request,
                    Err(e) => return refusal(RemoteError::Undecodable(e.to_string())),
                };
                let held = handler(from, request).await;
                let answer = held.answer.map_err(RemoteError::Refused);
                match codec::encode(&answer) {
                    Ok(bytes) => Served { bytes, hold: held.hold },
                    Err(e) => refusal(RemoteError::Unencodable(e.to_string())),
                }
            })
        });
        self.handlers.write().unwrap_or_else(PoisonError::into_inner).insert(R::NAME, erased);
    }

    /// Serves one encoded [`Call`] from member `from`.
    async fn serve(&self, from: NodeId, frame: &[u8]) -> Served {
        let call = match codec::decode::<Call>(frame) {
            Ok(call) => call,
            Err(e) => return refusal(RemoteError::Undecodable(e.to_string())),
        };
        let handler = self
            .handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(call.kind.as_str())
            .cloned();
        match handler {
            Some(handler) => handler(from, call.body.into_vec()).await,
            None => {
                tracing::debug!(from, kind = %call.kind, "a peer request of an unknown kind");
                refusal(RemoteError::UnknownKind(call.kind))
            }
        }
    }

    /// The endpoint's handler: every request goes through this router.
    pub(crate) fn handler(self: &Arc<Self>) -> Handler {
        let router = self.clone();
        Arc::new(move |from, body| {
            let router = router.clone();
            Box::pin(async move { router.serve(from, &body).await })
        })
    }
}

/// An encoded refusal. Its encoding does not depend on the answer type (see
/// [`ferry_protocol::peer`]); a refusal is a few bytes, so encoding it cannot fail.
fn refusal(error: RemoteError) -> Served {
    let refused: std::result::Result<(), RemoteError> = Err(error);
    Served::from(codec::encode(&refused).unwrap_or_default())
}

/// The members' current peer addresses, kept up to date from the membership (see
/// `node.rs`): calls look the address up each time, so a member that restarted on
/// another port is reached there. An address may be a DNS name (`peer.advertise`):
/// it is resolved when called, and again once [`RESOLVED_FOR`] has passed, so a member
/// whose name now points elsewhere (a rescheduled pod) is found there.
#[derive(Default)]
pub(crate) struct AddressBook {
    addrs: RwLock<HashMap<NodeId, PeerAddr>>,
    resolved: RwLock<HashMap<String, (SocketAddr, Instant)>>,
}

/// A member's peer address as the membership records it, parsed once.
#[derive(Clone)]
enum PeerAddr {
    /// An address.
    Ip(SocketAddr),
    /// A `name:port`, resolved when called.
    Name(String),
}

/// How long a resolved name is used before it is resolved again.
const RESOLVED_FOR: Duration = Duration::from_secs(5);
/// Longest wait for a name's resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

impl AddressBook {
    /// Records the addresses of the membership's nodes.
    pub(crate) fn update(&self, nodes: impl Iterator<Item = (NodeId, String)>) {
        let fresh: HashMap<NodeId, PeerAddr> = nodes
            .map(|(id, addr)| match addr.parse() {
                Ok(ip) => (id, PeerAddr::Ip(ip)),
                Err(_) => (id, PeerAddr::Name(addr)),
            })
            .collect();
        *self.addrs.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// The address of `node`, if it is a member with a usable one: its address, or
    /// what its name resolves to (the last answer while a resolution fails).
    pub(crate) async fn get(&self, node: NodeId) -> Option<SocketAddr> {
        let addr = match self.addrs.read().unwrap_or_else(PoisonError::into_inner).get(&node)? {
            PeerAddr::Ip(ip) => return Some(*ip),
            PeerAddr::Name(name) => name.clone(),
        };
        let known =
            self.resolved.read().unwrap_or_else(PoisonError::into_inner).get(&addr).copied();
        if let Some((ip, at)) = known
            && at.elapsed() < RESOLVED_FOR
        {
            return Some(ip);
        }
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr.as_str()));
        let fresh = match lookup.await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => None,
        };
        match fresh {
            Some(ip) => {
                let mut resolved = self.resolved.write().unwrap_or_else(PoisonError::into_inner);
                resolved.insert(addr, (ip, Instant::now()));
                Some(ip)
            }
            None => known.map(|(ip, _)| ip),
        }
    }

    /// The members, this node included.
    pub(crate) fn members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> =
            self.addrs.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        members.sort_unstable();
        members
    }
}

/// The client side: typed calls to other members (a call to this node itself is
/// served by its own router, without the network).
#[derive(Clone)]
pub(crate) struct Peers {
    me: NodeId,
    endpoint: Arc<PeerEndpoint>,
    book: Arc<AddressBook>,
    router: Arc<Router>,
}

impl Peers {
    /// Calls go out through `endpoint` to the addresses in `book`; calls to `me` go to
    /// `router`.
    pub(crate) fn new(
        me: NodeId,
        endpoint: Arc<PeerEndpoint>,
        book: Arc<AddressBook>,
        router: Arc<Router>,
    ) -> Self {
        Self { me, endpoint, book, router }
    }

    /// The address book the calls use.
    pub(crate) fn book(&self) -> &AddressBook {
        &self.book
    }

    /// Sends `request` to member `node` and decodes its answer, waiting `timeout` at
    /// most. Every failure names the member ([`Error::Peer`]); its own refusal comes
    /// back as [`Error::Refused`] inside.
    pub(crate) async fn call<R: PeerRpc>(
        &self,
        node: NodeId,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Answer> {
        self.call_to(node, None, request, timeout).await.map_err(|e| e.from_peer(node))
    }

    /// As [`call`](Self::call), telling `near` when the answer is a round trip from
    /// its end (never, for a call to this node: its router answers at once).
    pub(crate) async fn call_near<R: PeerRpc>(
        &self,
        node: NodeId,
        request: &R,
        timeout: Duration,
        near: NearEnd,
    ) -> Result<R::Answer> {
        self.call_with(node, None, request, timeout, Some(near))
            .await
            .map_err(|e| e.from_peer(node))
    }

    /// As [`call`](Self::call), at `addr` if given (openraft names the address of the
    /// member it replicates to), else at the member's address in the book.
    pub(crate) async fn call_to<R: PeerRpc>(
        &self,
        node: NodeId,
        addr: Option<SocketAddr>,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Answer> {
        self.call_with(node, addr, request, timeout, None).await
    }

    async fn call_with<R: PeerRpc>(
        &self,
        node: NodeId,
        addr: Option<SocketAddr>,
        request: &R,
        timeout: Duration,
        near: Option<NearEnd>,
    ) -> Result<R::Answer> {
        let body = codec::encode(request)?;
        let frame = codec::encode(&Call { kind: R::NAME.to_owned(), body: ByteBuf::from(body) })?;
        let answer = if node == self.me {
            self.router.serve(node, &frame).await.bytes
        } else {
            let addr = self.book.get(node).await.or(addr).ok_or_else(|| {
                Error::Unavailable(format!("node {node} has no usable peer address"))
            })?;
            self.endpoint.call(node, addr, frame, timeout, near).await.map_err(|e| match e {
                PeerError::Timeout { after, .. } => Error::Timeout { what: R::NAME, after },
                PeerError::Frame(e) => Error::Codec(e),
                other => Error::transport(format!("calling {}", R::NAME), other),
            })?
        };
        match codec::decode::<std::result::Result<R::Answer, RemoteError>>(&answer)? {
            Ok(answer) => Ok(answer),
            Err(RemoteError::Refused(refused)) => Err(Error::Refused(refused)),
            Err(other) => Err(Error::Remote(other)),
        }
    }
}

#[cfg(test)]
mod tests;
