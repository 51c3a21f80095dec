//! The egress policy (DESIGN §8, G10): addresses a transfer may never connect to —
//! link-local (cloud metadata services live there), unspecified, multicast and
//! broadcast — and, when the node is configured to, private and loopback ranges.
//!
//! It is enforced where addresses appear: host names through [`PolicyResolver`]
//! (every DNS answer is filtered, so rebinding a name to a refused address fails too),
//! and IP literals in URLs, including redirect targets, through [`check_url`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which ranges are refused besides the always-refused ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EgressPolicy {
    /// Also refuse loopback, RFC 1918, CGNAT and unique-local addresses.
    pub(crate) refuse_private: bool,
}

impl EgressPolicy {
    /// Why `ip` is refused, or `None` if it may be used.
    pub(crate) fn refusal(self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => self.refusal_v4(v4),
            IpAddr::V6(v6) => self.refusal_v6(v6),
        }
    }

    fn refusal_v4(self, ip: Ipv4Addr) -> Option<&'static str> {
        if ip.is_link_local() {
            Some("link-local (cloud metadata services live there)")
        } else if ip.is_unspecified() || ip.octets()[0] == 0 {
            Some("unspecified")
        } else if ip.is_multicast() || ip.is_broadcast() {
            Some("multicast or broadcast")
        } else if self.refuse_private && (ip.is_loopback() || ip.is_private() || is_shared_v4(ip)) {
            Some("private or loopback, refused by transfer.refuse_private_addresses")
        } else {
            None
        }
    }

    fn refusal_v6(self, ip: Ipv6Addr) -> Option<&'static str> {
        let first = ip.segments()[0];
        if first & 0xffc0 == 0xfe80 {
            Some("link-local")
        } else if ip.is_unspecified() {
            Some("unspecified")
        } else if ip.is_multicast() {
            Some("multicast")
        } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
            Some("a cloud metadata service")
        } else if self.refuse_private && (ip.is_loopback() || first & 0xfe00 == 0xfc00) {
            Some("private or loopback, refused by transfer.refuse_private_addresses")
        } else {
            None
        }
    }
}

/// 100.64.0.0/10, carrier-grade NAT.
fn is_shared_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 100 && (64..128).contains(&b)
}

/// Checks a URL whose host is an IP literal (names are checked when resolved).
pub(crate) fn check_url(policy: EgressPolicy, url: &reqwest::Url) -> Result<(), String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    match policy.refusal(ip) {
        Some(why) => Err(format!("{ip} is {why}")),
        None => Ok(()),
    }
}

/// A DNS resolver that drops refused addresses from every answer.
pub(crate) struct PolicyResolver {
    policy: EgressPolicy,
}

impl PolicyResolver {
    /// A resolver enforcing `policy`.
    pub(crate) fn new(policy: EgressPolicy) -> Arc<Self> {
        Arc::new(Self { policy })
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                all.iter().copied().filter(|a| policy.refusal(a.ip()).is_none()).collect();
            if allowed.is_empty() && !all.is_empty() {
                let why = policy.refusal(all[0].ip()).unwrap_or("refused");
                return Err(format!(
                    "egress policy: {host} resolves to {} which is {why}",
                    all[0].ip()
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn metadata_and_link_local_are_always_refused() {
        let open = EgressPolicy::default();
        for refused in [
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::",
        ] {
            assert!(open.refusal(ip(refused)).is_some(), "{refused}");
        }
        for allowed in
            ["127.0.0.1", "10.1.2.3", "192.168.1.1", "93.184.216.34", "::1", "2001:db8::1"]
        {
            assert!(open.refusal(ip(allowed)).is_none(), "{allowed}");
        }
    }

    #[test]
    fn private_ranges_on_request() {
        let closed = EgressPolicy { refuse_private: true };
        for refused in
            ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd12::1"]
        {
            assert!(closed.refusal(ip(refused)).is_some(), "{refused}");
        }
        assert!(closed.refusal(ip("93.184.216.34")).is_none());
        let url = reqwest::Url::parse("http://127.0.0.1:8080/x").expect("url");
        assert!(check_url(closed, &url).is_err());
        assert!(check_url(EgressPolicy::default(), &url).is_ok());
        let named = reqwest::Url::parse("http://files.example/x").expect("url");
        assert!(check_url(closed, &named).is_ok(), "names are checked when resolved");
    }
}
