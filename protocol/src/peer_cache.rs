//! The peer cache and fleet distribution (BITS §6.7, issue 6): which members hold which
//! chunks of which remote content, so that a job needing the same bytes takes them from
//! a peer instead of the origin, and so that a fleet of jobs fetches every chunk from
//! the origin about once.
//!
//! Content is identified by [`ContentKey`]s: the URL, the size and the validator (a
//! strong ETag, else the Last-Modified date), as BITS 3.0 keys its cache records by
//! origin URL, size and modification time; and, when the origin declares the file's
//! SHA-256 (`Repr-Digest`), the size and that digest, which match copies fetched from
//! any URL (a mirror). A member's copy is a download job's file whose home node is that
//! member: its durable chunks, with their BLAKE3 digests, are recorded through Raft
//! anyway (for resume), so the index of copies is derived from the replicated jobs and
//! needs no table of its own. The receiver of a peer's chunk checks it against the
//! digest the holder recorded when it fetched the chunk from the origin: a corrupt or
//! lying copy is caught and withdrawn ([`crate::command::Command::WithdrawPeerCopy`]).
//! A copy is offered under its digest only once its whole file matched that digest, and
//! the receiver checks its own finished file against the digest its origin declared.
//!
//! Unlike BITS, whose copies become servable after validation, Ferry offers a chunk as
//! soon as it is durable: the digest check protects the receiver, and a fleet spreads
//! chunks while they arrive. A copy is offered while its job's file holds it: the
//! temporary file while the job runs, the destination after Complete (until the job is
//! forgotten), never after Cancel.

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::file::JobFile;
use crate::ids::{JobId, NodeId};
use crate::job::{Job, JobState, JobType, peer_caching};
use crate::transfer::{ChunkRecord, RemoteInfo};

/// The identity of a remote file's content.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ContentKey {
    /// One version of one URL: copies fetched from that URL.
    Version {
        /// The URL the file was fetched from.
        url: String,
        /// Its size in bytes.
        size: u64,
        /// A strong ETag, else the Last-Modified date.
        validator: String,
    },
    /// The bytes the origin declared by their SHA-256: verified copies from any URL.
    Digest {
        /// The size in bytes.
        size: u64,
        /// The declared SHA-256, lowercase hex.
        sha256: String,
    },
}

impl ContentKey {
    /// The version key of `url` as probed, if the server gave a size and a validator
    /// (content without one cannot be told apart from its next version, so it is not
    /// shared under its URL).
    pub fn of(url: &str, remote: &RemoteInfo) -> Option<Self> {
        Some(Self::Version {
            url: url.to_owned(),
            size: remote.size?,
            validator: remote.if_range()?.to_owned(),
        })
    }

    /// The digest key of the remote file, if the server declared a SHA-256 and a size.
    pub fn digest_of(remote: &RemoteInfo) -> Option<Self> {
        Some(Self::Digest { size: remote.size?, sha256: remote.sha256.clone()? })
    }

    /// Every key under which copies of `url`'s content, as probed, may be found.
    pub fn all_of(url: &str, remote: &RemoteInfo) -> Vec<Self> {
        Self::of(url, remote).into_iter().chain(Self::digest_of(remote)).collect()
    }

    /// The smallest version key of `url`: where a range over the keys of one URL starts.
    pub fn first_of(url: &str) -> Self {
        Self::Version { url: url.to_owned(), size: 0, validator: String::new() }
    }

