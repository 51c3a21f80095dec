//! `/v1/jobs`: create, read, set properties, state changes, error.

use axum::extract::State;
use axum::http::{StatusCode, header};
use ferry_protocol::api::{ActionResult, ErrorInfo, JobInfo, Liveness, PrefixReplaced, Problem};
use ferry_protocol::command::{
    Command, JobAction, NewJob, PrefixChange, PropertyChanges, ReplacePrefix, Reply,
};
use ferry_protocol::queue::RequestKey;
use ferry_protocol::{BitsCode, JobId};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiState, read, write};
use crate::auth::Authenticated;
use crate::cluster::{Consistency, FilesOutcome, ReadAt};
use crate::extract::{IdempotencyKey, Json, Path, Query, job_id};
use crate::problem::ApiError;

/// `?consistency=` on reads.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReadQuery {
    /// `linearizable` (default) or `local`.
    #[serde(default)]
    #[param(inline)]
    pub(super) consistency: Consistency,
}

/// The job as `caller` may see it, read at `at`.
pub(super) async fn job_info(
    state: &ApiState,
    caller: &ferry_protocol::Caller,
    id: JobId,
    at: ReadAt,
) -> Result<JobInfo, ApiError> {
    let info = read(state, at, |q| {
        q.visible_job(caller, &id).map(|job| (JobInfo::from(job), Liveness::of(job)))
    })
    .await?
    .map_err(ApiError::from)?;
    let info = with_live_progress(state, vec![info]).await.pop();
    let info = info.ok_or_else(|| ApiError::new(500, BitsCode::E_UNEXPECTED, "no job view"))?;
    Ok(reveal_headers(state, info))
}

/// The views with the bytes their running jobs received so far on their home nodes
/// (durable or not), asked of those nodes without any write.
pub(super) async fn with_live_progress(
    state: &ApiState,
    views: Vec<(JobInfo, Option<Liveness>)>,
) -> Vec<JobInfo> {
    let asked: Vec<_> =
        views.iter().filter_map(|(_, live)| live.as_ref().map(|l| (l.job, l.home_node))).collect();
    if asked.is_empty() {
        return views.into_iter().map(|(info, _)| info).collect();
    }
    let found = state.cluster.live_progress(asked).await;
    views
        .into_iter()
        .map(|(mut info, live)| {
            let received = found.iter().find(|f| f.job == info.id);
            if let (Some(live), Some(received)) = (live, received) {
                info.progress.bytes_transferred = live.bytes_transferred(received);
            }
            info
        })
        .collect()
}

/// Opens sealed custom header values for the response (write-only headers are not
/// in it at all). A value that cannot be opened is shown as `<sealed>`.
pub(super) fn reveal_headers(state: &ApiState, mut info: JobInfo) -> JobInfo {
    let lines = &mut info.properties.custom_headers;
    if lines.is_empty() {
        return info;
    }
    let opened = state.secrets.open_headers(&info.owner, lines).unwrap_or_else(|_| {
        lines
            .iter()
            .map(|l| format!("{}: <sealed>", l.split_once(':').map_or(l.as_str(), |(n, _)| n)))
            .collect()
    });
    *lines = opened.into();
    info
}

/// Seals custom header values before they are proposed (G9): the Raft log and the
/// state hold them encrypted, whether or not they are write-only.
pub(super) fn seal_headers(
    state: &ApiState,
    caller: &ferry_protocol::Caller,
    changes: &mut PropertyChanges,
) -> Result<(), ApiError> {
    if let Some(Some(lines)) = &mut changes.custom_headers {
        ferry_protocol::validate::custom_headers(lines)?;
        let sealed = state.secrets.seal_headers(&caller.principal, lines).map_err(|e| {
            ApiError::new(
                500,
                BitsCode::E_UNEXPECTED,
                format!("cannot seal the custom headers: {e}"),
            )
        })?;
        *lines = sealed.into();
    }
    Ok(())
}

/// Create a job (`CreateJob`), optionally with properties and files. Jobs start SUSPENDED.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", request_body = NewJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 201, description = "Created", body = JobInfo),
        (status = 400, description = "Invalid job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A limit was reached", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_job(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Json(mut spec): Json<NewJob>,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], axum::Json<JobInfo>), ApiError> {
    seal_headers(&state, &caller, &mut spec.properties)?;
    let command =
        Command::CreateJob { id: JobId::generate(), home_node: state.cluster.node_id(), spec };
    let (reply, index) = write(&state, &caller, request_id, command).await?;
    let Reply::Created(id) = reply else {
        return Err(ApiError::new(500, BitsCode::E_UNEXPECTED, "create returned no job id"));
    };
    let info = job_info(&state, &caller, id, ReadAt::Applied(index)).await?;
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/v1/jobs/{id}"))], axum::Json(info)))
}

