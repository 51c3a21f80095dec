//! `ferryd` configuration: one TOML document (every field optional, documented and
//! defaulted), overridden by command-line flags, validated at start into [`Settings`].
//!
//! `deploy/ferryd.toml` shows every field with its default; a test keeps it parseable
//! and equal to the defaults here.

mod api;
pub(crate) mod bandwidth;
mod duration;
mod env;
mod notify;
mod sections;

pub use self::api::{ApiConfig, ApiTls};
pub use self::notify::{BackendMode, LogConfig, LogFormat, NotifyConfig, RunAs, UploadConfig};
pub use self::sections::{
    BandwidthConfig, ClusterConfig, Connections, EventsConfig, OnStorageFailure, PeerCacheConfig,
    PeerConfig, ProposalConfig, RaftConfig, TransferConfig,
};

use std::path::{Path, PathBuf};

use ferry_protocol::limits::QueuePolicy;
use serde::{Deserialize, Serialize};

use crate::raft::RaftSettings;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the Raft log (`raft-log.redb`), the state (`state.redb`), the node
    /// id and generated credentials. Created if missing. Default `./ferry-data`.
    pub data_dir: PathBuf,
    /// The HTTP API.
    pub api: ApiConfig,
    /// The QUIC endpoint for peers and the event bus.
    pub peer: PeerConfig,
    /// Raft timing and log compaction.
    pub raft: RaftConfig,
    /// Grouping of concurrent writes into one Raft entry.
    pub proposals: ProposalConfig,
    /// BITS group-policy limits, replicated to every node (the leader proposes the
    /// configured values when they differ from the cluster's).
    pub policy: QueuePolicy,
    /// The transfer engine and the scheduler.
    pub transfer: TransferConfig,
    /// Joining a cluster.
    pub cluster: ClusterConfig,
    /// The job event history behind the notification bus.
    pub events: EventsConfig,
    /// The notify command line (`SetNotifyCmdLine`).
    pub notify: NotifyConfig,
    /// The BITS upload server (`BITS_POST /bits/<path>`).
    pub upload: UploadConfig,
    /// What this node offers to other members' downloads (the peer cache).
    pub peer_cache: PeerCacheConfig,
    /// This node's bandwidth limit of background transfers, and its work-hours
    /// schedule.
    pub bandwidth: BandwidthConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ferry-data"),
            api: ApiConfig::default(),
            peer: PeerConfig::default(),
            raft: RaftConfig::default(),
            proposals: ProposalConfig::default(),
            policy: QueuePolicy::default(),
            transfer: TransferConfig::default(),
            cluster: ClusterConfig::default(),
            events: EventsConfig::default(),
            notify: NotifyConfig::default(),
            upload: UploadConfig::default(),
            peer_cache: PeerCacheConfig::default(),
            bandwidth: BandwidthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this structure.
    #[error("config file {path} is not valid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The configuration of the file at `path` (or the defaults), with the fields the
    /// `FERRYD_*` variables among `vars` set ([`env`]); also the names of those
    /// variables.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.into(), source })?,
            None => String::new(),
        };
        let parse_error = |source| ConfigError::Parse {
            path: path.unwrap_or(Path::new("")).into(),
            source: Box::new(source),
        };
        // Parsed as the configuration first, for errors that point into the file.
        let config: Self = toml::from_str(&text).map_err(parse_error)?;
        let vars: Vec<_> = vars.into_iter().filter(|(name, _)| env::is_ours(name)).collect();
        if vars.is_empty() {
            return Ok((config, Vec::new()));
        }
        let file: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let with = |vars: &[(std::ffi::OsString, std::ffi::OsString)]| {
            let mut doc = file.clone();
            let used = env::overlay(&mut doc, vars.iter().cloned())?;
            let config = toml::Value::Table(doc).try_into::<Self>();
            Ok::<_, ConfigError>((config, used))
        };
        let (all, used) = with(&vars)?;
        let error = match all {
            Ok(config) => return Ok((config, used)),
            Err(error) => error,
        };
        // Name the variable at fault: the first that fails applied alone.
        for var in &vars {
            if let (Err(alone), names) = with(std::slice::from_ref(var))? {
                return Err(ConfigError::Invalid(format!(
                    "environment variable {}: {}",
                    names.join(""),
                    alone.message()
                )));
            }
        }
        Err(ConfigError::Invalid(format!(
            "the environment ({}) does not fit the configuration: {}",
            used.join(", "),
            error.message()
        )))
    }

    /// Reads the secrets given as files (`token_file`, `join_token_file`) into their
    /// fields.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        fn read(path: &Path, what: &str) -> Result<String, ConfigError> {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("{what}: cannot read {}: {e}", path.display()))
            })?;
            let secret = text.trim_end_matches(['\n', '\r']).to_string();
            if secret.is_empty() {
                return Err(ConfigError::Invalid(format!("{what}: {} is empty", path.display())));
            }
            Ok(secret)
        }
        for entry in &mut self.api.tokens {
            match (&entry.token_file, entry.token.is_empty()) {
                (Some(path), true) => entry.token = read(path, "api.tokens.token_file")?,
                (Some(_), false) => {
                    return Err(ConfigError::Invalid(format!(
                        "api.tokens: the entry of {} has both token and token_file",
                        entry.principal
                    )));
                }
                (None, true) => {
                    return Err(ConfigError::Invalid(format!(
                        "api.tokens: the entry of {} needs token or token_file",
                        entry.principal
                    )));
                }
                (None, false) => {}
            }
        }
        if let Some(path) = &self.cluster.join_token_file {
            if self.cluster.join_token.is_some() {
                return Err(ConfigError::Invalid(
                    "cluster.join_token and cluster.join_token_file are both set: keep one".into(),
                ));
            }
            self.cluster.join_token = Some(read(path, "cluster.join_token_file")?);
        }
        if let Some(dir) = &self.cluster.identity_dir
            && self.cluster.join_token.is_none()
            && !self.cluster.join.is_empty()
        {
            self.cluster.join_token = Some(read(&dir.join("join.token"), "cluster.identity_dir")?);
        }
        Ok(())
    }

    /// Checks the values and turns them into [`Settings`] (reading the secrets given as
    /// files).
    pub fn validate(mut self) -> Result<Settings, ConfigError> {
        self.read_secret_files()?;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.api.tokens.is_empty() && !self.api.listen.ip().is_loopback() {
            return invalid(format!(
                "no API tokens are configured, so ferryd only listens on loopback, not {}; \
                 add [[api.tokens]] entries to listen there",
                self.api.listen
            ));
        }
        let auth = ferry_coordinator::Auth::new(&self.api.tokens)
            .map_err(|e| ConfigError::Invalid(format!("api.tokens: {e}")))?;
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes must be at least 1024".into());
        }
        if self.api.max_concurrent_requests == 0 {
            return invalid("api.max_concurrent_requests must be at least 1".into());
        }
        let a = &self.api;
        if a.max_requests_per_principal == Some(0) || a.max_connections == 0 {
            return invalid(
                "api.max_requests_per_principal and api.max_connections must be at least 1".into(),
            );
        }
        if a.requests_per_principal() >= a.max_concurrent_requests && a.max_concurrent_requests > 1
        {
            return invalid(
                "api.max_requests_per_principal must be below api.max_concurrent_requests, \
                 so that one token cannot take every request slot"
                    .into(),
            );
        }
        if a.header_timeout_secs == 0 || a.body_timeout_secs == 0 || a.body_min_bytes_per_sec == 0 {
            return invalid(
                "api.header_timeout_secs, body_timeout_secs and body_min_bytes_per_sec must be \
                 at least 1"
                    .into(),
            );
        }
        if a.tls_cert.is_some() != a.tls_key.is_some() {
            return invalid("api.tls_cert and api.tls_key are given together or not at all".into());
        }
        if a.tls == ApiTls::Off && a.tls_cert.is_some() {
            return invalid("api.tls = \"off\" contradicts api.tls_cert: drop one of them".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms {
            return invalid("raft: the election timeout must exceed a non-zero heartbeat".into());
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return invalid(
                "raft.election_timeout_max_ms must exceed election_timeout_min_ms".into(),
            );
        }
        if self.proposals.max_batch == 0 {
            return invalid("proposals.max_batch must be at least 1".into());
        }
        let p = &self.policy;
        if p.max_jobs_per_user == 0
            || p.max_jobs == 0
            || p.max_files_per_job == 0
            || p.max_ranges_per_file == 0
        {
            return invalid("policy limits must be at least 1".into());
        }
        let t = &self.transfer;
        if t.chunk_size_bytes < ferry_protocol::transfer::MIN_CHUNK_SIZE {
            return invalid(format!(
                "transfer.chunk_size_bytes must be at least {}",
                ferry_protocol::transfer::MIN_CHUNK_SIZE
            ));
        }
        if let Connections::Fixed(n) = t.connections
            && !(1..=ferry_protocol::limits::MAX_CONNECTIONS_PER_FILE).contains(&n)
        {
            return invalid("transfer.connections must be 1 to 16, or \"auto\"".into());
        }
        if t.time_slice_ms == 0 {
            return invalid("transfer.time_slice_ms must be at least 1".into());
        }
        if t.connect_timeout_secs == 0 || t.read_timeout_secs == 0 {
            return invalid("transfer timeouts must be at least 1 second".into());
        }
        bandwidth::Schedule::new(&self.bandwidth)
            .map_err(|e| ConfigError::Invalid(format!("bandwidth: {e}")))?;
        if self.events.history_max_events == 0 || self.events.history_max_age_secs == 0 {
            return invalid("events: the history must keep at least 1 event for 1 second".into());
        }
        self.notify.check().map_err(ConfigError::Invalid)?;
        let u = &self.upload;
        match (&u.backend, u.backend_url.as_deref()) {
            (BackendMode::None, _) => {}
            (_, Some(url)) if url.starts_with("http://") && url::Url::parse(url).is_ok() => {}
            (mode, url) => {
                return invalid(format!(
                    "upload.backend = {mode:?} needs upload.backend_url, a plain http URL (got {url:?})"
                ));
            }
        }
        if u.backend_timeout_secs == 0 {
            return invalid("upload.backend_timeout_secs must be at least 1".into());
        }
        if u.host_id
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.len() > 300 || h.contains(['/', ' ']))
        {
            return invalid("upload.host_id is a host name or address (with an optional port), at most 300 characters".into());
        }
        let raft = RaftSettings {
            heartbeat_ms: r.heartbeat_ms,
            election_timeout_ms: (r.election_timeout_min_ms, r.election_timeout_max_ms),
            snapshot_after_entries: r.snapshot_after_entries.max(1),
            keep_entries_after_snapshot: r.keep_entries_after_snapshot,
        };
        Ok(Settings { auth, raft, config: self })
    }
}

