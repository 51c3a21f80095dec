//! The node's view of its own network: [`NetWatch`] follows link, address and route
//! changes through netlink (Linux `rtnetlink`, the kernel's `ip monitor` groups) and
//! publishes a generation that grows with each burst of changes, and answers whether an
//! address can be reached now ([`NetWatch::route_to`]).
//!
//! Netlink is only the trigger. The check itself is a UDP socket `connect()`, which
//! sends nothing, needs no privilege and fails with `ENETUNREACH` when the kernel has no
//! route (link down, address removed, route deleted); where netlink answers, the
//! route's outgoing interface must also be up with a carrier (a cable pulled leaves the
//! route in place, marked `linkdown`). Without netlink (not Linux, or a sandbox that
//! forbids the socket) the generation never moves: the node says so once at info, and
//! the retry delay alone brings jobs back.
//!
//! [`NetWatch::resolve`] remembers the addresses of the names it resolved: once the
//! network is gone, DNS usually is too, and the check needs an address.
//!
//! What jobs do about it lives in `transfer::reachability`; nothing here knows of jobs.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// Quiet time that ends a burst of netlink messages (one link going down sends its
/// link, address and route deletions within microseconds of each other).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const QUIET: Duration = Duration::from_millis(50);
/// Longest a burst may last before its generation is published anyway.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const MOST_BURST: Duration = Duration::from_millis(500);
/// Longest wait for netlink's answer about a route or a link.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// Wait before the subscription is opened again after netlink closed it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

/// Longest wait for the system's resolver.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Names whose addresses are remembered at most (a bound, not a quota).
const MOST_NAMES: usize = 1024;

/// Whether an address can be reached from this node now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The kernel has a route, through an interface that is up.
    Exists,
    /// It has none, or its interface cannot carry packets.
    Missing(NoRoute),
    /// The check itself failed (out of descriptors...): nothing can be told.
    Unknown,
}

/// Why an address cannot be reached from this node now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NoRoute {
    /// The address.
    pub(crate) target: IpAddr,
    /// What the kernel said (no route, the interface is down...).
    pub(crate) why: String,
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.target, self.why)
    }
}

/// The network as this node sees it (cheap to clone).
#[derive(Clone)]
pub(crate) struct NetWatch {
    /// Grows by one after each burst of link, address or route changes. Its sender is
    /// gone (`changed()` fails) where changes cannot be followed.
    changes: watch::Receiver<u64>,
    /// Netlink requests: the outgoing interface of a route and its state.
    #[cfg(target_os = "linux")]
    netlink: Option<rtnetlink::Handle>,
    /// Addresses of the names resolved here: once the network is gone, DNS often is
    /// too, and the route check needs an address.
    names: Arc<Mutex<Names>>,
}

/// Names with the addresses they last resolved to, at most [`MOST_NAMES`] of them.
#[derive(Default)]
struct Names(HashMap<String, Vec<IpAddr>>);

impl Names {
    fn get(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.0.get(&name.to_ascii_lowercase()).cloned()
    }

    fn insert(&mut self, name: &str, addresses: Vec<IpAddr>) {
        let name = name.to_ascii_lowercase();
        if self.0.len() >= MOST_NAMES && !self.0.contains_key(&name) {
            // Rarely reached: the names of the jobs running now come back at once.
            self.0.clear();
        }
        self.0.insert(name, addresses);
    }
}

