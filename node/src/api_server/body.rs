//! The deadline of a request body: it must have arrived `grace` after it started to be
//! read, plus one second per `min_bytes_per_sec` bytes received, so that a slow but
//! steady upload goes on while a trickle (a byte now and then, to hold a slot) is cut.
//! A body past its deadline fails, and the server answers `408`.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// When a body must have arrived.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyDeadline {
    /// Time every body gets.
    pub(super) grace: Duration,
    /// Bytes that earn one more second.
    pub(super) min_bytes_per_sec: u64,
}

impl BodyDeadline {
    /// The deadline of a body started at `start` of which `received` bytes arrived.
    pub(super) fn at(&self, start: Instant, received: u64) -> Instant {
        let earned = Duration::from_secs(received / self.min_bytes_per_sec.max(1));
        start + self.grace.saturating_add(earned)
    }
}

/// The body failed its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(super) struct BodyTooSlow;

/// A body that fails once past its [`BodyDeadline`] and then raises `late`.
pub(super) struct TimedBody<B> {
    inner: B,
    deadline: BodyDeadline,
    start: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
    /// Set when the deadline passed: the server then answers 408.
    late: Arc<AtomicBool>,
}

impl<B> TimedBody<B> {
    /// `inner`, whose deadline starts now.
    pub(super) fn new(inner: B, deadline: BodyDeadline, late: Arc<AtomicBool>) -> Self {
        let start = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(deadline.at(start, 0)));
        Self { inner, deadline, start, received: 0, timer, late }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    let deadline = this.deadline.at(this.start, this.received);
                    this.timer.as_mut().reset(deadline);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            this.late.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_bytes_earn_time() {
        let d = BodyDeadline { grace: Duration::from_secs(30), min_bytes_per_sec: 4096 };
        let start = Instant::now();
        assert_eq!(d.at(start, 0), start + Duration::from_secs(30));
        assert_eq!(d.at(start, 4095), start + Duration::from_secs(30));
        assert_eq!(d.at(start, 40_960), start + Duration::from_secs(40));
    }
}
