//! `/v1/jobs/{id}/credentials`: `SetCredentials` and `RemoveCredentials`. The password
//! is sealed here, before it is proposed, and never comes back out of the API.

use axum::extract::State;
use ferry_protocol::BitsCode;
use ferry_protocol::api::Problem;
use ferry_protocol::command::Command;
use ferry_protocol::credentials::{
    AuthScheme, AuthTarget, CredentialInfo, NewCredentials, SealedCredential,
};

use super::{ApiState, read, write};
use crate::auth::Authenticated;
use crate::cluster::ReadAt;
use crate::extract::{IdempotencyKey, Json, Path, job_id};
use crate::problem::ApiError;

/// Which credentials the job has now (targets and schemes only).
async fn credential_list(
    state: &ApiState,
    caller: &ferry_protocol::Caller,
    id: ferry_protocol::JobId,
    index: u64,
) -> Result<Vec<CredentialInfo>, ApiError> {
    Ok(read(state, ReadAt::Applied(index), |q| {
        q.visible_job(caller, &id).map(|job| {
            job.credentials()
                .iter()
                .map(|c| CredentialInfo { target: c.target, scheme: c.scheme })
                .collect()
        })
    })
    .await??)
}

/// `SetCredentials`: add or replace the credential for (target, scheme).
#[utoipa::path(
    put, path = "/v1/jobs/{id}/credentials", tag = "jobs", request_body = NewCredentials,
    params(("id" = ferry_protocol::JobId, Path, description = "Job id"), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 200, description = "The job's credentials (targets and schemes; never secrets)", body = Vec<CredentialInfo>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the job's state (e.g. BG_E_INVALID_STATE once it is final)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set_credentials(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<axum::Json<Vec<CredentialInfo>>, ApiError> {
    let id = job_id(&id)?;
    let body = new_credentials(body)?;
    body.validate()?;
    let credential = seal(&state, id, &body)?;
    let (_, index) =
        write(&state, &caller, request_id, Command::SetCredentials { job: id, credential }).await?;
    Ok(axum::Json(credential_list(&state, &caller, id, index).await?))
}

/// The body of `SetCredentials`: an unknown target or scheme is refused with BITS's
/// own codes (`BG_E_INVALID_AUTH_TARGET`, `BG_E_INVALID_AUTH_SCHEME`), anything else
/// that does not fit with `E_INVALIDARG`.
fn new_credentials(body: serde_json::Value) -> Result<NewCredentials, ApiError> {
    let field = |name: &str| body.get(name).and_then(serde_json::Value::as_str);
    if let Some(Err(e)) = field("target").map(str::parse::<AuthTarget>) {
        return Err(ApiError::new(400, BitsCode::BG_E_INVALID_AUTH_TARGET, e));
    }
    if let Some(Err(e)) = field("scheme").map(str::parse::<AuthScheme>) {
        return Err(ApiError::new(400, BitsCode::BG_E_INVALID_AUTH_SCHEME, e));
    }
    if field("user_name").is_none() && field("password").is_none() {
        return Err(ferry_protocol::credentials::implicit_credentials().into());
    }
    serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the credentials do not fit: {e}")))
}

/// `credential` with its password sealed for job `job` (bound to the job, target,
/// scheme and user).
pub(super) fn seal(
    state: &ApiState,
    job: ferry_protocol::JobId,
    credential: &NewCredentials,
) -> Result<SealedCredential, ApiError> {
    let NewCredentials { target, scheme, user_name, password } = credential;
    let associated = SealedCredential::associated_data(job, *target, *scheme, user_name);
    let sealed = state.secrets.seal(password.expose().as_bytes(), &associated).map_err(|e| {
        ApiError::new(500, BitsCode::E_UNEXPECTED, format!("cannot seal the password: {e}"))
    })?;
    Ok(SealedCredential { target: *target, scheme: *scheme, user_name: user_name.clone(), sealed })
}

/// `RemoveCredentials`.
#[utoipa::path(
    delete, path = "/v1/jobs/{id}/credentials/{target}/{scheme}", tag = "jobs",
    params(
        ("id" = ferry_protocol::JobId, Path, description = "Job id"),
        ("target" = AuthTarget, Path, description = "server or proxy"),
        ("scheme" = AuthScheme, Path, description = "basic, digest, ntlm, negotiate or passport"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id"),
    ),
    responses(
        (status = 200, description = "The job's remaining credentials", body = Vec<CredentialInfo>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not allowed in the job's state (e.g. BG_E_INVALID_STATE once it is final)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn remove_credentials(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path((id, target, scheme)): Path<(String, String, String)>,
) -> Result<axum::Json<Vec<CredentialInfo>>, ApiError> {
    let id = job_id(&id)?;
    let target: AuthTarget = target
        .parse()
        .map_err(|e: String| ApiError::new(400, BitsCode::BG_E_INVALID_AUTH_TARGET, e))?;
    let scheme: AuthScheme = scheme
        .parse()
        .map_err(|e: String| ApiError::new(400, BitsCode::BG_E_INVALID_AUTH_SCHEME, e))?;
    let (_, index) =
        write(&state, &caller, request_id, Command::RemoveCredentials { job: id, target, scheme })
            .await?;
    Ok(axum::Json(credential_list(&state, &caller, id, index).await?))
}
