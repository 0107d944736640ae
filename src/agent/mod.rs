//! The node agent: identity -> lookup -> long-poll -> reconcile -> attach/detach -> report.
//!
//! One task owns all volume state and runs [`reconcile::reconcile`] after every event; host
//! operations run on blocking threads and report back over a channel. Two helper tasks
//! long-poll the targets and send heartbeats.

pub mod client;
pub mod identity;
pub mod metrics;
pub mod reconcile;
pub mod record;
pub mod volume;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::backend::{
    self, Attachment, BlockHost, DetachOutcome, ErrorKind, Handle, HostError, Ownership,
    SessionKey, VolumeBackend,
};
use crate::notify;
use crate::protocol::target::{self, TargetSpec};
use crate::protocol::{
    ErrorReport, ForeignAttachment, Heartbeat, MASK, Secret, VolumeReport, VolumeTarget, timestamp,
};
use client::{Client, ClientError};
use metrics::{AgentMetrics, DetachResult};
use reconcile::{Action, Assignment, Desired, DesiredTarget, reconcile};
use record::{LocalStatus, OwnedVolume, Record, StateDir};
use volume::{Millis, Volume, retry_delay};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the agent needs from its configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub conductor_url: String,
    pub node_uuid: Option<Uuid>,
    pub token: Option<Secret>,
    pub state_dir: PathBuf,
    pub host_root: PathBuf,
    pub heartbeat_interval: Option<Duration>,
    pub poll_wait: Duration,
    pub device_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Where to serve metrics; none when unset.
    pub metrics_listen: Option<crate::metrics::LoopbackAddr>,
}

impl Settings {
    pub fn from_config(c: &crate::config::AgentConfig) -> anyhow::Result<Self> {
        let token = match (&c.token, &c.token_file) {
            (Some(t), _) => Some(Secret::new(t.clone())),
            (None, Some(path)) => Some(Secret::new(
                crate::fsutil::read_trimmed(path)
                    .with_context(|| format!("reading agent.token_file {}", path.display()))?,
            )),
            (None, None) => None,
        };
        Ok(Self {
            conductor_url: c.conductor_url.clone(),
            node_uuid: c.node_uuid,
            token,
            state_dir: c.state_dir.clone(),
            host_root: c.host_root.clone(),
            heartbeat_interval: c.heartbeat_interval_s.map(Duration::from_secs),
            poll_wait: Duration::from_secs(c.poll_wait_s),
            device_timeout: Duration::from_secs(c.device_timeout_s),
            retry_initial: Duration::from_secs(c.retry_initial_s),
            retry_max: Duration::from_secs(c.retry_max_s),
            metrics_listen: c.metrics_listen,
        })
    }
}

/// The host as the agent sees it: one backend per volume type, plus block devices and mounts.
#[derive(Clone)]
pub struct Host {
    pub iscsi: Arc<dyn VolumeBackend>,
    pub rbd: Arc<dyn VolumeBackend>,
    pub block: Arc<dyn BlockHost>,
}

impl Host {
    /// The whole host simulated in memory.
    pub fn simulated(kernel: Arc<backend::simulated::SimKernel>) -> Self {
        Self {
            iscsi: Arc::new(backend::iscsi::IscsiBackend::new(
                kernel.clone(),
                kernel.clone(),
            )),
            rbd: Arc::new(backend::rbd::RbdBackend::new(
                kernel.clone(),
                kernel.clone(),
            )),
            block: Arc::new(kernel),
        }
    }

