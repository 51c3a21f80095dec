//! Touches free memory right before each timed run of a benchmark that writes files.
//!
//! On a virtual machine the host often backs guest memory only when the guest touches
//! it, and takes back what the guest has left free for a few seconds (free page
//! reporting). Writing into page-cache pages the host no longer backs costs several
//! times a write into recycled ones: on the 2-core development VM, 1 GiB of 1 MiB
//! `pwrite`s took 2.5-2.7 s into cold pages, 0.36 s right after another file's pages
//! were freed, and 0.84-1.30 s right after 3 GiB were touched and freed. Which client
//! of a side-by-side run lands on cold pages then depends on what ran just before it
//! and how long ago, not on the client: `ferry-bench upload` measured Ferry's upload
//! at 0.51-0.55 × its download (the upload wrote into cold pages, the download into
//! those its predecessor's output had just freed) and at 0.71-1.49 × with free memory
//! touched first. A long-running host with memory of its own has none of this; that is
//! the machine the figures are for, and touching the memory a run will use, right
//! before every run, gives each client the same start.

use anyhow::Context as _;

/// Bytes touched per allocation.
const BLOCK: usize = 64 << 20;
/// Memory left untouched: this much at least, or a tenth of the machine's.
const MIN_RESERVE: u64 = 1 << 30;

/// Readies the machine for a run writing `output` bytes: lets earlier writes reach the
/// disk (so that their write-back does not slow the run down), then touches the memory
/// the run will use (twice its output, for its page cache and the writers' buffers,
/// and 512 MiB besides). Best effort: says on stderr what it could not do.
pub(crate) async fn settle(output: u64) {
    let _ = tokio::process::Command::new("sync").status().await;
    let bytes = output.saturating_mul(2).saturating_add(512 << 20);
    match tokio::task::spawn_blocking(move || touch_free_memory(bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => eprintln!("(free memory not touched: {why})"),
        Err(e) => eprintln!("(free memory not touched: {e})"),
    }
}

/// Touches `bytes` of free memory (at most what is free less a reserve, and within the
/// cgroup's limit), then frees it: the pages the next run allocates are then backed.
/// Returns why nothing was touched.
fn touch_free_memory(bytes: u64) -> Result<(), String> {
    let bytes = bytes.min(touchable().map_err(|e| format!("{e:#}"))?);
    if bytes < BLOCK as u64 {
        return Err("too little memory is free".into());
    }
    let blocks: Vec<Vec<u8>> = (0..bytes / BLOCK as u64).map(|_| touched_block()).collect();
    drop(blocks);
    Ok(())
}

/// One block with a byte written on each of its pages.
fn touched_block() -> Vec<u8> {
    let mut block = Vec::<u8>::with_capacity(BLOCK);
    // The pages are touched by writing them; `resize` writes every byte (zeroes).
    block.resize(BLOCK, 1);
    block
}

/// Free memory, less the reserve, and less what the cgroup still allows if that is less.
fn touchable() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {name} in /proc/meminfo"))
    };
    let (free, total) = (field("MemFree")?, field("MemTotal")?);
    let reserve = MIN_RESERVE.max(total / 10);
    let mut bytes = free.saturating_sub(reserve);
    if let Some(allowed) = cgroup_room() {
        bytes = bytes.min(allowed.saturating_sub(reserve));
    }
    Ok(bytes)
}

/// What this process's memory cgroup (v2 or v1, seen from inside a container or not)
/// may still allocate, if it has a limit.
fn cgroup_room() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path = |prefix: &str| {
        cgroups.lines().find_map(|line| Some(line.split_once(prefix)?.1.trim().to_owned()))
    };
    let mut places = vec![
        ("/sys/fs/cgroup".to_owned(), "memory.max", "memory.current"),
        ("/sys/fs/cgroup/memory".to_owned(), "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ];
    if let Some(v2) = path("0::") {
        places.push((format!("/sys/fs/cgroup{v2}"), "memory.max", "memory.current"));
    }
    if let Some(v1) = path(":memory:") {
        places.push((
            format!("/sys/fs/cgroup/memory{v1}"),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ));
    }
    let read = |dir: &str, name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("{dir}/{name}")).ok()?.trim().parse().ok()
    };
    places
        .iter()
        .filter_map(|(dir, limit, usage)| Some(read(dir, limit)?.saturating_sub(read(dir, usage)?)))
        .min()
}
