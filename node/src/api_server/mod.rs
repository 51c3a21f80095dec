//! The HTTP API server: an accept loop of our own over hyper (instead of `axum::serve`),
//! so that slow or greedy clients cannot hold the API (DESIGN §8):
//!
//! - a cap on open connections (`[api] max_connections`);
//! - a time limit on the TLS handshake and on each request's headers
//!   (`header_timeout_secs`, which also closes idle keep-alive connections);
//! - a deadline on each request's body ([`body`]): a body that falls behind gets `408`
//!   and its connection closes;
//! - request slots per principal ([`slots`]) under the global cap, so one token cannot
//!   take every slot, while `/healthz` and the OpenAPI document need none;
//! - TLS with rustls and ring ([`tls`]) when the API listens beyond loopback.
//!
//! The routes themselves live in `ferry-coordinator` and `upload_server`; this module
//! only carries requests to them.

mod body;
mod slots;
mod tls;

pub(crate) use tls::check_configured as check_tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, Method, Request, Response};
use axum::response::IntoResponse as _;
use ferry_coordinator::{ApiError, Auth};
use ferry_protocol::BitsCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service as _;

use crate::config::ApiConfig;
use body::{BodyDeadline, TimedBody};
use slots::Slots;

/// The server's bounds and TLS, checked from `[api]`.
pub(crate) struct ServerSettings {
    /// Longest TLS handshake and longest wait for a request's headers.
    header_timeout: Duration,
    /// When a request body must have arrived.
    body: BodyDeadline,
    /// Open connections at most.
    max_connections: usize,
    /// Requests handled at once, all principals together.
    max_concurrent_requests: usize,
    /// Requests handled at once for one principal.
    max_requests_per_principal: usize,
    /// The TLS configuration; `None` serves plain HTTP.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerSettings {
    /// The settings of `api` for a node `node_id` bound at `bound`, whose data directory
    /// (holding the cluster CA) is `data_dir`.
    pub(crate) fn new(
        api: &ApiConfig,
        data_dir: &Path,
        node_id: u64,
        bound: SocketAddr,
    ) -> crate::error::Result<Self> {
        if !api.uses_tls() && !bound.ip().is_loopback() {
            tracing::warn!(
                %bound,
                "the API serves plain HTTP beyond loopback (api.tls = \"off\"): bearer tokens cross the network in clear"
            );
        }
        Ok(Self {
            header_timeout: Duration::from_secs(api.header_timeout_secs),
            body: BodyDeadline {
                grace: Duration::from_secs(api.body_timeout_secs),
                min_bytes_per_sec: api.body_min_bytes_per_sec,
            },
            max_connections: api.max_connections,
            max_concurrent_requests: api.max_concurrent_requests,
            max_requests_per_principal: api.requests_per_principal(),
            tls: tls::server_config(api, data_dir, node_id, bound)?,
        })
    }

    /// `https` or `http`: what clients put in front of the address.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// A running API server.
pub(crate) struct ApiServer {
    /// Cancelled to stop accepting and to close connections once their requests end.
    stop: CancellationToken,
    /// The accept loop and every connection.
    tasks: TaskTracker,
}

impl ApiServer {
    /// Serves `app` on `listener` until [`ApiServer::stop`]; `auth` tells whose request
    /// a request is (for its slot).
    pub(crate) fn spawn(
        listener: TcpListener,
        app: axum::Router,
        auth: Arc<Auth>,
        settings: ServerSettings,
    ) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let handler = Arc::new(Handler {
            app,
            auth,
            slots: Slots::new(
                settings.max_concurrent_requests,
                settings.max_requests_per_principal,
            ),
            body: settings.body,
        });
        let accept = Accept {
            listener,
            handler,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            tls: settings.tls.map(tokio_rustls::TlsAcceptor::from),
            header_timeout: settings.header_timeout,
            stop: stop.clone(),
            tasks: tasks.clone(),
        };
        tasks.spawn(accept.run());
        Self { stop, tasks }
    }