    /// The host's open-iscsi, udev and mount tools under `root` (`/` on a real node).
    pub fn system(root: &std::path::Path) -> Result<Self, HostError> {
        let block = Arc::new(backend::block::SystemBlock::new(root)?);
        let missing = backend::cmd::missing(root, &["blkid", "blockdev", "mount", "umount"]);
        if !missing.is_empty() {
            tracing::warn!(tools = ?missing, "tools for mounts and detach are missing; volumes that need them will fail");
        }
        let iscsi: Arc<dyn VolumeBackend> = match backend::iscsi::iscsiadm::SystemIscsi::new(root) {
            Ok(host) => Arc::new(
                backend::iscsi::IscsiBackend::new(host, block.clone()).with_multipath(
                    backend::iscsi::multipath::SystemMultipath::new(root)
                        .map(|m| Box::new(m) as Box<dyn backend::iscsi::multipath::MultipathHost>),
                ),
            ),
            Err(e) => {
                tracing::warn!(kind = %e.kind, error = %e, "iSCSI volumes cannot be attached on this node");
                Arc::new(backend::Unavailable(e))
            }
        };
        let rbd = Arc::new(backend::rbd::RbdBackend::new(
            backend::rbd::system::SystemRbd::new(root, &root.join("run/tether")),
            block.clone(),
        ));
        Ok(Self { iscsi, rbd, block })
    }

    fn backend(&self, volume_type: &str) -> &Arc<dyn VolumeBackend> {
        if volume_type == "rbd" {
            &self.rbd
        } else {
            &self.iscsi
        }
    }

    fn foreign(&self, owned: &[&Attachment]) -> Vec<ForeignAttachment> {
        let mut all = Vec::new();
        for backend in [&self.iscsi, &self.rbd] {
            match backend.foreign(owned) {
                Ok(found) => all.extend(found),
                Err(e) => {
                    tracing::warn!(kind = %e.kind, error = %e, "cannot list attachments on the host")
                }
            }
        }
        all
    }
}

/// The monotonic clock of the pure core.
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Millis {
        self.0.elapsed().as_millis() as Millis
    }

    fn instant(&self, at: Millis) -> Instant {
        self.0 + Duration::from_millis(at)
    }
}

enum Event {
    Assignment(TargetsAnswer),
    /// A host operation finished, with how long it took.
    Done(Uuid, Box<OpResult>, Duration),
    Foreign(Vec<ForeignAttachment>),
}

struct TargetsAnswer {
    generation: u64,
    targets: Vec<VolumeTarget>,
}

/// An attach that failed, with what stayed attached despite it (a device that did not mount).
struct AttachFailure {
    error: HostError,
    leftover: Option<Box<Attachment>>,
}

enum OpResult {
    Attached(Result<Attachment, AttachFailure>),
    Detached(Result<DetachOutcome, HostError>),
}

