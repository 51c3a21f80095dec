//! The run's files: taken in order, several at once while they are small.
//!
//! Up to [`PROBES_AHEAD`] files may wait for their probe's answer at once, so the
//! requests of a run of small files overlap instead of each waiting for the one
//! before. A probe that shows the file to be one piece makes it small: the rest of
//! such a file is one body (the probe's, or one request to a copy or the origin) and
//! a Raft report, which overlap with the next files' requests. A file that needs more
//! (several chunks, a stream) is large: no file starts after it until it ends,
//! and before it fetches more than its first chunk it waits for every file started
//! before it to end ([`Lane::wait_turn`]), so large files keep the order BITS gives
//! them and their connections to themselves. At most [`FILES_IN_FLIGHT`] files are in
//! flight.
//!
//! Each file has its own outbox while it runs (its reports stay in order); a finished
//! file's reports join the run's, which go out together once due. When a file fails,
//! no file starts any more; the files before it in flight are let finish, those after
//! it are dropped (BITS transfers files in order, so the first failing file is the
//! job's error), and the run reports what finished before it.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{BitsCode, JobState};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};

use super::{MAX_RESTARTS_PER_RUN, Outbox};
use crate::transfer::Run;
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::transport_error;

/// Most files of one run in flight at once (all of them small but the last).
pub(super) const FILES_IN_FLIGHT: usize = 8;
/// Most files of one run waiting for their probe's answer at once.
const PROBES_AHEAD: usize = 4;

/// What a file in flight learned of itself from its probe.
enum Kind {
    /// It is one piece.
    Small(u32),
    /// It needs more than one piece.
    Large(u32),
}

/// How a file in flight tells the run what it is, and waits for its turn.
pub(super) struct Lane {
    file: u32,
    kind: mpsc::UnboundedSender<Kind>,
    /// The lowest index of the files in flight.
    first: watch::Receiver<Option<u32>>,
}

impl Lane {
    /// The file is one piece: the next file may start.
    pub(super) fn small(&self) {
        // The run may have stopped listening: it then starts nothing more anyway.
        let _ = self.kind.send(Kind::Small(self.file));
    }

    /// The file needs more than one piece: no file starts after it until it ends.
    pub(super) fn large(&self) {
        let _ = self.kind.send(Kind::Large(self.file));
    }

    /// Whether every file started before this one has ended.
    pub(super) fn is_turn(&self) -> bool {
        self.first.borrow().is_none_or(|first| first >= self.file)
    }

    /// Waits until every file started before this one has ended (at once for the
    /// first file in flight).
    pub(super) async fn wait_turn(&self) {
        let file = self.file;
        // The run keeps the sender while its files run.
        let _ = self.first.clone().wait_for(|first| first.is_none_or(|first| first >= file)).await;
    }
}

/// The run's reports of finished files, waiting to go out together.
#[derive(Default)]
struct Finished(Mutex<Outbox>);

impl Finished {
    /// Adds `outbox` (a file's leftover reports); returns all of them if they are due.
    fn add(&self, outbox: Outbox) -> Option<Outbox> {
        let mut finished = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        finished.absorb(outbox);
        finished.due().then(|| std::mem::take(&mut *finished))
    }

