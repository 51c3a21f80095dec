//! [`Replies`]: the first bytes of an upload-reply job's reply (`GetReplyData`), read on
//! the job's home node through its owner's sandbox ([`ReplyData`] when another node
//! asks). Serves [`ReplyData`] for other members.

use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::ClusterError;
use ferry_protocol::codec::ByteBuf;
use ferry_protocol::job::MAX_REPLY_DATA;
use ferry_protocol::peer::ReplyData;
use ferry_protocol::{JobId, JobState, NodeId};

use crate::peer::rpc::{Peers, Router};
use crate::raft::StateMachineStore;

/// How long the home node has to answer.
const REPLY_TIMEOUT: Duration = Duration::from_millis(1500);

/// Reading replies, here or at their home node.
pub(crate) struct Replies {
    /// This node's Raft id.
    pub(super) node_id: NodeId,
    /// The applied state: where the job lives, where its reply is.
    pub(super) state: StateMachineStore,
    /// Every principal's sandbox: replies are read through it.
    pub(super) sandboxes: Arc<crate::fs::Sandboxes>,
    /// Other home nodes are asked through it.
    pub(super) peers: Peers,
}

impl Replies {
    /// Serves [`ReplyData`] for other members.
    pub(super) fn register(self: &Arc<Self>, router: &Router) {
        let replies = self.clone();
        router.add_handler::<ReplyData, _, _>(move |_, ReplyData { job }| {
            let replies = replies.clone();
            async move { replies.local_reply_data(job).await.map(ByteBuf::from) }
        });
    }

    /// The first bytes of job `job`'s reply, from its home node.
    pub(super) async fn reply_data(&self, job: JobId) -> Result<Vec<u8>, ClusterError> {
        let home = self.state.read().queue.job(&job).map(|j| j.home_node());
        match home {
            Some(home) if home != self.node_id => Ok(self
                .peers
                .call(home, &ReplyData { job }, REPLY_TIMEOUT)
                .await
                .map(ByteBuf::into_vec)?),
            _ => self.local_reply_data(job).await,
        }
    }

    /// The first bytes of job `job`'s reply, read here (this is its home node).
    async fn local_reply_data(&self, job: JobId) -> Result<Vec<u8>, ClusterError> {
        let (owner, paths) = {
            let machine = self.state.read();
            let job = machine
                .queue
                .job(&job)
                .ok_or_else(|| ClusterError::Unavailable(format!("job {job} is not here")))?;
            if job.home_node() != self.node_id {
                return Err(ClusterError::Unavailable(format!(
                    "job {} lives on node {}",
                    job.id(),
                    job.home_node()
                )));
            }
            // Complete renames the temporary file: before it is recorded, either may hold it.
            let paths = [job.reply_temporary(), job.reply_path()];
            let paths = if job.state() == JobState::Acknowledged {
                [paths[1].clone(), paths[0].clone()]
            } else {
                paths
            };
            (job.owner().clone(), paths)
        };
        let [Some(first), Some(second)] = paths else {
            return Err(ClusterError::Unavailable("the job has no reply".into()));
        };
        let sandboxes = self.sandboxes.clone();
        let read = tokio::task::spawn_blocking(move || {
            let paths = vec![first.into(), second.into()];
            crate::transfer::read_start(&sandboxes, &owner, paths, MAX_REPLY_DATA + 1)
        })
        .await;
        match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(ClusterError::Unavailable(format!("the reply file: {e}"))),
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }
}