/// Runs the agent until `shutdown` resolves. Stopping never detaches anything.
pub async fn run(
    settings: Settings,
    host: Host,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = StateDir::new(&settings.state_dir);
    state.create().with_context(|| {
        format!(
            "creating the state directory {}",
            settings.state_dir.display()
        )
    })?;
    let identity = identity::collect(&settings.host_root);
    tracing::info!(macs = ?identity.macs, iqn = ?identity.initiator_iqn, "identified the node");
    let client = Client::new(&settings.conductor_url)?;
    let clock = Clock(Instant::now());
    let metrics = Arc::new(AgentMetrics::new());
    let metrics_server = match settings.metrics_listen {
        Some(addr) => metrics::start(addr, metrics.clone()).await,
        None => None,
    };

    let mut agent = Agent {
        volumes: recover(&host, state.load_record()).await,
        specs: BTreeMap::new(),
        desired: Desired::Unknown,
        host: host.clone(),
        settings: settings.clone(),
        state,
        foreign: Vec::new(),
        connectors: identity.connectors(),
        in_flight: 0,
        conductor_note: "not contacted yet".into(),
        node: None,
        metrics: metrics.clone(),
    };
    agent.persist();
    agent.publish_status(None);
    // Volumes recovered from the record show while the conductor is looked up.
    metrics.set_volumes(agent.volumes.values().map(Volume::state));

    tokio::pin!(shutdown);
    let mut watchdog = notify::Watchdog::from_env();
    notify::status("looking the node up at the conductor");
    let node = {
        let looking_up = lookup(&client, &settings, &identity.macs, &agent.state);
        tokio::pin!(looking_up);
        loop {
            tokio::select! {
                found = &mut looking_up => break found,
                _ = watchdog.tick() => notify::watchdog(),
                _ = &mut shutdown => {
                    tracing::info!("stopped before the conductor answered; nothing was detached");
                    return Ok(());
                }
            }
        }
    };
    agent.node = Some(node.clone());
    agent.conductor_note = "lookup succeeded".into();

    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let (report_tx, report_rx) = watch::channel(agent.report());
    let poller = tokio::spawn(poll_targets(
        client.clone(),
        node.clone(),
        settings.poll_wait,
        events_tx.clone(),
    ));
    let heartbeats = tokio::spawn(send_heartbeats(
        client.clone(),
        node.clone(),
        settings.heartbeat_interval,
        report_rx,
        metrics.clone(),
    ));
    agent.refresh_foreign(&events_tx);

    let mut next_wake: Option<Millis> = None;
    let mut ready = false;
    loop {
        let wake = async {
            match next_wake {
                Some(at) => tokio::time::sleep_until(clock.instant(at).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Assignment(answer)) => agent.apply_assignment(answer),
                Some(Event::Done(uuid, result, took)) => {
                    agent.finish(uuid, *result, took, clock.now());
                    agent.refresh_foreign(&events_tx);
                }
                Some(Event::Foreign(found)) => agent.foreign = found,
                None => break,
            },
            _ = wake => {}
            // Pinged from this loop, so a hung loop is restarted by systemd.
            _ = watchdog.tick() => notify::watchdog(),
            _ = &mut shutdown => break,
        }
        let plan = reconcile(&agent.desired, &agent.volumes, clock.now());
        next_wake = plan.next_wake;
        for action in plan.actions {
            agent.start(action, &events_tx);
        }
        agent.persist();
        metrics.set_volumes(agent.volumes.values().map(Volume::state));
        let report = agent.report();
        report_tx.send_if_modified(|current| {
            let changed = *current != report;
            *current = report.clone();
            changed
        });
        agent.publish_status(Some(&report));
        if !ready && agent.desired.generation().is_some() {
            // Ready once the first assignment has been reconciled: units ordered after the
            // agent start with their volumes on the way.
            ready = true;
            notify::ready(&format!("{} volumes", agent.volumes.len()));
        }
    }

    notify::stopping();
    poller.abort();
    // Let operations already running finish so that what they attach is recorded as ours.
    let drain = tokio::time::timeout(Duration::from_secs(30), async {
        while agent.in_flight > 0 {
            match events.recv().await {
                Some(Event::Done(uuid, result, took)) => {
                    agent.finish(uuid, *result, took, clock.now())
                }
                Some(_) => {}
                None => break,
            }
        }
    });
    if drain.await.is_err() {
        tracing::warn!(
            in_flight = agent.in_flight,
            "stopping with host operations still running"
        );
    }
    agent.persist();
    let report = agent.report();
    agent.publish_status(Some(&report));
    heartbeats.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    tracing::info!("agent stopped; volumes stay attached");
    Ok(())
}

#[derive(Clone)]
struct NodeLogin {
    uuid: Uuid,
    name: String,
    token: Secret,
}

/// Looks the node up, with jittered exponential backoff, until it is found.
async fn lookup(
    client: &Client,
    settings: &Settings,
    macs: &[String],
    state: &StateDir,
) -> NodeLogin {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match client.lookup(macs, settings.node_uuid).await {
            Ok(found) => {
                let issued =
                    (found.config.agent_token != MASK).then(|| found.config.agent_token.clone());
                if let Some(token) = &issued
                    && let Err(e) = state.save_token(token)
                {
                    tracing::error!(error = %e, "cannot save the issued agent token in the state directory");
                }
                let token = settings
                    .token
                    .clone()
                    .or_else(|| issued.map(Secret::new))
                    .or_else(|| state.load_token().map(Secret::new));
                if let Some(token) = token {
                    tracing::info!(node = %found.node.uuid, name = %found.node.name, "conductor knows this node");
                    return NodeLogin {
                        uuid: found.node.uuid,
                        name: found.node.name,
                        token,
                    };
                }
                tracing::error!(
                    node = %found.node.uuid,
                    kind = "token_unavailable",
                    "the node's token was issued before and is not in the state directory; run `tether ctl node reset-token {}` or provision the token in the agent's configuration",
                    found.node.uuid
                );
            }
            Err(e) => tracing::warn!(kind = e.kind(), error = %e, "lookup failed; retrying"),
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(60));
        tokio::time::sleep(delay).await;
    }
}

