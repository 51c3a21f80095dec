//! Group commit. The [`Proposer`] actor owns the queue of proposals waiting to be
//! written; a tokio task owns the Raft write of one batch at a time. Proposals that
//! arrive while a batch is being written wait and leave together in the next batch, so
//! under load many submissions share one log append, one state-machine commit and
//! their fsyncs — without a timer, and with no delay when the node is idle.

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
    bytes: usize,
    reply: ReplyTo,
}

/// The batching actor.
pub(crate) struct Proposer {
    /// Raft handle; writes go through `client_write` on the leader.
    raft: Raft,
    /// Proposals waiting for the next batch, oldest first.
    pending: VecDeque<Waiting>,
    /// Encoded bytes in `pending`.
    pending_bytes: usize,
    /// True while a batch is being written: new proposals wait for it to finish.
    in_flight: bool,
    /// Most proposals in one batch.
    max_batch: usize,
}

impl Proposer {
    /// A proposer writing through `raft`, at most `max_batch` commands per entry.
    pub(crate) fn new(raft: Raft, max_batch: usize) -> Self {
        Self {
            raft,
            pending: VecDeque::new(),
            pending_bytes: 0,
            in_flight: false,
            max_batch: max_batch.max(1),
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        // Take proposals while the batch stays within both bounds (always at least one).
        let mut count = 0;
        let mut bytes = 0;
        for waiting in self.pending.iter().take(self.max_batch) {
            if count > 0 && bytes + waiting.bytes > MAX_BATCH_BYTES {
                break;
            }
            count += 1;
            bytes += waiting.bytes;
        }
        if count == 0 {
            return;
        }
        self.pending_bytes -= bytes;
        crate::metrics::get().proposal_batch.observe(count as f64);
        let (proposals, replies): (Vec<Proposal>, Vec<ReplyTo>) =
            self.pending.drain(..count).map(|w| (w.proposal, w.reply)).unzip();
        self.in_flight = true;
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
            act.in_flight = false;
            act.flush(ctx);
        }));
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
        if self.pending.len() >= MAX_PENDING || self.pending_bytes + msg.bytes > MAX_PENDING_BYTES {
            let _ = msg.reply.send(Err(ClusterError::Unavailable(
                "too many writes are waiting; retry shortly".into(),
            )));
            return;
        }
        self.pending_bytes += msg.bytes;
        self.pending.push_back(Waiting {
            proposal: msg.proposal,
            bytes: msg.bytes,
            reply: msg.reply,
        });
        if !self.in_flight {
            self.flush(ctx);
        }
    }
}
