//! The job event stream over HTTP, client side: `GET /v1/events` (Server-Sent Events)
//! read into the same [`Delivery`] values the QUIC bus gives. It needs nothing but the
//! API port, so it works where the peer port is firewalled; [`crate::bus::Watcher`]
//! uses it by default.
//!
//! The stream opens with `event: subscribed` (the serving node and the cursor delivery
//! starts at), then carries events (`id:` the cursor, `data:` the event as JSON) and
//! `event: gap`. A stream that stays silent longer than the server's keep-alive allows
//! is taken for broken.

use std::time::Duration;

use ferry_protocol::JobId;
pub use ferry_protocol::api::JobProgressReport;
use ferry_protocol::api::ProgressReports;
use ferry_protocol::event::{Cursor, Delivery, Event, EventFilter, JobEvent, StartAt};

use crate::bus::BusError;
use crate::client::{Client, ClientError};

/// The longest silence before the stream is taken for broken: the server sends a
/// keep-alive every 15 s.
const SILENCE: Duration = Duration::from_secs(40);
/// Largest event block accepted (an event is a few hundred bytes).
const MAX_BLOCK: usize = 256 * 1024;

/// An open `GET /v1/events` stream.
pub struct SseSubscription {
    /// The node serving it.
    pub node: u64,
    /// Where delivery started.
    pub position: Cursor,
    response: reqwest::Response,
    /// Bytes received and not yet split into blocks.
    pending: Vec<u8>,
}

impl SseSubscription {
    /// Subscribes through `client`'s node with `filter`, from `from`.
    pub async fn open(
        client: &Client,
        filter: &EventFilter,
        from: StartAt,
    ) -> Result<Self, BusError> {
        Self::open_query(client, &query(filter, from)).await
    }

    /// Subscribes to the events of `jobs` from now, with their progress every `every`
    /// (read with [`Self::next_item`]).
    pub async fn with_progress(
        client: &Client,
        jobs: &[JobId],
        every: Duration,
    ) -> Result<Self, BusError> {
        let filter = EventFilter { jobs: jobs.to_vec(), ..EventFilter::default() };
        let query = format!("{}&progress={}", query(&filter, StartAt::Now), every.as_millis());
        Self::open_query(client, &query).await
    }

    async fn open_query(client: &Client, query: &str) -> Result<Self, BusError> {
        let response = client.event_stream(query).await.map_err(refusal)?;
        let mut opened = Self { node: 0, position: Cursor::START, response, pending: Vec::new() };
        match opened.block().await? {
            Some(block) if block.event.as_deref() == Some("subscribed") => {
                let data: serde_json::Value = serde_json::from_str(&block.data)
                    .map_err(|e| BusError::Stream(format!("a bad subscribed event: {e}")))?;
                opened.node = data.get("node").and_then(serde_json::Value::as_u64).unwrap_or(0);
                opened.position =
                    data.get("position").and_then(|p| p.as_str()?.parse().ok()).ok_or_else(
                        || BusError::Stream("the subscribed event has no position".into()),
                    )?;
                Ok(opened)
            }
            Some(_) => Err(BusError::Stream("the stream did not open with `subscribed`".into())),
            None => Err(BusError::Stream("the node closed the stream".into())),
        }
    }

