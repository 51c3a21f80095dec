//! A file's expected SHA-256 (`NewFile::sha256`, like `dfget --digest`): the finished
//! file is checked against it before it counts as transferred, a server declaring
//! another digest is refused at once, and a member's verified copy of that content
//! serves a job for any URL that expects it.

use std::time::Duration;

use ferry_protocol::{BitsCode, JobAction, JobState, JobType, NewFile, NewJob};
use ferry_tests::origin::{Content, Origin, OriginConfig};
use ferry_tests::tokens;

use crate::download::same_as_origin;
use crate::peer_cache::{all_from_peers, cluster, egress, no_cache_settings};
use crate::support::{download_expecting, wait_for};

const MIB: u64 = 1024 * 1024;
const SHORT: Duration = Duration::from_secs(60);

fn hex(digest: [u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_checked_against_its_expected_digest_and_shared_by_it() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    let len = 12 * MIB + 3;
    let content = Content::Pattern { seed: 91, len };
    let sha256 = hex(content.sha256());
    // Two URLs of the same bytes, neither declaring a digest; and other bytes.
    origin.add_file("/a.bin", content.clone());
    origin.add_file("/elsewhere/a.bin", content);
    origin.add_file("/other.bin", Content::Pattern { seed: 92, len });
    let nodes = cluster(2, no_cache_settings).await?;
    let dir = tempfile::tempdir()?;
    let client1 = nodes[0].client(Some(tokens::ALICE))?;
    let client2 = nodes[1].client(Some(tokens::ALICE))?;

    // Bytes that do not make the expected file never transfer: fetched once more from
    // the origin alone, then a fatal error naming both digests.
    let wrong = dir.path().join("wrong.bin");
    let id = download_expecting(&client1, &origin.url("/other.bin"), &wrong, &sha256).await?;
    let job = wait_for(&nodes[0], &client1, id, &[JobState::Error], SHORT).await?;
    let error = job.error.expect("an error");
    assert_eq!(error.code, BitsCode::BG_E_INVALID_SERVER_RESPONSE);
    assert!(error.detail.contains(&format!("expected {sha256}")), "{}", error.detail);
    assert_eq!(egress(&origin, "/other.bin", 0), 2 * len, "fetched other than twice");
    assert!(!wrong.exists());
    client1.act(id, JobAction::Cancel).await?;

    // The right bytes transfer; the file shows the digest it was checked against.
    let first = dir.path().join("first.bin");
    let id = download_expecting(&client1, &origin.url("/a.bin"), &first, &sha256).await?;
    wait_for(&nodes[0], &client1, id, &[JobState::Transferred], SHORT).await?;
    let file = client1.files(id).await?.files.remove(0);
    assert_eq!(file.expected_sha256.as_deref(), Some(sha256.as_str()));
    assert_eq!(file.peer_stats.from_peers, 0, "the wrong bytes were offered to peers");
    client1.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/a.bin", &first)?);

    // Another URL expecting the same digest, on another node: every byte from node 1's
    // verified copy, though the origin declares nothing.
    let before = origin.requests().len();
    let second = dir.path().join("second.bin");
    let url = origin.url("/elsewhere/a.bin");
    let id = download_expecting(&client2, &url, &second, &sha256).await?;
    wait_for(&nodes[1], &client2, id, &[JobState::Transferred], SHORT).await?;
    let file = client2.files(id).await?.files.remove(0);
    let from_origin =
        egress(&origin, "/elsewhere/a.bin", before) + egress(&origin, "/a.bin", before);
    all_from_peers("job expecting the digest", &file, from_origin, len);
    client2.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/elsewhere/a.bin", &second)?);

    // A server that declares another digest serves another file: refused at the probe.
    origin.declare_sha256("/other.bin", Some([7; 32]));
    let third = dir.path().join("third.bin");
    let before = origin.requests().len();
    let id = download_expecting(&client1, &origin.url("/other.bin"), &third, &sha256).await?;
    let job = wait_for(&nodes[0], &client1, id, &[JobState::Error], SHORT).await?;
    let detail = job.error.expect("an error").detail;
    assert!(detail.contains("the server declares SHA-256"), "{detail}");
    assert!(egress(&origin, "/other.bin", before) <= 8 * MIB, "the whole file was fetched");
    println!(
        "wrong bytes: ERROR after 2 fetches; right bytes: TRANSFERRED; same digest elsewhere: {} bytes from peers; other declared digest: {detail}",
        file.peer_stats.from_peers
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_digest_is_refused_where_it_cannot_be_checked() -> anyhow::Result<()> {
    let nodes = cluster(1, no_cache_settings).await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let file = |sha256: &str, ranges| NewFile {
        remote_url: "https://origin.example/f".into(),
        local_path: "/tmp/ferry-digest-test/f".into(),
        ranges,
        sha256: Some(sha256.into()),
    };
    let job = |job_type, files| NewJob {
        display_name: "digest".into(),
        job_type,
        properties: Default::default(),
        files,
    };
    let refused = |result: Result<_, ferry_coordinator::ClientError>| {
        result.err().and_then(|e| e.code()).expect("refused with a BITS code")
    };
    let good = "ab".repeat(32);
    let short =
        refused(client.create_job(&job(JobType::Download, vec![file("abc", vec![])])).await);
    assert_eq!(short, BitsCode::E_INVALIDARG);
    let range = ferry_protocol::FileRange { offset: 0, length: 5 };
    let ranged = job(JobType::Download, vec![file(&good, vec![range])]);
    assert_eq!(
        refused(client.create_job(&ranged).await),
        BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION
    );
    let upload = job(JobType::Upload, vec![file(&good, vec![])]);
    assert_eq!(refused(client.create_job(&upload).await), BitsCode::E_NOTIMPL);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_passes_digests_methods_and_caps() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    let content = Content::Pattern { seed: 93, len: 300_000 };
    let sha256 = hex(content.sha256());
    origin.add_file("/cli.bin", content);
    let nodes = cluster(1, no_cache_settings).await?;
    let node = &nodes[0];
    let dir = tempfile::tempdir()?;
    let (url, good, bad) =
        (origin.url("/cli.bin"), dir.path().join("good.bin"), dir.path().join("bad.bin"));
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ferry_tests::ferry(node, tokens::ALICE, &args).await
    };
    let (code, _, err) = run(vec![
        "transfer".into(),
        "--sha256".into(),
        sha256.clone(),
        url.clone(),
        good.display().to_string(),
    ])
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(same_as_origin(&origin, "/cli.bin", &good)?);
    let wrong = "00".repeat(32);
    let (code, _, err) = run(vec![
        "transfer".into(),
        "--sha256".into(),
        wrong,
        url.clone(),
        bad.display().to_string(),
    ])
    .await?;
    assert_ne!(code, 0);
    assert!(err.contains("BG_E_INVALID_SERVER_RESPONSE"), "{err}");
    assert!(!bad.exists());

    // A job's method and cap through `ferry job set`, read back one by one.
    let (code, out, err) =
        run(vec!["--json".into(), "job".into(), "create".into(), "cli".into()]).await?;
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out)?
        .pointer("/id")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no id in {out}"))?;
    let set = ["job", "set", &id, "--http-method", "POST", "--max-bandwidth", "2MB"];
    let (code, _, err) = run(set.iter().map(|s| s.to_string()).collect()).await?;
    assert_eq!(code, 0, "{err}");
    let get = |property: &str| run(vec!["job".into(), "get".into(), id.clone(), property.into()]);
    assert_eq!(get("http-method").await?.1.trim(), "POST");
    assert_eq!(get("max-bandwidth").await?.1.trim(), "2000000");
    assert_eq!(get("priority").await?.1.trim(), "FOREGROUND");
    let lift = ["job", "set", &id, "--max-bandwidth", "none"];
    assert_eq!(run(lift.iter().map(|s| s.to_string()).collect()).await?.0, 0);
    assert_eq!(get("max-bandwidth").await?.1.trim(), "");
    Ok(())
}
