//! The Ferry daemon: configuration, the Raft-replicated job queue on redb, the proposal
//! batcher, and the HTTP API server. `ferryd` (in `main.rs`) is a thin shell over
//! [`run`].

mod api_server;
mod bus;
mod cluster;
pub mod config;
pub mod data_dir;
mod egress;
pub mod error;
pub mod events;
pub mod failpoint;
mod feed;
mod fs;
mod leader;
mod membership;
mod metrics;
mod netwatch;
mod node;
mod notify;
mod peer;
mod principals;
mod proposer;
pub mod raft;
mod replica;
mod scheduler;
mod sd_notify;
#[doc(hidden)]
pub mod sim;
mod transfer;
mod upload_server;

pub use error::{Error, Result};
pub use node::{Ended, ROOM_TO_RESTART, run};

/// What `ferryd check-config` checks beyond [`config::Config::validate`], without
/// starting anything: the configured API certificate and key make a usable TLS
/// configuration, and a `cluster.identity_dir` holds a CA and the join token naming it.
pub fn check_settings(settings: &config::Settings) -> Result<()> {
    api_server::check_tls(&settings.config.api)?;
    membership::check_identity(&settings.config.cluster)
}

pub use membership::init_cluster;
