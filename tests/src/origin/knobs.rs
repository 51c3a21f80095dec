//! The fault knobs of the test origin: what a test can make the server do wrong.
//!
//! [`Knobs::default`] is a well-behaved server. Knobs are read when a request arrives:
//! changing them with `Origin::set_knobs` affects the next requests, not a body that is
//! already being sent (except that per-connection byte counts keep running).

use std::time::Duration;

/// Faults and behaviours of the origin, all off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Knobs {
    /// Ignore `Range` and `If-Range`: every GET gets `200` and the whole body, and no
    /// response advertises `Accept-Ranges`. Models servers without range support.
    pub no_ranges: bool,
    /// Send bodies chunked without `Content-Length` (HEAD too has none), and ignore
    /// ranges. Models dynamic content of unknown size.
    pub no_content_length: bool,
    /// Answer HEAD with `405 Method Not Allowed`. Models servers that only allow GET.
    pub no_head: bool,
    /// Close each connection abruptly (TCP close, mid-body) once it has sent this many
    /// body bytes in total, over all the responses it carried (a response that starts
    /// after the budget is spent sends its head, then the connection closes).
    pub drop_after_bytes: Option<u64>,
    /// `(count, status)`: the first `count` requests after these knobs were set get
    /// `status` (e.g. 503) with a short body, whatever they asked for.
    pub fail_first: Option<(u32, u16)>,
    /// Every request gets this status (e.g. 403, 404, 500) with a short body.
    pub force_status: Option<u16>,
    /// `(bytes, interval)`: send bodies `bytes` at a time with `interval` between
    /// pieces. Models a slow server.
    pub trickle: Option<(usize, Duration)>,
    /// When not empty, `trickle` applies only to requests from these client addresses
    /// (others are served at full speed). Models a slow path to one node.
    pub trickle_clients: Vec<std::net::IpAddr>,
    /// Cap each connection's body bytes to this many per second (a token bucket
    /// holding 50 ms worth, shared by the responses on one connection).
    pub rate_limit_per_connection: Option<u64>,
    /// Once this many body bytes have been sent in total (all paths, all connections,
    /// counted from when these knobs were set), every file changes once: new bytes, new
    /// ETag, new Last-Modified. Responses already under way finish with the old bytes.
    pub change_content_after_bytes: Option<u64>,
    /// Require credentials for every request (after `force_status` and `fail_first`).
    pub auth: Option<Auth>,
    /// Act as a forward HTTP proxy for requests in absolute form.
    pub proxy: Option<ProxyMode>,
    /// `302 Found` from a path to a URL (any origin), checked before files are served.
    pub redirects: Vec<(String, String)>,
    /// Answer any method (`POST`, ...) as a GET of the file. Models a server that makes
    /// a download for some other verb (BITS `SetHttpMethod`).
    pub any_method: bool,
}

/// Credentials the origin requires (`401 Unauthorized` without them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `WWW-Authenticate: Basic realm="ferry-test"`.
    Basic {
        /// The expected user name.
        user: String,
        /// The expected password.
        password: String,
    },
    /// RFC 7616 Digest with `qop="auth"`. The challenge says `algorithm=MD5`; responses
    /// computed with `MD5` or `SHA-256` are both accepted. A nonce may be reused with an
    /// increasing `nc`; an unknown nonce gets a new challenge with `stale=true`.
    Digest {
        /// The expected user name.
        user: String,
        /// The expected password.
        password: String,
        /// The protection space named in the challenge.
        realm: String,
    },
}

/// How the origin behaves as a forward proxy.
///
/// Requests in absolute form (`GET http://files.invalid/x HTTP/1.1`) are served from the
/// origin's own files by the URL's path, whatever the host, and logged with
/// `via_proxy: true`; requests in origin form are served as usual. `CONNECT` (tunnels
/// for HTTPS through the proxy) is not supported and gets `405`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyMode {
    /// `(user, password)` expected in `Proxy-Authorization: Basic`; requests through the
    /// proxy without them get `407` with `Proxy-Authenticate: Basic realm="ferry-proxy"`.
    pub require_auth: Option<(String, String)>,
    /// Digest credentials expected in `Proxy-Authorization` instead (RFC 7616, as
    /// [`Auth::Digest`]; the challenge comes in `Proxy-Authenticate` with `407`).
    pub require_digest: Option<(String, String)>,
}
