//! Settings of the node that answers, not of the cluster: its bandwidth policy for
//! background transfers. A change made here lasts until the node restarts (its
//! configuration file is the durable source) and touches no other member.

use axum::extract::State;
use ferry_protocol::BitsCode;
use ferry_protocol::api::Problem;

use super::ApiState;
use crate::auth::Authenticated;
use crate::bandwidth::{BandwidthPolicy, BandwidthStatus};
use crate::extract::Json;
use crate::problem::ApiError;

/// This node's bandwidth policy for background transfers, where it comes from, and
/// the rate it allows now.
#[utoipa::path(
    get, path = "/v1/node/bandwidth", tag = "node",
    responses(
        (status = 200, body = BandwidthStatus),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_bandwidth(
    State(state): State<ApiState>,
    Authenticated(_caller): Authenticated,
) -> axum::Json<BandwidthStatus> {
    axum::Json(state.cluster.bandwidth())
}

/// Replace this node's bandwidth policy (administrators). It applies at once, to
/// transfers in progress too, and lasts until the node restarts: put it in the
/// node's `[bandwidth]` configuration to keep it. Other nodes keep theirs.
#[utoipa::path(
    put, path = "/v1/node/bandwidth", tag = "node", request_body = BandwidthPolicy,
    responses(
        (status = 200, description = "In force", body = BandwidthStatus),
        (status = 400, description = "A rate, day or time the node cannot use", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn set_bandwidth(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Json(policy): Json<BandwidthPolicy>,
) -> Result<axum::Json<BandwidthStatus>, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::new(
            403,
            BitsCode::E_ACCESSDENIED,
            "only administrators may change a node's bandwidth policy",
        ));
    }
    let status = state
        .cluster
        .set_bandwidth(policy)
        .map_err(|e| ApiError::bad_request(format!("bandwidth policy: {e}")))?;
    tracing::info!(principal = %caller.principal, rate = status.current_rate, "bandwidth policy changed through the API");
    Ok(axum::Json(status))
}
