//! The store's tests, each run on SQLite and, when TETHER_TEST_POSTGRES names a server (see
//! scripts/test-postgres), on PostgreSQL in a throwaway database of its own.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, params};
use serde_json::{Map, json};
use uuid::Uuid;

use super::*;
use crate::conductor::generations::{Generations, Published};
use crate::protocol::{Heartbeat, Node, NodeCreate, TargetCreate, VolumeState};

/// A store under test, and what to drop when the test is done.
struct TestStore {
    store: Store,
    /// (server URL, database) of a PostgreSQL store.
    database: Option<(String, String)>,
}

impl TestStore {
    fn sqlite() -> Self {
        Self {
            store: Store::open_in_memory().unwrap(),
            database: None,
        }
    }

    /// A fresh database on the server TETHER_TEST_POSTGRES names; `None` without one.
    async fn postgres() -> Option<Self> {
        let Ok(server) = std::env::var("TETHER_TEST_POSTGRES") else {
            eprintln!("TETHER_TEST_POSTGRES is not set: the PostgreSQL run is skipped");
            return None;
        };
        let name = format!("tether_test_{}", Uuid::new_v4().simple());
        let url = super::postgres::create_database(&server, &name)
            .await
            .unwrap();
        let store = Store::open(&Location::Postgres(url, None)).await.unwrap();
        Some(Self {
            store,
            database: Some((server, name)),
        })
    }

    /// Another store on the same database: a second conductor.
    async fn another(&self) -> Store {
        let (server, name) = self.database.as_ref().expect("a PostgreSQL store");
        let url = super::postgres::with_database(server, name);
        Store::open(&Location::Postgres(url, None)).await.unwrap()
    }

    async fn finish(self) {
        drop(self.store);
        if let Some((server, name)) = self.database {
            super::postgres::drop_database(&server, &name)
                .await
                .unwrap();
        }
    }
}

/// One test function per store: `sqlite::name` always, `super::postgres::name` with a server.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let t = super::TestStore::sqlite();
                    super::$name(&t).await;
                    t.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::TestStore::postgres().await else {
                        return;
                    };
                    super::$name(&t).await;
                    t.finish().await;
                }
            )*
        }
    };
}

on_both_stores!(
    token_is_issued_once_and_stored_hashed,
    lookup_with_mismatched_uuid_finds_nothing,
    a_uuid_alone_finds_the_node_but_never_issues_its_token,
    target_changes_bump_the_generation,
    a_node_enrolled_again_never_repeats_a_generation,
    generations_go_on_from_the_clock_after_a_restore,
    metrics_snapshot_sums_the_latest_reports,
    duplicate_names_and_macs_conflict,
    a_cinder_volume_keeps_its_flow_and_its_node_while_it_has_one,
    ironic_changes_apply_in_one_transaction_and_leaving_nodes_wait_for_their_agent,
    concurrent_lookups_issue_one_token,
    concurrent_changes_take_distinct_generations,
    reports_overwrite_and_name_new_unknown_targets_once,
    connectors_and_resizes,
);

/// Runs `sql` (one statement) on the store's database.
async fn execute(store: &Store, sql: &'static str) {
    match store {
        Store::Sqlite(s) => {
            s.db().conn().execute(sql, []).unwrap();
        }
        Store::Postgres(p) => {
            p.batch_execute(sql).await.unwrap();
        }
    }
}

/// The text column the query's one row has.
async fn query_text(store: &Store, sql: &'static str) -> String {
    match store {
        Store::Sqlite(s) => s.db().conn().query_row(sql, [], |r| r.get(0)).unwrap(),
        Store::Postgres(p) => p
            .client()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0),
    }
}

async fn node(store: &Store, name: &str, mac: &str) -> Node {
    store
        .create_node(NodeCreate {
            name: name.into(),
            uuid: None,
            addresses: vec![mac.into()],
            agent_token: None,
        })
        .await
        .unwrap()
}

