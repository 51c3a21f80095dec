//! `GET /v1/events`: the job event stream as Server-Sent Events (the same stream the
//! QUIC bus serves), and `GET /v1/cluster/ca`, which bus clients verify nodes against.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use ferry_protocol::JobId;
use ferry_protocol::api::{JobInfo, JobProgressReport, Liveness, ProgressReports};
use ferry_protocol::event::{Cursor, Delivery, EventFilter, EventKind, StartAt};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use crate::auth::Authenticated;
use crate::cluster::SubscribeError;
use crate::extract::Query;
use crate::problem::ApiError;

/// Which events, from where.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// `now` (the default), or a cursor `INDEX[.SUB]` to replay from (inclusive); `0`
    /// replays all the history the node holds. A `Last-Event-ID` header resumes after
    /// that event instead.
    #[param(pattern = "^(now|[0-9]+(\\.[0-9]+)?)$")]
    from: Option<String>,
    /// Comma-separated job ids (default: every job the caller may see).
    #[param(value_type = Option<Vec<JobId>>, style = Form, explode = false)]
    job: Option<String>,
    /// Comma-separated kinds, e.g. `JobTransferred,JobError` (default: all).
    #[param(value_type = Option<Vec<EventKind>>, style = Form, explode = false)]
    kinds: Option<String>,
    /// Every user's jobs (administrators only).
    #[serde(default)]
    all_users: bool,
    /// With `job`: also an `event: progress` every this many milliseconds (250 to
    /// 60,000) with each named job's state and bytes so far, received bytes not yet
    /// durable included (not replayed, no id).
    #[param(minimum = 250, maximum = 60_000)]
    progress: Option<u64>,
}

