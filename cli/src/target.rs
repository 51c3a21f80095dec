//! Which node to talk to and with which token: flags and environment first, then the
//! files a local node leaves in its data directory (`api.addr`, `admin.token`).

use std::path::Path;

use crate::args::Cli;

/// The node URL: `--node`/`FERRY_NODE`, else the local node's `api.addr`, else the
/// default `http://127.0.0.1:7070`; `https://` instead when a CA is given (`--ca`: the
/// local node serves TLS).
pub(crate) fn node_url(cli: &Cli) -> String {
    if let Some(node) = &cli.node {
        return node.clone();
    }
    let scheme = if cli.ca.is_some() { "https" } else { "http" };
    match read_trimmed(&cli.data_dir.join("api.addr")) {
        Some(addr) => format!("{scheme}://{addr}"),
        None => format!("{scheme}://127.0.0.1:7070"),
    }
}

/// The token: `--token`/`FERRY_TOKEN`, else the local node's `admin.token` — but only
/// for a node on this machine (loopback): the admin secret never travels elsewhere.
pub(crate) fn token(cli: &Cli, node_url: &str) -> Option<String> {
    cli.token.clone().or_else(|| {
        is_loopback(node_url).then(|| read_trimmed(&cli.data_dir.join("admin.token"))).flatten()
    })
}

fn is_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else { return false };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_nodes_get_the_local_token() {
        assert!(is_loopback("http://127.0.0.1:7070"));
        assert!(is_loopback("http://127.0.0.9:1"));
        assert!(is_loopback("http://[::1]:7070"));
        assert!(is_loopback("http://localhost:7070"));
        assert!(!is_loopback("http://10.0.0.5:7070"));
        assert!(!is_loopback("https://ferry.example.com"));
        assert!(!is_loopback("not a url"));
    }
}