fn macs(list: &[&str]) -> Vec<String> {
    list.iter().map(|m| m.to_string()).collect()
}

async fn token_is_issued_once_and_stored_hashed(t: &TestStore) {
    let store = &t.store;
    let n = node(store, "n1", "AA-BB-CC-DD-EE-01").await;
    let first = store
        .lookup(macs(&["aa:bb:cc:dd:ee:01"]), None)
        .await
        .unwrap()
        .unwrap();
    let token = first.new_token.expect("first lookup issues a token");
    assert!(
        store
            .agent_token_matches(n.uuid, token.clone())
            .await
            .unwrap()
    );
    assert!(
        !store
            .agent_token_matches(n.uuid, "wrong".into())
            .await
            .unwrap()
    );
    let second = store
        .lookup(macs(&["aa:bb:cc:dd:ee:01"]), None)
        .await
        .unwrap()
        .unwrap();
    assert!(second.new_token.is_none());
    let stored = query_text(store, "SELECT token_hash FROM nodes").await;
    assert_ne!(stored, token);
    store.reset_token(n.uuid).await.unwrap();
    let third = store
        .lookup(macs(&["aa:bb:cc:dd:ee:01"]), None)
        .await
        .unwrap()
        .unwrap();
    assert!(third.new_token.is_some(), "a reset token is issued again");
    assert!(!store.agent_token_matches(n.uuid, token).await.unwrap());
}

async fn lookup_with_mismatched_uuid_finds_nothing(t: &TestStore) {
    let store = &t.store;
    node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let found = store
        .lookup(macs(&["aa:bb:cc:dd:ee:01"]), Some(Uuid::new_v4()))
        .await
        .unwrap();
    assert!(found.is_none());
}

async fn a_uuid_alone_finds_the_node_but_never_issues_its_token(t: &TestStore) {
    let store = &t.store;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    for macs in [vec![], vec!["aa:bb:cc:dd:ee:99".to_string()]] {
        let found = store.lookup(macs, Some(n.uuid)).await.unwrap().unwrap();
        assert_eq!(found.node.uuid, n.uuid);
        assert!(found.new_token.is_none() && !found.by_address);
        assert!(!found.node.token_issued, "still to be issued");
    }
    let found = store
        .lookup(macs(&["aa:bb:cc:dd:ee:01"]), Some(n.uuid))
        .await
        .unwrap()
        .unwrap();
    assert!(found.new_token.is_some() && found.by_address);
}

fn target_create(node: Uuid, volume_id: &str) -> TargetCreate {
    TargetCreate {
        node_uuid: node,
        volume_type: "iscsi".into(),
        volume_id: volume_id.into(),
        uuid: None,
        boot_index: None,
        properties: json!({"a": 1}).as_object().unwrap().clone(),
        extra: Map::new(),
        size_bytes: None,
    }
}

async fn target_changes_bump_the_generation(t: &TestStore) {
    let store = &t.store;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let enrolled = store.generation(n.uuid).await.unwrap();
    assert!(enrolled > 0, "a node starts from the sequence");
    let generations = Generations::default();
    let created = store
        .create_target(target_create(n.uuid, "v1"))
        .await
        .unwrap();
    let Published {
        node: node_uuid,
        generation,
        value: t,
    } = generations.publish(created);
    assert_eq!((node_uuid, t.node_uuid), (n.uuid, n.uuid));
    assert!(generation > enrolled);
    let (gen_read, targets) = store.node_targets(n.uuid).await.unwrap();
    assert_eq!((gen_read, targets.len()), (generation, 1));
    assert_eq!(targets[0].properties, t.properties);
    assert_eq!(store.get_target(t.uuid).await.unwrap().uuid, t.uuid);
    assert_eq!(store.list_targets(None).await.unwrap().len(), 1);
    let deleted = generations.publish(store.delete_target(t.uuid).await.unwrap());
    assert_eq!(deleted.node, n.uuid);
    assert!(deleted.generation > generation);
    assert!(matches!(
        store.delete_target(t.uuid).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .create_target(target_create(Uuid::new_v4(), "v1"))
            .await,
        Err(StoreError::Conflict(_))
    ));
}

