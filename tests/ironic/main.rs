//! The conductor against a real Ironic: nodes enrolled through Ironic's API appear in tether
//! with their ports' MACs and follow renames and port changes; the agent's initiator becomes an
//! Ironic volume connector; a node deleted in Ironic leaves only after its volume is detached;
//! an Ironic outage of a minute loses nothing; 1,000 nodes sync in pages (time and memory
//! printed for BENCHMARKS.md).
//!
//! Ironic is real (from PyPI, started by scripts/test-ironic, which passes its URL in
//! `TETHER_IRONIC_URL` and a script that stops and starts it in `TETHER_IRONIC_CONTROL`); the
//! agent is simulated by HTTP calls shaped as the agent's. Without that script the tests are
//! ignored.

#[path = "../support/conductor_process.rs"]
mod conductor_process;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use conductor_process::ConductorProcess;
use serde_json::{Value, json};
use uuid::Uuid;

const IGNORED: &str = "needs a real Ironic: scripts/test-ironic";
const ADMIN: &str = "admin-token-for-the-ironic-tests-0123456";
const MICROVERSION: &str = "1.32";

fn ironic_url() -> String {
    std::env::var("TETHER_IRONIC_URL").unwrap_or_else(|_| panic!("{IGNORED}"))
}

/// Ironic's REST API (noauth).
struct Ironic {
    http: reqwest::Client,
    url: String,
}

impl Ironic {
    fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            url: ironic_url(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.url))
            .header("X-OpenStack-Ironic-API-Version", MICROVERSION);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("Ironic answers");
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn create_node(&self, name: &str, macs: &[String]) -> Uuid {
        let node = self
            .call(
                reqwest::Method::POST,
                "nodes",
                Some(json!({"name": name, "driver": "fake-hardware"})),
            )
            .await;
        let uuid: Uuid = node["uuid"].as_str().unwrap().parse().unwrap();
        for mac in macs {
            self.add_port(uuid, mac).await;
        }
        uuid
    }

    async fn add_port(&self, node: Uuid, mac: &str) {
        let body = json!({"node_uuid": node, "address": mac});
        self.call(reqwest::Method::POST, "ports", Some(body)).await;
    }

    async fn rename(&self, node: Uuid, name: &str) {
        let patch = json!([{"op": "replace", "path": "/name", "value": name}]);
        self.call(
            reqwest::Method::PATCH,
            &format!("nodes/{node}"),
            Some(patch),
        )
        .await;
    }

    async fn delete_node(&self, node: Uuid) {
        self.call(reqwest::Method::DELETE, &format!("nodes/{node}"), None)
            .await;
    }

    async fn connectors(&self, node: Uuid) -> Vec<(String, String)> {
        let path = format!("volume/connectors?node={node}&detail=true");
        let listed = self.call(reqwest::Method::GET, &path, None).await;
        listed["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap().to_string();
                (s("type"), s("connector_id"))
            })
            .collect()
    }

    async fn create_connector(&self, node: Uuid, kind: &str, id: &str) {
        let body = json!({"node_uuid": node, "type": kind, "connector_id": id});
        self.call(reqwest::Method::POST, "volume/connectors", Some(body))
            .await;
    }
}

/// Stops or starts Ironic (same port, same database) through scripts/test-ironic's helper.
fn control(what: &str) {
    let script = std::env::var("TETHER_IRONIC_CONTROL").unwrap_or_else(|_| panic!("{IGNORED}"));
    let status = Command::new(script).arg(what).status().unwrap();
    assert!(status.success(), "Ironic {what} failed");
}

/// A conductor with `[ironic]` on the real Ironic.
fn conductor(dir: &Path, name: &str, extra: &str) -> ConductorProcess {
    let config = format!(
        "heartbeat_interval_s = 5\n\n\
         [ironic]\nauth = \"noauth\"\nendpoint = \"{url}\"\nsync_interval_s = 1\n{extra}",
        url = ironic_url(),
    );
    let logs = "TETHER_IRONIC_LOGS";
    ConductorProcess::start(dir, name, &config, ADMIN, "info,tether=debug", logs)
}

