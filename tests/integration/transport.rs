//! The conductor's transport: HTTPS with a certificate that can be renewed in place, and a
//! server that slow or idle clients cannot stall.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Conductor, conductor_config, http, pki};
use tether::config::ConductorConfig;

/// Waits until the server closes `stream`; returns how long that took, or None if it did not
/// within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let deadline = started + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn the_conductor_is_reached_only_through_tls_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let url = conductor.url();
    assert!(url.starts_with("https://"), "{url}");
    let ok = http().get(format!("{url}/v1")).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let refused = untrusting.get(format!("{url}/v1")).send().await;
    assert!(refused.is_err(), "a client without the CA must not connect");

    let plain = format!("http://{}/v1", conductor.addr);
    let answered = reqwest::get(&plain).await.map(|r| r.status());
    assert!(
        !matches!(answered, Ok(s) if s.is_success()),
        "plain HTTP to the TLS port was answered: {answered:?}"
    );
}

/// A second CA and a certificate it signed for 127.0.0.1.
fn other_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("tls.pem");
    let key_file = dir.path().join("tls.key");
    std::fs::copy(&pki().cert_file, &cert_file).unwrap();
    std::fs::copy(&pki().key_file, &key_file).unwrap();
    let conductor = Conductor::start_with(
        dir.path(),
        ConductorConfig {
            tls_cert_file: Some(cert_file.clone()),
            tls_key_file: Some(key_file.clone()),
            ..conductor_config(dir.path())
        },
    )
    .await;
    let url = format!("{}/v1", conductor.url());
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);

    let (new_ca, new_cert, new_key) = other_pki();
    // A torn write (the key not yet there) must not stop the old certificate being served.
    std::fs::write(&cert_file, &new_cert).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);

    std::fs::write(&key_file, &new_key).unwrap();
    let trusting_new = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(new_ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(resp) = trusting_new.get(&url).send().await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        http().get(&url).send().await.is_err(),
        "the old certificate is still served"
    );
}

#[tokio::test]
async fn half_sent_and_idle_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start_exactly(
        dir.path(),
        ConductorConfig {
            header_timeout_s: 1,
            ..conductor_config(dir.path())
        },
    )
    .await;
    let mut half_sent = TcpStream::connect(conductor.addr).await.unwrap();
    half_sent
        .write_all(b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let took = closed_within(&mut half_sent, Duration::from_secs(5)).await;
    assert!(took.is_some(), "a half-sent request held its connection");

    // One full request, then nothing: the keep-alive connection is closed too.
    let mut idle = TcpStream::connect(conductor.addr).await.unwrap();
    idle.write_all(b"GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(took.is_some(), "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn idle_sockets_cannot_crowd_out_real_requests() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start_with(
        dir.path(),
        ConductorConfig {
            header_timeout_s: 1,
            max_connections_per_address: 50,
            ..conductor_config(dir.path())
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(conductor.addr).await.unwrap());
    }
    // Past the cap, new sockets from this address are closed at once.
    let mut extra = TcpStream::connect(conductor.addr).await.unwrap();
    let refused = closed_within(&mut extra, Duration::from_millis(500)).await;
    assert!(
        refused.is_some(),
        "a connection past the per-address cap was kept"
    );

    // The idle ones go after the header timeout, and requests are served again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let resp = http()
        .get(format!("{}/v1", conductor.url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
}

#[tokio::test]
async fn a_half_sent_request_cannot_hold_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut conductor = Conductor::start_exactly(
        dir.path(),
        ConductorConfig {
            header_timeout_s: 30,
            shutdown_timeout_s: 2,
            ..conductor_config(dir.path())
        },
    )
    .await;
    let mut half_sent = TcpStream::connect(conductor.addr).await.unwrap();
    half_sent
        .write_all(b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    conductor.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with a half-sent request open"
    );
}
