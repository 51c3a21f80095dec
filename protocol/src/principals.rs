//! The cluster's principals (format 9): API tokens created through the API live in the
//! replicated state as digests, so any member accepts any live token and a revocation
//! reaches every member with the next applied entry. Tokens from a node's configuration
//! stay that node's own (they bootstrap a cluster); the token a founding node generated
//! becomes the first principal here ([`PrincipalCommand::SeedAdmin`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::BitsCode;
use crate::command::{CommandError, CommandResult, Reply};
use crate::ids::{Caller, Principal, Role};
use crate::time::Timestamp;

/// The format principals appeared in: values holding them carry this version byte.
pub const FORMAT: u8 = 9;

/// Most principals the table holds, revoked ones included.
pub const MAX_PRINCIPALS: usize = 10_000;

/// Most roots one principal may have.
pub const MAX_ROOTS: usize = 64;

/// BLAKE3 digest of a token: what the table keeps instead of the token.
pub type TokenDigest = [u8; 32];

/// The digest of `token`.
pub fn digest(token: &str) -> TokenDigest {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A principal of the replicated table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PrincipalRecord {
    /// Its name (job owners are principals).
    pub name: Principal,
    /// User or admin.
    pub role: Role,
    /// The directories its jobs may name local files in on every member; `None`: each
    /// node's `transfer.destination_roots`.
    pub roots: Option<Vec<String>>,
    /// Digest of its token.
    pub digest: TokenDigest,
    /// When it was created.
    pub created: Timestamp,
    /// When its token was revoked; a revoked principal authenticates nothing, but its
    /// jobs keep their roots.
    pub revoked: Option<Timestamp>,
}

/// A command on the principals table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum PrincipalCommand {
    /// `ferry token create` (administrators): a new principal, or a new token for a
    /// revoked one.
    Create {
        /// Its name.
        name: Principal,
        /// Its role.
        role: Role,
        /// Its roots (see [`PrincipalRecord::roots`]).
        roots: Option<Vec<String>>,
        /// Digest of the token the accepting node made or was given.
        digest: TokenDigest,
    },
    /// `ferry token revoke` (administrators).
    Revoke {
        /// The principal whose token stops working.
        name: Principal,
    },
    /// The founding node's generated admin token becomes principal `admin` with full
    /// access, once: ignored when the table holds any principal (the node itself only).
    SeedAdmin {
        /// Digest of the generated token.
        digest: TokenDigest,
    },
}

// Values holding principals are written with version byte 9 (see `codec`): a member
// still on format 8 refuses them instead of misreading them. The mirrors below borrow
// the values and serialize exactly as a derive on the types would.

#[derive(Serialize)]
#[serde(rename = "PrincipalRecord")]
struct RecordRef<'a> {
    name: &'a Principal,
    role: &'a Role,
    roots: &'a Option<Vec<String>>,
    digest: &'a TokenDigest,
    created: &'a Timestamp,
    revoked: &'a Option<Timestamp>,
}

impl Serialize for PrincipalRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::codec::needs_version(FORMAT);
        RecordRef {
            name: &self.name,
            role: &self.role,
            roots: &self.roots,
            digest: &self.digest,
            created: &self.created,
            revoked: &self.revoked,
        }
        .serialize(serializer)
    }
}

#[derive(Serialize)]
#[serde(rename = "PrincipalCommand")]
enum CommandRef<'a> {
    Create {
        name: &'a Principal,
        role: &'a Role,
        roots: &'a Option<Vec<String>>,
        digest: &'a TokenDigest,
    },
    Revoke {
        name: &'a Principal,
    },
    SeedAdmin {
        digest: &'a TokenDigest,
    },
}

impl Serialize for PrincipalCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::codec::needs_version(FORMAT);
        match self {
            Self::Create { name, role, roots, digest } => {
                CommandRef::Create { name, role, roots, digest }
            }
            Self::Revoke { name } => CommandRef::Revoke { name },
            Self::SeedAdmin { digest } => CommandRef::SeedAdmin { digest },
        }
        .serialize(serializer)
    }
}

/// The principals table and its index of live tokens.
#[derive(Clone, Debug, Default)]
pub struct Principals {
    by_name: BTreeMap<Principal, PrincipalRecord>,
    live: HashMap<TokenDigest, Principal>,
}

impl Principals {
    /// The table of these records.
    pub fn from_records(records: impl IntoIterator<Item = PrincipalRecord>) -> Self {
        let mut table = Self::default();
        for record in records {
            table.put(record);
        }
        table
    }

    fn put(&mut self, record: PrincipalRecord) {
        if let Some(old) = self.by_name.get(&record.name) {
            self.live.remove(&old.digest);
        }
        if record.revoked.is_none() {
            self.live.insert(record.digest, record.name.clone());
        }
        self.by_name.insert(record.name.clone(), record);
    }

