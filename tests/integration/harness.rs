//! A real conductor and a real agent on loopback, with the simulated kernel as the host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use tether::agent::{self, Backends};
use tether::backend::simulated::SimKernel;
use tether::config::{AgentConfig, ConductorConfig};
use tether::metrics::LoopbackAddr;
use tether::protocol::{NodeStatus, VolumeReport, VolumeState};

pub const ADMIN: &str = "admin-token-for-tests-0123456789";

/// Every log line any test in this binary produced, for the secret-leak checks.
pub fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn all_logs() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// A host name the system cannot resolve, in the conductors' certificate.
pub const CONDUCTORS_NAME: &str = "conductors.test";

/// The test CA and the conductor's certificate (for 127.0.0.1, 127.0.0.2, localhost and
/// [`CONDUCTORS_NAME`]) it signed: every
/// conductor of these tests serves HTTPS, as a real one does.
pub struct TestPki {
    _dir: TempDir,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tether test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        // conductors.test: the name of several conductors, resolved by the tests' own resolver.
        let names = ["127.0.0.1", "127.0.0.2", "localhost", CONDUCTORS_NAME].map(String::from);
        let server = CertificateParams::new(names.to_vec()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        TestPki {
            ca_file: write("ca.pem", ca.pem()),
            cert_file: write("conductor.pem", server.pem()),
            key_file: write("conductor.key", server_key.serialize_pem()),
            _dir: dir,
        }
    })
}

/// An HTTP client that trusts the test CA.
pub fn http() -> reqwest::Client {
    http_builder().build().unwrap()
}

/// A client builder that trusts the test CA (as the agent and ctl trust theirs), for tests that
/// set more.
pub fn http_builder() -> reqwest::ClientBuilder {
    tether::agent::trusting(reqwest::Client::builder(), Some(&pki().ca_file)).unwrap()
}

/// The PostgreSQL server the conductors of these tests use instead of SQLite, when
/// TETHER_TEST_POSTGRES names one (scripts/test-postgres).
pub fn postgres_server() -> Option<String> {
    std::env::var("TETHER_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
}

/// The database of the conductor whose files are in `dir`: `conductor.db` there, or with a
/// PostgreSQL server a database of its own named after `dir` (so that a conductor restarted on
/// `dir` finds its data again).
pub fn database(dir: &Path) -> PathBuf {
    match postgres_server() {
        Some(server) => {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut hasher);
            let name = format!("tether_it_{:016x}", hasher.finish());
            PathBuf::from(postgres_database(server, name))
        }
        None => dir.join("conductor.db"),
    }
}

/// Creates the database `name` on `server` (unless it exists) and gives its URL. On a thread of
/// its own: callers may be sync code inside a runtime.
pub fn postgres_database(server: String, name: String) -> String {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(tether::conductor::create_postgres_database(&server, &name))
    })
    .join()
    .unwrap()
    .expect("a test database on TETHER_TEST_POSTGRES")
}

/// A conductor's configuration with its files in `dir`, on a free loopback port.
pub fn conductor_config(dir: &Path) -> ConductorConfig {
    ConductorConfig {
        listen: "127.0.0.1:0".into(),
        database: database(dir),
        admin_token_file: dir.join("admin.token"),
        ..ConductorConfig::default()
    }
}