/// The conductor's APIs: the operator's and, with a node token, the agent's.
struct Tether {
    http: reqwest::Client,
    url: String,
}

impl Tether {
    async fn new(url: &str) -> Self {
        // Pooled connections go before the conductor's 10 s idle limit: one reused just as the
        // conductor closes it fails the request (seen after the minute without Ironic).
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let t = Self {
            http,
            url: url.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.http.get(format!("{url}/v1")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the conductor did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let answer = request.send().await.expect("the conductor answers");
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(&body);
        self.send(request).await
    }

    async fn nodes(&self) -> Value {
        let (status, body) = self
            .admin(reqwest::Method::GET, "/v1/nodes", json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn node(&self, uuid: Uuid) -> Option<Value> {
        let nodes = self.nodes().await;
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["uuid"] == uuid.to_string())
            .cloned()
    }

    /// Waits until the node list satisfies `check` (sync passes run every second).
    async fn wait_nodes(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = self.nodes().await;
            if check(&nodes) {
                return nodes;
            }
            assert!(Instant::now() < deadline, "{what}: {nodes:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What a simulated agent does first: looks its node up by MAC; the node and its token.
    async fn lookup(&self, mac: &str) -> (Uuid, String) {
        let request = self
            .http
            .get(format!("{}/v1/lookup?addresses={mac}", self.url));
        let (status, body) = self.send(request).await;
        assert_eq!(status, 200, "lookup {mac}: {body}");
        let token = body["config"]["agent_token"].as_str().unwrap().to_string();
        let uuid = body["node"]["uuid"].as_str().unwrap().parse().unwrap();
        (uuid, token)
    }

    /// A heartbeat as the agent sends it: its initiator and its volumes.
    async fn heartbeat(&self, node: Uuid, token: &str, iqn: &str, volumes: Value) {
        let request = self
            .http
            .post(format!("{}/v1/heartbeat/{node}", self.url))
            .bearer_auth(token)
            .json(&json!({
                "agent_version": "0.1.0",
                "generation": null,
                "connectors": [{"type": "iqn", "connector_id": iqn}],
                "volumes": volumes,
            }));
        let (status, body) = self.send(request).await;
        assert_eq!(status, 202, "{body}");
    }

    async fn targets(&self, node: Uuid, token: &str) -> Vec<Value> {
        let request = self
            .http
            .get(format!("{}/v1/nodes/{node}/volume/targets", self.url))
            .bearer_auth(token);
        let (status, body) = self.send(request).await;
        assert_eq!(status, 200, "{body}");
        body["targets"].as_array().unwrap().clone()
    }

    async fn assign(&self, node: Uuid, volume: &str) -> Uuid {
        let body = json!({
            "node_uuid": node,
            "volume_type": "iscsi",
            "volume_id": volume,
            "properties": {"target_portal": "192.0.2.10:3260",
                "target_iqn": format!("iqn.2010-10.org.openstack:{volume}"), "target_lun": 1},
        });
        let (status, body) = self
            .admin(reqwest::Method::POST, "/v1/volume/targets", body)
            .await;
        assert_eq!(status, 201, "{body}");
        body["uuid"].as_str().unwrap().parse().unwrap()
    }

    async fn metrics(&self) -> String {
        let answer = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap()
    }
}

/// MACs unique to one test run (tests share one Ironic, and ports are unique in it).
fn macs(run: u8, n: usize) -> Vec<String> {
    let salt = std::process::id() as u16;
    (0..n)
        .map(|i| {
            format!(
                "52:{:02x}:{:02x}:{run:02x}:{:02x}:{:02x}",
                salt >> 8,
                salt & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            )
        })
        .collect()
}

fn attached(target: Uuid, volume: &str) -> Value {
    json!([{"target_uuid": target, "volume_id": volume, "volume_type": "iscsi", "state": "attached",
        "device_path": "/dev/sdb", "since": "2026-01-01T00:00:00Z"}])
}

fn name_of(node: &Value) -> &str {
    node["name"].as_str().unwrap()
}

#[tokio::test]
#[ignore = "needs a real Ironic: scripts/test-ironic"]
async fn ironic_nodes_ports_renames_and_initiators_are_kept_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let ironic = Ironic::new();
    let m = macs(1, 5);
    let suffix = std::process::id();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("bm-{i}-{suffix}");
        nodes.push(ironic.create_node(&name, &m[i..=i]).await);
    }
    let conductor = conductor(dir.path(), "step", "");
    let tether = Tether::new(&conductor.url).await;

    // The three nodes appear with their MACs, as synced nodes with Ironic's state.
    tether
        .wait_nodes("three nodes synced", |list| {
            nodes.iter().all(|u| {
                list["nodes"].as_array().unwrap().iter().any(|n| {
                    n["uuid"] == u.to_string()
                        && n["source"] == "ironic"
                        && n["provision_state"] == "enroll"
                        && n["addresses"].as_array().unwrap().len() == 1
                })
            })
        })
        .await;
    let listed = tether.nodes().await;
    assert_eq!(listed["ironic"]["state"], "ok", "{listed:#}");

    // The simulated agent of node 0 finds its node by MAC and gets its token.
    let (found, token) = tether.lookup(&m[0]).await;
    assert_eq!(found, nodes[0]);
    assert_eq!(token.len(), 64, "issued in clear the first time");

    // A port added and a rename in Ironic follow.
    ironic.add_port(nodes[1], &m[3]).await;
    let renamed = format!("renamed-{suffix}");
    ironic.rename(nodes[2], &renamed).await;
    tether
        .wait_nodes("the port and the name followed", |list| {
            let all = list["nodes"].as_array().unwrap();
            let by = |u: Uuid| all.iter().find(|n| n["uuid"] == u.to_string()).unwrap();
            by(nodes[1])["addresses"].as_array().unwrap().len() == 2
                && name_of(by(nodes[2])) == renamed
        })
        .await;
    let (by_new_port, token1) = tether.lookup(&m[3]).await;
    assert_eq!(by_new_port, nodes[1]);

    // The agent's IQN becomes the node's Ironic volume connector.
    let iqn = format!("iqn.2004-10.com.example:tether-{suffix}");
    tether.heartbeat(nodes[0], &token, &iqn, json!([])).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ironic.connectors(nodes[0]).await != [("iqn".to_string(), iqn.clone())] {
        assert!(Instant::now() < deadline, "no connector in Ironic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A node whose Ironic connector differs: warned about, left alone.
    let theirs = format!("iqn.2004-10.com.example:operator-{suffix}");
    ironic.create_connector(nodes[1], "iqn", &theirs).await;
    let reported = format!("iqn.2004-10.com.example:agent-{suffix}");
    tether
        .heartbeat(nodes[1], &token1, &reported, json!([]))
        .await;
    let list = tether
        .wait_nodes("a warning for the differing connector", |list| {
            list["nodes"].as_array().unwrap().iter().any(|n| {
                n["uuid"] == nodes[1].to_string()
                    && n["warning"].as_str().is_some_and(|w| w.contains(&theirs))
            })
        })
        .await;
    assert_eq!(ironic.connectors(nodes[1]).await, [("iqn".into(), theirs)]);
    drop(list);

    // A synced node's addresses are Ironic's; a manual node's stay the operator's.
    let (status, body) = tether
        .admin(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{}", nodes[0]),
            json!({"addresses": [m[4]]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (409, Some("node_synced"))
    );
    let (status, body) = tether
        .admin(
            reqwest::Method::DELETE,
            &format!("/v1/nodes/{}", nodes[0]),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (409, Some("node_synced"))
    );
    let manual = format!("manual-{suffix}");
    let (status, body) = tether
        .admin(
            reqwest::Method::POST,
            "/v1/nodes",
            json!({"name": manual, "addresses": [m[4]]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let manual_uuid: Uuid = body["uuid"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (found, _) = tether.lookup(&m[4]).await;
    assert_eq!(found, manual_uuid, "a manual node survives the sync passes");
    let kept = tether.node(manual_uuid).await.unwrap();
    assert_eq!(kept["source"], "manual");

    let log = conductor.stop();
    assert!(!log.contains(&token), "the agent token reached the log");
    for node in nodes {
        ironic.delete_node(node).await;
    }
}

#[tokio::test]
#[ignore = "needs a real Ironic: scripts/test-ironic"]
async fn a_node_deleted_in_ironic_with_a_volume_is_detached_first_then_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ironic = Ironic::new();
    let m = macs(2, 1);
    let node = ironic
        .create_node(&format!("leaving-{}", std::process::id()), &m)
        .await;
    let conductor = conductor(dir.path(), "leave", "");
    let tether = Tether::new(&conductor.url).await;
    tether
        .wait_nodes("the node synced", |l| {
            l["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["uuid"] == node.to_string())
        })
        .await;
    let (_, token) = tether.lookup(&m[0]).await;
    let target = tether.assign(node, "vol-leaving").await;
    let iqn = "iqn.2004-10.com.example:leaving";
    tether
        .heartbeat(node, &token, iqn, attached(target, "vol-leaving"))
        .await;

    ironic.delete_node(node).await;
    // Leaving: the target is unassigned, the node stays while its agent still has the volume.
    tether
        .wait_nodes("the node leaving", |l| {
            l["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["uuid"] == node.to_string() && n["leaving"] == true)
        })
        .await;
    assert!(tether.targets(node, &token).await.is_empty());
    let detaching = json!([{"target_uuid": target, "volume_id": "vol-leaving",
        "volume_type": "iscsi", "state": "detaching", "since": "2026-01-01T00:00:00Z"}]);
    tether.heartbeat(node, &token, iqn, detaching).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tether.node(node).await.is_some(),
        "gone before the agent detached the volume"
    );
    // Detached: the node goes.
    tether.heartbeat(node, &token, iqn, json!([])).await;
    tether
        .wait_nodes("the node gone", |l| {
            !l["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["uuid"] == node.to_string())
        })
        .await;
    conductor.stop();
}

#[tokio::test]
#[ignore = "needs a real Ironic: scripts/test-ironic"]
async fn ironic_stopped_for_a_minute_loses_no_node_and_detaches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ironic = Ironic::new();
    let m = macs(3, 2);
    let suffix = std::process::id();
    let mut nodes = Vec::new();
    for (i, mac) in m.iter().enumerate() {
        let name = format!("outage-{i}-{suffix}");
        nodes.push(ironic.create_node(&name, std::slice::from_ref(mac)).await);
    }
    let conductor = conductor(dir.path(), "outage", "timeout_s = 5\n");
    let tether = Tether::new(&conductor.url).await;
    tether
        .wait_nodes("the nodes synced", |l| {
            nodes.iter().all(|u| {
                l["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["uuid"] == u.to_string())
            })
        })
        .await;
    let (_, token) = tether.lookup(&m[0]).await;
    let target = tether.assign(nodes[0], "vol-outage").await;

    control("stop");
    let stopped = Instant::now();
    let list = tether
        .wait_nodes("the outage visible", |l| l["ironic"]["state"] == "failing")
        .await;
    assert_eq!(
        list["ironic"]["last_error"]["kind"], "ironic_unreachable",
        "{list:#}"
    );
    let metrics = tether.metrics().await;
    assert!(
        metrics.contains("tether_conductor_ironic_sync_up 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_conductor_ironic_sync_error{kind=\"ironic_unreachable\"} 1"),
        "{metrics}"
    );
    while stopped.elapsed() < Duration::from_secs(60) {
        // The agent keeps its token and its volume throughout.
        let targets = tether.targets(nodes[0], &token).await;
        assert_eq!(
            targets.len(),
            1,
            "a volume was unassigned during the outage"
        );
        tether
            .heartbeat(
                nodes[0],
                &token,
                "iqn.2004-10.com.example:outage",
                attached(target, "v"),
            )
            .await;
        for u in &nodes {
            assert!(
                tether.node(*u).await.is_some(),
                "node {u} lost during the outage"
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    control("start");
    let list = tether
        .wait_nodes("the sync resumed", |l| l["ironic"]["state"] == "ok")
        .await;
    assert!(list["ironic"].get("last_error").is_none(), "{list:#}");
    assert_eq!(tether.targets(nodes[0], &token).await.len(), 1);
    let log = conductor.stop();
    assert!(log.contains("Ironic sync resumed"), "{log}");
    for node in nodes {
        ironic.delete_node(node).await;
    }
}

/// 1,000 nodes with a port each (TETHER_IRONIC_BENCH_NODES to change it): how long the first
/// pass takes, and the conductor's memory after it. Printed as one `ironic-bench:` line.
#[tokio::test]
#[ignore = "needs a real Ironic: scripts/test-ironic"]
async fn a_thousand_nodes_sync_in_pages() {
    let count: usize = std::env::var("TETHER_IRONIC_BENCH_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let ironic = std::sync::Arc::new(Ironic::new());
    let m = macs(4, count);
    let suffix = std::process::id();
    let enrolled = Instant::now();
    let mut nodes = Vec::new();
    // Eight at a time: Ironic's API answers each in about 40 ms.
    for chunk in m.chunks(8) {
        let mut tasks = Vec::new();
        for mac in chunk {
            let ironic = ironic.clone();
            let mac = mac.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("bench-{}-{suffix}", mac.replace(':', ""));
                ironic.create_node(&name, &[mac]).await
            }));
        }
        for t in tasks {
            nodes.push(t.await.unwrap());
        }
    }
    let enrolled = enrolled.elapsed();

    let started = Instant::now();
    let conductor = conductor(dir.path(), "bench", "page_size = 200\n");
    let tether = Tether::new(&conductor.url).await;
    let wanted: std::collections::HashSet<String> = nodes.iter().map(|u| u.to_string()).collect();
    let list = tether
        .wait_nodes("every node synced", |l| {
            l["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| wanted.contains(n["uuid"].as_str().unwrap()))
                .filter(|n| n["addresses"].as_array().unwrap().len() == 1)
                .count()
                == count
        })
        .await;
    let synced = started.elapsed();
    assert_eq!(list["ironic"]["state"], "ok");
    let metrics = tether.metrics().await;
    let pass_s: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tether_conductor_ironic_sync_duration_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sync duration: {metrics}"));
    // A pass with nothing to change, for the steady-state cost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = tether.metrics().await;
    let steady_s: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tether_conductor_ironic_sync_duration_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let rss = conductor.rss_kib();
    println!(
        "ironic-bench: nodes={count} enroll_in_ironic_s={:.1} first_sync_from_start_s={:.2} \
         first_pass_s={pass_s:.2} steady_pass_s={steady_s:.2} conductor_rss_mib={:.1}",
        enrolled.as_secs_f64(),
        synced.as_secs_f64(),
        rss as f64 / 1024.0
    );
    conductor.stop();
    for chunk in nodes.chunks(8) {
        let mut tasks = Vec::new();
        for node in chunk {
            let (ironic, node) = (ironic.clone(), *node);
            tasks.push(tokio::spawn(async move { ironic.delete_node(node).await }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
