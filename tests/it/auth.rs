//! Server credentials: Basic and Digest answered for real against the test origin,
//! Basic against nginx's `auth_basic` (set through the CLI, password on stdin); a wrong
//! password ends in the BITS error for denied access; the password appears in no log
//! and no API answer.

use std::process::Stdio;
use std::time::Duration;

use ferry_protocol::command::JobAction;
use ferry_protocol::credentials::{AuthScheme, AuthTarget, Secret};
use ferry_protocol::{BitsCode, JobId, JobState, PropertyChanges};
use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::origin::{Auth, Content, Knobs, Origin, OriginConfig};
use ferry_tests::{Node, binary, tokens};
use tokio::io::AsyncWriteExt;

use crate::download::same_as_origin;
use crate::support::{new_job, transfer_node, wait_for};

const PASSWORD: &str = "Pa55-w0rd-never-shown";

/// Creates a job for `url`, sets the server credential, resumes it.
async fn job_with_credentials(
    node: &Node,
    url: &str,
    local: &std::path::Path,
    scheme: AuthScheme,
    password: &str,
) -> anyhow::Result<JobId> {
    let client = node.client(Some(tokens::ALICE))?;
    let mut spec = new_job("auth", ferry_protocol::JobType::Download, vec![]);
    spec.files.push(ferry_protocol::NewFile {
        remote_url: url.into(),
        local_path: local.to_string_lossy().into(),
        ranges: vec![],
        sha256: None,
    });
    spec.properties = PropertyChanges::default();
    let id = client.create_job(&spec).await?.id;
    client.set_credentials(id, AuthTarget::Server, scheme, "ferry", &Secret::new(password)).await?;
    client.act(id, JobAction::Resume).await?;
    Ok(id)
}

/// Everything the API says about a job, as text.
async fn api_text(node: &Node, id: JobId) -> anyhow::Result<String> {
    let client = node.client(Some(tokens::ALICE))?;
    let mut text = serde_json::to_string(&client.job(id).await?)?;
    text.push_str(&serde_json::to_string(&client.files(id).await?)?);
    if let Ok(error) = client.job_error(id).await {
        text.push_str(&serde_json::to_string(&error)?);
    }
    Ok(text)
}

#[tokio::test]
async fn basic_and_digest_against_the_test_origin() -> anyhow::Result<()> {
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    for (name, auth, scheme) in [
        (
            "basic",
            Auth::Basic { user: "ferry".into(), password: PASSWORD.into() },
            AuthScheme::Basic,
        ),
        (
            "digest",
            Auth::Digest {
                user: "ferry".into(),
                password: PASSWORD.into(),
                realm: "ferry-test".into(),
            },
            AuthScheme::Digest,
        ),
    ] {
        let origin = Origin::start(OriginConfig::default()).await?;
        origin.add_file("/secret.bin", Content::Pattern { seed: 4, len: 700 * 1024 });
        origin.set_knobs(Knobs { auth: Some(auth), ..Knobs::default() });
        let url = origin.url("/secret.bin");

        let local = out.path().join(name);
        let id = job_with_credentials(&node, &url, &local, scheme, PASSWORD).await?;
        wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
        let answers = api_text(&node, id).await?;
        client.act(id, JobAction::Complete).await?;
        assert!(same_as_origin(&origin, "/secret.bin", &local)?, "{name}");
        let schemes: Vec<_> =
            origin.requests().iter().filter_map(|r| r.authorization.clone()).collect();
        assert!(schemes.iter().any(|s| s.eq_ignore_ascii_case(name)), "{name}: {schemes:?}");
        // Over plain http nothing is sent before the challenge.
        assert_eq!(origin.requests()[0].authorization, None);
        assert!(!answers.contains(PASSWORD), "{name}: the API returned the password");

        let wrong =
            job_with_credentials(&node, &url, &out.path().join("wrong"), scheme, "not-it").await?;
        let job =
            wait_for(&node, &client, wrong, &[JobState::Error], Duration::from_secs(30)).await?;
        assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(401)), "{name}");

        // No credentials at all: the same denial.
        let mut spec = new_job("none", ferry_protocol::JobType::Download, vec![]);
        spec.files.push(ferry_protocol::NewFile {
            remote_url: url.clone(),
            local_path: out.path().join("none").to_string_lossy().into(),
            ranges: vec![],
            sha256: None,
        });
        let none = client.create_job(&spec).await?.id;
        client.act(none, JobAction::Resume).await?;
        let job =
            wait_for(&node, &client, none, &[JobState::Error], Duration::from_secs(30)).await?;
        assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(401)));
    }
    // Neither in the log nor stored in plaintext.
    crate::support::assert_no_secret(&node, PASSWORD)?;
    crate::support::assert_no_secret(&node, "not-it")?;
    // A retried SetCredentials (same Idempotency-Key) gets the first answer: sealing is
    // deterministic, so the retry is the same command.
    let id =
        client.create_job(&new_job("retry", ferry_protocol::JobType::Download, vec![])).await?.id;
    let http = crate::support::raw();
    let url = format!("{}/v1/jobs/{id}/credentials", node.url()?);
    let body = serde_json::json!({"target": "server", "scheme": "basic", "user_name": "u", "password": PASSWORD});
    for _ in 0..2 {
        let response = http
            .put(&url)
            .bearer_auth(tokens::ALICE)
            .header("Idempotency-Key", "set-credentials-once")
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{}", response.text().await?);
    }
    // Unsupported schemes are refused with a clear BITS error.
    let id =
        client.create_job(&new_job("ntlm", ferry_protocol::JobType::Download, vec![])).await?.id;
    let refused = client
        .set_credentials(id, AuthTarget::Server, AuthScheme::Ntlm, "u", &Secret::new("p"))
        .await;
    let code = refused.err().and_then(|e| e.code());
    assert_eq!(code, Some(BitsCode::BG_E_INVALID_AUTH_SCHEME));
    Ok(())
}

