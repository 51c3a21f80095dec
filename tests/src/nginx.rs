//! A real nginx as a child process, for interoperability tests and download benchmarks:
//! a static file server on `127.0.0.1` and a free port, optionally throttled per
//! connection (`limit_rate`) and behind HTTP basic authentication.
//!
//! Everything nginx writes (configuration, pid, error log, temporary directories) lives
//! in a temporary directory, so it runs as any user; it runs in the foreground as a
//! single process (`master_process off`), so killing the child leaves nothing behind.
//! Not here: TLS, proxying, anything beyond serving the files of one directory.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long nginx may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a start is retried when another process took the chosen port between
/// the harness releasing it and nginx binding it.
const BIND_ATTEMPTS: usize = 5;

/// Where nginx is looked for, after `$PATH` (Debian installs it in `/usr/sbin`, which a
/// non-root user's `$PATH` often lacks).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// What nginx serves and how.
#[derive(Clone)]
pub struct NginxOptions {
    /// The directory served at `/`.
    pub root: PathBuf,
    /// Per-connection rate limit in bytes per second (nginx `limit_rate`); `None` for
    /// unthrottled.
    pub limit_rate: Option<u64>,
    /// User and password required through HTTP basic authentication; `None` for open
    /// access.
    pub basic_auth: Option<(String, String)>,
    /// Requests served at once per client address (nginx `limit_conn`; more get 503);
    /// `None` for no limit.
    pub limit_conn_per_ip: Option<u32>,
}

impl NginxOptions {
    /// Serves `root`, unthrottled and without authentication.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), limit_rate: None, basic_auth: None, limit_conn_per_ip: None }
    }
}

impl fmt::Debug for NginxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NginxOptions")
            .field("root", &self.root)
            .field("limit_rate", &self.limit_rate)
            .field("limit_conn_per_ip", &self.limit_conn_per_ip)
            .field("basic_auth", &self.basic_auth.as_ref().map(|(user, _)| (user, "<redacted>")))
            .finish()
    }
}

/// A running nginx; killed when dropped (or by [`Nginx::stop`]).
pub struct Nginx {
    /// The nginx process; `None` once stopped. Dropped before `dir`, and killed on drop,
    /// so nginx never outlives its files.
    child: Option<Child>,
    /// The loopback port nginx listens on.
    port: u16,
    /// Configuration, pid file, error log, htpasswd and temporary paths.
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Whether an nginx binary is installed; tests skip with a notice when it is not.
    pub fn available() -> bool {
        nginx_binary().is_some()
    }

    /// Starts nginx with `options` and returns once it answers HTTP requests.
    pub async fn start(options: NginxOptions) -> anyhow::Result<Self> {
        let binary =
            nginx_binary().context("nginx is not installed (looked in $PATH and /usr/sbin)")?;
        let root = std::fs::canonicalize(&options.root)
            .with_context(|| format!("nginx root {} is not a directory", options.root.display()))?;
        let mut dir = tempfile::Builder::new().prefix("ferry-nginx-").tempdir()?;
        if let Some((user, password)) = &options.basic_auth {
            write_htpasswd(&dir.path().join("htpasswd"), user, password)?;
        }
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port()?;
            let config = render_config(dir.path(), &root, port, &options)?;
            let config_path = dir.path().join("nginx.conf");
            std::fs::write(&config_path, config)
                .with_context(|| format!("cannot write {}", config_path.display()))?;
            let error_log = dir.path().join("error.log");
            // A previous attempt's complaints must not be read as this one's.
            let _ = std::fs::remove_file(&error_log);
            let child = Command::new(&binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(&error_log)
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            let mut nginx = Self { child: Some(child), port, dir };
            match nginx.wait_ready().await {
                Ok(()) => return Ok(nginx),
                Err(e) => {
                    nginx.stop().await?;
                    let retry = nginx.error_log().contains("Address already in use");
                    dir = nginx.take_dir()?;
                    if !retry {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("nginx did not start")))
            .context(format!("no free port after {BIND_ATTEMPTS} attempts"))
    }

    /// The URL of `path` on this server: `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// The port nginx listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The error log so far, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Body bytes nginx sent for `path` (its URL path, `/name`) so far, from the access
    /// log (a line is written when a request ends): the origin egress of a transfer.
    pub fn body_bytes_sent(&self, path: &str) -> u64 {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let (uri, _status, bytes) = (fields.next()?, fields.next()?, fields.next()?);
                (uri == path).then(|| bytes.parse::<u64>().ok()).flatten()
            })
            .sum()
    }

