//! Several conductors over one database: the agent stays on the one that answers, moves to the
//! next when it dies, keeps its token and its volumes, and never detaches for want of a
//! conductor.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use crate::harness::{
    ADMIN, CONDUCTORS_NAME, Conductor, Node, Operator, all_logs, http, iscsi_props, pki,
};
use tether::agent::{LocalStatus, Resolve, StateDir};
use tether::metrics::LoopbackAddr;
use tether::protocol::VolumeState;

const PORTAL: &str = "192.0.2.60:3260";
const IQN_1: &str = "iqn.2003-01.org.example.array:failover-1";
const IQN_2: &str = "iqn.2003-01.org.example.array:failover-2";
const IQN_3: &str = "iqn.2003-01.org.example.array:failover-3";

/// `tether conductor` as a process of its own, serving HTTPS with the test PKI on `port`, over
/// the SQLite file `database` that other conductors share.
struct ConductorProcess {
    child: Child,
    url: String,
}

impl ConductorProcess {
    async fn start(dir: &Path, name: &str, database: &Path, port: u16) -> Self {
        let config = dir.join(format!("{name}.toml"));
        let pki = pki();
        std::fs::write(
            &config,
            format!(
                "[conductor]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n\
                 admin_token_file = \"{}\"\nheartbeat_interval_s = 1\n\
                 tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                database.display(),
                dir.join("admin.token").display(),
                pki.cert_file.display(),
                pki.key_file.display(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let url = format!("https://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
                .arg("--config")
                .arg(&config)
                .arg("conductor")
                .env("TETHER_ADMIN_TOKEN", ADMIN)
                .env("TETHER_LOG", "info")
                .env("TETHER_LOG_FORMAT", "text")
                .env_remove("JOURNAL_STREAM")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            // Until it answers; started again if it exited (a restart's port still held by a
            // closing connection for a moment).
            while child.try_wait().unwrap().is_none() {
                let probe = format!("{url}/v1/lookup?addresses=00:00:00:00:00:00");
                if http().get(probe).send().await.is_ok() {
                    return Self { child, url };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("{url} never answered:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(Instant::now() < deadline, "{url} exited:\n{said}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL: no graceful end for the long-polls waiting on it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ConductorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

fn free_loopback() -> LoopbackAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn token(node: &Node) -> String {
    std::fs::read_to_string(node.state_dir().join("token")).unwrap()
}

/// Waits until the agent's status file (what `tether status` reads) satisfies `check`.
async fn wait_local(node: &Node, what: &str, check: impl Fn(&LocalStatus) -> bool) -> LocalStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = StateDir::new(node.state_dir()).load_status().ok();
        if let Some(status) = status.filter(&check) {
            return status;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scrape(addr: LoopbackAddr) -> String {
    http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn attached_everywhere(status: &LocalStatus, targets: &[Uuid]) -> bool {
    targets.iter().all(|t| {
        status
            .report
            .volumes
            .iter()
            .any(|v| v.target_uuid == *t && v.state == VolumeState::Attached)
    })
}

/// Two conductor processes on one database (a SQLite file, or PostgreSQL with
/// TETHER_TEST_POSTGRES); the agent, attached through B, loses B (SIGKILL)
/// and goes on with A within the backoff: same token, no new lookup, nothing detached, and an
/// assignment made through A reaches it. Then A dies too: still nothing detached; A back, the
/// agent finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_moves_to_the_other_conductor_keeping_its_token_and_volumes() {
    crate::harness::logs();
    let dir = tempfile::tempdir().unwrap();
    let database = match crate::harness::postgres_server() {
        Some(_) => crate::harness::database(&dir.path().join("shared")),
        None => dir.path().join("shared.db"),
    };
    let port_a = free_port();
    let mut a = ConductorProcess::start(dir.path(), "a", &database, port_a).await;
    let mut b = ConductorProcess::start(dir.path(), "b", &database, free_port()).await;
    let (op_a, op_b) = (Operator::new(&a.url), Operator::new(&b.url));
    let mac = "52:54:00:00:16:01";
    let node_uuid = op_b.create_node("n-failover", mac).await;
    let mut node = Node::new(mac, &b.url);
    node.conductor_urls = vec![b.url.clone(), a.url.clone()];
    let metrics = free_loopback();
    node.metrics_listen = Some(metrics);
    node.start_agent();

    let first = op_b
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_1, 0),
            json!({}),
        )
        .await;
    let before = op_b
        .wait_state(node_uuid, first, VolumeState::Attached)
        .await;
    let local = wait_local(&node, "the status file naming B", |s| {
        attached_everywhere(s, &[first])
    })
    .await;
    assert_eq!(local.conductor_url, b.url);
    assert_eq!(local.conductors, [b.url.clone(), a.url.clone()]);
    let token_before = token(&node);

    b.kill();
    let killed = Instant::now();
    let second = op_a
        .assign(
            node_uuid,
            "iscsi",
            "vol-2",
            iscsi_props(PORTAL, IQN_2, 0),
            json!({}),
        )
        .await;
    let status = op_a
        .wait_state(node_uuid, second, VolumeState::Attached)
        .await;
    let took = killed.elapsed();
    // The first hop waits at most 0.5 s; the rest is the attach and a heartbeat (1 s).
    assert!(took < Duration::from_secs(5), "{took:?} to reach A");
    let again = crate::harness::volume(&op_a.status(node_uuid).await, first)
        .cloned()
        .unwrap();
    assert_eq!(again.state, VolumeState::Attached);
    assert_eq!(again.device_path, before.device_path);
    assert_eq!(status.state, VolumeState::Attached);
    assert_eq!(node.kernel.stats().logouts, 0, "nothing detached");
    assert_eq!(node.kernel.session_count(PORTAL, IQN_1), 1);
    assert_eq!(token(&node), token_before, "the same token");
    let logs = all_logs();
    let lookups = logs
        .lines()
        .filter(|l| l.contains("conductor knows this node") && l.contains(&node_uuid.to_string()))
        .count();
    assert_eq!(lookups, 1, "no second lookup");
    assert!(
        logs.lines()
            .any(|l| l.contains("moving to the next conductor")
                && l.contains(&format!("from={}", b.url))
                && l.contains(&format!("to={}", a.url))),
        "the move is logged"
    );
    wait_local(&node, "the status file naming A", |s| {
        s.conductor_url == a.url && attached_everywhere(s, &[first, second])
    })
    .await;
    let text = scrape(metrics).await;
    let in_use = format!("tether_agent_conductor{{url=\"{}\",address=\"\"}} 1", a.url);
    assert!(text.contains(&in_use), "{text}");
    assert!(!text.contains(&b.url), "B is no longer named: {text}");
    let failovers = text
        .lines()
        .find_map(|l| l.strip_prefix("tether_agent_conductor_failovers_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(failovers.is_some_and(|n| n >= 1), "{text}");

    // No conductor at all, for several rounds of the backoff: nothing is detached.
    a.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        node.kernel.stats().logouts,
        0,
        "an outage of all must not detach"
    );
    assert_eq!(node.kernel.session_count(PORTAL, IQN_1), 1);
    assert_eq!(node.kernel.session_count(PORTAL, IQN_2), 1);
    let local = StateDir::new(node.state_dir()).load_status().unwrap();
    assert!(attached_everywhere(&local, &[first, second]), "{local:?}");

    let _a = ConductorProcess::start(dir.path(), "a-again", &database, port_a).await;
    let third = op_a
        .assign(
            node_uuid,
            "iscsi",
            "vol-3",
            iscsi_props(PORTAL, IQN_3, 0),
            json!({}),
        )
        .await;
    op_a.wait_state(node_uuid, third, VolumeState::Attached)
        .await;
    assert_eq!(node.kernel.stats().logouts, 0);
    assert_eq!(token(&node), token_before);
    node.stop_agent().await;
}

/// Resolves names from a table, and counts the lookups.
struct TableResolver {
    table: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicUsize,
}

impl Resolve for TableResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let found = self.table.get(host).map(|ips| {
            ips.iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect::<Vec<_>>()
        });
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "unknown"))
        })
    }
}

/// Waits until the conductor answers: the next one opens the database once this one has
/// created it (two first starts at once may both try to create it).
async fn answering(conductor: Conductor) -> Conductor {
    let op = Operator::new(&conductor.url());
    let (status, _) = op.request(reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200);
    conductor
}

/// Two conductors on 127.0.0.1 and 127.0.0.2, one port, one database, behind one name that
/// resolves to both: two conductors for the agent, the name kept for TLS.
async fn conductors_behind_one_name(dir: &Path) -> (Conductor, Conductor) {
    for _ in 0..20 {
        let first = answering(Conductor::start(dir, true).await).await;
        let port = first.addr.port();
        let second: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        if std::net::TcpListener::bind(second).is_ok() {
            let second = answering(Conductor::start_at(dir, second, true).await).await;
            return (first, second);
        }
        let mut first = first;
        first.stop().await;
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_two_addresses_is_two_conductors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, second) = conductors_behind_one_name(dir.path()).await;
    let port = first.addr.port();
    let (op_1, op_2) = (Operator::new(&first.url()), Operator::new(&second.url()));
    let mac = "52:54:00:00:16:02";
    let node_uuid = op_1.create_node("n-dns", mac).await;
    let url = format!("https://{CONDUCTORS_NAME}:{port}");
    let mut node = Node::new(mac, &url);
    let resolver = Arc::new(TableResolver {
        table: HashMap::from([(
            CONDUCTORS_NAME.to_string(),
            vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        )]),
        lookups: AtomicUsize::new(0),
    });
    node.resolver = Some(resolver.clone());
    node.start_agent();

    let one = op_1
        .assign(
            node_uuid,
            "iscsi",
            "vol-1",
            iscsi_props(PORTAL, IQN_1, 0),
            json!({}),
        )
        .await;
    op_1.wait_state(node_uuid, one, VolumeState::Attached).await;
    let local = wait_local(&node, "the first address in use", |s| {
        attached_everywhere(s, &[one]) && s.conductor_address.is_some()
    })
    .await;
    assert_eq!(local.conductor_url, url, "the name, not an address");
    assert_eq!(local.conductor_address.as_deref(), Some("127.0.0.1"));
    assert!(resolver.lookups.load(Ordering::Relaxed) >= 1);

    first.stop().await;
    let two = op_2
        .assign(
            node_uuid,
            "iscsi",
            "vol-2",
            iscsi_props(PORTAL, IQN_2, 0),
            json!({}),
        )
        .await;
    op_2.wait_state(node_uuid, two, VolumeState::Attached).await;
    let local = wait_local(&node, "the second address in use", |s| {
        s.conductor_address.as_deref() == Some("127.0.0.2") && attached_everywhere(s, &[one, two])
    })
    .await;
    assert_eq!(local.conductor_url, url);
    assert_eq!(node.kernel.stats().logouts, 0);
    let moved = format!("from={url} (127.0.0.1) to={url} (127.0.0.2)");
    assert!(
        all_logs().lines().any(|l| l.contains(&moved)),
        "the move is logged: {moved}"
    );
    node.stop_agent().await;
}
