//! The peer layer (DESIGN §8, issue 4): cluster identity (a CA the first node creates,
//! a certificate per node), the QUIC endpoint over which nodes call each other with
//! mutual TLS (Raft rides on it, see `raft/network.rs`), and joining with a token.

pub(crate) mod endpoint;
pub(crate) mod identity;
pub(crate) mod join;
pub(crate) mod requests;