    /// Whether this is a version key of `url`.
    pub fn is_of_url(&self, url: &str) -> bool {
        matches!(self, Self::Version { url: of, .. } if of == url)
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

/// The keys under which file `index` of `job` is offered to peers, if it is: a download
/// job that allows serving (`BG_JOB_ENABLE_PEERCACHING_SERVER`), a whole file (no
/// ranges) probed with a size and validator or declared digest, with durable chunks,
/// not withdrawn, and still on disk (not cancelled; after Complete only once renamed
/// into place); with [`peer_caching::SERVE_VALIDATED_ONLY`], only once validated. Its version key from its first chunk on; its digest key only once the
/// whole file is transferred, which it is only after it matched the declared digest,
/// and only for content fetched without credentials, custom headers or a client
/// certificate: a job reaches a digest copy through any origin that declares the
/// digest, so knowing the digest of protected content must not be enough to get it.
pub fn offered_keys(job: &Job, index: usize) -> Vec<ContentKey> {
    let Some(file) = job.files.get(index) else { return Vec::new() };
    let on_disk = match job.state {
        JobState::Cancelled => false,
        JobState::Acknowledged => file.progress.completed,
        _ => true,
    };
    let holds_chunks = !file.withdrawn && file.chunk_size > 0 && !file.chunks.is_empty();
    let validated = file.validated
        || job.state == JobState::Acknowledged
        || job.props.peer_caching_flags & peer_caching::SERVE_VALIDATED_ONLY == 0;
    if !(serves(job, file) && on_disk && holds_chunks && validated) {
        return Vec::new();
    }
    keys_of(job, file)
}

/// Everything [`offered_keys`] reads of a job and one of its files. Two equal inputs
/// give equal keys, so the queue's index is updated only for files whose inputs
/// changed (a report touches a few files of a job that may have thousands). Keep it
/// in step with [`offered_keys`] and [`keys_of`].
#[derive(PartialEq)]
struct OfferInputs<'a> {
    state: JobState,
    job_type: JobType,
    flags: u32,
    public: bool,
    url: &'a str,
    remote: Option<&'a RemoteInfo>,
    whole: bool,
    completed: bool,
    withdrawn: bool,
    planned: bool,
    holds_chunks: bool,
    validated: bool,
    transferred: bool,
}

impl<'a> OfferInputs<'a> {
    fn of(job: &'a Job, index: usize) -> Option<Self> {
        let file = job.files.get(index)?;
        Some(Self {
            state: job.state,
            job_type: job.job_type,
            flags: job.props.peer_caching_flags,
            public: is_public(job),
            url: &file.remote_url,
            remote: file.remote.as_ref(),
            whole: file.ranges.is_empty(),
            completed: file.progress.completed,
            withdrawn: file.withdrawn,
            planned: file.chunk_size > 0,
            holds_chunks: !file.chunks.is_empty(),
            validated: file.validated,
            transferred: file.transferred,
        })
    }
}

/// Whether file `index` is offered under the same keys in `old` and `new` (two
/// versions of one job) without computing them: true only when nothing
/// [`offered_keys`] reads differs.
pub fn same_offer(old: &Job, new: &Job, index: usize) -> bool {
    OfferInputs::of(old, index) == OfferInputs::of(new, index)
}

/// Whether `job` may offer `file` to peers at all: a download job that allows serving
/// (`BG_JOB_ENABLE_PEERCACHING_SERVER`), a whole file (no ranges).
fn serves(job: &Job, file: &JobFile) -> bool {
    job.job_type == JobType::Download
        && job.props.peer_caching_flags & peer_caching::SERVER != 0
        && file.ranges.is_empty()
}

/// The keys `file` of `job` is known by as probed: its version key, and its digest key
/// once transferred, for content fetched without credentials, custom headers or a
/// client certificate.
fn keys_of(job: &Job, file: &JobFile) -> Vec<ContentKey> {
    let Some(remote) = file.remote.as_ref() else { return Vec::new() };
    let digest = ContentKey::digest_of(remote).filter(|_| file.transferred && is_public(job));
    ContentKey::of(&file.remote_url, remote).into_iter().chain(digest).collect()
}

/// Whether `job` fetches without credentials, custom headers or a client certificate.
fn is_public(job: &Job) -> bool {
    job.credentials.is_empty()
        && job.props.custom_headers.0.is_empty()
        && job.props.client_certificate.is_none()
}

/// Most chunk records a job keeps for peers over its transferred files (about 1 MiB of
/// its replicated row, which holds at most [`crate::limits::MAX_JOB_BYTES`] more): a
/// file whose records would pass it is not offered once transferred.
pub const MAX_KEPT_CHUNK_RECORDS: usize = 24_576;

/// Whether the chunk records of file `index`, just transferred, are kept: only a file
/// that is offered to peers needs them (a receiver checks each chunk against them),
/// within [`MAX_KEPT_CHUNK_RECORDS`] per job.
pub fn keeps_chunks(job: &Job, index: usize) -> bool {
    let Some(file) = job.files.get(index) else { return false };
    let kept: usize = job
        .files
        .iter()
        .enumerate()
        .filter(|(i, f)| *i != index && f.transferred)
        .map(|(_, f)| f.chunks.len())
        .sum();
    serves(job, file)
        && !keys_of(job, file).is_empty()
        && kept + file.chunks.len() <= MAX_KEPT_CHUNK_RECORDS
}

/// A job's place in a fleet: one of `members` jobs, each on its own node, that bring
/// the same file to every node (`ferry fleet distribute`). Member `member` fetches
/// from the origin the chunks whose index modulo `members` is `member`, and the other
/// chunks from the members that fetched them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FleetMember {
    /// The fleet's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
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

/// The chunk size a fleet member plans its file with (grown for a huge file as any
/// is: [`crate::transfer::chunk_size_for`]), unless a copy of the file already has a
/// plan: the same on every member, whatever its node's `[transfer] chunk_size_bytes`,
/// so that members' copies fit each other's plans; and small, so that a piece reaches
/// the swarm soon after its member starts fetching it (1 MiB since the peer workers
/// pipeline; 2 MiB before).
pub const FLEET_CHUNK_SIZE: u64 = 1024 * 1024;

/// Most credentials a fleet's jobs take: one per target (server, proxy) and scheme.
pub const MAX_FLEET_CREDENTIALS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(etag: Option<&str>, modified: Option<&str>) -> RemoteInfo {
        RemoteInfo {
            size: Some(10),
            etag: etag.map(str::to_owned),
            last_modified: modified.map(str::to_owned),
            ranges: true,
            sha256: None,
        }
    }

