//! The peer layer (DESIGN §8): cluster identity (a CA the first node creates, a
//! certificate per node), the QUIC endpoint over which members call each other with
//! mutual TLS, the typed request router and client on top of it (`rpc`), joining with a
//! token, and the liveness of members (pings).
//!
//! This layer knows no subsystem: Raft, the replica, the transfer engine... register
//! their own requests on the [`rpc::Router`].

pub(crate) mod endpoint;
pub(crate) mod identity;
pub(crate) mod join;
pub(crate) mod liveness;
pub(crate) mod rpc;
