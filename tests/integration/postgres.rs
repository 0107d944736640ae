//! Several conductors on one PostgreSQL database (scripts/test-postgres sets
//! TETHER_TEST_POSTGRES; without it these tests return at once). An assignment made through
//! one conductor reaches the agent long-polling another; the database stopped and started
//! under load loses nothing, the conductors answer `503 database_unavailable` meanwhile and
//! reconnect by themselves.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Conductor, Node, Operator, iscsi_props, postgres_database, postgres_server};
use tether::config::ConductorConfig;
use tether::protocol::VolumeState;

/// Two conductors on one fresh database, each with its own directory.
async fn two_conductors(server: String) -> (tempfile::TempDir, Conductor, Conductor) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("tether_two_{}", uuid::Uuid::new_v4().simple());
    let database = std::path::PathBuf::from(postgres_database(server, name));
    let start = |sub: &str| {
        let path = dir.path().join(sub);
        std::fs::create_dir_all(&path).unwrap();
        let config = ConductorConfig {
            heartbeat_interval_s: 1,
            max_wait_s: 60,
            database: database.clone(),
            ..crate::harness::conductor_config(&path)
        };
        (path, config)
    };
    let (a_dir, a_config) = start("a");
    let (b_dir, b_config) = start("b");
    let a = Conductor::start_with(&a_dir, a_config).await;
    let b = Conductor::start_with(&b_dir, b_config).await;
    (dir, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_through_one_conductor_reaches_an_agent_on_another() {
    let Some(server) = postgres_server() else {
        eprintln!("TETHER_TEST_POSTGRES is not set: skipped");
        return;
    };
    let (_dir, a, b) = two_conductors(server).await;
    let (op_a, op_b) = (Operator::new(&a.url()), Operator::new(&b.url()));
    let mac = "52:54:00:00:16:01";
    let node = op_a.create_node("two-conductors", mac).await;
    let mut agent = Node::new(mac, &b.url());
    agent.start_agent();
    // The agent is long-polling B once it reported (its poll waits 30 s).
    op_b.wait_report(node, "a first report", |s| s.report.is_some())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let target = op_a
        .assign(
            node,
            "iscsi",
            "vol-1",
            iscsi_props("192.0.2.10:3260", "iqn.2003-01.org.example:t1", 1),
            json!({}),
        )
        .await;
    let report = op_b.wait_state(node, target, VolumeState::Attached).await;
    let took = started.elapsed();
    eprintln!("assigned through A, attached by the agent on B in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}: {report:?}");
    agent.stop_agent().await;
}

/// The wake-up alone: a long-poll waiting on B answers as soon as A commits a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_conductor_wakes_for_a_change_through_another() {
    let Some(server) = postgres_server() else {
        eprintln!("TETHER_TEST_POSTGRES is not set: skipped");
        return;
    };
    let (_dir, a, b) = two_conductors(server).await;
    let op_a = Operator::new(&a.url());
    let mac = "52:54:00:00:16:03";
    let node = op_a.create_node("long-poll", mac).await;
    // The token, issued through B (any conductor issues it, once).
    let token = crate::harness::lookup(&b.url(), mac)
        .await
        .config
        .agent_token;
    let mut took = Vec::new();
    for round in 0..5 {
        let targets = format!("{}/v1/nodes/{node}/volume/targets", b.url());
        let http = crate::harness::http();
        let current: serde_json::Value = http
            .get(&targets)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let since = current["generation"].as_u64().unwrap();
        let waiting = tokio::spawn({
            let token = token.clone();
            async move {
                let answer: serde_json::Value = http
                    .get(format!("{targets}?since={since}&wait=30"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (Instant::now(), answer)
            }
        });
        // Let the request reach its wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        op_a.assign(
            node,
            "iscsi",
            &format!("vol-{round}"),
            iscsi_props("192.0.2.10:3260", "iqn.2003-01.org.example:t1", 1),
            json!({}),
        )
        .await;
        let (answered, body) = waiting.await.unwrap();
        assert!(body["generation"].as_u64().unwrap() > since, "{body}");
        took.push(answered - started);
    }
    took.sort();
    eprintln!("assignment through A to the long-poll on B: {took:?}");
    assert!(took[took.len() - 1] < Duration::from_secs(2), "{took:?}");
}

/// Stops and starts the shared server: run alone (scripts/test-postgres runs it after the
/// suite, with TETHER_TEST_POSTGRES_CTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the PostgreSQL server the other tests use; scripts/test-postgres runs it alone"]
async fn the_database_restarted_under_load_loses_nothing() {
    let (Some(server), Ok(ctl)) = (postgres_server(), std::env::var("TETHER_TEST_POSTGRES_CTL"))
    else {
        eprintln!("TETHER_TEST_POSTGRES or TETHER_TEST_POSTGRES_CTL is not set: skipped");
        return;
    };
    let (_dir, a, b) = two_conductors(server).await;
    let (op_a, op_b) = (Operator::new(&a.url()), Operator::new(&b.url()));
    let mac = "52:54:00:00:16:02";
    let node = op_a.create_node("restarted", mac).await;
    let mut agent = Node::new(mac, &b.url());
    agent.start_agent();
    let before = op_a
        .assign(
            node,
            "iscsi",
            "vol-before",
            iscsi_props("192.0.2.10:3260", "iqn.2003-01.org.example:t1", 1),
            json!({}),
        )
        .await;
    op_b.wait_state(node, before, VolumeState::Attached).await;

    // Load: operators reading through both conductors the whole time.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = [a.url(), b.url()]
        .into_iter()
        .map(|url| {
            let stop = stop_load.clone();
            tokio::spawn(async move {
                let op = Operator::new(&url);
                let mut answers = std::collections::BTreeMap::<String, u32>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, body) = op.request(reqwest::Method::GET, "/v1/nodes", None).await;
                    let took = started.elapsed();
                    assert!(took < Duration::from_secs(12), "a request hung {took:?}");
                    let kind = match status {
                        200 => "ok".to_string(),
                        _ => format!("{status} {}", body["error"]["kind"]),
                    };
                    *answers.entry(kind).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answers
            })
        })
        .collect();

    let pg_ctl = |action: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{ctl} {action}"))
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg_ctl("-m fast stop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg_ctl("start");

    // Both conductors serve again by themselves.
    let deadline = Instant::now() + Duration::from_secs(30);
    for op in [&op_a, &op_b] {
        loop {
            let (status, _) = op.request(reqwest::Method::GET, "/v1/nodes", None).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "a conductor did not reconnect");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // At once: B's listener may still be reconnecting; its catch-up read must not miss this.
    let after = op_a
        .assign(
            node,
            "iscsi",
            "vol-after",
            iscsi_props("192.0.2.10:3260", "iqn.2003-01.org.example:t2", 1),
            json!({}),
        )
        .await;
    let started = Instant::now();
    op_b.wait_state(node, after, VolumeState::Attached).await;
    eprintln!(
        "after the restart, attached through B in {:?}",
        started.elapsed()
    );
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeMap::new();
    for task in load {
        for (kind, n) in task.await.unwrap() {
            *seen.entry(kind).or_insert(0) += n;
        }
    }
    eprintln!("answers during the test: {seen:?}");
    for kind in seen.keys() {
        assert!(
            kind == "ok" || kind == "503 \"database_unavailable\"",
            "unexpected answer {kind}: {seen:?}"
        );
    }
    assert!(
        seen.contains_key("503 \"database_unavailable\""),
        "the outage was seen: {seen:?}"
    );
    // Nothing lost: both targets are there, both attached.
    let status = op_b.status(node).await;
    let report = status.report.unwrap();
    for target in [before, after] {
        assert!(
            report.volumes.iter().any(|v| v.target_uuid == target),
            "{target} in {report:?}"
        );
    }
    agent.stop_agent().await;
}

/// `tether conductor migrate`: a SQLite conductor's nodes, targets, tokens and generations
/// carried into PostgreSQL; the password from `conductor.database_password_file`; a database
/// that already holds nodes refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_conductor_migrates_to_postgres() {
    let Some(server) = postgres_server() else {
        eprintln!("TETHER_TEST_POSTGRES is not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("old.db");
    let mac = "52:54:00:00:16:04";
    let mut old = Conductor::start_with(
        dir.path(),
        ConductorConfig {
            database: sqlite.clone(),
            ..crate::harness::conductor_config(dir.path())
        },
    )
    .await;
    let op = Operator::new(&old.url());
    let node = op.create_node("moved", mac).await;
    let target = op
        .assign(
            node,
            "iscsi",
            "vol-1",
            iscsi_props("192.0.2.10:3260", "iqn.2003-01.org.example:t1", 1),
            json!({}),
        )
        .await;
    let token = crate::harness::lookup(&old.url(), mac)
        .await
        .config
        .agent_token;
    let generation = op.status(node).await.generation;
    old.stop().await;

    // The URL without its password; the password in a file of the conductor's.
    let name = format!("tether_moved_{}", uuid::Uuid::new_v4().simple());
    let url = postgres_database(server, name);
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user_info, host) = rest.split_once('@').unwrap();
    let (user, password) = user_info.split_once(':').unwrap();
    let password_file = dir.path().join("db-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bare = format!("{scheme}://{user}@{host}");
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            "[conductor]\ndatabase = \"{bare}\"\ndatabase_password_file = \"{}\"\n",
            password_file.display()
        ),
    )
    .unwrap();
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("--config")
            .arg(&config)
            .args(["conductor", "migrate", "--from"])
            .arg(&sqlite)
            .output()
            .unwrap()
    };
    let out = migrate();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("nodes: 1 rows") && stdout.contains("targets: 1 rows"),
        "{stdout}"
    );
    assert!(!stdout.contains(password) && !stderr.contains(password));
    let again = migrate();
    assert!(!again.status.success(), "a second copy is refused");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds 1 nodes"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");

    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let new = Conductor::start_with(
        &new_dir,
        ConductorConfig {
            database: bare.into(),
            database_password_file: Some(password_file),
            ..crate::harness::conductor_config(&new_dir)
        },
    )
    .await;
    let op = Operator::new(&new.url());
    let status = op.status(node).await;
    assert_eq!(
        status.generation, generation,
        "the generation the agent saw"
    );
    let targets: serde_json::Value = crate::harness::http()
        .get(format!("{}/v1/nodes/{node}/volume/targets", new.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        targets["targets"][0]["uuid"],
        target.to_string(),
        "{targets}"
    );
    // The next change goes on past every generation copied.
    op.unassign(target).await;
    assert!(op.status(node).await.generation > generation);
}