#[tokio::test]
async fn basic_against_nginx_with_the_password_from_stdin() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    let body: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(root.path().join("guarded.bin"), &body)?;
    let nginx = Nginx::start(NginxOptions {
        basic_auth: Some(("ferry".into(), PASSWORD.into())),
        ..NginxOptions::new(root.path())
    })
    .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("guarded.bin");
    let mut spec = new_job("nginx auth", ferry_protocol::JobType::Download, vec![]);
    spec.files.push(ferry_protocol::NewFile {
        remote_url: nginx.url("/guarded.bin"),
        local_path: local.to_string_lossy().into(),
        ranges: vec![],
        sha256: None,
    });
    let id = client.create_job(&spec).await?.id;

    let mut cli = tokio::process::Command::new(binary("ferry")?)
        .args([
            "job",
            "credentials",
            "set",
            &id.to_string(),
            "--target",
            "server",
            "--scheme",
            "basic",
            "--user",
            "ferry",
        ])
        .env("FERRY_NODE", node.url()?)
        .env("FERRY_TOKEN", tokens::ALICE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = cli.stdin.take() {
        stdin.write_all(format!("{PASSWORD}\n").as_bytes()).await?;
    }
    let output = cli.wait_with_output().await?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!String::from_utf8_lossy(&output.stdout).contains(PASSWORD));

    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    client.act(id, JobAction::Complete).await?;
    assert_eq!(std::fs::read(&local)?, body);
    let log = std::fs::read_to_string(node.log_path())?;
    assert!(!log.contains(PASSWORD));
    Ok(())
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_server() -> anyhow::Result<()> {
    // The job names server A, which redirects to server B; B asks for a password.
    let b = Origin::start(OriginConfig::default()).await?;
    b.add_file("/secret.bin", Content::Pattern { seed: 2, len: 1000 });
    b.set_knobs(Knobs {
        auth: Some(Auth::Basic { user: "ferry".into(), password: PASSWORD.into() }),
        ..Knobs::default()
    });
    let a = Origin::start(OriginConfig::default()).await?;
    a.set_knobs(Knobs {
        redirects: vec![("/moved.bin".into(), b.url("/secret.bin"))],
        ..Knobs::default()
    });
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let id = job_with_credentials(
        &node,
        &a.url("/moved.bin"),
        &out.path().join("x"),
        AuthScheme::Basic,
        PASSWORD,
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(401)));
    assert!(b.requests().iter().all(|r| r.authorization.is_none()), "B received the credentials");
    Ok(())
}

