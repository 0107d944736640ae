//! Ironic's bare-metal API (v1, microversion 1.32 for volume connectors), as the conductor uses
//! it: every node and every port, a page at a time, and the volume connectors of a node.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CloudSource, OpenStackError, OpenStackErrorKind, ServiceClient};

/// 1.32 added volume connectors; `fields` (1.8) and `detail` come with it. Ironic 9.0 (Pike)
/// and later speak it.
pub const MICROVERSION: &str = "1.32";
const VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";

/// Items asked for per request: Ironic's own cap (`[api] max_limit`) is 1,000.
pub const PAGE: usize = 500;

/// A node as tether reads it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct IronicNode {
    pub uuid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub instance_uuid: Option<String>,
    #[serde(default)]
    pub provision_state: Option<String>,
}

/// A port: one MAC address of a node.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct IronicPort {
    pub uuid: String,
    pub address: String,
    pub node_uuid: String,
}

/// A volume connector of a node (its initiator identity, for boot from volume and Nova).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct IronicConnector {
    pub uuid: String,
    #[serde(rename = "type")]
    pub connector_type: String,
    pub connector_id: String,
    #[serde(default)]
    pub node_uuid: Option<String>,
}

/// What the conductor asks of Ironic, behind a trait so that the sync is tested without one.
#[allow(async_fn_in_trait)]
pub trait IronicApi: Send + Sync {
    /// Every node, page after page.
    async fn nodes(&self) -> Result<Vec<IronicNode>, OpenStackError>;
    /// Every port, page after page.
    async fn ports(&self) -> Result<Vec<IronicPort>, OpenStackError>;
    async fn connectors_of(&self, node: &str) -> Result<Vec<IronicConnector>, OpenStackError>;
    async fn create_connector(
        &self,
        node: &str,
        connector_type: &str,
        connector_id: &str,
    ) -> Result<IronicConnector, OpenStackError>;
}

/// The real Ironic.
#[derive(Debug, Clone)]
pub struct Ironic {
    client: ServiceClient,
    page: usize,
}

/// One page of a listing: the items under `key`, and whether Ironic says more follow.
#[derive(Debug, PartialEq)]
pub(crate) struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// Reads a list answer: `{"<key>": [...], "next": "<url>"}`; `next` is there only when the page
/// was full.
pub(crate) fn parse_page<T: serde::de::DeserializeOwned>(
    body: &Value,
    key: &str,
) -> Result<Page<T>, String> {
    let items = body
        .get(key)
        .cloned()
        .ok_or_else(|| format!("no {key:?} in the answer"))?;
    let items: Vec<T> = serde_json::from_value(items).map_err(|e| format!("{key}: {e}"))?;
    let more = body.get("next").and_then(Value::as_str).is_some();
    Ok(Page { items, more })
}

/// Where Ironic's v1 API is, given its endpoint: the catalog's names the root (`:6385`) or
/// `/v1`; both end up at `/v1/`.
pub fn v1_base(endpoint: &reqwest::Url) -> reqwest::Url {
    let mut base = endpoint.clone();
    let path = base.path().trim_end_matches('/').to_string();
    if path.ends_with("/v1") {
        base.set_path(&format!("{path}/"));
    } else {
        base.set_path(&format!("{path}/v1/"));
    }
    base
}

impl Ironic {
    /// Authenticates and finds Ironic's endpoint (catalog type `baremetal`).
    pub async fn connect(
        source: &CloudSource,
        timeout: Duration,
        page: usize,
    ) -> Result<Self, OpenStackError> {
        let client = ServiceClient::connect(source, "baremetal", timeout).await?;
        let base = v1_base(client.base());
        Ok(Self {
            client: client.with_base(base),
            page: page.clamp(1, 1000),
        })
    }

