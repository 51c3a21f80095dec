//! The replicated job queue: the table of jobs, the recent-request table that makes
//! retried commands apply once, and the queue policy, with the deterministic `apply`
//! every node runs on each Raft entry.
//!
//! Apply reads no clock and no randomness: time comes from the batch, ids from the
//! command. The queue records what each apply touched ([`Changes`]) so the node can write
//! exactly those rows to disk in the same transaction as its applied index.

mod apply;
mod engine;
mod events;
mod listing;
mod properties;
#[cfg(test)]
mod tests;
mod uploads;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codes::BitsCode;
use crate::command::{CommandError, CommandResult, Reply};
use crate::event::JobEvent;
use crate::ids::{Caller, JobId, NodeId, Principal, RequestId};
use crate::job::Job;
use crate::limits::QueuePolicy;
use crate::peer_cache::{self, ContentKey, PeerCopy};
use crate::time::Timestamp;
pub use listing::{JobPage, JobQuery, MAX_PAGE};
pub use uploads::{
    FragmentAck, HeldReply, MAX_PIECES, MAX_SESSIONS_PER_USER, MAX_UPLOAD_PATH_LEN,
    SESSION_TIMEOUT, UploadCommand, UploadOutcome, UploadPiece, UploadSession, check_upload_path,
};

/// How long a request id is remembered (a retry after this is a new request).
pub const REQUEST_ID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most request ids remembered in all; the oldest are forgotten first.
pub const MAX_REMEMBERED_REQUESTS: usize = 100_000;
/// Most request ids remembered per principal, so that one busy client cannot push
/// everyone else's out before their retries arrive.
pub const MAX_REMEMBERED_REQUESTS_PER_PRINCIPAL: usize = 10_000;
/// Most final-state jobs kept for reading by id; the oldest go first. Retention of
/// finished jobs is a courtesy, so a create-and-cancel loop must not grow it unbounded.
pub const MAX_RETAINED_FINAL_JOBS: usize = 10_000;
/// How long a job in a final state (acknowledged, cancelled) stays readable by id before
/// it is removed. BITS forgets such jobs at once; Ferry keeps them a day for operators.
pub const FINAL_JOB_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A request id is scoped to the principal that sent it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    /// Who sent the request.
    pub principal: Principal,
    /// The client's idempotency key.
    pub id: RequestId,
}

/// The remembered outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Apply sequence number: orders records for eviction.
    pub seq: u64,
    /// When it was applied (batch time).
    pub time: Timestamp,
    /// Digest of the command, to refuse a reused id carrying a different request.
    pub fingerprint: [u8; 16],
    /// The answer a retry gets.
    pub result: CommandResult,
}

/// Scalar state that is not a job or a request record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMeta {
    /// The limits in force.
    pub policy: QueuePolicy,
    /// The largest batch time applied so far; apply's notion of "now".
    pub clock: Timestamp,
    /// Number of proposals applied so far.
    pub seq: u64,
    /// Number of batches (Raft entries carrying commands) applied so far; `seq / batches`
    /// is how many commands shared one log write.
    pub batches: u64,
    /// The largest node id handed out so far (ids are never reused).
    pub last_node_id: u64,
}

/// The whole queue as one value: the snapshot format, and what the node loads from disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueImage {
    /// Scalars.
    pub meta: QueueMeta,
    /// Every job.
    pub jobs: Vec<Job>,
    /// Every remembered request.
    pub requests: Vec<(RequestKey, RequestRecord)>,
    /// Every open upload session.
    pub uploads: Vec<UploadSession>,
    /// The cluster's principals (format 9; none in older data).
    pub principals: Vec<crate::principals::PrincipalRecord>,
}

/// What an apply touched, for the node to persist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Jobs written or removed (a key absent from the table after apply was removed).
    pub jobs: BTreeSet<JobId>,
    /// Request records written or removed, likewise.
    pub requests: BTreeSet<RequestKey>,
    /// Upload sessions written or removed, likewise.
    pub uploads: BTreeSet<String>,
    /// Principals written (they are never removed).
    pub principals: BTreeSet<Principal>,
}

