//! Applying commands to the queue: ownership, BITS state rules, limits, and the
//! recent-request table.

use std::sync::Arc;

use super::{Queue, RequestKey, RequestRecord, events};
use crate::codec;
use crate::codes::{BitsCode, ErrorContext};
use crate::command::{
    Batch, BatchReply, Command, CommandError, CommandResult, FileChanges, JobAction, NewJob,
    PropertyChanges, Proposal, Reply,
};
use crate::credentials::SealedCredential;
use crate::file::{JobFile, NewFile};
use crate::ids::{Caller, JobId, NodeId};
use crate::job::{Job, JobError, JobState, Placement, peer_caching};
use crate::limits::{HARD_MAX_JOBS, MAX_JOB_BYTES};
use crate::peer_cache::{FLEET_NODE_PLACEHOLDER, FleetMember};
use crate::state::{JobFacts, Operation, transition};
use crate::validate;

impl Queue {
    /// Applies one Raft entry's batch. Deterministic: the same queue and batch give the
    /// same queue and replies on every node.
    pub fn apply_batch(&mut self, batch: &Batch) -> BatchReply {
        self.meta.clock = self.meta.clock.max(batch.time);
        self.meta.batches += 1;
        let results = batch.proposals.iter().map(|p| self.apply_proposal(p)).collect();
        self.expire();
        BatchReply(results)
    }

    fn apply_proposal(&mut self, proposal: &Proposal) -> CommandResult {
        self.meta.seq += 1;
        let Some(id) = &proposal.request_id else {
            return self.execute(&proposal.caller, &proposal.command);
        };
        let key = RequestKey { principal: proposal.caller.principal.clone(), id: id.clone() };
        let fingerprint = fingerprint(&proposal.command);
        if let Some(record) = self.requests.get(&key) {
            if record.fingerprint != fingerprint {
                return Err(CommandError::new(
                    BitsCode::E_INVALIDARG,
                    format!(
                        "request id {id} was already used for a different request; use a new id"
                    ),
                ));
            }
            return record.result.clone();
        }
        let result = self.execute(&proposal.caller, &proposal.command);
        let record = RequestRecord {
            seq: self.meta.seq,
            time: self.meta.clock,
            fingerprint,
            result: result.clone(),
        };
        self.remember(key, record);
        result
    }

    fn execute(&mut self, caller: &Caller, command: &Command) -> CommandResult {
        validate::command_input(command)?;
        match command {
            Command::CreateJob { id, home_node, spec } => {
                self.create_job(caller, *id, *home_node, spec, None)
            }
            Command::CreateFleet { fleet, members, spec, credentials } => {
                self.create_fleet(caller, *fleet, members, spec, credentials)
            }
            Command::WithdrawPeerCopy { job, file, mismatch } => {
                self.withdraw_peer_copy(caller, *job, *file, *mismatch)
            }
            Command::AddFiles { job, files } => self.add_files(caller, *job, files),
            Command::SetProperties { job, changes } => self.set_properties(caller, *job, changes),
            Command::ChangeFile { job, index, changes } => {
                self.change_file(caller, *job, *index, changes)
            }
            Command::Lifecycle { job, action } => self.lifecycle(caller, *job, *action),
            Command::SetPolicy(policy) => {
                if !caller.is_admin() {
                    return Err(CommandError::new(
                        BitsCode::E_ACCESSDENIED,
                        "only administrators may change the queue policy",
                    ));
                }
                self.meta.policy = *policy;
                Ok(Reply::Done(BitsCode::S_OK))
            }
            Command::Upload(upload) => self.upload(caller, upload),
            Command::AllocateNodeId { at_least } => {
                if caller.principal != crate::ids::Principal::system() {
                    return Err(CommandError::new(
                        BitsCode::E_ACCESSDENIED,
                        "node ids are handed out by the nodes themselves",
                    ));
                }
                // Above the founder's even when the admitting node does not know its
                // members yet (a join answered just after the cluster was founded).
                let id = self
                    .meta
                    .last_node_id
                    .max(*at_least)
                    .max(crate::ids::FIRST_NODE_ID)
                    .saturating_add(1);
                self.meta.last_node_id = id;
                Ok(Reply::NodeId(id))
            }
            Command::Engine { job, run, reports } => {
                self.engine_reports(caller, *job, *run, reports)
            }
            Command::ReplaceRemotePrefix(replace) => self.replace_remote_prefix(caller, replace),
            Command::Principals(command) => {
                let (result, changed) = self.principals.apply(caller, command, self.meta.clock);
                self.changes.principals.extend(changed);
                result
            }
            Command::SetCredentials { job, credential } => {
                let mut job = self.accessible(caller, *job)?.clone();
                check(&job, Operation::SetProperties, None)?;
                set_credential(&mut job, credential.clone());
                fits(&job)?;
                self.store(job);
                Ok(Reply::Done(BitsCode::S_OK))
            }
            Command::RemoveCredentials { job, target, scheme } => {
                let mut job = self.accessible(caller, *job)?.clone();
                check(&job, Operation::SetProperties, None)?;
                job.credentials.retain(|c| (c.target, c.scheme) != (*target, *scheme));
                self.store(job);
                Ok(Reply::Done(BitsCode::S_OK))
            }
        }
    }

