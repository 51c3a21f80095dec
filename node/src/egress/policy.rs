//! The egress policy (DESIGN §8, G10) as a pure classification of addresses: which
//! addresses a transfer may never connect to — link-local (cloud metadata services
//! live there), cloud metadata addresses elsewhere, unspecified, multicast, broadcast
//! and reserved — and, when the node is configured to, private and loopback ranges.
//!
//! IPv6 addresses that carry an IPv4 address are judged by both: IPv4-mapped
//! (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), IPv4-translated
//! (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`), 6to4
//! (`2002::/16`) and Teredo (`2001::/32`, server and client). No I/O lives here: where
//! the policy is enforced is [`super::client`] and [`super::resolver`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which ranges are refused besides the always-refused ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EgressPolicy {
    /// Also refuse loopback, RFC 1918, CGNAT, benchmarking and unique-local addresses.
    pub(crate) refuse_private: bool,
}

/// Azure's WireServer: a metadata-like service on a public address.
const AZURE_WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// AWS's IPv6 instance metadata service.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// What refusing private addresses says.
const PRIVATE: &str = "private or loopback, refused by transfer.refuse_private_addresses";

impl EgressPolicy {
    /// Why `ip` is refused, or `None` if it may be used.
    pub(crate) fn refusal(self, ip: IpAddr) -> Option<&'static str> {
        match ip {
            IpAddr::V4(v4) => self.refusal_v4(v4),
            IpAddr::V6(v6) => self.refusal_v6(v6).or_else(|| {
                embedded_v4(v6).into_iter().flatten().find_map(|v4| self.refusal_v4(v4))
            }),
        }
    }

    fn refusal_v4(self, ip: Ipv4Addr) -> Option<&'static str> {
        let [a, b, ..] = ip.octets();
        if ip.is_link_local() {
            Some("link-local (cloud metadata services live there)")
        } else if ip == AZURE_WIRESERVER {
            Some("a cloud metadata service")
        } else if a == 0 {
            Some("unspecified (0.0.0.0/8)")
        } else if ip.is_multicast() || ip.is_broadcast() {
            Some("multicast or broadcast")
        } else if a >= 240 {
            Some("reserved (240.0.0.0/4)")
        } else if self.refuse_private
            && (ip.is_loopback()
                || ip.is_private()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && ip.octets()[2] == 0))
        {
            Some(PRIVATE)
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
        } else if ip == AWS_METADATA_V6 {
            Some("a cloud metadata service")
        } else if self.refuse_private
            && (ip.is_loopback() || first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0)
        {
            Some(PRIVATE)
        } else {
            None
        }
    }
}

/// The IPv4 addresses an IPv6 address carries, by the transition schemes that route
/// to them (at most two: Teredo names a server and a client).
fn embedded_v4(ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = ip.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let zero = |range: std::ops::Range<usize>| s[range].iter().all(|x| *x == 0);
    if zero(0..5) && s[5] == 0xffff {
        // IPv4-mapped.
        [Some(last), None]
    } else if zero(0..6) && !ip.is_loopback() && !ip.is_unspecified() {
        // IPv4-compatible (deprecated, still routed by some stacks).
        [Some(last), None]
    } else if zero(0..4) && s[4] == 0xffff && s[5] == 0 {
        // IPv4-translated (SIIT).
        [Some(last), None]
    } else if s[0] == 0x64 && s[1] == 0xff9b && (zero(2..6) || s[2] == 1) {
        // NAT64: the well-known prefix and the local-use one.
        [Some(last), None]
    } else if s[0] == 0x2002 {
        // 6to4.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        [Some(v4), None]
    } else if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: the server, and the client (its bits inverted).
        let server = Ipv4Addr::new((s[2] >> 8) as u8, s[2] as u8, (s[3] >> 8) as u8, s[3] as u8);
        let client = Ipv4Addr::from(!u32::from(last));
        [Some(server), Some(client)]
    } else {
        [None, None]
    }
}

/// A connection the policy refuses; nothing was sent.
#[derive(Clone, Debug, thiserror::Error)]
#[error("egress policy: {target} is {why}")]
pub(crate) struct Refused {
    /// The address or URL refused.
    pub(crate) target: String,
    /// Which rule refused it.
    pub(crate) why: String,
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
            "169.254.0.1",
            "168.63.129.16",
            "fe80::1",
            "febf::1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "fd00:ec2::254",
            "ff02::1",
            "::",
        ] {
            assert!(open.refusal(ip(refused)).is_some(), "{refused}");
        }
        for allowed in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "93.184.216.34",
            "::1",
            "2001:db8::1",
            "fd00::1",
            "2606:4700::1111",
        ] {
            assert!(open.refusal(ip(allowed)).is_none(), "{allowed}");
        }
    }

    #[test]
    fn ipv6_forms_of_refused_ipv4_are_refused() {
        let open = EgressPolicy::default();
        for refused in [
            "::ffff:169.254.169.254",
            "::ffff:a9fe:a9fe",
            "::169.254.169.254",
            "::ffff:0:169.254.169.254",
            "64:ff9b::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::1",
            // Teredo client 169.254.169.254, obfuscated.
            "2001:0:4136:e378:8000:63bf:5601:5601",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
        ] {
            assert!(open.refusal(ip(refused)).is_some(), "{refused}");
        }
        for allowed in ["::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"] {
            assert!(open.refusal(ip(allowed)).is_none(), "{allowed}");
        }
    }

    #[test]
    fn private_ranges_on_request() {
        let closed = EgressPolicy { refuse_private: true };
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "fd12::1",
            "fc00::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:c0a8:1::1",
            "::10.0.0.1",
        ] {
            assert!(closed.refusal(ip(refused)).is_some(), "{refused}");
        }
        for allowed in ["93.184.216.34", "172.32.0.1", "100.128.0.1", "2001:db8::1"] {
            assert!(closed.refusal(ip(allowed)).is_none(), "{allowed}");
        }
    }
}
