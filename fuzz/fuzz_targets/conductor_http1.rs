//! The conductor's own HTTP/1.1 connection code (src/conductor/http1.rs) under arbitrary bytes
//! from a client, with the real router on an in-memory database behind it: it never panics,
//! and what it writes back starts with a complete HTTP/1.1 response head.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether::config::ConductorConfig;

const ADMIN: &str = "fuzz-admin-token-5f0c2a9e8d7b6a5f4e3d2c1b0a9f8e7d";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

/// What the connection wrote starts with a complete HTTP/1.1 response head whose length, when
/// it gives one, is a number. Later responses are not split apart: after a HEAD request a
/// response keeps the length of the body it does not send, which only the requests tell.
fn check_answer(answer: &[u8]) {
    if answer.is_empty() {
        return;
    }
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("a response without the end of its head: {answer:?}"));
    let head = std::str::from_utf8(&answer[..end]).expect("a response head is ASCII");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(status.starts_with("HTTP/1.1 "), "status line {status:?}");
    let code = status.get(9..12).unwrap_or_default();
    assert!(
        code.bytes().all(|b| b.is_ascii_digit()) && code.len() == 3,
        "status {status:?}"
    );
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if name.eq_ignore_ascii_case("content-length") {
            value
                .trim()
                .parse::<usize>()
                .expect("a numeric Content-Length");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let runtime = runtime();
    let _guard = runtime.enter();
    // No long-poll waits and no rate limit: each input is answered at once.
    let config = ConductorConfig {
        max_wait_s: 0,
        rate_limit_per_minute: 0,
        ..ConductorConfig::default()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let app = tether::conductor::in_memory_router(&config, ADMIN, stopped).unwrap();
    let answer = runtime.block_on(tether::fuzzing::conductor_connection(app, input));
    check_answer(&answer);
});
