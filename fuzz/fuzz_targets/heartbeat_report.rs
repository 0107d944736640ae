//! A heartbeat's body as the conductor reads it (`POST /v1/heartbeat/{node}`, checked by
//! `protocol::report::checked`) and as the agent prepares it (`make_sendable`): a report the
//! agent made sendable always passes the conductor's checks, and a report that passes holds no
//! control character and survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::protocol::Heartbeat;
use tether::protocol::report::{MAX_VOLUMES, checked, make_sendable};
use tether::protocol::text::is_control;

fuzz_target!(|data: &[u8]| {
    // axum's Json reads the body with serde_json, as here.
    let Ok(report) = serde_json::from_slice::<Heartbeat>(data) else {
        return;
    };
    let mut sendable = report.clone();
    make_sendable(&mut sendable);
    let mut again = sendable.clone();
    make_sendable(&mut again);
    assert_eq!(again, sendable, "make_sendable is not idempotent");
    // The agent never cuts its list of volumes: only its length can be refused.
    if sendable.volumes.len() <= MAX_VOLUMES {
        if let Err(e) = checked(sendable.clone()) {
            panic!("the conductor refuses a report the agent made sendable: {e}");
        }
    }

    match checked(report.clone()) {
        Ok(accepted) => {
            assert_eq!(accepted, report, "checking changed the report");
            assert_eq!(sendable, report, "a valid report was changed to be sent");
            let json = serde_json::to_vec(&accepted).unwrap();
            let back: Heartbeat = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, accepted, "JSON round trip");
            let text = String::from_utf8(json).unwrap();
            assert!(
                !text.chars().any(is_control),
                "a control character in {text:?}"
            );
        }
        Err(e) => {
            assert_eq!(e.kind(), "invalid_report");
            let message = e.to_string();
            assert!(
                !message.chars().any(is_control),
                "the refusal is not printable: {message:?}"
            );
        }
    }
});
