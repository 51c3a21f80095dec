//! The run's files: taken in order, several at once while they are small.
//!
//! A file starts once every file in flight has shown, by its probe, that the probe's
//! `GET` carries it whole (a fresh file of one chunk from the origin alone): the rest
//! of such a file is reading one body, an fsync and a Raft report, which overlap with
//! the next files' requests. A file that needs more (chunks, peers, helpers, a stream)
//! runs with no file started after it until it ends, so large files keep the order
//! BITS gives them and their connections to themselves. At most [`FILES_IN_FLIGHT`]
//! files are in flight.
//!
//! Each file has its own outbox while it runs (its reports stay in order); a finished
//! file's reports join the run's, which go out together once due. When a file fails,
//! the small files in flight are let finish (their bytes are all but durable), the
//! rest is dropped, and the run reports what finished before the failure.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{BitsCode, JobState};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::{MAX_RESTARTS_PER_RUN, Outbox};
use crate::transfer::Run;
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::transport_error;

/// Most files of one run in flight at once (all of them small but the last).
pub(super) const FILES_IN_FLIGHT: usize = 8;

/// How a file in flight tells the run it is small: its probe carries it whole.
pub(super) struct Lane {
    file: u32,
    small: mpsc::UnboundedSender<u32>,
}

impl Lane {
    /// The probe's answer carries the whole file: the run may start the next one.
    pub(super) fn small(&self) {
        // The run may have stopped listening: it then starts nothing more anyway.
        let _ = self.small.send(self.file);
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
        let (small_tx, mut small_rx) = mpsc::unbounded_channel();
        let mut in_flight = FuturesUnordered::new();
        let (mut running, mut small) = (BTreeSet::new(), BTreeSet::new());
        // Files finished in this run may not be recorded yet (their reports wait):
        // the next file is searched after the last one started.
        let mut after = 0;
        let mut failed = None;
        loop {
            while failed.is_none()
                && running.len() < FILES_IN_FLIGHT
                && running.iter().all(|f| small.contains(f))
            {
                let next = self.reporter.read(self.job.id(), self.run, |job| {
                    job.files().iter().skip(after).position(|f| !f.transferred).map(|i| i + after)
                })?;
                let Some(index) = next else { break };
                after = index + 1;
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let lane = Lane { file: index, small: small_tx.clone() };
                let outbox = first_outbox.take().unwrap_or_default();
                running.insert(index);
                in_flight.push(self.whole_file(index, outbox, lane, &finished));
            }
            if in_flight.is_empty() {
                // Without files, the run's first outbox (Connected) was never handed out.
                let mut outbox = first_outbox.take().unwrap_or_default();
                outbox.absorb(finished.take());
                if !outbox.is_empty() {
                    self.send(&mut outbox, Vec::new()).await?;
                }
                return match failed {
                    Some(stop) => Err(stop),
                    None => Ok(()),
                };
            }
            tokio::select! {
                biased;
                Some(file) = small_rx.recv() => {
                    if running.contains(&file) {
                        small.insert(file);
                    }
                }
                Some((file, outcome)) = in_flight.next() => {
                    running.remove(&file);
                    small.remove(&file);
                    match outcome {
                        Ok(()) => {}
                        Err(Stop::Stale) => return Err(Stop::Stale),
                        Err(stop) => {
                            if failed.is_none() && running.iter().all(|f| small.contains(f)) {
                                // The files in flight are all but done: let them finish.
                                failed = Some(stop);
                            } else {
                                // A file that needs more is dropped, with the rest; a
                                // second failure while small files finish: the first counts.
                                in_flight.clear();
                                failed.get_or_insert(stop);
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
