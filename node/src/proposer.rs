//! Group commit. The [`Proposer`] actor owns the queue of proposals waiting to be
//! written ([`Outbox`]); tokio tasks own the Raft writes of the batches. Proposals that
//! arrive while batches are being written wait and leave together in the next batch, so
//! under load many submissions share one log append, one state-machine commit and its
//! fsync — without a timer, and with no delay when the node is idle.
//!
//! One batch is written at a time ([`MAX_IN_FLIGHT`]): the next one leaves when the
//! last one is applied, with everything that arrived meanwhile. Two at once (the next
//! batch's log append overlapping the last one's apply) split the waiting proposals
//! into twice as many entries, each with its own fsync on every member, and lost more
//! to those than the overlap won (see the constant). The outbox keeps the count
//! general: batches in flight together carry proposals of different requests (a client
//! waits for its answer before its next write), so their order in the log is free.

use std::collections::VecDeque;

use actix::prelude::*;
use ferry_coordinator::{ClusterError, Written};
use ferry_protocol::{Batch, Proposal, Timestamp};
use tokio::sync::oneshot;

use crate::raft::{Raft, write_error};

/// Most proposals waiting at once; beyond this, new ones are refused as overload
/// (clients retry with the same request id).
const MAX_PENDING: usize = 65_536;
/// Most encoded bytes waiting at once (memory bound of the queue).
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Most encoded bytes in one batch: a Raft entry must stay well inside the decode limit
/// (`codec::FRAME_LIMIT`), or no node could read the log back.
pub(crate) const MAX_BATCH_BYTES: usize = ferry_protocol::codec::FRAME_LIMIT / 2;
/// Most batches being written at once (see the module doc). Side by side (`ferry-bench
/// submit`, 2 cores, one disk, 5,000 jobs, two runs each), one against two: one node
/// 12,566-12,787 against 10,981-11,212 jobs/s at 64 clients (31 commands per entry
/// against 19), three nodes 5,871-6,033 against 5,103-5,180 at 64 and 2,511 against
/// 2,026-2,054 at 16; 256 clients and one client within noise.
const MAX_IN_FLIGHT: usize = 1;

/// The answer channel of one proposal.
pub(crate) type ReplyTo = oneshot::Sender<Result<Written, ClusterError>>;

/// Propose a command; the answer arrives on `reply` once it is applied.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Propose {
    /// The command with its caller and request id.
    pub(crate) proposal: Proposal,
    /// Its encoded size, at most [`MAX_BATCH_BYTES`].
    pub(crate) bytes: usize,
    /// Where the result goes.
    pub(crate) reply: ReplyTo,
}

/// A proposal waiting for its batch.
struct Waiting {
    proposal: Proposal,
    reply: ReplyTo,
}

/// The proposals waiting to be written and the count of batches being written: which
/// proposals leave next, within the bounds above. No actor and no Raft in it.
struct Outbox<T> {
    /// Items waiting for a batch, oldest first, with their encoded sizes.
    pending: VecDeque<(T, usize)>,
    /// Encoded bytes in `pending`.
    pending_bytes: usize,
    /// Batches taken and not yet [`finished`](Self::finished).
    in_flight: usize,
    /// Most items in one batch.
    max_batch: usize,
}

impl<T> Outbox<T> {
    fn new(max_batch: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            pending_bytes: 0,
            in_flight: 0,
            max_batch: max_batch.max(1),
        }
    }

    /// Queues `item` of `bytes`; gives it back when the queue is full.
    fn admit(&mut self, item: T, bytes: usize) -> Result<(), T> {
        if self.pending.len() >= MAX_PENDING || self.pending_bytes + bytes > MAX_PENDING_BYTES {
            return Err(item);
        }
        self.pending_bytes += bytes;
        self.pending.push_back((item, bytes));
        Ok(())
    }

    /// The next batch to write, if fewer than [`MAX_IN_FLIGHT`] are being written and
    /// items wait: the oldest ones, as many as fit in one batch (always at least one).
    fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        let mut count = 0;
        let mut bytes = 0;
        for (_, size) in self.pending.iter().take(self.max_batch) {
            if count > 0 && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            count += 1;
            bytes += size;
        }
        if count == 0 {
            return None;
        }
        self.pending_bytes -= bytes;
        self.in_flight += 1;
        Some(self.pending.drain(..count).map(|(item, _)| item).collect())
    }

    /// A batch taken by [`next_batch`](Self::next_batch) was written (or failed).
    fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// The batching actor.
pub(crate) struct Proposer {
    /// Raft handle; writes go through `client_write` on the leader.
    raft: Raft,
    /// Proposals waiting, and how many batches are being written.
    outbox: Outbox<Waiting>,
}