/// A database URL's password never shows: not in the error of a conductor that cannot reach
/// its database, nor in its log. Needs no server (nothing listens on the port).
#[tokio::test]
async fn a_database_password_stays_out_of_errors_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ConductorConfig {
        database: format!("postgres://tether:pw-never-shown@127.0.0.1:{port}/tether").into(),
        ..crate::harness::conductor_config(dir.path())
    };
    crate::harness::logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tether::conductor::serve(&config, crate::harness::ADMIN, listener, async {})
        .await
        .expect_err("no database there");
    let text = format!("{err:#}");
    assert!(text.contains("tether:***@127.0.0.1"), "{text}");
    assert!(
        text.contains("database_unavailable") || text.contains("unavailable"),
        "{text}"
    );
    assert!(!text.contains("pw-never-shown"), "{text}");
    assert!(!crate::harness::all_logs().contains("pw-never-shown"));
}

/// TLS to the database where the URL asks for it: the database `tether_tls` of the test server
/// takes TLS connections only (scripts/test-postgres); with `sslmode=verify-full` and the
/// server's CA the conductor serves, in clear or with another CA it does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_used_and_verified() {
    let (Some(server), Ok(ca)) = (postgres_server(), std::env::var("TETHER_TEST_POSTGRES_CA"))
    else {
        eprintln!("TETHER_TEST_POSTGRES or TETHER_TEST_POSTGRES_CA is not set: skipped");
        return;
    };
    let url = postgres_database(server, "tether_tls".into());
    let wrong_ca = crate::harness::pki().ca_file.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let start = |query: String| {
        let config = ConductorConfig {
            database: format!("{url}{query}").into(),
            ..crate::harness::conductor_config(dir.path())
        };
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tether::conductor::serve(&config, crate::harness::ADMIN, listener, async {}).await
        }
    };
    start(format!("?sslmode=verify-full&sslrootcert={ca}"))
        .await
        .expect("TLS with the server's CA");
    let clear = start(String::new()).await.expect_err("in clear");
    eprintln!("in clear: {clear:#}");
    let wrong = start(format!("?sslmode=verify-full&sslrootcert={wrong_ca}"))
        .await
        .expect_err("another CA");
    eprintln!("another CA: {wrong:#}");
    assert!(!format!("{clear:#}{wrong:#}").contains(url.split(['@', ':']).nth(2).unwrap()));
}
