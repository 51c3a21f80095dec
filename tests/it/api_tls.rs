//! TLS on the API (issue 15): the CLI and the Rust client talk to a node whose API
//! certificate the cluster CA issued, and to one with a configured certificate; a wrong
//! CA is refused with a clear error, before any token is sent.

use ferry_coordinator::{Client, ClientError};
use ferry_protocol::JobType;
use ferry_tests::{ApiCa, Node, NodeOptions, ferry, tokens};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::support::{file, new_job};

/// A throwaway CA, PEM, and a server certificate (PEM chain and key) it issued for
/// `127.0.0.1`.
fn own_ca_and_cert() -> anyhow::Result<(String, String, String)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Operator CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca)?;
    Ok((ca.pem(), format!("{}{}", cert.pem(), ca.pem()), key.serialize_pem()))
}

/// Asserts that `client` refuses the node's certificate.
async fn refused(client: &Client) -> anyhow::Result<()> {
    match client.list_jobs(false).await {
        Err(ClientError::UntrustedCertificate { detail, .. }) => {
            println!("refused as expected: {detail}");
            Ok(())
        }
        other => anyhow::bail!("a wrong CA was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_client_speak_tls_with_the_cluster_ca_and_refuse_a_wrong_one() -> anyhow::Result<()>
{
    let options = NodeOptions {
        extra_config: "[api]\ntls = \"on\"\n".into(),
        api_ca: Some(ApiCa::Cluster),
        ..NodeOptions::queue_only()
    };
    // The harness checks health over https with the cluster CA.
    let node = Node::start(options).await?;
    let url = node.url()?;
    anyhow::ensure!(url.starts_with("https://"), "{url}");

    // The Rust client.
    let alice = node.client(Some(tokens::ALICE))?;
    let job = alice.create_job(&new_job("tls", JobType::Download, vec![file(1)])).await?;
    anyhow::ensure!(alice.list_jobs(false).await?.iter().any(|j| j.id == job.id));

    // The CLI, with FERRY_CA (set by the harness) and with --ca.
    let (code, stdout, stderr) = ferry(&node, tokens::ALICE, &["--json", "job", "list"]).await?;
    anyhow::ensure!(code == 0 && stdout.contains(&job.id.to_string()), "{code}: {stderr}");
    let ca = node.data_dir().join("ca.pem");
    let ca_arg = ca.to_string_lossy().into_owned();
    let (code, _, stderr) =
        ferry(&node, tokens::ALICE, &["--ca", &ca_arg, "job", "info", &job.id.to_string()]).await?;
    anyhow::ensure!(code == 0, "ferry --ca: {stderr}");

    // Without --node, the CLI finds the local node in its data directory; --ca makes
    // that address https://.
    let local = tokio::process::Command::new(ferry_tests::binary("ferry")?)
        .args(["--ca", &ca_arg, "job", "list"])
        .env_remove("FERRY_NODE")
        .env_remove("FERRY_CA")
        .env("FERRY_TOKEN", tokens::ALICE)
        .env("FERRY_DATA_DIR", node.data_dir())
        .kill_on_drop(true)
        .output();
    let local = tokio::time::timeout(std::time::Duration::from_secs(60), local).await??;
    anyhow::ensure!(
        local.status.success(),
        "ferry --ca with the local api.addr: {}",
        String::from_utf8_lossy(&local.stderr)
    );

    // A wrong CA: the client and the CLI refuse the node.
    let dir = tempfile::tempdir()?;
    let (other_ca, _, _) = own_ca_and_cert()?;
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, &other_ca)?;
    refused(&Client::with_ca(&url, Some(tokens::ALICE.into()), other_ca.as_bytes())?).await?;
    let wrong_arg = wrong.to_string_lossy().into_owned();
    let (code, _, stderr) =
        ferry(&node, tokens::ALICE, &["--ca", &wrong_arg, "job", "list"]).await?;
    anyhow::ensure!(code != 0 && stderr.contains("TLS certificate"), "exit {code}: {stderr}");
    anyhow::ensure!(stderr.contains("--ca"), "{stderr}");

    // Plain HTTP gets no answer from a TLS API.
    let plain = Client::new(&url.replace("https://", "http://"), Some(tokens::ALICE.into()))?
        .with_attempts(1);
    anyhow::ensure!(plain.list_jobs(false).await.is_err(), "plain HTTP was answered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_certificate_is_served_and_checked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, chain, key) = own_ca_and_cert()?;
    let (ca_path, cert_path, key_path) =
        (dir.path().join("ca.pem"), dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&ca_path, ca)?;
    std::fs::write(&cert_path, chain)?;
    std::fs::write(&key_path, key)?;
    let options = NodeOptions {
        extra_config: format!(
            "[api]\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        api_ca: Some(ApiCa::File(ca_path)),
        ..NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let bob = node.client(Some(tokens::BOB))?;
    bob.create_job(&new_job("tls", JobType::Download, vec![file(2)])).await?;
    let (code, _, stderr) = ferry(&node, tokens::BOB, &["job", "list"]).await?;
    anyhow::ensure!(code == 0, "{stderr}");

    // The cluster CA did not issue this certificate.
    let cluster_ca = std::fs::read(node.data_dir().join("ca.pem"))?;
    refused(&Client::with_ca(&node.url()?, Some(tokens::BOB.into()), &cluster_ca)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_stops_the_start_with_the_reason() -> anyhow::Result<()> {
    let options = NodeOptions {
        extra_config:
            "[api]\ntls_cert = \"/nonexistent/api.pem\"\ntls_key = \"/nonexistent/api.key\"\n"
                .into(),
        api_ca: Some(ApiCa::File("/nonexistent/ca.pem".into())),
        ..NodeOptions::queue_only()
    };
    let error = match Node::start(options).await {
        Ok(_) => anyhow::bail!("ferryd started without its certificate"),
        Err(e) => e.to_string(),
    };
    anyhow::ensure!(error.contains("cannot read api.tls_cert /nonexistent/api.pem"), "{error}");
    Ok(())
}
