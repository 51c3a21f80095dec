//! Which formats the members read (see `ferry_protocol::codec`): a command of a newer
//! format is proposed only once every member reads it, so that a rolling upgrade never
//! hands a member an entry it cannot decode.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_coordinator::ClusterError;
use ferry_protocol::NodeId;
use ferry_protocol::codec::FORMAT_VERSION;
use ferry_protocol::peer::{Formats, RemoteError};

use crate::error::Error;
use crate::peer::rpc::Router;
use crate::replica::ClusterView;

/// How long a member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves [`Formats`]: the newest format this build reads.
pub(crate) fn register(router: &Router) {
    router.add_handler::<Formats, _, _>(|_, Formats| async { Ok(FORMAT_VERSION) });
}

/// The newest format each member was seen to read: a member that answered once is not
/// asked again for that format or an older one, so a member that is down later does not
/// hold up the features its build has.
#[derive(Default)]
pub(crate) struct SeenFormats(Mutex<BTreeMap<NodeId, u8>>);

impl SeenFormats {
    fn get(&self, node: NodeId) -> u8 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&node).copied().unwrap_or(0)
    }

    fn set(&self, node: NodeId, reads: u8) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(node, reads);
    }
}

/// Asks every member which formats it reads (unless it said so before); fails naming
/// the first that does not read `version` (or does not answer).
pub(crate) async fn check(
    cluster: ClusterView,
    seen: Arc<SeenFormats>,
    version: u8,
) -> Result<(), ClusterError> {
    for node in cluster.member_ids() {
        if seen.get(node) >= version {
            continue;
        }
        let refused = |why: String| {
            ClusterError::Unavailable(format!(
                "member {node} {why}: this needs format {version} on every member; finish \
                 the rolling upgrade first"
            ))
        };
        let answer = cluster.call(node, &Formats, ASK_TIMEOUT).await.map_err(|e| match e {
            Error::Peer { cause, .. } => *cause,
            other => other,
        });
        match answer {
            Ok(reads) if reads >= version => seen.set(node, reads),
            Ok(reads) => return Err(refused(format!("reads formats up to {reads}"))),
            Err(Error::Remote(RemoteError::UnknownKind(_))) => {
                return Err(refused("runs a build of format 8".into()));
            }
            Err(e) => return Err(refused(format!("did not say which formats it reads ({e})"))),
        }
    }
    Ok(())
}
