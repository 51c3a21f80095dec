//! Bearer tokens mapped to principals. Tokens are looked up by their BLAKE3 digest, so a
//! lookup does not compare secret bytes and the table holds no plaintext.
//!
//! Two sources answer, in order: the node's configured tokens (`[[api.tokens]]`, its
//! own), then the cluster's principals in the replicated state (a [`Directory`]), which
//! every member shares, so a token made through the API works on any member and its
//! revocation reaches all of them with the next applied entry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ferry_protocol::{BitsCode, Caller, Principal, Role};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;
use crate::routes::ApiState;

/// A configured token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The secret the client sends as `Authorization: Bearer <token>` (or `token_file`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// A file holding the token instead (a mounted secret): its content, without the
    /// trailing newline, is read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The principal it authenticates.
    pub principal: String,
    /// `user` or `admin`.
    pub role: Role,
    /// Directories this principal's jobs may name local files in (downloads'
    /// destinations, upload sources, reply files, client certificates). Unset: the
    /// node's `[transfer] destination_roots`. Empty (and no node roots): the principal
    /// may name no local file at all. `["/"]` gives full access (what the generated
    /// admin token has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<PathBuf>>,
    /// The OS user this principal's file operations run as (its files are created with
    /// this owner, and the kernel checks its rights); unset: ferryd's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The OS group of those file operations; unset: `uid`'s number, or ferryd's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl TokenEntry {
    /// An entry with no roots or OS identity of its own.
    pub fn new(token: impl Into<String>, principal: impl Into<String>, role: Role) -> Self {
        Self {
            token: token.into(),
            token_file: None,
            principal: principal.into(),
            role,
            roots: None,
            uid: None,
            gid: None,
        }
    }
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("token", &"<redacted>")
            .field("token_file", &self.token_file)
            .field("principal", &self.principal)
            .field("role", &self.role)
            .field("roots", &self.roots)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .finish()
    }
}

/// Why a token table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A token is shorter than 16 characters.
    #[error("the token of principal {0:?} is shorter than 16 characters")]
    WeakToken(String),
    /// The same token appears twice.
    #[error("a token is configured twice (principal {0:?})")]
    DuplicateToken(String),
    /// A principal name is not valid.
    #[error("principal {0:?}: {1}")]
    BadPrincipal(String, ferry_protocol::ids::InvalidId),
    /// One principal is configured with two roles.
    #[error("principal {0:?} is configured with two different roles")]
    ConflictingRoles(String),
    /// One principal is configured with two sets of roots or two OS identities.
    #[error("principal {0:?} is configured with two different roots, uids or gids")]
    ConflictingSandboxes(String),
}

/// The cluster's principals, as this node has applied them.
pub trait Directory: Send + Sync + 'static {
    /// The caller a live token's digest authenticates.
    fn caller(&self, digest: &[u8; 32]) -> Option<Caller>;
    /// The role and own roots (`None`: each node's default roots) of a principal of
    /// the cluster, revoked or not (its jobs keep their roots); `None` if it is not one.
    fn entry(&self, principal: &Principal) -> Option<(Role, Option<Vec<PathBuf>>)>;
}

impl std::fmt::Debug for dyn Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cluster's principals")
    }
}

/// Token digests to callers.
#[derive(Clone, Default)]
pub struct Auth {
    callers: HashMap<[u8; 32], Caller>,
    directory: Option<Arc<dyn Directory>>,
}

/// How often an open event stream checks that its token still authenticates.
pub const RECHECK_EVERY: Duration = Duration::from_millis(200);

impl Auth {
    /// Builds the table, refusing weak or duplicate tokens and conflicting roles.
    pub fn new(entries: &[TokenEntry]) -> Result<Self, AuthConfigError> {
        let mut callers = HashMap::new();
        let mut roles: HashMap<&str, Role> = HashMap::new();
        let mut sandboxes: HashMap<&str, &TokenEntry> = HashMap::new();
        for entry in entries {
            let first = *sandboxes.entry(&entry.principal).or_insert(entry);
            if (&first.roots, first.uid, first.gid) != (&entry.roots, entry.uid, entry.gid) {
                return Err(AuthConfigError::ConflictingSandboxes(entry.principal.clone()));
            }
            if entry.token.len() < 16 {
                return Err(AuthConfigError::WeakToken(entry.principal.clone()));
            }
            let principal = Principal::new(entry.principal.clone())
                .map_err(|e| AuthConfigError::BadPrincipal(entry.principal.clone(), e))?;
            if *roles.entry(&entry.principal).or_insert(entry.role) != entry.role {
                return Err(AuthConfigError::ConflictingRoles(entry.principal.clone()));
            }
            let digest = *blake3::hash(entry.token.as_bytes()).as_bytes();
            if callers.insert(digest, Caller { principal, role: entry.role }).is_some() {
                return Err(AuthConfigError::DuplicateToken(entry.principal.clone()));
            }
        }
        Ok(Self { callers, directory: None })
    }

