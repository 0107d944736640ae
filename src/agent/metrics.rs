//! The agent's metrics, recorded by the event loop where host operations finish and heartbeats
//! return, and served on a loopback address when `agent.metrics_listen` is set.
//!
//! Recording costs a few atomic operations per attach, detach or heartbeat; the registry is a
//! few kilobytes. Nothing is computed at scrape time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{LoopbackAddr, volume_type_label};
use crate::protocol::VolumeState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    volume_type: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    operation: &'static str,
    volume_type: &'static str,
    /// A stable error kind from the code, so the set of values is bounded.
    kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConductorLabels {
    /// As configured, without credentials.
    url: String,
    /// The address a name with several resolved to; empty otherwise.
    address: String,
}

/// The conductor in use and the moves between conductors, recorded by the HTTP client.
#[derive(Clone, Default)]
pub(crate) struct ConductorMetrics {
    pub(crate) failovers: Counter,
    in_use: Family<ConductorLabels, Gauge>,
}

impl ConductorMetrics {
    pub(crate) fn hopped(&self) {
        self.failovers.inc();
    }

    pub(crate) fn using(&self, conductor: &super::conductors::Endpoint) {
        self.in_use.clear();
        self.in_use
            .get_or_create(&ConductorLabels {
                url: conductor.shown.clone(),
                address: conductor.address().unwrap_or_default(),
            })
            .set(1);
    }
}

/// Seconds: an iSCSI login takes tens of milliseconds to seconds, a timeout a minute.
const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// How a detach ended, for `tether_agent_detaches_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DetachResult {
    Ok,
    Blocked,
    Failed,
}

pub(crate) struct AgentMetrics {
    registry: Registry,
    attaches: Family<OperationLabels, Counter>,
    attach_seconds: Family<OperationLabels, Histogram>,
    detaches: Family<OperationLabels, Counter>,
    detach_seconds: Family<OperationLabels, Histogram>,
    failures: Family<FailureLabels, Counter>,
    grows: Family<OperationLabels, Counter>,
    volumes: Family<StateLabels, Gauge>,
    heartbeats: Family<ResultLabels, Counter>,
    last_heartbeat: Gauge,
    record_writable: Gauge,
    degraded: Gauge,
    conductor: ConductorMetrics,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let attaches = Family::<OperationLabels, Counter>::default();
        let detaches = Family::<OperationLabels, Counter>::default();
        // Series that exist from the start, so that rates and alerts see a zero, not nothing.
        for volume_type in ["iscsi", "rbd", "nvmeof"] {
            for result in ["ok", "failed"] {
                let _ = attaches.get_or_create(&OperationLabels {
                    volume_type,
                    result,
                });
            }
            for result in ["ok", "blocked", "failed"] {
                let _ = detaches.get_or_create(&OperationLabels {
                    volume_type,
                    result,
                });
            }
        }
        let histogram = || Histogram::new(DURATION_BUCKETS);
        let attach_seconds: Family<OperationLabels, Histogram> =
            Family::new_with_constructor(histogram);
        let detach_seconds: Family<OperationLabels, Histogram> =
            Family::new_with_constructor(histogram);
        let failures = Family::<FailureLabels, Counter>::default();
        let grows = Family::<OperationLabels, Counter>::default();
        let volumes = Family::<StateLabels, Gauge>::default();
        for state in VolumeState::ALL {
            let _ = volumes.get_or_create(&StateLabels {
                state: state.as_str(),
            });
        }
        let heartbeats = Family::<ResultLabels, Counter>::default();
        for result in ["ok", "failed"] {
            let _ = heartbeats.get_or_create(&ResultLabels { result });
        }
        let last_heartbeat = Gauge::default();
        let record_writable = Gauge::default();
        record_writable.set(1);
        let degraded = Gauge::default();

