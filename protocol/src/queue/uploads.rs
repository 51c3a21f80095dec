//! BITS upload sessions served by the cluster (issue 7, server side): replicated so that
//! a client may continue a session on any node (server-farm mode). Apply keeps what
//! every node must agree on — who owns the session, where it uploads to, the next byte
//! expected, and which node holds which bytes — and applies the protocol's fragment rule
//! ([`crate::upload::plan_fragment`]). The bytes themselves stay on the node that
//! received them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Queue;
use crate::codes::BitsCode;
use crate::command::{CommandError, CommandResult, Reply};
use crate::ids::{Caller, NodeId, Principal};
use crate::time::Timestamp;
use crate::upload::{FragmentRange, FragmentRefusal, MAX_SESSION_ID_LEN, plan_fragment};

/// Open sessions one principal may hold (IIS's default cap).
pub const MAX_SESSIONS_PER_USER: usize = 50;
/// A session without progress for this long is removed (IIS `BITSSessionTimeout`).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(1_209_600);
/// Longest upload path, in bytes.
pub const MAX_UPLOAD_PATH_LEN: usize = 1024;
/// Most pieces one session records; a client sending tinier fragments is refused.
pub const MAX_PIECES: usize = 10_000;

/// An upload session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSession {
    /// The id the server chose (`{uuid}`).
    pub id: String,
    /// Who uploads.
    pub owner: Principal,
    /// Where the file goes, relative to the upload root (`a/b/file.bin`).
    pub path: String,
    /// The file's size, once a fragment said it.
    pub total: Option<u64>,
    /// The next byte expected.
    pub next: u64,
    /// Which node holds which bytes, in file order.
    pub pieces: Vec<UploadPiece>,
    /// When it was created.
    pub created: Timestamp,
    /// The last progress.
    pub touched: Timestamp,
    /// What became of the complete file, once it was handed over.
    pub outcome: Option<UploadOutcome>,
}

/// What the server made of a complete upload (placed, or answered by the back end).
/// Recorded once: a client that sends the final fragment again gets the same Ack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadOutcome {
    /// The reply the back end gave, held by a node (served at the reply URL).
    pub reply: Option<HeldReply>,
    /// A reply URL the back end named instead (`BITS-Static-Response-URL`).
    pub static_url: Option<String>,
}

/// A reply file on one node's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReply {
    /// The node.
    pub node: NodeId,
    /// Its size in bytes.
    pub len: u64,
}

impl UploadSession {
    /// True once every byte arrived.
    pub fn complete(&self) -> bool {
        self.total == Some(self.next)
    }
}

/// Bytes of a session held by one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPiece {
    /// Where they go in the file.
    pub offset: u64,
    /// How many.
    pub len: u64,
    /// The node whose disk holds them.
    pub node: NodeId,
}

/// Upload session commands (proposed by the node serving the BITS request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadCommand {
    /// Create-Session.
    Create {
        /// The new session's id.
        session: String,
        /// Where the file goes, relative to the upload root.
        path: String,
    },
    /// A fragment whose new bytes `node` has made durable.
    Fragment {
        /// The session.
        session: String,
        /// Its `Content-Range`: first byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
        /// The file's size.
        total: u64,
        /// The node holding the bytes.
        node: NodeId,
        /// Where the node wrote the fragment's new bytes (the next byte it saw expected):
        /// if another fragment moved the session on meanwhile, these are not recorded.
        offset: u64,
        /// The server's maximum upload size.
        max_size: u64,
    },
    /// The complete file was handed over (placed, or answered by the back end).
    Finish {
        /// The session.
        session: String,
        /// What came of it.
        outcome: UploadOutcome,
    },
    /// Close-Session (after the file was handed over) or Cancel-Session.
    End {
        /// The session.
        session: String,
    },
}

/// What a fragment did to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentAck {
    /// The next byte expected (`BITS-Received-Content-Range`).
    pub next: u64,
    /// Every byte arrived.
    pub complete: bool,
}

/// A session id: 1 to 100 printable ASCII characters without spaces.
fn check_session_id(id: &str) -> Result<(), CommandError> {
    let printable = id.bytes().all(|b| b.is_ascii_graphic());
    if id.is_empty() || id.len() > MAX_SESSION_ID_LEN || !printable {
        return Err(CommandError::new(BitsCode::E_INVALIDARG, "a bad upload session id"));
    }
    Ok(())
}

/// An upload path: relative, `/`-separated names, none empty, `.` or `..`, no NUL.
pub fn check_upload_path(path: &str) -> Result<(), CommandError> {
    let bad = |why: &str| {
        Err(CommandError::new(BitsCode::E_INVALIDARG, format!("upload path {path:?}: {why}")))
    };
    if path.is_empty() || path.len() > MAX_UPLOAD_PATH_LEN {
        return bad("empty or too long");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("NUL or backslash");
    }
    if path.split('/').any(|name| name.is_empty() || name == "." || name == "..") {
        return bad("empty, `.` or `..` component (or a leading or trailing /)");
    }
    Ok(())
}

fn not_found(session: &str) -> CommandError {
    CommandError::new(
        BitsCode::BG_E_SESSION_NOT_FOUND,
        format!("upload session {session:?} does not exist (or is not yours)"),
    )
}

impl Queue {
    /// An upload session, if `caller` owns it.
    pub fn upload_session(&self, caller: &Caller, id: &str) -> Option<&UploadSession> {
        self.uploads.get(id).filter(|s| s.owner == caller.principal)
    }

