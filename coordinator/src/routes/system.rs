//! Error descriptions, cluster status, health.

use axum::extract::State;
use axum::http::StatusCode;
use ferry_protocol::BitsCode;
use ferry_protocol::api::{ClusterStatus, ErrorDescription, Health, Problem};

use super::ApiState;
use crate::auth::Authenticated;
use crate::extract::Path;
use crate::problem::ApiError;

/// Describe a BITS code (`GetErrorDescription`): hex (`0x80200001`) or name.
#[utoipa::path(
    get, path = "/v1/errors/{code}", tag = "system",
    params(("code" = String, Path, description = "Code in hex (`0x80200001`, `80200001`); a symbolic name such as `BG_E_NOT_FOUND` is accepted too", pattern = "^(0[xX])?[0-9a-fA-F]{1,8}$")),
    responses((status = 200, body = ErrorDescription), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub(super) async fn describe_error(
    Authenticated(_caller): Authenticated,
    Path(code): Path<String>,
) -> Result<axum::Json<ErrorDescription>, ApiError> {
    let parsed: BitsCode = code.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{code:?} is not a code: give hex such as 0x80200001 or a name"
        ))
    })?;
    ErrorDescription::of(parsed).map(axum::Json).ok_or_else(|| {
        ApiError::new(404, BitsCode::E_INVALIDARG, format!("no description is known for {parsed}"))
    })
}

/// Leader, term, members, indexes and the queue policy.
#[utoipa::path(
    get, path = "/v1/cluster", tag = "system",
    responses((status = 200, body = ClusterStatus), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub(super) async fn cluster_status(
    State(state): State<ApiState>,
    Authenticated(_caller): Authenticated,
) -> Result<axum::Json<ClusterStatus>, ApiError> {
    Ok(axum::Json(state.cluster.status().await?))
}

/// Remove a node from the cluster (administrators). Removal goes through joint
/// consensus; the last voter cannot leave.
#[utoipa::path(
    delete, path = "/v1/cluster/members/{node}", tag = "system",
    params(("node" = u64, Path, description = "Node id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused, e.g. the last voter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn remove_member(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(node): Path<u64>,
) -> Result<StatusCode, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::new(
            403,
            BitsCode::E_ACCESSDENIED,
            "only administrators may remove members",
        ));
    }
    state.cluster.remove_member(node).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Liveness and readiness: 200 when Raft runs and a leader is known, 503 otherwise. No
/// token needed.
#[utoipa::path(
    get, path = "/healthz", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
pub(super) async fn health(State(state): State<ApiState>) -> (StatusCode, axum::Json<Health>) {
    let node_id = state.cluster.node_id();
    match state.cluster.status().await {
        Ok(status) if status.leader.is_some() && status.role != "shutdown" => (
            StatusCode::OK,
            axum::Json(Health { status: "ok".into(), node_id, leader: status.leader }),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health { status: "degraded".into(), node_id, leader: None }),
        ),
    }
}

/// Every metric of the node in the Prometheus text format (administrators): jobs, Raft,
/// proposals, storage, transfers, the event bus and the API itself. See
/// `docs/operations.md` for the families.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn metrics(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Result<([(axum::http::header::HeaderName, &'static str); 1], String), ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::new(
            403,
            BitsCode::E_ACCESSDENIED,
            "only administrators may read the metrics",
        ));
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.cluster.metrics(),
    ))
}
