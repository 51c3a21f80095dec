//! The client configuration file, `$XDG_CONFIG_HOME/ferry/config.toml` (else
//! `~/.config/ferry/config.toml`, or the file `--config`/`FERRY_CONFIG` names): which
//! node to talk to and how to prove who the caller is, so that a user need not repeat
//! `--node`, `--token` and `--ca` on every command. Flags and environment variables
//! override it (see `target`).
//!
//! ```toml
//! node = "https://ferry-1.example.net:7070"  # the API URL
//! token_file = "~/.config/ferry/token"        # a file holding the API token
//! ca = "/etc/ferry/ca.pem"                    # the CA of the node's certificate
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// What the file may say; every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientConfig {
    /// The node's API URL (`--node`, `FERRY_NODE` override it).
    pub(crate) node: Option<String>,
    /// A file whose content is the API token (`--token`, `FERRY_TOKEN`,
    /// `--token-file`, `FERRY_TOKEN_FILE` override it). A file, not the token itself,
    /// so that the configuration can be shared and shown.
    pub(crate) token_file: Option<PathBuf>,
    /// PEM file of the CA of the node's API certificate (`--ca`, `FERRY_CA` override it).
    pub(crate) ca: Option<PathBuf>,
}

/// A loaded configuration and where it came from (named in hints).
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The settings (all `None` when there is no file).
    pub(crate) config: ClientConfig,
    /// The file they were read from, if one exists.
    pub(crate) path: Option<PathBuf>,
}

/// The default location: `$XDG_CONFIG_HOME/ferry/config.toml`, else
/// `$HOME/.config/ferry/config.toml`; `None` with neither variable set.
pub(crate) fn default_path() -> Option<PathBuf> {
    default_path_in(|name| std::env::var_os(name))
}

/// [`default_path`] with the environment read through `var`.
fn default_path_in(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = match set("XDG_CONFIG_HOME") {
        Some(dir) => dir,
        None => set("HOME")?.join(".config"),
    };
    Some(base.join("ferry").join("config.toml"))
}

/// Loads `explicit` (which must exist) or the default file (which may be absent).
pub(crate) fn load(explicit: Option<&Path>) -> anyhow::Result<Loaded> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => match default_path() {
            Some(path) => (path, false),
            None => return Ok(Loaded::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(Loaded::default());
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the config file {}", path.display()));
        }
    };
    let config = parse(&text, &path)?;
    Ok(Loaded { config, path: Some(path) })
}

/// Parses the file's text; relative paths in it are taken from the file's directory,
/// and a leading `~/` from the home directory.
fn parse(text: &str, path: &Path) -> anyhow::Result<ClientConfig> {
    let mut config: ClientConfig = toml::from_str(text).with_context(|| {
        format!("the config file {} is not valid (keys: node, token_file, ca)", path.display())
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    config.token_file = config.token_file.map(|p| resolve(&p, dir));
    config.ca = config.ca.map(|p| resolve(&p, dir));
    Ok(config)
}

fn resolve(path: &Path, dir: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if path.is_absolute() { path.to_path_buf() } else { dir.join(path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_paths_and_unknown_keys() -> anyhow::Result<()> {
        let path = Path::new("/etc/ferry-client/config.toml");
        let text = "node = \"https://n1:7070\"\ntoken_file = \"token\"\nca = \"/pki/ca.pem\"\n";
        let config = parse(text, path)?;
        assert_eq!(config.node.as_deref(), Some("https://n1:7070"));
        assert_eq!(config.token_file, Some(PathBuf::from("/etc/ferry-client/token")));
        assert_eq!(config.ca, Some(PathBuf::from("/pki/ca.pem")));
        assert_eq!(parse("", path)?, ClientConfig::default());
        let error = parse("nodes = \"x\"\n", path).expect_err("unknown key");
        assert!(format!("{error:#}").contains("nodes"), "{error:#}");
        Ok(())
    }

    #[test]
    fn the_default_file_follows_xdg_config_home() {
        fn env(
            xdg: Option<&'static str>,
            home: Option<&'static str>,
        ) -> impl Fn(&str) -> Option<std::ffi::OsString> {
            move |name: &str| match name {
                "XDG_CONFIG_HOME" => xdg.map(Into::into),
                "HOME" => home.map(Into::into),
                _ => None,
            }
        }
        let xdg = default_path_in(env(Some("/x"), Some("/home/u")));
        assert_eq!(xdg, Some(PathBuf::from("/x/ferry/config.toml")));
        let home = default_path_in(env(Some(""), Some("/home/u")));
        assert_eq!(home, Some(PathBuf::from("/home/u/.config/ferry/config.toml")));
        assert_eq!(default_path_in(env(None, None)), None);
    }

    #[test]
    fn a_missing_default_file_is_no_error_but_a_missing_named_one_is() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("none.toml");
        assert!(load(Some(&missing)).is_err());
        let named = dir.path().join("c.toml");
        std::fs::write(&named, "node = \"http://127.0.0.1:1\"\n")?;
        let loaded = load(Some(&named))?;
        assert_eq!(loaded.config.node.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(loaded.path, Some(named));
        Ok(())
    }
}