/// Read a job (`GetJob`).
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ReadQuery),
    responses(
        (status = 200, body = JobInfo),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_job(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::Json<JobInfo>, ApiError> {
    Ok(axum::Json(job_info(&state, &caller, job_id(&id)?, query.consistency.into()).await?))
}

/// Set properties, all or nothing.
#[utoipa::path(
    patch, path = "/v1/jobs/{id}", tag = "jobs", request_body = PropertyChanges,
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 200, body = JobInfo),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the job's state (e.g. BG_E_INVALID_STATE once it is final)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set_properties(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path(id): Path<String>,
    Json(mut changes): Json<PropertyChanges>,
) -> Result<axum::Json<JobInfo>, ApiError> {
    let id = job_id(&id)?;
    seal_headers(&state, &caller, &mut changes)?;
    let (_, index) =
        write(&state, &caller, request_id, Command::SetProperties { job: id, changes }).await?;
    Ok(axum::Json(job_info(&state, &caller, id, ReadAt::Applied(index)).await?))
}

async fn act(
    state: ApiState,
    caller: ferry_protocol::Caller,
    request_id: Option<ferry_protocol::RequestId>,
    id: &str,
    action: JobAction,
) -> Result<axum::Json<ActionResult>, ApiError> {
    let id = job_id(id)?;
    if action == JobAction::Complete {
        place_files(&state, &caller, request_id.as_ref(), id).await?;
    }
    let (reply, index) =
        write(&state, &caller, request_id, Command::Lifecycle { job: id, action }).await?;
    let mut code = success_code(reply);
    if matches!(action, JobAction::Complete | JobAction::Cancel) {
        code = files_finished(&state, id, index, code).await;
    }
    // After take-ownership the caller is the owner; after cancel/complete the job is
    // still readable by id until its retention ends.
    let job = job_info(&state, &caller, id, ReadAt::Applied(index)).await?;
    Ok(axum::Json(ActionResult {
        action,
        code,
        code_name: code.name().unwrap_or_default().into_owned(),
        job,
    }))
}

/// The success code of a command's reply (`S_OK` unless it says otherwise).
fn success_code(reply: Reply) -> BitsCode {
    match reply {
        Reply::Done(code) => code,
        Reply::Created(_) | Reply::NodeId(_) | Reply::Fragment(_) => BitsCode::S_OK,
    }
}

/// Complete's first step: the home node renames the job's files into place while the
/// job is still TRANSFERRED, so that it is acknowledged only once every rename
/// succeeded; a failure leaves the job as it was and is the answer (409, with the
/// code BITS gives, e.g. `E_ACCESSDENIED`). A retry of a Complete that was applied
/// already (same `Idempotency-Key`) goes straight to the write, which answers it.
async fn place_files(
    state: &ApiState,
    caller: &ferry_protocol::Caller,
    request_id: Option<&ferry_protocol::RequestId>,
    id: ferry_protocol::JobId,
) -> Result<(), ApiError> {
    let answered_before = read(state, ReadAt::Linearizable, |q| {
        let answered = request_id.is_some_and(|r| {
            let key = RequestKey { principal: caller.principal.clone(), id: r.clone() };
            q.request(&key).is_some()
        });
        if answered {
            return Ok(true);
        }
        q.may_complete(caller, id).map(|_| false)
    })
    .await??;
    if answered_before {
        return Ok(());
    }
    match state.cluster.place_files(id).await? {
        FilesOutcome::Done => Ok(()),
        FilesOutcome::Failed(e) => Err(ApiError::new(409, e.code, e.detail)),
    }
}

/// Waits (bounded) until the home node has renamed the files of a completed job into
/// place, or deleted those of a cancelled one, so that the files are as BITS leaves
/// them when the call returns. `BG_S_UNABLE_TO_DELETE_FILES` (the job is final all
/// the same) when a temporary file could not be deleted, or the home node did not
/// answer in time (it deletes them when it can).
async fn files_finished(
    state: &ApiState,
    id: ferry_protocol::JobId,
    index: u64,
    code: BitsCode,
) -> BitsCode {
    match state.cluster.finished_files(id, index).await {
        Ok(FilesOutcome::Done) => code,
        Ok(FilesOutcome::Failed(e)) => {
            tracing::warn!(job = %id, detail = %e.detail, "the job's temporary files were not all deleted");
            BitsCode::BG_S_UNABLE_TO_DELETE_FILES
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "the home node has not finished the job's files");
            BitsCode::BG_S_UNABLE_TO_DELETE_FILES
        }
    }
}

