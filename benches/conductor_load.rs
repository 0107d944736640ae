//! Load generator for `scripts/bench-conductor`: N simulated agents against one conductor on
//! loopback, each with its own node, token and 4 targets, each holding a long-poll open and
//! heartbeating on a jittered interval; meanwhile an operator changes one node's targets every
//! 100 ms. Measures heartbeat latency, assignment propagation and failures, and samples the
//! conductor's RSS and CPU from /proc. Bounded in time; talks to loopback only.
//!
//! Over https (`--ca-file`), every connection makes a full TLS handshake: session resumption is
//! off, as it would fail for a real fleet, where each agent comes back with its own ticket long
//! after the conductor's session cache (256 entries) let it go. `--write-pki DIR` makes the
//! throwaway CA and the certificate for 127.0.0.1 that `scripts/bench-conductor --tls` uses.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

#[derive(Parser, Debug)]
struct Args {
    /// Conductor base URL; must be a loopback address. Given several times (conductors sharing
    /// one database), agent i talks to the (i mod n)-th and the operator to the first, so that
    /// propagation to agents on the others crosses conductors.
    #[arg(long = "url", required_unless_present = "write_pki")]
    urls: Vec<String>,
    #[arg(long, required_unless_present = "write_pki")]
    admin_token: Option<String>,
    /// PEM file of the CA that signed an https:// conductor's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// How heartbeats reach the conductor: `fresh`, a new connection for each (what a real
    /// agent does: its idle connections close after 5 s, and it heartbeats every 30 s), or
    /// `pooled`, a keep-alive pool shared by all agents (cheaper for the load generator).
    #[arg(long, default_value = "fresh", value_parser = ["fresh", "pooled"])]
    heartbeat_connections: String,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds of measurement once every agent is polling.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 10)]
    heartbeat_interval_s: u64,
    /// Seconds over which the agents start; by default 5, or 500 agents a second if that is
    /// longer: 10,000 agents started in 5 s (a long-poll and a heartbeat each, over TLS) took
    /// the 2-core machine of BENCHMARKS.md half a minute and more to recover from.
    #[arg(long)]
    ramp_s: Option<u64>,
    /// The conductors' pids, for RSS and CPU, in the order of their URLs.
    #[arg(long = "conductor-pid")]
    conductor_pids: Vec<u32>,
    /// Pids whose CPU (theirs and their children's, e.g. a PostgreSQL server's) is the
    /// database's.
    #[arg(long = "database-pid")]
    database_pids: Vec<u32>,
    /// Writes ca.pem, conductor.pem and conductor.key (mode 0600; for 127.0.0.1) into this
    /// directory and exits.
    #[arg(long, value_name = "DIR")]
    write_pki: Option<PathBuf>,
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// A throwaway CA and the conductor's certificate for 127.0.0.1 that it signed.
fn write_pki(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tether bench CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca.self_signed(&ca_key)?;
    let server_key = KeyPair::generate()?;
    let server =
        CertificateParams::new(vec!["127.0.0.1".into()])?.signed_by(&server_key, &ca, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("conductor.pem"), server.pem())?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("conductor.key"))?
        .write_all(server_key.serialize_pem().as_bytes())?;
    Ok(())
}

/// A client builder that counts the connections it opens (and, over https, the TLS handshakes
/// it completes: each opened connection made one) in `opened`.
fn client(ca: Option<&Path>, opened: &Arc<AtomicU64>) -> anyhow::Result<reqwest::ClientBuilder> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .connector_layer(CountConnections(opened.clone()));
    let Some(ca) = ca else {
        return Ok(builder);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(builder.use_preconfigured_tls(config))
}

/// Counts the connections a client's connector completes.
#[derive(Clone)]
struct CountConnections(Arc<AtomicU64>);

impl<S> tower::Layer<S> for CountConnections {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner, self.0.clone())
    }
}

#[derive(Clone)]
struct Counted<S>(S, Arc<AtomicU64>);

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: R) -> Self::Future {
        let (connecting, opened) = (self.0.call(request), self.1.clone());
        Box::pin(async move {
            let connection = connecting.await?;
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(connection)
        })
    }
}