/// A node deleted and enrolled again under its uuid must not repeat a generation: its agent
/// would take the new node's first answer for one it applied, and ignore it.
async fn a_node_enrolled_again_never_repeats_a_generation(t: &TestStore) {
    let store = &t.store;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let generations = Generations::default();
    let mut seen = vec![store.generation(n.uuid).await.unwrap()];
    for round in 0..5 {
        let created = store
            .create_target(target_create(n.uuid, "v1"))
            .await
            .unwrap();
        seen.push(generations.publish(created).generation);
        store.delete_node(n.uuid).await.unwrap();
        let again = store
            .create_node(NodeCreate {
                uuid: Some(n.uuid),
                name: "n1".into(),
                addresses: vec!["aa:bb:cc:dd:ee:01".into()],
                agent_token: None,
            })
            .await
            .unwrap();
        assert_eq!(again.uuid, n.uuid, "round {round}");
        let g = store.generation(n.uuid).await.unwrap();
        assert!(
            !seen.contains(&g),
            "generation {g} repeated in round {round}: {seen:?}"
        );
        assert!(g > *seen.last().unwrap());
        seen.push(g);
    }
}

/// A database restored from an older backup goes on from the clock, not from its old counter.
async fn generations_go_on_from_the_clock_after_a_restore(t: &TestStore) {
    let store = &t.store;
    execute(store, "UPDATE generation_sequence SET value = 7").await;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let g = store.generation(n.uuid).await.unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(g > 7 && g.abs_diff(now_us) < 60_000_000, "{g} vs {now_us}");
}

fn heartbeat(states: &[VolumeState]) -> Heartbeat {
    Heartbeat {
        agent_version: "test".into(),
        generation: Some(1),
        connectors: Vec::new(),
        volumes: states
            .iter()
            .map(|state| crate::protocol::VolumeReport {
                target_uuid: Uuid::new_v4(),
                volume_id: "v".into(),
                volume_type: "iscsi".into(),
                state: *state,
                device_path: None,
                paths: Vec::new(),
                size_bytes: None,
                wwn: None,
                mountpoint: None,
                error: None,
                degraded: None,
                unconfirmed: false,
                since: "2026-01-01T00:00:00Z".into(),
            })
            .collect(),
        foreign: Vec::new(),
    }
}

async fn metrics_snapshot_sums_the_latest_reports(t: &TestStore) {
    use VolumeState::*;
    let store = &t.store;
    let a = node(store, "a", "aa:bb:cc:dd:ee:01").await;
    let b = node(store, "b", "aa:bb:cc:dd:ee:02").await;
    node(store, "never", "aa:bb:cc:dd:ee:03").await;
    let report = |states: &[VolumeState]| Arc::new(heartbeat(states));
    store
        .store_report(a.uuid, report(&[Attached, Attached, Failed]))
        .await
        .unwrap();
    // Only the latest report of a node counts.
    store
        .store_report(b.uuid, report(&[Pending]))
        .await
        .unwrap();
    store
        .store_report(b.uuid, report(&[Mounted, Attached]))
        .await
        .unwrap();
    let s = store.metrics_snapshot().await.unwrap();
    assert_eq!(s.nodes, 3);
    let mut seen: Vec<&str> = s.last_seen.iter().map(|(u, _)| u.as_str()).collect();
    seen.sort();
    let mut expected = [a.uuid.to_string(), b.uuid.to_string()];
    expected.sort();
    assert_eq!(seen, expected);
    assert!(s.last_seen.iter().all(|(_, at)| (s.now - at).abs() <= 1));
    let mut states = s.volume_states.clone();
    states.sort();
    assert_eq!(
        states,
        vec![
            ("attached".to_string(), 3),
            ("failed".to_string(), 1),
            ("mounted".to_string(), 1)
        ]
    );
    assert!(
        store
            .find_node("a".into())
            .await
            .unwrap()
            .last_seen
            .is_some()
    );
    assert!(matches!(
        store.store_report(Uuid::new_v4(), report(&[])).await,
        Err(StoreError::NotFound(_) | StoreError::Db(_))
    ));
}