    /// An upload session by id, whoever owns it (for persistence).
    pub fn session_by_id(&self, id: &str) -> Option<&UploadSession> {
        self.uploads.get(id)
    }

    /// Every upload session (for persistence and cleanup).
    pub fn upload_sessions(&self) -> impl Iterator<Item = &UploadSession> {
        self.uploads.values()
    }

    pub(super) fn upload(&mut self, caller: &Caller, command: &UploadCommand) -> CommandResult {
        let now = self.meta.clock;
        match command {
            UploadCommand::Create { session, path } => {
                check_session_id(session)?;
                check_upload_path(path)?;
                if self.uploads.contains_key(session) {
                    return Err(CommandError::new(
                        BitsCode::E_INVALIDARG,
                        format!("upload session {session:?} already exists"),
                    ));
                }
                let held = self.uploads.values().filter(|s| s.owner == caller.principal).count();
                if held >= MAX_SESSIONS_PER_USER {
                    return Err(CommandError::new(
                        BitsCode::BG_E_TOO_MANY_JOBS_PER_USER,
                        format!("{} already has {held} open upload sessions", caller.principal),
                    ));
                }
                let created = UploadSession {
                    id: session.clone(),
                    owner: caller.principal.clone(),
                    path: path.clone(),
                    total: None,
                    next: 0,
                    pieces: Vec::new(),
                    created: now,
                    touched: now,
                    outcome: None,
                };
                self.uploads.insert(session.clone(), created);
                self.changes.uploads.insert(session.clone());
                Ok(Reply::Done(BitsCode::S_OK))
            }
            UploadCommand::Fragment { session, start, end, total, node, offset, max_size } => {
                let range = end
                    .checked_sub(*start)
                    .and_then(|span| span.checked_add(1))
                    .and_then(|len| FragmentRange::new(*start, len, *total))
                    .ok_or_else(|| {
                        CommandError::new(BitsCode::E_INVALIDARG, "a fragment outside its file")
                    })?;
                let mut s = self
                    .upload_session(caller, session)
                    .cloned()
                    .ok_or_else(|| not_found(session))?;
                let plan =
                    plan_fragment(s.next, s.total, range, *max_size).map_err(|r| match r {
                        FragmentRefusal::Gap { next } => CommandError::new(
                            BitsCode::BG_E_INVALID_RANGE,
                            format!("the fragment starts after byte {next}, the next expected"),
                        ),
                        FragmentRefusal::TotalChanged { total } => CommandError::new(
                            BitsCode::E_INVALIDARG,
                            format!("the file was {total} bytes in earlier fragments"),
                        ),
                        FragmentRefusal::TooLarge { max } => CommandError::new(
                            BitsCode::BG_E_TOO_LARGE,
                            format!("the file exceeds the maximum upload size of {max} bytes"),
                        ),
                    })?;
                if plan.write > 0 && plan.offset != *offset {
                    return Err(CommandError::new(
                        BitsCode::BG_E_INVALID_RANGE,
                        format!("the session moved on to byte {}; send from there", s.next),
                    ));
                }
                if plan.write > 0 {
                    if s.pieces.len() >= MAX_PIECES {
                        return Err(CommandError::new(
                            BitsCode::BG_E_TOO_LARGE,
                            format!("a session takes at most {MAX_PIECES} fragments"),
                        ));
                    }
                    s.pieces.push(UploadPiece {
                        offset: plan.offset,
                        len: plan.write,
                        node: *node,
                    });
                }
                s.next = plan.next;
                s.total = Some(range.total);
                s.touched = now;
                self.uploads.insert(session.clone(), s);
                self.changes.uploads.insert(session.clone());
                Ok(Reply::Fragment(FragmentAck { next: plan.next, complete: plan.complete }))
            }
            UploadCommand::Finish { session, outcome } => {
                let mut s = self
                    .upload_session(caller, session)
                    .cloned()
                    .ok_or_else(|| not_found(session))?;
                if !s.complete() {
                    return Err(CommandError::new(
                        BitsCode::BG_E_INVALID_STATE,
                        format!("upload session {session:?} is not complete"),
                    ));
                }
                if outcome.static_url.as_ref().is_some_and(|u| u.len() > 2_200) {
                    return Err(CommandError::new(
                        BitsCode::E_INVALIDARG,
                        "a reply URL over 2,200 characters",
                    ));
                }
                // The first hand-over counts; a repeat (two nodes raced) keeps it.
                if s.outcome.is_none() {
                    s.outcome = Some(outcome.clone());
                    s.touched = now;
                    self.uploads.insert(session.clone(), s);
                    self.changes.uploads.insert(session.clone());
                }
                Ok(Reply::Done(BitsCode::S_OK))
            }
            UploadCommand::End { session } => {
                self.upload_session(caller, session).ok_or_else(|| not_found(session))?;
                self.uploads.remove(session);
                self.changes.uploads.insert(session.clone());
                Ok(Reply::Done(BitsCode::S_OK))
            }
        }
    }

    /// Removes sessions without progress for [`SESSION_TIMEOUT`] (batch time).
    pub(super) fn expire_uploads(&mut self) {
        let now = self.meta.clock;
        let stale: Vec<String> = self
            .uploads
            .values()
            .filter(|s| now.since(s.touched) > SESSION_TIMEOUT)
            .map(|s| s.id.clone())
            .collect();
        for id in stale {
            self.uploads.remove(&id);
            self.changes.uploads.insert(id);
        }
    }
}
