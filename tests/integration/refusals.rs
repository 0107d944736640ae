//! What the conductor refuses: weak or exposed admin tokens before it starts.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::ADMIN;
use tether::config::ConductorConfig;

fn write_with_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn config_in(dir: &Path) -> ConductorConfig {
    ConductorConfig {
        listen: "127.0.0.1:0".into(),
        database: dir.join("conductor.db"),
        admin_token_file: dir.join("admin.token"),
        ..ConductorConfig::default()
    }
}

#[test]
fn admin_tokens_shorter_than_32_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let admin_token = tether::conductor::admin_token;

    let err = admin_token(&config, Some("a".into())).unwrap_err().to_string();
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
    let config = config_in(dir.path());
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
    assert_eq!(tether::conductor::admin_token(&config, None).unwrap(), token);
}

#[tokio::test]
async fn a_metrics_token_file_that_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.token");
    write_with_mode(&path, "metrics-token-0123456789abcdef\n", 0o644);
    let config = ConductorConfig {
        metrics_token_file: Some(path),
        ..config_in(dir.path())
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
        .args(["--config", "/dev/null", "conductor", "--listen", "127.0.0.1:0"])
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