/// SQLite only: a database made by an older conductor, migrated on open.
#[test]
fn migration_summarises_reports_stored_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let n = Uuid::new_v4().to_string();
        conn.execute(
            "INSERT INTO nodes (uuid, name, created_at) VALUES (?1, 'old', 0)",
            params![n],
        )
        .unwrap();
        let body = serde_json::to_string(&heartbeat(&[
            VolumeState::Failed,
            VolumeState::Failed,
            VolumeState::DetachBlocked,
        ]))
        .unwrap();
        conn.execute(
            "INSERT INTO reports (node_uuid, body, received_at) VALUES (?1, ?2, 5)",
            params![n, body],
        )
        .unwrap();
    }
    let store = SqliteDb::open(&path).unwrap();
    let mut states = store.metrics_snapshot().unwrap().volume_states;
    states.sort();
    assert_eq!(
        states,
        vec![("detach_blocked".to_string(), 1), ("failed".to_string(), 2)]
    );
}

async fn duplicate_names_and_macs_conflict(t: &TestStore) {
    let store = &t.store;
    node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let dup = store
        .create_node(NodeCreate {
            name: "n2".into(),
            uuid: None,
            addresses: vec!["aa:bb:cc:dd:ee:01".into()],
            agent_token: None,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    // The failed insert rolled back whole: no half-created node.
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
    let named = store
        .create_node(NodeCreate {
            name: "n1".into(),
            uuid: None,
            addresses: vec![],
            agent_token: None,
        })
        .await;
    assert!(matches!(named, Err(StoreError::Conflict(_))), "{named:?}");
}

#[test]
fn a_token_hash_matches_its_token_only() {
    let hash = TokenHash::of("admin-token-0123456789");
    assert!(hash.matches("admin-token-0123456789"));
    for other in ["admin-token-012345678", "admin-token-01234567890", "", "x"] {
        assert!(!hash.matches(other), "{other:?}");
    }
}

#[test]
fn a_database_password_never_shows() {
    for (url, shown) in [
        (
            "postgres://tether:s3cret@db.example:5432/tether?sslmode=require",
            "postgres://tether:***@db.example:5432/tether?sslmode=require",
        ),
        (
            "postgresql://db/tether?user=t&password=s3cret",
            "postgresql://db/tether?user=t&password=***",
        ),
        ("postgres://tether@db/tether", "postgres://tether@db/tether"),
    ] {
        let location = Location::of(std::path::Path::new(url));
        assert!(matches!(location, Location::Postgres(..)));
        assert_eq!(location.to_string(), shown);
        assert!(!redact_url(url).contains("s3cret"));
    }
    assert!(matches!(
        Location::of(std::path::Path::new("/var/lib/tether/conductor.db")),
        Location::Sqlite(_)
    ));
    assert_eq!(
        super::postgres::with_database("postgres://u:p@h:1/postgres?sslmode=disable", "t1"),
        "postgres://u:p@h:1/t1?sslmode=disable"
    );
}

async fn a_cinder_volume_keeps_its_flow_and_its_node_while_it_has_one(t: &TestStore) {
    use crate::protocol::cinder::CinderPhase;
    let store = &t.store;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let row = CinderRow::new(
        n.uuid,
        "vol-1".into(),
        Some("data".into()),
        false,
        None,
        None,
    );
    store.insert_cinder_volume(row.clone()).await.unwrap();
    assert!(matches!(
        store.insert_cinder_volume(row.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.cinder_volumes(Some(n.uuid)).await.unwrap(),
        vec![row.clone()]
    );
    let refused = store.delete_node(n.uuid).await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("Cinder")),
        "a node with Cinder volumes stays: {refused:?}"
    );

    let before = store.generation(n.uuid).await.unwrap();
    let target = TargetCreate {
        node_uuid: n.uuid,
        volume_type: "iscsi".into(),
        volume_id: "vol-1".into(),
        uuid: None,
        boot_index: None,
        properties: Map::new(),
        extra: Map::new(),
        size_bytes: None,
    };
    let assigned = Generations::default().publish(
        store
            .assign_cinder_target(n.uuid, "vol-1".into(), target)
            .await
            .unwrap(),
    );
    assert!(assigned.generation > before, "the node's agent is told");
    let row = assigned.value;
    assert_eq!(row.phase, CinderPhase::Attaching);
    let target_uuid = row.target_uuid.unwrap();
    assert!(store.target_exists(target_uuid).await.unwrap());
    let phases: Vec<_> = row.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [CinderPhase::Creating, CinderPhase::Attaching]);

    let row = store
        .update_cinder_volume(
            n.uuid,
            "vol-1".into(),
            Box::new(|r| {
                r.attachment_id = Some("att".into());
                r.want_attached = false;
            }),
        )
        .await
        .unwrap();
    assert!(!row.want_attached);
    let (row, change) = store
        .unassign_cinder_target(n.uuid, "vol-1".into())
        .await
        .unwrap();
    assert!(change.is_some(), "the target was deleted");
    assert_eq!(row.phase, CinderPhase::Detaching);
    assert!(!store.target_exists(target_uuid).await.unwrap());
    let (_, again) = store
        .unassign_cinder_target(n.uuid, "vol-1".into())
        .await
        .unwrap();
    assert!(
        again.is_none(),
        "an unassign repeated after a crash changes nothing"
    );
    assert_eq!(
        store.cinder_volumes(None).await.unwrap()[0]
            .attachment_id
            .as_deref(),
        Some("att")
    );

    store
        .forget_cinder_volume(n.uuid, "vol-1".into())
        .await
        .unwrap();
    assert!(store.cinder_volumes(None).await.unwrap().is_empty());
    store.delete_node(n.uuid).await.unwrap();
}

/// A sync pass as the store applies it: names swapped and a port moved in one transaction; a
/// node deleted in Ironic with a target leaves (target unassigned, node kept) and is removed
/// once its agent's report lists no volume; synced nodes refuse hand edits, manual ones not.
async fn ironic_changes_apply_in_one_transaction_and_leaving_nodes_wait_for_their_agent(
    t: &TestStore,
) {
    use crate::conductor::ironic::diff::{Change, Remote};
    use crate::protocol::NodeSource;
    let store = &t.store;
    let remote = |n: u8, name: &str, macs: &[&str]| Remote {
        uuid: Uuid::from_bytes([n; 16]),
        name: name.into(),
        addresses: macs.iter().map(|m| m.to_string()).collect(),
        instance_uuid: None,
        provision_state: Some("available".into()),
    };
    let (a, b) = ("52:54:00:00:00:0a", "52:54:00:00:00:0b");
    store
        .apply_ironic(vec![
            Change::Create(remote(1, "one", &[a])),
            Change::Create(remote(2, "two", &[b])),
        ])
        .await
        .unwrap();
    let view = store.ironic_view().await.unwrap();
    assert_eq!(view.len(), 2);
    assert!(
        view.iter()
            .all(|l| l.source == NodeSource::Ironic && !l.busy)
    );

    store
        .apply_ironic(vec![
            Change::Update {
                node: remote(1, "two", &[b]),
                adopt: false,
            },
            Change::Update {
                node: remote(2, "one", &[a]),
                adopt: false,
            },
        ])
        .await
        .unwrap();
    let one = store.find_node("one".into()).await.unwrap();
    assert_eq!(
        (one.uuid, one.addresses),
        (Uuid::from_bytes([2; 16]), vec![a.to_string()])
    );

    let uuid = one.uuid;
    let refused = store
        .set_node_addresses(uuid, vec!["52:54:00:00:00:0c".into()])
        .await;
    assert!(matches!(refused, Err(StoreError::Synced(_))), "{refused:?}");
    assert!(matches!(
        store.delete_node(uuid).await,
        Err(StoreError::Synced(_))
    ));
    let manual = node(store, "by-hand", "52:54:00:00:00:0d").await;
    let moved = store
        .set_node_addresses(manual.uuid, vec!["52:54:00:00:00:0e".into()])
        .await
        .unwrap();
    assert_eq!(moved.addresses, ["52:54:00:00:00:0e"]);

    let change = store
        .create_target(target_create(uuid, "vol"))
        .await
        .unwrap();
    let _ = Generations::default().publish(change);
    let mut report = heartbeat(&[VolumeState::Attached]);
    report.connectors = vec![crate::protocol::Connector {
        connector_type: "iqn".into(),
        connector_id: "iqn.2004-10.com.ubuntu:01:one".into(),
    }];
    store.store_report(uuid, Arc::new(report)).await.unwrap();
    let checks = store.connector_checks().await.unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(store.ironic_watched().await.unwrap().len(), 2);
    store
        .connector_checked(uuid, checks[0].key(), None)
        .await
        .unwrap();
    assert!(store.connector_checks().await.unwrap().is_empty());
    assert!(store.ironic_view().await.unwrap().iter().any(|l| l.busy));
    let unassigned = store.apply_ironic(vec![Change::Leave(uuid)]).await.unwrap();
    assert_eq!(unassigned.len(), 1);
    for change in unassigned {
        let _ = Generations::default().publish(change);
    }
    assert!(store.list_targets(Some(uuid)).await.unwrap().is_empty());
    assert!(store.find_node("one".into()).await.unwrap().leaving);
    assert!(
        store.remove_departed().await.unwrap().is_empty(),
        "the agent still has it"
    );
    store
        .store_report(uuid, Arc::new(heartbeat(&[])))
        .await
        .unwrap();
    assert_eq!(store.remove_departed().await.unwrap(), [uuid]);
    assert!(store.find_node("one".into()).await.is_err());
    assert!(store.find_node("by-hand".into()).await.is_ok());
}

/// Two conductors (on PostgreSQL, two stores on one database) looking a node up at the same
/// moment: exactly one of them issues its token.
async fn concurrent_lookups_issue_one_token(t: &TestStore) {
    let other = match t.database {
        Some(_) => Some(t.another().await),
        None => None,
    };
    let stores = [Some(&t.store), other.as_ref()];
    let n = node(&t.store, "n1", "aa:bb:cc:dd:ee:01").await;
    // Few enough that new connections (SCRAM is slow in a debug build) start within their
    // timeout on a loaded machine; enough to race.
    let lookups = (0..8).map(|i| {
        let store = stores[i % 2].unwrap_or(&t.store);
        store.lookup(macs(&["aa:bb:cc:dd:ee:01"]), Some(n.uuid))
    });
    let found = futures_util::future::join_all(lookups).await;
    let tokens: Vec<String> = found
        .into_iter()
        .filter_map(|f| f.unwrap().unwrap().new_token)
        .collect();
    assert_eq!(tokens.len(), 1, "one token issued, not {}", tokens.len());
    assert!(
        t.store
            .agent_token_matches(n.uuid, tokens[0].clone())
            .await
            .unwrap()
    );
}

/// Target changes made at once through two conductors take distinct generations, and the node
/// ends with the last one given.
async fn concurrent_changes_take_distinct_generations(t: &TestStore) {
    let other = match t.database {
        Some(_) => Some(t.another().await),
        None => None,
    };
    let n = node(&t.store, "n1", "aa:bb:cc:dd:ee:01").await;
    let changes = (0..8).map(|i| {
        let store = match (i % 2, &other) {
            (1, Some(other)) => other,
            _ => &t.store,
        };
        store.create_target(target_create(n.uuid, &format!("v{i}")))
    });
    let generations = Generations::default();
    let mut seen: Vec<u64> = futures_util::future::join_all(changes)
        .await
        .into_iter()
        .map(|c| generations.publish(c.unwrap()).generation)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8, "every change its own generation");
    assert_eq!(
        t.store.generation(n.uuid).await.unwrap(),
        *seen.last().unwrap()
    );
    if let Some(other) = other {
        // A change through one conductor reaches the long-polls of the other.
        let watching = Arc::new(Generations::default());
        let mut wakes = watching.subscribe(n.uuid);
        let other = Arc::new(other);
        let listener = tokio::spawn(super::postgres::follow(other.clone(), watching.clone()));
        // The listener reads the generation again once it listens.
        tokio::time::timeout(Duration::from_secs(10), wakes.wait_for(|g| *g > 0))
            .await
            .expect("the listener catches up")
            .unwrap();
        let change = t
            .store
            .create_target(target_create(n.uuid, "late"))
            .await
            .unwrap();
        let committed = Generations::default().publish(change).generation;
        tokio::time::timeout(Duration::from_secs(5), wakes.wait_for(|g| *g >= committed))
            .await
            .expect("the other conductor's long-poll wakes")
            .unwrap();
        listener.abort();
    }
}

