//! The typed async Rust client of the HTTP API, used by the CLI and by services.
//!
//! Every mutating call carries an `Idempotency-Key`, so every call the client retries
//! is idempotent: a GET, or a write the cluster applies once per key. When a call fails
//! on the way (connection refused or reset, timeout) or is told to come back (503
//! during an election, 429, 502/504 from a proxy), it is sent again with the same key
//! after a jittered exponential backoff — or after the server's `Retry-After` — until
//! it succeeds or the retry budget (15 s by default, longer than an election) is spent
//! (a call is tried at least four times, however long each try took).
//! A node that has never answered this client is given only a few quick tries: a wrong
//! address should fail fast, a node that was there and went away is waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::api::{
    ActionResult, AddFiles, ClusterStatus, ErrorDescription, ErrorInfo, FileChanges, FileInfo,
    FileList, FleetInfo, Health, JobInfo, JobList, NewFleet, PrefixReplaced, Problem,
};
use ferry_protocol::command::{JobAction, NewJob, PrefixChange, PropertyChanges};
use ferry_protocol::credentials::{AuthScheme, AuthTarget, CredentialInfo, Secret};
use ferry_protocol::principals::{CreatedToken, NewToken, TokenList};
use ferry_protocol::{JobId, NewFile, RequestId, Role};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::error::ClientError;
use self::error::certificate_failure;
use self::retry::Backoff;
use crate::IDEMPOTENCY_KEY;
use crate::bandwidth::{BandwidthPolicy, BandwidthStatus};

mod error;
mod retry;

/// The default retry budget: the time a call may spend on retries, more than a Raft
/// election and a node restart take.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(15);

/// Tries of a call before the node has ever answered this client (connection errors).
const FIRST_CONTACT_ATTEMPTS: u32 = 3;

/// Tries a call gets even past its budget (each try of a slow write may take the
/// server's whole commit timeout).
const MIN_ATTEMPTS: u32 = 4;

/// How long one event stream may stay open: its reader reconnects from its last cursor
/// afterwards (the client's own timeout, 60 s, is for ordinary calls).
const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A client for one node's API.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    token: Option<String>,
    /// Most tries of one call (unbounded by default: the budget bounds them).
    attempts: u32,
    /// The most time one call spends waiting to retry.
    retry_budget: Duration,
    /// Set once the node has answered (anything at all): connection errors are then
    /// the node going away for a while, worth waiting for, not a wrong address.
    answered: Arc<AtomicBool>,
    /// The only CA trusted for `https://` nodes, PEM; `None`: the system's roots (none
    /// are loaded for an `http://` node).
    ca_pem: Option<Vec<u8>>,
}

