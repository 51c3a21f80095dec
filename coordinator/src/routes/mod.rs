//! The HTTP API router (DESIGN §7) and its OpenAPI document.

// utoipa's `path`/`IntoParams` expansions qualify paths that are already in scope.
#![allow(unused_qualifications)]

mod contract;
mod credentials;
mod events;
mod files;
mod fleets;
mod job_list;
mod jobs;
mod node;
mod system;
mod tokens;

use std::sync::Arc;

use ferry_protocol::command::{Command, Proposal, Reply};
use ferry_protocol::{BitsCode, Caller, Queue, RequestId};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::cluster::{Cluster, ReadAt};
use crate::problem::ApiError;
use crate::roots::LocalRoots;
use crate::secrets::SecretKey;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    /// The node's view of the replicated queue.
    pub cluster: Arc<dyn Cluster>,
    /// Token table.
    pub auth: Arc<Auth>,
    /// Seals passwords before they are proposed.
    pub secrets: Arc<SecretKey>,
    /// Where each principal may name local files.
    pub roots: Arc<LocalRoots>,
    /// The notify programs users may name (`[notify] allowed_programs`).
    pub notify: Arc<crate::notify_policy::NotifyPolicy>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry", description = "BITS as a cluster: jobs, files, errors, cluster status."),
    modifiers(&BearerAuth),
    // Named only by query parameters (`kinds` of /v1/events), which do not register it.
    components(schemas(ferry_protocol::event::EventKind)),
    tags(
        (name = "jobs", description = "BITS jobs: create, enumerate, properties, state changes"),
        (name = "files", description = "The files of a job"),
        (name = "events", description = "Job events: replay from a cursor, then live"),
        (name = "system", description = "Error descriptions, cluster status, health"),
        (name = "node", description = "Settings of the node that answers (its bandwidth policy)")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn api_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::create_job, job_list::list_jobs))
        .routes(routes!(jobs::get_job, jobs::set_properties))
        .routes(routes!(jobs::resume))
        .routes(routes!(jobs::suspend))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::complete))
        .routes(routes!(jobs::take_ownership))
        .routes(routes!(jobs::replace_remote_prefix))
        .routes(routes!(jobs::get_error))
        .routes(routes!(jobs::get_reply))
        .routes(routes!(fleets::create_fleet))
        .routes(routes!(fleets::get_fleet))
        .routes(routes!(credentials::set_credentials))
        .routes(routes!(credentials::remove_credentials))
        .routes(routes!(files::add_files, files::list_files))
        .routes(routes!(files::get_file, files::set_file))
        .routes(routes!(system::describe_error))
        .routes(routes!(system::cluster_status))
        .routes(routes!(system::remove_member))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(node::get_bandwidth, node::set_bandwidth))
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(events::events))
        .routes(routes!(events::cluster_ca))
}

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    contract::complete(api_router().split_for_parts().1)
}

/// Bounds of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, bytes. (Request slots, connection caps and read timeouts
    /// belong to the server that carries requests to this router: ferryd's API server.)
    pub max_body_bytes: usize,
}

/// The API router, with `GET /v1/openapi.json` serving [`openapi`].
pub fn router(state: ApiState, limits: Limits) -> axum::Router {
    let (router, doc) = api_router().split_for_parts();
    let doc = Arc::new(contract::complete(doc));
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(crate::console::router())
        .fallback(|| async { ApiError::new(404, BitsCode::E_INVALIDARG, "no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(405, BitsCode::E_INVALIDARG, "this route does not take that HTTP method")
        })
        .layer(axum::middleware::map_response(crate::problem::as_problem))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

/// Proposes `command` and returns its reply and the log index it was applied at.
async fn write(
    state: &ApiState,
    caller: &Caller,
    request_id: Option<RequestId>,
    command: Command,
) -> Result<(Reply, u64), ApiError> {
    // Input that is wrong whatever the state costs no log entry.
    ferry_protocol::validate::command_input(&command)?;
    state.roots.check(caller, &command)?;
    crate::notify_policy::check(&state.notify, caller, &command)?;
    if let Some(format) = newer_format(&command) {
        // Members still on an older format would apply it differently: wait for them.
        state.cluster.check_format(format).await?;
    }
    let written =
        state.cluster.write(Proposal { request_id, caller: caller.clone(), command }).await?;
    Ok((written.result?, written.index))
}

/// The format a command needs every member to read, when it is newer than what every
/// supported build reads: what its encoding needs (`ReplaceRemotePrefix`, format 10;
/// HTTP methods, job bandwidth caps and expected digests, format 11), and the
/// `SERVE_VALIDATED_ONLY` peer caching flag, which older builds apply differently
/// (format 10).
fn newer_format(command: &Command) -> Option<u8> {
    use ferry_protocol::codec::version_of;
    use ferry_protocol::command::REPLACE_PREFIX_FORMAT;
    use ferry_protocol::job::peer_caching::SERVE_VALIDATED_ONLY;
    // Formats up to 9 are read by every build a cluster may still run.
    let encoded = version_of(command).ok().filter(|v| *v >= REPLACE_PREFIX_FORMAT);
    let flags = match command {
        Command::CreateJob { spec, .. } | Command::CreateFleet { spec, .. } => {
            spec.properties.peer_caching_flags
        }
        Command::SetProperties { changes, .. } => changes.peer_caching_flags,
        _ => None,
    };
    let by_rule = flags.filter(|f| f & SERVE_VALIDATED_ONLY != 0).map(|_| REPLACE_PREFIX_FORMAT);
    encoded.max(by_rule)
}

/// Reads from the queue once a read at `at` may start.
async fn read<T>(state: &ApiState, at: ReadAt, f: impl FnOnce(&Queue) -> T) -> Result<T, ApiError> {
    state.cluster.read_barrier(at).await?;
    let mut f = Some(f);
    let mut out = None;
    state.cluster.with_queue(&mut |queue| {
        if let Some(f) = f.take() {
            out = Some(f(queue));
        }
    });
    out.ok_or_else(|| ApiError::new(500, BitsCode::E_UNEXPECTED, "the queue could not be read"))
}
