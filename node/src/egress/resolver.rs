//! The DNS side of the connector: a `reqwest` resolver that drops refused addresses
//! from every answer, so a name (an origin's, a redirect target's, a proxy's) never
//! leads to a connection to a refused address, rebinding included: each connection
//! resolves again and is checked again. IP literals never reach a resolver; they are
//! checked by [`super::client::EgressClient::request`].

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::policy::{EgressPolicy, Refused};

/// A name that could not be resolved (the transfer engine reports it as
/// `BG_E_NAME_RESOLUTION_FAILURE`).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {cause}")]
pub(crate) struct NotResolved {
    /// The name.
    pub(crate) host: String,
    /// The resolver's error.
    #[source]
    pub(crate) cause: std::io::Error,
}

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
            let found = tokio::net::lookup_host((host.as_str(), 0)).await;
            let all: Vec<SocketAddr> = match found {
                Ok(found) => found.collect(),
                Err(cause) => return Err(Box::new(NotResolved { host: host.clone(), cause }) as _),
            };
            let allowed: Vec<SocketAddr> =
                all.iter().copied().filter(|a| policy.refusal(a.ip()).is_none()).collect();
            if let (true, Some(first)) = (allowed.is_empty(), all.first()) {
                let why = policy.refusal(first.ip()).unwrap_or("refused").to_owned();
                let target = format!("{host} (resolved to {})", first.ip());
                return Err(Box::new(Refused { target, why }) as _);
            }
            if allowed.len() < all.len() {
                tracing::info!(%host, refused = all.len() - allowed.len(), "egress policy: some addresses of a name dropped");
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}