impl NetWatch {
    /// Starts following the network (inside a tokio runtime); where netlink cannot be
    /// used, says so once and returns a watch whose generation never moves.
    pub(crate) fn start() -> Self {
        let (sender, changes) = watch::channel(0);
        #[cfg(target_os = "linux")]
        {
            match linux::subscribe() {
                Ok((handle, messages)) => {
                    tokio::spawn(linux::follow(messages, sender));
                    tracing::debug!("following link, address and route changes (netlink)");
                    Self { changes, netlink: Some(handle), names: Default::default() }
                }
                Err(e) => {
                    tracing::info!(error = %e, "netlink is not available: jobs that lost the network wait for their minimum retry delay");
                    drop(sender);
                    Self { changes, netlink: None, names: Default::default() }
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            tracing::info!(
                "network changes are not followed on this system: jobs that lost the network wait for their minimum retry delay"
            );
            drop(sender);
            Self { changes, names: Default::default() }
        }
    }

    /// A watch that never changes and checks routes with sockets only (tests).
    #[cfg(test)]
    pub(crate) fn unwatched() -> Self {
        let (_, changes) = watch::channel(0);
        Self {
            changes,
            #[cfg(target_os = "linux")]
            netlink: None,
            names: Default::default(),
        }
    }

    /// The generation of the network: wait with `changed()`; an error means changes
    /// are not followed (any more).
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The addresses of `host`: itself if an IP address, else what the system's
    /// resolver says (remembered), or what it said last time when it cannot answer now.
    /// Empty when nothing is known.
    pub(crate) async fn resolve(&self, host: &url::Host<String>) -> Vec<IpAddr> {
        let name = match host {
            url::Host::Ipv4(ip) => return vec![IpAddr::V4(*ip)],
            url::Host::Ipv6(ip) => return vec![IpAddr::V6(*ip)],
            url::Host::Domain(name) => name.as_str(),
        };
        let known = self.names.lock().unwrap_or_else(PoisonError::into_inner).get(name);
        if let Some(known) = known {
            return known;
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
            Ok(Ok(found)) => {
                let addresses: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                if !addresses.is_empty() {
                    let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
                    names.insert(name, addresses.clone());
                }
                addresses
            }
            Ok(Err(_)) | Err(_) => Vec::new(),
        }
    }

    /// Whether `target` can be reached now, from `source` when connections are bound
    /// to it (`transfer.source_addr`). Nothing is sent.
    pub(crate) async fn route_to(&self, target: SocketAddr, source: Option<IpAddr>) -> Route {
        let missing = |why: String| Route::Missing(NoRoute { target: target.ip(), why });
        let local = match (source, target) {
            (Some(source), _) => SocketAddr::new(source, 0),
            (None, SocketAddr::V4(_)) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            (None, SocketAddr::V6(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        };
        let socket = match tokio::net::UdpSocket::bind(local).await {
            Ok(socket) => socket,
            // The configured source address is gone from every interface.
            Err(e) if source.is_some() && unreachable(&e) => {
                return missing(format!("the source address {local} is gone ({e})"));
            }
            Err(_) => return Route::Unknown,
        };
        match socket.connect(target).await {
            Ok(()) => {}
            Err(e) if unreachable(&e) => return missing(e.to_string()),
            Err(_) => return Route::Unknown,
        }
        #[cfg(target_os = "linux")]
        if let Some(handle) = &self.netlink
            && let Some(why) = linux::interface_down(handle, target.ip()).await
        {
            return missing(why);
        }
        Route::Exists
    }
}

/// True for the errors that mean "no way there from here" (as opposed to "cannot tell").
pub(crate) fn unreachable(error: &io::Error) -> bool {
    use io::ErrorKind::{AddrNotAvailable, HostUnreachable, NetworkDown, NetworkUnreachable};
    matches!(error.kind(), NetworkUnreachable | HostUnreachable | NetworkDown | AddrNotAvailable)
}

#[cfg(target_os = "linux")]
mod linux {
    //! The netlink side: the subscription and its follower, and the interface a route
    //! leaves through.

    use std::net::IpAddr;

    use futures_util::StreamExt as _;
    use futures_util::stream::BoxStream;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
    use rtnetlink::packet_route::route::RouteAttribute;
    use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
    use tokio::sync::watch;
    use tokio::time::{Instant, timeout};

    use super::{MOST_BURST, QUERY_TIMEOUT, QUIET, RESUBSCRIBE_DELAY};

    /// The kernel's messages to a subscriber (what they say does not matter: any of
    /// them may have added or removed a route).
    pub(super) type Messages = BoxStream<'static, ()>;

    /// The groups whose messages mean "a route may have come or gone".
    const GROUPS: [MulticastGroup; 5] = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ];

    /// Opens a netlink socket subscribed to [`GROUPS`]; its connection task runs on the
    /// runtime. The handle answers requests on the same socket.
    pub(super) fn subscribe() -> std::io::Result<(Handle, Messages)> {
        let (connection, handle, messages) = rtnetlink::new_multicast_connection(&GROUPS)?;
        tokio::spawn(connection);
        Ok((handle, messages.map(|_| ()).boxed()))
    }

    /// Publishes a new generation after each burst of messages, until nobody listens;
    /// subscribes again if netlink closes the subscription (a socket overrun).
    pub(super) async fn follow(mut messages: Messages, generation: watch::Sender<u64>) {
        loop {
            while messages.next().await.is_some() {
                // The rest of the burst: until quiet, or for at most MOST_BURST.
                let end = Instant::now() + MOST_BURST;
                loop {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match timeout(QUIET.min(left), messages.next()).await {
                        Ok(Some(_)) => {}
                        // Quiet, or the subscription closed (seen by the outer loop).
                        Ok(None) | Err(_) => break,
                    }
                }
                generation.send_modify(|g| *g += 1);
                if generation.is_closed() {
                    return;
                }
            }
            tracing::warn!("the netlink subscription closed; subscribing again");
            loop {
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                if generation.is_closed() {
                    return;
                }
                match subscribe() {
                    Ok((_, fresh)) => {
                        messages = fresh;
                        // Whatever changed while unsubscribed is looked at now.
                        generation.send_modify(|g| *g += 1);
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to netlink again"),
                }
            }
        }
    }

    /// Why the interface the route to `target` leaves through cannot carry it (down,
    /// or no carrier), if it cannot; `None` when it can or netlink does not say.
    pub(super) async fn interface_down(handle: &Handle, target: IpAddr) -> Option<String> {
        let prefix = if target.is_ipv4() { 32 } else { 128 };
        let request =
            RouteMessageBuilder::<IpAddr>::new().destination_prefix(target, prefix).ok()?.build();
        let mut routes = handle.route().get(request).execute();
        let route = timeout(QUERY_TIMEOUT, routes.next()).await.ok()??.ok()?;
        let index = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })?;
        let mut links = handle.link().get().match_index(index).execute();
        let link = timeout(QUERY_TIMEOUT, links.next()).await.ok()??.ok()?;
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.as_str()),
            _ => None,
        });
        let name = name.map_or_else(|| format!("#{index}"), str::to_owned);
        interface_problem(link.header.flags).map(|problem| format!("interface {name} {problem}"))
    }

    /// What keeps an interface with `flags` from carrying packets, if anything.
    pub(super) fn interface_problem(flags: LinkFlags) -> Option<&'static str> {
        if !flags.contains(LinkFlags::Up) {
            Some("is down")
        } else if !flags.contains(LinkFlags::LowerUp) && !flags.contains(LinkFlags::Loopback) {
            Some("has no carrier")
        } else {
            None
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_interface_carries_packets_when_up_with_a_carrier() {
            assert_eq!(interface_problem(LinkFlags::Up | LinkFlags::LowerUp), None);
            assert_eq!(interface_problem(LinkFlags::Up | LinkFlags::Loopback), None);
            assert_eq!(interface_problem(LinkFlags::Up), Some("has no carrier"));
            assert_eq!(interface_problem(LinkFlags::LowerUp), Some("is down"));
            assert_eq!(interface_problem(LinkFlags::empty()), Some("is down"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_errors_mean_no_route() {
        use io::ErrorKind::*;
        for kind in [NetworkUnreachable, HostUnreachable, NetworkDown, AddrNotAvailable] {
            assert!(unreachable(&io::Error::from(kind)), "{kind:?}");
        }
        for kind in [ConnectionRefused, PermissionDenied, TimedOut, Other] {
            assert!(!unreachable(&io::Error::from(kind)), "{kind:?}");
        }
        let enetunreach = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert!(unreachable(&enetunreach));
    }

    #[test]
    fn names_are_remembered_case_blind_and_bounded() {
        let mut names = Names::default();
        let one: IpAddr = "192.0.2.1".parse().expect("an address");
        names.insert("Origin.Example", vec![one]);
        assert_eq!(names.get("origin.example"), Some(vec![one]));
        for n in 0..MOST_NAMES {
            names.insert(&format!("n{n}.example"), vec![one]);
        }
        assert!(names.0.len() <= MOST_NAMES);
        assert_eq!(names.get("origin.example"), None, "forgotten once the bound was reached");
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves() {
        let net = NetWatch::unwatched();
        let v6: Ipv6Addr = "2001:db8::1".parse().expect("an address");
        assert_eq!(net.resolve(&url::Host::Ipv6(v6)).await, vec![IpAddr::V6(v6)]);
        assert_eq!(
            net.resolve(&url::Host::Domain("localhost".into()))
                .await
                .first()
                .map(|ip| ip.is_loopback()),
            Some(true)
        );
    }

    #[tokio::test]
    async fn loopback_is_reachable_and_a_gone_source_address_is_not() {
        let net = NetWatch::unwatched();
        let lo: SocketAddr = "127.0.0.1:80".parse().expect("an address");
        assert_eq!(net.route_to(lo, None).await, Route::Exists);
        // TEST-NET-3 is on no interface of any machine.
        let gone: IpAddr = "203.0.113.77".parse().expect("an address");
        let Route::Missing(err) = net.route_to(lo, Some(gone)).await else {
            panic!("a source address on no interface leads nowhere")
        };
        assert_eq!(err.target, lo.ip());
        assert!(err.why.contains("source address"), "{err}");
    }
}
