//! Which node to talk to and with which token: flags and environment first, then the
//! files a local node leaves in its data directory (`api.addr`, `admin.token`).

use std::path::Path;

use crate::args::Cli;

/// The node URL: `--node`/`FERRY_NODE`, else the local node's `api.addr`, else the
/// default `http://127.0.0.1:7070`.
pub(crate) fn node_url(cli: &Cli) -> String {
    if let Some(node) = &cli.node {
        return node.clone();
    }
    match read_trimmed(&cli.data_dir.join("api.addr")) {
        Some(addr) => format!("http://{addr}"),
        None => "http://127.0.0.1:7070".to_owned(),
    }
}

/// The token: `--token`/`FERRY_TOKEN`, else the local node's `admin.token`.
pub(crate) fn token(cli: &Cli) -> Option<String> {
    cli.token.clone().or_else(|| read_trimmed(&cli.data_dir.join("admin.token")))
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