    /// The caller a live token's digest authenticates.
    pub fn caller(&self, digest: &TokenDigest) -> Option<Caller> {
        let name = self.live.get(digest)?;
        let record = self.by_name.get(name)?;
        Some(Caller { principal: record.name.clone(), role: record.role })
    }

    /// A principal's record, revoked or not.
    pub fn get(&self, name: &Principal) -> Option<&PrincipalRecord> {
        self.by_name.get(name)
    }

    /// Every record, by name.
    pub fn records(&self) -> impl Iterator<Item = &PrincipalRecord> {
        self.by_name.values()
    }

    /// Applies `command` for `caller` at `now`; the name it changed, if any.
    pub(crate) fn apply(
        &mut self,
        caller: &Caller,
        command: &PrincipalCommand,
        now: Timestamp,
    ) -> (CommandResult, Option<Principal>) {
        match command {
            PrincipalCommand::SeedAdmin { digest } => {
                if caller.principal != Principal::system() {
                    return (Err(denied("only a node seeds the first principal")), None);
                }
                if !self.by_name.is_empty() {
                    return (Ok(Reply::Done(BitsCode::S_OK)), None);
                }
                let Ok(name) = Principal::new("admin") else {
                    return (Err(denied("the first principal's name is not valid")), None);
                };
                self.put(PrincipalRecord {
                    name: name.clone(),
                    role: Role::Admin,
                    roots: Some(vec!["/".into()]),
                    digest: *digest,
                    created: now,
                    revoked: None,
                });
                (Ok(Reply::Done(BitsCode::S_OK)), Some(name))
            }
            _ if !caller.is_admin() => {
                (Err(denied("only administrators may create or revoke tokens")), None)
            }
            PrincipalCommand::Create { name, role, roots, digest } => {
                if let Err(e) = check_roots(roots.as_deref()) {
                    return (Err(e), None);
                }
                if self.by_name.get(name).is_some_and(|r| r.revoked.is_none()) {
                    return (
                        Err(CommandError::new(
                            BitsCode::E_INVALIDARG,
                            format!(
                                "principal {name} already has a live token; revoke it first \
                                 to give it a new one"
                            ),
                        )),
                        None,
                    );
                }
                if self.live.contains_key(digest) {
                    return (
                        Err(CommandError::new(
                            BitsCode::E_INVALIDARG,
                            "that token is already in use: choose another",
                        )),
                        None,
                    );
                }
                if !self.by_name.contains_key(name) && self.by_name.len() >= MAX_PRINCIPALS {
                    return (
                        Err(CommandError::new(
                            BitsCode::E_INVALIDARG,
                            format!(
                                "the cluster holds {MAX_PRINCIPALS} principals already: \
                                 revoked ones count too"
                            ),
                        )),
                        None,
                    );
                }
                self.put(PrincipalRecord {
                    name: name.clone(),
                    role: *role,
                    roots: roots.clone(),
                    digest: *digest,
                    created: now,
                    revoked: None,
                });
                (Ok(Reply::Done(BitsCode::S_OK)), Some(name.clone()))
            }
            PrincipalCommand::Revoke { name } => {
                let Some(record) = self.by_name.get(name).filter(|r| r.revoked.is_none()) else {
                    return (
                        Err(CommandError::new(
                            BitsCode::BG_E_NOT_FOUND,
                            format!("principal {name} has no live token in the cluster"),
                        )),
                        None,
                    );
                };
                let revoked = PrincipalRecord { revoked: Some(now), ..record.clone() };
                self.put(revoked);
                (Ok(Reply::Done(BitsCode::S_OK)), Some(name.clone()))
            }
        }
    }
}

/// Roots must be absolute, at most [`MAX_ROOTS`], each at most 4096 bytes.
pub fn check_roots(roots: Option<&[String]>) -> Result<(), CommandError> {
    let Some(roots) = roots else { return Ok(()) };
    if roots.len() > MAX_ROOTS {
        return Err(CommandError::new(
            BitsCode::E_INVALIDARG,
            format!("a principal has at most {MAX_ROOTS} roots"),
        ));
    }
    match roots.iter().find(|r| !r.starts_with('/') || r.len() > 4096 || r.contains('\0')) {
        Some(bad) => Err(CommandError::new(
            BitsCode::E_INVALIDARG,
            format!("root {bad:?} is not an absolute path"),
        )),
        None => Ok(()),
    }
}

fn denied(detail: &str) -> CommandError {
    CommandError::new(BitsCode::E_ACCESSDENIED, detail)
}

/// `POST /v1/tokens`: a new token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// The principal's name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub name: String,
    /// `user` or `admin`.
    pub role: Role,
    /// Absolute directories its jobs may name local files in; unset: each node's
    /// `transfer.destination_roots`.
    #[serde(default)]
    pub roots: Option<Vec<String>>,
    /// The token to use (at least 32 characters); unset: the node makes one. A client
    /// that makes its own can send the same request again after an unknown outcome.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 32, pattern = "^\\S+$"))]
    pub token: Option<String>,
}