macro_rules! action_route {
    ($name:ident, $path:literal, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $path, tag = "jobs",
            params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
            responses(
                (status = 200, body = ActionResult),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "Not allowed in the job's state", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = []))
        )]
        pub(super) async fn $name(
            State(state): State<ApiState>,
            Authenticated(caller): Authenticated,
            IdempotencyKey(request_id): IdempotencyKey,
            Path(id): Path<String>,
        ) -> Result<axum::Json<ActionResult>, ApiError> {
            act(state, caller, request_id, &id, $action).await
        }
    };
}

action_route!(
    resume,
    "/v1/jobs/{id}/resume",
    JobAction::Resume,
    "`Resume`: queue the job (needs at least one file)."
);
action_route!(
    suspend,
    "/v1/jobs/{id}/suspend",
    JobAction::Suspend,
    "`Suspend`: stop transferring."
);
action_route!(
    cancel,
    "/v1/jobs/{id}/cancel",
    JobAction::Cancel,
    "`Cancel`: stop and delete temporary files."
);
action_route!(
    complete,
    "/v1/jobs/{id}/complete",
    JobAction::Complete,
    "`Complete`: make transferred files visible; `BG_S_PARTIAL_COMPLETE` if some were not."
);
/// `ReplaceRemotePrefix`: every file not transferred yet whose remote name starts with
/// `old_prefix` gets `new_prefix` instead, and starts over (the server moved). `S_OK`
/// when a file changed, `S_FALSE` when none matched. Refused (503) until every member
/// of the cluster reads format 10 (a rolling upgrade).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/replace-remote-prefix", tag = "jobs", request_body = PrefixChange,
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 200, body = PrefixReplaced),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the job's state", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A member does not read format 10 yet", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replace_remote_prefix(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path(id): Path<String>,
    Json(change): Json<PrefixChange>,
) -> Result<axum::Json<PrefixReplaced>, ApiError> {
    let id = job_id(&id)?;
    let command = Command::ReplaceRemotePrefix(ReplacePrefix { job: id, change });
    let (reply, index) = write(&state, &caller, request_id, command).await?;
    let code = success_code(reply);
    let job = job_info(&state, &caller, id, ReadAt::Applied(index)).await?;
    Ok(axum::Json(PrefixReplaced {
        code,
        code_name: code.name().unwrap_or_default().into_owned(),
        job,
    }))
}

action_route!(
    take_ownership,
    "/v1/jobs/{id}/take-ownership",
    JobAction::TakeOwnership,
    "`TakeOwnership` (administrators): strips credentials, custom headers and notify command line."
);

/// The job's error (`GetError`), while it is in ERROR or TRANSIENT_ERROR.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/error", tag = "jobs",
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ReadQuery),
    responses(
        (status = 200, body = ErrorInfo),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "BG_E_ERROR_INFORMATION_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_error(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::Json<ErrorInfo>, ApiError> {
    let info = job_info(&state, &caller, job_id(&id)?, query.consistency.into()).await?;
    info.error.map(axum::Json).ok_or_else(|| {
        ApiError::new(
            409,
            BitsCode::BG_E_ERROR_INFORMATION_UNAVAILABLE,
            format!("job {} is {} and has no error", info.id, info.state.bits_name()),
        )
    })
}

/// The reply of an upload-reply job (`GetReplyData`): its bytes, up to 1 MiB (a longer
/// reply is read from the reply file), once every byte of it arrived.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/reply", tag = "jobs",
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ReadQuery),
    responses(
        (status = 200, description = "The reply's bytes", content_type = "application/octet-stream"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not an upload-reply job, or its reply is not (or no longer) there", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "BG_E_TOO_LARGE: the reply is over 1 MiB", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_reply(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    use ferry_protocol::job::MAX_REPLY_DATA;
    let id = job_id(&id)?;
    let job = read(&state, query.consistency.into(), |q| q.visible_job(&caller, &id).cloned())
        .await?
        .map_err(ApiError::from)?;
    let invalid = |why: String| ApiError::new(409, BitsCode::BG_E_INVALID_STATE, why);
    if job.job_type() != ferry_protocol::JobType::UploadReply {
        return Err(invalid(format!("job {id} is not an upload-reply job")));
    }
    if job.state() == ferry_protocol::JobState::Cancelled {
        return Err(invalid(format!("job {id} was cancelled: its reply is deleted")));
    }
    if !job.upload().reply_done {
        return Err(invalid(format!("job {id} has not received its reply yet")));
    }
    let bytes = state.cluster.reply_data(id).await?;
    if bytes.len() as u64 > MAX_REPLY_DATA {
        return Err(ApiError::new(
            413,
            BitsCode::BG_E_TOO_LARGE,
            format!(
                "the reply is over {MAX_REPLY_DATA} bytes; read it from {}",
                job.reply_path().unwrap_or_default()
            ),
        ));
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
