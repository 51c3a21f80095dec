//! The one outbound connector of the node (DESIGN §2 and §8, G10): every HTTP
//! connection a transfer makes — downloads, HEAD probes, range requests of helpers,
//! uploads, reply downloads, `BITS-Host-Id` targets, redirects, proxies — goes through
//! an [`EgressClient`], which checks the address it connects to against the
//! [`EgressPolicy`]. A leaf: nothing here imports the rest of the node.
//!
//! - [`policy`]: which addresses are refused (pure);
//! - [`resolver`]: names, checked at every resolution;
//! - [`client`]: the client, IP literals and proxies checked;
//! - [`site`]: same scheme and registrable domain, for `BITS-Host-Id`.

mod client;
mod policy;
mod resolver;
mod site;

pub(crate) use self::client::{
    BuildError, ClientOptions, EgressClient, ExecuteError, ProxyChoice, check_url,
};
pub(crate) use self::policy::{EgressPolicy, Refused};
pub(crate) use self::resolver::NotResolved;
pub(crate) use self::site::{host_listed, same_site};
