//! The OpenAPI document is served and covers every route of the API.

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
