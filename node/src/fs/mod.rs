//! The filesystem sandbox (DESIGN §8, G11): every local file a job names — a
//! download's temporary and final file, an upload's source, a reply file, a client
//! certificate — is reached through its owner's [`Sandbox`]: from an opened root
//! directory, one component at a time, never following a symlink, opened relative to
//! its directory and only if it is a regular file, and with the owner's OS identity
//! where the principal is mapped to one. Nothing here knows about jobs or the queue.

pub(crate) mod dir;
pub(crate) mod identity;
mod sandbox;

pub(crate) use self::dir::{Dir, FileId, Stamp};
pub(crate) use self::sandbox::{Place, Sandbox, Sandboxes};
