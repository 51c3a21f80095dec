//! End-to-end tests: real `ferryd` processes on loopback, driven through the HTTP API,
//! the typed client and the `ferry` CLI.

mod api_hardening;
mod api_tls;
mod auth;
mod bad_input;
mod change_feed;
mod cli;
mod cluster;
mod daemon;
mod download;
mod events;
mod failover;
mod faults;
mod hostile;
mod idempotency;
mod identity;
mod metrics;
mod nemesis;
mod nginx;
mod notify;
mod openapi;
mod ownership;
mod partition;
mod peer_cache;
mod priority;
mod restart;
mod shard;
mod ssrf;
mod storage_faults;
mod support;
mod symlink_race;
mod tls;
mod transfer_cli;
mod upload;
mod upload_client;