    /// The next delivery; `None` when the node ended the stream.
    pub async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            match self.next_item().await? {
                None => return Ok(None),
                Some(Streamed::Delivery(delivery)) => return Ok(Some(delivery)),
                Some(Streamed::Progress(_)) => continue,
            }
        }
    }

    /// The next delivery or progress report; `None` when the node ended the stream.
    pub async fn next_item(&mut self) -> Result<Option<Streamed>, BusError> {
        loop {
            let Some(block) = self.block().await? else { return Ok(None) };
            match block.event.as_deref() {
                Some("gap") => return gap(&block.data).map(|g| Some(Streamed::Delivery(g))),
                Some("error") => return Err(BusError::Stream(block.data)),
                Some("progress") => {
                    return progress(&block.data).map(|p| Some(Streamed::Progress(p)));
                }
                // Anything a newer node adds is not a delivery.
                Some("subscribed") => continue,
                _ => {}
            }
            if let Some(id) = &block.id {
                return event(id, &block.data)
                    .map(|e| Some(Streamed::Delivery(Delivery::Event(e))));
            }
        }
    }

    /// The next block with a field in it (keep-alive comments are skipped).
    async fn block(&mut self) -> Result<Option<Block>, BusError> {
        loop {
            if let Some(end) = find_blank_line(&self.pending) {
                let raw: Vec<u8> = self.pending.drain(..end).collect();
                let text = String::from_utf8_lossy(&raw);
                if let Some(block) = Block::parse(&text) {
                    return Ok(Some(block));
                }
                continue;
            }
            if self.pending.len() > MAX_BLOCK {
                return Err(BusError::Stream(format!("an event block over {MAX_BLOCK} bytes")));
            }
            let chunk = tokio::time::timeout(SILENCE, self.response.chunk())
                .await
                .map_err(|_| BusError::Stream(format!("no word from the node for {SILENCE:?}")))?
                .map_err(|e| BusError::Stream(e.to_string()))?;
            match chunk {
                Some(bytes) => self.pending.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// What a stream carries.
#[derive(Debug)]
pub enum Streamed {
    /// An event or a gap.
    Delivery(Delivery),
    /// The named jobs' progress (streams opened [`SseSubscription::with_progress`]).
    Progress(Vec<JobProgressReport>),
}

/// A progress report from its `data`.
fn progress(data: &str) -> Result<Vec<JobProgressReport>, BusError> {
    let reports: ProgressReports = serde_json::from_str(data)
        .map_err(|e| BusError::Stream(format!("a bad progress event: {e}")))?;
    Ok(reports.jobs)
}

/// The query string of a subscription.
fn query(filter: &EventFilter, from: StartAt) -> String {
    let mut query = match from {
        StartAt::Now => "from=now".to_owned(),
        StartAt::Cursor(cursor) => format!("from={cursor}"),
    };
    if !filter.jobs.is_empty() {
        let jobs: Vec<String> = filter.jobs.iter().map(ToString::to_string).collect();
        query.push_str(&format!("&job={}", jobs.join(",")));
    }
    if !filter.kinds.is_empty() {
        let kinds: Vec<&str> = filter.kinds.iter().map(|k| k.as_str()).collect();
        query.push_str(&format!("&kinds={}", kinds.join(",")));
    }
    if filter.all_users {
        query.push_str("&all_users=true");
    }
    query
}

/// The API's refusal (a bad token or filter) is final; anything else may pass at
/// another node.
fn refusal(e: ClientError) -> BusError {
    match e {
        ClientError::Api(p) if (400..500).contains(&p.status) => {
            BusError::Refused { status: p.status, detail: p.detail }
        }
        e => BusError::Stream(e.to_string()),
    }
}

/// Where the first blank line ends (`\n\n` or `\r\n\r\n`), if one arrived.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One Server-Sent Events block.
#[derive(Debug, Default, PartialEq)]
struct Block {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl Block {
    /// The block's fields; `None` for a block of comments only.
    fn parse(text: &str) -> Option<Self> {
        let mut block = Self::default();
        let mut any = false;
        for line in text.lines() {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match name {
                "event" => block.event = Some(value.to_owned()),
                "id" => block.id = Some(value.to_owned()),
                "data" => {
                    if !block.data.is_empty() {
                        block.data.push('\n');
                    }
                    block.data.push_str(value);
                }
                _ => {}
            }
        }
        any.then_some(block)
    }
}

/// An event from its `id` and `data`.
fn event(id: &str, data: &str) -> Result<Event, BusError> {
    let bad = |what: String| BusError::Stream(format!("a bad event {id}: {what}"));
    let cursor: Cursor = id.parse().map_err(bad)?;
    let mut fields: serde_json::Value =
        serde_json::from_str(data).map_err(|e| bad(e.to_string()))?;
    if let Some(object) = fields.as_object_mut() {
        object.remove("cursor");
    }
    let event: JobEvent = serde_json::from_value(fields).map_err(|e| bad(e.to_string()))?;
    Ok(Event { cursor, event })
}

/// A gap from its `data`.
fn gap(data: &str) -> Result<Delivery, BusError> {
    #[derive(serde::Deserialize)]
    struct Gap {
        from: Cursor,
        oldest: Cursor,
    }
    let gap: Gap = serde_json::from_str(data)
        .map_err(|e| BusError::Stream(format!("a bad gap event: {e}")))?;
    Ok(Delivery::Gap { from: gap.from, oldest: gap.oldest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_as_the_server_writes_them_and_comments_are_skipped() {
        let text = "event: JobTransferred\nid: 12.1\ndata: {\"a\":1}\n\n";
        let end = find_blank_line(text.as_bytes()).expect("a block");
        assert_eq!(end, text.len());
        let block = Block::parse(&text[..end]).expect("fields");
        assert_eq!(block.event.as_deref(), Some("JobTransferred"));
        assert_eq!(block.id.as_deref(), Some("12.1"));
        assert_eq!(block.data, "{\"a\":1}");
        assert_eq!(Block::parse(": keep-alive\n\n"), None);
        let two_lines = Block::parse("data:x\ndata: y\n").expect("data");
        assert_eq!(two_lines.data, "x\ny");
        assert_eq!(find_blank_line(b"data: x\r\n\r\nmore"), Some(11));
        assert_eq!(find_blank_line(b"data: partial"), None);
    }

    #[test]
    fn a_subscription_asks_for_its_filter_and_start() {
        let job: JobId = "6a2f1c4e-9a0b-4c55-8d2e-0123456789ab".parse().expect("id");
        let filter = EventFilter {
            jobs: vec![job],
            kinds: vec![ferry_protocol::event::EventKind::JobTransferred],
            all_users: true,
        };
        let from = StartAt::Cursor(Cursor { index: 7, sub: 2 });
        assert_eq!(
            query(&filter, from),
            format!("from=7.2&job={job}&kinds=JobTransferred&all_users=true")
        );
        assert_eq!(query(&EventFilter::default(), StartAt::Now), "from=now");
    }

    #[test]
    fn gaps_and_bad_events_are_read_or_refused() {
        let gap = gap(r#"{"from":"3","oldest":"9.1"}"#).expect("gap");
        assert_eq!(
            gap,
            Delivery::Gap {
                from: Cursor { index: 3, sub: 0 },
                oldest: Cursor { index: 9, sub: 1 }
            }
        );
        let job = "6a2f1c4e-9a0b-4c55-8d2e-0123456789ab";
        let data = format!(
            r#"{{"jobs":[{{"job":"{job}","state":"transferring","bytes_transferred":5,"bytes_total":null}}]}}"#
        );
        let reports = progress(&data).expect("progress");
        let state = ferry_protocol::JobState::Transferring;
        assert_eq!((reports[0].state, reports[0].bytes_transferred), (state, 5));
        assert!(event("x", "{}").is_err());
        assert!(event("4", "not json").is_err());
    }
}
