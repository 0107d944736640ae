//! What the conductor refuses, in which order, and in which shape: the token before any parsing,
//! every error as the documented JSON body, weak or exposed admin tokens before it starts.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{ADMIN, Conductor, Operator};
use tether::config::ConductorConfig;
use tether::protocol::{VERSION, VERSION_HEADER};

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: not a JSON body: {text:?}"));
    (status, headers, body)
}

#[tokio::test]
async fn the_token_is_checked_before_the_query_the_path_or_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let node = Operator::new(&url)
        .create_node("n", "52:54:00:00:0a:01")
        .await;
    let http = crate::harness::http();
    let requests = [
        http.get(format!(
            "{url}/v1/nodes/{node}/volume/targets?since=soon&wait=-1"
        )),
        http.get(format!(
            "{url}/v1/nodes/{node}/volume/targets?detail=true&bogus=1"
        )),
        http.get(format!("{url}/v1/nodes/not-a-uuid/volume/targets")),
        http.post(format!("{url}/v1/heartbeat/{node}"))
            .header("content-type", "application/json")
            .body("{not json"),
        http.post(format!("{url}/v1/heartbeat/{node}"))
            .bearer_auth("wrong-token")
            .header("content-type", "application/json")
            .body(r#"{"agent_version": 1, "surprise": true}"#),
        http.post(format!("{url}/v1/heartbeat/not-a-uuid"))
            .body("x"),
        http.get(format!("{url}/v1/nodes/%FF")),
        http.get(format!("{url}/v1/volume/targets?node=n&bogus=1")),
        http.post(format!("{url}/v1/nodes")).body("{not json"),
        http.delete(format!("{url}/v1/volume/targets/not-a-uuid")),
    ];
    for req in requests {
        let described = format!("{req:?}");
        let (status, _, body) = send(req).await;
        assert_eq!(
            (status, body["error"]["kind"].as_str()),
            (401, Some("unauthorized")),
            "{described}: {body}"
        );
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let http = crate::harness::http();
    for (value, expected) in [
        (format!("bearer {ADMIN}"), 200),
        (format!("BEARER {ADMIN}"), 200),
        (format!("Bearer  {ADMIN}"), 200),
        (format!("Basic {ADMIN}"), 401),
        (ADMIN.to_string(), 401),
        ("Bearer".into(), 401),
    ] {
        let resp = http
            .get(format!("{url}/v1/nodes"))
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "{value:?}");
    }
}

#[tokio::test]
async fn errors_the_router_makes_have_the_documented_body() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    let http = crate::harness::http();

    let (status, headers, body) = send(http.post(format!("{url}/v1/lookup"))).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["kind"], "method_not_allowed");
    assert!(headers["allow"].to_str().unwrap().contains("GET"));
    assert_eq!(headers[VERSION_HEADER], VERSION);
    let (status, _, body) = send(http.delete(format!("{url}/v1/nodes")).bearer_auth(ADMIN)).await;
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // A path segment that decodes to bytes that are not UTF-8.
    let (status, _, body) = send(http.get(format!("{url}/v1/nodes/%FF")).bearer_auth(ADMIN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["kind"], "invalid_request");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
}

/// Sends raw bytes and returns the status line of the answer. For what hyper refuses before the
/// router sees the request.
fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_uris_and_headers_and_raw_bytes_are_refused_before_any_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Plain HTTP, to write raw bytes: what the HTTP layer refuses does not depend on TLS.
    let config = crate::harness::conductor_config(dir.path());
    let conductor = Conductor::start_exactly(dir.path(), config).await;
    let addr = conductor.addr;
    let long_uri = format!(
        "GET /v1/lookup?addresses={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    // Past the 64 KiB a head may take, and no end of the head.
    let long_header = format!(
        "GET /v1 HTTP/1.1\r\nhost: x\r\nx-big: {}",
        "a".repeat(420_000)
    );
    let (uri, header, raw_byte) = tokio::task::spawn_blocking(move || {
        (
            raw_status(addr, long_uri.as_bytes()),
            raw_status(addr, long_header.as_bytes()),
            raw_status(addr, b"GET /v1/nodes/\xff HTTP/1.1\r\nhost: x\r\n\r\n"),
        )
    })
    .await
    .unwrap();
    // docs/protocol.md: answered before any endpoint, with the JSON error body.
    assert!(uri.starts_with("HTTP/1.1 414"), "{uri}");
    assert!(header.starts_with("HTTP/1.1 431"), "{header}");
    assert!(raw_byte.starts_with("HTTP/1.1 400"), "{raw_byte}");
}

fn write_with_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn admin_tokens_shorter_than_32_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::harness::conductor_config(dir.path());
    let admin_token = tether::conductor::admin_token;

    let err = admin_token(&config, Some("a".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("TETHER_ADMIN_TOKEN"), "{err}");
    assert!(err.contains("32"), "{err}");
    assert!(admin_token(&config, Some("x".repeat(31))).is_err());
    assert_eq!(
        admin_token(&config, Some("x".repeat(32))).unwrap(),
        "x".repeat(32)
    );

    write_with_mode(&config.admin_token_file, "short-token\n", 0o600);
    let err = admin_token(&config, None).unwrap_err().to_string();
    assert!(err.contains("admin.token"), "{err}");
    assert!(err.contains("32"), "{err}");

    // A token the conductor makes itself is long enough, and private.
    std::fs::remove_file(&config.admin_token_file).unwrap();
    let made = admin_token(&config, None).unwrap();
    assert!(made.len() >= 32);
    let mode = std::fs::metadata(&config.admin_token_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(admin_token(&config, None).unwrap(), made, "read back");
}

#[test]
fn token_files_that_group_or_others_can_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::harness::conductor_config(dir.path());
    let token = "t".repeat(40);
    for mode in [0o644, 0o640, 0o604, 0o660] {
        write_with_mode(&config.admin_token_file, &token, mode);
        let err = tether::conductor::admin_token(&config, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        assert!(err.contains("admin.token"), "{mode:o}: {err}");
    }
    write_with_mode(&config.admin_token_file, &token, 0o400);
    assert_eq!(
        tether::conductor::admin_token(&config, None).unwrap(),
        token
    );
}

#[tokio::test]
async fn a_metrics_token_file_that_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.token");
    write_with_mode(&path, "metrics-token-0123456789abcdef\n", 0o644);
    let config = ConductorConfig {
        metrics_token_file: Some(path),
        ..crate::harness::conductor_config(dir.path())
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = tether::conductor::serve(&config, ADMIN, listener, std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the conductor refused to start")
        .unwrap_err();
    assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
}

#[test]
fn the_conductor_does_not_start_with_a_short_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "--config",
            "/dev/null",
            "conductor",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--database")
        .arg(dir.path().join("c.db"))
        .current_dir(dir.path())
        .env("TETHER_ADMIN_TOKEN", "a")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the conductor started with the admin token \"a\"");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(stderr.contains("TETHER_ADMIN_TOKEN"), "{stderr}");
    assert!(stderr.contains("32"), "{stderr}");
}
