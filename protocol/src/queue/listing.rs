//! `EnumJobs` with filters and pages (`GET /v1/jobs?state=&priority=&type=&owner=&limit=
//! &cursor=`): which unfinished jobs a caller may list, narrowed by state, priority,
//! type and owner, a page at a time in job id order. Parsing the query string is the
//! API's business; this is the pure selection over the queue.

use std::ops::Bound;

use super::Queue;
use crate::codes::BitsCode;
use crate::command::CommandError;
use crate::ids::{Caller, JobId};
use crate::job::{Job, JobState, JobType, Priority};

/// Most jobs one page may hold.
pub const MAX_PAGE: usize = 1000;

/// Which jobs to list, and which page of them. The default lists the caller's own
/// unfinished jobs, all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobQuery {
    /// Every user's jobs (administrators only).
    pub all_users: bool,
    /// Only the jobs of the principal of this name: any for administrators (a name no
    /// principal has lists nothing), the caller itself for users.
    pub owner: Option<String>,
    /// Only jobs in one of these states (empty: any). Final states list nothing: jobs
    /// in them are never enumerated.
    pub states: Vec<JobState>,
    /// Only jobs of one of these priorities (empty: any).
    pub priorities: Vec<Priority>,
    /// Only jobs of one of these types (empty: any).
    pub types: Vec<JobType>,
    /// Most jobs in the page, 1 to [`MAX_PAGE`]; `None`: every matching job (bounded by
    /// the queue's own limit on unfinished jobs).
    pub limit: Option<usize>,
    /// List jobs after this id only (the previous page's `next_cursor`).
    pub after: Option<JobId>,
}

/// One page of a listing.
#[derive(Debug, PartialEq, Eq)]
pub struct JobPage<'a> {
    /// The jobs, in id order.
    pub jobs: Vec<&'a Job>,
    /// Where the next page starts (the last listed id), when more jobs match.
    pub next: Option<JobId>,
}

impl JobQuery {
    /// True if `job` is one the query selects, before paging (ownership aside).
    fn selects(&self, job: &Job) -> bool {
        !job.state.is_final()
            && (self.states.is_empty() || self.states.contains(&job.state))
            && (self.priorities.is_empty() || self.priorities.contains(&job.props.priority))
            && (self.types.is_empty() || self.types.contains(&job.job_type))
    }
}

impl Queue {
    /// `EnumJobs` narrowed by `query`: a page of the unfinished jobs the caller may list.
    /// `E_ACCESSDENIED` when a user asks for every user's jobs or another principal's;
    /// `E_INVALIDARG` for a limit outside 1 to [`MAX_PAGE`].
    pub fn list_page(
        &self,
        caller: &Caller,
        query: &JobQuery,
    ) -> Result<JobPage<'_>, CommandError> {
        if query.all_users && !caller.is_admin() {
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "only administrators may list the jobs of all users",
            ));
        }
        if let Some(owner) = &query.owner
            && !caller.is_admin()
            && owner != caller.principal.as_str()
        {
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "only administrators may list another principal's jobs",
            ));
        }
        if query.limit.is_some_and(|l| !(1..=MAX_PAGE).contains(&l)) {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                format!("limit is 1 to {MAX_PAGE} jobs"),
            ));
        }
        let owner = match (&query.owner, query.all_users) {
            (Some(owner), _) => Some(owner.as_str()),
            (None, true) => None,
            (None, false) => Some(caller.principal.as_str()),
        };
        let start = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = self
            .jobs
            .range((start, Bound::Unbounded))
            .map(|(_, job)| &**job)
            .filter(|job| owner.is_none_or(|o| job.owner.as_str() == o))
            .filter(|job| query.selects(job));
        let limit = query.limit.unwrap_or(usize::MAX);
        let jobs: Vec<&Job> = matching.by_ref().take(limit).collect();
        let next = match (jobs.last(), matching.next()) {
            (Some(last), Some(_)) => Some(last.id),
            _ => None,
        };
        Ok(JobPage { jobs, next })
    }
}