/// A checked configuration.
#[derive(Clone)]
pub struct Settings {
    /// The configuration as given.
    pub config: Config,
    /// The token table (empty: a generated admin token will be added at start).
    pub auth: ferry_coordinator::Auth,
    /// Raft settings.
    pub raft: RaftSettings,
}

impl Settings {
    /// How much event history the node keeps.
    pub fn retention(&self) -> crate::events::Retention {
        crate::events::Retention {
            max_events: self.config.events.history_max_events,
            max_age: std::time::Duration::from_secs(self.config.events.history_max_age_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_coordinator::TokenEntry;

    use super::*;

    #[test]
    fn the_documented_sample_is_the_default() {
        let sample = include_str!("../../../deploy/ferryd.toml");
        let parsed: Config = toml::from_str(sample).expect("deploy/ferryd.toml parses");
        assert_eq!(parsed, Config::default(), "deploy/ferryd.toml must show the defaults");
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let parsed: Config = toml::from_str("").expect("empty parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn bandwidth_rates_take_units_and_bad_schedules_are_refused() {
        let text = "[bandwidth]\nbackground_rate = \"20MB\"\nwork_hours_rate = \"2.5 MiB\"\n\
            work_hours = { days = [\"mon\", \"fri\"], from = \"08:00\", to = \"17:00\" }";
        let config: Config = toml::from_str(text).expect("parses");
        assert_eq!(config.bandwidth.background_rate, 20_000_000);
        assert_eq!(config.bandwidth.work_hours_rate, Some(2_621_440));
        assert!(config.clone().validate().is_ok());
        let printed = toml::to_string_pretty(&config).expect("prints");
        assert_eq!(toml::from_str::<Config>(&printed).expect("reads back"), config, "{printed}");
        let mut bad = config;
        bad.bandwidth.work_hours_rate = None;
        assert!(
            matches!(bad.validate(), Err(ConfigError::Invalid(m)) if m.starts_with("bandwidth: "))
        );
        let vars = [("FERRYD_BANDWIDTH__BACKGROUND_RATE".into(), "512 KiB".into())];
        let (config, _) = Config::load(None, vars).expect("loads");
        assert_eq!(config.bandwidth.background_rate, 524_288);
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(toml::from_str::<Config>("[api]\nlisten_on = \"x\"").is_err());
    }

    #[test]
    fn notify_programs_are_absolute_and_never_run_as_root() {
        let parse = |text: &str| toml::from_str::<Config>(text).map(|c| c.notify.check());
        let ok = "[notify]\nallowed_programs = [\"/usr/bin/logger\"]\nrun_as = { uid = 65534, gid = 65534 }";
        assert_eq!(parse(ok).expect("parses"), Ok(()));
        for bad in [
            "[notify]\nallowed_programs = [\"logger\"]",
            "[notify]\nallowed_programs = [\"/usr/bin/../bin/sh\"]",
            "[notify]\nrun_as = { uid = 0, gid = 65534 }",
            "[notify]\nrun_as = { uid = 65534, gid = 0 }",
            "[notify]\ntimeout_secs = 0",
        ] {
            assert!(parse(bad).expect("parses").is_err(), "{bad}");
        }
        assert!(parse("[notify]\nrun_as = { uid = 65534 }").is_err(), "gid is required");
    }

    #[test]
    fn the_api_speaks_tls_beyond_loopback_unless_told_otherwise() {
        let mut api = ApiConfig::default();
        assert!(!api.uses_tls(), "ferryd with no arguments: plain HTTP on loopback");
        api.listen = "0.0.0.0:7070".parse().expect("addr");
        assert!(api.uses_tls());
        api.listen = "10.1.2.3:7070".parse().expect("addr");
        assert!(api.uses_tls());
        api.tls = ApiTls::Off;
        assert!(!api.uses_tls(), "the explicit opt-out");
        api.listen = "127.0.0.1:7070".parse().expect("addr");
        api.tls = ApiTls::On;
        assert!(api.uses_tls());
        api.tls = ApiTls::Auto;
        api.tls_cert = Some("/etc/ferry/api.pem".into());
        assert!(api.uses_tls(), "a configured certificate is served on loopback too");
    }

    #[test]
    fn tls_settings_must_agree() {
        let mut config = Config::default();
        config.api.tls_cert = Some("/etc/ferry/api.pem".into());
        assert!(matches!(config.clone().validate(), Err(ConfigError::Invalid(_))));
        config.api.tls_key = Some("/etc/ferry/api.key".into());
        assert!(config.clone().validate().is_ok());
        config.api.tls = ApiTls::Off;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn one_principal_never_takes_every_request_slot() {
        let mut config = Config::default();
        assert_eq!(config.api.requests_per_principal(), 224);
        config.api.max_concurrent_requests = 16;
        assert_eq!(config.api.requests_per_principal(), 14, "the default follows the total");
        config.api.max_requests_per_principal = Some(16);
        assert!(matches!(config.clone().validate(), Err(ConfigError::Invalid(_))));
        config.api.max_requests_per_principal = Some(15);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn no_tokens_means_loopback_only() {
        let mut config = Config::default();
        config.api.listen = "0.0.0.0:7070".parse().expect("addr");
        assert!(matches!(config.clone().validate(), Err(ConfigError::Invalid(_))));
        config.api.tokens.push(TokenEntry::new(
            "0123456789abcdef0123",
            "ops",
            ferry_protocol::Role::Admin,
        ));
        assert!(config.validate().is_ok());
    }
}
