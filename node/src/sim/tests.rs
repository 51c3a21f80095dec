//! Swarm properties of the simulated fleet, small enough for debug builds: every
//! node finishes, the origin sends the file about once, no holder serves more than
//! its slots, pieces spread (most nodes serve others), and a node's death does not
//! stop the others.

use std::time::Duration;

use super::{MB, Swarm, run};

/// 50 nodes, 400 MB (48 chunks of 8 MiB), 100 MB/s links and origin.
fn fleet() -> Swarm {
    Swarm::new(50, 400 * MB, 100.0 * MB as f64, 100.0 * MB as f64)
}

#[test]
fn a_fleet_is_served_by_a_swarm_not_a_star() {
    let swarm = fleet();
    let outcome = run(&swarm);
    assert_eq!(outcome.unfinished, 0);
    assert_eq!(outcome.finished.len(), 50);
    let ratio = outcome.egress_ratio(swarm.file_bytes);
    assert!(ratio <= 1.05, "origin egress {ratio:.3}× the file");
    assert!(outcome.max_serving <= swarm.max_serving);
    // A swarm: most nodes serve several others; no node serves everyone.
    assert!(outcome.idle_servers <= 5, "{} nodes served nobody", outcome.idle_servers);
    assert!(outcome.mean_served_peers >= 3.0, "{outcome:?}");
    // The floor is 4 s (the file over one link); a star would take 50 × that.
    let p99 = outcome.percentile(99.0).unwrap_or_default();
    assert!(
        p99 < Duration::from_secs(6),
        "p99 {p99:?}: {:?}",
        (outcome.percentile(50.0), outcome.origin_last, outcome.busy_answers)
    );
}

#[test]
fn a_dead_node_does_not_stop_the_others() {
    let mut swarm = fleet();
    // Two members die: one early (its origin share is still to fetch), one midway.
    swarm.failures = vec![(20, Duration::from_millis(100)), (7, Duration::from_secs(2))];
    let outcome = run(&swarm);
    assert_eq!(outcome.unfinished, 0, "{outcome:?}");
    assert_eq!(outcome.finished.len(), 48);
    let ratio = outcome.egress_ratio(swarm.file_bytes);
    assert!(ratio <= 1.1, "origin egress {ratio:.3}× the file");
}

#[test]
fn the_same_swarm_gives_the_same_outcome() {
    let swarm = Swarm::new(10, 80 * MB, 100.0 * MB as f64, 100.0 * MB as f64);
    let (a, b) = (run(&swarm), run(&swarm));
    assert_eq!(a.finished, b.finished);
    assert_eq!(a.origin_bytes, b.origin_bytes);
}

/// `swarm` in the pieces its figures below were taken with: 8 MiB, four peer workers
/// and serves, an origin window of eight pieces (64 MiB).
fn eight_mib(mut swarm: Swarm) -> Swarm {
    swarm.chunk_size = 8 << 20;
    swarm.peer_workers = 4;
    swarm.max_serving = 4;
    swarm.window = 8;
    swarm
}

#[test]
fn a_peer_worker_fetches_its_next_piece_while_the_last_is_written() {
    // Writes of 300 ms, pieces of 84 ms at full link: four nodes whose peer workers
    // waited for each write before asking again took 6.55 s; fetching meanwhile, 4.91 s.
    let mut swarm = eight_mib(Swarm::new(4, 400 * MB, 100.0 * MB as f64, 100.0 * MB as f64));
    swarm.write = Duration::from_millis(300);
    let outcome = run(&swarm);
    assert_eq!(outcome.unfinished, 0);
    let p99 = outcome.percentile(99.0).unwrap_or_default();
    assert!(p99 < Duration::from_millis(5_500), "p99 {p99:?}");
}

#[test]
fn waiting_workers_ask_again_as_soon_as_pieces_come_free() {
    // Workers told to wait poll only every 200 ms here; the shell's desk wakes them as
    // soon as an ask frees pieces (a member's origin piece reported, say), so the
    // origin's window moves on at once instead of one poll later.
    let mut swarm = eight_mib(Swarm::new(50, 400 * MB, 100.0 * MB as f64, 100.0 * MB as f64));
    swarm.idle = Duration::from_millis(200);
    let outcome = run(&swarm);
    assert_eq!(outcome.unfinished, 0);
    // The floor is 4 s: 4.37 s with the wake, 4.65 s waiting for the polls.
    assert!(outcome.origin_last < Duration::from_millis(4_500), "{outcome:?}");
}

#[test]
fn no_node_holds_more_than_its_link_carried() {
    let mut swarm = fleet();
    swarm.marks = [1, 2, 3].map(Duration::from_secs).to_vec();
    let outcome = run(&swarm);
    assert_eq!(outcome.held.len(), 3, "one note per mark: {:?}", outcome.held);
    let mut before = 0;
    for held in &outcome.held {
        let carried = swarm.link * held.at.as_secs_f64();
        assert!(held.max as f64 <= carried, "{held:?}: more than the link carried");
        assert!(held.min <= held.p50 && held.p50 <= held.max, "{held:?}");
        assert!(held.p50 >= before, "{held:?}: the median node held less than before");
        before = held.p50;
    }
    // By 3 s (the file takes 4 s over one link) every node holds pieces.
    assert!(outcome.held[2].min > 0, "{:?}", outcome.held[2]);
}

#[test]
fn pipelined_peer_workers_hide_the_round_trip_before_each_piece() {
    // One peer worker and one serve per node, 5 ms each way: a worker that asks only
    // once its piece is in leaves its download idle for 10 ms per 21 ms piece, and for
    // every busy answer after it (3.97 s pipelined, 4.21 s one piece at a time).
    let mut swarm = Swarm::new(8, 200 * MB, 100.0 * MB as f64, 100.0 * MB as f64);
    (swarm.peer_workers, swarm.max_serving) = (1, 1);
    swarm.latency = Duration::from_millis(5);
    let pipelined = run(&swarm);
    swarm.pipeline = 0;
    let one_at_a_time = run(&swarm);
    for outcome in [&pipelined, &one_at_a_time] {
        assert_eq!(outcome.unfinished, 0, "{outcome:?}");
        assert!(outcome.egress_ratio(swarm.file_bytes) <= 1.05, "{outcome:?}");
    }
    let (fast, slow) = (pipelined.percentile(50.0), one_at_a_time.percentile(50.0));
    let (fast, slow) = (fast.unwrap_or_default(), slow.unwrap_or_default());
    assert!(fast.as_secs_f64() < 0.97 * slow.as_secs_f64(), "{fast:?} against {slow:?}");
}
