//! Build information for `--version`: the release, the commit built and the build
//! date, as the environment variable `FERRY_VERSION` of the crate (`0.1.0 (commit
//! 0123456789ab, built 2026-12-05)`). `cli/` builds with this script too.
//!
//! The commit comes from `FERRY_COMMIT` when set (a build from a source archive or a
//! container build without `.git`), else from git, else "unknown". The date is that of
//! `SOURCE_DATE_EPOCH` when set (reproducible builds), else today's (UTC).

use std::path::Path;
use std::process::Command;

/// The trimmed output of `git ARGS`, if it succeeded with any.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The commit of HEAD, telling cargo to run this again when HEAD moves.
fn commit() -> Option<String> {
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    let watched = [Some("HEAD".to_string()), branch, Some("packed-refs".to_string())];
    for name in watched.into_iter().flatten() {
        // A missing file would make cargo run this on every build.
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// The civil date (UTC) of a Unix time, as YYYY-MM-DD (Howard Hinnant's algorithm).
fn date(unix_secs: i64) -> String {
    let z = unix_secs.div_euclid(86_400) + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FERRY_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = std::env::var("FERRY_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(commit)
        .unwrap_or_else(|| "unknown".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(now);
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=FERRY_VERSION={version} (commit {commit}, built {})", date(built));
}
