//! The cluster's principals as this node applied them (see
//! `ferry_protocol::principals`): where the API, the event bus, the upload server and
//! the sandboxes look up tokens and roots that the node's own configuration does not
//! name.

use std::path::PathBuf;
use std::time::Duration;

use ferry_coordinator::auth::Directory;
use ferry_protocol::command::{Command, Proposal};
use ferry_protocol::principals::{FORMAT, PrincipalCommand, TokenDigest};
use ferry_protocol::{Caller, Principal, Role};

use crate::raft::StateMachineStore;
use crate::replica::ClusterView;

/// The principals table of the applied state.
pub(crate) struct AppliedPrincipals(pub(crate) StateMachineStore);

impl Directory for AppliedPrincipals {
    fn caller(&self, digest: &[u8; 32]) -> Option<Caller> {
        self.0.read().queue.principals().caller(digest)
    }

    fn entry(&self, principal: &Principal) -> Option<(Role, Option<Vec<PathBuf>>)> {
        let machine = self.0.read();
        let record = machine.queue.principals().get(principal)?;
        let roots = record.roots.as_ref().map(|list| list.iter().map(PathBuf::from).collect());
        Some((record.role, roots))
    }
}

/// Attempts at seeding before giving up (about five minutes).
const SEED_ATTEMPTS: u32 = 64;

/// On the cluster's first node: makes its generated admin token the cluster's first
/// principal, so that it works on every member. Retries while the cluster has no leader
/// or a member still runs a build of format 8 (a rolling upgrade: the next start tries
/// again after the attempts run out); a table that holds a principal, revoked ones
/// included, ends it.
pub(crate) async fn seed_admin(cluster: ClusterView, digest: TokenDigest) {
    let mut wait = Duration::from_millis(100);
    for _ in 0..SEED_ATTEMPTS {
        if cluster.state.read().queue.principals().records().next().is_some() {
            return;
        }
        if let Err(e) =
            crate::cluster::check_formats(cluster.clone(), Default::default(), FORMAT).await
        {
            tracing::debug!(error = %e, "seeding the admin token: waiting for the members");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            continue;
        }
        let proposal = Proposal {
            request_id: None,
            caller: crate::transfer::system_caller(),
            command: Command::Principals(PrincipalCommand::SeedAdmin { digest }),
        };
        match cluster.write(proposal).await {
            Ok(written) if written.result.is_ok() => {
                tracing::info!("the generated admin token is the cluster's first principal");
                return;
            }
            Ok(written) => {
                tracing::warn!(result = ?written.result, "the admin token was not seeded")
            }
            Err(e) => tracing::debug!(error = %e, "seeding the admin token: retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    tracing::warn!("the generated admin token could not be made a principal of the cluster");
}
