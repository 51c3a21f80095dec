//! Network loss on a job's home node (bits-spec §3): a transferring job goes to
//! TRANSIENT_ERROR with `BG_E_NETWORK_DISCONNECTED` as soon as the route to its origin
//! is gone, and is queued again as soon as the route returns, without waiting for its
//! minimum retry delay (600 s here, so a pass proves it was not waited for).
//!
//! Each test re-runs itself in a network namespace of its own (`unshare --net`), where
//! `ferryd` runs on 127.0.0.1; the origin listens in a second namespace, joined to the
//! first by a veth pair (10.201.0.1/30 here, 10.201.0.2/30 there), so no packet leaves
//! this machine and both namespaces die with the test. Where namespaces or veth pairs
//! cannot be made (not root, no `unshare`/`nsenter`/`ip`), the test says so and passes
//! without running.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use ferry_protocol::command::JobAction;
use ferry_protocol::{BitsCode, JobState, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::tokens;
use tokio::time::Instant;

use crate::download::same_as_origin;
use crate::support::{start_download, transfer_node, wait_for};

/// The node's end of the veth pair, and its address.
const LINK: &str = "fw0";
const HERE: &str = "10.201.0.1/30";
/// The origin's end, and its address.
const PEER: &str = "fw1";
const THERE: &str = "10.201.0.2/30";
const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const KIB: u64 = 1024;
/// The file: about two seconds at the origin's pace, so the cut lands mid-transfer.
const SIZE: u64 = 3 * 1024 * KIB;
/// Bytes durable before the link is cut (half the file: the rest takes about a second).
const BEFORE_CUT: u64 = SIZE / 2;
/// How soon the job must be in TRANSIENT_ERROR after the cut.
const LOSS_WITHIN: Duration = Duration::from_secs(2);
/// How soon it must be TRANSFERRED after the route returns.
const RETURN_WITHIN: Duration = Duration::from_secs(5);

/// Runs test `test` again in a network namespace of its own; true when the caller has
/// nothing left to do: that run passed (or this fails), or no namespace with a veth
/// pair can be made here (said so). False inside the namespace.
fn run_in_own_network(test: &str) -> anyhow::Result<bool> {
    if ferry_tests::in_own_network() {
        return Ok(false);
    }
    let usable = Command::new("unshare")
        .args([
            "--net", "ip", "link", "add", "fwcheck0", "type", "veth", "peer", "name", "fwcheck1",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let tools = ["nsenter", "sleep"].iter().all(|tool| {
        Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !usable || !tools {
        println!(
            "SKIPPED: no network namespace with a veth pair can be made here (needs root, unshare, ip, nsenter)"
        );
        return Ok(true);
    }
    ferry_tests::rerun_in_network_namespace(test)?;
    Ok(true)
}

/// Runs `program` with `args`; fails with what it wrote to stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The origin's network namespace, held by a `sleep`: killing it (on drop) ends the
/// namespace and, with it, the veth pair.
struct Namespace {
    holder: std::process::Child,
    /// `/proc/<holder>/ns/net`.
    path: String,
}

impl Namespace {
    /// A new, empty namespace.
    fn create() -> anyhow::Result<Self> {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot run unshare")?;
        let path = format!("/proc/{}/ns/net", holder.id());
        let ns = Self { holder, path };
        // `unshare` makes the namespace, then becomes `sleep`.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        while std::fs::read_link(&ns.path).ok().is_none_or(|theirs| theirs == ours) {
            anyhow::ensure!(std::time::Instant::now() < deadline, "unshare made no namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(ns)
    }

    /// Runs `ip args` inside the namespace.
    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let net = format!("--net={}", self.path);
        let mut all = vec![net.as_str(), "ip"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    /// A listener on `addr` inside the namespace (bound by a thread that moved there).
    fn bind(&self, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
        let file = std::fs::File::open(&self.path)?;
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            std::net::TcpListener::bind(addr)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the binding thread panicked"))?
        .with_context(|| format!("cannot bind {addr} in the origin's namespace"))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The origin's namespace joined to this one by a veth pair, and the origin in it.
async fn origin_across_a_veth() -> anyhow::Result<(Namespace, Origin)> {
    let ns = Namespace::create()?;
    let pid = ns.holder.id().to_string();
    run("ip", &["link", "add", LINK, "type", "veth", "peer", "name", PEER, "netns", &pid])?;
    run("ip", &["addr", "add", HERE, "dev", LINK])?;
    run("ip", &["link", "set", LINK, "up"])?;
    ns.ip(&["addr", "add", THERE, "dev", PEER])?;
    ns.ip(&["link", "set", PEER, "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let listener = ns.bind(SocketAddr::from((ORIGIN_IP, 0)))?;
    // 768 KiB/s on each of the node's two connections: about two seconds in all.
    let knobs = Knobs { rate_limit_per_connection: Some(768 * KIB), ..Knobs::default() };
    let origin =
        Origin::start_on(listener, OriginConfig { knobs, ..OriginConfig::default() }).await?;
    origin.add_file("/f.bin", Content::Pattern { seed: 201, len: SIZE });
    origin.add_file("/g.bin", Content::Pattern { seed: 202, len: SIZE / 4 });
    Ok((ns, origin))
}

/// Where the network is cut.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// `ip link set fw0 down` on the node's side: the route is deleted.
    OwnLink,
    /// `ip link set fw1 down` on the origin's side: the node's link loses its carrier
    /// and its route stays, marked `linkdown`.
    Carrier,
}

impl Cut {
    fn set(self, ns: &Namespace, state: &str) -> anyhow::Result<()> {
        match self {
            Self::OwnLink => run("ip", &["link", "set", LINK, state]),
            Self::Carrier => ns.ip(&["link", "set", PEER, state]),
        }
    }
}

/// A download through the veth, cut mid-transfer and restored: returns the times to
/// TRANSIENT_ERROR after the cut and to TRANSFERRED after the return.
async fn cut_and_restore(cut: Cut) -> anyhow::Result<(Duration, Duration)> {
    let (ns, origin) = origin_across_a_veth().await?;
    let node = transfer_node("connections = 2").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("f.bin");
    let slow_retry =
        PropertyChanges { minimum_retry_delay_secs: Some(600), ..PropertyChanges::default() };
    let id = start_download(&client, &[(origin.url("/f.bin"), local.clone())], slow_retry).await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = client.job(id).await?;
        anyhow::ensure!(job.state != JobState::Transferred, "done before the cut: too fast");
        if job.state == JobState::Transferring && job.progress.bytes_transferred >= BEFORE_CUT {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no progress: {job:?}\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second job waits QUEUED behind it (one background slot, lower priority).
    let queued_local = out.path().join("g.bin");
    let low = PropertyChanges {
        minimum_retry_delay_secs: Some(600),
        priority: Some(ferry_protocol::Priority::Low),
        ..PropertyChanges::default()
    };
    let queued =
        start_download(&client, &[(origin.url("/g.bin"), queued_local.clone())], low).await?;
    anyhow::ensure!(client.job(queued).await?.state == JobState::Queued, "the second job waits");
    // A third job in TRANSIENT_ERROR for another reason (nothing listens at its port),
    // in the foreground so that it runs at once: retried only after 600 s, unless the
    // network comes back.
    let refused = PropertyChanges {
        minimum_retry_delay_secs: Some(600),
        priority: Some(ferry_protocol::Priority::Foreground),
        ..PropertyChanges::default()
    };
    let nobody = format!("http://{ORIGIN_IP}:9/x.bin");
    let other = start_download(&client, &[(nobody, out.path().join("x.bin"))], refused).await?;
    let failed =
        wait_for(&node, &client, other, &[JobState::TransientError], LOSS_WITHIN * 5).await?;
    let errors_before = failed.error_count;

    cut.set(&ns, "down")?;
    let cut_at = Instant::now();
    let job = wait_for(&node, &client, id, &[JobState::TransientError], LOSS_WITHIN * 3).await?;
    let lost_after = cut_at.elapsed();
    let error = job.error.context("TRANSIENT_ERROR without an error")?;
    anyhow::ensure!(
        error.code == BitsCode::BG_E_NETWORK_DISCONNECTED,
        "{:?}: {} ({})",
        cut,
        error.code,
        error.detail
    );
    println!("{cut:?}: TRANSIENT_ERROR after {lost_after:?}: {}", error.detail);
    anyhow::ensure!(job.progress.bytes_transferred < SIZE, "nothing left to transfer");
    // The queued job too (BITS: QUEUED → TRANSIENT_ERROR when the network is lost).
    let waiting =
        wait_for(&node, &client, queued, &[JobState::TransientError], LOSS_WITHIN * 3).await?;
    let queued_lost_after = cut_at.elapsed();
    let code = waiting.error.map(|e| e.code);
    anyhow::ensure!(code == Some(BitsCode::BG_E_NETWORK_DISCONNECTED), "queued job: {code:?}");
    println!("{cut:?}: the queued job in TRANSIENT_ERROR after {queued_lost_after:?}");
    // It waits while the route is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    anyhow::ensure!(client.job(id).await?.state == JobState::TransientError, "re-queued too soon");

    cut.set(&ns, "up")?;
    let back_at = Instant::now();
    let moving =
        [JobState::Queued, JobState::Connecting, JobState::Transferring, JobState::Transferred];
    wait_for(&node, &client, id, &moving, RETURN_WITHIN * 3).await?;
    let requeued_after = back_at.elapsed();
    wait_for(&node, &client, id, &[JobState::Transferred], RETURN_WITHIN * 3).await?;
    let done_after = back_at.elapsed();
    println!(
        "{cut:?}: queued again {requeued_after:?} and TRANSFERRED {done_after:?} after the link returned"
    );
    client.act(id, JobAction::Complete).await?;
    anyhow::ensure!(
        same_as_origin(&origin, "/f.bin", &local)?,
        "the file differs from the origin's"
    );
    // The network's return retried the other transient error at once (BITS re-queues
    // every transient-error job on reconnect).
    let retried = client.job(other).await?;
    anyhow::ensure!(
        retried.error_count > errors_before || retried.state != JobState::TransientError,
        "the other transient error was not retried when the network returned: {retried:?}"
    );
    client.act(other, JobAction::Cancel).await?;
    wait_for(&node, &client, queued, &[JobState::Transferred], RETURN_WITHIN * 3).await?;
    client.act(queued, JobAction::Complete).await?;
    anyhow::ensure!(same_as_origin(&origin, "/g.bin", &queued_local)?, "the queued job's file");
    drop(origin);
    drop(ns);
    Ok((lost_after, done_after))
}

/// Checks both figures against their bounds.
fn within_bounds((lost_after, done_after): (Duration, Duration)) -> anyhow::Result<()> {
    anyhow::ensure!(lost_after <= LOSS_WITHIN, "TRANSIENT_ERROR only after {lost_after:?}");
    anyhow::ensure!(
        done_after <= RETURN_WITHIN,
        "TRANSFERRED only {done_after:?} after the return"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_taken_down_parks_the_job_at_once_and_its_return_requeues_it() -> anyhow::Result<()>
{
    if run_in_own_network(
        "netwatch::a_link_taken_down_parks_the_job_at_once_and_its_return_requeues_it",
    )? {
        return Ok(());
    }
    within_bounds(cut_and_restore(Cut::OwnLink).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_carrier_parks_the_job_at_once_and_its_return_requeues_it() -> anyhow::Result<()> {
    if run_in_own_network(
        "netwatch::a_lost_carrier_parks_the_job_at_once_and_its_return_requeues_it",
    )? {
        return Ok(());
    }
    within_bounds(cut_and_restore(Cut::Carrier).await?)
}
