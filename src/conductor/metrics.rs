//! The conductor's metrics: HTTP traffic counted as it happens, nodes, volumes and targets
//! read from the store at scrape time (one short lock, a few aggregate queries).
//!
//! Every error answer is counted by its stable kind, and each scrape says whether the database
//! could be read: the two signals an operator alerts on when the conductor cannot reach it.
//!
//! Long-polls of the targets are long by design: a request that waited for a change is counted
//! in `tether_conductor_long_polls_total` and never observed in the latency histogram, which
//! would otherwise read as a slow conductor.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::store::{MetricsSnapshot, Store, StoreApi, StoreError};
use crate::protocol::VolumeState;

/// Marks a response to a targets request that waited for a change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LongPolled;

/// The stable kind of an error answer (`unauthorized`, `database_busy`…), set by
/// `ApiError`'s response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorKind(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/v1/nodes/{node}/volume/targets`), never the raw path.
    route: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    route: String,
    /// A `&'static str` from the code: the set of values is bounded.
    kind: &'static str,
}

/// Latency buckets in seconds: a healthy request takes about a millisecond.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub(crate) struct ConductorMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    pub heartbeats: Counter,
    pub long_polls: Family<OutcomeLabels, Counter>,
    pub long_polls_waiting: Gauge,
    /// Written by the Ironic sync, read at each scrape (nothing shown without `[ironic]`).
    pub ironic_status: Arc<std::sync::Mutex<super::ironic::SyncStatus>>,
}

impl ConductorMetrics {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        let mut registry = Registry::default();
        let requests: Family<RequestLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register_with_unit(
            "tether_conductor_http_request_duration",
            "Time to answer an HTTP request, by route template, method and status class; \
             long-polls that waited are not included",
            Unit::Seconds,
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "tether_conductor_http_errors",
            "Error answers by route template and error kind (unauthorized, rate_limited, \
             database_busy, internal...)",
            errors.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "tether_conductor_heartbeats",
            "Heartbeats accepted and stored",
            heartbeats.clone(),
        );
        let long_polls = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["changed", "timeout", "shutdown"] {
            let _ = long_polls.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "tether_conductor_long_polls",
            "Targets long-polls that waited, by how the wait ended",
            long_polls.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "tether_conductor_long_polls_waiting",
            "Targets long-polls waiting for a change now",
            long_polls_waiting.clone(),
        );
        registry.register_collector(Box::new(StoreCollector(store)));
        let ironic_status: Arc<std::sync::Mutex<super::ironic::SyncStatus>> = Arc::default();
        registry.register_collector(Box::new(IronicCollector(ironic_status.clone())));
        Self {
            ironic_status,
            registry,
            requests,
            errors,
            heartbeats,
            long_polls,
            long_polls_waiting,
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A request's route, method and start, to observe its latency once answered (long-polls that
/// waited excepted) and count its error kind.
pub(crate) struct RequestTimer {
    route: String,
    method: &'static str,
    started: Instant,
}

impl RequestTimer {
    pub(crate) fn start(request: &Request) -> Self {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            // Unknown paths share one label: a scanner must not add series.
            .unwrap_or_else(|| "unmatched".to_string());
        Self {
            route,
            method: method_label(request.method()),
            started: Instant::now(),
        }
    }

    pub(crate) fn finish(self, metrics: &ConductorMetrics, response: &Response) {
        if let Some(&ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
            metrics
                .errors
                .get_or_create(&ErrorLabels {
                    route: self.route.clone(),
                    kind,
                })
                .inc();
        }
        if response.extensions().get::<LongPolled>().is_none() {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: self.route,
                    method: self.method,
                    status: status_class(response.status()),
                })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The Ironic sync's state, when `[ironic]` is set. The last error is shown by its kind only:
/// its message is in `ctl node list` and the log.
#[derive(Debug)]
struct IronicCollector(Arc<std::sync::Mutex<super::ironic::SyncStatus>>);

impl Collector for IronicCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if status.configured {
            encode_ironic(&status, encoder)?;
        }
        Ok(())
    }
}

fn encode_ironic(
    s: &super::ironic::SyncStatus,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let up: i64 = (s.state() == "ok").into();
    encoder
        .encode_descriptor(
            "tether_conductor_ironic_sync_up",
            "1 when the last pass of the Ironic node sync succeeded.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&up)?;
    let mut passes = encoder.encode_descriptor(
        "tether_conductor_ironic_sync_passes",
        "Passes of the Ironic node sync, by outcome.",
        None,
        MetricType::Counter,
    )?;
    for (outcome, n) in [("ok", s.passes_ok), ("failed", s.passes_failed)] {
        passes
            .encode_family(&[("outcome", outcome)])?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
    }
    let mut error = encoder.encode_descriptor(
        "tether_conductor_ironic_sync_error",
        "1 while the Ironic node sync fails, labelled with the kind of its last error.",
        None,
        MetricType::Gauge,
    )?;
    if let Some(e) = &s.last_error {
        error
            .encode_family(&[("kind", e.kind.as_str())])?
            .encode_gauge(&1i64)?;
    }
    encoder
        .encode_descriptor(
            "tether_conductor_ironic_nodes",
            "Ironic nodes seen by the last successful sync pass.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&s.nodes)?;
    encoder
        .encode_descriptor(
            "tether_conductor_ironic_sync_notes",
            "Ironic nodes, names or addresses the last pass left out (see ctl node list).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.notes.len() as u64))?;
    encoder
        .encode_descriptor(
            "tether_conductor_ironic_connectors_published",
            "Initiators published as Ironic volume connectors since the conductor started.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &s.connectors_published,
            None,
        )?;
    let seconds = Unit::Seconds;
    if let Some(d) = s.last_duration {
        encoder
            .encode_descriptor(
                "tether_conductor_ironic_sync_duration",
                "How long the last successful pass of the Ironic node sync took.",
                Some(&seconds),
                MetricType::Gauge,
            )?
            .encode_gauge(&d.as_secs_f64())?;
    }
    if let Some(at) = s.last_success {
        let age = at.elapsed().unwrap_or_default().as_secs();
        encoder
            .encode_descriptor(
                "tether_conductor_ironic_last_success_age",
                "Seconds since the last successful pass of the Ironic node sync.",
                Some(&seconds),
                MetricType::Gauge,
            )?
            .encode_gauge(&age)?;
    }
    Ok(())
}

/// Nodes, volumes and targets, read from the store on each scrape.
struct StoreCollector(Arc<Store>);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Scrapes run on a blocking thread (api.rs), where waiting for the store is allowed.
        let snapshot = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.block_on(self.0.metrics_snapshot()),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Internal(e.to_string()))
                .and_then(|runtime| runtime.block_on(self.0.metrics_snapshot())),
        };
        let snapshot = snapshot
            .inspect_err(|e| tracing::error!(error = %e, "cannot read the database for metrics"))
            .ok();
        encode_store(snapshot.as_ref(), encoder)
    }
}

