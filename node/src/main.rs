//! `ferryd`: one Ferry node. With no arguments it is a complete one-node cluster with
//! data in `./ferry-data` and the API on `127.0.0.1:7070`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_node::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// Ferry node: BITS-style background transfers as a cluster.
#[derive(Debug, Parser)]
#[command(name = "ferryd", version = env!("FERRY_VERSION"))]
struct Args {
    /// Data directory (Raft log, state, node id, generated token).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API address (port 0 picks a free port; see <data-dir>/api.addr).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// QUIC address for peers and the event bus.
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    peer_listen: Option<SocketAddr>,
    /// Join a cluster through these peer addresses (first start only; a name may
    /// resolve to several).
    #[arg(long, global = true, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    join: Vec<String>,
    /// The cluster's join token (the first node's <data-dir>/join.token).
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "FERRY_JOIN_TOKEN",
        hide_env_values = true
    )]
    join_token: Option<String>,
    /// Source address of connections to origins (`transfer.source_addr`).
    #[arg(long, global = true, value_name = "IP")]
    source_addr: Option<std::net::IpAddr>,
    /// TOML configuration file (see deploy/ferryd.toml for every field). Variables
    /// `FERRYD_<SECTION>__<FIELD>` override its fields, and flags override both.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Check the configuration (file, FERRYD_* variables and flags) as ferryd would at
    /// start, without starting: print it (secrets redacted) and exit 0, or say what is
    /// wrong and exit 1.
    CheckConfig,
    /// Make a cluster identity before the cluster exists: a CA (ca.pem, ca.key) and a
    /// join token naming it (join.token), written to DIR. Give DIR to every node as
    /// `cluster.identity_dir` (a mounted secret): the founder uses that CA, the others
    /// join with that token, and clients trust DIR/ca.pem.
    InitCluster {
        /// Directory to write (created 0700; existing identity files are not replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = ferry_node::failpoint::setup();
    let args = Args::parse();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    if let Some(Sub::InitCluster { out }) = &args.command {
        let fingerprint = ferry_node::init_cluster(out)?;
        println!(
            "wrote {dir}/ca.pem, {dir}/ca.key and {dir}/join.token (CA fingerprint {fingerprint})",
            dir = out.display()
        );
        return Ok(());
    }
    let (mut config, from_env) = Config::load(args.config.as_deref(), std::env::vars_os())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    if let Some(listen) = args.peer_listen {
        config.peer.listen = listen;
    }
    if !args.join.is_empty() {
        config.cluster.join = args.join;
    }
    if let Some(token) = args.join_token {
        config.cluster.join_token = Some(token);
    }
    if let Some(addr) = args.source_addr {
        config.transfer.source_addr = Some(addr);
    }
    if args.print_config {
        print!("{}", shown(&config)?);
        return Ok(());
    }
    if let Some(Sub::CheckConfig) = args.command {
        let shown = shown(&config)?;
        let settings = config.validate()?;
        ferry_node::check_settings(&settings)?;
        print!("{shown}");
        let from_env = if from_env.is_empty() { "none".to_string() } else { from_env.join(", ") };
        eprintln!("ferryd: the configuration is valid (FERRYD_* variables used: {from_env})");
        return Ok(());
    }
    let settings = config.validate()?;
    // Before the data directory is touched: a refused start leaves nothing behind.
    ferry_node::check_settings(&settings)?;
    init_tracing(&settings.config.log);
    raise_open_files_limit();
    // ring is the only TLS crypto provider in the build; make it the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("ferryd-worker")
            .build()
            .expect("the tokio runtime can be built")
    });
    let ended = system.block_on(ferry_node::run(settings, shutdown_signal()))?;
    drop(system);
    if ended == ferry_node::Ended::Restart {
        restart_in_place()?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one (the usual soft limit, 1,024,
/// is kept low for programs that use `select`): each connection is a descriptor, and a
/// download keeps its finished files open until their batch is synced, so a node
/// running many jobs at once would otherwise fail to create files. Programs that ferryd
/// runs (notify command lines) inherit the raised limit.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Linux's default ceiling (fs.nr_open) when the hard limit is unlimited.
    const NR_OPEN: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let most = limit.maximum.unwrap_or(NR_OPEN);
    if limit.current.is_none_or(|soft| soft >= most) {
        return;
    }
    let raised = Rlimit { current: Some(most), maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = most, "raised the open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// `config` as TOML, secrets redacted.
fn shown(config: &Config) -> anyhow::Result<String> {
    let mut shown = config.clone();
    for entry in &mut shown.api.tokens {
        if !entry.token.is_empty() {
            entry.token = "<redacted>".into();
        }
    }
    if shown.cluster.join_token.is_some() {
        shown.cluster.join_token = Some("<redacted>".into());
    }
    Ok(toml::to_string_pretty(&shown)?)
}

/// Executes this program again with the same arguments, in this process (the same
/// process id, so a supervisor sees no exit). Returns only if that fails.
fn restart_in_place() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let program = std::env::current_exe()?;
    let error = std::process::Command::new(&program).args(std::env::args_os().skip(1)).exec();
    Err(anyhow::anyhow!("cannot restart {}: {error}", program.display()))
}

fn init_tracing(log: &ferry_node::config::LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