#[derive(Default)]
struct Stats {
    /// (ms into the measurement when sent, µs it took)
    heartbeat_us: Mutex<Vec<(u64, u64)>>,
    propagation_us: Mutex<Vec<u64>>,
    /// The part of `propagation_us` whose agent waits on another conductor than the operator's.
    cross_propagation_us: Mutex<Vec<u64>>,
    failures: AtomicU64,
    /// Failures by kind (what failed and why, without the URL), to say what went wrong.
    errors: Mutex<HashMap<String, u64>>,
    requests: AtomicU64,
    /// When the measurement began.
    epoch: std::sync::OnceLock<Instant>,
    /// node -> when the operator sent a change of its targets
    pending: Mutex<HashMap<Uuid, Instant>>,
}

struct Agent {
    node: Uuid,
    token: String,
}

impl Stats {
    fn fail(&self, what: &str, e: reqwest::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let kind = format!("{what}: {}", tether::agent::error_chain(&e.without_url()));
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The number of open file descriptors of `pid` (the conductor's are its connections, the
/// database and a few more).
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let cpu_ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some((rss_kib, cpu_ns))
}

/// CPU ticks of these processes and all their descendants, live ones and those waited for
/// (a PostgreSQL server: the postmaster and one backend per connection).
fn tree_cpu_ticks(roots: &[u32]) -> Option<u64> {
    if roots.is_empty() {
        return None;
    }
    let mut pending = roots.to_vec();
    let mut ticks = 0;
    while let Some(pid) = pending.pop() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: fields 3 onwards; utime, stime, cutime and
        // cstime are fields 14-17.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        ticks += fields
            .get(11..15)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .sum::<u64>();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
        {
            let children = task
                .ok()
                .and_then(|t| std::fs::read_to_string(t.path().join("children")).ok());
            pending.extend(
                children
                    .iter()
                    .flat_map(|c| c.split_whitespace())
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    Some(ticks)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.write_pki {
        return write_pki(dir);
    }
    let urls = args.urls.clone();
    let url = urls[0].clone();
    let admin_token = args.admin_token.clone().unwrap_or_default();
    for url in &urls {
        let host = reqwest::Url::parse(url)?;
        let loopback = matches!(
            host.host_str(),
            Some(h) if h == "localhost" || h.starts_with("127.") || h == "[::1]"
        );
        anyhow::ensure!(
            loopback,
            "the load generator only targets loopback addresses"
        );
    }
    let ca = args.ca_file.as_deref();
    let opened = Arc::new(AtomicU64::new(0));
    // Enrolment and the operator.
    let http = client(ca, &opened)?
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    // Heartbeats: a new connection each, or a few shared from a pool of their own.
    let heartbeats = match args.heartbeat_connections.as_str() {
        "pooled" => client(ca, &opened)?.pool_max_idle_per_host(usize::MAX),
        _ => client(ca, &opened)?.pool_max_idle_per_host(0),
    }
    .build()?;
    // Long-polls hold a connection each, kept alive from one poll to the next.
    let polls = client(ca, &opened)?
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let stats = Arc::new(Stats::default());

    // Enroll the fleet: nodes with provisioned tokens, 4 targets each.
    let setup = Instant::now();
    let limit = Arc::new(Semaphore::new(32));
    let mut enrolls = Vec::new();
    for i in 0..args.agents {
        let (http, url, admin, limit) = (
            http.clone(),
            url.clone(),
            admin_token.clone(),
            limit.clone(),
        );
        enrolls.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let token = format!("{:032x}", rand::random::<u128>());
            let mac = format!(
                "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                (i >> 24) & 0xff,
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            );
            let node: serde_json::Value = http
                .post(format!("{url}/v1/nodes"))
                .bearer_auth(&admin)
                .json(
                    &json!({"name": format!("load-{i}"), "addresses": [mac], "agent_token": token}),
                )
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let node: Uuid = node["uuid"].as_str().unwrap_or_default().parse()?;
            for lun in 0..4 {
                http.post(format!("{url}/v1/volume/targets"))
                    .bearer_auth(&admin)
                    .json(&target(node, &format!("vol-{lun}"), lun))
                    .send()
                    .await?
                    .error_for_status()?;
            }
            anyhow::Ok(Agent { node, token })
        }));
    }
    let mut agents = Vec::new();
    for e in enrolls {
        agents.push(e.await??);
    }
    let agents = Arc::new(agents);
    eprintln!(
        "enrolled {} nodes with 4 targets each in {:.1}s",
        args.agents,
        setup.elapsed().as_secs_f64()
    );

    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Agents start over the ramp, as a fleet coming up would.
    let ramp = Duration::from_secs(args.ramp_s.unwrap_or((args.agents as u64 / 500).max(5)));
    let stagger = ramp / args.agents.max(1) as u32;
    for (i, agent) in agents.iter().enumerate() {
        let polls = polls.clone();
        let conductor = i % urls.len();
        let (http, url, stats, measuring) = (
            heartbeats.clone(),
            urls[conductor].clone(),
            stats.clone(),
            measuring.clone(),
        );
        let (node, token) = (agent.node, agent.token.clone());
        let interval = Duration::from_secs(args.heartbeat_interval_s);
        let start_in = stagger * i as u32;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start_in).await;
            let poller = {
                let (http, url, stats, token, measuring) = (
                    polls.clone(),
                    url.clone(),
                    stats.clone(),
                    token.clone(),
                    measuring.clone(),
                );
                tokio::spawn(async move {
                    let mut since: Option<u64> = None;
                    loop {
                        let mut req = http
                            .get(format!("{url}/v1/nodes/{node}/volume/targets"))
                            .bearer_auth(&token)
                            .query(&[("detail", "true")]);
                        if let Some(g) = since {
                            req =
                                req.query(&[("since", g.to_string()), ("wait", "55".to_string())]);
                        }
                        stats.requests.fetch_add(1, Ordering::Relaxed);
                        match req.send().await.and_then(|r| r.error_for_status()) {
                            Ok(resp) => {
                                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                                let generation = body["generation"].as_u64().unwrap_or(0);
                                let arrived = Instant::now();
                                if since.is_some_and(|g| g != generation)
                                    && let Some(sent) = stats.pending.lock().unwrap().remove(&node)
                                    && measuring.load(Ordering::Relaxed)
                                {
                                    let took = (arrived - sent).as_micros() as u64;
                                    stats.propagation_us.lock().unwrap().push(took);
                                    if conductor != 0 {
                                        stats.cross_propagation_us.lock().unwrap().push(took);
                                    }
                                }
                                since = Some(generation);
                            }
                            Err(e) => {
                                stats.fail("long-poll", e);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                })
            };
            let report = json!({"agent_version": "load", "generation": 1, "connectors": [],
                "volumes": (0..4).map(|lun| json!({"target_uuid": Uuid::new_v4(),
                    "volume_id": format!("vol-{lun}"), "volume_type": "iscsi", "state": "attached",
                    "device_path": format!("/dev/disk/by-path/ip-192.0.2.10:3260-iscsi-\
                                            iqn.2003-01.org.example:t-lun-{lun}"),
                    "paths": [], "size_bytes": 1073741824u64,
                    "since": "2026-11-26T00:00:00Z"})).collect::<Vec<_>>(),
                "foreign": []});
            loop {
                let started = Instant::now();
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let result = http
                    .post(format!("{url}/v1/heartbeat/{node}"))
                    .bearer_auth(&token)
                    .json(&report)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
                // Reading the body to its end lets the connection go back to the pool.
                let result = match result {
                    Ok(resp) => resp.bytes().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(_) if measuring.load(Ordering::Relaxed) => {
                        let epoch = stats.epoch.get().copied().unwrap_or(started);
                        let at = started.saturating_duration_since(epoch).as_millis() as u64;
                        let took = started.elapsed().as_micros() as u64;
                        stats.heartbeat_us.lock().unwrap().push((at, took));
                    }
                    Ok(_) => {}
                    Err(e) => stats.fail("heartbeat", e),
                }
                let jitter = rand::random_range(0.8..=1.0);
                tokio::time::sleep(interval.mul_f64(jitter)).await;
                if poller.is_finished() {
                    return;
                }
            }
        }));
    }