/// A principal of the cluster, as listed (never its token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenInfo {
    /// The principal.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its roots, if it has its own.
    pub roots: Option<Vec<String>>,
    /// When it was created.
    pub created: Timestamp,
    /// When its token was revoked.
    pub revoked: Option<Timestamp>,
}

impl From<&PrincipalRecord> for TokenInfo {
    fn from(record: &PrincipalRecord) -> Self {
        Self {
            name: record.name.as_str().to_owned(),
            role: record.role,
            roots: record.roots.clone(),
            created: record.created,
            revoked: record.revoked,
        }
    }
}

/// The answer to `POST /v1/tokens`: the only time the token is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedToken {
    /// The principal.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The token, to send as `Authorization: Bearer <token>` to any member.
    pub token: String,
}

/// `GET /v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenList {
    /// Every principal of the cluster, revoked ones included, by name.
    pub tokens: Vec<TokenInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn admin() -> Caller {
        Caller { principal: Principal::new("root").expect("name"), role: Role::Admin }
    }

    fn create(name: &str, token: &str) -> PrincipalCommand {
        PrincipalCommand::Create {
            name: Principal::new(name).expect("name"),
            role: Role::User,
            roots: Some(vec!["/srv/a".into()]),
            digest: digest(token),
        }
    }

    #[test]
    fn tokens_are_created_found_by_digest_and_revoked() {
        let mut table = Principals::default();
        let now = Timestamp(5);
        assert!(
            table
                .apply(&admin(), &create("carol", "carol-token-0123456789abcdef-0123"), now)
                .0
                .is_ok()
        );
        let carol = table.caller(&digest("carol-token-0123456789abcdef-0123")).expect("live");
        assert_eq!((carol.principal.as_str(), carol.role), ("carol", Role::User));
        // A second live token for the name, or a user creating one, is refused.
        assert!(
            table
                .apply(&admin(), &create("carol", "another-token-0123456789abcdef"), now)
                .0
                .is_err()
        );
        let user = Caller { role: Role::User, ..carol.clone() };
        assert!(
            table.apply(&user, &create("dave", "dave-token-0123456789abcdef-0123"), now).0.is_err()
        );
        let revoke = PrincipalCommand::Revoke { name: carol.principal.clone() };
        assert!(table.apply(&admin(), &revoke, Timestamp(6)).0.is_ok());
        assert!(table.caller(&digest("carol-token-0123456789abcdef-0123")).is_none());
        assert_eq!(table.get(&carol.principal).and_then(|r| r.revoked), Some(Timestamp(6)));
        assert!(table.apply(&admin(), &revoke, Timestamp(7)).0.is_err(), "revoked already");
        // A new token for a revoked name.
        assert!(
            table
                .apply(&admin(), &create("carol", "carol-token-2-0123456789abcdef"), now)
                .0
                .is_ok()
        );
        assert!(table.caller(&digest("carol-token-2-0123456789abcdef")).is_some());
    }

    #[test]
    fn the_generated_admin_token_seeds_an_empty_table_only() {
        let node = Caller { principal: Principal::system(), role: Role::Admin };
        let mut table = Principals::default();
        let seed = PrincipalCommand::SeedAdmin { digest: digest("generated-0123456789") };
        assert!(table.apply(&admin(), &seed, Timestamp(1)).0.is_err(), "API callers cannot");
        assert!(table.apply(&node, &seed, Timestamp(1)).0.is_ok());
        let first = table.caller(&digest("generated-0123456789")).expect("seeded");
        assert_eq!((first.principal.as_str(), first.role), ("admin", Role::Admin));
        let again = PrincipalCommand::SeedAdmin { digest: digest("another-0123456789") };
        let (_, changed) = table.apply(&node, &again, Timestamp(2));
        assert!(changed.is_none() && table.caller(&digest("another-0123456789")).is_none());
    }

    #[test]
    fn principals_are_written_in_their_format_and_round_trip() {
        let record = PrincipalRecord {
            name: Principal::new("carol").expect("name"),
            role: Role::User,
            roots: None,
            digest: digest("x"),
            created: Timestamp(1),
            revoked: Some(Timestamp(2)),
        };
        let bytes = codec::encode(&record).expect("encode");
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(codec::decode::<PrincipalRecord>(&bytes).expect("decode"), record);
        for command in [
            create("carol", "t"),
            PrincipalCommand::Revoke { name: record.name.clone() },
            PrincipalCommand::SeedAdmin { digest: digest("t") },
        ] {
            let bytes = codec::encode(&command).expect("encode");
            assert_eq!(bytes[0], FORMAT);
            assert_eq!(codec::decode::<PrincipalCommand>(&bytes).expect("decode"), command);
        }
        assert!(check_roots(Some(&["relative".into()])).is_err());
    }
}
