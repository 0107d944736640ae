//! Lookup: who gets a node's token, how often a client may ask, and what the log keeps of it.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::harness::{ADMIN, Conductor, Operator, all_logs};
use tether::config::{ConductorConfig, Config};
use tether::protocol::MASK;

/// A client whose requests leave from `source`, one of loopback's many addresses.
fn client_from(source: &str) -> reqwest::Client {
    crate::harness::http_builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Option<String>, Value) {
    let resp = http.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_lookup_names_at_most_16_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let op = Operator::new(&url);
    op.create_node("many-nics", "52:54:00:00:05:10").await;
    let http = crate::harness::http();
    // The node's own MAC last, after others: 17 are refused (and issue nothing), 16 find it.
    for (count, status, kind) in [(17, 400, Some("too_many_addresses")), (16, 200, None)] {
        let mut addresses: Vec<String> = (1..count)
            .map(|i| format!("52:54:00:00:06:{i:02x}"))
            .collect();
        addresses.push("52:54:00:00:05:10".into());
        let query = format!("{url}/v1/lookup?addresses={}", addresses.join(","));
        let (got, _, body) = get(&http, &query).await;
        assert_eq!(got, status, "{count}: {body}");
        assert_eq!(body["error"]["kind"].as_str(), kind);
        if status == 200 {
            assert_ne!(body["config"]["agent_token"], MASK, "17 issued the token");
        }
    }
}

#[tokio::test]
async fn rapid_lookups_from_one_address_get_429_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = format!("{}/v1/lookup?addresses=52:54:00:00:07:01", conductor.url());
    let guesser = client_from("127.0.0.1");
    let mut answered = 0;
    let limited = loop {
        let (status, retry_after, body) = get(&guesser, &url).await;
        if status == 429 {
            break (retry_after, body);
        }
        assert_eq!(status, 404, "{body}");
        answered += 1;
        assert!(answered < 200, "200 lookups in a row and none refused");
    };
    assert!(
        answered >= 10,
        "a node looks up a few times at boot; refused after {answered}"
    );
    let (retry_after, body) = limited;
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(body["error"]["kind"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("retry"));

    // The limit is per client address: another one still gets answers.
    let (status, _, _) = get(&client_from("127.0.0.2"), &url).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(&guesser, &url).await;
    assert_eq!(status, 429, "still limited");
}

#[tokio::test]
async fn failed_authentications_count_against_the_same_limit() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = format!("{}/v1/nodes", conductor.url());
    let guesser = client_from("127.0.0.1");
    let mut refused = 0;
    loop {
        let resp = guesser.get(&url).bearer_auth("guess").send().await.unwrap();
        match resp.status().as_u16() {
            401 => refused += 1,
            429 => break,
            other => panic!("status {other}"),
        }
        assert!(refused < 200, "200 wrong tokens in a row and none limited");
    }
    // An address that ran out is refused before its token is checked, even the right one.
    let resp = guesser.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let other = client_from("127.0.0.3");
    let resp = other.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_limits_are_configurable_and_refill() {
    let dir = tempfile::tempdir().unwrap();
    let config = |burst, per_minute| ConductorConfig {
        listen: "127.0.0.1:0".into(),
        database: match crate::harness::postgres_server() {
            Some(_) => crate::harness::database(&dir.path().join(format!("c-{per_minute}"))),
            None => dir.path().join(format!("c-{per_minute}.db")),
        },
        rate_limit_burst: burst,
        rate_limit_per_minute: per_minute,
        ..ConductorConfig::default()
    };
    // Two at once, then one a second.
    let mut conductor = Conductor::start_with(dir.path(), config(2, 60)).await;
    let url = format!("{}/v1/lookup?addresses=52:54:00:00:07:02", conductor.url());
    let http = crate::harness::http();
    let statuses = [get(&http, &url).await.0, get(&http, &url).await.0];
    assert_eq!(statuses, [404, 404]);
    let (status, retry_after, _) = get(&http, &url).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(&http, &url).await.0, 404, "refilled");
    conductor.stop().await;

    // None a minute: no limit.
    let conductor = Conductor::start_with(dir.path(), config(1, 0)).await;
    let url = format!("{}/v1/lookup?addresses=52:54:00:00:07:02", conductor.url());
    for _ in 0..50 {
        assert_eq!(get(&http, &url).await.0, 404);
    }
    let file = dir.path().join("zero.toml");
    std::fs::write(&file, "[conductor]\nrate_limit_burst = 0\n").unwrap();
    let err = Config::load(&[file]).unwrap_err().to_string();
    assert!(err.contains("rate_limit_burst"), "{err}");
}

#[tokio::test]
async fn a_uuid_alone_never_gets_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let op = Operator::new(&url);
    // Enrolled, never booted: its token has not been issued.
    let node = op.create_node("not-booted", "52:54:00:00:08:01").await;
    let http = crate::harness::http();
    let by_uuid = |query: String| format!("{url}/v1/lookup?{query}");

    for query in [
        format!("node_uuid={node}"),
        format!("node_uuid={node}&addresses=52:54:00:00:08:99"),
    ] {
        let (status, _, body) = get(&http, &by_uuid(query.clone())).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["node"]["uuid"], node.to_string());
        assert_eq!(body["config"]["agent_token"], MASK, "{query} got the token");
    }
    // The node's own MAC gets it, with or without the uuid beside it; a wrong uuid gets nothing.
    let (status, _, _) = get(
        &http,
        &by_uuid(format!(
            "node_uuid={}&addresses=52:54:00:00:08:01",
            uuid::Uuid::new_v4()
        )),
    )
    .await;
    assert_eq!(status, 404);
    let (_, _, body) = get(
        &http,
        &by_uuid(format!("node_uuid={node}&addresses=52:54:00:00:08:01")),
    )
    .await;
    let token = body["config"]["agent_token"].as_str().unwrap().to_string();
    assert_ne!(token, MASK);

    // After a reset, the uuid still gets nothing: the metrics list uuids.
    let (status, _) = op
        .request(
            reqwest::Method::POST,
            &format!("/v1/nodes/{node}/reset_token"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 204);
    let (_, _, body) = get(&http, &by_uuid(format!("node_uuid={node}"))).await;
    assert_eq!(body["config"]["agent_token"], MASK);
    let (_, _, body) = get(&http, &by_uuid("addresses=52:54:00:00:08:01".into())).await;
    assert_ne!(body["config"]["agent_token"], MASK);
}

#[tokio::test]
async fn every_token_issue_is_logged_with_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let node = Operator::new(&url)
        .create_node("logged-node", "52:54:00:00:09:01")
        .await;
    let (_, _, body) = get(
        &client_from("127.0.0.4"),
        &format!("{url}/v1/lookup?addresses=52:54:00:00:09:01"),
    )
    .await;
    let token = body["config"]["agent_token"].as_str().unwrap().to_string();
    assert_ne!(token, MASK);
    let logs = all_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("issued the node's agent token") && l.contains(&node.to_string()))
        .unwrap_or_else(|| panic!("no token issue logged for {node}"));
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("client=127.0.0.4"), "{line}");
    assert!(line.contains("logged-node"), "{line}");
    assert!(!logs.contains(&token), "the token itself is never logged");
}
