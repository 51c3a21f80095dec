//! `/v1/fleets`: one file brought to several nodes (`ferry fleet distribute`), each
//! chunk fetched from the origin about once and spread between the members.

use axum::extract::State;
use axum::http::{StatusCode, header};
use ferry_protocol::api::{FleetInfo, NewFleet, Problem};
use ferry_protocol::command::{Command, NewJob, Reply};
use ferry_protocol::credentials::NewCredentials;
use ferry_protocol::peer_cache::{MAX_FLEET_CREDENTIALS, MAX_FLEET_MEMBERS};
use ferry_protocol::{BitsCode, JobId, JobType, NewFile};

use super::credentials::seal;
use super::jobs::{ReadQuery, seal_headers};
use super::{ApiState, read, write};
use crate::auth::Authenticated;
use crate::cluster::ReadAt;
use crate::extract::{IdempotencyKey, Json, Path, Query, job_id};
use crate::problem::ApiError;

/// Distribute a file: one download job per member node (that node is its home), created
/// and resumed together. Every chunk is fetched from the origin by one member and taken
/// from it by the others. Without `nodes`, every member of the cluster gets the file.
#[utoipa::path(
    post, path = "/v1/fleets", tag = "jobs", request_body = NewFleet,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe request id")),
    responses(
        (status = 201, description = "Created and resumed", body = FleetInfo),
        (status = 400, description = "Invalid fleet", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A limit was reached", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn create_fleet(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    IdempotencyKey(request_id): IdempotencyKey,
    Json(fleet): Json<NewFleet>,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], axum::Json<FleetInfo>), ApiError> {
    let NewFleet {
        remote_url,
        local_path,
        sha256,
        nodes,
        display_name,
        mut properties,
        credentials,
    } = fleet;
    seal_headers(&state, &caller, &mut properties)?;
    check_credentials(&credentials)?;
    let members: Vec<u64> =
        state.cluster.status().await?.members.iter().map(|m| m.node_id).collect();
    let nodes = if nodes.is_empty() { members.clone() } else { nodes };
    if let Some(stranger) = nodes.iter().find(|n| !members.contains(n)) {
        return Err(ApiError::bad_request(format!(
            "node {stranger} is not a member of the cluster (members: {members:?})"
        )));
    }
    // Checked before anything is sealed per member.
    let distinct: std::collections::BTreeSet<_> = nodes.iter().collect();
    if distinct.len() != nodes.len() || nodes.len() > MAX_FLEET_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "a fleet reaches 1 to {MAX_FLEET_MEMBERS} distinct nodes"
        )));
    }
    let sealed_bytes: usize =
        credentials.iter().map(|c| c.password.expose().len() + c.user_name.len() + 64).sum();
    if sealed_bytes.saturating_mul(nodes.len()) > MAX_FLEET_CREDENTIAL_BYTES {
        return Err(ApiError::bad_request(format!(
            "the credentials are too large for a fleet of {} nodes",
            nodes.len()
        )));
    }
    let spec = NewJob {
        display_name: display_name.unwrap_or_else(|| "fleet".into()),
        job_type: JobType::Download,
        properties,
        files: vec![NewFile { remote_url, local_path, ranges: Vec::new(), sha256 }],
    };
    let members: Vec<(JobId, u64)> =
        nodes.into_iter().map(|node| (JobId::generate(), node)).collect();
    let credentials = if credentials.is_empty() {
        Vec::new()
    } else {
        members
            .iter()
            .map(|(job, _)| credentials.iter().map(|c| seal(&state, *job, c)).collect())
            .collect::<Result<_, _>>()?
    };
    let command = Command::CreateFleet { fleet: JobId::generate(), members, spec, credentials };
    let (reply, index) = write(&state, &caller, request_id, command).await?;
    let Reply::Created(id) = reply else {
        return Err(ApiError::new(500, BitsCode::E_UNEXPECTED, "create returned no fleet id"));
    };
    let info = fleet_info(&state, &caller, id, ReadAt::Applied(index)).await?;
    Ok((StatusCode::CREATED, [(header::LOCATION, format!("/v1/fleets/{id}"))], axum::Json(info)))
}

/// Most bytes of credentials a fleet request seals, over its members.
const MAX_FLEET_CREDENTIAL_BYTES: usize = 4 * 1024 * 1024;

/// BITS's checks of each credential, at most one per target and scheme.
fn check_credentials(credentials: &[NewCredentials]) -> Result<(), ApiError> {
    let pairs: std::collections::BTreeSet<_> =
        credentials.iter().map(|c| (c.target, c.scheme)).collect();
    if pairs.len() != credentials.len() || credentials.len() > MAX_FLEET_CREDENTIALS {
        return Err(ApiError::bad_request(format!(
            "a fleet takes at most {MAX_FLEET_CREDENTIALS} credentials, one per target and scheme"
        )));
    }
    for credential in credentials {
        credential.validate()?;
    }
    Ok(())
}

/// A fleet and each member's progress.
#[utoipa::path(
    get, path = "/v1/fleets/{id}", tag = "jobs",
    params(("id" = ferry_protocol::JobId, Path, description = "Fleet id"), ReadQuery),
    responses(
        (status = 200, body = FleetInfo),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_fleet(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<axum::Json<FleetInfo>, ApiError> {
    Ok(axum::Json(fleet_info(&state, &caller, job_id(&id)?, query.consistency.into()).await?))
}

/// The fleet's jobs `caller` may see; none is `BG_E_NOT_FOUND`.
async fn fleet_info(
    state: &ApiState,
    caller: &ferry_protocol::Caller,
    id: JobId,
    at: ReadAt,
) -> Result<FleetInfo, ApiError> {
    let info = read(state, at, |q| {
        let jobs: Vec<_> =
            q.fleet_jobs(&id).into_iter().filter(|j| caller.may_access(j.owner())).collect();
        (!jobs.is_empty()).then(|| FleetInfo::new(id, &jobs))
    })
    .await?;
    info.ok_or_else(|| {
        ApiError::new(404, BitsCode::BG_E_NOT_FOUND, format!("no fleet {id} is visible to you"))
    })
}