    pub fn endpoint(&self) -> &reqwest::Url {
        self.client.base()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, OpenStackError> {
        let mut request = self
            .client
            .request(method, path)?
            .header(VERSION_HEADER, MICROVERSION);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = self.client.send(request, what).await?;
        if let Some(id) = response.headers().get("x-openstack-request-id") {
            tracing::debug!(request_id = ?id, what, "Ironic answered");
        }
        response.json::<Value>().await.map_err(|e| {
            OpenStackError::new(
                OpenStackErrorKind::BadAnswer,
                format!("{what}: the answer does not parse: {e}"),
            )
        })
    }

    /// Every item of a listing, `page` at a time, each page after the last uuid of the one
    /// before (`marker`).
    async fn all<T: serde::de::DeserializeOwned>(
        &self,
        resource: &str,
        key: &str,
        fields: &str,
        uuid: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, OpenStackError> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut query = vec![
                ("fields", fields.to_string()),
                ("limit", self.page.to_string()),
            ];
            if let Some(m) = &marker {
                query.push(("marker", m.clone()));
            }
            let url = reqwest::Url::parse_with_params("http://x/", &query).expect("a valid URL");
            let path = format!("{resource}?{}", url.query().unwrap_or_default());
            let what = format!("listing Ironic's {key}");
            let body = self.call(Method::GET, &path, None, &what).await?;
            let page: Page<T> = parse_page(&body, key).map_err(|e| {
                OpenStackError::new(OpenStackErrorKind::BadAnswer, format!("{what}: {e}"))
            })?;
            marker = page.items.last().map(&uuid);
            let last = !page.more || page.items.is_empty();
            all.extend(page.items);
            if last {
                return Ok(all);
            }
        }
    }
}

/// A query value or path segment as Ironic takes it.
fn query(pairs: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params("http://x/", pairs).expect("a valid URL");
    url.query().unwrap_or_default().to_string()
}

impl IronicApi for Ironic {
    async fn nodes(&self) -> Result<Vec<IronicNode>, OpenStackError> {
        let fields = "uuid,name,instance_uuid,provision_state";
        self.all("nodes", "nodes", fields, |n: &IronicNode| n.uuid.clone())
            .await
    }

    async fn ports(&self) -> Result<Vec<IronicPort>, OpenStackError> {
        self.all(
            "ports",
            "ports",
            "uuid,address,node_uuid",
            |p: &IronicPort| p.uuid.clone(),
        )
        .await
    }

    async fn connectors_of(&self, node: &str) -> Result<Vec<IronicConnector>, OpenStackError> {
        let path = format!(
            "volume/connectors?{}",
            query(&[("node", node), ("detail", "true")])
        );
        let what = format!("volume connectors of Ironic node {node}");
        let body = self.call(Method::GET, &path, None, &what).await?;
        let page: Page<IronicConnector> = parse_page(&body, "connectors")
            .map_err(|e| OpenStackError::new(OpenStackErrorKind::BadAnswer, e))?;
        Ok(page.items)
    }