impl Proposer {
    /// A proposer writing through `raft`, at most `max_batch` commands per entry.
    pub(crate) fn new(raft: Raft, max_batch: usize) -> Self {
        Self { raft, outbox: Outbox::new(max_batch) }
    }

    /// Sends batches while the outbox gives them.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        while let Some(batch) = self.outbox.next_batch() {
            crate::metrics::get().proposal_batch.observe(batch.len() as f64);
            let (proposals, replies): (Vec<Proposal>, Vec<ReplyTo>) =
                batch.into_iter().map(|w| (w.proposal, w.reply)).unzip();
            let raft = self.raft.clone();
            // The write runs on the worker pool; only its result comes back to the actor.
            let write = tokio::spawn(async move {
                raft.client_write(Batch { time: Timestamp::now(), proposals }).await
            });
            ctx.spawn(write.into_actor(self).map(move |joined, act, ctx| {
                let outcome = match joined {
                    Ok(Ok(response)) => Ok((response.log_id.index, response.data.0)),
                    Ok(Err(e)) => Err(write_error(e)),
                    Err(e) => Err(ClusterError::Unavailable(format!("the write task failed: {e}"))),
                };
                deliver(outcome, replies);
                act.outbox.finished();
                act.flush(ctx);
            }));
        }
    }
}
fn deliver(
    outcome: Result<(u64, Vec<ferry_protocol::command::CommandResult>), ClusterError>,
    replies: Vec<ReplyTo>,
) {
    match outcome {
        Ok((index, results)) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(Written { result, index }));
            }
        }
        Ok((_, results)) => {
            let e = ClusterError::Unavailable(format!(
                "apply returned {} results for {} commands",
                results.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

impl Actor for Proposer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Each waiting HTTP request holds one message; the queue itself is `pending`.
        ctx.set_mailbox_capacity(4_096);
    }
}

impl Handler<Propose> for Proposer {
    type Result = ();

    fn handle(&mut self, msg: Propose, ctx: &mut Self::Context) {
        let waiting = Waiting { proposal: msg.proposal, reply: msg.reply };
        if let Err(refused) = self.outbox.admit(waiting, msg.bytes) {
            let _ = refused.reply.send(Err(ClusterError::Unavailable(
                "too many writes are waiting; retry shortly".into(),
            )));
            return;
        }
        self.flush(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_outbox_sends_a_proposal_at_once_alone() {
        let mut outbox = Outbox::new(512);
        outbox.admit(1, 10).expect("room");
        assert_eq!(outbox.next_batch(), Some(vec![1]));
        assert_eq!(outbox.next_batch(), None, "nothing waits");
    }

    #[test]
    fn proposals_arriving_while_batches_are_written_leave_together() {
        let mut outbox = Outbox::new(512);
        for batch in 0..MAX_IN_FLIGHT {
            outbox.admit(batch, 10).expect("room");
            assert_eq!(outbox.next_batch(), Some(vec![batch]), "batch {batch} leaves at once");
        }
        for item in 10..15 {
            outbox.admit(item, 10).expect("room");
        }
        assert_eq!(outbox.next_batch(), None, "{MAX_IN_FLIGHT} batches are being written");
        outbox.finished();
        assert_eq!(outbox.next_batch(), Some(vec![10, 11, 12, 13, 14]), "in arrival order");
        assert_eq!(outbox.next_batch(), None);
        outbox.finished();
        outbox.finished();
        outbox.admit(20, 10).expect("room");
        assert_eq!(outbox.next_batch(), Some(vec![20]));
    }

    #[test]
    fn a_batch_keeps_within_its_count_and_byte_bounds() {
        let mut outbox = Outbox::new(3);
        for item in 0..5 {
            outbox.admit(item, 10).expect("room");
        }
        assert_eq!(outbox.next_batch(), Some(vec![0, 1, 2]), "at most max_batch");
        outbox.finished();
        assert_eq!(outbox.next_batch(), Some(vec![3, 4]));

        let mut outbox = Outbox::new(512);
        let big = MAX_BATCH_BYTES / 2 + 1;
        for item in 0..3 {
            outbox.admit(item, big).expect("room");
        }
        assert_eq!(outbox.next_batch(), Some(vec![0]), "two would pass MAX_BATCH_BYTES");
        outbox.finished();
        assert_eq!(outbox.next_batch(), Some(vec![1]));
        outbox.finished();
        assert_eq!(outbox.next_batch(), Some(vec![2]));
    }

    #[test]
    fn a_full_outbox_refuses_and_takes_again_once_drained() {
        let mut outbox = Outbox::new(512);
        let share = MAX_PENDING_BYTES / 4;
        for item in 0..4 {
            outbox.admit(item, share).expect("room");
        }
        assert_eq!(outbox.admit(9, 1), Err(9), "over the byte bound");
        while outbox.next_batch().is_some() {
            outbox.finished();
        }
        outbox.admit(9, 1).expect("room again");
    }
}
