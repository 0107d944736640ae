//! Cinder volumes through the conductor, where no Cinder answers: refusals that assign nothing,
//! and Keystone credentials that never reach an answer, the log or the metrics. (The flow against
//! a real Cinder runs in the VM: tests/vm/openstack/.)

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ADMIN, Conductor, Operator};

const PASSWORD: &str = "keystone-password-never-shown-7f3a";
const APP_SECRET: &str = "app-credential-secret-never-shown-91c2";
const NODE_TOKEN: &str = "node-token-for-the-cinder-tests-0123456789";

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A conductor process with `[cinder]` = `cinder`, its home in `dir` (where osauth finds
/// `.config/openstack/clouds.yaml`), over plain HTTP on loopback.
struct Process {
    child: Child,
    url: String,
}

impl Process {
    fn start(dir: &std::path::Path, cinder: &str) -> Self {
        let port = closed_port();
        let config = dir.join("tether.toml");
        std::fs::write(
            &config,
            format!(
                "[conductor]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{db}\"\n\n{cinder}\n",
                db = crate::harness::database(dir).display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("--config")
            .arg(&config)
            .arg("conductor")
            .env("HOME", dir)
            .env("TETHER_ADMIN_TOKEN", ADMIN)
            .env("TETHER_LOG", "tether=debug")
            .env_remove("OS_CLOUD")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Stops it and returns what it logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        log
    }
}

async fn answering(op: &Operator) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = op.http.get(format!("{}/v1", op.url)).send().await.is_ok();
        if up {
            return;
        }
        assert!(Instant::now() < deadline, "the conductor did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node whose agent has reported once (its connector is known).
async fn reported_node(op: &Operator, name: &str, mac: &str) {
    let (status, body) = op
        .request(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(json!({"name": name, "addresses": [mac], "agent_token": NODE_TOKEN})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let uuid = body["uuid"].as_str().unwrap().to_string();
    let beat = op
        .http
        .post(format!("{}/v1/heartbeat/{uuid}", op.url))
        .bearer_auth(NODE_TOKEN)
        .json(&json!({
            "agent_version": "0.1.0",
            "generation": null,
            "connectors": [{"type": "iqn", "connector_id": "iqn.1993-08.org.debian:01:n1"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status().as_u16(), 202);
}

async fn attach(op: &Operator, node: &str, volume: &str) -> (u16, Value) {
    op.request(
        reqwest::Method::POST,
        &format!("/v1/nodes/{node}/volumes"),
        Some(json!({"volume": volume})),
    )
    .await
}

async fn nothing_assigned(op: &Operator) {
    let (_, targets) = op
        .request(reqwest::Method::GET, "/v1/volume/targets", None)
        .await;
    assert_eq!(targets["targets"], json!([]), "nothing assigned");
    let (_, volumes) = op.request(reqwest::Method::GET, "/v1/volumes", None).await;
    assert_eq!(volumes["volumes"], json!([]), "nothing recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_credentials_never_reach_an_answer_the_log_or_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let keystone = format!("http://127.0.0.1:{}/v3", closed_port());
    let clouds = dir.path().join(".config/openstack");
    std::fs::create_dir_all(&clouds).unwrap();
    std::fs::write(
        clouds.join("clouds.yaml"),
        format!(
            "clouds:
  by-password:
    auth:
      auth_url: {keystone}
      username: tether
      password: {PASSWORD}
      project_name: baremetal
      user_domain_name: Default
      project_domain_name: Default
  by-app:
    auth_type: v3applicationcredential
    auth:
      auth_url: {keystone}
      application_credential_id: 0123abcd
      application_credential_secret: {APP_SECRET}
"
        ),
    )
    .unwrap();
    for cloud in ["by-password", "by-app"] {
        let conductor = Process::start(dir.path(), &format!("[cinder]\ncloud = \"{cloud}\""));
        let op = Operator {
            http: reqwest::Client::new(),
            url: conductor.url.clone(),
        };
        answering(&op).await;
        let node = format!("node-{cloud}");
        reported_node(
            &op,
            &node,
            if cloud == "by-app" {
                "52:54:00:00:07:02"
            } else {
                "52:54:00:00:07:01"
            },
        )
        .await;
        let (status, body) = attach(&op, &node, "db-data").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["kind"], "cinder_unreachable", "{body}");
        let metrics = op
            .http
            .get(format!("{}/metrics", op.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        nothing_assigned(&op).await;
        std::fs::remove_file(dir.path().join("conductor.db")).ok();
        let log = conductor.stop();
        for (what, text) in [
            ("answer", body.to_string()),
            ("log", log.clone()),
            ("metrics", metrics),
        ] {
            for secret in [PASSWORD, APP_SECRET] {
                assert!(
                    !text.contains(secret),
                    "{cloud}: the {what} shows a credential: {text}"
                );
            }
        }
        assert!(
            log.contains("cinder_unreachable") || log.contains("Cinder"),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cinder_or_a_report_an_attach_is_refused_and_nothing_is_assigned() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let op = Operator::new(&conductor.url());
    op.create_node("plain", "52:54:00:00:07:03").await;
    let (status, body) = attach(&op, "plain", "db-data").await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (409, Some("cinder_not_configured")),
        "{body}"
    );
    nothing_assigned(&op).await;

    // With Cinder configured (and not answering): a node that never reported is refused before
    // Cinder is asked anything; one that reported gets `cinder_unreachable`.
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}/v3", closed_port());
    let conductor = Process::start(
        dir.path(),
        &format!(
            "[cinder]\nauth = \"noauth\"\nendpoint = \"{endpoint}\"\n\
             project_id = \"0123456789abcdef0123456789abcdef\""
        ),
    );
    let op = Operator {
        http: reqwest::Client::new(),
        url: conductor.url.clone(),
    };
    answering(&op).await;
    op.create_node("silent", "52:54:00:00:07:04").await;
    let (status, body) = attach(&op, "silent", "db-data").await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (409, Some("node_never_reported")),
        "{body}"
    );
    reported_node(&op, "n1", "52:54:00:00:07:05").await;
    let (status, body) = attach(&op, "n1", "db-data").await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (503, Some("cinder_unreachable")),
        "{body}"
    );
    let (status, body) = op
        .request(
            reqwest::Method::POST,
            "/v1/nodes/n1/volumes",
            Some(json!({"volume": "db-data", "mount": {"path": "/etc/x", "fstype": "ext4"}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("invalid_mount")),
        "{body}"
    );
    let (status, body) = op
        .request(
            reqwest::Method::DELETE,
            "/v1/nodes/n1/volumes/db-data",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    nothing_assigned(&op).await;
    conductor.stop();
}