    /// Stops accepting, lets requests in progress finish for up to `grace`, then leaves
    /// the remaining connections to end with the process. True if all ended in time.
    pub(crate) async fn stop(self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// The accept loop's state.
struct Accept {
    listener: TcpListener,
    handler: Arc<Handler>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Accept {
    async fn run(self) {
        loop {
            // At the cap, new clients wait in the kernel's backlog until one leaves.
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = self.stop.cancelled() => return,
            };
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // E.g. out of file descriptors: wait for some to be freed.
                        tracing::warn!(error = %e, "cannot accept an API connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = self.stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                handler: self.handler.clone(),
                header_timeout: self.header_timeout,
                stop: self.stop.clone(),
                _permit: permit,
            };
            self.tasks.spawn(connection.run(stream, self.tls.clone()));
        }
    }
}

/// One client connection.
struct Connection {
    handler: Arc<Handler>,
    header_timeout: Duration,
    stop: CancellationToken,
    /// Held while the connection is open.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.serve(stream).await;
        };
        match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "API TLS handshake failed"),
            Err(_) => tracing::debug!("API TLS handshake timed out"),
        }
    }

    async fn serve<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, io: I) {
        let handler = self.handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        });
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "API connection ended with an error");
        }
    }
}

/// Takes each request through its slot and deadline to the router.
struct Handler {
    app: axum::Router,
    auth: Arc<Auth>,
    slots: Slots,
    body: BodyDeadline,
}

impl Handler {
    async fn handle(&self, request: Request<Incoming>) -> Response<axum::body::Body> {
        let _slot = if needs_no_slot(request.method(), request.uri().path()) {
            None
        } else {
            let principal = principal(&self.auth, request.headers());
            // Waiting for a slot is bounded like reading a body: the client is still
            // waiting for an answer.
            match tokio::time::timeout(self.body.grace, self.slots.acquire(&principal)).await {
                Ok(Some(slot)) => Some(slot),
                _ => return busy(),
            }
        };
        let late = Arc::new(AtomicBool::new(false));
        let request = request.map(|incoming| {
            axum::body::Body::new(TimedBody::new(incoming, self.body, late.clone()))
        });
        let mut app = self.app.clone();
        let response = match app.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if late.load(Ordering::Acquire) {
            return too_slow(self.body);
        }
        response
    }
}

/// Routes that answer from memory without a token: they never wait behind users.
fn needs_no_slot(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/healthz" | "/v1/openapi.json")
}

/// Whose slots a request takes: the principal of its token ([`Auth::caller_of`]); every
/// request without a valid token shares the empty name.
fn principal(auth: &Auth, headers: &HeaderMap) -> String {
    auth.caller_of(headers).map(|caller| caller.principal.as_str().to_owned()).unwrap_or_default()
}

/// 503 for a request that found no slot in time (its body is unread: the connection
/// closes).
fn busy() -> Response<axum::body::Body> {
    ApiError::new(
        503,
        BitsCode::ERROR_RETRY,
        "this principal has too many requests in progress (api.max_requests_per_principal) \
         or the node is at api.max_concurrent_requests; retry shortly",
    )
    .closing_connection()
    .into_response()
}

/// 408 for a request whose body did not arrive in time.
fn too_slow(deadline: BodyDeadline) -> Response<axum::body::Body> {
    ApiError::new(
        408,
        BitsCode::BG_E_TIMEOUT,
        format!(
            "the request body did not arrive in time (api.body_timeout_secs = {} plus one \
             second per {} bytes); send it at once",
            deadline.grace.as_secs(),
            deadline.min_bytes_per_sec
        ),
    )
    .closing_connection()
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_coordinator::TokenEntry;
    use ferry_protocol::Role;

    #[test]
    fn health_and_the_api_document_need_no_slot() {
        assert!(needs_no_slot(&Method::GET, "/healthz"));
        assert!(needs_no_slot(&Method::GET, "/v1/openapi.json"));
        assert!(!needs_no_slot(&Method::POST, "/healthz"));
        assert!(!needs_no_slot(&Method::GET, "/v1/jobs"));
    }

    #[test]
    fn requests_are_counted_against_their_token_s_principal() {
        let auth = Auth::new(&[TokenEntry::new("alice-token-0123456789", "alice", Role::User)])
            .expect("valid table");
        let mut headers = HeaderMap::new();
        assert_eq!(principal(&auth, &headers), "");
        headers.insert("authorization", "Bearer alice-token-0123456789".parse().expect("value"));
        assert_eq!(principal(&auth, &headers), "alice");
        // BITS clients: Basic with the token as password.
        headers.insert(
            "authorization",
            "Basic eDphbGljZS10b2tlbi0wMTIzNDU2Nzg5".parse().expect("value"),
        );
        assert_eq!(principal(&auth, &headers), "alice");
        headers.insert("authorization", "Bearer not-a-token-at-all".parse().expect("value"));
        assert_eq!(principal(&auth, &headers), "");
    }
}
