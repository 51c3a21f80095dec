//! The `ferry` CLI against a real node: tables, `--json`, errors with the BITS code and
//! a non-zero exit, token discovery from the data directory.

use ferry_protocol::JobState;
use ferry_protocol::api::{ClusterStatus, FileList, JobInfo};
use ferry_tests::{Node, NodeOptions, ferry, tokens};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tour() -> anyhow::Result<()> {
    // Alice's job names this notify program.
    let options = NodeOptions {
        extra_config: "[notify]\nallowed_programs = [\"/usr/bin/logger\"]\n".into(),
        ..NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let run = |args: &'static [&'static str]| ferry(&node, tokens::ALICE, args);

    let (code, out, err) = run(&["job", "create", "nightly", "--priority", "high"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Created job "), "{out}");

    // Jobs are found by display name as well as by id.
    let (code, _, err) = ferry(
        &node,
        tokens::ALICE,
        &[
            "job",
            "add-file",
            "nightly",
            "https://origin.example/a.iso",
            "/tmp/srv/a.iso",
            "--range",
            "0:100,500:eof",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&["--json", "job", "files", "nightly"]).await?;
    let files: FileList = serde_json::from_str(&out)?;
    assert_eq!(files.files.len(), 1);
    assert_eq!(files.files[0].ranges.len(), 2);
    assert!(files.files[0].ranges[1].to_eof());

    let (code, out, _) = run(&["job", "list"]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("nightly") && out.contains("SUSPENDED") && out.contains("HIGH"), "{out}");

    let (code, out, _) = run(&["job", "resume", "nightly"]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("QUEUED"), "{out}");
    let (_, out, _) = run(&["--json", "job", "info", "nightly"]).await?;
    let info: JobInfo = serde_json::from_str(&out)?;
    assert_eq!(info.state, JobState::Queued);

    let (code, _, err) = ferry(
        &node,
        tokens::ALICE,
        &[
            "job",
            "set",
            "nightly",
            "--notify-cmdline",
            "/usr/bin/logger",
            "--notify-arg",
            "-t",
            "--notify-arg",
            "ferry",
            "--custom-header",
            "X-Trace: 1",
            "--min-retry-delay",
            "5",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&["--json", "job", "info", "nightly"]).await?;
    let info: JobInfo = serde_json::from_str(&out)?;
    let cmd = info.properties.notify_cmdline.expect("set");
    assert_eq!((cmd.program.as_str(), cmd.args.len()), ("/usr/bin/logger", 2));
    assert_eq!(*info.properties.custom_headers, vec!["X-Trace: 1".to_owned()]);
    assert_eq!(info.properties.minimum_retry_delay_secs, 5);

    // SetRemoteName on a file, then SetValidationState before it is transferred.
    let (code, out, err) = ferry(
        &node,
        tokens::ALICE,
        &[
            "--json",
            "job",
            "set-file",
            "nightly",
            "0",
            "--remote-url",
            "https://mirror.example/a.iso",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let file: ferry_protocol::api::FileInfo = serde_json::from_str(&out)?;
    assert_eq!(file.remote_url, "https://mirror.example/a.iso");
    let (code, _, err) = run(&["job", "set-file", "nightly", "0", "--valid", "false"]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("E_PENDING"), "validation needs a transferred file: {err}");
    let (code, _, err) =
        run(&["job", "set-file", "nightly", "7", "--remote-url", "https://o.example/x"]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("out of range"), "{err}");

    // Failures: the BITS name, code and detail on stderr, an exit code by kind (3: not
    // found, 4: access denied, 1: other).
    let (code, _, err) = run(&["job", "error", "nightly"]).await?;
    assert_eq!(code, 1);
    assert!(
        err.contains("BG_E_ERROR_INFORMATION_UNAVAILABLE") && err.contains("0x8020000F"),
        "{err}"
    );
    let (code, _, err) = run(&["job", "info", "00000000-0000-0000-0000-000000000001"]).await?;
    assert_eq!(code, 3);
    assert!(err.contains("BG_E_NOT_FOUND") && err.contains("0x80200001"), "{err}");
    let (code, _, err) =
        run(&["job", "add-file", "nightly", "https://origin.example/b", "relative/b"]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("E_INVALIDARG") && err.contains("absolute"), "{err}");
    let (code, out, _) = run(&["--json", "job", "info", "no-such-job"]).await?;
    assert_eq!(code, 3);
    assert!(out.contains("error"), "{out}");
    let (code, _, err) = ferry(&node, "wrong-token-wrong-token", &["job", "list"]).await?;
    assert_eq!(code, 4);
    assert!(err.contains("E_ACCESSDENIED") && err.contains("hint"), "{err}");
    let (code, _, _) = run(&["job", "frobnicate"]).await?;
    assert_eq!(code, 2, "usage errors exit with 2");

    let (code, out, _) = run(&["error", "describe", "0x80200013"]).await?;
    assert_eq!(code, 0);
    assert!(
        out.contains("BG_E_INSUFFICIENT_RANGE_SUPPORT") && out.contains("Content-Range"),
        "{out}"
    );
    let (_, out, _) = run(&["error", "describe", "BG_E_HTTP_ERROR_404"]).await?;
    assert!(out.contains("0x80190194"), "{out}");

    let (code, out, _) = run(&["--json", "cluster", "status"]).await?;
    assert_eq!(code, 0);
    let status: ClusterStatus = serde_json::from_str(&out)?;
    assert_eq!(status.leader, Some(status.node_id));
    let (_, out, _) = run(&["cluster", "members"]).await?;
    assert!(out.contains("voter"), "{out}");

    // Membership: the only voter cannot leave, unknown nodes are not members, users may
    // not remove anyone, and joining needs the peer transport of a later release.
    let (code, _, err) = ferry(&node, tokens::ADMIN, &["cluster", "leave", "1"]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("last voter"), "{err}");
    let (code, _, err) = ferry(&node, tokens::ADMIN, &["cluster", "leave", "9"]).await?;
    assert_eq!(code, 3);
    assert!(err.contains("not a member"), "{err}");
    let (code, _, err) = run(&["cluster", "leave", "1"]).await?;
    assert_eq!(code, 4);
    assert!(err.contains("E_ACCESSDENIED"), "{err}");
    let (code, _, err) = run(&["cluster", "join", "127.0.0.1:7071"]).await?;
    assert_eq!(code, 1);
    assert!(err.contains("ferryd --join 127.0.0.1:7071 --join-token"), "{err}");

    let (_, out, _) = run(&["--json", "job", "list"]).await?;
    let list: ferry_protocol::api::JobList = serde_json::from_str(&out)?;
    assert_eq!(list.jobs.len(), 1, "--json prints the API's own shape");

    let (code, out, _) = run(&["job", "complete", "nightly"]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("ACKNOWLEDGED") && out.contains("BG_S_PARTIAL_COMPLETE"), "{out}");
    let (_, out, _) = run(&["job", "list"]).await?;
    assert!(out.contains("No jobs"), "final jobs are not listed: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_tokens_generates_an_admin_token_the_cli_finds() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions { tokens: vec![], ..NodeOptions::queue_only() }).await?;
    let token_file = node.data_dir().join("admin.token");
    assert!(token_file.exists());
    // No --token and no FERRY_TOKEN: the CLI reads <data-dir>/admin.token.
    let output = tokio::process::Command::new(ferry_tests::binary("ferry")?)
        .args(["job", "create", "found-the-token"])
        .env("FERRY_DATA_DIR", node.data_dir())
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_NODE")
        .output()
        .await?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let admin = node.client(Some(std::fs::read_to_string(&token_file)?.trim()))?;
    let jobs = admin.list_jobs(false).await?;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].owner.as_str(), "admin");
    Ok(())
}