/// Installs ring as the process's TLS crypto provider if none is installed yet
/// (reqwest is built without a provider, and panics without one).
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:7070`), authenticating
    /// with `token` if given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::build(base, token, None)
    }

    /// A client for an `https://` node whose certificate must be issued by a CA in
    /// `ca_pem` (PEM; e.g. the cluster CA, `<data-dir>/ca.pem`) and by no other.
    pub fn with_ca(base: &str, token: Option<String>, ca_pem: &[u8]) -> Result<Self, ClientError> {
        Self::build(base, token, Some(ca_pem.to_vec()))
    }

    fn build(
        base: &str,
        token: Option<String>,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        ensure_crypto_provider();
        let base =
            url::Url::parse(base).map_err(|e| ClientError::BadUrl(base.into(), e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(base.to_string(), "use http:// or https://".into()));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            // Below ferryd's header timeout (10 s by default), after which it closes idle
            // connections: a pooled connection is dropped before the server drops it.
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy();
        if let Some(pem) = &ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                ClientError::BadUrl(base.to_string(), format!("the CA is not PEM: {e}"))
            })?;
            if roots.is_empty() {
                return Err(ClientError::BadUrl(
                    base.to_string(),
                    "the CA file holds no certificate".into(),
                ));
            }
            builder = builder.tls_certs_only(roots);
        } else if base.scheme() == "http" {
            // A plain-HTTP node needs no roots: the system's are not loaded (parsing every
            // certificate under /etc/ssl/certs was a third of a short CLI run's CPU).
            builder = builder.tls_certs_only(Vec::new());
        }
        let http =
            builder.build().map_err(|e| ClientError::BadUrl(base.to_string(), e.to_string()))?;
        Ok(Self {
            http,
            base,
            token,
            attempts: u32::MAX,
            retry_budget: DEFAULT_RETRY_BUDGET,
            answered: Arc::new(AtomicBool::new(false)),
            ca_pem,
        })
    }

    /// The CA given to [`Client::with_ca`], PEM.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// How many times a call is tried at most before its error is returned (default:
    /// as many as the retry budget allows).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The time within which a call may be tried again (default
    /// [`DEFAULT_RETRY_BUDGET`]); a call is still tried four times at least (use
    /// [`Client::with_attempts`] for fewer).
    pub fn with_retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    /// The node's base URL.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// The API token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mutating: bool,
    ) -> Result<T, ClientError> {
        decode(self.send(method, path, body, mutating).await?).await
    }

    /// Sends a request (retried while the node is unavailable, see the module doc) and
    /// returns the response.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mutating: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let url =
            self.base.join(path).map_err(|e| ClientError::BadUrl(path.into(), e.to_string()))?;
        let key = mutating.then(RequestId::generate);
        let started = Instant::now();
        let mut backoff = Backoff::new();
        let mut attempt = 1;
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(key) = &key {
                request = request.header(IDEMPOTENCY_KEY, key.as_str());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = request.send().await;
            if outcome.is_ok() {
                self.answered.store(true, Ordering::Relaxed);
            }
            let wait = if attempt >= self.attempts {
                None
            } else {
                self.retry_wait(&outcome, attempt, &mut backoff)
            };
            let within_budget = |wait: Duration| {
                attempt < MIN_ATTEMPTS || started.elapsed() + wait <= self.retry_budget
            };
            match wait {
                Some(wait) if within_budget(wait) => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return finish(outcome, &url),
            }
        }
    }

    /// How long to wait before trying again after `outcome`, or `None` not to.
    fn retry_wait(
        &self,
        outcome: &Result<reqwest::Response, reqwest::Error>,
        attempt: u32,
        backoff: &mut Backoff,
    ) -> Option<Duration> {
        match outcome {
            Ok(response) if retry::retried_status(response.status()) => {
                match retry::retry_after(response) {
                    Some(after) if after > retry::RETRY_AFTER_CAP => None,
                    Some(after) => Some(after),
                    None => Some(backoff.next()),
                }
            }
            Ok(_) => None,
            // A certificate does not become trusted by trying again.
            Err(e) if certificate_failure(e).is_some() => None,
            Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                let known = self.answered.load(Ordering::Relaxed);
                (known || attempt < FIRST_CONTACT_ATTEMPTS).then(|| backoff.next())
            }
            Err(_) => None,
        }
    }

    /// `POST /v1/jobs`.
    pub async fn create_job(&self, spec: &NewJob) -> Result<JobInfo, ClientError> {
        self.call(Method::POST, "/v1/jobs", Some(spec), true).await
    }

    /// `POST /v1/fleets`: one download job per node, created and resumed together.
    pub async fn create_fleet(&self, fleet: &NewFleet) -> Result<FleetInfo, ClientError> {
        // Passwords are never serialized by their type: they are written in here.
        let mut body =
            serde_json::to_value(fleet).map_err(|e| ClientError::Encode(e.to_string()))?;
        if let Some(object) = body.as_object_mut()
            && !fleet.credentials.is_empty()
        {
            let credentials = fleet
                .credentials
                .iter()
                .map(|c| credential_body(c.target, c.scheme, &c.user_name, &c.password));
            object.insert("credentials".into(), credentials.collect());
        }
        self.call(Method::POST, "/v1/fleets", Some(&body), true).await
    }

    /// `GET /v1/fleets/{id}`.
    pub async fn fleet(&self, id: JobId) -> Result<FleetInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/fleets/{id}"), None, false).await
    }

    /// `GET /v1/jobs[?all_users=true]`.
    pub async fn list_jobs(&self, all_users: bool) -> Result<Vec<JobInfo>, ClientError> {
        let path = if all_users { "/v1/jobs?all_users=true" } else { "/v1/jobs" };
        let list: JobList = self.call::<(), _>(Method::GET, path, None, false).await?;
        Ok(list.jobs)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: JobId) -> Result<JobInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}"), None, false).await
    }

    /// `PATCH /v1/jobs/{id}`.
    pub async fn set_properties(
        &self,
        id: JobId,
        changes: &PropertyChanges,
    ) -> Result<JobInfo, ClientError> {
        self.call(Method::PATCH, &format!("/v1/jobs/{id}"), Some(changes), true).await
    }

    /// `POST /v1/jobs/{id}/files`.
    pub async fn add_files(&self, id: JobId, files: Vec<NewFile>) -> Result<FileList, ClientError> {
        self.call(Method::POST, &format!("/v1/jobs/{id}/files"), Some(&AddFiles { files }), true)
            .await
    }

    /// `GET /v1/jobs/{id}/files`.
    pub async fn files(&self, id: JobId) -> Result<FileList, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}/files"), None, false).await
    }

    /// `GET /v1/jobs/{id}/files/{index}`: one file with its progress.
    pub async fn file(&self, id: JobId, index: u32) -> Result<FileInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}/files/{index}"), None, false).await
    }

    /// `PATCH /v1/jobs/{id}/files/{index}`.
    pub async fn set_file(
        &self,
        id: JobId,
        index: u32,
        changes: &FileChanges,
    ) -> Result<FileInfo, ClientError> {
        self.call(Method::PATCH, &format!("/v1/jobs/{id}/files/{index}"), Some(changes), true).await
    }

    /// `POST /v1/jobs/{id}/{resume|suspend|cancel|complete|take-ownership}`.
    pub async fn act(&self, id: JobId, action: JobAction) -> Result<ActionResult, ClientError> {
        let path = format!("/v1/jobs/{id}/{}", action.as_str());
        self.call::<(), _>(Method::POST, &path, None, true).await
    }

    /// `POST /v1/jobs/{id}/replace-remote-prefix` (`ReplaceRemotePrefix`).
    pub async fn replace_remote_prefix(
        &self,
        id: JobId,
        old_prefix: &str,
        new_prefix: &str,
    ) -> Result<PrefixReplaced, ClientError> {
        let change =
            PrefixChange { old_prefix: old_prefix.to_owned(), new_prefix: new_prefix.to_owned() };
        let path = format!("/v1/jobs/{id}/replace-remote-prefix");
        self.call(Method::POST, &path, Some(&change), true).await
    }

    /// `PUT /v1/jobs/{id}/credentials` (`SetCredentials`). The password goes in the
    /// request body only.
    pub async fn set_credentials(
        &self,
        id: JobId,
        target: AuthTarget,
        scheme: AuthScheme,
        user_name: &str,
        password: &Secret,
    ) -> Result<Vec<CredentialInfo>, ClientError> {
        let body = credential_body(target, scheme, user_name, password);
        self.call(Method::PUT, &format!("/v1/jobs/{id}/credentials"), Some(&body), true).await
    }

    /// `DELETE /v1/jobs/{id}/credentials/{target}/{scheme}` (`RemoveCredentials`).
    pub async fn remove_credentials(
        &self,
        id: JobId,
        target: AuthTarget,
        scheme: AuthScheme,
    ) -> Result<Vec<CredentialInfo>, ClientError> {
        let path = format!("/v1/jobs/{id}/credentials/{}/{}", target_name(target), scheme.as_str());
        self.call::<(), _>(Method::DELETE, &path, None, true).await
    }

    /// `GET /v1/jobs/{id}/error`.
    pub async fn job_error(&self, id: JobId) -> Result<ErrorInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/jobs/{id}/error"), None, false).await
    }

    /// `GET /v1/jobs/{id}/reply`: the reply of an upload-reply job (`GetReplyData`).
    pub async fn reply(&self, id: JobId) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/jobs/{id}/reply");
        let response = self.send::<()>(Method::GET, &path, None, false).await?;
        if !response.status().is_success() {
            return Err(decode::<()>(response)
                .await
                .err()
                .unwrap_or(ClientError::Unexpected { status: 200, body: String::new() }));
        }
        let url = response.url().to_string();
        let bytes =
            response.bytes().await.map_err(|source| ClientError::Transport { url, source })?;
        Ok(bytes.to_vec())
    }

    /// `GET /v1/errors/{code}`.
    pub async fn describe_error(&self, code: &str) -> Result<ErrorDescription, ClientError> {
        let path = format!("/v1/errors/{}", urlencode(code));
        self.call::<(), _>(Method::GET, &path, None, false).await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterStatus, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/cluster", None, false).await
    }

    /// `GET /v1/cluster/ca`: the cluster CA certificate, PEM.
    pub async fn cluster_ca(&self) -> Result<String, ClientError> {
        let (url, response) = self.send_once(Method::GET, "/v1/cluster/ca").await?;
        if !response.status().is_success() {
            return decode(response).await;
        }
        response
            .text()
            .await
            .map_err(|source| ClientError::Transport { url: url.to_string(), source })
    }

    /// `POST /v1/tokens`: a token for principal `name` of the cluster (administrators).
    /// The token is made here, so that a retry after an unknown outcome creates the
    /// same one.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        roots: Option<Vec<String>>,
    ) -> Result<CreatedToken, ClientError> {
        let token = crate::auth::generate_token()
            .map_err(|e| ClientError::Encode(format!("no randomness for a token: {e}")))?;
        let new = NewToken { name: name.to_owned(), role, roots, token: Some(token) };
        self.call(Method::POST, "/v1/tokens", Some(&new), true).await
    }

    /// `GET /v1/tokens`: the cluster's principals (administrators).
    pub async fn tokens(&self) -> Result<TokenList, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/tokens", None, false).await
    }

    /// `DELETE /v1/tokens/{name}`: revokes the token of principal `name` on every member.
    pub async fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/tokens/{}", urlencode(name));
        let response = self.send::<()>(Method::DELETE, &path, None, true).await?;
        if response.status().is_success() {
            return Ok(());
        }
        decode::<()>(response).await
    }

    /// `GET /v1/node/bandwidth`: the bandwidth policy of the node this client talks to.
    pub async fn bandwidth(&self) -> Result<BandwidthStatus, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/node/bandwidth", None, false).await
    }

    /// `PUT /v1/node/bandwidth`: puts `policy` in force on the node this client talks
    /// to, until it restarts (administrators).
    pub async fn set_bandwidth(
        &self,
        policy: &BandwidthPolicy,
    ) -> Result<BandwidthStatus, ClientError> {
        self.call(Method::PUT, "/v1/node/bandwidth", Some(policy), true).await
    }

    /// `DELETE /v1/cluster/members/{node}`.
    pub async fn remove_member(&self, node: u64) -> Result<(), ClientError> {
        let path = format!("/v1/cluster/members/{node}");
        let (_, response) = self.send_once(Method::DELETE, &path).await?;
        if response.status().is_success() {
            return Ok(());
        }
        decode::<()>(response).await
    }

    /// `GET /v1/events?{query}`: the open stream of Server-Sent Events (no retry; the
    /// caller resumes from its last cursor). Read it with [`crate::sse::SseSubscription`].
    pub async fn event_stream(&self, query: &str) -> Result<reqwest::Response, ClientError> {
        let path = format!("/v1/events?{query}");
        let url =
            self.base.join(&path).map_err(|e| ClientError::BadUrl(path.clone(), e.to_string()))?;
        let mut request = self.http.get(url.clone()).timeout(EVENT_STREAM_LIFETIME);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = finish(request.send().await, &url)?;
        if response.status().is_success() {
            return Ok(response);
        }
        match decode::<serde_json::Value>(response).await {
            Err(e) => Err(e),
            Ok(_) => Err(ClientError::Unexpected { status: 0, body: "not a stream".into() }),
        }
    }

    /// Sends one bodiless request with the token (no retry); the URL and the response.
    async fn send_once(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(url::Url, reqwest::Response), ClientError> {
        let url =
            self.base.join(path).map_err(|e| ClientError::BadUrl(path.into(), e.to_string()))?;
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        Ok((url, response))
    }

    /// `GET /healthz` (200 or 503, both with a body).
    pub async fn health(&self) -> Result<Health, ClientError> {
        let url = self
            .base
            .join("/healthz")
            .map_err(|e| ClientError::BadUrl("/healthz".into(), e.to_string()))?;
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        serde_json::from_str(&body)
            .map_err(|_| ClientError::Unexpected { status, body: truncate(body) })
    }
}

