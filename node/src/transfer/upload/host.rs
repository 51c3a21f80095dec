//! Where a session's packets go: the job's server, or the host its `BITS-Host-Id`
//! names when the rule allows it, back to the server after the fallback timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_protocol::job::UploadState;

use super::super::EngineSettings;
use crate::egress::{self, EgressPolicy};

/// When each session's host id first failed to connect, without a success since: kept
/// across the runs of this process (a run ends at the first failure, and the fallback
/// timeout counts from the first one).
static HOST_FAILURES: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// Sessions whose host id named a host the egress policy refused at connect time (a
/// name resolving to a refused address): their packets stay on the job's server.
static REFUSED_HOST_IDS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// Sessions remembered in [`REFUSED_HOST_IDS`] at most (a bound, not a quota).
const MAX_REFUSED_HOST_IDS: usize = 4096;

/// Which `BITS-Host-Id` targets a session may move to.
#[derive(Clone, Copy)]
pub(crate) struct HostIdRule<'a> {
    /// The node's egress policy.
    policy: EgressPolicy,
    /// `transfer.trusted_host_ids`.
    trusted: &'a [String],
}

impl<'a> HostIdRule<'a> {
    /// The rule of a node with `settings`.
    pub(crate) fn of(settings: &'a EngineSettings) -> Self {
        Self { policy: settings.egress, trusted: &settings.trusted_host_ids }
    }

    /// Why packets for `original` may not go to `moved` (the URL with the host id), if
    /// they may not.
    pub(super) fn refusal(self, original: &str, moved: &str) -> Option<String> {
        let (Ok(original), Ok(moved)) = (url::Url::parse(original), url::Url::parse(moved)) else {
            return Some("not a valid host".into());
        };
        if let Err(refused) = egress::check_url(self.policy, &moved) {
            return Some(refused.to_string());
        }
        let host = moved.host_str().unwrap_or_default();
        let listed = self.trusted.iter().any(|entry| egress::host_listed(host, entry));
        if !listed && !egress::same_site(&original, &moved) {
            return Some(format!(
                "{host} is not on the site of {} (same scheme and registrable domain) nor in transfer.trusted_host_ids",
                original.host_str().unwrap_or_default()
            ));
        }
        None
    }
}

/// Where the session's packets go: the job's URL, or the server's `BITS-Host-Id`.
pub(super) struct Target {
    pub(super) original: String,
    pub(super) host: Option<String>,
    pub(super) fallback: Option<Duration>,
    /// The session, for [`HOST_FAILURES`].
    pub(super) session: Option<String>,
    /// The first connection failure to the host id not followed by a success.
    pub(super) failing_since: Option<Instant>,
}

impl Target {
    pub(super) fn new(original: &str, state: &UploadState, rule: HostIdRule<'_>) -> Self {
        let refused_before = state.session.as_ref().is_some_and(|s| {
            REFUSED_HOST_IDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(s)
        });
        let host = state
            .host_id
            .as_deref()
            .filter(|_| !refused_before)
            .and_then(|host| with_host(original, host))
            .filter(|moved| match rule.refusal(original, moved) {
                None => true,
                Some(why) => {
                    tracing::info!(host_id = ?state.host_id, %why, "BITS-Host-Id ignored: the session stays on the job's server");
                    false
                }
            });
        let failures = HOST_FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self {
            original: original.to_owned(),
            host,
            fallback: state.host_fallback_secs.map(Duration::from_secs),
            failing_since: state.session.as_ref().and_then(|s| failures.get(s).copied()),
            session: state.session.clone(),
        }
    }

    /// A connection to the host id failed (`false`) or a packet got through (`true`).
    pub(super) fn connected(&mut self, ok: bool) {
        let Some(session) = &self.session else { return };
        let mut failures = HOST_FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ok {
            self.failing_since = None;
            failures.remove(session);
        } else if self.host.is_some() {
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            failures.insert(session.clone(), since);
        }
    }

