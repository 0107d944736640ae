//! The node agent: identity -> lookup -> long-poll -> reconcile -> attach/detach -> report.
//!
//! One task owns all volume state ([`executor`]) and runs the pure [`reconcile`] after every
//! event; [`apply`] turns each action into a host operation, which runs on a blocking thread
//! and reports back over a channel. [`tasks`] long-poll the targets and send heartbeats.

mod apply;
mod backends;
mod client;
mod conductors;
mod executor;
mod handover;
mod health;
pub(crate) mod identity;
mod metrics;
mod reconcile;
mod record;
mod recovery;
mod target_cache;
mod tasks;
mod volume;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::config::AgentConfig;
use crate::notify;
use crate::protocol::{ForeignAttachment, Heartbeat, Secret};
pub use backends::Backends;
use client::Client;
pub use client::{error_chain, trusting};
pub use conductors::{Resolve, SystemResolver};
use executor::{Agent, OpResult};
use metrics::AgentMetrics;
use reconcile::{Action, Assignment, Desired, DesiredTarget, reconcile};
pub use record::{LocalStatus, StateDir};
pub use target_cache::TARGETS_DIR;
use target_cache::TargetCache;
use tasks::NodeLogin;
use volume::Millis;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// What wakes the main loop.
enum Event {
    /// The conductor knows the node: heartbeats can start.
    LookedUp(NodeLogin),
    /// A successful answer from the conductor, its targets validated.
    Assignment(Assignment),
    /// A host operation finished, with how long it took.
    Done(Uuid, Box<OpResult>, Duration),
    Foreign(Vec<ForeignAttachment>),
    Health(health::Health),
}

/// Runs the agent until `shutdown` resolves. Stopping never detaches anything.
pub async fn run(
    config: AgentConfig,
    backends: Backends,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_resolver(config, backends, Arc::new(SystemResolver), shutdown).await
}