/// Long-polls the node's targets. Only successful answers are passed on: an unreachable
/// or failing conductor leaves the last answer in force.
async fn poll_targets(
    client: Client,
    node: NodeLogin,
    wait: Duration,
    events: mpsc::Sender<Event>,
) {
    let mut since = None;
    let mut failures = 0u32;
    loop {
        match client.targets(node.uuid, &node.token, since, wait).await {
            Ok(answer) => {
                failures = 0;
                if since != Some(answer.generation) {
                    since = Some(answer.generation);
                    let event = Event::Assignment(TargetsAnswer {
                        generation: answer.generation,
                        targets: answer.targets,
                    });
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(
                    failures,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    jitter(),
                );
                log_client_error(
                    &e,
                    "polling targets failed; keeping the last assignment",
                    delay,
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn log_client_error(e: &ClientError, what: &str, retry_in: Duration) {
    tracing::warn!(kind = e.kind(), error = %e, retry_in_ms = retry_in.as_millis() as u64, "{what}");
}

fn jitter() -> f64 {
    rand::random_range(0.5..=1.0)
}

/// Sends the report when it changes (coalesced) and on a jittered interval.
async fn send_heartbeats(
    client: Client,
    node: NodeLogin,
    fixed: Option<Duration>,
    mut reports: watch::Receiver<Heartbeat>,
    metrics: Arc<AgentMetrics>,
) {
    let mut interval = fixed.unwrap_or(Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        let report = reports.borrow_and_update().clone();
        let sent = client.heartbeat(node.uuid, &node.token, &report).await;
        metrics.heartbeat(sent.is_ok());
        let delay = match sent {
            Ok(accepted) => {
                failures = 0;
                if fixed.is_none() {
                    interval = Duration::from_secs(accepted.heartbeat_interval_s.max(1));
                }
                interval.mul_f64(rand::random_range(0.8..=1.0))
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(failures, Duration::from_secs(1), interval, jitter());
                log_client_error(&e, "heartbeat failed", delay);
                delay
            }
        };
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Rebuilds volume state from the ownership record and what the host really has.
async fn recover(host: &Host, record: Record) -> BTreeMap<Uuid, Volume> {
    let host = host.clone();
    tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        let mut volumes = BTreeMap::new();
        for (uuid, owned) in record.volumes {
            let backend = host.backend(owned.attachment.volume_type());
            match backend.is_present(&owned.attachment) {
                Ok(true) => {
                    tracing::info!(target_uuid = %uuid, volume_id = %owned.volume_id, device = %owned.attachment.device.device_path, "volume still attached from before");
                    volumes.insert(uuid, Volume::recovered(uuid, owned.volume_id, owned.attachment, now));
                }
                Ok(false) => {
                    tracing::info!(target_uuid = %uuid, volume_id = %owned.volume_id, "volume from before is no longer on the host; it will attach again when assigned");
                }
                Err(e) => {
                    // Unsure: keep it as ours rather than risk treating it as foreign or re-attaching.
                    tracing::warn!(target_uuid = %uuid, kind = %e.kind, error = %e, "cannot check a recorded volume; keeping it");
                    volumes.insert(uuid, Volume::recovered(uuid, owned.volume_id, owned.attachment, now));
                }
            }
        }
        volumes
    })
    .await
    .unwrap_or_default()
}

struct Agent {
    volumes: BTreeMap<Uuid, Volume>,
    specs: BTreeMap<Uuid, TargetSpec>,
    desired: Desired,
    host: Host,
    settings: Settings,
    state: StateDir,
    foreign: Vec<ForeignAttachment>,
    connectors: Vec<crate::protocol::Connector>,
    in_flight: usize,
    conductor_note: String,
    node: Option<NodeLogin>,
    metrics: Arc<AgentMetrics>,
}

impl Agent {
    fn apply_assignment(&mut self, answer: TargetsAnswer) {
        let mut targets = Vec::new();
        self.specs.clear();
        for t in answer.targets {
            let spec = target::parse(&t);
            if let Ok(spec) = &spec {
                self.specs.insert(t.uuid, spec.clone());
            }
            targets.push(DesiredTarget {
                uuid: t.uuid,
                volume_id: t.volume_id,
                volume_type: t.volume_type,
                spec,
            });
        }
        tracing::info!(
            generation = answer.generation,
            targets = targets.len(),
            "assignment received"
        );
        self.conductor_note = format!("assignment generation {}", answer.generation);
        self.desired = Desired::Known(Assignment {
            generation: answer.generation,
            targets,
        });
    }

    fn ownership_for(&self, uuid: Uuid) -> Ownership {
        let mut ownership = Ownership::default();
        for (other, volume) in &self.volumes {
            let Some(Attachment {
                handle: Handle::Iscsi { paths, .. },
                ..
            }) = &volume.attachment
            else {
                continue;
            };
            for path in paths {
                if path.session_created {
                    ownership.owned_sessions.insert(path.session_key());
                }
                if *other != uuid {
                    ownership.sessions_used_by_others.insert(path.session_key());
                }
            }
        }
        ownership
    }

    fn start(&mut self, action: Action, events: &mpsc::Sender<Event>) {
        let now = SystemTime::now();
        match action {
            Action::Attach(uuid) => {
                let Some(spec) = self.specs.get(&uuid).cloned() else {
                    return;
                };
                let volume = self.track(uuid, now);
                if let Err(e) = volume.start_attach(spec.login_keys(), now) {
                    tracing::error!(error = %e, "reconcile asked for an impossible attach");
                    return;
                }
                tracing::info!(target_uuid = %uuid, volume_id = %spec.volume_id, volume_type = spec.volume_type(), state = "attaching", "attaching");
                let ownership = self.ownership_for(uuid);
                let host = self.host.clone();
                let timeout = self.settings.device_timeout;
                self.spawn(uuid, events, move || {
                    OpResult::Attached(attach(&host, &spec, &ownership, timeout))
                });
            }
            Action::Detach(uuid) => {
                let ownership = self.ownership_for(uuid);
                let Some(volume) = self.volumes.get_mut(&uuid) else {
                    return;
                };
                let Some(attachment) = volume.attachment.clone() else {
                    return;
                };
                if let Err(e) = volume.start_detach(now) {
                    tracing::error!(error = %e, "reconcile asked for an impossible detach");
                    return;
                }
                tracing::info!(target_uuid = %uuid, volume_id = %volume.volume_id, state = "detaching", "detaching: the conductor no longer assigns it");
                let host = self.host.clone();
                self.spawn(uuid, events, move || {
                    OpResult::Detached(detach(&host, &attachment, &ownership))
                });
            }
            Action::Forget(uuid) => {
                self.volumes.remove(&uuid);
            }
            Action::Reject(uuid, error) => {
                let metrics = self.metrics.clone();
                let volume = self.track(uuid, now);
                tracing::warn!(target_uuid = %uuid, volume_id = %volume.volume_id, kind = %error.kind, error = %error.message, state = "failed", "target rejected");
                metrics.rejected(&volume.volume_type, &error.kind);
                if let Err(e) = volume.reject(error, now) {
                    tracing::error!(error = %e, "reconcile asked for an impossible reject");
                }
            }
            Action::Keep(uuid) => {
                if let Some(volume) = self.volumes.get_mut(&uuid) {
                    tracing::info!(target_uuid = %uuid, volume_id = %volume.volume_id, "assigned again; keeping it attached");
                    let _ = volume.reassigned(now);
                }
            }
        }
    }

    /// The volume of a desired target, tracked from now on if it is new.
    fn track(&mut self, uuid: Uuid, now: SystemTime) -> &mut Volume {
        let desired = self.desired.target(uuid);
        self.volumes.entry(uuid).or_insert_with(|| {
            let desired = desired.expect("reconcile acts only on desired targets when it adds one");
            Volume::new(
                uuid,
                desired.volume_id.clone(),
                desired.volume_type.clone(),
                now,
            )
        })
    }

    fn spawn(
        &mut self,
        uuid: Uuid,
        events: &mpsc::Sender<Event>,
        op: impl FnOnce() -> OpResult + Send + 'static,
    ) {
        self.in_flight += 1;
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = op();
            let took = started.elapsed();
            let _ = events.blocking_send(Event::Done(uuid, Box::new(result), took));
        });
    }

    fn refresh_foreign(&self, events: &mpsc::Sender<Event>) {
        let owned: Vec<Attachment> = self
            .volumes
            .values()
            .filter_map(|v| v.attachment.clone())
            .collect();
        let host = self.host.clone();
        let events = events.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&Attachment> = owned.iter().collect();
            let _ = events.blocking_send(Event::Foreign(host.foreign(&refs)));
        });
    }

    fn retry_at(&self, failures: u32, now: Millis) -> Millis {
        let delay = retry_delay(
            failures + 1,
            self.settings.retry_initial,
            self.settings.retry_max,
            jitter(),
        );
        now + delay.as_millis() as Millis
    }

    fn finish(&mut self, uuid: Uuid, result: OpResult, took: Duration, now_ms: Millis) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = SystemTime::now();
        let Some(volume) = self.volumes.get(&uuid) else {
            return;
        };
        let retry_at = self.retry_at(volume.failures, now_ms);
        let volume = self.volumes.get_mut(&uuid).expect("checked above");
        let metrics = &self.metrics;
        let volume_type = volume.volume_type.as_str();
        let outcome = match result {
            OpResult::Attached(Ok(attachment)) => {
                metrics.attached(volume_type, took, None);
                tracing::info!(target_uuid = %uuid, volume_id = %volume.volume_id, device = %attachment.device.device_path,
                    mountpoint = ?attachment.mount.as_ref().map(|m| &m.path), state = "attached", "attached");
                volume.attach_succeeded(attachment, now)
            }
            OpResult::Attached(Err(AttachFailure { error, leftover })) => {
                tracing::warn!(target_uuid = %uuid, volume_id = %volume.volume_id, kind = %error.kind, error = %error.message,
                    retry_in_ms = retry_at.saturating_sub(now_ms), state = "failed", "attach failed");
                metrics.attached(volume_type, took, Some(error.kind.as_str()));
                volume.attach_failed(report(&error), leftover.map(|a| *a), retry_at, now)
            }
            OpResult::Detached(Ok(DetachOutcome::Detached { sessions_kept })) => {
                tracing::info!(target_uuid = %uuid, volume_id = %volume.volume_id, "detached");
                metrics.detached(volume_type, took, DetachResult::Ok, None);
                let done = volume.detach_succeeded();
                self.volumes.remove(&uuid);
                self.hand_over_sessions(sessions_kept);
                done
            }
            OpResult::Detached(Ok(DetachOutcome::Blocked { holder })) => {
                tracing::warn!(target_uuid = %uuid, volume_id = %volume.volume_id, holder = %holder, state = "detach_blocked",
                    "not detaching: the device is in use");
                metrics.detached(
                    volume_type,
                    took,
                    DetachResult::Blocked,
                    Some(ErrorKind::DeviceInUse.as_str()),
                );
                let reason = ErrorReport {
                    kind: ErrorKind::DeviceInUse.to_string(),
                    message: format!(
                        "the device is in use ({holder}); stop using it and the agent detaches it"
                    ),
                };
                volume.detach_blocked(reason, retry_at, now)
            }
            OpResult::Detached(Err(error)) => {
                tracing::warn!(target_uuid = %uuid, volume_id = %volume.volume_id, kind = %error.kind, error = %error.message, state = "failed", "detach failed");
                metrics.detached(
                    volume_type,
                    took,
                    DetachResult::Failed,
                    Some(error.kind.as_str()),
                );
                volume.detach_failed(report(&error), retry_at, now)
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "an operation finished in an unexpected state");
        }
    }

    /// A detached volume created sessions that others still use: one of them owns them now.
    fn hand_over_sessions(&mut self, sessions: Vec<SessionKey>) {
        for key in sessions {
            let heir = self
                .volumes
                .values_mut()
                .find_map(|v| match &mut v.attachment {
                    Some(Attachment {
                        handle: Handle::Iscsi { paths, .. },
                        ..
                    }) => paths.iter_mut().find(|p| p.session_key() == key),
                    _ => None,
                });
            if let Some(path) = heir {
                path.session_created = true;
            }
        }
    }

    fn persist(&self) {
        let record = Record {
            version: 1,
            volumes: self
                .volumes
                .iter()
                .filter_map(|(uuid, v)| {
                    v.attachment.clone().map(|attachment| {
                        (
                            *uuid,
                            OwnedVolume {
                                volume_id: v.volume_id.clone(),
                                attachment,
                            },
                        )
                    })
                })
                .collect(),
        };
        if let Err(e) = self.state.save_record(&record) {
            tracing::error!(error = %e, "cannot write the ownership record");
        }
    }

    fn report(&self) -> Heartbeat {
        let volumes = self
            .volumes
            .values()
            .map(|v| {
                let attachment = v.attachment.as_ref();
                VolumeReport {
                    target_uuid: v.target_uuid,
                    volume_id: v.volume_id.clone(),
                    volume_type: v.volume_type.clone(),
                    state: v.state(),
                    device_path: attachment.map(|a| a.device.device_path.clone()),
                    paths: attachment.map(|a| a.paths.clone()).unwrap_or_default(),
                    size_bytes: attachment.map(|a| a.device.size_bytes),
                    wwn: attachment.and_then(|a| a.device.wwn.clone()),
                    mountpoint: attachment
                        .and_then(|a| a.mount.as_ref())
                        .map(|m| m.path.display().to_string()),
                    error: v.error().cloned(),
                    since: timestamp(v.since),
                }
            })
            .collect();
        Heartbeat {
            agent_version: AGENT_VERSION.to_string(),
            generation: self.desired.generation(),
            connectors: self.connectors.clone(),
            volumes,
            foreign: self.foreign.clone(),
        }
    }

    fn publish_status(&self, report: Option<&Heartbeat>) {
        let status = LocalStatus {
            node_uuid: self.node.as_ref().map(|n| n.uuid),
            node_name: self.node.as_ref().map(|n| n.name.clone()),
            conductor_url: self.settings.conductor_url.clone(),
            conductor: self.conductor_note.clone(),
            updated_at: timestamp(SystemTime::now()),
            report: report.cloned().unwrap_or_else(|| self.report()),
        };
        if let Err(e) = self.state.save_status(&status) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }
}

fn report(e: &HostError) -> ErrorReport {
    ErrorReport {
        kind: e.kind.to_string(),
        message: e.message.clone(),
    }
}

fn attach(
    host: &Host,
    spec: &TargetSpec,
    ownership: &Ownership,
    timeout: Duration,
) -> Result<Attachment, AttachFailure> {
    let backend = host.backend(spec.volume_type());
    let mut attachment =
        backend
            .attach(spec, ownership, timeout)
            .map_err(|error| AttachFailure {
                error,
                leftover: None,
            })?;
    if let Some(mount) = &spec.mount {
        match backend::block::mount::ensure_mounted(
            host.block.as_ref(),
            &attachment.device,
            mount,
            spec.read_only,
        ) {
            Ok(record) => attachment.mount = Some(record),
            // The device stays attached and owned; the mount is retried with the volume.
            Err(error) => {
                return Err(AttachFailure {
                    error,
                    leftover: Some(Box::new(attachment)),
                });
            }
        }
    }
    Ok(attachment)
}

fn detach(
    host: &Host,
    attachment: &Attachment,
    ownership: &Ownership,
) -> Result<DetachOutcome, HostError> {
    if let Some(holder) = backend::block::mount::release(host.block.as_ref(), attachment)? {
        return Ok(DetachOutcome::Blocked { holder });
    }
    host.backend(attachment.volume_type())
        .detach(attachment, ownership)
}
