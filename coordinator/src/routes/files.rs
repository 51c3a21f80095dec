//! `/v1/jobs/{id}/files`: add (single, set, with ranges), list, change one.

use axum::extract::State;
use ferry_protocol::api::{AddFiles, FileChanges, FileInfo, FileList, Liveness, Problem};
use ferry_protocol::command::Command;
use ferry_protocol::{Caller, JobId};

use super::{ApiState, read, write};
use crate::auth::Authenticated;
use crate::cluster::ReadAt;
use crate::extract::{IdempotencyKey, Json, Path, Query, job_id};
use crate::problem::ApiError;
use crate::routes::jobs::ReadQuery;

async fn file_list(
    state: &ApiState,
    caller: &Caller,
    id: JobId,
    at: ReadAt,
) -> Result<FileList, ApiError> {
    let (mut files, live) = read(state, at, |q| {
        q.visible_job(caller, &id).map(|job| {
            let files: Vec<_> =
                job.files().iter().enumerate().map(|(i, f)| FileInfo::new(i, f)).collect();
            (files, Liveness::of(job))
        })
    })
    .await??;
    // A running job's files with the bytes received so far on its home node.
    if let Some(live) = live {
        let found = state.cluster.live_progress(vec![(live.job, live.home_node)]).await;
        for (index, received) in found.iter().flat_map(|f| f.files.iter()) {
            if let (Some(file), Some(progress)) =
                (files.get_mut(*index as usize), live.file_progress(*index, *received))
            {
                file.progress = progress;
            }
        }
    }
    Ok(FileList { files })
}

/// Add files (`AddFile`, `AddFileSet`, `AddFileWithRanges`), all or nothing.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/files", tag = "files", request_body = AddFiles,
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 200, description = "The job's files after the addition", body = FileList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many files", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn add_files(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path(id): Path<String>,
    Json(body): Json<AddFiles>,
) -> Result<axum::Json<FileList>, ApiError> {
    let id = job_id(&id)?;
    let (_, index) =
        write(&state, &caller, request_id, Command::AddFiles { job: id, files: body.files })
            .await?;
    Ok(axum::Json(file_list(&state, &caller, id, ReadAt::Applied(index)).await?))
}

/// List the job's files with their progress (`EnumFiles`).
#[utoipa::path(
    get, path = "/v1/jobs/{id}/files", tag = "files",
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ReadQuery),
    responses((status = 200, body = FileList), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub(super) async fn list_files(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::Json<FileList>, ApiError> {
    Ok(axum::Json(file_list(&state, &caller, job_id(&id)?, query.consistency.into()).await?))
}

/// The file at `index` of `list`, 404 when the job has no such file.
fn nth_file(list: FileList, id: JobId, index: u32) -> Result<FileInfo, ApiError> {
    list.files.into_iter().nth(index as usize).ok_or_else(|| {
        ApiError::new(
            404,
            ferry_protocol::BitsCode::BG_E_NOT_FOUND,
            format!("job {id} has no file {index}"),
        )
    })
}

/// A file index from the path.
fn file_index(index: &str) -> Result<u32, ApiError> {
    index.parse().map_err(|_| ApiError::bad_request(format!("{index:?} is not a file index")))
}

/// One file with its progress (`IBackgroundCopyFile`: `GetRemoteName`, `GetLocalName`,
/// `GetProgress`, `GetValidationState`, ...).
#[utoipa::path(
    get, path = "/v1/jobs/{id}/files/{index}", tag = "files",
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("index" = u32, Path, description = "File index"), ReadQuery),
    responses(
        (status = 200, body = FileInfo),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no such file in it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_file(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path((id, index)): Path<(String, String)>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::Json<FileInfo>, ApiError> {
    let (id, index) = (job_id(&id)?, file_index(&index)?);
    let list = file_list(&state, &caller, id, query.consistency.into()).await?;
    Ok(axum::Json(nth_file(list, id, index)?))
}

/// Change one file: its remote name (`SetRemoteName`) and/or validation state
/// (`SetValidationState`), all or nothing.
#[utoipa::path(
    patch, path = "/v1/jobs/{id}/files/{index}", tag = "files", request_body = FileChanges,
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("index" = u32, Path, description = "File index"), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 200, body = FileInfo),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the job's state (e.g. BG_E_INVALID_STATE once it is final)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set_file(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path((id, index)): Path<(String, String)>,
    Json(changes): Json<FileChanges>,
) -> Result<axum::Json<FileInfo>, ApiError> {
    let (id, index) = (job_id(&id)?, file_index(&index)?);
    let (_, index_applied) =
        write(&state, &caller, request_id, Command::ChangeFile { job: id, index, changes }).await?;
    let list = file_list(&state, &caller, id, ReadAt::Applied(index_applied)).await?;
    Ok(axum::Json(nth_file(list, id, index)?))
}
