//! The OpenAPI document is served, covers every route of the API and describes what the
//! server does: every reference resolves, ids are declared as UUIDs, shared refusals
//! are listed, and schemathesis, run with every check and phase against a real node
//! (`scripts/api-contract.sh`), finds no failure and no error.
//!
//! Without schemathesis the contract run prints SKIPPED and passes, unless
//! `FERRY_REQUIRE_SCHEMATHESIS=1` (CI) makes it fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use ferry_tests::{Node, NodeOptions};

use crate::support::raw;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_the_routes() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let doc: serde_json::Value =
        raw().get(format!("{}/v1/openapi.json", node.url()?)).send().await?.json().await?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/v1/jobs", &["get", "post"][..]),
        ("/v1/jobs/{id}", &["get", "patch"]),
        ("/v1/jobs/{id}/files", &["get", "post"]),
        ("/v1/jobs/{id}/files/{index}", &["patch"]),
        ("/v1/jobs/{id}/resume", &["post"]),
        ("/v1/jobs/{id}/suspend", &["post"]),
        ("/v1/jobs/{id}/cancel", &["post"]),
        ("/v1/jobs/{id}/complete", &["post"]),
        ("/v1/jobs/{id}/take-ownership", &["post"]),
        ("/v1/jobs/{id}/error", &["get"]),
        ("/v1/errors/{code}", &["get"]),
        ("/v1/cluster", &["get"]),
        ("/v1/cluster/members/{node}", &["delete"]),
        ("/healthz", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} is documented"
            );
        }
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    Ok(())
}

/// Every `$ref` of `value` (recursively).
fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(target) = map.get("$ref").and_then(|r| r.as_str()) {
                out.push(target);
            }
            map.values().for_each(|v| refs(v, out));
        }
        serde_json::Value::Array(list) => list.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_whole_and_declares_what_the_server_does() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let doc: serde_json::Value =
        raw().get(format!("{}/v1/openapi.json", node.url()?)).send().await?.json().await?;
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    for target in targets {
        let pointer = target.strip_prefix('#').context("a local reference")?;
        ensure!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
    let paths = doc["paths"].as_object().context("paths")?;
    for (path, item) in paths {
        for (method, op) in item.as_object().context("a path item")? {
            let label = format!("{method} {path}");
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" && param["name"] == "id" {
                    ensure!(param["schema"]["$ref"] == "#/components/schemas/JobId", "{label}: id");
                }
                ensure!(
                    param["in"] != "path"
                        || path.contains(&format!(
                            "{{{}}}",
                            param["name"].as_str().unwrap_or_default()
                        )),
                    "{label}: {param} is not in the path"
                );
            }
            if path != "/healthz" {
                ensure!(op["responses"]["503"].is_object(), "{label}: 503");
            }
            if op.get("security").is_some() {
                ensure!(op["responses"]["401"].is_object(), "{label}: 401");
            }
        }
    }
    let unavailable = &doc["components"]["responses"]["Unavailable"];
    ensure!(unavailable["headers"]["Retry-After"].is_object(), "503 says Retry-After");
    ensure!(
        unavailable["content"]["application/problem+json"].is_object(),
        "503 is a problem document"
    );
    let list = &doc["components"]["schemas"]["JobList"]["properties"];
    ensure!(list["next_cursor"].is_object(), "JobList has next_cursor");
    Ok(())
}

/// The workspace's root directory.
fn workspace() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

/// Bound of the whole contract run (the script bounds schemathesis itself to 240 s).
const CONTRACT_RUN: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_and_no_error() -> anyhow::Result<()> {
    let found = std::process::Command::new("schemathesis").arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        if std::env::var("FERRY_REQUIRE_SCHEMATHESIS").is_ok_and(|v| v == "1") {
            bail!(
                "FERRY_REQUIRE_SCHEMATHESIS=1 but schemathesis is not installed: \
                 `pip install schemathesis` (version 4)"
            );
        }
        println!("SKIPPED: schemathesis is not installed (pip install schemathesis)");
        return Ok(());
    }
    let ferryd = ferry_tests::binary("ferryd")?;
    let bin = ferryd.parent().context("ferryd has a directory")?;
    let root = workspace();
    let run = tokio::process::Command::new(root.join("scripts/api-contract.sh"))
        .current_dir(&root)
        .env("FERRY_BIN", bin)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CONTRACT_RUN, run)
        .await
        .context("scripts/api-contract.sh did not finish in time")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "scripts/api-contract.sh failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The summary line, e.g. "==== 3152 passed in 24.85s ====" (nothing failed).
    let summary =
        stdout.lines().rev().find(|l| l.contains(" in ") && l.starts_with('=')).unwrap_or("");
    println!("{summary}");
    ensure!(!summary.contains("failure") && !summary.contains("error"), "schemathesis: {summary}");
    Ok(())
}