impl EventsQuery {
    fn parse(&self, headers: &HeaderMap) -> Result<(EventFilter, StartAt), ApiError> {
        let list = |text: &Option<String>| -> Vec<String> {
            text.iter()
                .flat_map(|t| t.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let jobs = list(&self.job)
            .iter()
            .map(|j| j.parse::<JobId>().map_err(|_| format!("{j:?} is not a job id")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let kinds = list(&self.kinds)
            .iter()
            .map(|k| k.parse::<EventKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let last_seen = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        let from = match (last_seen, self.from.as_deref()) {
            (Some(id), _) => {
                StartAt::Cursor(id.parse::<Cursor>().map_err(ApiError::bad_request)?.next())
            }
            (None, from) => from.unwrap_or("now").parse().map_err(ApiError::bad_request)?,
        };
        Ok((EventFilter { jobs, kinds, all_users: self.all_users }, from))
    }

    /// How often to send progress, for which jobs.
    fn progress(&self, filter: &EventFilter) -> Result<Option<(Duration, Vec<JobId>)>, ApiError> {
        let Some(ms) = self.progress else { return Ok(None) };
        if !(MIN_PROGRESS_MS..=MAX_PROGRESS_MS).contains(&ms) {
            return Err(ApiError::bad_request(format!(
                "progress is in milliseconds, {MIN_PROGRESS_MS} to {MAX_PROGRESS_MS}"
            )));
        }
        if filter.jobs.is_empty() || filter.jobs.len() > MAX_PROGRESS_JOBS {
            return Err(ApiError::bad_request(format!(
                "progress needs job=ID[,ID...] (1 to {MAX_PROGRESS_JOBS} jobs)"
            )));
        }
        Ok(Some((Duration::from_millis(ms), filter.jobs.clone())))
    }
}

/// Bounds of `progress`, milliseconds.
const MIN_PROGRESS_MS: u64 = 250;
const MAX_PROGRESS_MS: u64 = 60_000;
/// Most jobs a stream with `progress` may name.
const MAX_PROGRESS_JOBS: usize = 100;

/// The job event stream (`text/event-stream`): replay from `from`, then live. It opens
/// with `event: subscribed` (`data`: the serving `node` and the `position` delivery
/// starts at, the cursor to resume from elsewhere if nothing else arrives). Each event's
/// `id` is its cursor and its `event` its kind; `event: gap` says the node no longer
/// holds some events (`data` names the first missed and the oldest held).
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events", content_type = "text/event-stream"),
        (status = 400, body = ferry_protocol::api::Problem, content_type = "application/problem+json"),
        (status = 403, body = ferry_protocol::api::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn events(
    State(state): State<ApiState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let (filter, from) = query.parse(&headers)?;
    let progress = query.progress(&filter)?;
    // The stream ends when its token is revoked in the cluster.
    let token = crate::auth::bearer(&headers).unwrap_or_default().to_owned();
    let (auth, subscriber) = (state.auth.clone(), caller.clone());
    let revoked: RevokedWatch = Box::pin(async move { auth.revoked(&token, &subscriber).await });
    let stream = state.cluster.subscribe(caller.clone(), filter, from).await.map_err(refusal)?;
    let ticker = progress.map(|(every, jobs)| {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { interval, jobs, state: state.clone(), caller }
    });
    let subscribed = SseEvent::default().event("subscribed").data(
        serde_json::json!({ "node": state.cluster.node_id(), "position": stream.position() })
            .to_string(),
    );
    let open = Some((stream, revoked, ticker));
    let events = futures_util::stream::unfold(open, |open| async move {
        let (mut stream, mut revoked, mut ticker) = open?;
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut revoked => {
                let why = "the token of this subscription was revoked";
                return Some((Ok(SseEvent::default().event("error").data(why)), None));
            }
            event = tick(&mut ticker) => {
                return Some((Ok(event), Some((stream, revoked, ticker))));
            }
        };
        match next {
            Ok(Some(delivery)) => Some((Ok(sse(&delivery)), Some((stream, revoked, ticker)))),
            Ok(None) => None,
            // Say why the stream ends; the client resumes from its last id.
            Err(e) => Some((Ok(SseEvent::default().event("error").data(e.to_string())), None)),
        }
    });
    let first = futures_util::stream::iter([Ok::<_, Infallible>(subscribed)]);
    let events = futures_util::StreamExt::chain(first, events);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The progress events of a stream.
struct Ticker {
    interval: tokio::time::Interval,
    jobs: Vec<JobId>,
    state: ApiState,
    caller: ferry_protocol::Caller,
}

/// The next progress event (never, without a ticker).
async fn tick(ticker: &mut Option<Ticker>) -> SseEvent {
    let Some(ticker) = ticker else { return std::future::pending().await };
    ticker.interval.tick().await;
    let (state, caller) = (&ticker.state, &ticker.caller);
    let jobs = ticker.jobs.clone();
    let views = super::read(state, crate::cluster::ReadAt::Local, |q| {
        jobs.iter()
            .filter_map(|id| q.visible_job(caller, id).ok())
            .map(|job| (JobInfo::from(job), Liveness::of(job)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let views = super::jobs::with_live_progress(state, views).await;
    let reports = ProgressReports { jobs: views.iter().map(JobProgressReport::from).collect() };
    let data = serde_json::to_string(&reports).unwrap_or_else(|_| r#"{"jobs":[]}"#.into());
    SseEvent::default().event("progress").data(data)
}

/// Resolves when the subscriber's token stops authenticating it.
type RevokedWatch = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn sse(delivery: &Delivery) -> SseEvent {
    match delivery {
        Delivery::Event(event) => SseEvent::default()
            .id(event.cursor.to_string())
            .event(event.event.kind.as_str())
            .data(event.to_json().to_string()),
        Delivery::Gap { from, oldest } => SseEvent::default()
            .event("gap")
            .data(serde_json::json!({ "from": from, "oldest": oldest }).to_string()),
    }
}

fn refusal(e: SubscribeError) -> ApiError {
    match e {
        SubscribeError::Refused(refused) => refused.into(),
        other => {
            ApiError::new(other.status(), ferry_protocol::BitsCode::E_UNEXPECTED, other.to_string())
        }
    }
}

/// The cluster CA certificate, PEM: clients of the QUIC event bus (ALPN
/// `ferry-events/1`) verify the node they connect to against it.
#[utoipa::path(
    get, path = "/v1/cluster/ca", tag = "system",
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file")),
    security(("bearer" = []))
)]
pub(super) async fn cluster_ca(
    State(state): State<ApiState>,
    Authenticated(_caller): Authenticated,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], state.cluster.cluster_ca())
}
