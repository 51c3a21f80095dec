//! The HTTP side of a transfer run: one [`EgressClient`] per run (the node's only
//! outbound connector, which checks every address it connects to), built from the
//! job's proxy settings and security flags, and [`HttpSession::send`], the one send
//! path: it follows redirects itself (each hop checked by the connector, BITS's
//! redirect rules applied), sends the job's custom headers and server credentials only
//! to the job's origins, and answers `401` and `407` challenges with the job's Basic or
//! Digest credentials (Basic is sent before any challenge only over https, or when the
//! node is configured to).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::credentials::{AuthScheme, AuthTarget};
use ferry_protocol::job::JobError;
use ferry_protocol::job::{Job, ProxyUsage, security};
use ferry_protocol::{BitsCode, ErrorContext};
use http_auth::{PasswordClient, PasswordParams};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use ferry_coordinator::SecretKey;

use super::EngineSettings;
use super::failure::{Failure, RequestError, transport};
use crate::egress::{BuildError, ClientOptions, EgressClient, ExecuteError, ProxyChoice, Refused};

/// Redirect hops followed for one request at most.
const MAX_REDIRECTS: usize = 10;
/// Largest client certificate file read (PEM chain and key).
const MAX_CLIENT_CERTIFICATE_BYTES: u64 = 1024 * 1024;

/// A credential opened for this run.
pub(crate) struct OpenCredential {
    /// Server or proxy.
    pub(crate) target: AuthTarget,
    /// Basic or Digest.
    pub(crate) scheme: AuthScheme,
    /// User name.
    pub(crate) user: String,
    /// Password, plaintext in memory for the run only.
    pub(crate) password: String,
}

impl std::fmt::Debug for OpenCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCredential")
            .field("target", &self.target)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Timeouts of the HTTP client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpTimeouts {
    /// To establish a connection.
    pub(crate) connect: Duration,
    /// Longest wait for the next bytes of a response.
    pub(crate) read: Duration,
}

/// The client and the authentication state of one run, shared by its connections.
pub(crate) struct HttpSession {
    /// The connector: every connection checked by the egress policy.
    client: EgressClient,
    /// The job's custom headers, sent only to its origins.
    headers: HeaderMap,
    /// BITS's redirect rules for this job.
    redirects: RedirectRule,
    credentials: Vec<OpenCredential>,
    /// Answer to the server's last challenge, reused (Digest counts its nonce uses).
    server: Mutex<Option<PasswordClient>>,
    /// Likewise for the proxy.
    proxy: Mutex<Option<PasswordClient>>,
    /// Send Basic credentials before the server asks (https, or configured).
    preemptive_basic_over_http: bool,
    /// Origins (`scheme://host:port`) of the job's files: the only servers its server
    /// credentials are ever sent to, whatever redirects say.
    origins: Mutex<Vec<String>>,
    /// The origin whose challenge `server` answers.
    challenger: Mutex<Option<String>>,
    /// The run's draw on the node's bandwidth limit (exempt or not by its job's priority
    /// as the run started): body bytes read and upload fragments sent go through it.
    pub(crate) throttle: super::bandwidth::Throttle,
}

/// What a run's HTTP session is made of besides the job.
pub(crate) struct SessionParts<'a> {
    /// The job's credentials, opened.
    pub(crate) credentials: Vec<OpenCredential>,
    /// The job's client certificate and key.
    pub(crate) identity: Option<reqwest::Identity>,
    /// Opens sealed custom header values.
    pub(crate) secrets: &'a SecretKey,
    /// The node's settings.
    pub(crate) settings: &'a EngineSettings,
}

