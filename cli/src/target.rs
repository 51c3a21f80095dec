//! Which node to talk to, with which token and which CA. In order: flags, then
//! environment variables (`FERRY_NODE`, `FERRY_TOKEN`, `FERRY_TOKEN_FILE`, `FERRY_CA`),
//! then the client config file (`config`), then the files a local node leaves in its
//! data directory (`api.addr`, `admin.token`), then `http://127.0.0.1:7070`.
//!
//! Where the node URL came from is kept: when no node answers, the hint says which
//! address was tried and why that one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::parser::ValueSource;

use crate::args::Cli;
use crate::config::Loaded;

/// Where the node URL came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UrlSource {
    /// `--node`.
    Flag,
    /// `FERRY_NODE`.
    Env,
    /// `node` in this config file.
    Config(PathBuf),
    /// This `api.addr` of a local node.
    DataDir(PathBuf),
    /// Nothing named a node.
    Default,
}

impl std::fmt::Display for UrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => write!(f, "from --node"),
            Self::Env => write!(f, "from FERRY_NODE"),
            Self::Config(path) => write!(f, "from {}", path.display()),
            Self::DataDir(path) => write!(f, "from {}", path.display()),
            Self::Default => write!(
                f,
                "the default: no --node, FERRY_NODE, config file or local node's api.addr"
            ),
        }
    }
}

/// The node, credentials and CA a command uses.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The API base URL.
    pub(crate) url: String,
    /// Where `url` came from.
    pub(crate) source: UrlSource,
    /// The API token, if any.
    pub(crate) token: Option<String>,
    /// The CA file trusted for `https://` nodes, if any (else the system's roots).
    pub(crate) ca: Option<PathBuf>,
}

/// Resolves the target from the command line (`node_source`: how clap got `--node`)
/// and the config file.
pub(crate) fn resolve(
    cli: &Cli,
    node_source: Option<ValueSource>,
    loaded: &Loaded,
) -> anyhow::Result<Target> {
    let config = &loaded.config;
    let ca = cli.ca.clone().or_else(|| config.ca.clone());
    let (url, source) = node_url(cli, node_source, loaded, ca.is_some());
    let token = token(cli, loaded, &url)?;
    Ok(Target { url, source, token, ca })
}

/// The node URL and where it came from; `https://` for a discovered address when a CA
/// is given (the local node serves TLS).
fn node_url(
    cli: &Cli,
    node_source: Option<ValueSource>,
    loaded: &Loaded,
    tls: bool,
) -> (String, UrlSource) {
    if let Some(node) = &cli.node {
        let source = if node_source == Some(ValueSource::EnvVariable) {
            UrlSource::Env
        } else {
            UrlSource::Flag
        };
        return (node.clone(), source);
    }
    if let (Some(node), Some(path)) = (&loaded.config.node, &loaded.path) {
        return (node.clone(), UrlSource::Config(path.clone()));
    }
    let scheme = if tls { "https" } else { "http" };
    let addr_file = cli.data_dir.join("api.addr");
    match read_trimmed(&addr_file) {
        Some(addr) => (format!("{scheme}://{addr}"), UrlSource::DataDir(addr_file)),
        None => (format!("{scheme}://127.0.0.1:7070"), UrlSource::Default),
    }
}

/// The token: `--token`/`FERRY_TOKEN`, else the file of `--token-file`/
/// `FERRY_TOKEN_FILE`, else the config file's `token_file`, else the local node's
/// `admin.token` — but only for a node on this machine (loopback): the admin secret
/// never travels elsewhere.
fn token(cli: &Cli, loaded: &Loaded, node_url: &str) -> anyhow::Result<Option<String>> {
    if let Some(token) = &cli.token {
        return Ok(Some(token.clone()));
    }
    let named = cli.token_file.as_ref().map(|p| (p, "--token-file / FERRY_TOKEN_FILE"));
    let configured = loaded.config.token_file.as_ref().map(|p| (p, "token_file in the config"));
    if let Some((path, from)) = named.or(configured) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {} ({from})", path.display()))?;
        let token = text.trim();
        anyhow::ensure!(!token.is_empty(), "the token file {} is empty ({from})", path.display());
        return Ok(Some(token.to_owned()));
    }
    Ok(is_loopback(node_url).then(|| read_trimmed(&cli.data_dir.join("admin.token"))).flatten())
}

fn is_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else { return false };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::ClientConfig;

    #[test]
    fn only_loopback_nodes_get_the_local_token() {
        assert!(is_loopback("http://127.0.0.1:7070"));
        assert!(is_loopback("http://127.0.0.9:1"));
        assert!(is_loopback("http://[::1]:7070"));
        assert!(is_loopback("http://localhost:7070"));
        assert!(!is_loopback("http://10.0.0.5:7070"));
        assert!(!is_loopback("https://ferry.example.com"));
        assert!(!is_loopback("not a url"));
    }

    #[test]
    fn flags_beat_the_config_file_which_beats_the_data_dir() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        std::fs::write(data.join("api.addr"), "127.0.0.1:9999\n")?;
        std::fs::write(data.join("admin.token"), "local-admin\n")?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-config\n")?;
        let config_path = dir.path().join("config.toml");
        let loaded = Loaded {
            config: ClientConfig {
                node: Some("http://127.0.0.1:7777".into()),
                token_file: Some(token_file),
                ca: None,
            },
            path: Some(config_path.clone()),
        };
        let data_arg = data.to_string_lossy().into_owned();
        let cli = |extra: &[&str]| {
            let mut args = vec!["ferry", "--data-dir", &data_arg];
            args.extend_from_slice(extra);
            args.extend(["job", "list"]);
            Cli::try_parse_from(args)
        };

        let target = resolve(&cli(&[])?, None, &loaded)?;
        assert_eq!(target.url, "http://127.0.0.1:7777");
        assert_eq!(target.source, UrlSource::Config(config_path));
        assert_eq!(target.token.as_deref(), Some("from-config"));

        let flags = cli(&["--node", "http://127.0.0.1:1", "--token", "flag"])?;
        let target = resolve(&flags, Some(ValueSource::CommandLine), &loaded)?;
        assert_eq!((target.url.as_str(), target.source), ("http://127.0.0.1:1", UrlSource::Flag));
        assert_eq!(target.token.as_deref(), Some("flag"));

        let target = resolve(&cli(&[])?, None, &Loaded::default())?;
        assert_eq!(target.url, "http://127.0.0.1:9999");
        assert_eq!(target.source, UrlSource::DataDir(data.join("api.addr")));
        assert_eq!(target.token.as_deref(), Some("local-admin"));

        let missing = cli(&["--token-file", "/nonexistent/ferry-token"])?;
        let error = resolve(&missing, None, &loaded).expect_err("unreadable token file");
        assert!(format!("{error:#}").contains("/nonexistent/ferry-token"), "{error:#}");
        Ok(())
    }
}
