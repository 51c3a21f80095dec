//! Failpoints for fault tests (cargo feature `failpoints`, the `fail` crate): named
//! places where a test makes the node crash, fail or pause, set when ferryd starts with
//! `FAILPOINTS=name=action;...` (e.g. `raft.apply=20*off->panic`: the 21st apply
//! crashes the node). Without the feature every failpoint compiles to nothing.
//!
//! A `panic` action aborts the process (a crash, as `kill -9` at that line), so that no
//! task catches it and the node goes on half-broken.

/// Every failpoint, in the order a write, a transfer and a subscription meet them.
pub const ALL: &[&str] = &[
    "raft.vote.save",
    "raft.log.before_ack",
    "raft.apply",
    "raft.snapshot.build",
    "raft.snapshot.install",
    "chunk.before_fsync",
    "complete.before_rename",
    "upload.fragment.before_ack",
    "events.send",
];

/// Not a place but a mode: `storage.lose_unsynced=return` puts the Raft databases on a
/// backend that keeps every write in memory until redb syncs it, so that a `kill -9`
/// loses what was written after the last fsync (as a power cut loses the page cache).
pub const LOSE_UNSYNCED: &str = "storage.lose_unsynced";

/// The error a failpoint's `return` action produces.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn error(name: &str) -> std::io::Error {
    std::io::Error::other(format!("failpoint {name}"))
}

/// Reads `FAILPOINTS` and makes a failpoint's panic abort the process; keep the value
/// for the process's life.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failpoint") {
            std::process::abort();
        }
    }));
    fail::FailScenario::setup()
}
