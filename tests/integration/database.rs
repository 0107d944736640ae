//! The conductor and its database: another process holding the database stalls nothing that
//! does not need it, and what needs it is answered `503 database_busy` within a second or so.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::{Conductor, Operator, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_stalls_nothing_else() {
    if crate::harness::postgres_server().is_some() {
        eprintln!("SQLite's locking: nothing to test on PostgreSQL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), true).await;
    let op = Operator::new(&conductor.url());
    op.create_node("n0", "52:54:00:00:00:01").await;

    // Another process (a backup, sqlite3 by hand) takes the write lock and keeps it.
    let holder = rusqlite::Connection::open(&conductor.config.database).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE nodes SET name = name;")
        .unwrap();

    // Writers pile up, more of them than the runtime has workers.
    let writers: Vec<_> = (1..=6)
        .map(|i| {
            let op = Operator::new(&conductor.url());
            tokio::spawn(async move {
                let body = json!({"name": format!("n{i}"), "addresses": []});
                let started = Instant::now();
                let answer = op.request(Method::POST, "/v1/nodes", Some(body)).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // What needs no database answers at once.
    for _ in 0..3 {
        let started = Instant::now();
        let status = http()
            .get(format!("{}/v1", conductor.url()))
            .send()
            .await
            .unwrap()
            .status();
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(500), "GET /v1 took {took:?}");
    }

    for writer in writers {
        let ((status, body), took) = writer.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["kind"], "database_busy", "{body}");
        // Each waits its turn at the one connection, then 0.5 s for the lock.
        assert!(took < Duration::from_secs(6), "answered after {took:?}");
    }

    holder.execute_batch("ROLLBACK").unwrap();
    op.create_node("n7", "52:54:00:00:00:07").await;
}