async fn reports_overwrite_and_name_new_unknown_targets_once(t: &TestStore) {
    let store = &t.store;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let change = store
        .create_target(target_create(n.uuid, "v1"))
        .await
        .unwrap();
    let known = Generations::default().publish(change).value.uuid;
    let mut report = heartbeat(&[VolumeState::Attached, VolumeState::Attached]);
    report.volumes[0].target_uuid = known;
    let stray = report.volumes[1].target_uuid;
    let report = Arc::new(report);
    let first = store.store_report(n.uuid, report.clone()).await.unwrap();
    assert_eq!(
        (first.all.clone(), first.new.clone()),
        (vec![stray], vec![stray])
    );
    let second = store.store_report(n.uuid, report).await.unwrap();
    assert_eq!(second.all, vec![stray]);
    assert!(second.new.is_empty(), "named once, when it appears");
    let status = store.node_status(n.uuid).await.unwrap();
    assert_eq!(status.unknown_targets, vec![stray]);
    assert_eq!(status.report.unwrap().volumes.len(), 2);
}

async fn connectors_and_resizes(t: &TestStore) {
    use crate::protocol::ConnectorCreate;
    let store = &t.store;
    let n = node(store, "n1", "aa:bb:cc:dd:ee:01").await;
    let create = |id: &str| ConnectorCreate {
        node_uuid: n.uuid,
        connector_type: "iqn".into(),
        connector_id: id.into(),
    };
    let c = store.create_connector(create("iqn.x:1")).await.unwrap();
    assert!(matches!(
        store.create_connector(create("iqn.x:1")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.list_connectors(Some(n.uuid)).await.unwrap().len(), 1);
    assert_eq!(store.list_connectors(None).await.unwrap().len(), 1);
    store.delete_connector(c.uuid).await.unwrap();
    assert!(matches!(
        store.delete_connector(c.uuid).await,
        Err(StoreError::NotFound(_))
    ));

    let mut request = target_create(n.uuid, "v1");
    request.size_bytes = Some(1 << 30);
    request.boot_index = Some(0);
    let target = Generations::default()
        .publish(store.create_target(request).await.unwrap())
        .value;
    let grown = store.resize_target(target.uuid, 2 << 30).await.unwrap();
    let grown = Generations::default().publish(grown);
    assert_eq!(grown.value.size_bytes, Some(2 << 30));
    let same = store.resize_target(target.uuid, 2 << 30).await.unwrap();
    assert_eq!(
        Generations::default().publish(same).generation,
        grown.generation
    );
    assert!(matches!(
        store.resize_target(target.uuid, 1 << 30).await,
        Err(StoreError::Invalid {
            kind: "shrink_refused",
            ..
        })
    ));
    assert_eq!(
        store.get_target(target.uuid).await.unwrap().boot_index,
        Some(0)
    );
}