impl HttpSession {
    /// A session for `job`.
    pub(crate) fn new(job: &Job, parts: SessionParts<'_>) -> Result<Arc<Self>, Failure> {
        let SessionParts { credentials, identity, secrets, settings } = parts;
        // Several connections are several TCP connections: HTTP/2 would make them one.
        let parallel = settings.connections_of(job).1 > 1;
        let flags = job.props().security_flags;
        let proxy = match job.props().proxy.usage {
            ProxyUsage::NoProxy => ProxyChoice::Direct,
            ProxyUsage::Override => override_proxy(job, &credentials)?,
            // The node's environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY). WPAD discovery
            // is not implemented, so autodetect uses the same configuration.
            ProxyUsage::Preconfig | ProxyUsage::Autodetect => ProxyChoice::Environment,
        };
        let options = ClientOptions {
            connect_timeout: settings.timeouts.connect,
            read_timeout: settings.timeouts.read,
            extra_roots: settings.extra_roots.iter().cloned().collect(),
            // rustls cannot relax one check alone: ignoring date, authority or usage
            // problems turns certificate validation off for the job.
            accept_invalid_certs: flags
                & (security::IGNORE_CERT_DATE_INVALID
                    | security::IGNORE_UNKNOWN_CA
                    | security::IGNORE_CERT_WRONG_USAGE)
                != 0,
            accept_invalid_hostnames: flags & security::IGNORE_CERT_CN_INVALID != 0,
            identity,
            user_agent: concat!("Ferry/", env!("CARGO_PKG_VERSION"), " (BITS)"),
            // Several connections are the point; HTTP/2 would multiplex them onto one.
            // The BITS upload protocol is HTTP/1.1 only.
            http1_only: parallel || job.job_type().is_upload(),
            local_address: settings.source_addr,
            pool_max_idle_per_host: 32,
            proxy,
        };
        let client = EgressClient::build(settings.egress, options).map_err(|e| {
            let code = match e {
                BuildError::ProxyRefused { .. } => BitsCode::BG_E_BLOCKED_BY_POLICY,
                _ => BitsCode::BG_E_INVALID_PROXY_INFO,
            };
            Failure::fatal(transport(code, e.to_string(), None))
        })?;
        Ok(Arc::new(Self {
            client,
            headers: custom_headers(job, secrets)?,
            redirects: RedirectRule::of(flags),
            credentials,
            server: Mutex::new(None),
            proxy: Mutex::new(None),
            origins: Mutex::new(job.files().iter().filter_map(|f| origin(&f.remote_url)).collect()),
            challenger: Mutex::new(None),
            preemptive_basic_over_http: settings.preemptive_basic_over_http,
            throttle: settings.bandwidth.throttle(job.props().priority, job.props().max_bandwidth),
        }))
    }

