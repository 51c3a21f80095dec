//! What the origin tells a test about its traffic: one [`RequestRecord`] per request and
//! running [`Stats`]. Records hold header *scheme names* only, never credentials.

/// One request as the origin saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The connection it came on (1 for the first connection the origin accepted).
    pub connection: u64,
    /// The client's address (which node fetched, when nodes have source addresses).
    pub client: Option<std::net::IpAddr>,
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The URL path (no query), also for absolute-form requests through the proxy.
    pub path: String,
    /// The host of an absolute-form request (`files.invalid:80`), else `None`.
    pub proxied_host: Option<String>,
    /// Whether it came through proxy mode (absolute form while `Knobs::proxy` is set).
    pub via_proxy: bool,
    /// The `Range` header, as sent.
    pub range: Option<String>,
    /// The `If-Range` header, as sent.
    pub if_range: Option<String>,
    /// The scheme of the `Authorization` header (`Basic`, `Digest`), if one came.
    pub authorization: Option<String>,
    /// The scheme of the `Proxy-Authorization` header, if one came.
    pub proxy_authorization: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// Headers whose names start with `x-` (custom headers under test), `name: value`.
    pub x_headers: Vec<String>,
    /// The status code sent.
    pub status: u16,
    /// File content bytes of the body handed to the connection (error pages excluded);
    /// grows while the body is being sent.
    pub body_bytes: u64,
}

/// Totals since the origin started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered (including faults and refusals).
    pub requests: u64,
    /// File content bytes sent in bodies, over all requests.
    pub body_bytes: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// Most file bodies being sent at once, over all clients.
    pub max_bodies_in_flight: u64,
    /// Most file bodies being sent at once to one client address (what a client's
    /// connection cap bounds).
    pub max_bodies_in_flight_per_client: u64,
}