/// The job queue.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    meta: QueueMeta,
    /// Boxed: a B-tree node holds 11 slots and is about half full when ids arrive in
    /// order (they are time-ordered), so an inline `Job` (about 870 bytes) left some
    /// 700 bytes of empty slots per job; a box is 8.
    jobs: BTreeMap<JobId, Box<Job>>,
    requests: BTreeMap<RequestKey, RequestRecord>,
    /// Request keys by sequence number, oldest first: the eviction order.
    request_order: BTreeMap<u64, RequestKey>,
    /// Each principal's remembered requests, by sequence number.
    requests_of: HashMap<Principal, BTreeSet<u64>>,
    /// Keys of creates whose job is unfinished, by job. They stay out of the eviction
    /// order (neither age nor a principal's quota forgets them) until the job ends, so a
    /// create sent again with its key never makes a second job while the first lives.
    /// Bounded by the unfinished jobs ([`crate::limits::HARD_MAX_JOBS`]).
    pinned_requests: HashMap<JobId, RequestKey>,
    /// Final jobs by the time they became final: the removal order.
    finished: BTreeSet<(Timestamp, JobId)>,
    /// Unfinished jobs per owner, for `MaxJobsPerUser`.
    unfinished_per_owner: HashMap<Principal, u32>,
    /// Unfinished jobs in all, for `MaxJobsPerMachine`.
    unfinished: u32,
    /// Upload sessions by id.
    uploads: BTreeMap<String, UploadSession>,
    /// Files offered to peers, by content (derived from the jobs; see [`crate::peer_cache`]).
    content: BTreeMap<ContentKey, BTreeSet<(JobId, u32)>>,
    /// Fleet members' jobs, by fleet and member position (derived from the jobs).
    fleets: BTreeMap<JobId, BTreeMap<u32, JobId>>,
    /// The cluster's principals and their token digests.
    principals: crate::principals::Principals,
    changes: Changes,
    /// Events produced since the last [`Queue::take_events`], in order.
    events: Vec<JobEvent>,
}

impl Queue {
    /// An empty queue with this policy.
    pub fn new(policy: QueuePolicy) -> Self {
        Self { meta: QueueMeta { policy, ..QueueMeta::default() }, ..Self::default() }
    }

    /// Rebuilds the queue (and its derived indexes) from an image.
    pub fn from_image(image: QueueImage) -> Self {
        let mut queue = Self { meta: image.meta, ..Self::default() };
        for job in image.jobs {
            queue.reindex_peer_cache(None, Some(&job));
            queue.index_job(&job);
            queue.jobs.insert(job.id, Box::new(job));
        }
        for (key, record) in image.requests {
            queue.index_request(&key, &record);
            queue.requests.insert(key, record);
        }
        for session in image.uploads {
            queue.uploads.insert(session.id.clone(), session);
        }
        queue.principals = crate::principals::Principals::from_records(image.principals);
        queue
    }

    /// The whole queue as one value (for snapshots).
    pub fn to_image(&self) -> QueueImage {
        QueueImage {
            meta: self.meta.clone(),
            jobs: self.jobs.values().map(|job| Job::clone(job)).collect(),
            requests: self.requests.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
            uploads: self.uploads.values().cloned().collect(),
            principals: self.principals.records().cloned().collect(),
        }
    }

    /// Returns and clears what applies since the last call touched.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Returns and clears the events applies produced since the last call, in order
    /// (the node calls it after each log entry: the entry's index is their cursor).
    pub fn take_events(&mut self) -> Vec<JobEvent> {
        std::mem::take(&mut self.events)
    }

    /// Scalar state.
    pub fn meta(&self) -> &QueueMeta {
        &self.meta
    }

    /// The limits in force.
    pub fn policy(&self) -> &QueuePolicy {
        &self.meta.policy
    }

