//! The DNS side of the connector: a `reqwest` resolver that drops refused addresses
//! from every answer, so a name (an origin's, a redirect target's, a proxy's) never
//! leads to a connection to a refused address, rebinding included: each connection
//! resolves again and is checked again. IP literals never reach a resolver; they are
//! checked by [`super::client::EgressClient::request`].

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::EgressPolicy;

/// A DNS resolver that drops refused addresses from every answer.
pub(crate) struct PolicyResolver {
    /// What is refused.
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
            if let (true, Some(first)) = (allowed.is_empty(), all.first()) {
                let why = policy.refusal(first.ip()).unwrap_or("refused");
                return Err(format!(
                    "egress policy: {host} resolves to {} which is {why}",
                    first.ip()
                )
                .into());
            }
            if allowed.len() < all.len() {
                tracing::info!(%host, refused = all.len() - allowed.len(), "egress policy: some addresses of a name dropped");
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}