/// The response, or the transport error as a [`ClientError`].
fn finish(
    outcome: Result<reqwest::Response, reqwest::Error>,
    url: &url::Url,
) -> Result<reqwest::Response, ClientError> {
    outcome.map_err(|source| match certificate_failure(&source) {
        Some(detail) => ClientError::UntrustedCertificate { url: url.to_string(), detail },
        None => ClientError::Transport { url: url.to_string(), source },
    })
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn truncate(mut body: String) -> String {
    if body.len() > 512 {
        let mut end = 512;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
        body.push('…');
    }
    body
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        return serde_json::from_str(&body).map_err(|_| ClientError::Unexpected {
            status: status.as_u16(),
            body: truncate(body),
        });
    }
    match serde_json::from_str::<Problem>(&body) {
        Ok(problem) => Err(ClientError::Api(problem)),
        Err(_) => Err(ClientError::Unexpected { status: status.as_u16(), body: truncate(body) }),
    }
}

/// The JSON of a `SetCredentials` body: the only place a password is written out.
fn credential_body(
    target: AuthTarget,
    scheme: AuthScheme,
    user_name: &str,
    password: &Secret,
) -> serde_json::Value {
    serde_json::json!({
        "target": target,
        "scheme": scheme,
        "user_name": user_name,
        "password": password.expose(),
    })
}

fn target_name(target: AuthTarget) -> &'static str {
    match target {
        AuthTarget::Server => "server",
        AuthTarget::Proxy => "proxy",
    }
}

#[cfg(test)]
mod tests;