    /// A job by id, whoever owns it.
    pub fn job(&self, id: &JobId) -> Option<&Job> {
        self.jobs.get(id).map(|job| &**job)
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|job| &**job)
    }

    /// The cluster's principals.
    pub fn principals(&self) -> &crate::principals::Principals {
        &self.principals
    }

    /// A remembered request.
    pub fn request(&self, key: &RequestKey) -> Option<&RequestRecord> {
        self.requests.get(key)
    }

    /// Number of remembered requests.
    pub fn remembered_requests(&self) -> usize {
        self.requests.len()
    }

    /// `GetJob`: the job if the caller may see it, else `BG_E_NOT_FOUND` (whether or not
    /// it exists, so that users cannot learn about other users' jobs).
    pub fn visible_job(&self, caller: &Caller, id: &JobId) -> Result<&Job, CommandError> {
        self.job(id)
            .filter(|job| caller.may_access(&job.owner))
            .ok_or_else(|| CommandError::job_not_found(*id))
    }

    /// `EnumJobs`: the caller's unfinished jobs, or everyone's with `all_users`
    /// (administrators only, else `E_ACCESSDENIED`). Final-state jobs are not listed.
    pub fn list(&self, caller: &Caller, all_users: bool) -> Result<Vec<&Job>, CommandError> {
        if all_users && !caller.is_admin() {
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "only administrators may list the jobs of all users",
            ));
        }
        Ok(self
            .jobs()
            .filter(|job| !job.state.is_final())
            .filter(|job| all_users || job.owner == caller.principal)
            .collect())
    }

    /// The copies members hold under any of `keys`, each once, in job order.
    pub fn peer_copies(&self, keys: &[ContentKey]) -> Vec<PeerCopy<'_>> {
        let files: BTreeSet<&(JobId, u32)> =
            keys.iter().filter_map(|key| self.content.get(key)).flatten().collect();
        files
            .into_iter()
            .filter_map(|(id, index)| {
                let job = self.job(id)?;
                let file = job.files.get(*index as usize)?;
                Some(PeerCopy {
                    node: job.placement.home_node,
                    job: *id,
                    file: *index,
                    chunk_size: file.chunk_size,
                    chunks: &file.chunks,
                })
            })
            .collect()
    }

    /// Every copy offered of content fetched from `url` (any version), as (holder, job,
    /// file).
    pub fn url_copies(&self, url: &str) -> Vec<(NodeId, JobId, u32)> {
        let files: BTreeSet<&(JobId, u32)> = self
            .content
            .range(ContentKey::first_of(url)..)
            .take_while(|(key, _)| key.is_of_url(url))
            .flat_map(|(_, files)| files)
            .collect();
        files
            .into_iter()
            .filter_map(|(id, file)| Some((self.job(id)?.placement.home_node, *id, *file)))
            .collect()
    }

    /// Whether any member offers content under a declared digest (digest keys sort
    /// after every version key).
    pub fn offers_digests(&self) -> bool {
        self.content
            .last_key_value()
            .is_some_and(|(key, _)| matches!(key, ContentKey::Digest { .. }))
    }

    /// The derived peer cache indexes (offered files by content, fleets), to compare.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    fn peer_cache_indexes(
        &self,
    ) -> (&BTreeMap<ContentKey, BTreeSet<(JobId, u32)>>, &BTreeMap<JobId, BTreeMap<u32, JobId>>)
    {
        (&self.content, &self.fleets)
    }

    /// Every job of fleet `fleet`, by member position.
    pub fn fleet_jobs(&self, fleet: &JobId) -> Vec<&Job> {
        let Some(members) = self.fleets.get(fleet) else { return Vec::new() };
        members.values().filter_map(|id| self.job(id)).collect()
    }

    /// Moves the peer cache indexes from `old` to `new` (two versions of one job; `None`
    /// for a job that is new or gone): its fleet place, and the keys of each file whose
    /// offer may have changed. A report touches a few files of a job, so the keys of
    /// the others are not computed again ([`peer_cache::same_offer`]).
    fn reindex_peer_cache(&mut self, old: Option<&Job>, new: Option<&Job>) {
        let old_fleet = old.and_then(|job| Some((job.placement.fleet?, job.id)));
        let new_fleet = new.and_then(|job| Some((job.placement.fleet?, job.id)));
        if old_fleet != new_fleet {
            if let Some((tag, _)) = old_fleet
                && let Some(members) = self.fleets.get_mut(&tag.fleet)
            {
                members.remove(&tag.member);
                if members.is_empty() {
                    self.fleets.remove(&tag.fleet);
                }
            }
            if let Some((tag, id)) = new_fleet {
                self.fleets.entry(tag.fleet).or_default().insert(tag.member, id);
            }
        }
        let files = old.map_or(0, |job| job.files.len()).max(new.map_or(0, |job| job.files.len()));
        for index in 0..files {
            if let (Some(old), Some(new)) = (old, new)
                && peer_cache::same_offer(old, new, index)
            {
                continue;
            }
            let file = u32::try_from(index).unwrap_or(u32::MAX);
            if let Some(old) = old {
                for key in peer_cache::offered_keys(old, index) {
                    if let Some(files) = self.content.get_mut(&key) {
                        files.remove(&(old.id, file));
                        if files.is_empty() {
                            self.content.remove(&key);
                        }
                    }
                }
            }
            if let Some(new) = new {
                for key in peer_cache::offered_keys(new, index) {
                    self.content.entry(key).or_default().insert((new.id, file));
                }
            }
        }
    }

    /// Replaces job `job` in the table without the bookkeeping of [`Self::store`] (no
    /// modification time, no event), keeping the peer cache indexes right.
    fn put_quietly(&mut self, job: Job) {
        let old = self.jobs.remove(&job.id);
        self.reindex_peer_cache(old.as_deref(), Some(&job));
        self.changes.jobs.insert(job.id);
        self.jobs.insert(job.id, Box::new(job));
    }

    fn index_job(&mut self, job: &Job) {
        if job.state.is_final() {
            self.finished.insert((job.times.modified, job.id));
            self.unpin_request(job.id);
        } else {
            *self.unfinished_per_owner.entry(job.owner.clone()).or_default() += 1;
            self.unfinished += 1;
        }
    }

    fn unindex_job(&mut self, job: &Job) {
        if job.state.is_final() {
            self.finished.remove(&(job.times.modified, job.id));
        } else {
            if let Some(count) = self.unfinished_per_owner.get_mut(&job.owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.unfinished_per_owner.remove(&job.owner);
                }
            }
            self.unfinished = self.unfinished.saturating_sub(1);
        }
    }

    /// Unfinished jobs in all.
    pub fn unfinished_jobs(&self) -> u32 {
        self.unfinished
    }

    /// Unfinished jobs `owner` has.
    pub fn unfinished_jobs_of(&self, owner: &Principal) -> u32 {
        self.unfinished_per_owner.get(owner).copied().unwrap_or(0)
    }

    /// Puts `key` in the eviction order, or pins it while the job it created is
    /// unfinished.
    fn index_request(&mut self, key: &RequestKey, record: &RequestRecord) {
        if let Ok(Reply::Created(job)) = &record.result
            && self.jobs.get(job).is_some_and(|j| !j.state.is_final())
        {
            self.pinned_requests.insert(*job, key.clone());
            return;
        }
        self.request_order.insert(record.seq, key.clone());
        self.requests_of.entry(key.principal.clone()).or_default().insert(record.seq);
    }

    /// Returns the create of `job`, now final, to the eviction order at its own age.
    fn unpin_request(&mut self, job: JobId) {
        let Some(key) = self.pinned_requests.remove(&job) else { return };
        if let Some(record) = self.requests.get(&key) {
            let seq = record.seq;
            self.request_order.insert(seq, key.clone());
            self.requests_of.entry(key.principal).or_default().insert(seq);
        }
    }

    /// Remembers `record` under `key`; a principal over its quota forgets its oldest.
    fn remember(&mut self, key: RequestKey, record: RequestRecord) {
        self.index_request(&key, &record);
        self.changes.requests.insert(key.clone());
        let principal = key.principal.clone();
        self.requests.insert(key, record);
        while let Some(seq) = self
            .requests_of
            .get(&principal)
            .filter(|seqs| seqs.len() > MAX_REMEMBERED_REQUESTS_PER_PRINCIPAL)
            .and_then(|seqs| seqs.first().copied())
        {
            self.forget_request(seq);
        }
    }

    fn forget_request(&mut self, seq: u64) {
        let Some(key) = self.request_order.remove(&seq) else {
            return;
        };
        if let Some(seqs) = self.requests_of.get_mut(&key.principal) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.requests_of.remove(&key.principal);
            }
        }
        self.requests.remove(&key);
        self.changes.requests.insert(key);
    }

    /// Forgets request ids past their time or beyond the cap, and removes final jobs past
    /// their retention or beyond theirs. Deterministic: driven by the batch clock only.
    fn expire(&mut self) {
        self.expire_uploads();
        let now = self.meta.clock;
        while let Some((&seq, key)) = self.request_order.first_key_value() {
            let expired = self.requests.get(key).is_none_or(|r| now.since(r.time) > REQUEST_ID_TTL);
            if !expired && self.requests.len() <= MAX_REMEMBERED_REQUESTS {
                break;
            }
            self.forget_request(seq);
        }
        while let Some(&(finished_at, id)) = self.finished.first() {
            let expired = now.since(finished_at) > FINAL_JOB_RETENTION;
            if !expired && self.finished.len() <= MAX_RETAINED_FINAL_JOBS {
                break;
            }
            self.finished.remove(&(finished_at, id));
            if let Some(job) = self.jobs.remove(&id) {
                self.reindex_peer_cache(Some(&job), None);
            }
            self.changes.jobs.insert(id);
        }
    }
}