    /// `ReplaceRemotePrefix`: `S_OK` when some file changed, `S_FALSE` when no file
    /// that is not transferred yet starts with the old prefix.
    fn replace_remote_prefix(
        &mut self,
        caller: &Caller,
        replace: &crate::command::ReplacePrefix,
    ) -> CommandResult {
        let mut job = self.accessible(caller, replace.job)?.clone();
        if job.job_type != crate::job::JobType::Download {
            return Err(CommandError::new(
                BitsCode::E_NOTIMPL,
                "ReplaceRemotePrefix applies to download jobs only",
            ));
        }
        check(&job, Operation::SetRemoteName, None)?;
        let change = &replace.change;
        let renamed: Vec<(u32, String)> = (job.files.iter().enumerate())
            .filter(|(_, f)| !f.transferred)
            .filter_map(|(i, f)| {
                let rest = f.remote_url.strip_prefix(change.old_prefix.as_str())?;
                Some((u32::try_from(i).ok()?, format!("{}{rest}", change.new_prefix)))
            })
            .collect();
        if renamed.is_empty() {
            return Ok(Reply::Done(BitsCode::S_FALSE));
        }
        for (index, url) in &renamed {
            // The result is what counts: a prefix may complete a scheme ("fi" + "le:...").
            if url.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("file:")) {
                return Err(CommandError::new(
                    BitsCode::E_INVALIDARG,
                    format!(
                        "file {index} would become the local file {url}; use SetRemoteName for local sources"
                    ),
                ));
            }
            set_remote_name(&mut job, *index, url)?;
        }
        fits(&job)?;
        self.store(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }

    /// Whether `caller` may `Complete` job `id` now, without changing anything: the
    /// API asks before the home node renames the job's files (the write that follows
    /// checks again).
    pub fn may_complete(&self, caller: &Caller, id: JobId) -> Result<&Job, CommandError> {
        let job = self.accessible(caller, id)?;
        check(job, Operation::Complete, None)?;
        Ok(job)
    }

    /// The job if the caller may act on it; `BG_E_NOT_FOUND` otherwise.
    fn accessible(&self, caller: &Caller, id: JobId) -> Result<&Job, CommandError> {
        self.visible_job(caller, &id)
    }

    /// Replaces a job after a successful change, keeping the indexes, the change set
    /// and the job's state clocks (state entry, active time, completion) true.
    pub(super) fn store(&mut self, mut job: Job) {
        let now = self.meta.clock;
        job.times.modified = now;
        if !matches!(job.state, JobState::Error | JobState::TransientError) {
            job.error = None;
        }
        let old_state = self.jobs.get(&job.id).map(|old| old.state);
        if old_state != Some(job.state) {
            job.activity.state_since = now;
            let active = |s: Option<JobState>| {
                matches!(s, Some(JobState::Connecting | JobState::Transferring))
            };
            if active(old_state) && !active(Some(job.state)) {
                job.activity.active_ms = job.active_ms_at(now);
                job.activity.active_since = None;
            } else if !active(old_state) && active(Some(job.state)) {
                job.activity.active_since = Some(now);
            }
            if job.state == JobState::Transferred {
                job.times.transfer_completed = Some(now);
            }
        }
        let old = self.jobs.remove(&job.id);
        self.events.extend(events::derive(old.as_deref(), &mut job, now));
        if let Some(old) = &old {
            self.unindex_job(old);
        }
        self.reindex_peer_cache(old.as_deref(), Some(&job));
        self.index_job(&job);
        self.changes.jobs.insert(job.id);
        self.jobs.insert(job.id, Box::new(job));
    }