    /// This table, falling back to the cluster's principals in `directory`.
    pub fn with_directory(mut self, directory: Arc<dyn Directory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The caller a token authenticates: a configured one, else a live principal of
    /// the cluster.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let digest = blake3::hash(token.as_bytes());
        if let Some(caller) = self.callers.get(digest.as_bytes()) {
            return Some(caller.clone());
        }
        self.directory.as_ref()?.caller(digest.as_bytes())
    }

    /// Resolves once `token` no longer authenticates `caller` (revoked in the cluster),
    /// checking every [`RECHECK_EVERY`]: what an open event stream waits on beside its
    /// events, so that a revocation ends it within a second.
    pub async fn revoked(&self, token: &str, caller: &Caller) {
        loop {
            tokio::time::sleep(RECHECK_EVERY).await;
            if self.caller(token).as_ref() != Some(caller) {
                return;
            }
        }
    }

    /// The caller a request's token authenticates: `Authorization: Bearer TOKEN`, or
    /// Basic with the token as the password (what BITS clients send).
    pub fn caller_of(&self, headers: &axum::http::HeaderMap) -> Option<Caller> {
        let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.split_once(' ')?;
        let token = if scheme.eq_ignore_ascii_case("bearer") {
            rest.trim().to_owned()
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
            String::from_utf8(decoded).ok()?.split_once(':')?.1.to_owned()
        } else {
            return None;
        };
        self.caller(&token)
    }

    /// True if no token is configured (the cluster's principals are not counted).
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }
}

/// The authenticated caller of a request (extractor).
pub struct Authenticated(pub Caller);

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let refused = |detail: &str| {
            // Refused before the body is read: a body still in flight ends the connection.
            let error = ApiError::unauthorized(detail);
            if has_body(parts) { error.closing_connection() } else { error }
        };
        if !parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
            return Err(refused(
                "this request needs an API token: send 'Authorization: Bearer <token>'",
            ));
        }
        let token = bearer(&parts.headers)
            .ok_or_else(|| refused("the Authorization header must be 'Bearer <token>'"))?;
        state
            .auth
            .caller(token)
            .map(Authenticated)
            .ok_or_else(|| refused("the API token is not valid"))
    }
}

/// A new random API token: 32 bytes, hex.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

/// True if the request announces a body.
fn has_body(parts: &Parts) -> bool {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    parts.headers.contains_key(TRANSFER_ENCODING)
        || parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

impl ApiError {
    /// 401 with `E_ACCESSDENIED`.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(401, BitsCode::E_ACCESSDENIED, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str, principal: &str, role: Role) -> TokenEntry {
        TokenEntry::new(token, principal, role)
    }

    #[test]
    fn tokens_map_to_callers() {
        let auth = Auth::new(&[
            entry("alice-token-0123456789", "alice", Role::User),
            entry("admin-token-0123456789", "root", Role::Admin),
        ])
        .expect("valid");
        assert_eq!(
            auth.caller("alice-token-0123456789").map(|c| c.principal.as_str().to_owned()),
            Some("alice".to_owned())
        );
        assert!(auth.caller("alice-token-012345678").is_none());
        assert!(
            format!("{:?}", entry("secret-secret-secret", "a", Role::User)).contains("redacted")
        );
    }

    #[test]
    fn weak_duplicate_and_conflicting_tokens_are_refused() {
        assert!(Auth::new(&[entry("short", "a", Role::User)]).is_err());
        let t = "abcdefghijklmnopqrstuvwxyz";
        assert!(Auth::new(&[entry(t, "a", Role::User), entry(t, "b", Role::User)]).is_err());
        let u = "0123456789abcdefghij";
        assert!(Auth::new(&[entry(t, "a", Role::User), entry(u, "a", Role::Admin)]).is_err());
        let mut rooted = entry(u, "a", Role::User);
        rooted.roots = Some(vec!["/srv/a".into()]);
        assert!(Auth::new(&[entry(t, "a", Role::User), rooted]).is_err());
    }
}
