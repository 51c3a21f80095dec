//! The container deliverables end to end: the image of `deploy/docker/Dockerfile`
//! (target `prebuilt`, holding this build's `ferryd` and `ferry`) and the three-node
//! cluster of `deploy/compose.yaml`, driven from the host through the API ports it
//! publishes on loopback. 500 jobs through one node, the leader's container stopped, a
//! node cut off the network and reconnected, a rolling restart under a writer; and one
//! container started with environment variables alone.
//!
//! Skipped, with a notice, where docker or a compose command (`docker compose`, else
//! `docker-compose`) cannot be used, or the base image is missing:
//! `deploy/docker/make-base-image.sh` builds it (`.ci/run` does).
//! `FERRY_TEST_BASE_IMAGE` names another base (any Debian 12 image).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use ferry_coordinator::Client;
use ferry_protocol::api::{ClusterStatus, JobInfo, JobList};
use ferry_protocol::{JobId, JobType, NewFile, NewJob};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::support::new_job;

/// The administrator's token, a compose secret (the docker run test gives it inline).
const TOKEN: &str = "compose-admin-token-0123456789";
const DEFAULT_BASE: &str = "ferry-base:bookworm";
const SERVICES: [&str; 3] = ["ferry1", "ferry2", "ferry3"];
/// The container user of the image.
const FERRY_UID: u32 = 10001;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// What the container tests need: a working docker, a compose command and the base
/// image; otherwise why they skip.
struct Docker {
    compose: Vec<String>,
    base: String,
}

fn docker() -> Result<Docker, String> {
    let works = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !works("docker", &["info"]) {
        return Err("docker is not available (`docker info` failed)".into());
    }
    let compose: Vec<String> = if works("docker", &["compose", "version"]) {
        vec!["docker".into(), "compose".into()]
    } else if works("docker-compose", &["version"]) {
        vec!["docker-compose".into()]
    } else {
        return Err("neither `docker compose` nor `docker-compose` is installed".into());
    };
    let base = std::env::var("FERRY_TEST_BASE_IMAGE").unwrap_or_else(|_| DEFAULT_BASE.into());
    if !works("docker", &["image", "inspect", &base]) {
        return Err(format!(
            "the base image {base} is missing (deploy/docker/make-base-image.sh builds it)"
        ));
    }
    Ok(Docker { compose, base })
}

/// Runs a command to its end, at most `limit`: its stdout, or an error with its stderr.
async fn run(
    program: &str,
    args: &[&str],
    envs: &[(String, String)],
    limit: Duration,
) -> anyhow::Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .map_err(|_| anyhow!("`{shown}` did not finish within {limit:?}"))?
        .with_context(|| format!("cannot run `{shown}`"))?;
    ensure!(
        output.status.success(),
        "`{shown}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// Free TCP ports on 127.0.0.1 (held together while chosen, so they differ).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a free port on 127.0.0.1")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// The image built for one test from this build's binaries; removed at the end.
struct Image {
    tag: String,
}