    /// Sends the request `build` makes, following redirects as the job's security
    /// flags allow (each hop through the egress connector) and answering up to two
    /// rounds of `401`/`407` challenges with the job's credentials. A challenge that
    /// cannot be answered is returned as is (the caller maps the status to
    /// `BG_E_HTTP_ERROR_401`/`407`), so is a redirect the job does not follow.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, SendError> {
        let mut current = url::Url::parse(url).map_err(|e| SendError::Url(e.to_string()))?;
        let mut hops = 0;
        loop {
            let response = self.send_to(&method, &current, &build).await?;
            let Some(next) = self.redirects.next_hop(&method, &current, &response)? else {
                return Ok(response);
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(SendError::Redirect(format!("more than {MAX_REDIRECTS} redirects")));
            }
            // A refused target is refused before anything is sent to it.
            crate::egress::check_url(self.client.policy(), &next).map_err(|refused| {
                SendError::Refused(Refused {
                    target: format!("the redirect target {next} ({})", refused.target),
                    why: refused.why,
                })
            })?;
            tracing::debug!(from = %current, to = %next, status = %response.status(), "following a redirect");
            current = next;
        }
    }

    /// One URL: the request, with the job's headers and credentials where they may go,
    /// and its challenge rounds.
    async fn send_to(
        &self,
        method: &Method,
        url: &url::Url,
        build: &impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, SendError> {
        let text = url.as_str();
        let ours = origin(text).is_some_and(|o| self.trusts(&o));
        let mut rounds = 0;
        loop {
            let builder = self.client.request(method.clone(), url).map_err(SendError::Refused)?;
            let mut request = build(builder).build().map_err(SendError::Transport)?;
            let headers = request.headers_mut();
            if ours {
                // Custom headers go to the job's origins only, and never replace what
                // the request sets itself (as default headers would not).
                for name in self.headers.keys() {
                    if !headers.contains_key(name) {
                        for value in self.headers.get_all(name) {
                            headers.append(name.clone(), value.clone());
                        }
                    }
                }
            }
            for (target, name) in [
                (AuthTarget::Server, header::AUTHORIZATION),
                (AuthTarget::Proxy, header::PROXY_AUTHORIZATION),
            ] {
                let value = self.authorization(target, method, text);
                if let Some(mut value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
            }
            let response = self.client.execute(request).await.map_err(SendError::from)?;
            let target = match response.status() {
                StatusCode::UNAUTHORIZED => AuthTarget::Server,
                StatusCode::PROXY_AUTHENTICATION_REQUIRED => AuthTarget::Proxy,
                _ => return Ok(response),
            };
            if rounds >= 2 || !self.accept_challenge(target, response.headers(), text) {
                return Ok(response);
            }
            rounds += 1;
        }
    }

    /// Learns from a challenge; false if no credential of ours answers it.
    fn accept_challenge(&self, target: AuthTarget, headers: &HeaderMap, url: &str) -> bool {
        let challenger = origin(url);
        // A challenge from another origin than the last one is a new one, not a refusal.
        let mut moved = false;
        if target == AuthTarget::Server {
            // Only the servers the owner named get the server credentials.
            if !challenger.as_ref().is_some_and(|o| self.trusts(o)) {
                return false;
            }
            let mut last =
                self.challenger.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            moved = *last != challenger;
            *last = challenger;
        }
        let name = match target {
            AuthTarget::Server => header::WWW_AUTHENTICATE,
            AuthTarget::Proxy => header::PROXY_AUTHENTICATE,
        };
        let mut builder = PasswordClient::builder();
        for value in headers.get_all(name) {
            if let Ok(text) = value.to_str() {
                builder = builder.challenges(text);
            }
        }
        let Ok(client) = builder.build() else {
            return false;
        };
        let scheme = match client {
            PasswordClient::Basic(_) => AuthScheme::Basic,
            PasswordClient::Digest(_) => AuthScheme::Digest,
            _ => return false,
        };
        if self.credential(target, scheme).is_none() {
            return false;
        }
        let slot = self.slot(target);
        let mut slot = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = !moved && slot.as_ref().is_some_and(|old| *old == client);
        *slot = Some(client);
        // The same challenge again means our answer was refused: give up.
        !stale
    }

    /// The `Authorization`/`Proxy-Authorization` value for a request, if any.
    fn authorization(&self, target: AuthTarget, method: &Method, url: &str) -> Option<String> {
        let slot = self.slot(target);
        let mut slot = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if target == AuthTarget::Server {
            let here = origin(url);
            if !here.as_ref().is_some_and(|o| self.trusts(o)) {
                return None;
            }
            let challenger =
                self.challenger.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if slot.is_some() && challenger != here {
                // Answer a challenge only on the origin that made it.
                return None;
            }
        }
        if slot.is_none() && target == AuthTarget::Server {
            let https = url.starts_with("https://");
            if https || self.preemptive_basic_over_http {
                let basic = self.credential(target, AuthScheme::Basic)?;
                return Some(http_auth::basic::encode_credentials(&basic.user, &basic.password));
            }
        }
        let client = slot.as_mut()?;
        let scheme = match client {
            PasswordClient::Basic(_) => AuthScheme::Basic,
            _ => AuthScheme::Digest,
        };
        let credential = self.credential(target, scheme)?;
        let uri = request_uri(url, target);
        client
            .respond(&PasswordParams {
                username: &credential.user,
                password: &credential.password,
                uri: &uri,
                method: method.as_str(),
                body: None,
            })
            .ok()
    }

    /// Server credentials may also go to `url`'s origin: the host an upload server
    /// named for its session (`BITS-Host-Id`, the same server farm).
    pub(crate) fn trust_origin_of(&self, url: &str) {
        if let Some(o) = origin(url) {
            let mut origins =
                self.origins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !origins.contains(&o) {
                origins.push(o);
            }
        }
    }

    fn trusts(&self, origin: &str) -> bool {
        self.origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|o| o == origin)
    }

    fn slot(&self, target: AuthTarget) -> &Mutex<Option<PasswordClient>> {
        match target {
            AuthTarget::Server => &self.server,
            AuthTarget::Proxy => &self.proxy,
        }
    }

    fn credential(&self, target: AuthTarget, scheme: AuthScheme) -> Option<&OpenCredential> {
        self.credentials.iter().find(|c| c.target == target && c.scheme == scheme)
    }
}