/// [`run`], resolving the conductors' names with `resolver`.
pub async fn run_with_resolver(
    config: AgentConfig,
    mut backends: Backends,
    resolver: Arc<dyn Resolve>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    backends.set_mount_policy(
        config.mount_prefixes.clone(),
        config.mount_allow_suid_dev,
        config.state_dir.clone(),
    );
    let provisioned_token = config.provisioned_token()?;
    let state = StateDir::new(&config.state_dir);
    state.create().with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;
    let identity = identity::collect(&config.host_root);
    tracing::info!(macs = ?identity.macs, iqn = ?identity.initiator_iqn, "identified the node");
    let metrics = Arc::new(AgentMetrics::new());
    let client = Client::new(
        &config.conductor_urls,
        config.conductor_ca_file.as_deref(),
        resolver,
        metrics.conductor(),
    )?;
    for url in &config.conductor_urls {
        if crate::config::conductor_transport(url)
            == Ok(crate::config::Transport::Plain { loopback: false })
        {
            tracing::warn!(
                kind = "insecure_http",
                conductor = %url,
                "agent.allow_insecure_http is set: the token and every volume's secrets cross \
                 the network in clear, and anyone in the path can hand this node targets"
            );
        }
    }
    let metrics_server = match config.metrics_listen {
        Some(addr) => metrics::start(addr, metrics.clone()).await,
        None => None,
    };
    let handed_over = StateDir::new(config.host_root.join(handover::HANDOVER_DIR));
    match handover::adopt(
        &state,
        &handed_over,
        &config.conductor_urls,
        config.node_uuid,
    )? {
        handover::Handover::Absent => {}
        handover::Handover::Adopted { volumes, token } => tracing::info!(
            volumes,
            token,
            from = %handed_over.path.display(),
            "adopted what the initramfs agent attached"
        ),
        handover::Handover::Refused(reason) => tracing::warn!(
            kind = "handover_refused",
            from = %handed_over.path.display(),
            %reason,
            "not adopting what the initramfs agent attached: it stays foreign and is never \
             detached by this agent"
        ),
    }
    let record = state.load_record()?;
    let remembered = remembered_targets(&config, &record).await;
    let recovered = recovery::recover(&backends, record).await;
    let conductor_in_use = client.in_use();
    let mut agent = Agent::new(
        recovered,
        backends,
        config.clone(),
        state,
        identity.connectors(),
        metrics.clone(),
        conductor_in_use.borrow().clone(),
    );
    agent.remember(remembered);

    tokio::pin!(shutdown);
    let ready_sent = Arc::new(AtomicBool::new(false));
    let ready_timer = tokio::spawn(ready_without_conductor(
        config.ready_timeout,
        ready_sent.clone(),
    ));
    let mut watchdog = notify::Watchdog::from_env();
    notify::status("looking the node up at the conductor");
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let (report_tx, _) = watch::channel(agent.report());
    // Looked up beside the main loop: remembered volumes attach while the lookup retries.
    let conductor = tokio::spawn(talk_to_conductor(
        client.clone(),
        Lookup {
            node_uuid: config.node_uuid,
            provisioned: provisioned_token,
            macs: identity.lookup_macs().to_vec(),
            state: StateDir::new(&config.state_dir),
        },
        config.poll_wait,
        events_tx.clone(),
    ));
    let mut heartbeats = Heartbeats {
        client,
        interval: config.heartbeat_interval,
        metrics,
        task: None,
    };
    agent.refresh_foreign(&events_tx);
    let (watched_tx, watched) = watch::channel(agent.watched());
    health::watch_paths(
        agent.backends.clone(),
        watched,
        events_tx.clone(),
        health::HEALTH_INTERVAL,
    )
    .context("starting the path health thread")?;
    let clock = Clock(Instant::now());
    let channels = Channels {
        events: &mut events,
        events_tx: &events_tx,
        report_tx: &report_tx,
        watched_tx: &watched_tx,
        conductor: conductor_in_use,
    };
    main_loop(
        &mut agent,
        &clock,
        channels,
        &mut heartbeats,
        &mut watchdog,
        &mut shutdown,
        &ready_sent,
    )
    .await;
    ready_timer.abort();

    notify::stopping();
    conductor.abort();
    drain(&mut agent, &clock, &mut events).await;
    agent.publish(&report_tx);
    if let Some(task) = heartbeats.task {
        task.abort();
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    if agent.node.is_none() {
        tracing::info!("stopped before the conductor answered; nothing was detached");
    }
    tracing::info!("agent stopped; volumes stay attached");
    Ok(())
}

/// The cached targets of the volumes the ownership record lists (attached, or an attach under
/// way), for attaching them again before the conductor answers. Cached targets of volumes the
/// record does not list are removed. None when `offline_reattach` is off.
async fn remembered_targets(config: &AgentConfig, record: &record::Record) -> Vec<DesiredTarget> {
    if !config.offline_reattach {
        return Vec::new();
    }
    let cache = TargetCache::new(&config.state_dir);
    let mut owned = Vec::new();
    for target in cache.load() {
        let uuid = target.uuid;
        if record.volumes.contains_key(&uuid) || record.intents.contains_key(&uuid) {
            owned.push(target);
            continue;
        }
        tracing::info!(target_uuid = %uuid, "removing the cached target of a volume not owned");
        if let Err(e) = cache.remove(uuid) {
            tracing::warn!(target_uuid = %uuid, error = %e, "cannot remove a cached target");
        }
    }
    tasks::desired_targets(owned).await
}

/// How the node is looked up.
struct Lookup {
    node_uuid: Option<uuid::Uuid>,
    provisioned: Option<Secret>,
    macs: Vec<String>,
    state: StateDir,
}

/// Looks the node up until the conductor knows it, then long-polls its targets.
async fn talk_to_conductor(
    client: Client,
    lookup: Lookup,
    poll_wait: Duration,
    events: mpsc::Sender<Event>,
) {
    let node = tasks::lookup(
        &client,
        lookup.node_uuid,
        lookup.provisioned.as_ref(),
        &lookup.macs,
        &lookup.state,
    )
    .await;
    if events.send(Event::LookedUp(node.clone())).await.is_err() {
        return;
    }
    tasks::poll_targets(client, node, poll_wait, events).await;
}

/// The heartbeat task, started once the node is looked up.
struct Heartbeats {
    client: Client,
    interval: Option<Duration>,
    metrics: Arc<AgentMetrics>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Heartbeats {
    fn start(&mut self, node: NodeLogin, reports: watch::Receiver<Heartbeat>) {
        if self.task.is_some() {
            return;
        }
        self.task = Some(tokio::spawn(tasks::send_heartbeats(
            self.client.clone(),
            node,
            self.interval,
            reports,
            self.metrics.clone(),
        )));
    }
}

/// Tells systemd the agent is ready when no assignment came within `after`: a node that boots
/// while its conductor is unreachable goes on booting (units ordered after the agent start
/// without their volumes, which attach once the conductor answers) instead of hanging until
/// the unit's start timeout fails it.
async fn ready_without_conductor(after: Duration, ready_sent: Arc<AtomicBool>) {
    tokio::time::sleep(after).await;
    if !ready_sent.swap(true, Ordering::SeqCst) {
        tracing::warn!(
            waited_s = after.as_secs(),
            "no assignment from the conductor yet; ready anyway, volumes attach once it answers"
        );
        notify::ready("waiting for the conductor; volumes attach once it answers");
    }
}

/// The main loop's ends of its channels.
struct Channels<'a> {
    events: &'a mut mpsc::Receiver<Event>,
    events_tx: &'a mpsc::Sender<Event>,
    report_tx: &'a watch::Sender<Heartbeat>,
    /// The attached volumes, for the path watcher.
    watched_tx: &'a watch::Sender<health::Watched>,
    /// The conductor the HTTP client uses.
    conductor: watch::Receiver<client::InUse>,
}

/// Reconciles after every event until shutdown.
async fn main_loop(
    agent: &mut Agent,
    clock: &Clock,
    channels: Channels<'_>,
    heartbeats: &mut Heartbeats,
    watchdog: &mut notify::Watchdog,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ready_sent: &AtomicBool,
) {
    let Channels {
        events,
        events_tx,
        report_tx,
        watched_tx,
        mut conductor,
    } = channels;
    let mut next_wake: Option<Millis> = None;
    let mut ready = false;
    let mut said_unconfirmed = false;
    // The first pass plans whatever wakes it (remembered volumes attach before any event).
    let mut planned = false;
    loop {
        let wake = async {
            match next_wake {
                Some(at) => tokio::time::sleep_until(clock.instant(at).into()).await,
                None => std::future::pending().await,
            }
        };
        // Whether the wake-up changed what reconcile and the report are made from: the
        // timers of an idle agent (path health, watchdog) mostly change nothing, and planning
        // and publishing again would only cost CPU. A write that failed is still retried.
        let changed = tokio::select! {
            event = events.recv() => match event {
                Some(Event::LookedUp(node)) => {
                    agent.looked_up(node.clone());
                    heartbeats.start(node, report_tx.subscribe());
                    true
                }
                Some(Event::Assignment(answer)) => {
                    agent.apply_assignment(answer);
                    true
                }
                Some(Event::Done(uuid, result, took)) => {
                    agent.finish(uuid, *result, took, clock.now());
                    agent.refresh_foreign(events_tx);
                    true
                }
                Some(Event::Foreign(found)) => {
                    let changed = agent.foreign != found;
                    agent.foreign = found;
                    changed
                }
                Some(Event::Health(found)) => agent.health_found(found),
                None => return,
            },
            Ok(()) = conductor.changed() => {
                agent.conductor = conductor.borrow_and_update().clone();
                true
            }
            _ = wake => true,
            // Pinged from this loop, so a hung loop is restarted by systemd.
            _ = watchdog.tick() => {
                notify::watchdog();
                false
            }
            _ = shutdown.as_mut() => return,
        };
        if planned && !changed && !agent.owes_a_write() {
            continue;
        }
        planned = true;
        let plan = reconcile(&agent.desired, &agent.volumes, clock.now());
        for action in plan.actions {
            agent.start(action, events_tx, clock.now());
        }
        // An action can fail at once (no attach while the record cannot be written), and its
        // retry may even be due already: plan again for when to wake, since no event will come
        // for it. (A step due now wakes the loop shortly, not at once: a step that cannot start
        // must not spin it.)
        let after = reconcile(&agent.desired, &agent.volumes, clock.now());
        let due = after
            .actions
            .iter()
            .any(|a| matches!(a, Action::Attach(_) | Action::Detach(_)));
        next_wake = match due {
            true => Some(clock.now() + 50),
            false => after.next_wake,
        };
        agent.publish(report_tx);
        agent.publish_watched(watched_tx);
        let volumes = agent.volumes.len();
        if !ready && !matches!(agent.desired, Desired::Unknown) && agent.offline_pending.is_empty()
        {
            // Ready once the first assignment has been reconciled (units ordered after the
            // agent start with their volumes on the way), or once the remembered volumes were
            // attached again (units ordered after the agent find them there).
            ready = true;
            ready_sent.store(true, Ordering::SeqCst);
            said_unconfirmed = !agent.desired.is_known();
            notify::ready(&match said_unconfirmed {
                true => unconfirmed_status(volumes),
                false => format!("{volumes} volumes"),
            });
        }
        if said_unconfirmed && agent.desired.is_known() {
            said_unconfirmed = false;
            notify::status(&format!("{volumes} volumes"));
        }
    }
}

/// The status line while the volumes are the node's own memory, not the conductor's answer.
fn unconfirmed_status(volumes: usize) -> String {
    format!("{volumes} volumes, unconfirmed: waiting for the conductor")
}

/// Lets operations already running finish, so that what they attach is recorded as ours.
async fn drain(agent: &mut Agent, clock: &Clock, events: &mut mpsc::Receiver<Event>) {
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
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
    if drained.await.is_err() {
        tracing::warn!(
            in_flight = agent.in_flight,
            "stopping with host operations still running"
        );
    }
}