/// `tether_conductor_database_up`, then the store's series when the database could be read.
/// When it could not, they are left out rather than shown as zeros, and the scrape still
/// succeeds: the conductor is up, its database is not.
fn encode_store(
    snapshot: Option<&MetricsSnapshot>,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(
            "tether_conductor_database_up",
            "1 when this scrape could read the conductor's database, 0 when it could not.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&i64::from(snapshot.is_some()))?;
    match snapshot {
        Some(s) => encode_snapshot(s, encoder),
        None => Ok(()),
    }
}

fn encode_snapshot(
    s: &MetricsSnapshot,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(
            "tether_conductor_nodes",
            "Enrolled nodes.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&s.nodes)?;
    encoder
        .encode_descriptor(
            "tether_conductor_nodes_never_seen",
            "Enrolled nodes that never sent a heartbeat.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.nodes.saturating_sub(s.last_seen.len() as u64)))?;
    let seconds = Unit::Seconds;
    let mut ages = encoder.encode_descriptor(
        "tether_conductor_node_last_seen_age",
        "Seconds since the node's last heartbeat, for every node that sent one.",
        Some(&seconds),
        MetricType::Gauge,
    )?;
    for (node, received_at) in &s.last_seen {
        let age = s.now.saturating_sub(*received_at).max(0);
        ages.encode_family(&[("node_uuid", node.as_str())])?
            .encode_gauge(&age)?;
    }
    let mut volumes = encoder.encode_descriptor(
        "tether_conductor_volumes",
        "Volumes by state, summed over every node's latest report.",
        None,
        MetricType::Gauge,
    )?;
    for state in VolumeState::ALL {
        let count = s
            .volume_states
            .iter()
            .find(|(name, _)| name == state.as_str())
            .map_or(0, |(_, n)| *n);
        volumes
            .encode_family(&[("state", state.as_str())])?
            .encode_gauge(&count)?;
    }
    let degraded = s
        .volume_states
        .iter()
        .find(|(name, _)| name == super::store::DEGRADED)
        .map_or(0, |(_, n)| *n);
    encoder
        .encode_descriptor(
            "tether_conductor_volumes_degraded",
            "Attached volumes reported with a path down, summed over every node's latest report.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&degraded)?;
    let mut targets = encoder.encode_descriptor(
        "tether_conductor_targets",
        "Volume targets assigned to nodes, by volume type.",
        None,
        MetricType::Gauge,
    )?;
    for volume_type in crate::metrics::VOLUME_TYPE_LABELS {
        let count: u64 = s
            .targets_by_type
            .iter()
            .filter(|(t, _)| crate::metrics::volume_type_label(t) == volume_type)
            .map(|(_, n)| *n)
            .sum();
        targets
            .encode_family(&[("volume_type", volume_type)])?
            .encode_gauge(&count)?;
    }
    let mut cinder = encoder.encode_descriptor(
        "tether_conductor_cinder_volumes",
        "Cinder volumes attached through the conductor, by phase of their flow.",
        None,
        MetricType::Gauge,
    )?;
    for phase in crate::protocol::cinder::CinderPhase::ALL {
        let count = s
            .cinder_phases
            .iter()
            .find(|(name, _)| name == phase.as_str())
            .map_or(0, |(_, n)| *n);
        cinder
            .encode_family(&[("phase", phase.as_str())])?
            .encode_gauge(&count)?;
    }
    encoder
        .encode_descriptor(
            "tether_conductor_cinder_unreachable_volumes",
            "Cinder volumes whose last call to Cinder got no answer; their flow waits.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&s.cinder_unreachable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(s: &MetricsSnapshot) -> String {
        #[derive(Debug)]
        struct Fixed(MetricsSnapshot);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_snapshot(&self.0, encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(s.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    /// The Ironic sync's series: none without `[ironic]`; while failing, the error's kind as
    /// a label and never its message.
    #[test]
    fn the_ironic_sync_shows_its_state_and_the_kind_of_its_error() {
        let status = Arc::new(std::sync::Mutex::new(
            super::super::ironic::SyncStatus::default(),
        ));
        let text = |status: &Arc<std::sync::Mutex<super::super::ironic::SyncStatus>>| {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(IronicCollector(status.clone())));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        assert!(!text(&status).contains("ironic"), "{}", text(&status));
        {
            let mut s = status.lock().unwrap();
            s.configured = true;
            s.passes_ok = 3;
            s.passes_failed = 2;
            s.nodes = 1000;
            s.last_error = Some(crate::protocol::ErrorReport {
                kind: "ironic_unreachable".into(),
                message: "connection refused at http://192.0.2.5:6385".into(),
            });
        }
        let out = text(&status);
        for line in [
            "tether_conductor_ironic_sync_up 0",
            "tether_conductor_ironic_sync_error{kind=\"ironic_unreachable\"} 1",
            "tether_conductor_ironic_sync_passes_total{outcome=\"failed\"} 2",
            "tether_conductor_ironic_nodes 1000",
            "tether_conductor_ironic_connectors_published_total 0",
        ] {
            assert!(out.contains(line), "{line} not in {out}");
        }
        assert!(!out.contains("refused"), "{out}");
    }

    /// A database that cannot be read shows as down, and its series are left out rather than
    /// read as an empty fleet.
    #[test]
    fn an_unreadable_database_reads_as_down_not_as_an_empty_fleet() {
        #[derive(Debug)]
        struct Read(Option<MetricsSnapshot>);
        impl Collector for Read {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_store(self.0.as_ref(), encoder)
            }
        }
        let text = |read: Option<MetricsSnapshot>| {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(Read(read)));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        let down = text(None);
        assert!(
            down.lines().any(|l| l == "tether_conductor_database_up 0"),
            "{down}"
        );
        assert!(!down.contains("tether_conductor_nodes"), "{down}");
        assert!(!down.contains("tether_conductor_volumes"), "{down}");
        let up = text(Some(MetricsSnapshot {
            now: 1_000,
            nodes: 2,
            last_seen: Vec::new(),
            volume_states: Vec::new(),
            targets_by_type: Vec::new(),
            cinder_phases: Vec::new(),
            cinder_unreachable: 0,
        }));
        for line in ["tether_conductor_database_up 1", "tether_conductor_nodes 2"] {
            assert!(up.lines().any(|l| l == line), "{line} missing in\n{up}");
        }
    }

    #[test]
    fn snapshot_becomes_gauges_with_bounded_labels() {
        let text = encoded(&MetricsSnapshot {
            now: 1_000,
            nodes: 3,
            last_seen: vec![("n-a".into(), 990), ("n-b".into(), 1_002)],
            volume_states: vec![
                ("attached".into(), 4),
                ("failed".into(), 1),
                ("degraded".into(), 2),
            ],
            targets_by_type: vec![("iscsi".into(), 4), ("rbd".into(), 1), ("nvme".into(), 2)],
            cinder_phases: vec![("attached".into(), 3), ("creating".into(), 1)],
            cinder_unreachable: 1,
        });
        for line in [
            "tether_conductor_cinder_volumes{phase=\"attached\"} 3",
            "tether_conductor_cinder_volumes{phase=\"deleting\"} 0",
            "tether_conductor_cinder_unreachable_volumes 1",
            "tether_conductor_volumes_degraded 2",
            "tether_conductor_nodes 3",
            "tether_conductor_nodes_never_seen 1",
            "tether_conductor_node_last_seen_age_seconds{node_uuid=\"n-a\"} 10",
            // A clock that stepped back reads as just seen, never negative.
            "tether_conductor_node_last_seen_age_seconds{node_uuid=\"n-b\"} 0",
            "tether_conductor_volumes{state=\"attached\"} 4",
            "tether_conductor_volumes{state=\"failed\"} 1",
            "tether_conductor_volumes{state=\"detach_blocked\"} 0",
            "tether_conductor_targets{volume_type=\"iscsi\"} 4",
            "tether_conductor_targets{volume_type=\"other\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("nvme"));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(status_class(StatusCode::ACCEPTED), "2xx");
        assert_eq!(status_class(StatusCode::UNAUTHORIZED), "4xx");
        assert_eq!(status_class(StatusCode::INTERNAL_SERVER_ERROR), "5xx");
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}

/// `cargo test --release --lib scrape_at_fleet_scale -- --ignored --nocapture` prints what a
/// scrape of 10,000 nodes costs (docs/operations.md quotes it).
#[cfg(test)]
mod scale {
    use super::*;
    use crate::protocol::{Heartbeat, NodeCreate, VolumeReport};

    #[test]
    #[ignore = "seconds in a debug build; a measurement, run it with --release"]
    fn scrape_at_fleet_scale() {
        const NODES: u32 = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let db = crate::conductor::store::SqliteDb::open(&dir.path().join("db")).unwrap();
        for i in 0..NODES {
            let node = db
                .create_node(NodeCreate {
                    name: format!("n{i}"),
                    uuid: None,
                    addresses: vec![format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 255)],
                    agent_token: None,
                })
                .unwrap();
            let volume = |j: u32, state| VolumeReport {
                target_uuid: uuid::Uuid::new_v4(),
                volume_id: format!("v{j}"),
                volume_type: "iscsi".into(),
                state,
                device_path: Some(format!(
                    "/dev/disk/by-path/ip-192.0.2.10:3260-iscsi-\
                     iqn.2003-01.org.linux-iscsi.array:n{i}-lun-{j}"
                )),
                paths: vec![format!("/dev/sd{j}")],
                size_bytes: Some(1 << 30),
                wwn: Some("naa.6001405abcdef0123".into()),
                mountpoint: None,
                error: None,
                degraded: (j == 1).then(|| crate::protocol::ErrorReport {
                    kind: "path_down".into(),
                    message: "no path is up".into(),
                }),
                unconfirmed: false,
                since: "2026-01-01T00:00:00Z".into(),
            };
            let report = Heartbeat {
                agent_version: "0.1.0".into(),
                generation: Some(1),
                connectors: Vec::new(),
                volumes: vec![
                    volume(0, VolumeState::Attached),
                    volume(1, VolumeState::Attached),
                    volume(2, VolumeState::Mounted),
                    volume(3, VolumeState::Failed),
                ],
                foreign: Vec::new(),
            };
            db.store_report(node.uuid, Arc::new(report)).unwrap();
        }
        let store = Arc::new(Store::Sqlite(crate::conductor::store::SqliteStore::new(db)));
        let metrics = ConductorMetrics::new(store.clone());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for _ in 0..3 {
            let started = Instant::now();
            runtime.block_on(store.metrics_snapshot()).unwrap();
            let locked = started.elapsed();
            let started = Instant::now();
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, metrics.registry()).unwrap();
            eprintln!(
                "store read {locked:?}, whole scrape {:?}, {} bytes",
                started.elapsed(),
                text.len()
            );
            let ages = text
                .lines()
                .filter(|l| l.starts_with("tether_conductor_node_last_seen_age_seconds{"))
                .count();
            assert_eq!(ages, NODES as usize);
            assert!(text.contains("\ntether_conductor_volumes{state=\"attached\"} 20000\n"));
            assert!(text.contains("\ntether_conductor_volumes{state=\"failed\"} 10000\n"));
            assert!(text.contains("\ntether_conductor_volumes_degraded 10000\n"));
        }
    }
}
