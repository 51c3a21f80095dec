//! [`LeaderDuties`]: what this node does while it leads, started on every leadership
//! gain and stopped on loss (never given up after a while): wake the scheduler (it
//! judges home nodes from the moment of the gain), record this node's current address
//! in the membership (it may have restarted on another port), and propose the
//! configured queue policy if the cluster's differs.

use std::sync::Arc;

use actix::prelude::*;
use ferry_protocol::command::Command;
use ferry_protocol::limits::QueuePolicy;
use ferry_protocol::peer::NodeAddr;
use ferry_protocol::{Caller, Principal, Proposal, Role};
use tokio_util::task::AbortOnDropHandle;

use crate::replica::{ClusterView, Membership};
use crate::scheduler::Schedule;

/// The leader's duties: an actor that watches Raft's metrics and runs the duties of
/// each term this node leads.
pub(crate) struct LeaderDuties {
    /// The cluster.
    pub(crate) cluster: ClusterView,
    /// For recording this node's address.
    pub(crate) membership: Arc<dyn Membership>,
    /// The scheduler, woken on a gain.
    pub(crate) scheduler: Recipient<Schedule>,
    /// The queue policy of the configuration.
    pub(crate) policy: QueuePolicy,
    /// This node's addresses.
    pub(crate) me: NodeAddr,
    /// The duties of the current term, while this node leads (aborted on loss).
    pub(crate) running: Option<AbortOnDropHandle<()>>,
}

/// Leadership may have moved.
#[derive(Message)]
#[rtype(result = "()")]
struct Moved {
    leading: bool,
}

impl Actor for LeaderDuties {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (mut metrics, me) = (self.cluster.metrics(), self.cluster.node_id);
        let address = ctx.address();
        ctx.spawn(fut::wrap_future(async move {
            let mut was = None;
            loop {
                let leading = metrics.borrow_and_update().current_leader == Some(me);
                if was != Some(leading) {
                    was = Some(leading);
                    if address.send(Moved { leading }).await.is_err() {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
}

impl Handler<Moved> for LeaderDuties {
    type Result = ();

    fn handle(&mut self, Moved { leading }: Moved, _: &mut Context<Self>) {
        // Dropping the handle aborts the duties of a term that ended.
        self.running = None;
        if !leading {
            return;
        }
        tracing::debug!("this node leads: starting the leader's duties");
        self.scheduler.do_send(Schedule);
        let duties = term_duties(
            self.cluster.clone(),
            self.membership.clone(),
            self.policy,
            self.me.clone(),
        );
        self.running = Some(AbortOnDropHandle::new(tokio::spawn(duties)));
    }
}

/// The one-off duties of a term: the address and the policy.
async fn term_duties(
    cluster: ClusterView,
    membership: Arc<dyn Membership>,
    wanted: QueuePolicy,
    me: NodeAddr,
) {
    match membership.record_own_address(me).await {
        Ok(true) => tracing::info!("recorded this node's new address in the membership"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not record this node's address"),
    }
    if cluster.state.read().queue.policy() == &wanted {
        return;
    }
    let system = Caller { principal: Principal::system(), role: Role::Admin };
    let proposal =
        Proposal { request_id: None, caller: system, command: Command::SetPolicy(wanted) };
    match cluster.write(proposal).await {
        Ok(written) if written.result.is_ok() => {
            tracing::info!(?wanted, "queue policy updated from the configuration");
        }
        Ok(written) => tracing::warn!(result = ?written.result, "queue policy not updated"),
        Err(e) => tracing::warn!(error = %e, "queue policy not updated"),
    }
}
