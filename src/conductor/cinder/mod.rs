//! The conductor as a Cinder attachments client (docs/openstack.md): an operator asks for a
//! Cinder volume on a node; the conductor creates the attachment for the node's connector,
//! assigns the target, completes the attachment once the agent has the device, and on detach
//! deletes the attachment only after the agent let the volume go.
//!
//! Every volume's flow lives in the database (`store/cinder.rs`); a worker task takes each one
//! step further ([`flow::next_step`]) when woken (a request, a heartbeat) and every few seconds,
//! so a restarted conductor resumes where it stopped.

pub(super) mod api;
pub(crate) mod flow;

use crate::conductor::store::StoreApi;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::Conductor;
use super::store::{CinderRow, StoreError};
use crate::config::CinderConfig;
use crate::openstack::cinder::{Attachment, Cinder, CinderApi, Volume};
use crate::openstack::connection::map_connection_info;
use crate::openstack::{OpenStackError, OpenStackErrorKind, Reconnecting};
use crate::protocol::cinder::CinderPhase;
use crate::protocol::{ErrorReport, Heartbeat, TargetCreate};
use flow::{Seen, Step, next_step};

/// How often every volume's flow is looked at without being woken.
const TICK: Duration = Duration::from_secs(2);
/// How often Cinder's status of each volume is read again, for `list`.
const REFRESH: Duration = Duration::from_secs(30);
/// Flows advanced at once (an LVM attachment takes a minute in Cinder).
const PARALLEL: usize = 8;

type Key = (Uuid, String);

/// Cinder, connected on first use (and again after a failed connection), and the worker's
/// bookkeeping.
pub(crate) struct CinderService {
    pub(crate) config: CinderConfig,
    client: Reconnecting<Cinder>,
    pub(crate) wake: Notify,
    /// Per volume: consecutive transient failures, and when to try again.
    backoff: Mutex<HashMap<Key, (u32, Instant)>>,
    in_flight: Mutex<HashSet<Key>>,
    refreshed: Mutex<HashMap<Key, Instant>>,
    /// Nodes with Cinder volumes: only their heartbeats wake the worker.
    nodes: Mutex<HashSet<Uuid>>,
}

impl CinderService {
    pub(crate) fn new(config: CinderConfig) -> Self {
        Self {
            config,
            client: Reconnecting::default(),
            wake: Notify::new(),
            backoff: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            refreshed: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashSet::new()),
        }
    }

    /// A heartbeat of `node` arrived: a volume of it may wait for this report.
    pub(crate) fn reported(&self, node: Uuid) {
        if self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&node)
        {
            self.wake.notify_one();
        }
    }

    /// Whether a volume in a steady phase (attached, failed) is due for a look at Cinder: only
    /// an operator's request (which wakes the worker) changes it otherwise.
    fn refresh_due(&self, key: &Key) -> bool {
        let refreshed = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        refreshed.get(key).is_none_or(|at| at.elapsed() >= REFRESH)
    }

    async fn log_in(&self) -> Result<Cinder, OpenStackError> {
        let timeout = Duration::from_secs(self.config.timeout_s);
        let connected =
            Cinder::connect(&self.config.source(), &self.config.service_type, timeout).await?;
        tracing::info!(endpoint = %connected.endpoint(), "connected to Cinder");
        Ok(connected)
    }

    fn due(&self, key: &Key) -> bool {
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff.get(key).is_none_or(|(_, at)| Instant::now() >= *at)
    }

    fn succeeded(&self, key: &Key) {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Schedules the next try: 2 s, 4 s, … up to a minute.
    fn failed(&self, key: &Key) -> Duration {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let failures = backoff.get(key).map_or(0, |(n, _)| *n) + 1;
        let delay = Duration::from_secs(2u64.saturating_pow(failures.min(6)).min(60));
        backoff.insert(key.clone(), (failures, Instant::now() + delay));
        delay
    }
}

/// One call through the current session (logging in again once when Cinder refuses it).
macro_rules! delegate {
    ($self:ident, $call:ident($($arg:expr),*)) => {
        $self
            .client
            .call(|| $self.log_in(), |c| async move { c.$call($($arg),*).await })
            .await
    };
}

