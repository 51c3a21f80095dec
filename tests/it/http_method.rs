//! `SetHttpMethod` (BITS 10): a download job with its own verb sends exactly that verb,
//! one request per file with no probe and no ranges; the job is FOREGROUND for good;
//! an error that would be retried is fatal, and Resume starts the file over.

use std::time::Duration;

use ferry_protocol::{BitsCode, JobAction, JobState, Priority, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::tokens;

use crate::download::same_as_origin;
use crate::peer_cache::{cluster, no_cache_settings};
use crate::support::{start_download, wait_for};

const MIB: u64 = 1024 * 1024;
const SHORT: Duration = Duration::from_secs(60);

fn post() -> PropertyChanges {
    PropertyChanges { http_method: Some("POST".into()), ..PropertyChanges::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_its_own_method_sends_only_that_method() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.set_knobs(Knobs { any_method: true, ..Knobs::default() });
    let len = 3 * MIB + 11;
    origin.add_file("/made.bin", Content::Pattern { seed: 31, len });
    let nodes = cluster(1, no_cache_settings).await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("made.bin");
    let id = start_download(&client, &[(origin.url("/made.bin"), local.clone())], post()).await?;
    let job = wait_for(&nodes[0], &client, id, &[JobState::Transferred], SHORT).await?;
    assert_eq!(job.priority, Priority::Foreground, "SetHttpMethod makes the job foreground");
    assert_eq!(job.properties.http_method.as_deref(), Some("POST"));
    let requests = origin.requests();
    let asked: Vec<_> = requests.iter().map(|r| (r.method.as_str(), r.range.is_some())).collect();
    assert_eq!(asked, [("POST", false)], "one POST without a range, no probe");
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/made.bin", &local)?);

    // The priority stays FOREGROUND; setting the default verb is no change.
    let low = PropertyChanges { priority: Some(Priority::Low), ..PropertyChanges::default() };
    let other = dir.path().join("other.bin");
    let job = client
        .create_job(&ferry_protocol::NewJob {
            display_name: "post".into(),
            job_type: ferry_protocol::JobType::Download,
            properties: post(),
            files: vec![ferry_protocol::NewFile {
                remote_url: origin.url("/made.bin"),
                local_path: other.to_string_lossy().into_owned(),
                ranges: vec![],
                sha256: None,
            }],
        })
        .await?;
    let refused = client.set_properties(job.id, &low).await.err().and_then(|e| e.code());
    assert_eq!(refused, Some(BitsCode::BG_E_READ_ONLY_PROPERTY));

    // A 503 would be retried; with its own method the job goes to ERROR at once, and
    // Resume fetches the file again from its start.
    origin.set_knobs(Knobs { any_method: true, fail_first: Some((1, 503)), ..Knobs::default() });
    client.act(job.id, JobAction::Resume).await?;
    let failed = wait_for(&nodes[0], &client, job.id, &[JobState::Error], SHORT).await?;
    assert_eq!(failed.error.map(|e| e.code), Some(BitsCode::http(503)));
    client.act(job.id, JobAction::Resume).await?;
    wait_for(&nodes[0], &client, job.id, &[JobState::Transferred], SHORT).await?;
    client.act(job.id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/made.bin", &other)?);
    let methods: Vec<_> = origin.requests().iter().map(|r| r.method.clone()).collect();
    assert!(methods.iter().all(|m| m == "POST"), "{methods:?}");
    println!("requests the origin saw: {methods:?}");
    Ok(())
}
