//! Tokens: who may read what.

use serde_json::json;

use crate::harness::{ADMIN, Conductor, Operator, lookup};
use tether::protocol::{MASK, VERSION, VERSION_HEADER};

async fn get_targets(url: &str, node: uuid::Uuid, token: Option<&str>) -> reqwest::Response {
    let mut req = crate::harness::http().get(format!("{url}/v1/nodes/{node}/volume/targets"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn tokens_are_issued_once_and_bind_to_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let op = Operator::new(&url);
    let a = op.create_node("a", "52:54:00:00:01:01").await;
    let b = op.create_node("b", "52:54:00:00:01:02").await;
    op.assign(
        b,
        "iscsi",
        "secret-volume",
        crate::harness::iscsi_props("192.0.2.1:3260", "iqn.2003-01.org.x:b", 0),
        json!({}),
    )
    .await;

    let first = lookup(&url, "52:54:00:00:01:01").await;
    assert_eq!(first.node.uuid, a);
    let token_a = first.config.agent_token.clone();
    assert_ne!(token_a, MASK);
    assert_eq!(
        lookup(&url, "52:54:00:00:01:01").await.config.agent_token,
        MASK,
        "issued only once"
    );

    let own = get_targets(&url, a, Some(&token_a)).await;
    assert_eq!(own.status(), 200);
    assert_eq!(own.headers()[VERSION_HEADER], VERSION);

    for (node, token) in [
        (b, Some(token_a.as_str())),
        (a, None),
        (a, Some("wrong")),
        (a, Some(ADMIN)),
    ] {
        let resp = get_targets(&url, node, token).await;
        assert_eq!(resp.status(), 401, "node {node} with {token:?}");
        assert_eq!(resp.headers()[VERSION_HEADER], VERSION);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["kind"], "unauthorized");
        assert!(
            !body.to_string().contains("secret-volume"),
            "nothing served"
        );
    }
    let hb = crate::harness::http()
        .post(format!("{url}/v1/heartbeat/{b}"))
        .bearer_auth(&token_a)
        .json(&json!({"agent_version": "x", "generation": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(hb.status(), 401, "A cannot report for B");

    // Operator endpoints want the admin token, not an agent's.
    let nodes = crate::harness::http()
        .get(format!("{url}/v1/nodes"))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(nodes.status(), 401);

    // Reset: the next lookup issues a new token and the old one stops working.
    let (status, _) = op
        .request(
            reqwest::Method::POST,
            &format!("/v1/nodes/{a}/reset_token"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(get_targets(&url, a, Some(&token_a)).await.status(), 401);
    let renewed = lookup(&url, "52:54:00:00:01:01").await.config.agent_token;
    assert_ne!(renewed, MASK);
    assert_eq!(get_targets(&url, a, Some(&renewed)).await.status(), 200);
}

#[tokio::test]
async fn unknown_nodes_and_bad_requests_have_stable_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let resp = crate::harness::http()
        .get(format!("{url}/v1/lookup?addresses=52:54:00:ff:ff:ff"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "node_not_found");
    let resp = crate::harness::http()
        .get(format!("{url}/v1/lookup"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let op = Operator::new(&url);
    let (status, body) = op
        .request(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(json!({"name": "n", "addresses": ["not-a-mac"]})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("invalid_address"))
    );
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, _) = op
        .request(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(json!({"name": big, "addresses": []})),
        )
        .await;
    assert_eq!(status, 413, "request bodies are limited");
}
