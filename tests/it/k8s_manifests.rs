//! `deploy/k8s` (issue 16): the kustomize base renders, and what its pods would run is
//! what ferryd accepts. The container's own command (its `/bin/sh` wrapper) runs for
//! each pod with the manifest's environment (downward API values and `$(VAR)`s filled
//! in as the kubelet does, mount paths mapped to temporary directories holding what the
//! Secrets hold, a fake `getent` standing for the cluster's DNS) through `ferryd
//! check-config`; ports, probes, selectors and security settings are checked against
//! the effective configuration, and the probe path against a running node.
//!
//! Rendering needs `kubectl` (its built-in kustomize; no cluster): without it these
//! tests pass with a notice. `kubectl annotate --local -o json` turns the rendered YAML
//! into JSON, so no YAML parser is needed. `FERRY_K8S_DIR` names another directory to
//! check (a deliberately broken copy, say).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};
use ferry_tests::{ApiCa, Node, NodeOptions, binary};
use serde_json::Value;

/// The namespace the pods are imagined in.
const NAMESPACE: &str = "ferry-test-ns";
/// The pod IP the downward API is imagined to give.
const POD_IP: &str = "10.1.2.3";
/// The Secret holding `ferryd init-cluster`'s output (README.md says so).
const IDENTITY_SECRET: &str = "ferry-identity";
/// The Secret holding the administrator's token, under the key `token`.
const TOKEN_SECRET: &str = "ferry-api-token";
/// The pod-index label the StatefulSet controller sets (Kubernetes 1.28+).
const POD_INDEX_LABEL: &str = "metadata.labels['apps.kubernetes.io/pod-index']";

fn base_dir() -> PathBuf {
    std::env::var_os("FERRY_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s"))
}

/// The objects `kubectl kustomize` renders from the base.
struct Rendered {
    objects: Vec<Value>,
}