    async fn create_connector(
        &self,
        node: &str,
        connector_type: &str,
        connector_id: &str,
    ) -> Result<IronicConnector, OpenStackError> {
        let body = json!({
            "node_uuid": node,
            "type": connector_type,
            "connector_id": connector_id,
        });
        let what = format!("creating the {connector_type} volume connector of Ironic node {node}");
        let created = self
            .call(Method::POST, "volume/connectors", Some(body), &what)
            .await?;
        serde_json::from_value(created).map_err(|e| {
            OpenStackError::new(
                OpenStackErrorKind::BadAnswer,
                format!("{what}: the answer does not parse: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_api_is_found_below_the_root_or_v1() {
        for (endpoint, base) in [
            ("http://i:6385", "http://i:6385/v1/"),
            ("http://i:6385/", "http://i:6385/v1/"),
            ("http://i:6385/v1", "http://i:6385/v1/"),
            (
                "https://api.example/baremetal/v1/",
                "https://api.example/baremetal/v1/",
            ),
            (
                "https://api.example/baremetal",
                "https://api.example/baremetal/v1/",
            ),
        ] {
            let url = reqwest::Url::parse(endpoint).unwrap();
            assert_eq!(v1_base(&url).as_str(), base, "{endpoint}");
        }
    }

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/ironic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn json(name: &str) -> Value {
        serde_json::from_str(&fixture(name)).unwrap()
    }

    /// Ironic's pages chain: a full page names the next (its marker the page's last uuid), the
    /// last page does not; every node and every port is read once.
    #[test]
    fn ironics_pages_chain_and_end() {
        let first: Page<IronicNode> = parse_page(&json("nodes-page-1.json"), "nodes").unwrap();
        assert!(first.more);
        let next = json("nodes-page-1.json")["next"]
            .as_str()
            .unwrap()
            .to_string();
        let marker = &first.items.last().unwrap().uuid;
        assert!(next.ends_with(&format!("marker={marker}")), "{next}");
        let last: Page<IronicNode> = parse_page(&json("nodes-page-2.json"), "nodes").unwrap();
        assert!(!last.more);
        let names: Vec<_> = first
            .items
            .iter()
            .chain(&last.items)
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(
            names,
            [
                Some("bm-1".into()),
                Some("bm-2".into()),
                Some("bm-3".into())
            ]
        );
        assert_eq!(first.items[0].provision_state.as_deref(), Some("enroll"));
        assert_eq!(first.items[0].instance_uuid, None);

        let first: Page<IronicPort> = parse_page(&json("ports-page-1.json"), "ports").unwrap();
        let last: Page<IronicPort> = parse_page(&json("ports-page-2.json"), "ports").unwrap();
        assert!(first.more && !last.more);
        let ports: Vec<_> = first.items.into_iter().chain(last.items).collect();
        assert_eq!(ports.len(), 4);
        let of_bm1 = ports
            .iter()
            .filter(|p| p.node_uuid == "11111111-2222-3333-4444-555555555555")
            .count();
        assert_eq!(of_bm1, 2);
    }

    #[test]
    fn connectors_parse_as_listed_and_created() {
        let listed: Page<IronicConnector> =
            parse_page(&json("connectors-of-node.json"), "connectors").unwrap();
        assert_eq!(listed.items.len(), 1);
        assert_eq!(listed.items[0].connector_type, "iqn");
        assert_eq!(listed.items[0].connector_id, "iqn.2004-10.com.example:bm-1");
        let none: Page<IronicConnector> =
            parse_page(&json("connectors-of-node-none.json"), "connectors").unwrap();
        assert!(none.items.is_empty() && !none.more);
        let created: IronicConnector =
            serde_json::from_value(json("connector-created.json")).unwrap();
        assert_eq!(
            created.node_uuid.as_deref(),
            Some("11111112-2222-3333-4444-555555555555")
        );
        let text = fixture("connector-created-nqn.http");
        assert!(text.starts_with("status: 201"));
        let body = text.split_once("\n\n").unwrap().1;
        let nqn: IronicConnector = serde_json::from_str(body).unwrap();
        assert_eq!(nqn.connector_type, "nqn");
        let err = parse_page::<IronicConnector>(&json("connector-created.json"), "connectors");
        assert!(err.unwrap_err().contains("no \"connectors\""));
    }

    /// Ironic's error answers get the kinds the sync branches on: a connector that exists is a
    /// conflict (a warning, not an outage), an unknown node is not found, a microversion the
    /// service lacks is a refusal, never retried as an outage.
    #[test]
    fn ironics_error_answers_get_their_kinds() {
        for (name, kind) in [
            ("error-connector-exists.http", OpenStackErrorKind::Conflict),
            (
                "error-connectors-of-unknown-node.http",
                OpenStackErrorKind::NotFound,
            ),
            (
                "error-old-microversion.http",
                OpenStackErrorKind::BadRequest,
            ),
        ] {
            let (_, got) = crate::openstack::captured_error_kind(name, &fixture(name));
            assert_eq!(got, kind, "{name}");
            assert!(!got.is_transient(), "{name}");
        }
    }
}