impl Image {
    async fn build(base: &str) -> anyhow::Result<Self> {
        let context = tempfile::Builder::new().prefix("ferry-image-").tempdir()?;
        for name in ["ferryd", "ferry"] {
            let binary = ferry_tests::binary(name)?;
            std::fs::copy(&binary, context.path().join(name))
                .with_context(|| format!("copying {} into the build context", binary.display()))?;
        }
        let image = Self { tag: format!("ferry-it:{}", short_id()) };
        let dockerfile = repo_root().join("deploy/docker/Dockerfile");
        let started = Instant::now();
        run(
            "docker",
            &[
                "build",
                "-q",
                "-f",
                &dockerfile.to_string_lossy(),
                "--target",
                "prebuilt",
                "--build-arg",
                &format!("BASE={base}"),
                "-t",
                &image.tag,
                &context.path().to_string_lossy(),
            ],
            &[],
            Duration::from_secs(180),
        )
        .await
        .context("building deploy/docker/Dockerfile --target prebuilt")?;
        eprintln!("built {} in {:.1?}", image.tag, started.elapsed());
        Ok(image)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["image", "rm", "-f", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The cluster identity and the token file, as compose secrets: readable by the
/// containers' user (compose without swarm bind-mounts them as they are).
fn secrets(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let identity = dir.join("ferry-identity");
    let made = std::process::Command::new(ferry_tests::binary("ferryd")?)
        .arg("init-cluster")
        .arg("--out")
        .arg(&identity)
        .output()
        .context("running ferryd init-cluster")?;
    ensure!(made.status.success(), "ferryd init-cluster failed: {made:?}");
    let token = dir.join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let as_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&token)?) == 0;
    let mut paths = vec![identity.clone(), token.clone()];
    for entry in std::fs::read_dir(&identity)? {
        paths.push(entry?.path());
    }
    for path in &paths {
        if as_root {
            std::os::unix::fs::chown(path, Some(FERRY_UID), Some(FERRY_UID))
                .with_context(|| format!("chown {}", path.display()))?;
        } else {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = if path.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok((identity, token))
}

/// A compose project of `deploy/compose.yaml`; `down -v` at the end, failed or not.
struct Project {
    compose: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose.yaml");
        let mut args: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        args.extend(["-f", file, "-p", self.name.as_str()]);
        args.extend(rest);
        args
    }

    async fn compose(&self, rest: &[&str], limit: Duration) -> anyhow::Result<String> {
        run(&self.compose[0], &self.args(rest), &self.env, limit).await
    }

    async fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self.compose(&["ps", "-q", service], Duration::from_secs(30)).await?;
        ensure!(!id.is_empty(), "compose knows no container of {service}");
        Ok(id)
    }

    /// The last lines of every node's log, for failure messages.
    fn logs(&self) -> String {
        std::process::Command::new(&self.compose[0])
            .args(self.args(&["logs", "--no-color", "--tail", "30"]))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(no logs: {e})"))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let down = std::process::Command::new(&self.compose[0])
            .args(self.args(&["down", "-v", "--remove-orphans", "-t", "5"]))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output();
        match down {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "compose down -v of {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run compose down -v of {}: {e}", self.name),
        }
    }
}

/// A container started with `docker run`; removed with its volumes at the end.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One node of the compose cluster as the host reaches it.
struct Node {
    service: &'static str,
    container: String,
    url: String,
    /// One attempt per call: for probes.
    probe: Client,
    /// The typed client with its retries (503, connection errors) under one key.
    client: Client,
}

/// An HTTP client that trusts the cluster CA only, for requests the typed client does
/// not make (a chosen `Idempotency-Key`, `?consistency=local`).
fn http_client(ca: &[u8]) -> anyhow::Result<reqwest::Client> {
    ferry_coordinator::client::ensure_crypto_provider();
    let roots = reqwest::Certificate::from_pem_bundle(ca).context("the CA is not PEM")?;
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

/// The job `name`: one file from a fictional origin, never started (new jobs are
/// SUSPENDED).
fn job(name: &str) -> NewJob {
    new_job(
        name,
        JobType::Download,
        vec![NewFile {
            remote_url: format!("https://origin.invalid/{name}.bin"),
            local_path: format!("/srv/ferry/{name}.bin"),
            ranges: vec![],
            sha256: None,
        }],
    )
}

/// What one create attempt came to.
enum Outcome {
    Created(JobId),
    /// 503 or a connection error: to be sent again with the same key.
    Retry(String),
    Failed(String),
}

async fn create_once(http: &reqwest::Client, url: &str, key: &str, spec: &NewJob) -> Outcome {
    let sent = http
        .post(format!("{url}/v1/jobs"))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .json(spec)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Outcome::Retry(format!("connection: {e}")),
    };
    let status = response.status();
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return Outcome::Retry("503".into());
    }
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Outcome::Retry(format!("connection (reading the answer): {e}")),
    };
    if status != reqwest::StatusCode::CREATED {
        return Outcome::Failed(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    match serde_json::from_slice::<JobInfo>(&body) {
        Ok(job) => Outcome::Created(job.id),
        Err(e) => Outcome::Failed(format!("201 without a job ({e}): {body:?}")),
    }
}

/// Creates `count` jobs `<prefix>-<n>` through `client`, `concurrency` at a time.
async fn create_many(
    client: &Client,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<JobId>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, prefix) = (client.clone(), next.clone(), prefix.to_string());
        workers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(ids);
                }
                let name = format!("{prefix}-{n}");
                let created = client
                    .create_job(&job(&name))
                    .await
                    .with_context(|| format!("creating job {name} through {}", client.base()))?;
                ids.push(created.id);
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("a creating task panicked")??);
    }
    ensure!(all.len() == count, "{} jobs acknowledged of {count}", all.len());
    Ok(all)
}