/// BITS's redirect policies: follow silently or reporting the new name (at most
/// [`MAX_REDIRECTS`] hops, never from https to http unless allowed), or refuse (the
/// `3xx` is returned and fails the job).
#[derive(Clone, Copy, Debug)]
struct RedirectRule {
    /// `BG_HTTP_REDIRECT_POLICY_DISALLOW`.
    disallowed: bool,
    /// `BG_HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP`.
    allow_downgrade: bool,
}

impl RedirectRule {
    fn of(flags: u32) -> Self {
        Self {
            disallowed: flags & security::REDIRECT_POLICY_MASK == security::REDIRECT_DISALLOW,
            allow_downgrade: flags & security::REDIRECT_ALLOW_HTTPS_TO_HTTP != 0,
        }
    }

    /// Where `response` (to `method` on `current`) sends the request next, if it is a
    /// redirect the job follows. Only `GET` and `HEAD` follow `301`/`302`/`303`;
    /// `307`/`308` repeat any request as it was.
    fn next_hop(
        self,
        method: &Method,
        current: &url::Url,
        response: &Response,
    ) -> Result<Option<url::Url>, SendError> {
        let status = response.status();
        let repeatable = match status {
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER => {
                *method == Method::GET || *method == Method::HEAD
            }
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => true,
            _ => false,
        };
        if !repeatable || self.disallowed {
            return Ok(None);
        }
        let Some(location) = response.headers().get(header::LOCATION) else { return Ok(None) };
        let location = location
            .to_str()
            .map_err(|_| SendError::Redirect("a Location header that is not text".into()))?;
        let mut next = current
            .join(location)
            .map_err(|e| SendError::Redirect(format!("a bad Location {location:?}: {e}")))?;
        next.set_fragment(None);
        if current.scheme() == "https" && next.scheme() == "http" && !self.allow_downgrade {
            return Err(SendError::Redirect(
                "a redirect from https to http is not allowed by the job's security flags (0x800 allows it)".into(),
            ));
        }
        if !next.username().is_empty() || next.password().is_some() {
            return Err(SendError::Redirect(format!(
                "a redirect to {} carries a user name or password",
                next.host_str().unwrap_or_default()
            )));
        }
        Ok(Some(next))
    }
}

/// Why [`HttpSession::send`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The egress policy refused a connection; nothing was sent to it.
    #[error(transparent)]
    Refused(Refused),
    /// A redirect the job's rules do not follow.
    #[error("{0}")]
    Redirect(String),
    /// The URL cannot be parsed.
    #[error("not a valid URL: {0}")]
    Url(String),
    /// Connecting, sending or receiving failed.
    #[error(transparent)]
    Transport(reqwest::Error),
}

impl SendError {
    /// A failure to connect (the target is down), not a refusal or a protocol error.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_connect())
    }

    /// Whether the egress policy refused a connection (an IP literal, or a name whose
    /// addresses are all refused).
    pub(crate) fn is_refused(&self) -> bool {
        match self {
            Self::Refused(_) => true,
            Self::Transport(e) => super::failure::find::<Refused>(e).is_some(),
            _ => false,
        }
    }
}

impl From<ExecuteError> for SendError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Refused(refused) => Self::Refused(refused),
            ExecuteError::Transport(e) => Self::Transport(e),
        }
    }
}

impl RequestError for SendError {
    fn failure(&self, url: &str, file: u32) -> Failure {
        match self {
            Self::Refused(refused) => Failure::blocked(format!("{url}: {refused}"), file),
            Self::Redirect(why) => Failure::fatal(transport(
                BitsCode::BG_E_PROTOCOL_ERROR,
                format!("{url}: {why}"),
                Some(file),
            )),
            Self::Url(why) => Failure::fatal(transport(
                BitsCode::E_INVALIDARG,
                format!("{url}: {why}"),
                Some(file),
            )),
            Self::Transport(e) => e.failure(url, file),
        }
    }
}

