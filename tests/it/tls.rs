//! HTTPS origins and BITS's HTTP options: certificate validation and its security
//! flags, extra trusted authorities, client certificates, and the redirect policies.

use std::time::Duration;

use ferry_protocol::command::JobAction;
use ferry_protocol::job::security;
use ferry_protocol::{BitsCode, JobState, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::tokens;

use crate::download::same_as_origin;
use crate::support::{start_download, transfer_node, wait_for};

const SHORT: Duration = Duration::from_secs(30);

fn flags(bits: u32) -> PropertyChanges {
    PropertyChanges { security_flags: Some(bits), ..PropertyChanges::default() }
}

async fn https_origin() -> anyhow::Result<Origin> {
    let origin = Origin::start(OriginConfig { tls: true, ..OriginConfig::default() }).await?;
    origin.add_file("/s.bin", Content::Pattern { seed: 21, len: 600 * 1024 });
    Ok(origin)
}

#[tokio::test]
async fn certificates_are_validated_unless_the_job_or_node_says_otherwise() -> anyhow::Result<()> {
    let origin = https_origin().await?;
    let url = origin.url("/s.bin");
    assert!(url.starts_with("https://"));
    let out = tempfile::tempdir()?;

    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let id =
        start_download(&client, &[(url.clone(), out.path().join("a"))], PropertyChanges::default())
            .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_TRUST_FAILURE));

    let local = out.path().join("b");
    let id = start_download(
        &client,
        &[(url.clone(), local.clone())],
        flags(security::IGNORE_UNKNOWN_CA),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/s.bin", &local)?);

    // CRL checking is refused rather than silently skipped.
    let refused = client.set_properties(id, &flags(security::ENABLE_CRL_CHECK)).await;
    assert_eq!(refused.err().and_then(|e| e.code()), Some(BitsCode::E_NOTIMPL));

    // A node that trusts the origin's authority needs no flags.
    let ca = out.path().join("ca.pem");
    std::fs::write(&ca, origin.ca_pem().unwrap_or_default())?;
    let trusting =
        transfer_node(&format!("trusted_ca_file = {:?}", ca.display().to_string())).await?;
    let client = trusting.client(Some(tokens::ALICE))?;
    let local = out.path().join("c");
    let id = start_download(&client, &[(url, local.clone())], PropertyChanges::default()).await?;
    wait_for(&trusting, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/s.bin", &local)?);
    Ok(())
}

#[tokio::test]
async fn client_certificates_load_from_pem_and_pkcs12_is_refused_clearly() -> anyhow::Result<()> {
    let origin = https_origin().await?;
    let out = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["ferry-client".to_owned()])?.self_signed(&key)?;
    let pem = out.path().join("client.pem");
    std::fs::write(&pem, format!("{}{}", cert.pem(), key.serialize_pem()))?;

    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let with_cert = PropertyChanges {
        security_flags: Some(security::IGNORE_UNKNOWN_CA),
        client_certificate: Some(Some(pem.to_string_lossy().into())),
        ..PropertyChanges::default()
    };
    let local = out.path().join("a");
    let id = start_download(&client, &[(origin.url("/s.bin"), local.clone())], with_cert.clone())
        .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/s.bin", &local)?);

    let p12 = PropertyChanges {
        client_certificate: Some(Some(out.path().join("client.p12").to_string_lossy().into())),
        ..with_cert
    };
    let id = start_download(&client, &[(origin.url("/s.bin"), out.path().join("b"))], p12).await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    let error = job.error.expect("an error");
    assert_eq!(error.code, BitsCode::E_INVALIDARG);
    assert!(error.detail.contains("PKCS#12") && error.detail.contains("PEM"), "{}", error.detail);
    Ok(())
}

#[tokio::test]
async fn redirect_policies_follow_report_refuse_and_guard_https() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/new.bin", Content::Pattern { seed: 8, len: 500 * 1024 });
    let new_url = origin.url("/new.bin");
    origin.set_knobs(Knobs {
        redirects: vec![("/old.bin".into(), new_url.clone())],
        ..Knobs::default()
    });
    let old_url = origin.url("/old.bin");
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;

    // Silent (default): followed, the remote name stays.
    let local = out.path().join("silent");
    let id =
        start_download(&client, &[(old_url.clone(), local.clone())], PropertyChanges::default())
            .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    assert_eq!(client.files(id).await?.files[0].remote_url, old_url);
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/new.bin", &local)?);

    // Report: followed, and the final URL becomes the remote name.
    let id = start_download(
        &client,
        &[(old_url.clone(), out.path().join("report"))],
        flags(security::REDIRECT_ALLOW_REPORT),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    assert_eq!(client.files(id).await?.files[0].remote_url, new_url);

    // Disallow: the 302 fails the job.
    let id = start_download(
        &client,
        &[(old_url, out.path().join("no"))],
        flags(security::REDIRECT_DISALLOW),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(302)));

    // https to http only with 0x800.
    let secure = Origin::start(OriginConfig { tls: true, ..OriginConfig::default() }).await?;
    secure.set_knobs(Knobs { redirects: vec![("/down.bin".into(), new_url)], ..Knobs::default() });
    let down = secure.url("/down.bin");
    let id = start_download(
        &client,
        &[(down.clone(), out.path().join("down"))],
        flags(security::IGNORE_UNKNOWN_CA),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    let error = job.error.expect("an error");
    assert!(error.detail.contains("https to http"), "{}", error.detail);
    let allowed = flags(security::IGNORE_UNKNOWN_CA | security::REDIRECT_ALLOW_HTTPS_TO_HTTP);
    let id = start_download(&client, &[(down, out.path().join("down2"))], allowed).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    Ok(())
}