/// Renders the base, or `None` (after a notice) where kubectl is missing.
fn render() -> anyhow::Result<Option<Rendered>> {
    let dir = base_dir();
    let yaml = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIPPED: kubectl is missing, so deploy/k8s is not rendered nor checked");
            return Ok(None);
        }
        other => other.context("cannot run kubectl")?,
    };
    ensure!(
        yaml.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&yaml.stderr)
    );
    // YAML to JSON without a cluster: `annotate --local` only reads and prints.
    let mut child = Command::new("kubectl")
        .args(["annotate", "--local", "-o", "json", "-f", "-", "ferry.test/rendered=true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("kubectl's stdin")?;
    let input = yaml.stdout;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let json = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    ensure!(json.status.success(), "kubectl annotate: {}", String::from_utf8_lossy(&json.stderr));
    let objects = serde_json::Deserializer::from_slice(&json.stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .context("kubectl's JSON")?;
    ensure!(!objects.is_empty(), "deploy/k8s renders nothing");
    Ok(Some(Rendered { objects }))
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one object of `kind`.
    fn only(&self, kind: &str) -> anyhow::Result<&Value> {
        match self.of_kind(kind).as_slice() {
            [one] => Ok(one),
            all => bail!("deploy/k8s renders {} objects of kind {kind}, not 1", all.len()),
        }
    }

    fn named(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        self.of_kind(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .with_context(|| format!("deploy/k8s renders no {kind} {name}"))
    }

    fn statefulset(&self) -> anyhow::Result<&Value> {
        self.only("StatefulSet")
    }

    /// The ferryd container.
    fn container(&self) -> anyhow::Result<&Value> {
        let containers = self.statefulset()?["spec"]["template"]["spec"]["containers"]
            .as_array()
            .context("no containers")?;
        containers
            .iter()
            .find(|c| c["name"] == "ferryd")
            .context("the StatefulSet has no container named ferryd")
    }

    /// The container port named `name`: (number, protocol).
    fn container_port(&self, name: &str) -> anyhow::Result<(u64, String)> {
        let ports = self.container()?["ports"].as_array().context("no container ports")?;
        let port = ports
            .iter()
            .find(|p| p["name"] == name)
            .with_context(|| format!("no container port named {name}"))?;
        let protocol = port["protocol"].as_str().unwrap_or("TCP").to_string();
        Ok((port["containerPort"].as_u64().context("containerPort")?, protocol))
    }

    /// A port given by number or by the name of a container port.
    fn resolve_port(&self, port: &Value) -> anyhow::Result<u64> {
        match port {
            Value::Number(n) => n.as_u64().context("port number"),
            Value::String(name) => Ok(self.container_port(name)?.0),
            other => bail!("not a port: {other}"),
        }
    }

    fn replicas(&self) -> anyhow::Result<u64> {
        self.statefulset()?["spec"]["replicas"].as_u64().context("spec.replicas")
    }

    fn pod_labels(&self) -> anyhow::Result<&serde_json::Map<String, Value>> {
        self.statefulset()?["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .context("the pod template has no labels")
    }
}

/// Whether `selector` (a label map) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// `text` with Kubernetes' `$(NAME)` references to `defined` variables expanded, `$$`
/// as `$`, other references left as they are (as the kubelet does).
fn expand(text: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        if let Some(tail) = after.strip_prefix('(')
            && let Some(end) = tail.find(')')
            && let Some(value) = defined.get(&tail[..end])
        {
            out.push_str(value);
            rest = &tail[end + 1..];
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A volume mount, mapped to a temporary directory.
struct Mount {
    path: String,
    volume: String,
    read_only: bool,
    host: PathBuf,
    /// What backs it: `pvc`, `emptyDir` or `secret:<name>`.
    source: String,
}

/// `value` with every mount path (at a path boundary) replaced by its host directory,
/// in one pass.
fn remap(value: &str, mounts: &[Mount]) -> String {
    let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || "._-".contains(c));
    let mut by_length: Vec<&Mount> = mounts.iter().collect();
    by_length.sort_by_key(|m| std::cmp::Reverse(m.path.len()));
    let mut out = String::new();
    let mut i = 0;
    'text: while i < value.len() {
        for m in &by_length {
            let end = i + m.path.len();
            if value[i..].starts_with(&m.path)
                && !part(value[..i].chars().next_back())
                && !value[..i].ends_with('/')
                && !part(value[end..].chars().next())
            {
                out.push_str(&m.host.display().to_string());
                i = end;
                continue 'text;
            }
        }
        let c = value[i..].chars().next().expect("within the string");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// One imagined pod: its mounts on temporary directories and its environment.
struct Pod {
    name: String,
    mounts: Vec<Mount>,
    env: Vec<(String, String)>,
    tmp: tempfile::TempDir,
}

impl Pod {
    /// Pod `ferry-<ordinal>`; `label` says whether the pod-index label exists (older
    /// clusters lack it).
    fn new(k8s: &Rendered, ordinal: u64, label: bool) -> anyhow::Result<Self> {
        let sts = k8s.statefulset()?;
        let name = format!("{}-{ordinal}", sts["metadata"]["name"].as_str().context("name")?);
        let tmp = tempfile::tempdir()?;
        let spec = &sts["spec"]["template"]["spec"];
        let claims: Vec<&str> = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["metadata"]["name"].as_str()).collect())
            .unwrap_or_default();
        let container = k8s.container()?;
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().context("no volumeMounts")? {
            let volume = m["name"].as_str().context("mount name")?.to_string();
            let path = m["mountPath"].as_str().context("mountPath")?.to_string();
            ensure!(m.get("subPath").is_none(), "{path}: subPath directories are made as root");
            let host = tmp.path().join(format!("vol-{volume}"));
            let declared = spec["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == volume.as_str()));
            let source = match declared {
                _ if claims.contains(&volume.as_str()) => "pvc".to_string(),
                Some(v) if v.get("emptyDir").is_some() => "emptyDir".to_string(),
                Some(v) if v.get("secret").is_some() => {
                    format!("secret:{}", v["secret"]["secretName"].as_str().context("secretName")?)
                }
                _ => bail!("volume {volume} (mounted at {path}) is no PVC, emptyDir or Secret"),
            };
            match source.as_str() {
                "pvc" | "emptyDir" => std::fs::create_dir_all(&host)?,
                s if s == format!("secret:{IDENTITY_SECRET}") => {
                    // What README.md has the operator put in the Secret.
                    let made = Command::new(binary("ferryd")?)
                        .arg("init-cluster")
                        .arg("--out")
                        .arg(&host)
                        .env_clear()
                        .output()?;
                    ensure!(
                        made.status.success(),
                        "ferryd init-cluster: {}",
                        String::from_utf8_lossy(&made.stderr)
                    );
                    as_secret_volume(&host)?;
                }
                s if s == format!("secret:{TOKEN_SECRET}") => {
                    std::fs::create_dir_all(&host)?;
                    std::fs::write(host.join("token"), "k8s-test-admin-token-0123456789\n")?;
                    as_secret_volume(&host)?;
                }
                other => bail!("{path}: unexpected volume source {other}: README.md names none"),
            }
            let read_only = m["readOnly"].as_bool().unwrap_or(false);
            mounts.push(Mount { path, volume, read_only, host, source });
        }
        let mut defined = BTreeMap::new();
        let mut env = Vec::new();
        for var in container["env"].as_array().context("no env")? {
            let key = var["name"].as_str().context("env name")?.to_string();
            let value = if let Some(value) = var["value"].as_str() {
                expand(value, &defined)
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.name" => name.clone(),
                    "metadata.namespace" => NAMESPACE.to_string(),
                    "status.podIP" => POD_IP.to_string(),
                    POD_INDEX_LABEL if label => ordinal.to_string(),
                    // The kubelet gives a missing label as an empty value.
                    POD_INDEX_LABEL => String::new(),
                    other => bail!("{key}: the downward API field {other} is not imagined here"),
                }
            } else if var.get("value").is_none() && var.get("valueFrom").is_none() {
                String::new()
            } else {
                bail!("{key}: secrets are mounted as files, not given in the environment");
            };
            defined.insert(key.clone(), value.clone());
            env.push((key, value));
        }
        for (key, value) in &mut env {
            ensure!(
                !value.contains("$("),
                "{key}={value}: a $(VAR) the kubelet would leave as it is (undefined, or \
                 defined later in the list)"
            );
            *value = remap(value, &mounts);
        }
        Ok(Self { name, mounts, env, tmp })
    }

    fn var(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The mount holding host path `path`, if any (and whether it holds it strictly
    /// below its root).
    fn mount_of(&self, path: &Path) -> Option<(&Mount, bool)> {
        self.mounts
            .iter()
            .filter(|m| path.starts_with(&m.host))
            .max_by_key(|m| m.host.as_os_str().len())
            .map(|m| (m, path != m.host))
    }

    /// Runs the container's command and arguments, then `extra`, with the pod's
    /// environment alone and a `PATH` finding the built ferryd, a `getent` that
    /// resolves the pod's own stable name only (logging every lookup, see
    /// [`lookups`](Self::lookups)) and a `sleep` that returns at once: exit code,
    /// stdout, stderr.
    fn run(&self, k8s: &Rendered, extra: &[&str]) -> anyhow::Result<(i32, String, String)> {
        use std::os::unix::fs::PermissionsExt as _;
        let container = k8s.container()?;
        let mut argv = strings(&container["command"])?;
        argv.extend(strings(&container["args"])?);
        ensure!(!argv.is_empty(), "the container names no command (the image's would run)");
        let ferryd = binary("ferryd")?;
        let bin = ferryd.parent().context("ferryd's directory")?;
        let fake = self.tmp.path().join("fake-bin");
        std::fs::create_dir_all(&fake)?;
        let service = k8s.statefulset()?["spec"]["serviceName"].as_str().context("serviceName")?;
        let getent = format!(
            "#!/bin/sh\necho \"$2\" >> '{}'\ncase \"$2\" in\n  {}) echo \"{POD_IP} $2\" ;;\n  *) exit 2 ;;\nesac\n",
            self.tmp.path().join("lookups").display(),
            stable_names(&self.name, service).join("|")
        );
        for (name, script) in [("getent", getent.as_str()), ("sleep", "#!/bin/sh\nexit 0\n")] {
            std::fs::write(fake.join(name), script)?;
            std::fs::set_permissions(fake.join(name), std::fs::Permissions::from_mode(0o755))?;
        }
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .args(extra)
            .env_clear()
            .env("PATH", format!("{}:{}:/usr/bin:/bin", fake.display(), bin.display()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", argv[0]))?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// The names the container's command looked up with `getent`.
    fn lookups(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.tmp.path().join("lookups")).unwrap_or_default();
        log.lines().map(String::from).collect()
    }

    /// `ferryd check-config` through the container's command: the effective
    /// configuration, which must be valid.
    fn effective_config(&self, k8s: &Rendered) -> anyhow::Result<toml::Table> {
        let (code, out, err) = self.run(k8s, &["check-config"])?;
        ensure!(
            code == 0,
            "{}: the container's command with `check-config` exits {code}:\n{err}\n{out}\nenv: {:#?}",
            self.name,
            self.env
        );
        toml::from_str(&out).context("check-config's output")
    }
}

/// Lays the files of `dir` out as the kubelet does a Secret volume: each name a symlink
/// through `..data` to a timestamped directory, files read-only (`defaultMode: 0440`).
fn as_secret_volume(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let stamp = "..2026_01_01_00_00_00.000000001";
    let names: Vec<std::ffi::OsString> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    std::fs::create_dir(dir.join(stamp))?;
    for name in &names {
        std::fs::rename(dir.join(name), dir.join(stamp).join(name))?;
        std::fs::set_permissions(
            dir.join(stamp).join(name),
            std::fs::Permissions::from_mode(0o440),
        )?;
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name))?;
    }
    std::os::unix::fs::symlink(stamp, dir.join("..data"))?;
    Ok(())
}

/// A JSON array of strings (absent: empty).
fn strings(value: &Value) -> anyhow::Result<Vec<String>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => {
            a.iter().map(|s| s.as_str().map(String::from).context("not a string")).collect()
        }
        other => bail!("not a list of strings: {other}"),
    }
}

/// `host:port` split.
fn host_port(address: &str) -> anyhow::Result<(&str, u64)> {
    let (host, port) = address.rsplit_once(':').with_context(|| format!("{address}: no port"))?;
    Ok((host, port.parse().with_context(|| format!("{address}: the port"))?))
}

/// The spellings of pod `pod`'s stable DNS name under headless Service `service`.
fn stable_names(pod: &str, service: &str) -> Vec<String> {
    let short = format!("{pod}.{service}");
    vec![
        short.clone(),
        format!("{short}.{NAMESPACE}"),
        format!("{short}.{NAMESPACE}.svc"),
        format!("{short}.{NAMESPACE}.svc.cluster.local"),
    ]
}

fn config_str<'a>(config: &'a toml::Table, section: &str, field: &str) -> anyhow::Result<&'a str> {
    config
        .get(section)
        .and_then(|s| s.get(field))
        .and_then(toml::Value::as_str)
        .with_context(|| format!("the effective configuration has no {section}.{field}"))
}

fn config_int(config: &toml::Table, section: &str, field: &str) -> anyhow::Result<u64> {
    config
        .get(section)
        .and_then(|s| s.get(field))
        .and_then(toml::Value::as_integer)
        .and_then(|n| u64::try_from(n).ok())
        .with_context(|| format!("the effective configuration has no {section}.{field}"))
}

/// The API speaks TLS: ferryd's rule (`ApiConfig::uses_tls`).
fn api_uses_tls(config: &toml::Table) -> anyhow::Result<bool> {
    let tls = config_str(config, "api", "tls")?;
    let listen: std::net::SocketAddr = config_str(config, "api", "listen")?.parse()?;
    let has_cert = config.get("api").and_then(|a| a.get("tls_cert")).is_some();
    Ok(match tls {
        "on" => true,
        "off" => false,
        _ => has_cert || !listen.ip().is_loopback(),
    })
}

#[test]
fn every_pod_runs_a_configuration_ferryd_accepts_and_ferry_0_alone_bootstraps() -> anyhow::Result<()>
{
    let Some(k8s) = render()? else { return Ok(()) };
    let service = k8s.statefulset()?["spec"]["serviceName"].as_str().context("serviceName")?;
    let replicas = k8s.replicas()?;
    let (peer_port, _) = k8s.container_port("peer")?;
    let mut cases: Vec<(u64, bool)> = (0..replicas).map(|n| (n, true)).collect();
    // Clusters before 1.28 have no pod-index label: the pod name decides.
    cases.extend([(0, false), (1, false)]);
    for (ordinal, label) in cases {
        let pod = Pod::new(&k8s, ordinal, label)?;
        let config = pod.effective_config(&k8s)?;
        let cluster = config.get("cluster").context("no [cluster]")?;
        let bootstrap = cluster.get("bootstrap").and_then(toml::Value::as_bool);
        assert_eq!(
            bootstrap,
            Some(ordinal == 0),
            "{} (pod-index label: {label}): cluster.bootstrap",
            pod.name
        );

        // ferryd resolves peer.advertise once, at start: the wrapper waits for the pod's
        // own name, which the headless Service may publish just after the pod started.
        let lookups: std::collections::BTreeSet<String> = pod.lookups().into_iter().collect();
        assert!(
            !lookups.is_empty()
                && lookups.iter().all(|n| stable_names(&pod.name, service).contains(n)),
            "{}: the wrapper waits for the pod's own name to resolve; it looked up {lookups:?}",
            pod.name
        );

        // It names itself by its stable name, and joins through every pod's.
        let (host, port) = host_port(config_str(&config, "peer", "advertise")?)?;
        assert!(
            stable_names(&pod.name, service).iter().any(|n| n == host),
            "{}: peer.advertise {host} is not the pod's stable name",
            pod.name
        );
        assert_eq!(port, peer_port, "{}: peer.advertise's port", pod.name);
        let join = cluster.get("join").and_then(toml::Value::as_array).context("cluster.join")?;
        assert_eq!(join.len() as u64, replicas, "{}: one cluster.join entry per pod", pod.name);
        for (k, entry) in join.iter().enumerate() {
            let (host, port) = host_port(entry.as_str().context("join entry")?)?;
            let peer = format!("ferry-{k}");
            assert!(
                stable_names(&peer, service).iter().any(|n| n == host),
                "cluster.join[{k}] = {host}, not {peer}'s stable name"
            );
            assert_eq!(port, peer_port, "cluster.join[{k}]'s port");
        }

        // The cluster identity is the Secret made by `ferryd init-cluster`.
        let identity = PathBuf::from(config_str(&config, "cluster", "identity_dir")?);
        let (mount, _) = pod.mount_of(&identity).context("identity_dir is on no volume")?;
        assert_eq!(mount.source, format!("secret:{IDENTITY_SECRET}"), "cluster.identity_dir");
        assert!(mount.read_only, "the identity Secret is mounted read-only");
        // The CLI's CA in the pod is the identity's.
        if let Some(ca) = pod.var("FERRY_CA") {
            assert_eq!(Path::new(ca), identity.join("ca.pem"), "FERRY_CA");
        }

        // Everything ferryd writes lies on a writable volume: the root is read-only. The
        // data directory lies below the volume's root (ferryd makes it 0700, which it
        // cannot do to a root it does not own; and it must start empty, lost+found aside).
        let data =
            PathBuf::from(config.get("data_dir").and_then(|d| d.as_str()).context("data_dir")?);
        let (data_mount, below) = pod.mount_of(&data).context("data_dir is on no volume")?;
        assert!(
            data_mount.source == "pvc" && below && !data_mount.read_only,
            "data_dir {} must lie below the root of a PersistentVolumeClaim ({} is on {})",
            data.display(),
            data_mount.path,
            data_mount.source
        );
        let tokens = config
            .get("api")
            .and_then(|a| a.get("tokens"))
            .and_then(toml::Value::as_array)
            .context("api.tokens")?;
        ensure!(!tokens.is_empty(), "no api.tokens: ferryd would refuse to listen beyond loopback");
        for entry in tokens {
            let file = entry.get("token_file").and_then(toml::Value::as_str);
            let file = file.context("api.tokens: a token in the manifest rather than a file")?;
            let (mount, _) = pod.mount_of(Path::new(file)).context("token_file on no volume")?;
            assert_eq!(mount.source, format!("secret:{TOKEN_SECRET}"), "token_file");
            for root in entry.get("roots").and_then(toml::Value::as_array).into_iter().flatten() {
                let root = Path::new(root.as_str().context("root")?);
                let (mount, _) = pod.mount_of(root).context("a root on no volume")?;
                assert!(
                    mount.source == "pvc" && !mount.read_only,
                    "root {} must be on a writable PersistentVolumeClaim, not {}",
                    root.display(),
                    mount.source
                );
                assert_ne!(
                    mount.volume, data_mount.volume,
                    "downloads must not fill the volume of the Raft log"
                );
            }
        }
        for mount in &pod.mounts {
            if mount.source.starts_with("secret:") {
                assert!(mount.read_only, "{}: a Secret mounted writable", mount.path);
            }
        }
    }
    Ok(())
}

#[test]
fn ports_agree_with_the_listen_addresses_and_the_services() -> anyhow::Result<()> {
    let Some(k8s) = render()? else { return Ok(()) };
    let pod = Pod::new(&k8s, 0, true)?;
    let config = pod.effective_config(&k8s)?;
    let (api_port, api_protocol) = k8s.container_port("api")?;
    let (peer_port, peer_protocol) = k8s.container_port("peer")?;
    assert_eq!(api_protocol, "TCP", "the API is HTTP(S)");
    assert_eq!(peer_protocol, "UDP", "peers speak QUIC");
    let (_, listen) = host_port(config_str(&config, "api", "listen")?)?;
    assert_eq!(listen, api_port, "api.listen's port is the container port api");
    let (host, listen) = host_port(config_str(&config, "peer", "listen")?)?;
    assert_eq!(listen, peer_port, "peer.listen's port is the container port peer");
    let (api_host, _) = host_port(config_str(&config, "api", "listen")?)?;
    for host in [host, api_host] {
        let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse()?;
        assert!(
            ip.is_unspecified(),
            "{host}: pods must listen on their pod IP, so on every address"
        );
    }
    if let Some(node) = pod.var("FERRY_NODE") {
        let scheme = if api_uses_tls(&config)? { "https" } else { "http" };
        assert_eq!(node, format!("{scheme}://localhost:{api_port}"), "FERRY_NODE");
    }

    let sts = k8s.statefulset()?;
    let headless =
        k8s.named("Service", sts["spec"]["serviceName"].as_str().context("serviceName")?)?;
    let api = k8s
        .of_kind("Service")
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] != "None")
        .context("no Service for the API")?;
    for (service, name, port, protocol, required) in [
        (headless, "peer", peer_port, "UDP", true),
        (headless, "api", api_port, "TCP", false),
        (api, "api", api_port, "TCP", true),
    ] {
        let ports = service["spec"]["ports"].as_array().context("Service ports")?;
        let found = ports.iter().find(|p| k8s.resolve_port(&p["targetPort"]).ok() == Some(port));
        let Some(found) = found else {
            ensure!(
                !required,
                "Service {} has no port to the {name} port",
                service["metadata"]["name"]
            );
            continue;
        };
        assert_eq!(
            found["port"].as_u64(),
            Some(port),
            "{}: {name} port",
            service["metadata"]["name"]
        );
        assert_eq!(
            found["protocol"].as_str().unwrap_or("TCP"),
            protocol,
            "{}: {name} protocol",
            service["metadata"]["name"]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_ask_healthz_the_way_ferryd_serves_it() -> anyhow::Result<()> {
    let Some(k8s) = render()? else { return Ok(()) };
    let config = Pod::new(&k8s, 1, true)?.effective_config(&k8s)?;
    let container = k8s.container()?;
    let (api_port, _) = k8s.container_port("api")?;
    let scheme = if api_uses_tls(&config)? { "HTTPS" } else { "HTTP" };
    let mut paths = Vec::new();
    let mut budget = BTreeMap::new();
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let probe = &container[kind];
        let get = probe.get("httpGet").with_context(|| format!("no {kind}.httpGet"))?;
        assert_eq!(k8s.resolve_port(&get["port"])?, api_port, "{kind} asks the API port");
        assert_eq!(
            get["scheme"].as_str().unwrap_or("HTTP"),
            scheme,
            "{kind}: ferryd's API speaks {scheme}"
        );
        paths.push(get["path"].as_str().context("path")?.to_string());
        let period = probe["periodSeconds"].as_u64().unwrap_or(10);
        let failures = probe["failureThreshold"].as_u64().unwrap_or(3);
        let delay = probe["initialDelaySeconds"].as_u64().unwrap_or(0);
        budget.insert(kind, (period, delay + period * failures));
    }
    // A first start may wait cluster.bootstrap_wait_secs, then join for up to
    // cluster.join_patience_secs, before it serves.
    let first_start = config_int(&config, "cluster", "join_patience_secs")?
        + config_int(&config, "cluster", "bootstrap_wait_secs")?;
    assert!(
        budget["startupProbe"].1 >= first_start + 30,
        "the startup probe gives up after {} s, before a first join may end ({first_start} s)",
        budget["startupProbe"].1
    );
    assert!(
        budget["livenessProbe"].0 > budget["readinessProbe"].0
            && budget["livenessProbe"].1 > budget["readinessProbe"].1,
        "liveness is more patient than readiness: {budget:?}"
    );
    let grace = k8s.statefulset()?["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    // A stop drains the API for up to 10 s and closes peer connections for up to 5 s.
    assert!(grace >= 30, "terminationGracePeriodSeconds {grace} is short of a clean stop");

    // The path answers 200 without a token, in the scheme the probes use (the kubelet
    // does not check the certificate).
    let node = Node::start(NodeOptions {
        extra_config: "[api]\ntls = \"on\"\n".into(),
        api_ca: Some(ApiCa::Cluster),
        ..NodeOptions::queue_only()
    })
    .await?;
    ferry_coordinator::client::ensure_crypto_provider();
    let kubelet =
        reqwest::Client::builder().no_proxy().danger_accept_invalid_certs(true).build()?;
    let addr = node.addr()?;
    for path in paths {
        let url = format!("{}://{addr}{path}", scheme.to_lowercase());
        let status = kubelet.get(&url).send().await?.status();
        assert_eq!(status, reqwest::StatusCode::OK, "GET {url} without a token");
    }
    Ok(())
}

#[test]
fn the_container_runs_ferryd_with_what_it_accepts() -> anyhow::Result<()> {
    let Some(k8s) = render()? else { return Ok(()) };
    let container = k8s.container()?;
    let command = strings(&container["command"])?;
    let args = strings(&container["args"])?;
    let (script, after) = match command.as_slice() {
        [sh, c, script, rest @ ..] if sh == "/bin/sh" && c == "-c" => (script, rest),
        other => bail!("the container runs {other:?}, not the /bin/sh -c wrapper"),
    };
    // The kubelet expands $(NAME) of the container's variables in commands too (and
    // `$$` to `$`): the script must reach the shell as written.
    let names: BTreeMap<String, String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .map(|n| (n.to_string(), "<expanded>".to_string()))
        .collect();
    assert_eq!(&expand(script, &names), script, "the kubelet would change the script");
    let last = script.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
    assert_eq!(last, "exec ferryd \"$@\"", "ferryd replaces the shell, so SIGTERM reaches it");
    // $0, then what ferryd is given: flags it knows.
    let given: Vec<&String> = after.iter().skip(1).chain(&args).collect();
    let help = Command::new(binary("ferryd")?).arg("--help").env_clear().output()?;
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for word in ["check-config", "init-cluster"] {
        assert!(help.contains(word), "ferryd --help lists no {word}: README.md relies on it");
    }
    for arg in given {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or(flag);
            assert!(help.contains(&format!("--{flag}")), "ferryd --help lists no --{flag}");
        } else {
            assert!(help.contains(arg.as_str()), "ferryd --help lists no {arg}");
        }
    }
    Ok(())
}

#[test]
fn selectors_and_services_find_the_pods() -> anyhow::Result<()> {
    let Some(k8s) = render()? else { return Ok(()) };
    let sts = k8s.statefulset()?;
    let labels = k8s.pod_labels()?;
    assert!(selects(&sts["spec"]["selector"]["matchLabels"], labels), "the StatefulSet's selector");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "all pods start together");
    assert_eq!(k8s.replicas()?, 3, "three voters");

    let service = sts["spec"]["serviceName"].as_str().context("serviceName")?;
    let headless = k8s.named("Service", service)?;
    assert_eq!(headless["spec"]["clusterIP"], "None", "{service} is headless");
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "peers find each other before they are Ready"
    );
    assert!(selects(&headless["spec"]["selector"], labels), "{service} selects the pods");
    for api in k8s.of_kind("Service") {
        assert!(
            selects(&api["spec"]["selector"], labels),
            "{} selects the pods",
            api["metadata"]["name"]
        );
    }

    let pdb = k8s.only("PodDisruptionBudget")?;
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels), "the PDB selects the pods");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "one node down at a time keeps a quorum of 3");
    Ok(())
}

