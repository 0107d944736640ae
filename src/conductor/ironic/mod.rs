//! The conductor takes its nodes from Ironic (docs/openstack.md): every sync pass lists Ironic's
//! nodes and ports a page at a time, compares them with tether's ([`diff::plan`]) and applies
//! the difference in one transaction. A node deleted in Ironic with volumes on it leaves: its
//! targets are unassigned, and it goes once its agent reported them detached. The initiators
//! agents report are published as Ironic volume connectors.
//!
//! A failed pass changes nothing: the nodes known before keep working, and the failure is shown
//! in `ctl node list` and /metrics until a pass succeeds.

pub(crate) mod diff;

use crate::conductor::store::StoreApi;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use uuid::Uuid;

use super::Conductor;
use super::store::ConnectorCheck;
use crate::config::IronicConfig;
use crate::openstack::ironic::{Ironic, IronicApi};
use crate::openstack::{OpenStackError, OpenStackErrorKind, Reconnecting};
use crate::protocol::{ErrorReport, IronicSync};
use diff::Change;

/// Longest wait before a failed pass is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// Shortest time between two rounds of follow-ups woken by heartbeats.
const FOLLOWUP_SPACING: Duration = Duration::from_secs(1);

/// How the sync goes, for `ctl node list` and /metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct SyncStatus {
    /// Set when `[ironic]` is: only then is the sync shown.
    pub configured: bool,
    pub passes_ok: u64,
    pub passes_failed: u64,
    pub last_success: Option<SystemTime>,
    /// Set while failing: the last failure.
    pub last_error: Option<ErrorReport>,
    pub last_duration: Option<Duration>,
    pub nodes: u64,
    pub notes: Vec<String>,
    pub connectors_published: u64,
}

impl SyncStatus {
    pub(crate) fn state(&self) -> &'static str {
        match (&self.last_error, self.passes_ok) {
            (Some(_), _) => "failing",
            (None, 0) => "starting",
            (None, _) => "ok",
        }
    }

    pub(crate) fn shown(&self) -> IronicSync {
        IronicSync {
            state: self.state().into(),
            last_success: self.last_success.map(crate::protocol::timestamp),
            last_error: self.last_error.clone(),
            nodes: self.nodes,
            notes: self.notes.clone(),
        }
    }
}

/// Ironic, connected on first use (and again after a refused authentication), and the state
/// of the sync.
pub(crate) struct IronicService {
    config: IronicConfig,
    client: Reconnecting<Ironic>,
    wake: Notify,
    /// Leaving nodes and nodes with unchecked initiators: only their heartbeats wake the worker.
    watched: Mutex<HashSet<Uuid>>,
    pub(crate) status: Arc<Mutex<SyncStatus>>,
}

impl IronicService {
    pub(crate) fn new(config: IronicConfig, status: Arc<Mutex<SyncStatus>>) -> Self {
        status.lock().unwrap_or_else(|e| e.into_inner()).configured = true;
        Self {
            config,
            client: Reconnecting::default(),
            wake: Notify::new(),
            watched: Mutex::new(HashSet::new()),
            status,
        }
    }

    /// A heartbeat of `node` arrived: a leaving node may have let its volumes go, a new one
    /// may report its initiator.
    pub(crate) fn reported(&self, node: Uuid) {
        if self
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&node)
        {
            self.wake.notify_one();
        }
    }

    pub(crate) fn shown(&self) -> IronicSync {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shown()
    }

    async fn ironic(&self) -> Result<Ironic, OpenStackError> {
        let timeout = Duration::from_secs(self.config.timeout_s);
        self.client
            .get(|| async {
                let connected =
                    Ironic::connect(&self.config.source(), timeout, self.config.page_size).await?;
                tracing::info!(endpoint = %connected.endpoint(), "connected to Ironic");
                Ok(connected)
            })
            .await
    }

    fn update(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn failing(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .is_some()
    }
}

/// Why a pass failed.
#[derive(Debug)]
enum PassError {
    Ironic(OpenStackError),
    Store(String),
}

impl From<OpenStackError> for PassError {
    fn from(e: OpenStackError) -> Self {
        Self::Ironic(e)
    }
}

impl From<super::error::ApiError> for PassError {
    fn from(e: super::error::ApiError) -> Self {
        Self::Store(format!("{e:?}"))
    }
}