/// Every job `node` lists (all users), read linearizably or from its own state.
async fn listed(
    http: &reqwest::Client,
    node: &Node,
    local: bool,
) -> anyhow::Result<BTreeMap<JobId, String>> {
    let consistency = if local { "local" } else { "linearizable" };
    let url = format!("{}/v1/jobs?all_users=true&consistency={consistency}", node.url);
    let response = http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .with_context(|| format!("{}: GET {url}", node.service))?;
    let status = response.status();
    let body =
        response.bytes().await.with_context(|| format!("{}: reading {url}", node.service))?;
    ensure!(
        status.is_success(),
        "{}: GET {url}: HTTP {status}: {}",
        node.service,
        String::from_utf8_lossy(&body)
    );
    let list: JobList = serde_json::from_slice(&body)
        .with_context(|| format!("{}: the job list is not JSON", node.service))?;
    Ok(list.jobs.into_iter().map(|j| (j.id, j.display_name)).collect())
}

/// The cluster as all three nodes see it: every member a voter answering, one leader.
struct Whole {
    leader: u64,
    /// Node id of each service, in `SERVICES` order.
    ids: Vec<u64>,
}

impl Whole {
    fn index_of(&self, node_id: u64) -> anyhow::Result<usize> {
        self.ids.iter().position(|&id| id == node_id).context("the leader is no service's node")
    }
}

fn describe(status: &ClusterStatus) -> String {
    let members: Vec<String> = status
        .members
        .iter()
        .map(|m| {
            format!("{}:{}/{}/{}", m.node_id, m.role, m.health, m.state.as_deref().unwrap_or("-"))
        })
        .collect();
    format!(
        "node {} leader {:?} term {} members [{}]",
        status.node_id,
        status.leader,
        status.term,
        members.join(", ")
    )
}

async fn whole(nodes: &[Node]) -> anyhow::Result<Whole> {
    let mut ids = Vec::new();
    let mut leaders = BTreeSet::new();
    for node in nodes {
        let status = node
            .probe
            .cluster()
            .await
            .with_context(|| format!("{}: GET /v1/cluster", node.service))?;
        let leader = status
            .leader
            .with_context(|| format!("{} knows no leader: {}", node.service, describe(&status)))?;
        ensure!(
            status.members.len() == 3
                && status.members.iter().all(|m| m.role == "voter" && m.health == "ok"),
            "{}: {}",
            node.service,
            describe(&status)
        );
        leaders.insert(leader);
        ids.push(status.node_id);
    }
    ensure!(leaders.len() == 1, "the nodes name different leaders: {leaders:?}");
    Ok(Whole { leader: leaders.into_iter().next().unwrap_or_default(), ids })
}

async fn wait_whole(nodes: &[Node], limit: Duration) -> anyhow::Result<(Whole, Duration)> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match whole(nodes).await {
            Ok(whole) => return Ok((whole, started.elapsed())),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the cluster was not whole within {limit:?}: {last}")
}

/// What the writer of the rolling restart saw.
#[derive(Default)]
struct Tally {
    acked: Vec<(String, JobId)>,
    retried_503: u64,
    retried_connection: u64,
    failures: Vec<String>,
}

