//! The one outbound HTTP client of a transfer: [`EgressClient`] wraps a `reqwest`
//! client that only this module can build or call, made so that every connection it
//! opens passes the policy at connect time:
//! - host names (origins, redirect targets, proxies) resolve through
//!   [`PolicyResolver`], which drops refused addresses from every answer;
//! - IP literals never reach a resolver, so every URL is checked as it enters:
//!   [`EgressClient::request`] and [`EgressClient::execute`] are the only ways to send,
//!   and the client never follows a redirect itself (the caller sends each hop through
//!   `request` again, so each target is checked);
//! - proxies are set here only (the job's override proxy, or the node's environment
//!   read here instead of by `reqwest`), an IP-literal proxy checked when the client is
//!   built, a named one through the resolver.
//!
//! What is sent where (credentials, custom headers) is the caller's business; this
//! module decides only whether a connection may be made.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::{Method, Request, RequestBuilder, Response};
use url::{Host, Url};

use super::policy::{EgressPolicy, Refused};
use super::resolver::PolicyResolver;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// A proxy is on a refused address.
    #[error("proxy {proxy}: {refused}")]
    ProxyRefused {
        /// The proxy as configured.
        proxy: String,
        /// Why it is refused.
        #[source]
        refused: Refused,
    },
    /// A proxy setting cannot be used.
    #[error("proxy {proxy:?}: {detail}")]
    InvalidProxy {
        /// The proxy as configured.
        proxy: String,
        /// What is wrong with it.
        detail: String,
    },
    /// `reqwest` refused the settings (TLS back end, certificates).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Which proxy a client's requests go through.
#[derive(Clone, Debug, Default)]
pub(crate) enum ProxyChoice {
    /// None: straight to the origin.
    #[default]
    Direct,
    /// The node's environment (`http_proxy`, `https_proxy`, `all_proxy`, `no_proxy`).
    Environment,
    /// One proxy for everything but the bypass list.
    Override {
        /// The proxy, `host:port` or a URL.
        proxy: String,
        /// Hosts not to proxy, separated by white space.
        bypass: Option<String>,
        /// Basic credentials for the proxy (user, password).
        basic: Option<(String, String)>,
    },
}

/// The settings of a client besides the policy.
pub(crate) struct ClientOptions {
    /// To establish a connection.
    pub(crate) connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub(crate) read_timeout: Duration,
    /// Authorities trusted besides the system's.
    pub(crate) extra_roots: Vec<reqwest::Certificate>,
    /// Accept any server certificate (the job's security flags ask for it).
    pub(crate) accept_invalid_certs: bool,
    /// Accept a certificate for another name.
    pub(crate) accept_invalid_hostnames: bool,
    /// Client certificate and key.
    pub(crate) identity: Option<reqwest::Identity>,
    /// The `User-Agent` header.
    pub(crate) user_agent: &'static str,
    /// HTTP/1.1 only (parallel ranges want separate connections; BITS uploads need it).
    pub(crate) http1_only: bool,
    /// Source address of connections.
    pub(crate) local_address: Option<IpAddr>,
    /// Idle connections kept per host.
    pub(crate) pool_max_idle_per_host: usize,
    /// The proxy.
    pub(crate) proxy: ProxyChoice,
}

/// An HTTP client whose every connection passes the egress policy.
#[derive(Clone, Debug)]
pub(crate) struct EgressClient {
    /// Never follows redirects; resolves through [`PolicyResolver`]; proxies checked.
    inner: reqwest::Client,
    /// What is refused.
    policy: EgressPolicy,
}

impl EgressClient {
    /// A client enforcing `policy`, made with `options`.
    pub(crate) fn build(policy: EgressPolicy, options: ClientOptions) -> Result<Self, BuildError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(PolicyResolver::new(policy))
            .no_proxy()
            .tls_certs_merge(options.extra_roots)
            .tls_danger_accept_invalid_certs(options.accept_invalid_certs)
            .tls_danger_accept_invalid_hostnames(options.accept_invalid_hostnames)
            .user_agent(options.user_agent)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .local_address(options.local_address);
        if let Some(identity) = options.identity {
            builder = builder.identity(identity);
        }
        if options.http1_only {
            builder = builder.http1_only();
        }
        for proxy in proxies(policy, options.proxy)? {
            builder = builder.proxy(proxy);
        }
        let inner = builder.build().map_err(BuildError::Client)?;
        Ok(Self { inner, policy })
    }

    /// A request to `url`, if the policy lets a connection to it be made (a name is
    /// checked again when it resolves).
    pub(crate) fn request(&self, method: Method, url: &Url) -> Result<RequestBuilder, Refused> {
        check_url(self.policy, url)?;
        Ok(self.inner.request(method, url.clone()))
    }

    /// Sends `request` (made by [`Self::request`]), its URL checked again.
    pub(crate) async fn execute(&self, request: Request) -> Result<Response, ExecuteError> {
        check_url(self.policy, request.url()).map_err(ExecuteError::Refused)?;
        self.inner.execute(request).await.map_err(ExecuteError::Transport)
    }

    /// The policy this client enforces.
    pub(crate) fn policy(&self) -> EgressPolicy {
        self.policy
    }
}

/// Why [`EgressClient::execute`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecuteError {
    /// The URL is refused; nothing was sent.
    #[error(transparent)]
    Refused(Refused),
    /// Connecting, sending or receiving failed (a name resolving only to refused
    /// addresses fails here, its message naming the egress policy).
    #[error(transparent)]
    Transport(reqwest::Error),
}

