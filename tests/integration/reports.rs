//! Reports and volume ids from elsewhere: checked on arrival, never raw in a log.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Conductor, Operator, all_logs, iscsi_props};

const PORTAL: &str = "192.0.2.10:3260";
const IQN: &str = "iqn.2003-01.org.linux-iscsi.array:reports";
/// Sets the terminal's title, returns to the start of the line and forges a log line.
const FORGE: &str = "\x1b]0;pwned\x07\r\n2026-11-26T01:52:37Z ERROR forged line";

/// A conductor, one node with one target, and the node's agent token.
struct Reporter {
    _dir: tempfile::TempDir,
    _conductor: Conductor,
    url: String,
    op: Operator,
    node: Uuid,
    target: Uuid,
    token: String,
}

impl Reporter {
    async fn start(mac: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conductor = Conductor::start(dir.path(), true).await;
        let url = conductor.url();
        let op = Operator::new(&url);
        let node = op.create_node(&format!("n-{}", &mac[12..14]), mac).await;
        let target = op
            .assign(
                node,
                "iscsi",
                "vol-1",
                iscsi_props(PORTAL, IQN, 0),
                json!({}),
            )
            .await;
        let lookup = crate::harness::lookup(&url, mac).await;
        Self {
            _dir: dir,
            _conductor: conductor,
            url,
            op,
            node,
            target,
            token: lookup.config.agent_token,
        }
    }

    async fn heartbeat(&self, volumes: Value) -> (u16, Value) {
        let resp = crate::harness::http()
            .post(format!("{}/v1/heartbeat/{}", self.url, self.node))
            .bearer_auth(&self.token)
            .json(&json!({"agent_version": "0.1.0", "generation": 1, "volumes": volumes}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn volume(target: Uuid, volume_id: &str, message: &str) -> Value {
    json!({"target_uuid": target, "volume_id": volume_id, "volume_type": "iscsi",
           "state": "failed", "error": {"kind": "login_failed", "message": message},
           "since": "2026-11-26T01:52:37Z"})
}

fn assert_no_raw_controls(text: &str, place: &str) {
    let raw = text.chars().find(|&c| c.is_control() && c != '\n');
    assert_eq!(raw, None, "a raw control character reached {place}");
    assert!(!text.contains("\nforged") && !text.contains("\n2026-11-26T01:52:37Z ERROR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_with_control_characters_or_overlong_fields_are_refused() {
    let r = Reporter::start("52:54:00:00:07:01").await;
    let forged = [
        volume(r.target, &format!("vol-1{FORGE}"), "login failed"),
        volume(r.target, "vol-1", &format!("login failed{FORGE}")),
        volume(r.target, &"v".repeat(600), "login failed"),
    ];
    for (i, v) in forged.into_iter().enumerate() {
        let (status, body) = r.heartbeat(json!([v])).await;
        assert_eq!(status, 400, "case {i}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_report", "case {i}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("volumes[0]."),
            "the field is named: {message}"
        );
        assert_no_raw_controls(message, "the error message");
    }
    let mut many = Vec::new();
    many.resize(1025, volume(r.target, "vol-1", "x"));
    let (status, body) = r.heartbeat(Value::Array(many)).await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (400, Some("invalid_report"))
    );
    assert!(
        r.op.status(r.node).await.report.is_none(),
        "nothing of a refused report is kept"
    );
    let logs = all_logs();
    assert!(
        logs.contains("refused a malformed report"),
        "refusals are logged"
    );
    assert_no_raw_controls(&logs, "the conductor's log");

    let (status, body) = r.heartbeat(json!([volume(r.target, "vol-1", "ok")])).await;
    assert_eq!(status, 202, "{body}");
    let status = r.op.status(r.node).await;
    assert_eq!(status.report.unwrap().volumes.len(), 1);
    assert!(
        status.unknown_targets.is_empty(),
        "the target is the node's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_targets_are_kept_flagged_and_logged_once() {
    let r = Reporter::start("52:54:00:00:07:02").await;
    let stranger = Uuid::new_v4();
    let both = json!([
        volume(r.target, "vol-1", "attached"),
        volume(stranger, "vol-stranger", "attached")
    ]);
    for _ in 0..3 {
        let (status, body) = r.heartbeat(both.clone()).await;
        assert_eq!(status, 202, "{body}");
    }
    let status = r.op.status(r.node).await;
    assert_eq!(status.report.as_ref().unwrap().volumes.len(), 2, "kept");
    assert_eq!(status.unknown_targets, vec![stranger], "flagged");
    let logged = |uuid: Uuid| {
        all_logs()
            .lines()
            .filter(|l| l.contains("reports a target it does not have"))
            .filter(|l| l.contains(&uuid.to_string()))
            .count()
    };
    assert_eq!(logged(stranger), 1, "logged once, not on every heartbeat");

    // The usual way a target becomes unknown: it is deleted while the agent still has it.
    r.op.unassign(r.target).await;
    let (status, body) = r.heartbeat(both.clone()).await;
    assert_eq!(status, 202, "a detach in progress is never refused: {body}");
    let mut unknown = r.op.status(r.node).await.unknown_targets;
    unknown.sort();
    let mut expected = vec![r.target, stranger];
    expected.sort();
    assert_eq!(unknown, expected);
    assert_eq!(
        logged(r.target),
        0,
        "a target the last report had is not news"
    );
    assert_eq!(logged(stranger), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_ids_are_checked_at_creation_even_without_target_validation() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), false).await;
    let op = Operator::new(&conductor.url());
    let node = op.create_node("n-ids", "52:54:00:00:07:03").await;
    for bad in [
        String::new(),
        "v".repeat(600),
        format!("vol{FORGE}"),
        "vol 1".into(),
        "-vol".into(),
    ] {
        let (status, body) = op
            .request(
                reqwest::Method::POST,
                "/v1/volume/targets",
                Some(
                    json!({"node_uuid": node, "volume_type": "iscsi", "volume_id": bad,
                            "properties": iscsi_props(PORTAL, IQN, 0)}),
                ),
            )
            .await;
        assert_eq!(
            (status, body["error"]["kind"].as_str()),
            (400, Some("invalid_volume_id")),
            "{bad:?}: {body}"
        );
        assert_no_raw_controls(body["error"]["message"].as_str().unwrap(), "the answer");
    }
    assert_no_raw_controls(&all_logs(), "the conductor's log");
    op.assign(
        node,
        "iscsi",
        "5d2e3f40-1a2b-4c3d-8e9f-a0b1c2d3e4f5",
        iscsi_props(PORTAL, IQN, 0),
        json!({}),
    )
    .await;
}