/// Loads the job's client certificate (PEM: certificate chain and private key), read
/// through its owner's sandbox.
pub(crate) async fn load_identity(
    job: &Job,
    sandboxes: &Arc<crate::fs::Sandboxes>,
) -> Result<Option<reqwest::Identity>, Failure> {
    let Some(path) = job.props().client_certificate.as_deref() else {
        return Ok(None);
    };
    let bad = |detail: String| {
        Failure::fatal(JobError {
            context: ErrorContext::LocalFile,
            code: BitsCode::E_INVALIDARG,
            detail,
            file_index: None,
            protocol: Some("https".into()),
        })
    };
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".p12") || lower.ends_with(".pfx") {
        return Err(bad(format!(
            "{path}: PKCS#12 client certificates are not supported by this build; convert it to PEM (openssl pkcs12 -in {path} -nodes -out cert.pem)"
        )));
    }
    let (sandboxes, owner, paths) =
        (sandboxes.clone(), job.owner().clone(), vec![std::path::PathBuf::from(path)]);
    let read = tokio::task::spawn_blocking(move || {
        super::local::read_start(&sandboxes, &owner, paths, MAX_CLIENT_CERTIFICATE_BYTES)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|read| read);
    let pem = read.map_err(|e| {
        Failure::local(&e, &format!("cannot read the client certificate {path}"), None)
    })?;
    reqwest::Identity::from_pem(&pem)
        .map(Some)
        .map_err(|e| bad(format!("{path} is not a PEM certificate with its private key: {e}")))
}

/// `scheme://host:port` of a URL (the port made explicit).
fn origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str()?,
        parsed.port_or_known_default()?
    ))
}

/// The request-URI a Digest response covers: the path and query, or the absolute URL
/// when the request goes through a proxy (then it is absolute-form on the wire).
fn request_uri(url: &str, target: AuthTarget) -> String {
    if target == AuthTarget::Proxy {
        return url.to_owned();
    }
    match url::Url::parse(url) {
        Ok(parsed) => match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// The job's custom headers as a header map (sent with every request to the job's
/// origins), their sealed values opened.
fn custom_headers(job: &Job, secrets: &SecretKey) -> Result<HeaderMap, Failure> {
    let lines = secrets.open_headers(job.owner(), &job.props().custom_headers).map_err(|e| {
        Failure::fatal(JobError {
            context: ErrorContext::GeneralQueueManager,
            code: BitsCode::E_INVALIDARG,
            detail: format!("the job's custom headers cannot be opened ({e}); set them again"),
            file_index: None,
            protocol: Some("http".into()),
        })
    })?;
    let mut map = HeaderMap::new();
    for line in &lines {
        let bad = || {
            Failure::fatal(JobError {
                context: ErrorContext::GeneralQueueManager,
                code: BitsCode::E_INVALIDARG,
                detail: "a custom header is not a valid `Name: value` line".into(),
                file_index: None,
                protocol: Some("http".into()),
            })
        };
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

/// The OVERRIDE proxy: the first entry of the job's list, bypassing its bypass list,
/// with the job's Basic proxy credential if it has one (the connector checks it).
fn override_proxy(job: &Job, credentials: &[OpenCredential]) -> Result<ProxyChoice, Failure> {
    let list = job.props().proxy.list.as_deref().unwrap_or_default();
    let first = list.split_whitespace().next().ok_or_else(|| {
        Failure::fatal(transport(
            BitsCode::BG_E_INVALID_PROXY_INFO,
            "the job's proxy list is empty".into(),
            None,
        ))
    })?;
    let basic = credentials
        .iter()
        .find(|c| c.target == AuthTarget::Proxy && c.scheme == AuthScheme::Basic)
        .map(|c| (c.user.clone(), c.password.clone()));
    Ok(ProxyChoice::Override {
        proxy: first.to_owned(),
        bypass: job.props().proxy.bypass.clone(),
        basic,
    })
}
