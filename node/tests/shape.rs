//! The node's shape, checked on its sources: every production file stays under 600
//! lines (a file's `#[cfg(test)] mod tests { ... }` at its end does not count), and only
//! the change feed (`src/feed.rs`) walks every job of the queue.

use std::path::{Path, PathBuf};

/// Longest production file, in lines.
const MAX_LINES: usize = 600;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The production part of a source file: a test file is none; an inline test module
/// at the end of a file is cut off.
fn production(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn all_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 20, "the sources were not found");
    files
}

#[test]
fn no_production_file_is_over_600_lines() {
    let long: Vec<String> = all_sources()
        .iter()
        .map(|path| (path, production(path).lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(path, lines)| format!("{}: {lines} lines", path.display()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn only_the_change_feed_walks_the_whole_queue() {
    let walkers: Vec<String> = all_sources()
        .iter()
        .filter(|path| !path.ends_with("feed.rs"))
        .flat_map(|path| {
            let code = production(path);
            code.lines()
                .filter(|line| !line.trim_start().starts_with("//") && line.contains(".jobs()"))
                .map(|line| format!("{}: {}", path.display(), line.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        walkers.is_empty(),
        "walk the queue through ChangeFeed::scan (counted) or follow the feed:\n{}",
        walkers.join("\n")
    );
}