    /// Kills nginx and waits for it to exit; does nothing if it already was stopped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited, which is what we want.
            let _ = child.start_kill();
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .context("nginx did not exit within 10 s of SIGKILL")?
                .context("cannot wait for nginx")?;
        }
        Ok(())
    }

    /// Takes the temporary directory of a stopped instance, to retry in it.
    fn take_dir(self) -> anyhow::Result<tempfile::TempDir> {
        anyhow::ensure!(self.child.is_none(), "nginx is still running");
        Ok(self.dir)
    }

    /// Waits until nginx answers an HTTP request on its port, or exits, or
    /// [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("cannot poll nginx")?
            {
                bail!("nginx exited with {status} during start; error log:\n{}", self.error_log());
            }
            // Answered by nginx itself, not whatever else might have taken the port.
            if let Ok(head) = probe(addr).await
                && head.starts_with("HTTP/1.")
                && head.to_ascii_lowercase().contains("\nserver: nginx")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not answer on {addr} within {} s; error log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.error_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `HEAD /` and returns the response head (at most 4 KiB).
async fn probe(addr: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await?;
        let mut head = Vec::new();
        (&mut stream).take(4096).read_to_end(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head).into_owned())
    };
    Ok(tokio::time::timeout(Duration::from_secs(2), exchange).await??)
}

/// The nginx binary: the first `nginx` on `$PATH`, else in [`SBIN_DIRS`].
fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// A port that was free on 127.0.0.1 a moment ago (bound to port 0, then released).
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether this process runs as root. nginx then resolves a `user` for its workers
/// (by default `nobody`, which may not exist) and hands its temporary directories to
/// it; naming root keeps everything owned by the one process that serves.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Writes an htpasswd file in nginx's `{PLAIN}` scheme.
fn write_htpasswd(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !user.is_empty() && !user.contains([':', '\n', '\r']),
        "basic-auth user must be non-empty, without ':' or line breaks"
    );
    anyhow::ensure!(!password.contains(['\n', '\r']), "basic-auth password must be one line");
    std::fs::write(path, format!("{user}:{{PLAIN}}{password}\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A path as a quoted nginx string; refuses what nginx would interpret (`$` variables)
/// and what it cannot express (non-UTF-8).
fn quoted(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
    anyhow::ensure!(!text.contains('$'), "{text}: nginx would read '$' as a variable");
    Ok(format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// The whole configuration file.
fn render_config(
    dir: &Path,
    root: &Path,
    port: u16,
    options: &NginxOptions,
) -> anyhow::Result<String> {
    let user = if running_as_root() { "user root;\n" } else { "" };
    let path = |name: &str| quoted(&dir.join(name));
    let limit_rate =
        options.limit_rate.map(|r| format!("        limit_rate {r};\n")).unwrap_or_default();
    let (conn_zone, limit_conn) = match options.limit_conn_per_ip {
        Some(n) => (
            "    limit_conn_zone $binary_remote_addr zone=perip:1m;\n".to_owned(),
            format!("        limit_conn perip {n};\n"),
        ),
        None => (String::new(), String::new()),
    };
    let auth = if options.basic_auth.is_some() {
        format!(
            "        auth_basic \"ferry\";\n        auth_basic_user_file {};\n",
            path("htpasswd")?
        )
    } else {
        String::new()
    };
    Ok(format!(
        "daemon off;
master_process off;
worker_processes 1;
{user}pid {pid};
error_log {error_log} warn;
events {{
    worker_connections 1024;
}}
http {{
    log_format sent '$request_uri $status $body_bytes_sent';
    access_log {access_log} sent;
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
{conn_zone}    server {{
        listen 127.0.0.1:{port};
        root {root};
{limit_rate}{limit_conn}{auth}    }}
}}
",
        pid = path("nginx.pid")?,
        error_log = path("error.log")?,
        access_log = path("access.log")?,
        client_body = path("client_body")?,
        proxy = path("proxy")?,
        fastcgi = path("fastcgi")?,
        uwsgi = path("uwsgi")?,
        scgi = path("scgi")?,
        root = quoted(root)?,
    ))
}