    fn take(&self) -> Outbox {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Run {
    /// Transfers every pending file; returns why it stopped if it did not finish.
    pub(crate) async fn download(&self) -> Result<(), Stop> {
        let mut first_outbox = Outbox::default();
        if self.job.state() == JobState::Connecting {
            // Told once the server answered (the first probe), or at once without files.
            first_outbox.push(EngineReport::Connected);
        }
        let mut first_outbox = Some(first_outbox);
        let finished = Finished::default();
        let (kind_tx, mut kind_rx) = mpsc::unbounded_channel();
        let (first, first_rx) = watch::channel(None);
        let mut in_flight = FuturesUnordered::new();
        let (mut running, mut small, mut large) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        // Files finished in this run may not be recorded yet (their reports wait):
        // the next file is searched after the last one started.
        let mut after = 0;
        // The first failing file in order, and the cut: files after it end at once.
        let mut failed: Option<(u32, Stop)> = None;
        let (cut, cut_rx) = watch::channel(u32::MAX);
        loop {
            while failed.is_none()
                && running.len() < FILES_IN_FLIGHT
                && large.is_empty()
                && running.iter().filter(|f| !small.contains(*f)).count() < PROBES_AHEAD
            {
                let next = self.reporter.read(self.job.id(), self.run, |job| {
                    job.files().iter().skip(after).position(|f| !f.transferred).map(|i| i + after)
                })?;
                let Some(index) = next else { break };
                after = index + 1;
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let lane = Lane { file: index, kind: kind_tx.clone(), first: first_rx.clone() };
                let outbox = first_outbox.take().unwrap_or_default();
                running.insert(index);
                first.send_replace(running.first().copied());
                let file = self.whole_file(index, outbox, lane, &finished);
                let mut cut_rx = cut_rx.clone();
                in_flight.push(async move {
                    tokio::select! {
                        (_, outcome) = file => (index, Some(outcome)),
                        // Dropped: a file before it failed.
                        _ = cut_rx.wait_for(|cut| *cut < index) => (index, None),
                    }
                });
            }
            if in_flight.is_empty() {
                // Without files, the run's first outbox (Connected) was never handed out.
                let mut outbox = first_outbox.take().unwrap_or_default();
                outbox.absorb(finished.take());
                if !outbox.is_empty() {
                    self.send(&mut outbox, Vec::new()).await?;
                }
                return match failed {
                    Some((_, stop)) => Err(stop),
                    None => Ok(()),
                };
            }
            tokio::select! {
                biased;
                Some(kind) = kind_rx.recv() => match kind {
                    Kind::Small(file) if running.contains(&file) => {
                        small.insert(file);
                    }
                    Kind::Large(file) if running.contains(&file) => {
                        large.insert(file);
                    }
                    _ => {}
                },
                Some((file, outcome)) = in_flight.next() => {
                    running.remove(&file);
                    small.remove(&file);
                    large.remove(&file);
                    first.send_replace(running.first().copied());
                    match outcome {
                        None | Some(Ok(())) => {}
                        Some(Err(Stop::Stale)) => return Err(Stop::Stale),
                        Some(Err(stop)) => {
                            // BITS transfers files in order: the first failing file
                            // counts, the files before it are let finish, the files
                            // after it are dropped.
                            if failed.as_ref().is_none_or(|(at, _)| file < *at) {
                                failed = Some((file, stop));
                                cut.send_replace(file);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One file to its end: restarted when its remote file changed (at most
    /// [`MAX_RESTARTS_PER_RUN`] times), or from the origin alone when its digest did
    /// not match. Its leftover reports join `finished`, sent from here once due.
    async fn whole_file(
        &self,
        index: u32,
        mut outbox: Outbox,
        lane: Lane,
        finished: &Finished,
    ) -> (u32, Result<(), Stop>) {
        let outcome = self.file_with_restarts(index, &mut outbox, &lane).await;
        if let Some(mut due) = finished.add(outbox)
            && let Err(stop) = self.send(&mut due, Vec::new()).await
        {
            return (index, outcome.and(Err(stop)));
        }
        (index, outcome)
    }

    async fn file_with_restarts(
        &self,
        index: u32,
        outbox: &mut Outbox,
        lane: &Lane,
    ) -> Result<(), Stop> {
        let mut restarts = 0;
        // A file whose peer bytes its owner found invalid comes from the origin alone.
        let withdrawn = self.reporter.read(self.job.id(), self.run, |job| {
            job.files().get(index as usize).is_some_and(|f| f.withdrawn)
        })?;
        self.set_origin_only(index, withdrawn);
        loop {
            match self.download_file(index, outbox, lane).await {
                Ok(()) => return Ok(()),
                Err(Stop::DigestMismatch(why)) if !self.is_origin_only(index) => {
                    // Perhaps bytes from peers: once more, from the origin alone.
                    restarts += 1;
                    tracing::info!(job = %self.job.id(), file = index, %why, "starting the file over from the origin alone");
                    self.set_origin_only(index, true);
                    self.send(outbox, vec![EngineReport::RestartFile { file: index }]).await?;
                }
                Err(Stop::DigestMismatch(why)) => {
                    // The origin's own bytes do not match its declaration.
                    self.send(outbox, vec![EngineReport::RestartFile { file: index }]).await?;
                    return Err(Failure::fatal(transport_error(
                        BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                        format!("{why} (twice, the second time from the origin alone)"),
                        index,
                    ))
                    .into());
                }
                Err(Stop::RestartFile(why)) => {
                    restarts += 1;
                    tracing::info!(job = %self.job.id(), file = index, %why, "starting the file over");
                    self.send(outbox, vec![EngineReport::RestartFile { file: index }]).await?;
                    if restarts >= MAX_RESTARTS_PER_RUN {
                        return Err(Failure::protocol(
                            BitsCode::BG_E_REMOTE_FILE_CHANGED,
                            format!("the remote file kept changing during the download ({why})"),
                            index,
                        )
                        .into());
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Whether file `index` comes from the origin alone in this run.
    pub(super) fn is_origin_only(&self, index: u32) -> bool {
        self.origin_only.lock().unwrap_or_else(PoisonError::into_inner).contains(&index)
    }

    fn set_origin_only(&self, index: u32, origin_only: bool) {
        let mut files = self.origin_only.lock().unwrap_or_else(PoisonError::into_inner);
        if origin_only {
            files.insert(index);
        } else {
            files.remove(&index);
        }
    }
}
