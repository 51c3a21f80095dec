//! Ferry's public API contract: the HTTP routes of DESIGN §7 with authentication,
//! request validation and OpenAPI, and the typed Rust client that the CLI and services
//! use. The routes reach the cluster through the [`Cluster`] trait that the node
//! implements; this crate never touches Raft or disks itself.

pub mod auth;
pub mod bandwidth;
pub mod bus;
pub mod client;
pub mod cluster;
pub mod console;
mod extract;
pub mod metrics;
pub mod notify_policy;
pub mod problem;
pub mod roots;
pub mod routes;
pub mod secrets;
pub mod sse;

pub use auth::{Auth, TokenEntry};
pub use client::{Client, ClientError};
pub use cluster::{
    BoxFuture, Cluster, ClusterError, Consistency, EventStream, ReadAt, SubscribeError, Written,
};
pub use problem::ApiError;
pub use roots::LocalRoots;
pub use routes::{ApiState, Limits, openapi, router};
pub use secrets::SecretKey;

/// Header carrying the client's idempotency key for a mutating request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
