//! The peer cache and fleet distribution (BITS §6.7, issue 6): which members hold which
//! chunks of which remote content, so that a job needing the same bytes takes them from
//! a peer instead of the origin, and so that a fleet of jobs fetches every chunk from
//! the origin about once.
//!
//! Content is identified by a [`ContentKey`]: the URL, the size and the validator (a
//! strong ETag, else the Last-Modified date), as BITS 3.0 keys its cache records by
//! origin URL, size and modification time. A member's copy is a download job's file
//! whose home node is that member: its durable chunks, with their BLAKE3 digests, are
//! recorded through Raft anyway (for resume), so the index of copies is derived from
//! the replicated jobs and needs no table of its own. The receiver of a peer's chunk
//! checks it against the digest the holder recorded when it fetched the chunk from the
//! origin: a corrupt or lying copy is caught and withdrawn
//! ([`crate::command::Command::WithdrawPeerCopy`]).
//!
//! Unlike BITS, whose copies become servable after validation, Ferry offers a chunk as
//! soon as it is durable: the digest check protects the receiver, and a fleet spreads
//! chunks while they arrive. A copy is offered while its job's file holds it: the
//! temporary file while the job runs, the destination after Complete (until the job is
//! forgotten), never after Cancel.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::file::JobFile;
use crate::ids::{JobId, NodeId};
use crate::job::{Job, JobState, JobType, peer_caching};
use crate::transfer::{ChunkRecord, RemoteInfo};

/// The identity of a remote file's content: URL, size and validator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentKey {
    /// The URL the file was fetched from.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// A strong ETag, else the Last-Modified date.
    pub validator: String,
}

impl ContentKey {
    /// The key of `url` as probed, if the server gave a size and a validator (content
    /// without one cannot be told apart from its next version, so it is not shared).
    pub fn of(url: &str, remote: &RemoteInfo) -> Option<Self> {
        Some(Self {
            url: url.to_owned(),
            size: remote.size?,
            validator: remote.if_range()?.to_owned(),
        })
    }

    /// The smallest key of `url`: where a range over the keys of one URL starts.
    pub fn first_of(url: &str) -> Self {
        Self { url: url.to_owned(), size: 0, validator: String::new() }
    }
}

/// A member's copy of some content: file `file` of job `job` on node `node`.
#[derive(Clone, Copy, Debug)]
pub struct PeerCopy<'a> {
    /// The member holding the bytes (the job's home node).
    pub node: NodeId,
    /// The job whose file holds them.
    pub job: JobId,
    /// The file's index in the job.
    pub file: u32,
    /// The chunk size of the copy's plan.
    pub chunk_size: u64,
    /// Its durable chunks, by index, with their digests.
    pub chunks: &'a [ChunkRecord],
}

impl PeerCopy<'_> {
    /// The copy's record of chunk `index`, if it holds it.
    pub fn chunk(&self, index: u32) -> Option<&ChunkRecord> {
        self.chunks.binary_search_by_key(&index, |c| c.index).ok().map(|at| &self.chunks[at])
    }
}

/// The key under which file `index` of `job` is offered to peers, if it is: a download
/// job that allows serving (`BG_JOB_ENABLE_PEERCACHING_SERVER`), a whole file (no
/// ranges) probed with a size and validator, with durable chunks, not withdrawn, and
/// still on disk (not cancelled; after Complete only once renamed into place).
pub fn offered_key(job: &Job, index: usize) -> Option<ContentKey> {
    let file = job.files.get(index)?;
    let on_disk = match job.state {
        JobState::Cancelled => false,
        JobState::Acknowledged => file.progress.completed,
        _ => true,
    };
    let offered = job.job_type == JobType::Download
        && job.props.peer_caching_flags & peer_caching::SERVER != 0
        && on_disk
        && servable_shape(file);
    if !offered {
        return None;
    }
    ContentKey::of(&file.remote_url, file.remote.as_ref()?)
}

fn servable_shape(file: &JobFile) -> bool {
    file.ranges.is_empty() && !file.withdrawn && file.chunk_size > 0 && !file.chunks.is_empty()
}

/// Whether the chunk records of file `index` are kept once it is transferred: only a
/// file that is offered to peers needs them (a receiver checks each chunk against them).
pub fn keeps_chunks(job: &Job, index: usize) -> bool {
    job.props.peer_caching_flags & peer_caching::SERVER != 0
        && job.files.get(index).is_some_and(|file| {
            file.ranges.is_empty()
                && file.remote.as_ref().and_then(|r| ContentKey::of(&file.remote_url, r)).is_some()
        })
}

/// A job's place in a fleet: one of `members` jobs, each on its own node, that bring
/// the same file to every node (`ferry fleet distribute`). Member `member` fetches
/// from the origin the chunks whose index modulo `members` is `member`, and the other
/// chunks from the members that fetched them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FleetMember {
    /// The fleet's id.
    #[schema(value_type = String, format = Uuid)]
    pub fleet: JobId,
    /// This job's position, 0-based.
    pub member: u32,
    /// How many jobs the fleet has.
    pub members: u32,
}

impl FleetMember {
    /// Whether this member fetches chunk `index` from the origin.
    pub fn fetches(&self, index: u32) -> bool {
        self.members == 0 || index % self.members == self.member
    }
}

/// In a fleet's destination path, replaced by each member's node id (for nodes that
/// share a file system).
pub const FLEET_NODE_PLACEHOLDER: &str = "{node}";

/// Most nodes one fleet reaches.
pub const MAX_FLEET_MEMBERS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(etag: Option<&str>, modified: Option<&str>) -> RemoteInfo {
        RemoteInfo {
            size: Some(10),
            etag: etag.map(str::to_owned),
            last_modified: modified.map(str::to_owned),
            ranges: true,
        }
    }

    #[test]
    fn a_key_needs_a_size_and_a_strong_validator_or_a_date() {
        let key = ContentKey::of("http://o/f", &remote(Some("\"v1\""), None)).expect("etag");
        assert_eq!(key.validator, "\"v1\"");
        let key = ContentKey::of("http://o/f", &remote(Some("W/\"v1\""), Some("Mon"))).expect("lm");
        assert_eq!(key.validator, "Mon");
        assert!(ContentKey::of("http://o/f", &remote(Some("W/\"v1\""), None)).is_none());
        let mut unsized_remote = remote(Some("\"v1\""), None);
        unsized_remote.size = None;
        assert!(ContentKey::of("http://o/f", &unsized_remote).is_none());
    }

    #[test]
    fn keys_of_one_url_sort_after_its_first_key() {
        let key = ContentKey::of("http://o/f", &remote(Some("\"a\""), None)).expect("key");
        assert!(ContentKey::first_of("http://o/f") <= key);
        assert!(ContentKey::first_of("http://o/g") > key);
    }

    #[test]
    fn fleet_members_split_the_chunks() {
        let member = |m| FleetMember { fleet: JobId(uuid::Uuid::nil()), member: m, members: 3 };
        let owners: Vec<u32> =
            (0..7).map(|i| (0..3).find(|m| member(*m).fetches(i)).expect("owner")).collect();
        assert_eq!(owners, vec![0, 1, 2, 0, 1, 2, 0]);
    }
}