/// An agent's lookup by one MAC address.
pub async fn lookup(url: &str, mac: &str) -> tether::protocol::LookupResponse {
    http()
        .get(format!("{url}/v1/lookup?addresses={mac}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub struct Conductor {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: ConductorConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Conductor {
    pub async fn start(dir: &Path, validate_targets: bool) -> Self {
        Self::start_at(dir, "127.0.0.1:0".parse().unwrap(), validate_targets).await
    }

    pub async fn start_at(dir: &Path, addr: SocketAddr, validate_targets: bool) -> Self {
        let config = ConductorConfig {
            listen: addr.to_string(),
            heartbeat_interval_s: 1,
            max_wait_s: 60,
            validate_targets,
            ..conductor_config(dir)
        };
        Self::start_with(dir, config).await
    }

    /// A conductor with this configuration, serving HTTPS with the test PKI unless the
    /// configuration names other files; `listen` may name port 0.
    pub async fn start_with(dir: &Path, mut config: ConductorConfig) -> Self {
        if config.tls_cert_file.is_none() {
            config.tls_cert_file = Some(pki().cert_file.clone());
            config.tls_key_file = Some(pki().key_file.clone());
        }
        Self::start_exactly(dir, config).await
    }

    /// A conductor with exactly this configuration: plain HTTP unless it names TLS files.
    pub async fn start_exactly(dir: &Path, config: ConductorConfig) -> Self {
        logs();
        let addr: SocketAddr = config.listen.parse().expect("listen address");
        // A restart binds its old port again: another process's short-lived connection may
        // hold it for a moment (the machine's ephemeral ports are shared).
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task_config = config.clone();
        let task = tokio::spawn(async move {
            tether::conductor::serve(&task_config, ADMIN, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            dir: dir.to_path_buf(),
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        let scheme = match self.config.tls_cert_file {
            Some(_) => "https",
            None => "http",
        };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = self.config.clone();
        config.listen = self.addr.to_string();
        *self = Self::start_exactly(&self.dir.clone(), config).await;
    }
}

/// A minimal operator client, so that tests read like what an operator does.
#[derive(Clone)]
pub struct Operator {
    pub http: reqwest::Client,
    pub url: String,
}

impl Operator {
    pub fn new(url: &str) -> Self {
        Self {
            http: http(),
            url: url.to_string(),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("conductor reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn create_node(&self, name: &str, mac: &str) -> Uuid {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/v1/nodes",
                Some(json!({"name": name, "addresses": [mac]})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["uuid"].as_str().unwrap().parse().unwrap()
    }

    pub async fn assign(
        &self,
        node: Uuid,
        volume_type: &str,
        volume_id: &str,
        properties: Value,
        extra: Value,
    ) -> Uuid {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/v1/volume/targets",
                Some(
                    json!({"node_uuid": node, "volume_type": volume_type, "volume_id": volume_id,
                            "properties": properties, "extra": extra}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["uuid"].as_str().unwrap().parse().unwrap()
    }

    pub async fn unassign(&self, target: Uuid) {
        let (status, body) = self
            .request(
                reqwest::Method::DELETE,
                &format!("/v1/volume/targets/{target}"),
                None,
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }

    pub async fn status(&self, node: Uuid) -> NodeStatus {
        let (status, body) = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/nodes/{node}/volume/status"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Waits until the node's report satisfies `check`, or fails saying what it last saw.
    pub async fn wait_report(
        &self,
        node: Uuid,
        what: &str,
        check: impl Fn(&NodeStatus) -> bool,
    ) -> NodeStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.status(node).await;
            if check(&status) {
                return status;
            }
            if Instant::now() > deadline {
                panic!("expected {what}; the last report was {:#?}", status.report);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_state(&self, node: Uuid, target: Uuid, state: VolumeState) -> VolumeReport {
        let status = self
            .wait_report(node, &format!("target {target} {state}"), |s| {
                volume(s, target).is_some_and(|v| v.state == state)
            })
            .await;
        volume(&status, target).unwrap().clone()
    }

    pub async fn wait_gone(&self, node: Uuid, target: Uuid) {
        self.wait_report(
            node,
            &format!("target {target} gone from the report"),
            |s| s.report.is_some() && volume(s, target).is_none(),
        )
        .await;
    }
}

pub fn volume(status: &NodeStatus, target: Uuid) -> Option<&VolumeReport> {
    status
        .report
        .as_ref()?
        .volumes
        .iter()
        .find(|v| v.target_uuid == target)
}

/// A node: a host root with one NIC, a state directory and a simulated kernel.
pub struct Node {
    pub root: TempDir,
    pub kernel: Arc<SimKernel>,
    /// `agent.conductor_url`: one, or several to fail over between.
    pub conductor_urls: Vec<String>,
    /// Resolves the conductors' names instead of the system.
    pub resolver: Option<Arc<dyn tether::agent::Resolve>>,
    /// Where the agent serves metrics, when set before it starts.
    pub metrics_listen: Option<LoopbackAddr>,
    /// `agent.offline_reattach` of the next start.
    pub offline_reattach: bool,
    agent: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

impl Node {
    pub fn new(mac: &str, conductor_url: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let nic = root.path().join("host/sys/class/net/eth0");
        std::fs::create_dir_all(&nic).unwrap();
        std::fs::write(nic.join("address"), format!("{mac}\n")).unwrap();
        std::fs::write(nic.join("type"), "1\n").unwrap();
        let iscsi = root.path().join("host/etc/iscsi");
        std::fs::create_dir_all(&iscsi).unwrap();
        std::fs::write(
            iscsi.join("initiatorname.iscsi"),
            "InitiatorName=iqn.1993-08.org.debian:01:node\n",
        )
        .unwrap();
        Self {
            root,
            kernel: Arc::new(SimKernel::new(Duration::from_millis(20))),
            conductor_urls: vec![conductor_url.to_string()],
            resolver: None,
            metrics_listen: None,
            offline_reattach: true,
            agent: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    pub fn config(&self) -> AgentConfig {
        AgentConfig {
            conductor_urls: self.conductor_urls.clone(),
            state_dir: self.state_dir(),
            host_root: self.root.path().join("host"),
            poll_wait: Duration::from_secs(30),
            device_timeout: Duration::from_secs(2),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            metrics_listen: self.metrics_listen,
            offline_reattach: self.offline_reattach,
            conductor_ca_file: Some(pki().ca_file.clone()),
            ..AgentConfig::default()
        }
    }

    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let (stop, stopped) = oneshot::channel::<()>();
        let backends = Backends::simulated(self.kernel.clone());
        let resolver = self
            .resolver
            .clone()
            .unwrap_or_else(|| Arc::new(agent::SystemResolver));
        let task = tokio::spawn(agent::run_with_resolver(
            self.config(),
            backends,
            resolver,
            async {
                let _ = stopped.await;
            },
        ));
        self.agent = Some((stop, task));
    }

    /// Stops the agent at once, as SIGKILL does: nothing drains, and the host operations it
    /// started run on without it (as a login iscsid carries out does).
    pub fn kill_agent(&mut self) {
        if let Some((_, task)) = self.agent.take() {
            task.abort();
        }
    }

    /// Stops the agent the way SIGTERM does.
    pub async fn stop_agent(&mut self) {
        if let Some((stop, task)) = self.agent.take() {
            let _ = stop.send(());
            task.await.unwrap().unwrap();
        }
    }
}

pub fn iscsi_props(portal: &str, iqn: &str, lun: u32) -> Value {
    json!({"target_portal": portal, "target_iqn": iqn, "target_lun": lun})
}

/// Every file under `dir`, read as text.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

/// A conductor with one enrolled node, and that node (its agent not started yet).
pub struct World {
    pub dir: TempDir,
    pub conductor: Conductor,
    pub op: Operator,
    pub node_uuid: Uuid,
    pub node: Node,
}

impl World {
    pub async fn start(mac: &str, validate_targets: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conductor = Conductor::start(dir.path(), validate_targets).await;
        let op = Operator::new(&conductor.url());
        let node_uuid = op.create_node("n1", mac).await;
        let node = Node::new(mac, &conductor.url());
        Self {
            dir,
            conductor,
            op,
            node_uuid,
            node,
        }
    }
}