        registry.register(
            "tether_agent_attaches",
            "Attaches that finished, by volume type and result (ok, failed)",
            attaches.clone(),
        );
        registry.register_with_unit(
            "tether_agent_attach_duration",
            "Time an attach took (login or map, device wait, mount), by volume type and result",
            Unit::Seconds,
            attach_seconds.clone(),
        );
        registry.register(
            "tether_agent_detaches",
            "Detaches that finished, by volume type and result (ok, blocked, failed)",
            detaches.clone(),
        );
        registry.register_with_unit(
            "tether_agent_detach_duration",
            "Time a detach took, by volume type and result",
            Unit::Seconds,
            detach_seconds.clone(),
        );
        registry.register(
            "tether_agent_volume_failures",
            "Failed attaches, blocked or failed detaches and rejected targets, by operation \
             (attach, detach, validate), volume type and error kind",
            failures.clone(),
        );
        registry.register(
            "tether_agent_grows",
            "Online grows of attached volumes (rescan, then the file system), by volume type \
             and result (ok, failed)",
            grows.clone(),
        );
        registry.register(
            "tether_agent_volumes",
            "Volumes the agent tracks, by state",
            volumes.clone(),
        );
        registry.register(
            "tether_agent_heartbeats",
            "Heartbeats sent to the conductor, by result (ok, failed)",
            heartbeats.clone(),
        );
        registry.register_with_unit(
            "tether_agent_last_heartbeat_timestamp",
            "Unix time of the last heartbeat the conductor accepted; 0 before the first",
            Unit::Seconds,
            last_heartbeat.clone(),
        );
        registry.register(
            "tether_agent_record_writable",
            "1 while the ownership record can be written; at 0 no attach starts \
             (kind record_unwritable)",
            record_writable.clone(),
        );
        registry.register(
            "tether_agent_volumes_degraded",
            "Attached volumes with a path down (kind path_down); they stay attached",
            degraded.clone(),
        );
        let conductor = ConductorMetrics::default();
        registry.register(
            "tether_agent_conductor_failovers",
            "Moves to the next conductor because the one in use could not be reached or was \
             failing",
            conductor.failovers.clone(),
        );
        registry.register(
            "tether_agent_conductor",
            "The conductor in use (1), by its URL and, for a name with several addresses, the \
             address",
            conductor.in_use.clone(),
        );
        registry.register_collector(Box::new(UdevRestarts));
        Self {
            conductor,
            registry,
            attaches,
            attach_seconds,
            detaches,
            detach_seconds,
            failures,
            grows,
            volumes,
            heartbeats,
            last_heartbeat,
            record_writable,
            degraded,
        }
    }

    /// The handle the HTTP client records the conductor in use with.
    pub(crate) fn conductor(&self) -> ConductorMetrics {
        self.conductor.clone()
    }

    pub(crate) fn set_degraded(&self, volumes: usize) {
        self.degraded.set(volumes as i64);
    }

    pub(crate) fn set_record_writable(&self, writable: bool) {
        self.record_writable.set(i64::from(writable));
    }

    /// An attach finished; `failure` is its error kind when it failed.
    pub(crate) fn attached(&self, volume_type: &str, took: Duration, failure: Option<&str>) {
        let result = if failure.is_some() { "failed" } else { "ok" };
        let labels = OperationLabels {
            volume_type: volume_type_label(volume_type),
            result,
        };
        let (count, seconds) = (&self.attaches, &self.attach_seconds);
        self.finished("attach", (count, seconds), labels, took, failure);
    }

    /// A detach finished; `failure` is the error kind when it was blocked or failed.
    pub(crate) fn detached(
        &self,
        volume_type: &str,
        took: Duration,
        result: DetachResult,
        failure: Option<&str>,
    ) {
        let labels = OperationLabels {
            volume_type: volume_type_label(volume_type),
            result: match result {
                DetachResult::Ok => "ok",
                DetachResult::Blocked => "blocked",
                DetachResult::Failed => "failed",
            },
        };
        let (count, seconds) = (&self.detaches, &self.detach_seconds);
        self.finished("detach", (count, seconds), labels, took, failure);
    }

    /// Counts and times one finished attach or detach, and its failure kind.
    fn finished(
        &self,
        operation: &'static str,
        (count, seconds): (
            &Family<OperationLabels, Counter>,
            &Family<OperationLabels, Histogram>,
        ),
        labels: OperationLabels,
        took: Duration,
        failure: Option<&str>,
    ) {
        count.get_or_create(&labels).inc();
        seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(kind) = failure {
            self.failure(operation, labels.volume_type, kind);
        }
    }

    /// A target the agent refused without running anything.
    /// A grow finished; `failure` is the error kind when it failed.
    pub(crate) fn grown(&self, volume_type: &str, failure: Option<&str>) {
        let volume_type = volume_type_label(volume_type);
        let result = if failure.is_some() { "failed" } else { "ok" };
        self.grows
            .get_or_create(&OperationLabels {
                volume_type,
                result,
            })
            .inc();
        if let Some(kind) = failure {
            self.failure("grow", volume_type, kind);
        }
    }

    pub(crate) fn rejected(&self, volume_type: &str, kind: &str) {
        self.failure("validate", volume_type_label(volume_type), kind);
    }

    fn failure(&self, operation: &'static str, volume_type: &'static str, kind: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                operation,
                volume_type,
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The states of every tracked volume, after each turn of the event loop.
    pub(crate) fn set_volumes(&self, states: impl IntoIterator<Item = VolumeState>) {
        let mut counts = [0i64; VolumeState::ALL.len()];
        for state in states {
            if let Some(i) = VolumeState::ALL.iter().position(|s| *s == state) {
                counts[i] += 1;
            }
        }
        for (state, count) in VolumeState::ALL.iter().zip(counts) {
            self.volumes
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(count);
        }
    }

    pub(crate) fn heartbeat(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.heartbeats
            .get_or_create(&ResultLabels { result })
            .inc();
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            self.last_heartbeat.set(now);
        }
    }
}

/// Restarts of the udev monitor, read from the monitor's own counter at scrape time.
#[derive(Debug)]
struct UdevRestarts;

impl Collector for UdevRestarts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let restarts = ConstCounter::new(crate::backend::block::monitor_restarts());
        let metric = encoder.encode_descriptor(
            "tether_agent_udev_monitor_restarts",
            "Times the udev monitor failed and was opened again; device waits meanwhile may \
             have timed out",
            None,
            MetricType::Counter,
        )?;
        restarts.encode(metric)
    }
}

