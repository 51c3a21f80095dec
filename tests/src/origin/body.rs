//! Response bodies of the test origin, including the slow and broken ones: file
//! content generated piece by piece, throttled (`trickle`, per-connection rate limit)
//! and cut off (`drop_after_bytes`) as the knobs say.
//!
//! A cut is an error returned from the body: hyper then closes the connection without
//! finishing the message, which the client sees as a TCP close mid-body. Before the
//! error the body waits [`FLUSH_GRACE`] so hyper flushes the bytes allowed before it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::content::Content;
use super::state::{ConnState, Shared, lock};

/// The largest piece handed to hyper at once.
const CHUNK: u64 = 64 * 1024;

/// The pause between the last allowed bytes and the cut, for hyper to flush them.
const FLUSH_GRACE: Duration = Duration::from_millis(50);

/// How far the rate-limit schedule may fall behind the clock: the burst a connection
/// may send at once after a pause (at most this long's worth of bytes).
const RATE_SLACK: Duration = Duration::from_millis(50);

/// How a body is slowed down or cut, from the knobs when the request came.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Shaping {
    /// `Knobs::trickle`.
    pub(super) trickle: Option<(usize, Duration)>,
    /// `Knobs::rate_limit_per_connection`, bytes per second.
    pub(super) rate: Option<u64>,
    /// `Knobs::drop_after_bytes`.
    pub(super) drop_after: Option<u64>,
}

/// Any body the origin sends.
#[derive(Debug)]
pub(super) struct OriginBody {
    /// What is left to send.
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream(Box<Streaming>),
}

impl OriginBody {
    /// No body (HEAD, 416).
    pub(super) fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// A short in-memory body (error pages).
    pub(super) fn text(text: &'static str) -> Self {
        Self { kind: Kind::Full(Some(Bytes::from_static(text.as_bytes()))) }
    }

    /// Bytes `start..start + len` of `content`, shaped, counted against `record` in the
    /// shared state and against `conn`.
    pub(super) fn content(
        content: Content,
        start: u64,
        len: u64,
        shaping: Shaping,
        shared: Arc<Shared>,
        conn: Arc<Mutex<ConnState>>,
        record: Option<usize>,
    ) -> Self {
        let end = start.saturating_add(len).min(content.len());
        let client = lock(&conn).peer;
        shared.lock().body_started(client);
        let streaming = Streaming {
            content,
            pos: start,
            end,
            shaping,
            shared,
            conn,
            record,
            sleep: None,
            cut: false,
        };
        Self { kind: Kind::Stream(Box::new(streaming)) }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(streaming) => streaming.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            // The length, if any, is in the Content-Length header; unknown here makes
            // hyper use the header, or chunked encoding when there is none.
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A content body being sent.
#[derive(Debug)]
struct Streaming {
    /// The file version snapshot taken when the request came.
    content: Content,
    /// Next byte to send.
    pos: u64,
    /// One past the last byte to send.
    end: u64,
    /// Throttling and cutting.
    shaping: Shaping,
    /// For stats and the request log.
    shared: Arc<Shared>,
    /// For per-connection limits.
    conn: Arc<Mutex<ConnState>>,
    /// Index of this request in the log.
    record: Option<usize>,
    /// A pause in progress (trickle interval, rate limit, flush grace).
    sleep: Option<Pin<Box<Sleep>>>,
    /// Set once the connection's byte budget is spent: fail after the pause.
    cut: bool,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let client = lock(&self.conn).peer;
        self.shared.lock().body_ended(client);
    }
}

impl Streaming {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            if self.cut {
                let error = io::Error::new(io::ErrorKind::ConnectionAborted, "drop_after_bytes");
                return Poll::Ready(Some(Err(error)));
            }
            if self.pos >= self.end {
                return Poll::Ready(None);
            }
            match self.next_piece() {
                Ok(n) => return Poll::Ready(Some(Ok(Frame::data(self.send(n))))),
                Err(pause) => self.sleep = Some(Box::pin(tokio::time::sleep_until(pause))),
            }
        }
    }

    /// The size of the next piece, reserved against the connection's limits, or the
    /// instant to wait for before trying again.
    fn next_piece(&mut self) -> Result<u64, Instant> {
        let mut n = CHUNK.min(self.end - self.pos);
        if let Some((bytes, _)) = self.shaping.trickle {
            n = n.min(bytes.max(1) as u64);
        }
        let mut conn = lock(&self.conn);
        if let Some(limit) = self.shaping.drop_after {
            let left = limit.saturating_sub(conn.body_bytes);
            if left == 0 {
                self.cut = true;
                return Err(Instant::now() + FLUSH_GRACE);
            }
            n = n.min(left);
        }
        if let Some(rate) = self.shaping.rate {
            let rate = rate.max(1);
            let now = Instant::now();
            // GCRA: the schedule may lag `now` by up to RATE_SLACK, so timer lateness on
            // one piece is made up on the next instead of adding up.
            let free =
                conn.next_free.unwrap_or(now).max(now.checked_sub(RATE_SLACK).unwrap_or(now));
            if free > now {
                return Err(free);
            }
            // About 64 pieces a second keeps the cap accurate within a few percent.
            n = n.min((rate / 64).clamp(1, 16 * 1024));
            conn.next_free = Some(free + Duration::from_secs_f64(n as f64 / rate as f64));
        }
        conn.body_bytes += n;
        if self.shaping.drop_after.is_some_and(|limit| conn.body_bytes >= limit) {
            self.cut = self.pos + n < self.end;
        }
        Ok(n)
    }

    /// Produces the next `n` bytes, accounts them and schedules the pause after them.
    fn send(&mut self, n: u64) -> Bytes {
        let data = self.content.slice(self.pos, n);
        self.pos += n;
        self.shared.lock().count_body_bytes(self.record, n);
        if self.cut {
            self.sleep = Some(Box::pin(tokio::time::sleep(FLUSH_GRACE)));
        } else if let Some((_, interval)) = self.shaping.trickle
            && self.pos < self.end
        {
            self.sleep = Some(Box::pin(tokio::time::sleep(interval)));
        }
        data
    }
}
