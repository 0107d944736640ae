//! The conductor's whole request path, without a socket: every endpoint's query and body parsed
//! by its extractors and checked by its handler, over a fresh in-memory database for each input
//! (`conductor::in_memory_router`). No request gets a 5xx, every error has the documented body,
//! and no answer shows a secret or token that it should not.
//!
//! Input: requests separated by lines `%%`, each a line `METHOD PATH [AUTH]` and then its body;
//! AUTH is `admin`, `agent` (the node's token) or a token of its own, and `{node}` and
//! `{target}` stand for the uuids of a node and of its target made before the requests. An
//! input starting with `!` runs the conductor with `validate_targets = false`.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tether::config::ConductorConfig;
use tether::protocol::secret::is_secret_property;
use tether::protocol::{ErrorBody, MASK};
use tower::ServiceExt;

const ADMIN: &str = "fuzz-admin-token-5f0c2a9e8d7b6a5f4e3d2c1b0a9f8e7d";
const NODE: &str = "5e1ec7ed-0000-4000-8000-00000000f001";
const TARGET: &str = "7a76e700-0000-4000-8000-00000000f002";
const AGENT_TOKEN: &str = "fuzz-agent-token-a1b2c3d4e5f6a7b8";
const CHAP_SECRET: &str = "fuzz-chap-secret-9z8y7x6w";
const MAX_REQUESTS: usize = 16;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn send(app: &Router, method: Method, uri: Uri, auth: Option<&str>, body: &str) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = auth {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut request = request.body(Body::from(body.to_string())).unwrap();
    let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Every value under a secret's name in operator reads of targets is masked.
fn masked_everywhere(value: &Value, what: &str) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if is_secret_property(key) {
                    assert!(inner.is_null() || inner == MASK, "{what}: {key} = {inner}");
                } else {
                    masked_everywhere(inner, what);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| masked_everywhere(v, what)),
        _ => {}
    }
}

fn check(method: &Method, path: &str, answer: &Answer, request: &str) {
    let what = format!("{method} {path} -> {}: {request:?}", answer.status);
    let body = String::from_utf8_lossy(&answer.body);
    assert!(!answer.status.is_server_error(), "{what}\n{body}");
    assert_eq!(
        answer
            .headers
            .get("tether-protocol-version")
            .map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{what}"
    );
    if *method == Method::HEAD {
        // An answer to HEAD has no body.
    } else if !answer.status.is_success() {
        let error: ErrorBody = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{what}: the error body does not parse ({e}): {body}"));
        let kind = &error.error.kind;
        assert!(
            !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{what}: kind {kind:?}"
        );
        if answer.status == StatusCode::UNAUTHORIZED {
            assert!(
                answer.headers.contains_key(header::WWW_AUTHENTICATE),
                "{what}"
            );
        }
    } else if !answer.body.is_empty() && path != "/metrics" {
        let value: Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{what}: the answer is not JSON ({e}): {body}"));
        if path.starts_with("/v1/volume/targets") {
            masked_everywhere(&value, &what);
        }
    }
    // The agent reads its own targets' secrets; no other answer shows a secret or token.
    let own_targets = path.starts_with(&format!("/v1/nodes/{NODE}/volume/targets"));
    for secret in [ADMIN, AGENT_TOKEN]
        .into_iter()
        .chain((!own_targets).then_some(CHAP_SECRET))
    {
        assert!(
            !body.contains(secret),
            "{what}: the answer shows a secret: {body}"
        );
    }
}

async fn run(text: &str) {
    let (validate_targets, text) = match text.strip_prefix('!') {
        Some(rest) => (false, rest),
        None => (true, text),
    };
    let config = ConductorConfig {
        max_wait_s: 0,
        rate_limit_per_minute: 0,
        validate_targets,
        ..ConductorConfig::default()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let app = tether::conductor::in_memory_router(&config, ADMIN, stopped).unwrap();

    let node = json!({
        "name": "fuzz-node", "uuid": NODE, "addresses": ["52:54:00:12:34:56"],
        "agent_token": AGENT_TOKEN,
    });
    let target = json!({
        "node_uuid": NODE, "uuid": TARGET, "volume_type": "iscsi", "volume_id": "vol-fuzz",
        "properties": {
            "target_portal": "192.0.2.10:3260", "target_iqn": "iqn.2003-01.org.example:fuzz",
            "target_lun": 0, "auth_method": "CHAP", "auth_username": "fuzz-user",
            "auth_password": CHAP_SECRET,
        },
    });
    for (path, body) in [("/v1/nodes", node), ("/v1/volume/targets", target)] {
        let uri = Uri::from_static(path);
        let made = send(&app, Method::POST, uri, Some(ADMIN), &body.to_string()).await;
        assert_eq!(made.status, StatusCode::CREATED, "setup {path}");
    }

    let requests = text.split("\n%%\n").take(MAX_REQUESTS);
    for request in requests.chain(["GET /v1/nodes/{node}/volume/status admin\n"]) {
        let request = request.replace("{node}", NODE).replace("{target}", TARGET);
        let (head, body) = request.split_once('\n').unwrap_or((&request, ""));
        let mut words = head.split(' ');
        let (Some(method), Some(path)) = (words.next(), words.next()) else {
            continue;
        };
        let auth = match words.next() {
            None => None,
            Some("admin") => Some(ADMIN),
            Some("agent") => Some(AGENT_TOKEN),
            Some(token) => Some(token),
        };
        // What hyper would refuse never reaches the router.
        let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), path.parse::<Uri>())
        else {
            continue;
        };
        let bearer = auth.map(|token| format!("Bearer {token}"));
        if uri.scheme().is_some()
            || !path.starts_with('/')
            || bearer.is_some_and(|b| HeaderValue::from_str(&b).is_err())
        {
            continue;
        }
        let answer = send(&app, method.clone(), uri, auth, body).await;
        check(&method, path, &answer, &request);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    runtime().block_on(run(&text));
});
