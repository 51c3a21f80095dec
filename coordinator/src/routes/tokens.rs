//! The cluster's principals: create, list and revoke API tokens (administrators). A
//! token is shown once, in the answer to its creation; the replicated state keeps only
//! its digest.

use axum::extract::State;
use axum::http::StatusCode;
use ferry_protocol::api::Problem;
use ferry_protocol::command::Command;
use ferry_protocol::principals::{
    CreatedToken, NewToken, PrincipalCommand, TokenInfo, TokenList, digest,
};
use ferry_protocol::{BitsCode, Caller, Principal};

use super::{ApiState, read, write};
use crate::auth::Authenticated;
use crate::cluster::ReadAt;
use crate::extract::{IdempotencyKey, Json, Path};
use crate::problem::ApiError;

/// The format of principals' commands.
const PRINCIPALS_FORMAT: u8 = ferry_protocol::principals::FORMAT;

/// Shortest token a client may choose.
const MIN_CHOSEN_TOKEN: usize = 32;

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(ApiError::new(403, BitsCode::E_ACCESSDENIED, "only administrators may manage tokens"))
}

fn principal(name: &str) -> Result<Principal, ApiError> {
    Principal::new(name).map_err(|e| ApiError::bad_request(format!("principal {name:?}: {e}")))
}

fn new_token() -> Result<String, ApiError> {
    crate::auth::generate_token().map_err(|e| {
        ApiError::new(500, BitsCode::E_UNEXPECTED, format!("no randomness for a token: {e}"))
    })
}

/// Create a token for a principal of the cluster (administrators). Every member accepts
/// it at once; the answer is the only place it is shown.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "system", request_body = NewToken,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "A live token exists for the name, or bad input", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_token(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    admin_only(&caller)?;
    let name = principal(&new.name)?;
    let token = match new.token {
        Some(token) if token.len() < MIN_CHOSEN_TOKEN || token.chars().any(char::is_whitespace) => {
            return Err(ApiError::bad_request(format!(
                "a chosen token has at least {MIN_CHOSEN_TOKEN} characters and no white space"
            )));
        }
        Some(token) => token,
        None if request_id.is_some() => {
            // A retry would make another token that the first answer never showed.
            return Err(ApiError::bad_request(
                "with an Idempotency-Key, send the token too (a retry must create the same one)",
            ));
        }
        None => new_token()?,
    };
    if state.auth.caller(&token).is_some_and(|c| c.principal != name) {
        return Err(ApiError::bad_request("that token is already in use: choose another"));
    }
    let command = Command::Principals(PrincipalCommand::Create {
        name: name.clone(),
        role: new.role,
        roots: new.roots,
        digest: digest(&token),
    });
    // Members still on format 8 could not read the entry: wait for the upgrade.
    state.cluster.check_format(PRINCIPALS_FORMAT).await?;
    write(&state, &caller, request_id, command).await?;
    let created = CreatedToken { name: new.name, role: new.role, token };
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// List the cluster's principals, revoked ones included (administrators); never their
/// tokens.
#[utoipa::path(
    get, path = "/v1/tokens", tag = "system",
    responses((status = 200, body = TokenList), (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub(super) async fn list_tokens(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Result<axum::Json<TokenList>, ApiError> {
    admin_only(&caller)?;
    let tokens = read(&state, ReadAt::Linearizable, |queue| {
        queue.principals().records().map(TokenInfo::from).collect()
    })
    .await?;
    Ok(axum::Json(TokenList { tokens }))
}

/// Revoke a principal's token on every member (administrators): requests with it are
/// refused, and its open event streams end, within a second. Its jobs stay.
#[utoipa::path(
    delete, path = "/v1/tokens/{name}", tag = "system",
    params(
        ("name" = String, Path, description = "Principal", min_length = 1),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No live token of that name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin_only(&caller)?;
    // A name no principal can have has no live token either.
    let name = Principal::new(&name).map_err(|_| {
        ApiError::new(404, BitsCode::BG_E_NOT_FOUND, format!("no principal is named {name:?}"))
    })?;
    let command = Command::Principals(PrincipalCommand::Revoke { name });
    state.cluster.check_format(PRINCIPALS_FORMAT).await?;
    write(&state, &caller, request_id, command).await?;
    Ok(StatusCode::NO_CONTENT)
}