/// Creates jobs until `stop`, each with its own `Idempotency-Key`, each request to the
/// next node; a 503 or a connection error sends the same request (same key) to the
/// next node, for up to a minute; anything else is a failure.
async fn writer(
    http: reqwest::Client,
    urls: Vec<String>,
    prefix: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut target = 0usize;
    for n in 0..20_000usize {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = format!("{prefix}-{n}");
        let spec = job(&key);
        let began = Instant::now();
        loop {
            let url = &urls[target % urls.len()];
            target += 1;
            match create_once(&http, url, &key, &spec).await {
                Outcome::Created(id) => {
                    tally.lock().await.acked.push((key.clone(), id));
                    break;
                }
                Outcome::Retry(why) => {
                    let mut tally = tally.lock().await;
                    if why == "503" {
                        tally.retried_503 += 1;
                    } else {
                        tally.retried_connection += 1;
                    }
                    if began.elapsed() > Duration::from_secs(60) {
                        tally.failures.push(format!("{key}: still failing after 60 s: {why}"));
                        return;
                    }
                }
                Outcome::Failed(why) => {
                    tally.lock().await.failures.push(format!("{key} via {url}: {why}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_leader_loss_partition_and_rolling_restart() -> anyhow::Result<()>
{
    let docker = match docker() {
        Ok(docker) => docker,
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let started = Instant::now();
    let image = Image::build(&docker.base).await?;
    let scratch = tempfile::Builder::new().prefix("ferry-compose-").tempdir()?;
    let (identity, token_file) = secrets(scratch.path())?;
    let ca = std::fs::read(identity.join("ca.pem")).context("reading the identity's ca.pem")?;
    let ports = free_ports(3)?;
    let name = format!("ferryit{}", short_id());
    let mut env = vec![
        ("FERRY_IMAGE".to_string(), image.tag.clone()),
        ("FERRY_IDENTITY_DIR".to_string(), identity.to_string_lossy().into_owned()),
        ("FERRY_API_TOKEN_FILE".to_string(), token_file.to_string_lossy().into_owned()),
    ];
    for (i, port) in ports.iter().enumerate() {
        env.push((format!("FERRY_API_PORT_{}", i + 1), port.to_string()));
    }
    let project = Project { compose: docker.compose.clone(), name, env };
    project.compose(&["up", "-d"], Duration::from_secs(120)).await?;
    let result = scenario(&project, &ports, &ca, &docker.base).await;
    if result.is_err() {
        eprintln!("compose logs:\n{}", project.logs());
    }
    drop(project);
    drop(image);
    eprintln!("compose test: {:.1?} in all", started.elapsed());
    result
}

async fn scenario(project: &Project, ports: &[u16], ca: &[u8], base: &str) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    for (service, port) in SERVICES.into_iter().zip(ports) {
        let url = format!("https://127.0.0.1:{port}");
        nodes.push(Node {
            service,
            container: project.container(service).await?,
            probe: Client::with_ca(&url, Some(TOKEN.into()), ca)?.with_attempts(1),
            client: Client::with_ca(&url, Some(TOKEN.into()), ca)?,
            url,
        });
    }
    let http = http_client(ca)?;
    let run = &project.name;

    // Formed: ferry1 founds after trying to join for bootstrap_wait_secs, the others join.
    let (first, formed) = wait_whole(&nodes, Duration::from_secs(120)).await?;
    eprintln!("cluster formed: 3 voters, leader node {}, {formed:.1?} after `up`", first.leader);

    // 500 jobs through one node with one token.
    let began = Instant::now();
    let mut acked = create_many(&nodes[0].client, &format!("{run}-bulk"), 500, 16).await?;
    let bulk = began.elapsed();
    eprintln!(
        "500 jobs through {} in {bulk:.1?} ({:.0} jobs/s)",
        nodes[0].service,
        500.0 / bulk.as_secs_f64()
    );

    // The leader's container stopped: a survivor takes a write within 5 s, and every
    // acknowledged job is on both survivors.
    let leader = first.index_of(first.leader)?;
    let stop_began = Instant::now();
    run_docker(&["stop", "-t", "20", &nodes[leader].container]).await?;
    let stopping = stop_began.elapsed();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let key = format!("{run}-after-stop");
    let began = Instant::now();
    let mut attempts = 0u32;
    let written = loop {
        attempts += 1;
        let url = &nodes[survivors[attempts as usize % 2]].url;
        match create_once(&http, url, &key, &job(&key)).await {
            Outcome::Created(id) => break id,
            Outcome::Retry(why) if began.elapsed() < Duration::from_secs(30) => {
                if attempts.is_multiple_of(20) {
                    eprintln!("  write after the stop: still {why}");
                }
            }
            Outcome::Retry(why) => bail!("no write accepted within 30 s of the stop: {why}"),
            Outcome::Failed(why) => bail!("the write after the stop failed: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let to_write = began.elapsed();
    acked.push(written);
    eprintln!(
        "leader {} stopped in {stopping:.1?}; a survivor accepted a write {to_write:.2?} later \
         ({attempts} attempts)",
        nodes[leader].service
    );
    ensure!(
        to_write <= Duration::from_secs(5),
        "the first write after the leader's stop took {to_write:?}"
    );
    for &i in &survivors {
        let list = listed(&http, &nodes[i], false).await?;
        let lost: Vec<&JobId> = acked.iter().filter(|id| !list.contains_key(id)).collect();
        ensure!(
            lost.is_empty(),
            "{} lists {} acknowledged jobs less: {lost:?}",
            nodes[i].service,
            lost.len()
        );
    }
    eprintln!("all {} acknowledged jobs listed on both survivors", acked.len());

    run_docker(&["start", &nodes[leader].container]).await?;
    let (_, back) = wait_whole(&nodes, Duration::from_secs(90)).await?;
    eprintln!("{} started again: whole after {back:.1?}", nodes[leader].service);

    // One follower cut off the network: writes go on; reconnected, it catches up.
    let now = whole(&nodes).await?;
    let leader = now.index_of(now.leader)?;
    let cut = (0..3).find(|&i| i != leader).context("no follower")?;
    let via = (0..3).find(|&i| i != cut).context("no other node")?;
    let container = &nodes[cut].container;
    let inspect = |format: &'static str| {
        run_docker_owned(vec!["inspect".into(), "-f".into(), format.into(), container.clone()])
    };
    let network = inspect("{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}").await?;
    let network =
        network.split_whitespace().next().context("the node is on no network")?.to_string();
    let ip_before = inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").await?;
    run_docker(&["network", "disconnect", &network, container]).await?;
    // Another container takes the address it left (docker hands out the lowest free
    // one), so that it comes back with a new address, as a recreated container does.
    let placeholder = Container { name: format!("{run}-placeholder") };
    run_docker(&[
        "run",
        "-d",
        "--name",
        &placeholder.name,
        "--network",
        &network,
        "--entrypoint",
        "sleep",
        base,
        "300",
    ])
    .await?;
    let began = Instant::now();
    let more = create_many(&nodes[via].client, &format!("{run}-cut"), 100, 8).await?;
    acked.extend(&more);
    eprintln!(
        "{} cut off; 100 jobs through {} in {:.1?}",
        nodes[cut].service,
        nodes[via].service,
        began.elapsed()
    );
    // Back under its name; its address may be another: the members resolve its name
    // at each call.
    run_docker(&["network", "connect", "--alias", nodes[cut].service, &network, container]).await?;
    drop(placeholder);
    let reconnected = Instant::now();
    let ip_after = inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").await?;
    let reference = listed(&http, &nodes[via], false).await?;
    let caught_up = loop {
        let last = match listed(&http, &nodes[cut], true).await {
            Ok(list) if list == reference => break reconnected.elapsed(),
            Ok(list) => format!("{} of {} jobs", list.len(), reference.len()),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            reconnected.elapsed() < Duration::from_secs(60),
            "{} did not catch up within 60 s of its reconnection (address {ip_before} before, \
             {ip_after} after): {last}",
            nodes[cut].service
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "{} reconnected ({ip_before} -> {ip_after}): caught up in {caught_up:.2?}",
        nodes[cut].service
    );
    let (_, settled) = wait_whole(&nodes, Duration::from_secs(60)).await?;
    eprintln!("whole again {settled:.1?} after the catch-up");

    // A rolling restart under a writer: nothing acknowledged lost, no error but 503s and
    // connection errors (retried with the same key).
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let writing = tokio::spawn(writer(
        http.clone(),
        urls,
        format!("{run}-rolling"),
        stop.clone(),
        tally.clone(),
    ));
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in &nodes {
        let restart = Instant::now();
        run_docker(&["restart", "-t", "20", &node.container]).await?;
        let restarted = restart.elapsed();
        let (_, back) = wait_whole(&nodes, Duration::from_secs(90)).await?;
        eprintln!("  {} restarted in {restarted:.1?}, whole {back:.1?} later", node.service);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(90), writing)
        .await
        .context("the writer did not stop")?
        .context("the writer panicked")?;
    let tally = std::mem::take(&mut *tally.lock().await);
    eprintln!(
        "rolling restart in {:.1?}: {} jobs acknowledged, retried {} x 503 and {} connection \
         errors, {} other errors",
        began.elapsed(),
        tally.acked.len(),
        tally.retried_503,
        tally.retried_connection,
        tally.failures.len()
    );
    ensure!(tally.failures.is_empty(), "the writer failed: {:?}", tally.failures);
    ensure!(!tally.acked.is_empty(), "the writer got no job acknowledged");
    acked.extend(tally.acked.iter().map(|(_, id)| *id));

    let lists = [
        listed(&http, &nodes[0], false).await?,
        listed(&http, &nodes[1], false).await?,
        listed(&http, &nodes[2], false).await?,
    ];
    for (node, list) in nodes.iter().zip(&lists) {
        let lost = acked.iter().filter(|id| !list.contains_key(id)).count();
        ensure!(lost == 0, "{} lost {lost} of {} acknowledged jobs", node.service, acked.len());
    }
    ensure!(lists[0] == lists[1] && lists[1] == lists[2], "the nodes list different jobs");
    // A create retried with its key made one job, whichever node it went to.
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for name in lists[0].values() {
        *per_key.entry(name.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_key.iter().filter(|&(_, &n)| n > 1).collect();
    ensure!(twice.is_empty(), "jobs made twice: {twice:?}");
    eprintln!(
        "0 of {} acknowledged jobs lost; the three nodes list the same {} jobs",
        acked.len(),
        lists[0].len()
    );

    // Every container recreated at once (`down` keeping the volumes, then `up`): the
    // cluster forms again from its volumes, with every job.
    let began = Instant::now();
    project.compose(&["down", "-t", "20"], Duration::from_secs(120)).await?;
    project.compose(&["up", "-d"], Duration::from_secs(120)).await?;
    let recreated = began.elapsed();
    let (_, back) = wait_whole(&nodes, Duration::from_secs(90)).await?;
    for node in &nodes {
        let list = listed(&http, node, false).await?;
        ensure!(list == lists[0], "{} lists other jobs after `down` and `up`", node.service);
    }
    let key = format!("{run}-after-recreate");
    let after = nodes[1].client.create_job(&job(&key)).await.context("a write after `up`")?;
    ensure!(
        listed(&http, &nodes[2], false).await?.contains_key(&after.id),
        "{} does not list the job written after `up`",
        nodes[2].service
    );
    eprintln!(
        "down and up again in {recreated:.1?}: whole {back:.1?} later with all {} jobs",
        lists[0].len()
    );
    Ok(())
}

async fn run_docker(args: &[&str]) -> anyhow::Result<String> {
    run("docker", args, &[], Duration::from_secs(60)).await
}

async fn run_docker_owned(args: Vec<String>) -> anyhow::Result<String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_docker(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_container_starts_from_environment_variables_alone() -> anyhow::Result<()> {
    let docker = match docker() {
        Ok(docker) => docker,
        Err(why) => {
            eprintln!("skipped: {why}");
            return Ok(());
        }
    };
    let image = Image::build(&docker.base).await?;

    // No token, no start: beyond loopback ferryd generates none.
    let refused =
        Command::new("docker").args(["run", "--rm", &image.tag]).stdin(Stdio::null()).output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .context("docker run without a token did not end")??;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("no API tokens are configured"),
        "a container without tokens must refuse to start: {refused:?}"
    );

    let port = free_ports(1)?[0];
    let container = Container { name: format!("ferry-it-run-{}", short_id()) };
    let tokens = format!(
        r#"FERRYD_API__TOKENS=[{{principal = "ops", role = "admin", token = "{TOKEN}", roots = ["/srv/ferry"]}}]"#
    );
    run_docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        &container.name,
        "-p",
        &format!("127.0.0.1:{port}:7070"),
        "-e",
        &tokens,
        &image.tag,
    ])
    .await?;
    let result = single(&container.name, port).await;
    if result.is_err() {
        let logs = std::process::Command::new("docker")
            .args(["logs", "--tail", "40", &container.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        eprintln!("container log:\n{logs}");
    }
    result
}

async fn single(name: &str, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    // The node made its CA in its data directory on its first start.
    let ca = loop {
        match run_docker(&["exec", name, "cat", "/var/lib/ferry/data/ca.pem"]).await {
            Ok(pem) if pem.contains("BEGIN CERTIFICATE") => break pem,
            other => ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no /var/lib/ferry/data/ca.pem after 30 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let url = format!("https://127.0.0.1:{port}");
    let probe = Client::with_ca(&url, None, ca.as_bytes())?.with_attempts(1);
    loop {
        match probe.health().await {
            Ok(health) if health.status == "ok" => break,
            other => ensure!(
                started.elapsed() < Duration::from_secs(30),
                "/healthz is not ok after 30 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("healthz ok {:.1?} after docker run", started.elapsed());
    let client = Client::with_ca(&url, Some(TOKEN.into()), ca.as_bytes())?;
    let created = client.create_job(&job("from-env")).await.context("creating a job")?;
    let listed = client.list_jobs(true).await.context("listing jobs")?;
    ensure!(listed.iter().any(|j| j.id == created.id), "the new job is not listed: {listed:?}");

    // The image's HEALTHCHECK (GET /healthz with openssl) turns the container healthy.
    let health = loop {
        let health = run_docker(&["inspect", "-f", "{{.State.Health.Status}}", name]).await?;
        if health == "healthy" || started.elapsed() > Duration::from_secs(45) {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure!(health == "healthy", "the container is {health:?} 45 s after its start");
    eprintln!("docker reports the container healthy {:.1?} after docker run", started.elapsed());
    Ok(())
}
