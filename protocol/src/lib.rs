//! Ferry's shared language: the BITS job and file model, the BITS state machine, the
//! replicated job queue and its deterministic apply, error codes with descriptions,
//! cluster commands, HTTP API types, and the versioned, size-limited codec.
//!
//! This crate does no I/O and reads no clock: the daemon (`ferry-node`) is the shell
//! around it. Everything here is tested without a runtime.

#![warn(missing_docs)]

pub mod api;
pub mod codec;
pub mod codes;
pub mod command;
pub mod credentials;
pub mod event;
pub mod file;
pub mod ids;
pub mod job;
pub mod limits;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod peer;
pub mod peer_cache;
pub mod principals;
pub mod queue;
pub mod state;
pub mod time;
pub mod transfer;
pub mod upload;
pub mod validate;

pub use codes::{BitsCode, ErrorContext};
pub use command::{
    Batch, BatchReply, Command, CommandError, JobAction, NewJob, PropertyChanges, Proposal, Reply,
};
pub use file::{FileRange, JobFile, NewFile};
pub use ids::{Caller, JobId, NodeId, Principal, RequestId, Role};
pub use job::{Job, JobState, JobType, Priority};
pub use queue::Queue;
pub use time::Timestamp;

#[cfg(test)]
mod codec_roundtrip_test;
