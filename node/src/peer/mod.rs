//! The peer layer (DESIGN §8, issue 4): cluster identity (a CA the first node creates,
//! a certificate per node) and the QUIC endpoint over which nodes call each other with
//! mutual TLS. Not yet wired into Raft: `raft/network.rs` still reports every peer
//! unreachable.

// The layer is built and tested ahead of its users (Raft network, joining).
#![allow(dead_code)]

pub(crate) mod endpoint;
pub(crate) mod identity;
pub(crate) mod join;
