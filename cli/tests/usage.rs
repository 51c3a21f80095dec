//! The `ferry` binary's own contract, without a node: help, usage errors, and a clear
//! error when no node answers.

use std::process::Command;

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_NODE")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent/xdg")
        .env("FERRY_DATA_DIR", "/nonexistent/ferry-data")
        .output()
        .expect("the ferry binary runs")
}

#[test]
fn help_lists_the_nouns() {
    let out = ferry(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for noun in ["job", "error", "cluster"] {
        assert!(text.contains(noun), "{noun} in\n{text}");
    }
}

#[test]
fn help_ends_with_the_exit_codes() {
    let out = ferry(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["3  not found", "4  access denied", "5  transient"] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ferry(&["job", "add-file", "only-one-arg"]).status.code(), Some(2));
    assert_eq!(ferry(&["job", "create", "x", "--priority", "urgent"]).status.code(), Some(2));
}

#[test]
fn an_unreachable_node_is_a_clear_error() {
    // Port 9 on loopback: nothing listens there.
    let out = ferry(&["--node", "http://127.0.0.1:9", "job", "list"]);
    assert_eq!(out.status.code(), Some(5), "transient: try again");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ferry: no node answers at http://127.0.0.1:9 (from --node)"), "{err}");
    assert!(err.contains("\nhint: ") && err.lines().count() == 2, "{err}");
}

#[test]
fn bad_ranges_are_refused_before_sending() {
    let out = ferry(&[
        "--node",
        "http://127.0.0.1:9",
        "job",
        "add-file",
        "j",
        "https://o/a",
        "/a",
        "--range",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("OFFSET:LENGTH"));
}