impl From<super::store::StoreError> for PassError {
    fn from(e: super::store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

impl PassError {
    fn report(&self) -> ErrorReport {
        match self {
            Self::Ironic(e) => ErrorReport {
                kind: e.kind.as_ironic_str().into(),
                message: e.message.clone(),
            },
            Self::Store(m) => ErrorReport {
                kind: "database".into(),
                message: m.clone(),
            },
        }
    }
}

/// Runs until the conductor stops: a pass every `sync_interval_s` (sooner after a failure), the
/// follow-ups (leaving nodes, connectors) after each pass and whenever a watched node reports.
pub(super) async fn run(c: Arc<Conductor>, svc: Arc<IronicService>) {
    let mut shutdown = c.shutdown.clone();
    let interval = Duration::from_secs(svc.config.sync_interval_s.max(1));
    let mut next_pass = Instant::now();
    loop {
        if Instant::now() >= next_pass {
            let started = Instant::now();
            match pass(&c, &svc).await {
                Ok(()) => {
                    next_pass = Instant::now() + interval;
                    svc.update(|s| {
                        if s.last_error.is_some() {
                            tracing::info!("Ironic sync resumed");
                        }
                        s.passes_ok += 1;
                        s.last_success = Some(SystemTime::now());
                        s.last_error = None;
                        s.last_duration = Some(started.elapsed());
                    });
                }
                Err(e) => {
                    if let PassError::Ironic(e) = &e {
                        svc.client.forget_if_refused(e).await;
                    }
                    let retry = interval.min(RETRY);
                    next_pass = Instant::now() + retry;
                    let report = e.report();
                    let known = svc
                        .status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .last_error
                        == Some(report.clone());
                    // Once per failure, not once per retry.
                    if known {
                        tracing::debug!(kind = %report.kind, error = %report.message,
                            "Ironic sync still failing");
                    } else {
                        tracing::warn!(kind = %report.kind, error = %report.message,
                            retry_in_s = retry.as_secs(),
                            "Ironic sync failed; the nodes known before stay as they are");
                    }
                    svc.update(|s| {
                        s.passes_failed += 1;
                        s.last_error = Some(report);
                    });
                }
            }
        }
        followups(&c, &svc).await;
        let done = Instant::now();
        tokio::select! {
            _ = svc.wake.notified() => {
                // Heartbeats of a large fleet coalesce: follow-ups run once a second at most.
                tokio::time::sleep_until((done + FOLLOWUP_SPACING).into()).await;
            }
            _ = tokio::time::sleep_until(next_pass.into()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One sync pass: Ironic's nodes and ports against tether's, the difference applied.
async fn pass(c: &Conductor, svc: &IronicService) -> Result<(), PassError> {
    let ironic = svc.ironic().await?;
    let started = Instant::now();
    let nodes = ironic.nodes().await?;
    let ports = ironic.ports().await?;
    let listed = started.elapsed();
    let (remote, mut notes) = diff::remotes(nodes, ports);
    let seen = remote.len() as u64;
    let local = c.store.ironic_view().await?;
    let plan = diff::plan(&remote, &local);
    notes.extend(plan.notes.iter().cloned());
    for change in &plan.changes {
        match change {
            Change::Create(n) => tracing::info!(node = %n.uuid, name = %n.name,
                addresses = n.addresses.len(), "node enrolled from Ironic"),
            Change::Update { node, adopt: true } => tracing::info!(node = %node.uuid,
                name = %node.name, "manual node found in Ironic under its uuid: now synced"),
            Change::Update { node, .. } => {
                tracing::debug!(node = %node.uuid, name = %node.name, "node follows Ironic")
            }
            Change::Leave(u) => tracing::info!(node = %u,
                "node deleted in Ironic with volumes on it: unassigning them; it goes once \
                 its agent reported them detached"),
            Change::Remove(u) => tracing::info!(node = %u, "node deleted in Ironic: removed"),
        }
    }
    let leaving = plan.changes.iter().any(|c| matches!(c, Change::Leave(_)));
    let changes = plan.changes;
    let count = changes.len();
    let published = c.store.apply_ironic(changes).await?;
    for change in published {
        c.generations.publish(change);
    }
    if leaving && let Some(cinder) = &c.cinder {
        cinder.wake.notify_one();
    }
    for note in notes.iter().filter(|n| !svc.shown().notes.contains(n)) {
        tracing::warn!(note = %note, "Ironic node left out of the sync, in part or whole");
    }
    tracing::debug!(
        nodes = seen,
        changes = count,
        listed_ms = listed.as_millis() as u64,
        "Ironic sync pass done"
    );
    svc.update(|s| {
        s.nodes = seen;
        s.notes = notes;
    });
    Ok(())
}

/// What does not wait for the next pass: leaving nodes whose volumes are gone are removed, and
/// reported initiators are published (not while Ironic fails: the next pass does it).
async fn followups(c: &Conductor, svc: &IronicService) {
    match c.store.remove_departed().await {
        Ok(gone) => {
            for node in gone {
                tracing::info!(node = %node, "node deleted in Ironic: its volumes are detached; \
                    removed");
            }
        }
        Err(e) => tracing::warn!(error = ?e, "cannot remove the nodes that left"),
    }
    if svc.config.publish_connectors && !svc.failing() {
        match c.store.connector_checks().await {
            Ok(checks) => {
                for check in checks {
                    if let Err(e) = publish(c, svc, &check).await {
                        svc.client.forget_if_refused(&e).await;
                        tracing::warn!(node = %check.node, kind = e.kind.as_ironic_str(),
                            error = %e, "cannot publish the node's initiator to Ironic");
                        break;
                    }
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot read the reported initiators"),
        }
    }
    match c.store.ironic_watched().await {
        Ok(watched) => {
            *svc.watched.lock().unwrap_or_else(|e| e.into_inner()) = watched.into_iter().collect();
        }
        Err(e) => tracing::warn!(error = ?e, "cannot read the nodes the sync watches"),
    }
}

/// What a node's reported initiators mean for its Ironic connectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectorAction {
    /// Ironic has it already.
    Present,
    /// Ironic has none of this type: created (no power-off needed to create one).
    Create,
    /// Ironic has another of this type: changing it needs the node powered off, which is the
    /// operator's call; left alone and shown.
    Differs(String),
}

/// Compares one reported initiator with the node's Ironic connectors.
pub(crate) fn connector_action(
    existing: &[crate::openstack::ironic::IronicConnector],
    connector_type: &str,
    connector_id: &str,
) -> ConnectorAction {
    let same_type: Vec<_> = existing
        .iter()
        .filter(|c| c.connector_type == connector_type)
        .collect();
    if same_type.iter().any(|c| c.connector_id == connector_id) {
        ConnectorAction::Present
    } else if let Some(other) = same_type.first() {
        ConnectorAction::Differs(other.connector_id.clone())
    } else {
        ConnectorAction::Create
    }
}

async fn publish(
    c: &Conductor,
    svc: &IronicService,
    check: &ConnectorCheck,
) -> Result<(), OpenStackError> {
    let ironic = svc.ironic().await?;
    let node = check.node.to_string();
    let existing = ironic.connectors_of(&node).await?;
    let mut warnings = Vec::new();
    for (kind, id) in &check.reported {
        match connector_action(&existing, kind, id) {
            ConnectorAction::Present => {}
            ConnectorAction::Create => match ironic.create_connector(&node, kind, id).await {
                Ok(created) => {
                    tracing::info!(node = %node, connector = %created.uuid, kind = %kind,
                        connector_id = %id, "published the node's initiator as an Ironic \
                        volume connector");
                    svc.update(|s| s.connectors_published += 1);
                }
                // Another node has this connector in Ironic (ids are unique per type).
                Err(e) if e.kind == OpenStackErrorKind::Conflict => warnings.push(format!(
                    "the agent reports {kind} {id}, which Ironic has on another node: {}",
                    e.message
                )),
                Err(e) => return Err(e),
            },
            ConnectorAction::Differs(theirs) => warnings.push(format!(
                "Ironic's {kind} volume connector is {theirs} but the agent reports {id}; left \
                 alone (changing it needs the node powered off in Ironic)"
            )),
        }
    }
    let warning = (!warnings.is_empty()).then(|| warnings.join("; "));
    if warning != check.warning {
        match &warning {
            Some(w) => tracing::warn!(node = %node, warning = %w, "Ironic volume connector"),
            None if check.warning.is_some() => {
                tracing::info!(node = %node, "the Ironic volume connector agrees now")
            }
            None => {}
        }
    }
    let key = check.key();
    let node = check.node;
    let stored = warning.clone();
    if let Err(e) = c.store.connector_checked(node, key, stored).await {
        tracing::warn!(node = %node, error = ?e, "cannot record the connector check");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openstack::ironic::IronicConnector;

    fn connector(kind: &str, id: &str) -> IronicConnector {
        IronicConnector {
            uuid: format!("{kind}-{id}"),
            connector_type: kind.into(),
            connector_id: id.into(),
            node_uuid: None,
        }
    }

    #[test]
    fn a_connector_is_created_only_when_the_node_has_none_of_its_type() {
        let iqn = "iqn.2004-10.com.example:bm-1";
        assert_eq!(connector_action(&[], "iqn", iqn), ConnectorAction::Create);
        let mac_only = [connector("mac", "52:54:00:00:00:01")];
        assert_eq!(
            connector_action(&mac_only, "iqn", iqn),
            ConnectorAction::Create
        );
        let same = [connector("mac", "x"), connector("iqn", iqn)];
        assert_eq!(
            connector_action(&same, "iqn", iqn),
            ConnectorAction::Present
        );
        let other = [connector("iqn", "iqn.2004-10.com.example:old")];
        assert_eq!(
            connector_action(&other, "iqn", iqn),
            ConnectorAction::Differs("iqn.2004-10.com.example:old".into())
        );
        let both = [
            connector("iqn", "iqn.2004-10.com.example:old"),
            connector("iqn", iqn),
        ];
        assert_eq!(
            connector_action(&both, "iqn", iqn),
            ConnectorAction::Present
        );
        assert_eq!(
            connector_action(&other, "nqn", "nqn.x"),
            ConnectorAction::Create
        );
    }

    #[test]
    fn the_state_reads_starting_ok_then_failing() {
        let mut s = SyncStatus::default();
        assert_eq!(s.state(), "starting");
        s.passes_ok = 1;
        assert_eq!(s.state(), "ok");
        s.last_error = Some(ErrorReport {
            kind: "ironic_unreachable".into(),
            message: "down".into(),
        });
        assert_eq!(s.shown().state, "failing");
        assert_eq!(s.shown().last_error.unwrap().kind, "ironic_unreachable");
    }
}