    /// The egress policy refused the host id at connect time: stay on the job's server
    /// for the rest of the session.
    pub(super) fn refuse_host(&mut self) {
        tracing::info!(host = ?self.host, "BITS-Host-Id refused by the egress policy: the session stays on the job's server");
        self.host = None;
        if let Some(session) = &self.session {
            let mut refused =
                REFUSED_HOST_IDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if refused.len() >= MAX_REFUSED_HOST_IDS {
                refused.clear();
            }
            refused.insert(session.clone());
        }
    }

    pub(super) fn url(&self) -> &str {
        match (&self.host, self.failing_since, self.fallback) {
            (Some(_), Some(since), Some(fallback)) if since.elapsed() >= fallback => &self.original,
            (Some(host), _, _) => host,
            (None, _, _) => &self.original,
        }
    }
}

/// `url` with its host (and port, if `host` names one) replaced by `host`.
pub(super) fn with_host(url: &str, host: &str) -> Option<String> {
    let mut parsed = url::Url::parse(url).ok()?;
    let probe = url::Url::parse(&format!("{}://{host}/", parsed.scheme())).ok()?;
    parsed.set_host(probe.host_str()).ok()?;
    if probe.port().is_some() {
        parsed.set_port(probe.port()).ok()?;
    }
    Some(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_replace_the_host_and_port_only() {
        assert_eq!(
            with_host("http://a.example:7070/bits/x?q=1", "127.0.0.2:8080").as_deref(),
            Some("http://127.0.0.2:8080/bits/x?q=1")
        );
        assert_eq!(
            with_host("https://a.example/bits/x", "farm-7").as_deref(),
            Some("https://farm-7/bits/x")
        );
        assert_eq!(with_host("http://a/x", "bad host"), None);
    }

    #[test]
    fn host_ids_must_be_on_the_site_or_listed_and_allowed() {
        let trusted = vec!["farm.example.net".to_owned()];
        let rule = HostIdRule { policy: EgressPolicy::default(), trusted: &trusted };
        let original = "https://upload.example.com/bits/x";
        assert_eq!(rule.refusal(original, "https://node7.example.com:8443/bits/x"), None);
        assert_eq!(rule.refusal(original, "https://n1.farm.example.net/bits/x"), None);
        for refused in [
            "https://evil.example.org/bits/x",
            "https://169.254.169.254/bits/x",
            "https://[::ffff:a9fe:a9fe]/bits/x",
            "https://2852039166/bits/x",
            "http://node7.example.com/bits/x",
        ] {
            assert!(rule.refusal(original, refused).is_some(), "{refused}");
        }
        // A listed host is still subject to the policy.
        let trusted = vec!["169.254.169.254".to_owned()];
        let rule = HostIdRule { policy: EgressPolicy::default(), trusted: &trusted };
        assert!(rule.refusal("http://127.0.0.1/x", "http://169.254.169.254/x").is_some());
        let state =
            UploadState { host_id: Some("169.254.169.254:80".into()), ..UploadState::default() };
        let target = Target::new("http://127.0.0.1:7070/bits/x", &state, rule);
        assert_eq!(target.url(), "http://127.0.0.1:7070/bits/x", "ignored");
    }

    #[test]
    fn the_host_id_is_left_after_its_fallback_timeout() {
        let state = UploadState {
            host_id: Some("b:1".into()),
            host_fallback_secs: Some(0),
            ..UploadState::default()
        };
        let trusted = vec!["b".to_owned()];
        let rule = HostIdRule { policy: EgressPolicy::default(), trusted: &trusted };
        let mut target = Target::new("http://a:1/x", &state, rule);
        assert_eq!(target.url(), "http://b:1/x");
        target.failing_since = Some(Instant::now());
        assert_eq!(target.url(), "http://a:1/x");
        target.fallback = None;
        assert_eq!(target.url(), "http://b:1/x", "no fallback timeout: the host id for ever");
    }
}