    fn validator(key: Option<ContentKey>) -> Option<String> {
        match key? {
            ContentKey::Version { validator, .. } => Some(validator),
            ContentKey::Digest { .. } => None,
        }
    }

    #[test]
    fn a_key_needs_a_size_and_a_strong_validator_or_a_date() {
        let key = ContentKey::of("http://o/f", &remote(Some("\"v1\""), None));
        assert_eq!(validator(key).as_deref(), Some("\"v1\""));
        let key = ContentKey::of("http://o/f", &remote(Some("W/\"v1\""), Some("Mon")));
        assert_eq!(validator(key).as_deref(), Some("Mon"));
        assert!(ContentKey::of("http://o/f", &remote(Some("W/\"v1\""), None)).is_none());
        let mut unsized_remote = remote(Some("\"v1\""), None);
        unsized_remote.size = None;
        assert!(ContentKey::of("http://o/f", &unsized_remote).is_none());
    }

    #[test]
    fn a_declared_digest_keys_the_bytes_whatever_the_url() {
        let mut declared = remote(None, None);
        assert!(ContentKey::all_of("http://o/f", &declared).is_empty());
        declared.sha256 = Some("ab".repeat(32));
        let here = ContentKey::all_of("http://o/f", &declared);
        let mirror = ContentKey::all_of("http://mirror/g", &declared);
        assert_eq!(here, mirror, "no validator: only the digest key");
        assert_eq!(here, vec![ContentKey::Digest { size: 10, sha256: "ab".repeat(32) }]);
        declared.etag = Some("\"v1\"".into());
        assert_eq!(ContentKey::all_of("http://o/f", &declared).len(), 2);
        assert!(ContentKey::all_of("http://o/f", &declared)[0].is_of_url("http://o/f"));
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