    // Warm up: every agent started, and two full heartbeat intervals.
    let warm_up = ramp + 2 * Duration::from_secs(args.heartbeat_interval_s);
    tokio::time::sleep(warm_up).await;
    let conductors = &args.conductor_pids;
    let before: Vec<_> = conductors.iter().map(|&pid| proc_sample(pid)).collect();
    let database_before = tree_cpu_ticks(&args.database_pids);
    let before_self = proc_sample(std::process::id());
    let opened_before = opened.load(Ordering::Relaxed);
    let started = Instant::now();
    stats.epoch.get_or_init(|| started);
    measuring.store(true, Ordering::Relaxed);
    let mut max_rss: Vec<u64> = before.iter().map(|b| b.map(|b| b.0).unwrap_or(0)).collect();
    let mut max_fds = vec![0; conductors.len()];

    // The operator: every 100 ms one node's targets change (create, then delete next time).
    let mut created: HashMap<Uuid, String> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut changes = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        let agent = &agents[rand::random_range(0..agents.len())];
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats
            .pending
            .lock()
            .unwrap()
            .insert(agent.node, Instant::now());
        let result = match created.remove(&agent.node) {
            Some(target) => http
                .delete(format!("{url}/v1/volume/targets/{target}"))
                .bearer_auth(&admin_token)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ()),
            None => match http
                .post(format!("{url}/v1/volume/targets"))
                .bearer_auth(&admin_token)
                .json(&target(agent.node, &format!("extra-{changes}"), 10))
                .send()
                .await
                .and_then(|r| r.error_for_status())
            {
                Ok(resp) => {
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    if let Some(uuid) = body["uuid"].as_str() {
                        created.insert(agent.node, uuid.to_string());
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => changes += 1,
            Err(e) => stats.fail("operator", e),
        }
        for (i, &pid) in conductors.iter().enumerate() {
            if let Some((rss, _)) = proc_sample(pid) {
                max_rss[i] = max_rss[i].max(rss);
            }
            if let Some(fds) = open_fds(pid) {
                max_fds[i] = max_fds[i].max(fds);
            }
        }
    }
    let elapsed = started.elapsed();
    measuring.store(false, Ordering::Relaxed);
    let after: Vec<_> = conductors.iter().map(|&pid| proc_sample(pid)).collect();
    let database_after = tree_cpu_ticks(&args.database_pids);
    let after_self = proc_sample(std::process::id());
    let opened_measured = opened.load(Ordering::Relaxed) - opened_before;
    for t in &tasks {
        t.abort();
    }

    let timed = stats.heartbeat_us.lock().unwrap().clone();
    // Latency by 10 s of the measurement (by when each heartbeat was sent), to show stalls.
    for bucket in 0..elapsed.as_secs().div_ceil(10) {
        let mut in_bucket: Vec<u64> = timed
            .iter()
            .filter(|(at, _)| at / 10_000 == bucket)
            .map(|(_, took)| *took)
            .collect();
        in_bucket.sort_unstable();
        eprintln!(
            "heartbeats sent at {:>3}-{:>3} s: {:>6}, p50 / p99 / max {:.2} / {:.2} / {:.2} ms",
            bucket * 10,
            bucket * 10 + 10,
            in_bucket.len(),
            percentile(&in_bucket, 0.5),
            percentile(&in_bucket, 0.99),
            in_bucket
                .last()
                .map(|v| *v as f64 / 1000.0)
                .unwrap_or(f64::NAN)
        );
    }
    let mut hb: Vec<u64> = timed.iter().map(|(_, took)| *took).collect();
    hb.sort_unstable();
    let mut prop = stats.propagation_us.lock().unwrap().clone();
    prop.sort_unstable();
    let mut cross = stats.cross_propagation_us.lock().unwrap().clone();
    cross.sort_unstable();
    let cpu = |before: Option<(u64, u64)>, after: Option<(u64, u64)>| match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.1}",
            100.0 * (a.1 - b.1) as f64 / elapsed.as_nanos() as f64
        ),
        _ => "n/a".into(),
    };
    println!("agents: {}", args.agents);
    println!("tls: {}", if ca.is_some() { "yes" } else { "no" });
    println!("heartbeat_connections: {}", args.heartbeat_connections);
    println!("ramp_s: {}", ramp.as_secs());
    println!("warm_up_s: {}", warm_up.as_secs());
    println!("measured_s: {:.0}", elapsed.as_secs_f64());
    println!("heartbeats: {}", hb.len());
    println!("heartbeat_ms_p50: {:.2}", percentile(&hb, 0.50));
    println!("heartbeat_ms_p99: {:.2}", percentile(&hb, 0.99));
    println!(
        "heartbeat_ms_max: {:.2}",
        hb.last().map(|v| *v as f64 / 1000.0).unwrap_or(f64::NAN)
    );
    println!("assignment_changes: {changes}");
    println!("propagations_seen: {}", prop.len());
    println!("propagation_ms_p50: {:.2}", percentile(&prop, 0.50));
    println!("propagation_ms_p99: {:.2}", percentile(&prop, 0.99));
    if urls.len() > 1 {
        println!("conductors: {}", urls.len());
        println!("cross_conductor_propagations_seen: {}", cross.len());
        println!(
            "cross_conductor_propagation_ms_p50: {:.2}",
            percentile(&cross, 0.50)
        );
        println!(
            "cross_conductor_propagation_ms_p99: {:.2}",
            percentile(&cross, 0.99)
        );
    }
    println!("requests: {}", stats.requests.load(Ordering::Relaxed));
    println!(
        "failed_requests: {}",
        stats.failures.load(Ordering::Relaxed)
    );
    let mut errors: Vec<_> = stats.errors.lock().unwrap().clone().into_iter().collect();
    errors.sort_unstable_by_key(|(_, count)| std::cmp::Reverse(*count));
    for (kind, count) in errors {
        eprintln!("failed {count}x: {kind}");
    }
    // With several conductors: the largest of them, then each.
    let rss_mib: Vec<f64> = (0..conductors.len())
        .map(|i| max_rss[i].max(after[i].map(|a| a.0).unwrap_or(0)) as f64 / 1024.0)
        .collect();
    let cpus: Vec<String> = (0..conductors.len())
        .map(|i| cpu(before[i], after[i]))
        .collect();
    let largest = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    println!("conductor_rss_max_mib: {:.1}", largest(&rss_mib));
    let cpu_values: Vec<f64> = cpus.iter().filter_map(|c| c.parse().ok()).collect();
    match cpu_values.len() {
        0 => println!("conductor_cpu_percent_of_one_core: n/a"),
        _ => println!(
            "conductor_cpu_percent_of_one_core: {:.1}",
            largest(&cpu_values)
        ),
    }
    println!(
        "conductor_fds_max: {}",
        max_fds.iter().max().copied().unwrap_or(0)
    );
    if conductors.len() > 1 {
        for i in 0..conductors.len() {
            println!("conductor_{}_rss_max_mib: {:.1}", i + 1, rss_mib[i]);
            println!("conductor_{}_cpu_percent_of_one_core: {}", i + 1, cpus[i]);
        }
    }
    if let (Some(b), Some(a)) = (database_before, database_after) {
        let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        println!(
            "database_cpu_percent_of_one_core: {:.1}",
            100.0 * a.saturating_sub(b) as f64 / ticks_per_s / elapsed.as_secs_f64()
        );
    }
    println!("connections_opened_measured: {opened_measured}");
    println!(
        "connections_opened_total: {}",
        opened.load(Ordering::Relaxed)
    );
    println!(
        "loadgen_cpu_percent_of_one_core: {}",
        cpu(before_self, after_self)
    );
    std::process::exit(0);
}

fn target(node: Uuid, volume_id: &str, lun: u32) -> serde_json::Value {
    json!({"node_uuid": node, "volume_type": "iscsi", "volume_id": volume_id,
           "properties": {"target_portal": "192.0.2.10:3260",
                          "target_iqn": format!("iqn.2003-01.org.example:{node}"),
                          "target_lun": lun, "auth_method": "CHAP", "auth_username": "load",
                          "auth_password": "load-secret-1234"}})
}