#[test]
fn pods_run_unprivileged_on_a_read_only_root_with_the_image_named_once() -> anyhow::Result<()> {
    let Some(k8s) = render()? else { return Ok(()) };
    let spec = &k8s.statefulset()?["spec"]["template"]["spec"];
    let container = k8s.container()?;
    assert_eq!(container["image"], "ferry:latest", "the image, from kustomization.yaml");
    let raw = std::fs::read_to_string(base_dir().join("statefulset.yaml"))?;
    assert!(
        raw.lines().any(|l| l.trim() == "image: ferry"),
        "statefulset.yaml names the image without a tag: kustomization.yaml's images sets it"
    );

    let pod = &spec["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true, "runAsNonRoot");
    assert_eq!(pod["runAsUser"], 10001, "runAsUser");
    assert!(pod["fsGroup"].as_u64().is_some_and(|g| g != 0), "fsGroup makes the volumes writable");
    let own = &container["securityContext"];
    assert_eq!(own["readOnlyRootFilesystem"], true, "readOnlyRootFilesystem");
    assert_eq!(own["allowPrivilegeEscalation"], false, "allowPrivilegeEscalation");
    assert_eq!(own["capabilities"]["drop"], serde_json::json!(["ALL"]), "capabilities dropped");
    // Service links would set <SERVICE>_* variables: a Service named ferryd-x would set
    // FERRYD_X_... fields ferryd refuses.
    assert_eq!(spec["enableServiceLinks"], false, "enableServiceLinks");
    assert_eq!(spec["automountServiceAccountToken"], false, "no API server token");
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource}"
            );
        }
    }
    // /tmp is writable on a read-only root.
    let mounts = container["volumeMounts"].as_array().context("volumeMounts")?;
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/tmp" && m["readOnly"] != true),
        "a writable /tmp"
    );
    Ok(())
}

#[test]
fn the_environment_is_expanded_as_the_kubelet_does() {
    let defined: BTreeMap<String, String> =
        [("A".to_string(), "x".to_string()), ("B".to_string(), "y".to_string())].into();
    assert_eq!(expand("$(A).$(B):1", &defined), "x.y:1");
    assert_eq!(expand("$$(A) $(C) $ $(", &defined), "$(A) $(C) $ $(");
    let mounts = [
        Mount {
            path: "/tmp".into(),
            volume: "tmp".into(),
            read_only: false,
            host: "/tmp/t/vol-tmp".into(),
            source: "emptyDir".into(),
        },
        Mount {
            path: "/var/lib/ferry".into(),
            volume: "data".into(),
            read_only: false,
            host: "/tmp/t/vol-data".into(),
            source: "pvc".into(),
        },
    ];
    assert_eq!(
        remap("[\"/var/lib/ferry/data\", \"/tmp\", \"/var/tmp\", \"/tmpx\"]", &mounts),
        "[\"/tmp/t/vol-data/data\", \"/tmp/t/vol-tmp\", \"/var/tmp\", \"/tmpx\"]"
    );
}