/// Binds the metrics endpoint. A failure is logged and the agent runs on without it: volumes
/// matter more than their metrics, and the scraper reports the target down.
pub(crate) async fn start(
    addr: LoopbackAddr,
    metrics: Arc<AgentMetrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match tokio::net::TcpListener::bind(addr.addr()).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(kind = "metrics_unavailable", listen = %addr, error = %e,
                "cannot listen for metrics (agent.metrics_listen); running without them");
            return None;
        }
    };
    tracing::info!(listen = %addr, "serving metrics at /metrics");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(
                kind = "metrics_unavailable",
                error = %e,
                "the metrics endpoint stopped"
            );
        }
    }))
}

async fn scrape(State(metrics): State<Arc<AgentMetrics>>, headers: HeaderMap) -> Response {
    crate::metrics::exposition(&metrics.registry, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &AgentMetrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        out
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn the_conductor_in_use_is_one_series_and_moves_are_counted() {
        let m = AgentMetrics::new();
        let conductors = m.conductor();
        let mut selector = crate::agent::conductors::Selector::new(&[
            "https://u:secret@a.example:6387".into(),
            "https://192.0.2.9:6387".into(),
        ])
        .unwrap();
        conductors.using(selector.current().1);
        let (epoch, _) = selector.current();
        selector.failed(epoch, std::time::Instant::now(), 1.0);
        conductors.hopped();
        conductors.using(selector.current().1);
        let t = text(&m);
        assert!(has(&t, "tether_agent_conductor_failovers_total 1"), "{t}");
        assert!(
            has(
                &t,
                r#"tether_agent_conductor{url="https://192.0.2.9:6387",address=""} 1"#
            ),
            "{t}"
        );
        assert!(!t.contains("a.example") && !t.contains("secret"), "{t}");
    }

    #[test]
    fn operations_are_counted_by_type_result_and_kind() {
        let m = AgentMetrics::new();
        m.attached("iscsi", Duration::from_millis(300), None);
        m.attached("iscsi", Duration::from_secs(60), Some("device_timeout"));
        m.detached(
            "rbd",
            Duration::from_millis(5),
            DetachResult::Blocked,
            Some("device_in_use"),
        );
        m.rejected("nvme", "unknown_volume_type");
        let t = text(&m);
        for line in [
            r#"tether_agent_attaches_total{volume_type="iscsi",result="ok"} 1"#,
            r#"tether_agent_attaches_total{volume_type="iscsi",result="failed"} 1"#,
            r#"tether_agent_attaches_total{volume_type="rbd",result="ok"} 0"#,
            r#"tether_agent_attach_duration_seconds_count{volume_type="iscsi",result="failed"} 1"#,
            concat!(
                r#"tether_agent_attach_duration_seconds_bucket{le="0.5","#,
                r#"volume_type="iscsi",result="ok"} 1"#
            ),
            r#"tether_agent_detaches_total{volume_type="rbd",result="blocked"} 1"#,
            concat!(
                r#"tether_agent_volume_failures_total{operation="attach","#,
                r#"volume_type="iscsi",kind="device_timeout"} 1"#
            ),
            concat!(
                r#"tether_agent_volume_failures_total{operation="detach","#,
                r#"volume_type="rbd",kind="device_in_use"} 1"#
            ),
            concat!(
                r#"tether_agent_volume_failures_total{operation="validate","#,
                r#"volume_type="other",kind="unknown_volume_type"} 1"#
            ),
        ] {
            assert!(has(&t, line), "{line} missing in\n{t}");
        }
    }

    #[test]
    fn volume_states_are_replaced_not_added() {
        let m = AgentMetrics::new();
        m.set_volumes([VolumeState::Attaching, VolumeState::Attaching]);
        m.set_volumes([VolumeState::Attached, VolumeState::Failed]);
        let t = text(&m);
        assert!(
            has(&t, r#"tether_agent_volumes{state="attaching"} 0"#),
            "{t}"
        );
        assert!(
            has(&t, r#"tether_agent_volumes{state="attached"} 1"#),
            "{t}"
        );
        assert!(has(&t, r#"tether_agent_volumes{state="failed"} 1"#), "{t}");
    }

    #[test]
    fn heartbeats_record_the_time_of_the_last_success() {
        let m = AgentMetrics::new();
        assert!(has(
            &text(&m),
            "tether_agent_last_heartbeat_timestamp_seconds 0"
        ));
        m.heartbeat(false);
        m.heartbeat(true);
        let t = text(&m);
        assert!(has(&t, r#"tether_agent_heartbeats_total{result="ok"} 1"#));
        assert!(has(
            &t,
            r#"tether_agent_heartbeats_total{result="failed"} 1"#
        ));
        let at: i64 = t
            .lines()
            .find_map(|l| l.strip_prefix("tether_agent_last_heartbeat_timestamp_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - at).abs() <= 2, "{at} vs {now}");
    }
}
