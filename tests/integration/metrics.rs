//! Both metrics endpoints, scraped and parsed: real values after real operations, bounded
//! labels, no secrets, and the agent's loopback-only rule.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::harness::{ADMIN, Conductor, Operator, World, iscsi_props};
use tether::config::ConductorConfig;
use tether::metrics::LoopbackAddr;
use tether::protocol::VolumeState;

const PORTAL: &str = "192.0.2.10:3260";
const DEAD_PORTAL: &str = "192.0.2.99:3260";
const IQN_A: &str = "iqn.2003-01.org.linux-iscsi.array:a";
const IQN_B: &str = "iqn.2003-01.org.linux-iscsi.array:b";

/// One sample of a scrape: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition (either format); panics on a line it cannot read, so a
/// malformed exposition fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                (name.to_string(), parse_labels(body, line))
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("{line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The value of the one sample named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {want:?} matches {found:?}");
    found.first().map(|s| s.value)
}

async fn scrape(url: &str, openmetrics: bool) -> String {
    let mut req = crate::harness::http().get(format!("{url}/metrics"));
    if openmetrics {
        req = req.header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
    }
    let resp = req.send().await.expect("metrics endpoint reachable");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    if openmetrics {
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    } else {
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }
    text
}

/// Scrapes until `check` holds, or fails with the last scrape.
async fn wait_scrape(url: &str, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(url, false).await;
        let samples = parse(&text);
        if check(&samples) {
            return samples;
        }
        if Instant::now() > deadline {
            panic!("expected {what}; the last scrape of {url} was\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A loopback port free right now, for the agent's metrics endpoint.
fn free_loopback() -> LoopbackAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    addr.to_string().parse().unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_show_attaches_detaches_failures_and_node_freshness() {
    let World {
        dir: _dir,
        conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:03:01", true).await;
    let agent_addr = free_loopback();
    node.metrics_listen = Some(agent_addr);
    node.kernel.set_unreachable(DEAD_PORTAL, true);
    node.start_agent();
    let agent_url = format!("http://{agent_addr}");
    let conductor_url = conductor.url();

    let a = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-a",
            iscsi_props(PORTAL, IQN_A, 0),
            json!({}),
        )
        .await;
    let b = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-b",
            iscsi_props(PORTAL, IQN_B, 0),
            json!({}),
        )
        .await;
    let dead = op
        .assign(
            node_uuid,
            "iscsi",
            "vol-dead",
            iscsi_props(DEAD_PORTAL, IQN_A, 1),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, a, VolumeState::Attached).await;
    op.wait_state(node_uuid, b, VolumeState::Attached).await;
    let failed = op.wait_state(node_uuid, dead, VolumeState::Failed).await;
    let kind = failed.error.unwrap().kind;
    assert_eq!(kind, "portal_unreachable");

    // The agent: what it did, by volume type and error kind.
    let s = wait_scrape(&agent_url, "a heartbeat counted", |s| {
        value(s, "tether_agent_heartbeats_total", &[("result", "ok")]) >= Some(1.0)
    })
    .await;
    let ok = [("volume_type", "iscsi"), ("result", "ok")];
    assert_eq!(value(&s, "tether_agent_attaches_total", &ok), Some(2.0));
    assert_eq!(
        value(&s, "tether_agent_attach_duration_seconds_count", &ok),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "tether_agent_attaches_total",
            &[("volume_type", "rbd"), ("result", "ok")]
        ),
        Some(0.0)
    );
    assert!(
        value(
            &s,
            "tether_agent_attaches_total",
            &[("volume_type", "iscsi"), ("result", "failed")]
        ) >= Some(1.0)
    );
    assert!(
        value(
            &s,
            "tether_agent_volume_failures_total",
            &[
                ("operation", "attach"),
                ("volume_type", "iscsi"),
                ("kind", "portal_unreachable")
            ]
        ) >= Some(1.0)
    );
    assert_eq!(
        value(&s, "tether_agent_volumes", &[("state", "attached")]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "tether_agent_volumes", &[("state", "pending")]),
        Some(0.0)
    );
    let last = value(&s, "tether_agent_last_heartbeat_timestamp_seconds", &[]).unwrap();
    assert!((unix_now() - last).abs() < 5.0, "last heartbeat at {last}");

    // The conductor: the same volumes from the node's report, and the node's freshness.
    let node_label = node_uuid.to_string();
    let s = wait_scrape(&conductor_url, "the report's volumes", |s| {
        value(s, "tether_conductor_volumes", &[("state", "attached")]) == Some(2.0)
            && value(s, "tether_conductor_volumes", &[("state", "failed")]) == Some(1.0)
    })
    .await;
    assert_eq!(value(&s, "tether_conductor_nodes", &[]), Some(1.0));
    assert_eq!(
        value(&s, "tether_conductor_nodes_never_seen", &[]),
        Some(0.0)
    );
    let age = value(
        &s,
        "tether_conductor_node_last_seen_age_seconds",
        &[("node_uuid", &node_label)],
    )
    .expect("the node's last-seen age");
    assert!((0.0..=3.0).contains(&age), "age {age}");
    assert_eq!(
        value(&s, "tether_conductor_targets", &[("volume_type", "iscsi")]),
        Some(3.0)
    );
    assert_eq!(
        value(&s, "tether_conductor_targets", &[("volume_type", "rbd")]),
        Some(0.0)
    );
    assert!(value(&s, "tether_conductor_heartbeats_total", &[]) >= Some(1.0));
    assert!(
        value(
            &s,
            "tether_conductor_http_request_duration_seconds_count",
            &[
                ("route", "/v1/heartbeat/{node}"),
                ("method", "POST"),
                ("status", "2xx")
            ]
        ) >= Some(1.0)
    );
    // Routes are templates: no node or target uuid in any label but the node's own series.
    for sample in &s {
        if sample.name != "tether_conductor_node_last_seen_age_seconds" {
            let labels = format!("{:?}", sample.labels);
            assert!(
                !labels.contains(&node_label) && !labels.contains(&a.to_string()),
                "{sample:?}"
            );
        }
    }

    // A long-poll that waits its full time: counted as a long-poll, not as a slow request.
    let token = std::fs::read_to_string(node.state_dir().join("token")).unwrap();
    let generation = op.status(node_uuid).await.generation;
    let started = Instant::now();
    let resp = crate::harness::http()
        .get(format!(
            "{conductor_url}/v1/nodes/{node_uuid}/volume/targets?since={generation}&wait=1"
        ))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let s = parse(&scrape(&conductor_url, true).await);
    assert!(
        value(
            &s,
            "tether_conductor_long_polls_total",
            &[("outcome", "timeout")]
        ) >= Some(1.0)
    );
    // The agent's own long-poll is waiting now.
    assert!(value(&s, "tether_conductor_long_polls_waiting", &[]) >= Some(1.0));
    let targets_route = [
        ("route", "/v1/nodes/{node}/volume/targets"),
        ("method", "GET"),
        ("status", "2xx"),
    ];
    let waited_in_histogram = value(
        &s,
        "tether_conductor_http_request_duration_seconds_sum",
        &targets_route,
    )
    .unwrap_or(0.0);
    assert!(
        waited_in_histogram < 0.9,
        "long-polls leaked into the latency histogram: {waited_in_histogram} s"
    );

    // Unassign one: the agent counts the detach, both sides see one attached volume.
    op.unassign(a).await;
    op.wait_gone(node_uuid, a).await;
    let s = wait_scrape(&agent_url, "the detach counted", |s| {
        value(s, "tether_agent_volumes", &[("state", "attached")]) == Some(1.0)
    })
    .await;
    assert_eq!(value(&s, "tether_agent_detaches_total", &ok), Some(1.0));
    assert_eq!(
        value(&s, "tether_agent_detach_duration_seconds_count", &ok),
        Some(1.0)
    );
    assert_eq!(value(&s, "tether_agent_attaches_total", &ok), Some(2.0));
    let s = wait_scrape(&conductor_url, "one attached volume reported", |s| {
        value(s, "tether_conductor_volumes", &[("state", "attached")]) == Some(1.0)
            && value(s, "tether_conductor_targets", &[("volume_type", "iscsi")]) == Some(2.0)
    })
    .await;
    // The unassignment woke the agent's long-poll.
    assert!(
        value(
            &s,
            "tether_conductor_long_polls_total",
            &[("outcome", "changed")]
        ) >= Some(1.0)
    );

    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_either_scrape() {
    const CHAP_PASSWORD: &str = "chap-METRICS-SECRET-4d21";
    const CEPHX_KEY: &str = "AQBIkAdrAAAAABAAbWV0cmljcy10ZXN0LWtleQ==";
    let World {
        dir: _dir,
        conductor,
        op,
        node_uuid,
        mut node,
    } = World::start("52:54:00:00:03:02", true).await;
    let iqn = "iqn.2003-01.org.linux-iscsi.array:chap";
    node.kernel.require_chap(iqn, "initiator", CHAP_PASSWORD);
    node.kernel.require_rbd_key("cinder", CEPHX_KEY);
    let agent_addr = free_loopback();
    node.metrics_listen = Some(agent_addr);
    node.start_agent();

    let chap = op
        .assign(
            node_uuid,
            "iscsi",
            "chap",
            json!({"target_portal": PORTAL, "target_iqn": iqn, "target_lun": 0,
                   "auth_method": "CHAP", "auth_username": "initiator",
                   "auth_password": CHAP_PASSWORD}),
            json!({}),
        )
        .await;
    let rbd = op
        .assign(
            node_uuid,
            "rbd",
            "ceph",
            json!({"name": "volumes/v1", "hosts": ["192.0.2.30"], "ports": ["6789"],
                   "auth_username": "cinder", "auth_key": CEPHX_KEY}),
            json!({}),
        )
        .await;
    op.wait_state(node_uuid, chap, VolumeState::Attached).await;
    op.wait_state(node_uuid, rbd, VolumeState::Attached).await;
    let agent_token = std::fs::read_to_string(node.state_dir().join("token")).unwrap();

    let agent_url = format!("http://{agent_addr}");
    wait_scrape(&agent_url, "both attaches counted", |s| {
        value(s, "tether_agent_volumes", &[("state", "attached")]) == Some(2.0)
    })
    .await;
    for url in [agent_url.as_str(), conductor.url().as_str()] {
        for openmetrics in [false, true] {
            let text = scrape(url, openmetrics).await;
            for secret in [CHAP_PASSWORD, CEPHX_KEY, agent_token.trim(), ADMIN] {
                assert!(!text.contains(secret), "a secret appeared in {url}/metrics");
            }
        }
    }
    node.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_metrics_need_the_metrics_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, "metrics-token-0123456789abcdef\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut conductor = Conductor::start_with(
        dir.path(),
        ConductorConfig {
            metrics_token_file: Some(token_file),
            ..crate::harness::conductor_config(dir.path())
        },
    )
    .await;
    let url = format!("{}/metrics", conductor.url());
    let http = crate::harness::http();
    for token in [None, Some(ADMIN), Some("metrics-token-wrong")] {
        let mut req = http.get(&url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "token {token:?}");
    }
    let resp = http
        .get(&url)
        .bearer_auth("metrics-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let s = parse(&resp.text().await.unwrap());
    assert_eq!(value(&s, "tether_conductor_nodes", &[]), Some(0.0));
    assert_eq!(value(&s, "tether_conductor_database_up", &[]), Some(1.0));
    // The refused scrapes above, counted by their error kind.
    assert_eq!(
        value(
            &s,
            "tether_conductor_http_errors_total",
            &[("route", "/metrics"), ("kind", "unauthorized")]
        ),
        Some(3.0)
    );
    // The operator API is unchanged by it.
    let (status, _) = Operator::new(&conductor.url())
        .request(reqwest::Method::GET, "/v1/nodes", None)
        .await;
    assert_eq!(status, 200);
    conductor.stop().await;
}

#[test]
fn agent_refuses_a_metrics_address_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        "[agent]\nbackend = \"simulated\"\nmetrics_listen = \"0.0.0.0:9587\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("--config")
        .arg(&config)
        .args(["agent", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("tether.toml"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(
        !dir.path().join("state").exists(),
        "refused before doing anything"
    );
}