#[tokio::test]
async fn a_job_proxy_is_subject_to_the_egress_policy() -> anyhow::Result<()> {
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let settings = ferry_protocol::job::ProxySettings {
        usage: ferry_protocol::job::ProxyUsage::Override,
        list: Some("169.254.169.254:80".into()),
        bypass: None,
    };
    let props = PropertyChanges { proxy: Some(settings), ..PropertyChanges::default() };
    let id = crate::support::start_download(
        &client,
        &[("http://files.invalid/x".into(), out.path().join("x"))],
        props,
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_BLOCKED_BY_POLICY));
    Ok(())
}

/// `RemoveCredentials`: the job then sends nothing and is denied like a job that never
/// had credentials; removing an absent one is a no-op; a target or scheme that is not
/// one of BITS's is refused with `BG_E_INVALID_AUTH_TARGET` / `_SCHEME`.
#[tokio::test]
async fn removed_credentials_are_not_sent_and_bad_targets_are_refused() -> anyhow::Result<()> {
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/secret.bin", Content::Pattern { seed: 5, len: 64 * 1024 });
    let auth = Auth::Basic { user: "ferry".into(), password: PASSWORD.into() };
    origin.set_knobs(Knobs { auth: Some(auth), ..Knobs::default() });

    let mut spec = new_job("removed", ferry_protocol::JobType::Download, vec![]);
    spec.files.push(ferry_protocol::NewFile {
        remote_url: origin.url("/secret.bin"),
        local_path: out.path().join("removed").to_string_lossy().into(),
        ranges: vec![],
        sha256: None,
    });
    let id = client.create_job(&spec).await?.id;
    let set = client
        .set_credentials(id, AuthTarget::Server, AuthScheme::Basic, "ferry", &Secret::new(PASSWORD))
        .await?;
    assert_eq!(set.len(), 1);
    let left = client.remove_credentials(id, AuthTarget::Server, AuthScheme::Basic).await?;
    assert!(left.is_empty(), "{left:?}");
    let again = client.remove_credentials(id, AuthTarget::Proxy, AuthScheme::Digest).await?;
    assert!(again.is_empty(), "removing an absent credential changes nothing");
    client.act(id, JobAction::Resume).await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(401)));
    assert!(origin.requests().iter().all(|r| r.authorization.is_none()), "nothing was sent");

    let http = crate::support::raw();
    for (path, code) in [
        ("nowhere/basic", BitsCode::BG_E_INVALID_AUTH_TARGET),
        ("server/kerberos", BitsCode::BG_E_INVALID_AUTH_SCHEME),
    ] {
        let url = format!("{}/v1/jobs/{id}/credentials/{path}", node.url()?);
        let answer = http.delete(&url).bearer_auth(tokens::ALICE).send().await?;
        assert_eq!(answer.status(), 400, "{path}");
        let problem: ferry_protocol::api::Problem = answer.json().await?;
        assert_eq!(problem.code, code, "{path}: {}", problem.detail);
    }
    let body = serde_json::json!({"target": "nowhere", "scheme": "basic", "user_name": "u", "password": "p"});
    let url = format!("{}/v1/jobs/{id}/credentials", node.url()?);
    let answer = http.put(&url).bearer_auth(tokens::ALICE).json(&body).send().await?;
    assert_eq!(answer.status(), 400);
    let problem: ferry_protocol::api::Problem = answer.json().await?;
    assert_eq!(problem.code, BitsCode::BG_E_INVALID_AUTH_TARGET, "{}", problem.detail);
    // NULL/NULL: implicit logon credentials, which BITS takes for NTLM/Negotiate only.
    for body in [
        serde_json::json!({"target": "server", "scheme": "basic", "user_name": null, "password": null}),
        serde_json::json!({"target": "server", "scheme": "digest", "user_name": "", "password": ""}),
    ] {
        let answer = http.put(&url).bearer_auth(tokens::ALICE).json(&body).send().await?;
        assert_eq!(answer.status(), 400);
        let problem: ferry_protocol::api::Problem = answer.json().await?;
        assert_eq!(problem.code, BitsCode::E_INVALIDARG);
        assert!(problem.detail.contains("implicit"), "{}", problem.detail);
    }
    Ok(())
}
