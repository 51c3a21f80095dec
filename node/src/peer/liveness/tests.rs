//! Liveness: the pure record of answers, and the component pinging a real member.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::peer::endpoint::PeerEndpoint;
use crate::peer::identity::{ClusterCa, NodeIdentity};
use crate::peer::rpc::AddressBook;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_member_is_judged_from_its_last_answer_or_from_when_this_node_began_to_look() {
    let start = Instant::now();
    let mut answers = Answers::new(start);
    // Nobody answered yet: everyone has the full time from the start.
    assert!(answers.alive(2, 5 * SECOND, start, start + 5 * SECOND));
    assert!(!answers.alive(2, 5 * SECOND, start, start + 6 * SECOND));
    answers.record(2, start + 3 * SECOND);
    assert_eq!(answers.last_answer(2), Some(start + 3 * SECOND));
    assert!(answers.alive(2, 5 * SECOND, start, start + 8 * SECOND));
    assert!(!answers.alive(2, 5 * SECOND, start, start + 9 * SECOND));
    // An older answer arriving late does not move the last one back.
    answers.record(2, start + SECOND);
    assert_eq!(answers.last_answer(2), Some(start + 3 * SECOND));
    // An asker that began to look at 20 s (took over a duty): every member has the
    // full time from there, while an asker looking from the start judges as before.
    let took_over = start + 20 * SECOND;
    assert!(answers.alive(2, 5 * SECOND, took_over, start + 24 * SECOND));
    assert!(!answers.alive(2, 5 * SECOND, start, start + 24 * SECOND));
    assert!(answers.alive(7, 5 * SECOND, took_over, start + 25 * SECOND));
    assert!(!answers.alive(7, 5 * SECOND, took_over, start + 26 * SECOND));
    assert_eq!(answers.last_answer(2), Some(start + 3 * SECOND), "the answers are kept");
}

fn member(ca: &ClusterCa, id: NodeId) -> anyhow::Result<(Arc<PeerEndpoint>, Peers)> {
    let key = NodeIdentity::new_key()?;
    let identity =
        NodeIdentity::new(id, &key, ca.issue(id, key.public_key_raw())?, ca.cert().clone());
    let endpoint = PeerEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &identity)?;
    let router = Arc::new(Router::default());
    Liveness::register(&router);
    endpoint.serve(router.handler(), None, None);
    let peers = Peers::new(id, endpoint.clone(), Arc::new(AddressBook::default()), router);
    Ok((endpoint, peers))
}

#[tokio::test]
async fn a_member_that_stops_answering_is_no_longer_alive() -> anyhow::Result<()> {
    let ca = ClusterCa::generate()?;
    let (one, peers) = member(&ca, 1)?;
    let (two, _) = member(&ca, 2)?;
    let addrs = [(1, one.local_addr()?.to_string()), (2, two.local_addr()?.to_string())];
    peers.book().update(addrs.into_iter());
    let liveness = Liveness::start(1, peers);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(liveness.last_answer(2).is_some(), "node 2 answered no ping");
    assert!(liveness.alive(2, SECOND, start));
    assert!(liveness.alive(1, Duration::ZERO, start), "a node is alive to itself");
    two.close().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!liveness.alive(2, SECOND, start), "node 2 is gone");
    assert!(liveness.alive(2, 10 * SECOND, start));
    assert!(liveness.alive(2, SECOND, Instant::now()), "an asker starting now gives it time");
    one.close().await;
    Ok(())
}
