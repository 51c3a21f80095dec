//! The scope of one transfer run: every task the run spawns and every blocking file
//! operation it starts is tracked, so that whoever stops the run can await the end of
//! its work ([`RunScope::stop`]) before renaming or deleting the job's files.
//!
//! Work inside a run spawns through [`spawn`] / [`scoped`] and runs file calls through
//! [`spawn_blocking`]; outside a run (helpers serving other members, tests) they fall
//! back to plain tokio.

use std::future::Future;

use futures_util::future::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

tokio::task_local! {
    /// The tracker of the run the current task belongs to.
    static RUN: TaskTracker;
}

/// One run's scope: its cancellation token and the tracker of its work.
#[derive(Clone, Default)]
pub(crate) struct RunScope {
    /// Cancelled when the run is to stop.
    pub(crate) cancel: CancellationToken,
    /// The run's tasks and blocking file operations.
    tracker: TaskTracker,
}

impl RunScope {
    /// Runs `work` inside this scope until it ends or the scope is cancelled; then
    /// waits for every task and file operation it started to end. Returns the work's
    /// output, or `None` if it was cancelled.
    pub(crate) async fn run<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let tracked = RUN.scope(self.tracker.clone(), work);
        let outcome = tokio::select! {
            out = tracked => Some(out),
            () = self.cancel.cancelled() => None,
        };
        // The run's future is gone: its task handles dropped (tasks in join sets
        // aborted); what is left finishes its current operation.
        self.tracker.close();
        self.tracker.wait().await;
        outcome
    }

    /// Asks the run to stop (see [`RunScope::run`] for the wait).
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }
}

fn current() -> Option<TaskTracker> {
    RUN.try_with(TaskTracker::clone).ok()
}

/// `future`, tracked by the current run's scope (if any) and carrying it into the task
/// it is spawned as.
pub(crate) fn scoped<F: Future>(future: F) -> impl Future<Output = F::Output> {
    match current() {
        Some(tracker) => Either::Left(tracker.track_future(RUN.scope(tracker.clone(), future))),
        None => Either::Right(future),
    }
}

/// `tokio::spawn` of `future` within the current run's scope.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(scoped(future))
}

/// `spawn_blocking` of `f` within the current run's scope: the run's end waits for it.
pub(crate) fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    match current() {
        Some(tracker) => tracker.spawn_blocking(f),
        None => tokio::task::spawn_blocking(f),
    }
}