impl CinderApi for CinderService {
    async fn find_volume(&self, id_or_name: &str) -> Result<Volume, OpenStackError> {
        delegate!(self, find_volume(id_or_name))
    }
    async fn reserve(
        &self,
        volume_id: &str,
        read_only: bool,
    ) -> Result<Attachment, OpenStackError> {
        delegate!(self, reserve(volume_id, read_only))
    }
    async fn connect(&self, id: &str, connector: &Value) -> Result<Attachment, OpenStackError> {
        delegate!(self, connect(id, connector))
    }
    async fn attachment(&self, id: &str) -> Result<Option<Attachment>, OpenStackError> {
        delegate!(self, attachment(id))
    }
    async fn attachments_of(&self, volume_id: &str) -> Result<Vec<Attachment>, OpenStackError> {
        delegate!(self, attachments_of(volume_id))
    }
    async fn complete_attachment(&self, id: &str) -> Result<(), OpenStackError> {
        delegate!(self, complete_attachment(id))
    }
    async fn delete_attachment(&self, id: &str) -> Result<(), OpenStackError> {
        delegate!(self, delete_attachment(id))
    }
}

/// The connector Cinder exports a volume to, from what the node's agent last reported.
pub(crate) fn connector(node_name: &str, report: &Heartbeat, multipath: bool) -> Value {
    let first = |kind: &str| {
        report
            .connectors
            .iter()
            .find(|c| c.connector_type == kind)
            .map(|c| c.connector_id.clone())
    };
    let mut connector = json!({
        "host": node_name,
        "platform": std::env::consts::ARCH,
        "os_type": "linux",
        "multipath": multipath,
        "do_local_attach": false,
    });
    if let Some(iqn) = first("iqn") {
        connector["initiator"] = Value::from(iqn);
    }
    // What os-brick's NVMe-oF connector sends: the host NQN and its host id.
    if let Some(nqn) = first("nqn") {
        connector["nqn"] = Value::from(nqn);
    }
    if let Some(host_id) = first("nvme_hostid") {
        connector["nvme_hostid"] = Value::from(host_id);
    }
    if let Some(ip) = first("ip") {
        connector["ip"] = Value::from(ip);
    }
    connector
}

/// A Cinder error as a step's: an outage is retried, anything else refuses the attach.
fn refused_or_retried(e: OpenStackError) -> StepError {
    match e.kind.retried() {
        true => StepError::Cinder(e),
        false => StepError::Refused(refusal(&e)),
    }
}

/// The error a refusal from Cinder gives the volume (`phase` failed).
fn refusal(e: &OpenStackError) -> ErrorReport {
    let kind = match e.kind {
        OpenStackErrorKind::NotFound => "volume_not_found",
        OpenStackErrorKind::Conflict => "volume_not_available",
        other => other.as_str(),
    };
    ErrorReport {
        kind: kind.into(),
        message: e.message.clone(),
    }
}

