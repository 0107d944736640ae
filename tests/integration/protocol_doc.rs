//! docs/protocol.md is the contract: every example in it parses as the type it names.

use serde::de::DeserializeOwned;
use tether::protocol::*;

fn examples() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) if info.starts_with("json ") => {
                current = Some((info["json ".len()..].trim().to_string(), String::new()));
            }
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    out
}

fn check<T: DeserializeOwned>(name: &str, body: &str) -> T {
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the {name} example in docs/protocol.md does not parse: {e}"))
}

#[test]
fn every_example_parses_as_its_type() {
    let examples = examples();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "ErrorBody",
        "LookupResponse",
        "TargetsResponse",
        "Heartbeat",
        "NodeCreate",
        "Node",
        "NodeUpdate",
        "NodeList",
        "ConnectorCreate",
        "TargetCreate",
        "TargetResize",
        "VolumeTarget",
        "NodeStatus",
        "VolumeAttach",
        "CinderVolume",
    ] {
        assert!(
            names.contains(&expected),
            "docs/protocol.md has no {expected} example"
        );
    }
    for (name, body) in &examples {
        match name.as_str() {
            "ErrorBody" => drop(check::<ErrorBody>(name, body)),
            "LookupResponse" => drop(check::<LookupResponse>(name, body)),
            "TargetsResponse" => {
                let r: TargetsResponse = check(name, body);
                for t in &r.targets {
                    target::parse(t).unwrap_or_else(|e| panic!("example target is invalid: {e}"));
                }
            }
            "Heartbeat" => {
                let h: Heartbeat = check(name, body);
                report::checked(h).unwrap_or_else(|e| panic!("example report is refused: {e}"));
            }
            "NodeCreate" => drop(check::<NodeCreate>(name, body)),
            "Node" => drop(check::<Node>(name, body)),
            "NodeUpdate" => drop(check::<NodeUpdate>(name, body)),
            "NodeList" => {
                let list: NodeList = check(name, body);
                assert_eq!(list.nodes[0].source, NodeSource::Ironic);
                assert_eq!(list.ironic.unwrap().state, "failing");
            }
            "ConnectorCreate" => drop(check::<ConnectorCreate>(name, body)),
            "TargetCreate" => {
                let t: TargetCreate = check(name, body);
                let wire = t.target(uuid::Uuid::nil());
                target::parse(&wire).unwrap_or_else(|e| panic!("example target is invalid: {e}"));
            }
            "TargetResize" => drop(check::<TargetResize>(name, body)),
            "VolumeTarget" => {
                let t: VolumeTarget = check(name, body);
                assert_eq!(
                    t.properties["auth_key"], MASK,
                    "operators read secrets masked"
                );
            }
            "NodeStatus" => drop(check::<NodeStatus>(name, body)),
            "VolumeAttach" => drop(check::<tether::protocol::cinder::VolumeAttach>(name, body)),
            "CinderVolume" => drop(check::<tether::protocol::cinder::CinderVolume>(name, body)),
            other => panic!("docs/protocol.md names an unknown type {other}"),
        }
    }
}

#[test]
fn heartbeat_refuses_unknown_fields_and_responses_tolerate_them() {
    let strict = serde_json::from_str::<Heartbeat>(
        r#"{"agent_version": "1", "generation": 1, "colour": "red"}"#,
    );
    assert!(strict.is_err());
    let tolerant = serde_json::from_str::<TargetsResponse>(
        r#"{"generation": 1, "targets": [], "future": true}"#,
    );
    assert!(tolerant.is_ok());
}