/// Whether a connection to `url` may be made as far as its text tells: its scheme is
/// http or https and an IP-literal host is not refused. Names are checked when they
/// resolve ([`PolicyResolver`]).
pub(crate) fn check_url(policy: EgressPolicy, url: &Url) -> Result<(), Refused> {
    let refused = |why: String| Refused { target: url.to_string(), why };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refused(format!("a {} URL (only http and https are fetched)", url.scheme())));
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(name)) => {
            // The URL parser turns every IPv4 spelling of an http(s) host into an
            // address; this is only in case a name still reads as one to a connector.
            let bare = name.trim_end_matches('.').trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Ok(()),
            }
        }
        None => return Err(refused("a URL without a host".into())),
    };
    match policy.refusal(ip) {
        Some(why) => Err(Refused { target: ip.to_string(), why: why.to_owned() }),
        None => Ok(()),
    }
}

/// The proxies of `choice`, each checked.
fn proxies(policy: EgressPolicy, choice: ProxyChoice) -> Result<Vec<reqwest::Proxy>, BuildError> {
    match choice {
        ProxyChoice::Direct => Ok(Vec::new()),
        ProxyChoice::Override { proxy, bypass, basic } => {
            let url = checked_proxy(policy, &proxy)?;
            let mut built = reqwest::Proxy::all(url.as_str()).map_err(|e| {
                BuildError::InvalidProxy { proxy: proxy.clone(), detail: e.to_string() }
            })?;
            if let Some(bypass) = bypass {
                let hosts = bypass.split_whitespace().collect::<Vec<_>>().join(",");
                built = built.no_proxy(reqwest::NoProxy::from_string(&hosts));
            }
            if let Some((user, password)) = basic {
                built = built.basic_auth(&user, &password);
            }
            Ok(vec![built])
        }
        ProxyChoice::Environment => {
            // Under CGI, HTTP_PROXY is a request header (httpoxy): ignored, as reqwest does.
            let cgi = std::env::var_os("REQUEST_METHOD").is_some();
            let var = |names: [&str; 2]| {
                names
                    .iter()
                    .filter(|n| !(cgi && **n == "HTTP_PROXY"))
                    .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
            };
            let mut out = Vec::new();
            type Make = fn(&str) -> reqwest::Result<reqwest::Proxy>;
            let kinds: [([&str; 2], Make); 3] = [
                (["http_proxy", "HTTP_PROXY"], |u| reqwest::Proxy::http(u)),
                (["https_proxy", "HTTPS_PROXY"], |u| reqwest::Proxy::https(u)),
                (["all_proxy", "ALL_PROXY"], |u| reqwest::Proxy::all(u)),
            ];
            for (names, make) in kinds {
                let Some(proxy) = var(names) else { continue };
                let url = checked_proxy(policy, &proxy)?;
                let built = make(url.as_str())
                    .map_err(|e| BuildError::InvalidProxy { proxy, detail: e.to_string() })?;
                out.push(built.no_proxy(reqwest::NoProxy::from_env()));
            }
            Ok(out)
        }
    }
}

/// `proxy` as a URL (`http://` when it names no scheme), if the policy allows it.
fn checked_proxy(policy: EgressPolicy, proxy: &str) -> Result<Url, BuildError> {
    let text = if proxy.contains("://") { proxy.to_owned() } else { format!("http://{proxy}") };
    let url = Url::parse(&text)
        .map_err(|e| BuildError::InvalidProxy { proxy: proxy.to_owned(), detail: e.to_string() })?;
    check_url(policy, &url)
        .map_err(|refused| BuildError::ProxyRefused { proxy: proxy.to_owned(), refused })?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Spellings of 169.254.169.254 and other refused addresses, as the URL parser
    /// reads them.
    #[test]
    fn ip_literal_spellings_are_refused() {
        let open = EgressPolicy::default();
        for refused in [
            "http://169.254.169.254/",
            "http://169.254.169.254./",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0xA9FEA9FE/",
            "http://0251.0376.0251.0376/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://169.254.43518/",
            "http://169.16689662/",
            "http://0251.0xfe.43518/",
            "http://0x00a9.254.169.254/",
            "http://0000251.254.169.254/",
            "https://169.254.169.254:443/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[::169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://0/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://%31%36%39.254.169.254/",
            "http://169.254.169.254%2e/",
            "ftp://127.0.0.1/",
            "file:///etc/passwd",
        ] {
            assert!(check_url(open, &url(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn private_literals_only_on_request() {
        let closed = EgressPolicy { refuse_private: true };
        let open = EgressPolicy::default();
        for private in [
            "http://127.0.0.1:8080/x",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://10.0.0.1/",
            "http://012.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://100.64.0.1/",
            "http://192.168.0.1/",
        ] {
            assert!(check_url(closed, &url(private)).is_err(), "{private}");
            assert!(check_url(open, &url(private)).is_ok(), "{private}");
        }
        assert!(check_url(closed, &url("http://files.example/x")).is_ok(), "names at resolve time");
    }

    #[test]
    fn proxies_on_refused_addresses_are_refused() {
        let open = EgressPolicy::default();
        let choice =
            |proxy: &str| ProxyChoice::Override { proxy: proxy.into(), bypass: None, basic: None };
        assert!(matches!(
            proxies(open, choice("169.254.169.254:3128")),
            Err(BuildError::ProxyRefused { .. })
        ));
        assert!(matches!(
            proxies(open, choice("http://[::ffff:a9fe:a9fe]:3128")),
            Err(BuildError::ProxyRefused { .. })
        ));
        assert!(proxies(open, choice("127.0.0.1:3128")).is_ok());
        assert!(proxies(open, choice("proxy.example:3128")).is_ok());
    }
}