/// Runs until the conductor stops: advances every volume's flow when woken and every tick.
pub(super) async fn run(c: Arc<Conductor>, svc: Arc<CinderService>) {
    let mut shutdown = c.shutdown.clone();
    tokio::spawn(compare_with_cinder(c.clone(), svc.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    loop {
        match c.store.cinder_volumes(None).await {
            Ok(rows) => {
                *svc.nodes.lock().unwrap_or_else(|e| e.into_inner()) =
                    rows.iter().map(|r| r.node_uuid).collect();
                for row in rows {
                    let key = (row.node_uuid, row.volume_id.clone());
                    if !svc.due(&key) {
                        continue;
                    }
                    let steady = row.want_attached
                        && matches!(row.phase, CinderPhase::Attached | CinderPhase::Failed);
                    if steady && !svc.refresh_due(&key) {
                        continue;
                    }
                    if !svc
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone())
                    {
                        continue;
                    }
                    let (c, svc, slots) = (c.clone(), svc.clone(), slots.clone());
                    tokio::spawn(async move {
                        let _slot = slots.acquire().await;
                        advance(&c, &svc, row).await;
                        svc.in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                    });
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot read the Cinder volumes"),
        }
        tokio::select! {
            _ = svc.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A step's failure: a transient one retries later, a refusal stops the flow.
enum StepError {
    Cinder(OpenStackError),
    Store(String),
    Refused(ErrorReport),
}

impl From<OpenStackError> for StepError {
    fn from(e: OpenStackError) -> Self {
        Self::Cinder(e)
    }
}

impl From<super::error::ApiError> for StepError {
    fn from(e: super::error::ApiError) -> Self {
        Self::Store(format!("{e:?}"))
    }
}

/// Takes one volume's flow one step further, and records how that went.
async fn advance(c: &Conductor, svc: &CinderService, row: CinderRow) {
    let key = (row.node_uuid, row.volume_id.clone());
    let result = step(c, svc, &row).await;
    let (node, volume) = (row.node_uuid, row.volume_id.clone());
    match result {
        Ok(progressed) => {
            svc.succeeded(&key);
            if row.cinder_error.is_some() {
                let _ = c
                    .store
                    .update_cinder_volume(node, volume, Box::new(move |r| r.cinder_error = None))
                    .await;
            }
            if progressed {
                svc.wake.notify_one();
            }
        }
        Err(StepError::Cinder(e)) if e.kind.retried() => {
            let retry = svc.failed(&key);
            tracing::warn!(
                node = %node,
                volume_id = %volume,
                phase = %row.phase,
                error = %e,
                retry_in_s = retry.as_secs(),
                "Cinder call failed; retrying"
            );
            let message = e.message.clone();
            let _ = c
                .store
                .update_cinder_volume(
                    node,
                    volume,
                    Box::new(move |r| r.cinder_error = Some(message)),
                )
                .await;
        }
        Err(StepError::Cinder(e)) => {
            // Refused in a later step (completing, deleting): shown, retried slowly, since
            // the attachment must not be forgotten.
            let retry = svc.failed(&key);
            tracing::warn!(node = %node, volume_id = %volume, phase = %row.phase, error = %e,
                retry_in_s = retry.as_secs(), "Cinder refused a step; retrying");
            let error = refusal(&e);
            let _ = c
                .store
                .update_cinder_volume(node, volume, Box::new(move |r| r.error = Some(error)))
                .await;
        }
        Err(StepError::Refused(error)) => {
            tracing::warn!(node = %node, volume_id = %volume, kind = %error.kind,
                error = %error.message, "Cinder volume attach failed");
            let _ = c
                .store
                .update_cinder_volume(
                    node,
                    volume,
                    Box::new(move |r| {
                        r.error = Some(error);
                        r.enter(CinderPhase::Failed);
                    }),
                )
                .await;
        }
        Err(StepError::Store(e)) => {
            svc.failed(&key);
            tracing::warn!(
                node = %node,
                volume_id = %volume,
                error = %e,
                "Cinder flow step failed",
            );
        }
    }
}

/// One step; `Ok(true)` when the flow moved on (so the next step may follow at once).
async fn step(c: &Conductor, svc: &CinderService, row: &CinderRow) -> Result<bool, StepError> {
    let (node, volume) = (row.node_uuid, row.volume_id.clone());
    let target = row.target_uuid;
    let status = c.store.node_status(node).await?;
    let target_exists = match target {
        Some(uuid) => c.store.target_exists(uuid).await?,
        None => false,
    };
    let reported = target.and_then(|uuid| {
        status
            .report
            .as_ref()?
            .volumes
            .iter()
            .find(|v| v.target_uuid == uuid)
            .cloned()
    });
    let seen = Seen {
        target_exists,
        agent: reported.as_ref().map(|v| v.state),
    };
    match next_step(row, seen) {
        Step::Wait => {
            refresh_status(c, svc, row).await;
            Ok(false)
        }
        Step::CreateAttachment => {
            let report = status.report.as_ref().ok_or_else(|| {
                StepError::Refused(ErrorReport {
                    kind: "node_never_reported".into(),
                    message: format!(
                        "node {} has not reported yet: its connector is unknown",
                        status.node_name
                    ),
                })
            })?;
            // 1. The attachment's id, recorded before Cinder exports anything: a restart at any
            //    later point finds the attachment again by it.
            let id = match &row.attachment_id {
                Some(id) => id.clone(),
                None => {
                    let reserved = match adopt(svc, &volume).await? {
                        Some(found) => found,
                        None => svc
                            .reserve(&volume, row.read_only)
                            .await
                            .map_err(refused_or_retried)?,
                    };
                    let (v, id) = (volume.clone(), reserved.id.clone());
                    c.store
                        .update_cinder_volume(
                            node,
                            v,
                            Box::new(move |r| r.attachment_id = Some(id)),
                        )
                        .await?;
                    tracing::info!(
                        node = %node,
                        volume_id = %volume,
                        attachment = %reserved.id,
                        "Cinder volume reserved",
                    );
                    reserved.id
                }
            };
            // 2. The export for the node's connector, unless a run before a restart got it.
            let attachment = match svc.attachment(&id).await? {
                Some(found)
                    if found
                        .connection_info
                        .as_ref()
                        .is_some_and(|i| !i.is_empty()) =>
                {
                    found
                }
                Some(_) => {
                    let connector = connector(&status.node_name, report, svc.config.multipath);
                    svc.connect(&id, &connector)
                        .await
                        .map_err(refused_or_retried)?
                }
                None => {
                    // Deleted in Cinder meanwhile: reserve again.
                    tracing::warn!(volume_id = %volume, attachment = %id, "reservation gone");
                    let v = volume.clone();
                    c.store
                        .update_cinder_volume(node, v, Box::new(move |r| r.attachment_id = None))
                        .await?;
                    return Ok(true);
                }
            };
            tracing::info!(
                node = %node,
                volume_id = %volume,
                attachment = %id,
                "Cinder exported the volume to the node",
            );
            let info = attachment.connection_info.clone().unwrap_or_default();
            let mapped = match map_connection_info(&info, &svc.config.ceph_keys, row.read_only) {
                Ok(mapped) => mapped,
                Err(e) => {
                    return Err(StepError::Refused(ErrorReport {
                        kind: e.kind().into(),
                        message: e.to_string(),
                    }));
                }
            };
            if !mapped.ignored.is_empty() {
                tracing::debug!(
                    volume_id = %volume,
                    ignored = ?mapped.ignored,
                    "connection_info keys tether does not use",
                );
            }
            let mut properties = mapped.properties;
            if let Some(file) = &mapped.key_file {
                let key = std::fs::read_to_string(file).map_err(|e| {
                    StepError::Refused(ErrorReport {
                        kind: "key_file".into(),
                        message: format!("cannot read the cephx key file {}: {e}", file.display()),
                    })
                })?;
                properties.insert("auth_key".into(), Value::from(key.trim()));
            }
            let mut extra = serde_json::Map::new();
            if let Some(mount) = &row.mount {
                extra.insert("mount".into(), Value::Object(mount.clone()));
            }
            extra.insert("cinder_attachment_id".into(), Value::from(id));
            let request = TargetCreate {
                node_uuid: node,
                volume_type: mapped.volume_type.into(),
                volume_id: volume.clone(),
                uuid: None,
                boot_index: None,
                properties,
                extra,
                // Cinder's size is read while the volume is attached (refresh_status).
                size_bytes: None,
            };
            if c.validate_targets {
                let candidate = request.target(Uuid::nil());
                if let Err(e) = crate::protocol::target::parse(&candidate) {
                    return Err(StepError::Refused(ErrorReport {
                        kind: e.kind().into(),
                        message: format!(
                            "Cinder's connection_info makes a target tether refuses: {e}"
                        ),
                    }));
                }
            }
            let v = volume.clone();
            let published = c
                .generations
                .publish(c.store.assign_cinder_target(node, v, request).await?);
            tracing::info!(node = %node, volume_id = %volume, generation = published.generation,
                target = ?published.value.target_uuid, "Cinder volume assigned to the node");
            Ok(true)
        }
        Step::Complete => {
            let id = row.attachment_id.clone().unwrap_or_default();
            let v = volume.clone();
            c.store
                .update_cinder_volume(node, v, Box::new(move |r| r.enter(CinderPhase::Completing)))
                .await?;
            svc.complete_attachment(&id).await?;
            let found = svc.find_volume(&volume).await.ok();
            let v = volume.clone();
            c.store
                .update_cinder_volume(
                    node,
                    v,
                    Box::new(move |r| {
                        r.enter(CinderPhase::Attached);
                        r.error = None;
                        r.cinder_status = found.map(|f| f.status).or(Some("in-use".into()));
                    }),
                )
                .await?;
            tracing::info!(
                node = %node,
                volume_id = %volume,
                attachment = %id,
                "Cinder attachment completed: in-use",
            );
            Ok(true)
        }
        Step::TargetLost => Err(StepError::Refused(ErrorReport {
            kind: "target_deleted".into(),
            message: "the volume's target was deleted by hand while the volume was attached; \
                      detach the volume (tether ctl volume detach) to delete its Cinder attachment"
                .into(),
        })),
        Step::Unassign => {
            let v = volume.clone();
            let (_, change) = c.store.unassign_cinder_target(node, v).await?;
            if let Some(change) = change {
                let published = c.generations.publish(change);
                tracing::info!(node = %node, volume_id = %volume, generation = published.generation,
                    "Cinder volume unassigned; the agent detaches it");
            }
            Ok(true)
        }
        Step::DeleteAttachment => {
            let v = volume.clone();
            c.store
                .update_cinder_volume(node, v, Box::new(move |r| r.enter(CinderPhase::Deleting)))
                .await?;
            let ids: Vec<String> = match &row.attachment_id {
                Some(id) => vec![id.clone()],
                // A crash may have come between Cinder's answer and the row's update.
                None => adopt(svc, &volume)
                    .await?
                    .map(|a| a.id)
                    .into_iter()
                    .collect(),
            };
            for id in &ids {
                svc.delete_attachment(id).await?;
                tracing::info!(
                    node = %node,
                    volume_id = %volume,
                    attachment = %id,
                    "Cinder attachment deleted",
                );
            }
            let v = volume.clone();
            c.store.forget_cinder_volume(node, v).await?;
            Ok(true)
        }
        Step::Forget => {
            let v = volume.clone();
            c.store.forget_cinder_volume(node, v).await?;
            Ok(true)
        }
    }
}

/// The reservation a conductor made of `volume` before it could record its id (killed in the
/// moment between Cinder's answer and the database write): the one attachment of the volume
/// that is still `reserved` and names no instance. Nova's attachments always name one; two such
/// reservations cannot be told apart, so none is adopted then (and a warning says so).
async fn adopt(svc: &CinderService, volume: &str) -> Result<Option<Attachment>, OpenStackError> {
    let found: Vec<Attachment> = svc
        .attachments_of(volume)
        .await?
        .into_iter()
        .filter(|a| a.status == "reserved" && a.instance.is_none())
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => {
            tracing::info!(
                volume_id = %volume,
                attachment = %one.id,
                "adopting the reservation a conductor made before it restarted",
            );
            Ok(Some(one.clone()))
        }
        several => {
            tracing::warn!(
                volume_id = %volume,
                reservations = several.len(),
                "several reservations of the volume name no instance; adopting none"
            );
            Ok(None)
        }
    }
}

/// Reads Cinder's status of the volume again, at most every [`REFRESH`].
async fn refresh_status(c: &Conductor, svc: &CinderService, row: &CinderRow) {
    let key = (row.node_uuid, row.volume_id.clone());
    {
        let mut refreshed = svc.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        if refreshed.get(&key).is_some_and(|at| at.elapsed() < REFRESH) {
            return;
        }
        refreshed.insert(key, Instant::now());
    }
    let (node, volume) = (row.node_uuid, row.volume_id.clone());
    let (status, error) = match svc.find_volume(&volume).await {
        Ok(found) => {
            if let (Some(target), Some(gib)) = (row.target_uuid, found.size) {
                follow_size(c, target, gib).await;
            }
            (Some(found.status), None)
        }
        Err(e) if e.kind.retried() => (row.cinder_status.clone(), Some(e.message)),
        Err(e) => (Some(format!("({})", e.kind.as_str())), None),
    };
    let _ = c
        .store
        .update_cinder_volume(
            node,
            volume,
            Box::new(move |r| {
                r.cinder_status = status;
                r.cinder_error = error;
            }),
        )
        .await;
}

/// Keeps the target's size at Cinder's (`size`, in GiB): a volume extended in Cinder grows on
/// the node without a detach.
async fn follow_size(c: &Conductor, target: Uuid, gib: u64) {
    let size = gib.saturating_mul(1 << 30);
    let known = c.store.get_target(target).await;
    if known.is_ok_and(|t| t.size_bytes.is_some_and(|now| now >= size)) {
        return;
    }
    match c.store.resize_target(target, size).await {
        Ok(change) => {
            let published = c.generations.publish(change);
            tracing::info!(
                target = %target,
                size_bytes = size,
                generation = published.generation,
                "the Cinder volume's size is the target's"
            );
        }
        Err(e) => tracing::warn!(target = %target, error = ?e, "cannot record Cinder's size"),
    }
}

/// At start, and until Cinder answers: every recorded attachment still exists in Cinder, and
/// every attachment Cinder has for a node with Cinder volumes is one of them. Differences are
/// logged (and shown in `list`), never acted on blindly.
async fn compare_with_cinder(c: Arc<Conductor>, svc: Arc<CinderService>) {
    let mut delay = Duration::from_secs(2);
    loop {
        match compare_once(&c, &svc).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    retry_in_s = delay.as_secs(),
                    "cannot compare the attachments with Cinder yet",
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn compare_once(c: &Conductor, svc: &CinderService) -> Result<(), String> {
    let rows = c
        .store
        .cinder_volumes(None)
        .await
        .map_err(|e| format!("{e:?}"))?;
    for row in &rows {
        let theirs = svc
            .attachments_of(&row.volume_id)
            .await
            .map_err(|e| e.message)?;
        let (node, volume) = (row.node_uuid, row.volume_id.clone());
        for attachment in theirs.iter().filter(|a| a.instance.is_none()) {
            let recorded = rows
                .iter()
                .any(|r| r.attachment_id.as_deref() == Some(attachment.id.as_str()));
            // A reservation not recorded yet is the flow's to adopt.
            let adoptable = row.phase == CinderPhase::Creating && row.attachment_id.is_none();
            if !(recorded || adoptable) {
                tracing::warn!(
                    volume_id = %volume,
                    attachment = %attachment.id,
                    status = %attachment.status,
                    "the volume has an attachment with no instance that tether did not record; \
                     left alone"
                );
            }
        }
        let Some(id) = &row.attachment_id else {
            continue;
        };
        if row.phase == CinderPhase::Attached && !theirs.iter().any(|a| &a.id == id) {
            tracing::error!(
                node = %node,
                volume_id = %volume,
                attachment = %id,
                "Cinder no longer has this volume's attachment; the node still has the volume"
            );
            let message = format!(
                "Cinder no longer has attachment {id} while the volume is attached to the node: \
                 Cinder may hand the volume to someone else; detach it"
            );
            let error = ErrorReport {
                kind: "attachment_gone".into(),
                message,
            };
            let _ = c
                .store
                .update_cinder_volume(node, volume, Box::new(move |r| r.error = Some(error)))
                .await;
        }
    }
    tracing::info!(
        volumes = rows.len(),
        "compared the Cinder attachments with Cinder's"
    );
    Ok(())
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// The agent's state of the volume's target, for `list`.
pub(crate) fn agent_view(
    row: &CinderRow,
    report: Option<&Heartbeat>,
) -> Option<crate::protocol::VolumeReport> {
    let target = row.target_uuid?;
    report?
        .volumes
        .iter()
        .find(|v| v.target_uuid == target)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Connector;

    #[test]
    fn the_connector_is_what_the_agent_reported() {
        let c = |t: &str, id: &str| Connector {
            connector_type: t.into(),
            connector_id: id.into(),
        };
        let report = Heartbeat {
            agent_version: "0.1.0".into(),
            generation: None,
            connectors: vec![
                c("mac", "52:54:00:00:00:01"),
                c("iqn", "iqn.1993-08.org.debian:01:node"),
                c("ip", "192.0.2.50"),
                c("ip", "192.0.2.51"),
            ],
            volumes: vec![],
            foreign: vec![],
        };
        let connector = connector("compute-17", &report, true);
        assert_eq!(connector["initiator"], "iqn.1993-08.org.debian:01:node");
        assert_eq!(connector["ip"], "192.0.2.50");
        assert_eq!(connector["host"], "compute-17");
        assert_eq!(connector["multipath"], true);
        assert_eq!(connector["os_type"], "linux");
        let bare = Heartbeat {
            connectors: vec![],
            ..report
        };
        let connector = super::connector("n", &bare, false);
        assert!(connector.get("initiator").is_none(), "RBD needs none");
    }
}
