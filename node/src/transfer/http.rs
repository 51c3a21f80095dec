//! The HTTP side of a transfer run: one `reqwest` client per run, built from the job's
//! proxy settings and custom headers, and [`HttpSession::send`], which answers `401`
//! and `407` challenges with the job's Basic or Digest credentials (Basic is sent
//! before any challenge only over https, or when the node is configured to).

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
use super::egress::{EgressPolicy, PolicyResolver, check_url};
use super::failure::{Failure, transport};

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
    client: reqwest::Client,
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
        let (timeouts, egress) = (settings.timeouts, settings.egress);
        let parallel = job.props.max_connections.unwrap_or(settings.connections) > 1;
        let flags = job.props.security_flags;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .redirect(redirect_policy(flags, egress))
            .dns_resolver(PolicyResolver::new(egress))
            .tls_certs_merge(settings.extra_roots.iter().cloned())
            // rustls cannot relax one check alone: ignoring date, authority or usage
            // problems turns certificate validation off for the job.
            .tls_danger_accept_invalid_certs(
                flags
                    & (security::IGNORE_CERT_DATE_INVALID
                        | security::IGNORE_UNKNOWN_CA
                        | security::IGNORE_CERT_WRONG_USAGE)
                    != 0,
            )
            .tls_danger_accept_invalid_hostnames(flags & security::IGNORE_CERT_CN_INVALID != 0)
            .default_headers(custom_headers(job, secrets)?)
            .user_agent(concat!("Ferry/", env!("CARGO_PKG_VERSION"), " (BITS)"))
            .pool_max_idle_per_host(32)
            .local_address(settings.source_addr);
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        if parallel || job.job_type.is_upload() {
            // Several connections are the point; HTTP/2 would multiplex them onto one.
            // The BITS upload protocol is HTTP/1.1 only.
            builder = builder.http1_only();
        }
        builder = match job.props.proxy.usage {
            ProxyUsage::NoProxy => builder.no_proxy(),
            ProxyUsage::Override => {
                builder.no_proxy().proxy(override_proxy(job, &credentials, egress)?)
            }
            // The node's environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY). WPAD discovery
            // is not implemented, so autodetect uses the same configuration.
            ProxyUsage::Preconfig | ProxyUsage::Autodetect => builder,
        };
        let client = builder.build().map_err(|e| {
            Failure::fatal(transport(
                BitsCode::BG_E_INVALID_PROXY_INFO,
                format!("cannot set up the HTTP client: {e}"),
                None,
            ))
        })?;
        Ok(Arc::new(Self {
            client,
            credentials,
            server: Mutex::new(None),
            proxy: Mutex::new(None),
            origins: Mutex::new(job.files.iter().filter_map(|f| origin(&f.remote_url)).collect()),
            challenger: Mutex::new(None),
            preemptive_basic_over_http: settings.preemptive_basic_over_http,
        }))
    }

    /// Sends the request `build` makes, answering up to two rounds of `401`/`407`
    /// challenges with the job's credentials. A challenge that cannot be answered is
    /// returned as is (the caller maps the status to `BG_E_HTTP_ERROR_401`/`407`).
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, reqwest::Error> {
        let mut rounds = 0;
        loop {
            let mut request = build(self.client.request(method.clone(), url));
            if let Some(value) = self.authorization(AuthTarget::Server, &method, url) {
                request = request.header(header::AUTHORIZATION, value);
            }
            if let Some(value) = self.authorization(AuthTarget::Proxy, &method, url) {
                request = request.header(header::PROXY_AUTHORIZATION, value);
            }
            let response = request.send().await?;
            let target = match response.status() {
                StatusCode::UNAUTHORIZED => AuthTarget::Server,
                StatusCode::PROXY_AUTHENTICATION_REQUIRED => AuthTarget::Proxy,
                _ => return Ok(response),
            };
            if rounds >= 2 || !self.accept_challenge(target, response.headers(), url) {
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

/// BITS's redirect policies: follow silently or reporting the new name (at most 10
/// hops, never from https to http unless allowed), or refuse (the `3xx` fails the job).
fn redirect_policy(flags: u32, egress: EgressPolicy) -> reqwest::redirect::Policy {
    let policy = flags & security::REDIRECT_POLICY_MASK;
    if policy == security::REDIRECT_DISALLOW {
        return reqwest::redirect::Policy::none();
    }
    let downgrade = flags & security::REDIRECT_ALLOW_HTTPS_TO_HTTP != 0;
    reqwest::redirect::Policy::custom(move |attempt| {
        let from_https = attempt.previous().last().is_some_and(|url| url.scheme() == "https");
        if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else if let Err(why) = check_url(egress, attempt.url()) {
            attempt.error(format!("egress policy: the redirect target {why}"))
        } else if from_https && attempt.url().scheme() == "http" && !downgrade {
            attempt.error("a redirect from https to http is not allowed by the job's security flags (0x800 allows it)")
        } else {
            attempt.follow()
        }
    })
}

/// Loads the job's client certificate (PEM: certificate chain and private key).
pub(crate) async fn load_identity(job: &Job) -> Result<Option<reqwest::Identity>, Failure> {
    let Some(path) = job.props.client_certificate.as_deref() else {
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
    let pem = tokio::fs::read(path).await.map_err(|e| {
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

/// The job's custom headers as a header map (sent with every request), their sealed
/// values opened.
fn custom_headers(job: &Job, secrets: &SecretKey) -> Result<HeaderMap, Failure> {
    let lines = secrets.open_headers(&job.owner, &job.props.custom_headers).map_err(|e| {
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
/// with the job's Basic proxy credential if it has one.
fn override_proxy(
    job: &Job,
    credentials: &[OpenCredential],
    egress: EgressPolicy,
) -> Result<reqwest::Proxy, Failure> {
    let invalid =
        |detail: String| Failure::fatal(transport(BitsCode::BG_E_INVALID_PROXY_INFO, detail, None));
    let list = job.props.proxy.list.as_deref().unwrap_or_default();
    let first = list
        .split_whitespace()
        .next()
        .ok_or_else(|| invalid("the job's proxy list is empty".into()))?;
    let url = if first.contains("://") { first.to_owned() } else { format!("http://{first}") };
    let parsed = url::Url::parse(&url).map_err(|e| invalid(format!("proxy {first:?}: {e}")))?;
    check_url(egress, &parsed).map_err(|why| {
        Failure::fatal(transport(
            BitsCode::BG_E_BLOCKED_BY_POLICY,
            format!("proxy {first}: egress policy: {why}"),
            None,
        ))
    })?;
    let mut proxy =
        reqwest::Proxy::all(&url).map_err(|e| invalid(format!("proxy {first:?}: {e}")))?;
    if let Some(bypass) = job.props.proxy.bypass.as_deref() {
        let hosts = bypass.split_whitespace().collect::<Vec<_>>().join(",");
        proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&hosts));
    }
    if let Some(basic) =
        credentials.iter().find(|c| c.target == AuthTarget::Proxy && c.scheme == AuthScheme::Basic)
    {
        proxy = proxy.basic_auth(&basic.user, &basic.password);
    }
    Ok(proxy)
}
