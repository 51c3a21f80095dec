//! `GET /v1/jobs` (`EnumJobs`): the caller's unfinished jobs, or every user's, narrowed
//! by state, priority, type and owner, a page at a time in job id order. The query
//! string is parsed here; the selection is `Queue::list_page`.

use axum::extract::State;
use ferry_protocol::JobId;
use ferry_protocol::api::{JobInfo, JobList, Liveness, Problem};
use ferry_protocol::job::{JobState, JobType, Priority};
use ferry_protocol::queue::JobQuery;
use serde::Deserialize;
use utoipa::IntoParams;

use super::jobs::{reveal_headers, with_live_progress};
use super::{ApiState, read};
use crate::auth::Authenticated;
use crate::cluster::Consistency;
use crate::extract::Query;
use crate::problem::ApiError;

/// `GET /v1/jobs` parameters. Lists are comma-separated; names are matched without
/// regard to case, so BITS's (`TRANSIENT_ERROR`, `UPLOAD_REPLY`) work too.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// List every user's jobs (administrators only).
    #[serde(default)]
    all_users: bool,
    /// Only jobs in one of these states. Final states (`acknowledged`, `cancelled`)
    /// list nothing: such jobs are never enumerated.
    #[param(value_type = Option<Vec<JobState>>, style = Form, explode = false, min_items = 1)]
    state: Option<String>,
    /// Only jobs of one of these priorities.
    #[param(value_type = Option<Vec<Priority>>, style = Form, explode = false, min_items = 1)]
    priority: Option<String>,
    /// Only jobs of one of these types.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<Vec<JobType>>, style = Form, explode = false, min_items = 1)]
    job_type: Option<String>,
    /// Only this principal's jobs: any principal for administrators; a user may name
    /// only itself (403 otherwise).
    #[param(min_length = 1)]
    owner: Option<String>,
    /// Most jobs in the answer, 1 to 1000. Absent: every matching job (the queue holds
    /// at most 100,000 unfinished jobs), so older clients that do not page still see
    /// everything.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (send the same filters with it): the
    /// page starts after that job id.
    #[param(format = Uuid)]
    cursor: Option<String>,
    /// `linearizable` (default) or `local`.
    #[serde(default)]
    #[param(inline)]
    consistency: Consistency,
}

impl ListQuery {
    /// The selection the query asks for.
    fn to_query(&self) -> Result<JobQuery, ApiError> {
        if self.owner.as_deref() == Some("") {
            return Err(ApiError::bad_request("owner names a principal"));
        }
        let after = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<JobId>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "cursor {c:?} is not one this API gave (a job id)"
                    ))
                })
            })
            .transpose()?;
        Ok(JobQuery {
            all_users: self.all_users,
            owner: self.owner.clone(),
            states: names("state", self.state.as_deref(), &JobState::ALL, |s| s.bits_name())?,
            priorities: names("priority", self.priority.as_deref(), &Priority::ALL, |p| {
                p.bits_name()
            })?,
            types: names("type", self.job_type.as_deref(), &JobType::ALL, |t| t.bits_name())?,
            limit: self.limit.map(|l| l as usize),
            after,
        })
    }
}

/// The values a comma-separated `list` names, each one of `all` by its BITS name (any
/// case, `-` for `_`). An empty item or an unknown name is a 400 that lists the names.
fn names<T: Copy>(
    param: &str,
    list: Option<&str>,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<Vec<T>, ApiError> {
    let Some(list) = list else { return Ok(Vec::new()) };
    list.split(',')
        .map(|item| {
            let wanted = item.trim().replace('-', "_");
            all.iter().copied().find(|v| name(*v).eq_ignore_ascii_case(&wanted)).ok_or_else(|| {
                let known: Vec<String> =
                    all.iter().map(|v| name(*v).to_ascii_lowercase()).collect();
                ApiError::bad_request(format!(
                    "{param}={item:?} is not one of {} (comma-separated, any case)",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

/// Enumerate jobs (`EnumJobs`): the caller's, or everyone's with `all_users=true` or
/// another `owner` (administrators), narrowed by `state`, `priority` and `type`, in job
/// id order. With `limit`, a page: `next_cursor` in the answer, sent back as `cursor`,
/// gives the next one. Jobs in a final state are not listed.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses(
        (status = 200, body = JobList),
        (status = 400, description = "A filter, limit or cursor that is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "all_users, or another owner, without the admin role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_jobs(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<JobList>, ApiError> {
    let selection = query.to_query()?;
    let (jobs, next) = read(&state, query.consistency.into(), |q| {
        q.list_page(&caller, &selection).map(|page| {
            let jobs = page
                .jobs
                .into_iter()
                .map(|job| (JobInfo::from(job), Liveness::of(job)))
                .collect::<Vec<_>>();
            (jobs, page.next)
        })
    })
    .await??;
    let jobs = with_live_progress(&state, jobs).await;
    let jobs = jobs.into_iter().map(|info| reveal_headers(&state, info)).collect();
    Ok(axum::Json(JobList { jobs, next_cursor: next.map(|id| id.to_string()) }))
}
