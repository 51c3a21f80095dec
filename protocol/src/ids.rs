//! Identifiers that cross process boundaries: jobs, client requests, principals, nodes.
//!
//! Everything here is a small value type with a stable wire form. Parsing from user
//! input returns an error instead of panicking.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A job's identity: a UUID chosen by the node that accepted the create request (apply
/// is deterministic, so the id must already be in the command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh job id: a version 7 UUID (a millisecond timestamp, then random bits), so
    /// the ids one node hands out sort in the order it made them. The state machine's
    /// tables are keyed by job id: time-ordered ids put new rows at the end of the tree,
    /// where random ones touched a different page per job, a cost that grew with the
    /// queue (`ferry-bench scale`). Nothing relies on an id being unguessable: every
    /// access to a job is checked against its owner.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // BITS prints GUIDs in braces; the API and CLI use the bare hyphenated form.
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;

    /// Accepts the hyphenated, simple and braced (`{...}`, as BITS prints) forms.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s.trim()).map(Self)
    }
}

/// A client-chosen idempotency key. A retried request carrying the same id (from the
/// same principal) is applied once; the retry gets the first attempt's answer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(String);

/// Longest accepted request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

impl RequestId {
    /// Checks the id: 1 to [`MAX_REQUEST_ID_LEN`] printable ASCII characters.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        let printable = id.bytes().all(|b| b.is_ascii_graphic());
        if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN || !printable {
            return Err(InvalidId("request id must be 1-128 printable ASCII characters"));
        }
        Ok(Self(id))
    }

    /// A fresh request id (what the Rust client sends when the caller gives none): a
    /// version 7 UUID, time-ordered like [`JobId::generate`] for the same reason (the
    /// remembered requests are stored by principal and id).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An identifier was malformed; the text says which rule it broke.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub &'static str);

/// The role of an authenticated caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees and changes only the jobs it owns.
    User,
    /// Sees every job (`all_users`), may act on any job and take ownership.
    Admin,
}

/// The name of an authenticated principal. Job owners are principals.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", schema(value_type = String))]
pub struct Principal(String);

/// Longest accepted principal name, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 256;

impl Principal {
    /// Checks the name: 1 to [`MAX_PRINCIPAL_LEN`] bytes, no control characters.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidId> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_PRINCIPAL_LEN || name.chars().any(char::is_control) {
            return Err(InvalidId("principal names are 1-256 bytes without control characters"));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The principal of the nodes themselves, for commands they issue (policy updates,
    /// scheduler decisions). Not reachable through an API token unless one is
    /// configured with this name.
    pub fn system() -> Self {
        Self("ferryd".to_owned())
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking: the principal and its role, as established by the API's authentication.
/// Commands carry it so that apply enforces ownership deterministically on every node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    /// The authenticated name.
    pub principal: Principal,
    /// What the principal may do.
    pub role: Role,
}

impl Caller {
    /// True if the caller may read and change `owner`'s jobs.
    pub fn may_access(&self, owner: &Principal) -> bool {
        self.role == Role::Admin || &self.principal == owner
    }

    /// True for administrators.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A Raft node id. Ids are never reused within a cluster.
pub type NodeId = u64;

/// The id the node that founds a cluster takes; joining nodes get higher ones
/// ([`crate::command::Command::AllocateNodeId`]).
pub const FIRST_NODE_ID: NodeId = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_sort_in_the_order_they_were_made() {
        let jobs: Vec<JobId> = (0..10_000).map(|_| JobId::generate()).collect();
        assert!(jobs.windows(2).all(|w| w[0] < w[1]), "job ids out of order");
        let requests: Vec<RequestId> = (0..10_000).map(|_| RequestId::generate()).collect();
        assert!(requests.windows(2).all(|w| w[0] < w[1]), "request ids out of order");
    }

    #[test]
    fn job_id_accepts_the_forms_bits_prints() {
        let plain: JobId = "6a2f1c4e-9a0b-4c55-8d2e-0123456789ab".parse().expect("plain");
        let braced: JobId = "{6A2F1C4E-9A0B-4C55-8D2E-0123456789AB}".parse().expect("braced");
        assert_eq!(plain, braced);
        assert_eq!(plain.to_string(), "6a2f1c4e-9a0b-4c55-8d2e-0123456789ab");
        assert!("not-a-guid".parse::<JobId>().is_err());
    }

    #[test]
    fn request_ids_are_bounded_printable_ascii() {
        assert!(RequestId::new("abc-123").is_ok());
        assert!(RequestId::new("").is_err());
        assert!(RequestId::new("a b").is_err());
        assert!(RequestId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn callers_see_their_own_jobs_and_admins_see_all() {
        let alice = Principal::new("alice").expect("name");
        let bob = Principal::new("bob").expect("name");
        let user = Caller { principal: alice.clone(), role: Role::User };
        let admin = Caller { principal: Principal::new("root").expect("name"), role: Role::Admin };
        assert!(user.may_access(&alice));
        assert!(!user.may_access(&bob));
        assert!(admin.may_access(&bob));
    }
}