    fn create_job(
        &mut self,
        caller: &Caller,
        id: JobId,
        home_node: NodeId,
        spec: &NewJob,
        member: Option<(FleetMember, &[SealedCredential])>,
    ) -> CommandResult {
        if self.jobs.contains_key(&id) {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                format!("job id {id} is already in use"),
            ));
        }
        if self.unfinished >= HARD_MAX_JOBS {
            return Err(CommandError::new(
                BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE,
                format!(
                    "the cluster already holds {HARD_MAX_JOBS} unfinished jobs, its hard limit"
                ),
            ));
        }
        if !caller.is_admin() {
            let policy = self.meta.policy;
            if self.unfinished_jobs_of(&caller.principal) >= policy.max_jobs_per_user {
                return Err(CommandError::new(
                    BitsCode::BG_E_TOO_MANY_JOBS_PER_USER,
                    format!(
                        "{} already has {} unfinished jobs",
                        caller.principal, policy.max_jobs_per_user
                    ),
                ));
            }
            if self.unfinished >= policy.max_jobs {
                return Err(CommandError::new(
                    BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE,
                    format!("the cluster already holds {} unfinished jobs", policy.max_jobs),
                ));
            }
        }
        let now = self.meta.clock;
        let placement = Placement { home_node, fleet: member.map(|(tag, _)| tag) };
        let mut job = Job::new(id, caller.principal.clone(), spec, placement, now);
        job.props = self.changed_properties(caller, &job, &spec.properties)?;
        if !spec.files.is_empty() {
            self.append_files(caller, &mut job, &spec.files)?;
        }
        if let Some((_, credentials)) = member {
            for credential in credentials {
                set_credential(&mut job, credential.clone());
            }
        }
        fleet_rules(&job)?;
        fits(&job)?;
        self.store(job);
        Ok(Reply::Created(id))
    }

    /// Creates and resumes one job per member. Every check that could refuse a later
    /// member (ids in use, job quotas) is made before the first is created, and the
    /// members share one spec, so either all are created or none is.
    fn create_fleet(
        &mut self,
        caller: &Caller,
        fleet: JobId,
        members: &[(JobId, NodeId)],
        spec: &NewJob,
        credentials: &[Vec<SealedCredential>],
    ) -> CommandResult {
        let n = u32::try_from(members.len()).unwrap_or(u32::MAX);
        if let Some((id, _)) = members.iter().find(|(id, _)| self.jobs.contains_key(id)) {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                format!("job id {id} is already in use"),
            ));
        }
        if !self.fleet_jobs(&fleet).is_empty() {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                format!("fleet id {fleet} is already in use"),
            ));
        }
        let policy = self.meta.policy;
        let over_user = !caller.is_admin()
            && self.unfinished_jobs_of(&caller.principal) + n > policy.max_jobs_per_user;
        let over_machine = self.unfinished + n > HARD_MAX_JOBS
            || (!caller.is_admin() && self.unfinished + n > policy.max_jobs);
        if over_user || over_machine {
            return Err(CommandError::new(
                if over_user {
                    BitsCode::BG_E_TOO_MANY_JOBS_PER_USER
                } else {
                    BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE
                },
                format!("a fleet of {n} jobs does not fit in the job quotas"),
            ));
        }
        let mut spec = spec.clone();
        let template = spec.files.first().map(|f| f.local_path.clone()).unwrap_or_default();
        for (member, (id, node)) in (0..n).zip(members) {
            let tag = FleetMember { fleet, member, members: n };
            if let Some(file) = spec.files.first_mut() {
                file.local_path = template.replace(FLEET_NODE_PLACEHOLDER, &node.to_string());
            }
            let own = credentials.get(member as usize).map_or(&[][..], Vec::as_slice);
            self.create_job(caller, *id, *node, &spec, Some((tag, own)))?;
            self.lifecycle(caller, *id, JobAction::Resume)?;
        }
        Ok(Reply::Created(fleet))
    }

    fn withdraw_peer_copy(
        &mut self,
        caller: &Caller,
        id: JobId,
        file: u32,
        mismatch: Option<(u32, [u8; 32])>,
    ) -> CommandResult {
        if caller.principal != crate::ids::Principal::system() {
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "peer copies are withdrawn by the nodes themselves",
            ));
        }
        let mut job = self.job(&id).cloned().ok_or_else(|| CommandError::job_not_found(id))?;
        let entry = file_mut(&mut job, file)?;
        let judged = mismatch.is_none_or(|(index, digest)| {
            entry.chunks.iter().any(|c| c.index == index && c.digest == digest)
        });
        if !judged {
            // The copy changed since the receiver read its records: not the one judged.
            return Ok(Reply::Done(BitsCode::S_FALSE));
        }
        entry.withdrawn = true;
        // Not a change of the job the owner sees: no `store`, no event.
        self.put_quietly(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }

    fn add_files(&mut self, caller: &Caller, id: JobId, files: &[NewFile]) -> CommandResult {
        let mut job = self.accessible(caller, id)?.clone();
        self.append_files(caller, &mut job, files)?;
        fleet_rules(&job)?;
        fits(&job)?;
        self.store(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }

    fn append_files(
        &self,
        caller: &Caller,
        job: &mut Job,
        files: &[NewFile],
    ) -> Result<(), CommandError> {
        check(job, Operation::AddFiles, None)?;
        if job.job_type.is_upload() && job.files.len() + files.len() > 1 {
            return Err(CommandError::new(
                BitsCode::BG_E_TOO_MANY_FILES,
                "an upload job holds exactly one file",
            ));
        }
        let policy = self.meta.policy;
        if !caller.is_admin() && job.files.len() + files.len() > policy.max_files_per_job as usize {
            return Err(CommandError::new(
                BitsCode::BG_E_TOO_MANY_FILES_IN_JOB,
                format!(
                    "the job would hold {} files; the policy allows {} per job",
                    job.files.len() + files.len(),
                    policy.max_files_per_job
                ),
            ));
        }
        let max_ranges = (!caller.is_admin()).then_some(policy.max_ranges_per_file);
        for file in files {
            validate::new_file(file, job.job_type, job.props.whole_streams(), max_ranges)?;
        }
        // Exactly: a first push would make room for 4 files (about 350 bytes each), and
        // most jobs have one; a queue of 30,000 such jobs held 31 MB of empty room.
        job.files.reserve_exact(files.len());
        for file in files {
            let index = job.files.len();
            job.files.push(Arc::new(JobFile::new(job.id, index, file.clone())));
        }
        Ok(())
    }

    fn set_properties(
        &mut self,
        caller: &Caller,
        id: JobId,
        changes: &PropertyChanges,
    ) -> CommandResult {
        let mut job = self.accessible(caller, id)?.clone();
        check(&job, Operation::SetProperties, None)?;
        if changes.is_empty() {
            return Ok(Reply::Done(BitsCode::S_OK));
        }
        let props = self.changed_properties(caller, &job, changes)?;
        if props.max_bandwidth != job.props.max_bandwidth
            && matches!(job.state, JobState::Connecting | JobState::Transferring)
        {
            // A new cap applies at once: the home node starts a new run under it
            // (durable chunks stay), and the old run's late reports are stale.
            job.activity.run += 1;
        }
        job.props = props;
        fleet_rules(&job)?;
        fits(&job)?;
        self.store(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }

    fn change_file(
        &mut self,
        caller: &Caller,
        id: JobId,
        index: u32,
        changes: &FileChanges,
    ) -> CommandResult {
        let mut job = self.accessible(caller, id)?.clone();
        file_mut(&mut job, index)?;
        if let Some(url) = &changes.remote_url {
            set_remote_name(&mut job, index, url)?;
        }
        if let Some(valid) = changes.valid {
            set_validation_state(&mut job, index, valid)?;
        }
        fits(&job)?;
        self.store(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }

    fn lifecycle(&mut self, caller: &Caller, id: JobId, action: JobAction) -> CommandResult {
        let mut job = self.accessible(caller, id)?.clone();
        let op = match action {
            JobAction::Resume => Operation::Resume,
            JobAction::Suspend => Operation::Suspend,
            JobAction::Cancel => Operation::Cancel,
            JobAction::Complete => Operation::Complete,
            JobAction::TakeOwnership => Operation::TakeOwnership,
        };
        let outcome = check(&job, op, None)?;
        match action {
            JobAction::Resume => {
                job.ever_resumed = true;
                if matches!(job.state, JobState::Error | JobState::TransientError) {
                    job.activity.no_progress_since = None;
                }
            }
            JobAction::TakeOwnership => {
                if !caller.is_admin() {
                    return Err(CommandError::new(
                        BitsCode::E_ACCESSDENIED,
                        "only administrators may take ownership of a job",
                    ));
                }
                // BITS strips what belonged to the previous owner.
                job.owner = caller.principal.clone();
                // The command line is the previous owner's code: neither it nor a run it
                // is owed may run under the new owner.
                job.props.notify_cmdline = None;
                job.notify.run = None;
                job.props.custom_headers.clear();
                job.props.custom_headers_write_only = false;
                job.credentials.clear();
                job.props.client_certificate = None;
            }
            // Complete's renames happen on the home node, which marks the files completed.
            JobAction::Suspend | JobAction::Cancel | JobAction::Complete => {}
        }
        let unchanged = outcome.next == job.state && action == JobAction::Resume;
        job.state = outcome.next;
        if !unchanged {
            self.store(job);
        }
        Ok(Reply::Done(outcome.code))
    }
}

/// `SetRemoteName` on file `index` (known to exist).
fn set_remote_name(job: &mut Job, index: u32, url: &str) -> Result<(), CommandError> {
    check(job, Operation::SetRemoteName, None)?;
    let job_type = job.job_type;
    let file = file_mut(job, index)?;
    if file.transferred {
        return Err(CommandError::new(
            BitsCode::BG_E_INVALID_STATE,
            format!("file {index} is already transferred; its remote name can no longer change"),
        ));
    }
    validate::remote_url(url, job_type)?;
    if file.remote_url != url {
        // Bytes of two remote files must never be combined: start this file over.
        file.remote_url = url.to_owned();
        file.restart();
        // A transferring job gets a new run: a late report of the old one (its probe,
        // its chunks, all of the old URL) is refused as stale, never counted against
        // the new URL, and the home node starts the new run at once.
        if matches!(job.state, JobState::Connecting | JobState::Transferring) {
            job.activity.run += 1;
        }
    }
    Ok(())
}

/// `SetValidationState` on file `index` (known to exist). `true` lets the file be
/// offered to peers (with `SERVE_VALIDATED_ONLY`). `false` resets the file's progress:
/// bytes that came from peers are evicted and fetched again from the origin alone (the
/// job is queued again, as BITS does); bytes from the origin put the job in ERROR with
/// `BG_E_VALIDATION_FAILED`.
fn set_validation_state(job: &mut Job, index: u32, valid: bool) -> Result<(), CommandError> {
    let op = if valid { Operation::ValidateFile } else { Operation::InvalidateFile };
    let transferred = file_mut(job, index)?.transferred;
    let outcome = check(job, op, Some(transferred))?;
    let file = file_mut(job, index)?;
    file.validated = valid;
    if !valid && file.bytes_from_peers > 0 {
        file.restart();
        // Withdrawn: not offered, and its next download takes nothing from peers.
        file.withdrawn = true;
        if job.state == JobState::Transferred {
            job.state = JobState::Queued;
        }
    } else if !valid {
        file.restart();
        job.state = outcome.next;
        job.error_count = job.error_count.saturating_add(1);
        job.error = Some(JobError {
            context: ErrorContext::RemoteFile,
            code: BitsCode::BG_E_VALIDATION_FAILED,
            detail: format!("the owner marked the content of file {index} as not valid"),
            file_index: Some(index),
            protocol: None,
        });
    }
    Ok(())
}

/// Asks the state machine about `op` for `job`.
pub(super) fn check(
    job: &Job,
    op: Operation,
    target_file_transferred: Option<bool>,
) -> Result<crate::state::Outcome, CommandError> {
    let facts = JobFacts {
        job_type: job.job_type,
        files: job.files.len(),
        pending_files: job.pending_files(),
        target_file_transferred: target_file_transferred.unwrap_or(false),
        retries_allowed: JobFacts::retries_allowed(
            job.props.no_progress_timeout_secs,
            job.props.minimum_retry_delay_secs,
        ),
    };
    transition(job.state, op, facts).map_err(|code| {
        let detail = match code {
            BitsCode::BG_E_EMPTY => {
                format!("job {} has no files; add files before resuming it", job.id)
            }
            BitsCode::BG_E_TOO_MANY_FILES => "an upload job holds exactly one file".to_owned(),
            BitsCode::E_PENDING => "the file is not transferred yet".to_owned(),
            _ => format!("{op:?} is not allowed while job {} is {}", job.id, job.state.bits_name()),
        };
        CommandError::new(code, detail)
    })
}

/// Refuses a job that would no longer fit in a stored row (whoever owns it: the policy's
/// count limits exempt administrators, this does not).
fn fits(job: &Job) -> Result<(), CommandError> {
    let too_big = |len: usize| {
        CommandError::new(
            BitsCode::E_INVALIDARG,
            format!(
                "the job would take {len} bytes; a job holds at most {MAX_JOB_BYTES} bytes (use fewer files or ranges, or several jobs)"
            ),
        )
    };
    match codec::encode(job) {
        Ok(bytes) if bytes.len() <= MAX_JOB_BYTES => Ok(()),
        Ok(bytes) => Err(too_big(bytes.len())),
        Err(codec::CodecError::TooLarge { len, .. }) => Err(too_big(len)),
        Err(e) => Err(CommandError::new(
            BitsCode::E_UNEXPECTED,
            format!("the job cannot be encoded: {e}"),
        )),
    }
}

/// Adds or replaces the credential for its (target, scheme).
fn set_credential(job: &mut Job, credential: SealedCredential) {
    job.credentials.retain(|c| (c.target, c.scheme) != (credential.target, credential.scheme));
    job.credentials.push(credential);
    job.credentials.sort_by_key(|c| (c.target, c.scheme));
}

/// What a fleet's member job must stay: one whole file, peer caching flags client and
/// server (members serve each other), no dynamic content.
fn fleet_rules(job: &Job) -> Result<(), CommandError> {
    if job.placement.fleet.is_none() {
        return Ok(());
    }
    let both = peer_caching::CLIENT | peer_caching::SERVER;
    let broken = if job.props.peer_caching_flags & both != both {
        "a fleet job keeps peer caching flags 3 (client and server): its members serve each other"
    } else if job.props.whole_streams() {
        "a fleet job cannot download dynamic content or use an HTTP method of its own"
    } else if job.files.len() != 1 || job.files.iter().any(|f| !f.ranges.is_empty()) {
        "a fleet job downloads exactly one whole file"
    } else {
        return Ok(());
    };
    Err(CommandError::new(BitsCode::E_INVALIDARG, broken))
}

pub(super) fn file_mut(job: &mut Job, index: u32) -> Result<&mut JobFile, CommandError> {
    let count = job.files.len();
    job.files.get_mut(index as usize).map(Arc::make_mut).ok_or_else(|| {
        CommandError::new(
            BitsCode::E_INVALIDARG,
            format!("file index {index} is out of range; the job has {count} files"),
        )
    })
}

/// Digest of what a request asks for. The ids (and a job's home node) of a create are
/// chosen by the node that accepted the request, so a retry through another node
/// differs there: they are left out, and so are the sealed passwords of a fleet's
/// credentials (sealed for those ids; their targets, schemes and users count).
fn fingerprint(command: &Command) -> [u8; 16] {
    let encoded = match command {
        Command::CreateJob { spec, .. } => codec::encode(spec),
        Command::CreateFleet { members, spec, credentials, .. } => {
            let nodes: Vec<u64> = members.iter().map(|(_, node)| *node).collect();
            let logins: Vec<_> = (credentials.first().into_iter().flatten())
                .map(|c| (c.target, c.scheme, &c.user_name))
                .collect();
            codec::encode(&(spec, nodes, logins))
        }
        other => codec::encode(other),
    };
    let digest = blake3::hash(&encoded.unwrap_or_default());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_bytes()[..16]);
    out
}
