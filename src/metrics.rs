//! What the agent's and the conductor's metrics endpoints share: the exposition, and the
//! bounded label values. Each side keeps its own registry (no global state).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Deserializer};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry as OpenMetrics text when the scraper asks for it (Prometheus does), else in the
/// Prometheus text format 0.0.4, which every other client reads.
pub fn exposition(registry: &Registry, request: &HeaderMap) -> Response {
    let openmetrics = request
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let mut body = String::with_capacity(4096);
    let (encoded, content_type) = if openmetrics {
        (text::encode(&mut body, registry), OPENMETRICS)
    } else {
        (
            prometheus_text::encode(&mut body, registry),
            prometheus_text::CONTENT_TYPE,
        )
    };
    if encoded.is_err() {
        // A collector failed and logged why; a partial exposition would read as zeros.
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be collected; see the log\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Every value [`volume_type_label`] gives.
pub const VOLUME_TYPE_LABELS: [&str; 3] = ["iscsi", "rbd", "other"];

/// A volume type as a label value: anything but the two known types is `other`, so a
/// malformed target cannot add series.
pub fn volume_type_label(volume_type: &str) -> &'static str {
    match volume_type {
        "iscsi" => "iscsi",
        "rbd" => "rbd",
        "nvmeof" => "nvmeof",
        _ => "other",
    }
}

/// A socket address on the loopback interface: what a metrics endpoint without
/// authentication may listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackAddr(SocketAddr);

impl LoopbackAddr {
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl fmt::Display for LoopbackAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for LoopbackAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let addr: SocketAddr = s.parse().map_err(|_| {
            format!("{s:?} is not an address:port (for example 127.0.0.1:9587 or [::1]:9587)")
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{s:?} is not a loopback address; the metrics endpoint has no authentication, \
                 so it listens on 127.0.0.1 or [::1] only (scrape it through a local exporter \
                 or proxy)"
            ));
        }
        Ok(Self(addr))
    }
}

impl<'de> Deserialize<'de> for LoopbackAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in ["127.0.0.1:9587", "127.0.0.2:1", "[::1]:9587"] {
            assert_eq!(ok.parse::<LoopbackAddr>().unwrap().to_string(), ok);
        }
        for bad in ["0.0.0.0:9587", "[::]:9587", "192.0.2.1:9587", "10.0.0.1:80"] {
            let e = bad.parse::<LoopbackAddr>().unwrap_err();
            assert!(e.contains("not a loopback address"), "{bad}: {e}");
        }
        for bad in ["localhost:9587", "127.0.0.1", "9587", ""] {
            let e = bad.parse::<LoopbackAddr>().unwrap_err();
            assert!(e.contains("not an address:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_volume_types_share_one_label() {
        assert_eq!(volume_type_label("iscsi"), "iscsi");
        assert_eq!(volume_type_label("rbd"), "rbd");
        assert_eq!(volume_type_label("nvme-of"), "other");
        assert_eq!(volume_type_label(""), "other");
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn exposition_follows_the_accept_header() {
        use prometheus_client::metrics::counter::Counter;
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("things", "Things done", counter.clone());
        counter.inc();

        let plain = exposition(&registry, &HeaderMap::new());
        assert_eq!(
            plain.headers()[header::CONTENT_TYPE],
            prometheus_text::CONTENT_TYPE
        );
        let text = body(plain).await;
        assert!(text.contains("\nthings_total 1\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let mut om = HeaderMap::new();
        om.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ),
        );
        let response = exposition(&registry, &om);
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let text = body(response).await;
        assert!(text.contains("\nthings_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
