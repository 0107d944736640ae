//! The node agent: identity -> lookup -> long-poll -> reconcile -> attach/detach -> report.
//!
//! One task owns all volume state ([`executor`]) and runs the pure [`reconcile`] after every
//! event; [`apply`] turns each action into a host operation, which runs on a blocking thread
//! and reports back over a channel. [`tasks`] long-poll the targets and send heartbeats.

mod apply;
mod backends;
mod client;
mod executor;
mod handover;
mod health;
pub(crate) mod identity;
mod metrics;
mod reconcile;
mod record;
mod recovery;
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
use crate::protocol::{ForeignAttachment, Heartbeat};
pub use backends::Backends;
use client::Client;
pub use client::{error_chain, trusting};
use executor::{Agent, OpResult};
use metrics::AgentMetrics;
use reconcile::{Action, Assignment, reconcile};
pub use record::{LocalStatus, StateDir};
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
    mut backends: Backends,
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
    let client = Client::new(&config.conductor_url, config.conductor_ca_file.as_deref())?;
    if crate::config::conductor_transport(&config.conductor_url)
        == Ok(crate::config::Transport::Plain { loopback: false })
    {
        tracing::warn!(
            kind = "insecure_http",
            conductor = %config.conductor_url,
            "agent.allow_insecure_http is set: the token and every volume's secrets cross the \
             network in clear, and anyone in the path can hand this node targets"
        );
    }
    let metrics = Arc::new(AgentMetrics::new());
    let metrics_server = match config.metrics_listen {
        Some(addr) => metrics::start(addr, metrics.clone()).await,
        None => None,
    };
    let handed_over = StateDir::new(config.host_root.join(handover::HANDOVER_DIR));
    match handover::adopt(
        &state,
        &handed_over,
        &config.conductor_url,
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
    let recovered = recovery::recover(&backends, state.load_record()?).await;
    let mut agent = Agent::new(
        recovered,
        backends,
        config.clone(),
        state,
        identity.connectors(),
        metrics.clone(),
    );

    tokio::pin!(shutdown);
    let ready_sent = Arc::new(AtomicBool::new(false));
    let ready_timer = tokio::spawn(ready_without_conductor(
        config.ready_timeout,
        ready_sent.clone(),
    ));
    let mut watchdog = notify::Watchdog::from_env();
    notify::status("looking the node up at the conductor");
    let looking_up = tasks::lookup(
        &client,
        config.node_uuid,
        provisioned_token.as_ref(),
        identity.lookup_macs(),
        &agent.state,
    );
    let Some(node) = until_shutdown(looking_up, &mut watchdog, &mut shutdown).await else {
        tracing::info!("stopped before the conductor answered; nothing was detached");
        return Ok(());
    };
    agent.looked_up(node.clone());

    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let (report_tx, report_rx) = watch::channel(agent.report());
    let poller = tokio::spawn(tasks::poll_targets(
        client.clone(),
        node.clone(),
        config.poll_wait,
        events_tx.clone(),
    ));
    let heartbeats = tokio::spawn(tasks::send_heartbeats(
        client,
        node,
        config.heartbeat_interval,
        report_rx,
        metrics,
    ));
    agent.refresh_foreign(&events_tx);
    let clock = Clock(Instant::now());
    let channels = Channels {
        events: &mut events,
        events_tx: &events_tx,
        report_tx: &report_tx,
    };
    main_loop(
        &mut agent,
        &clock,
        channels,
        &mut watchdog,
        &mut shutdown,
        &ready_sent,
    )
    .await;
    ready_timer.abort();

    notify::stopping();
    poller.abort();
    drain(&mut agent, &clock, &mut events).await;
    agent.publish(&report_tx);
    heartbeats.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    tracing::info!("agent stopped; volumes stay attached");
    Ok(())
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

/// Runs `work`, pinging the watchdog meanwhile. None when shutdown comes first.
async fn until_shutdown<T>(
    work: impl Future<Output = T>,
    watchdog: &mut notify::Watchdog,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = watchdog.tick() => notify::watchdog(),
            _ = shutdown.as_mut() => return None,
        }
    }
}

/// The main loop's ends of its channels.
struct Channels<'a> {
    events: &'a mut mpsc::Receiver<Event>,
    events_tx: &'a mpsc::Sender<Event>,
    report_tx: &'a watch::Sender<Heartbeat>,
}

/// Reconciles after every event until shutdown.
async fn main_loop(
    agent: &mut Agent,
    clock: &Clock,
    channels: Channels<'_>,
    watchdog: &mut notify::Watchdog,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ready_sent: &AtomicBool,
) {
    let Channels {
        events,
        events_tx,
        report_tx,
    } = channels;
    let mut next_wake: Option<Millis> = None;
    let mut ready = false;
    let mut health = tokio::time::interval(health::HEALTH_INTERVAL);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    agent.refresh_foreign(events_tx);
                }
                Some(Event::Foreign(found)) => agent.foreign = found,
                Some(Event::Health(found)) => agent.health_found(found),
                None => return,
            },
            _ = health.tick() => agent.check_health(events_tx),
            _ = wake => {}
            // Pinged from this loop, so a hung loop is restarted by systemd.
            _ = watchdog.tick() => notify::watchdog(),
            _ = shutdown.as_mut() => return,
        }
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
        if !ready && agent.desired.generation().is_some() {
            // Ready once the first assignment has been reconciled: units ordered after the
            // agent start with their volumes on the way.
            ready = true;
            ready_sent.store(true, Ordering::SeqCst);
            notify::ready(&format!("{} volumes", agent.volumes.len()));
        }
    }
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
