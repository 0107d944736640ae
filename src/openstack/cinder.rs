//! Cinder's volumes and attachments API (v3, microversion 3.54 or later so that the attach mode
//! is honoured), as the conductor uses it: find a volume, create an attachment for a node's
//! connector, complete it once the node has the device, delete it once the node let it go.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{CloudSource, OpenStackError, OpenStackErrorKind, ServiceClient};

/// The microversion tether speaks: 3.54 (attach mode) is the least it needs; 3.70 is the
/// highest of Cinder 21 (2023.1). Cinders older than 3.54 refuse it with 406.
pub const MICROVERSION: &str = "volume 3.54";
/// At an endpoint without a project in its path: URLs without one exist from 3.67 on.
pub const PROJECTLESS_MICROVERSION: &str = "volume 3.67";

/// A volume as Cinder shows it (the fields tether reads).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub multiattach: bool,
    #[serde(default)]
    pub volume_type: Option<String>,
    /// In GiB.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub attachments: Vec<VolumeAttachment>,
}

/// One entry of a volume's `attachments`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct VolumeAttachment {
    #[serde(default)]
    pub attachment_id: Option<String>,
    #[serde(default)]
    pub server_id: Option<String>,
    #[serde(default)]
    pub host_name: Option<String>,
}

/// An attachment as Cinder shows it. `connection_info` is what the node needs to attach, with
/// the target's secrets: never logged, never shown.
#[derive(Clone, Deserialize, PartialEq)]
pub struct Attachment {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub volume_id: Option<String>,
    /// The `instance_uuid` it was created with: for tether, the node's uuid.
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub attach_mode: Option<String>,
    #[serde(default)]
    pub connection_info: Option<Map<String, Value>>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("volume_id", &self.volume_id)
            .field("instance", &self.instance)
            .field("attach_mode", &self.attach_mode)
            .field(
                "connection_info",
                &self.connection_info.as_ref().map(|_| "<not shown>"),
            )
            .finish()
    }
}

/// What the conductor asks of Cinder, behind a trait so that the attachment workflow is tested
/// without a Cinder.
#[allow(async_fn_in_trait)]
pub trait CinderApi: Send + Sync {
    /// A volume by id, or by name when no volume has that id (a name must be unique).
    async fn find_volume(&self, id_or_name: &str) -> Result<Volume, OpenStackError>;
    /// Reserves the volume: an attachment with no connector yet, so that its id is known (and
    /// recorded) before Cinder exports anything. No `instance_uuid`: with one, Cinder (since
    /// OSSA-2023-003) lets only Nova or a service delete the attachment.
    async fn reserve(&self, volume_id: &str, read_only: bool)
    -> Result<Attachment, OpenStackError>;
    /// Gives the reserved attachment the node's connector: Cinder exports the volume to it and
    /// answers with the connection_info.
    async fn connect(&self, id: &str, connector: &Value) -> Result<Attachment, OpenStackError>;
    /// `None` when Cinder has no such attachment (any more).
    async fn attachment(&self, id: &str) -> Result<Option<Attachment>, OpenStackError>;
    /// The volume's attachments, whoever made them.
    async fn attachments_of(&self, volume_id: &str) -> Result<Vec<Attachment>, OpenStackError>;
    /// Marks the attachment attached: the volume becomes `in-use`.
    async fn complete_attachment(&self, id: &str) -> Result<(), OpenStackError>;
    /// Deletes the attachment (Cinder unexports the volume); one already gone is success.
    async fn delete_attachment(&self, id: &str) -> Result<(), OpenStackError>;
}

/// The real Cinder.
#[derive(Debug, Clone)]
pub struct Cinder {
    client: ServiceClient,
    microversion: &'static str,
}

/// Where Cinder's v3 API is, given its endpoint (from the catalog, or configured), and the
/// microversion to speak there. An endpoint naming no version is refused: joined as it is, every
/// volume would look missing. With `project` (noauth) and no project in the path, it is added.
pub fn v3_base(
    endpoint: &reqwest::Url,
    project: Option<&str>,
) -> Result<(reqwest::Url, &'static str), OpenStackError> {
    let segments: Vec<&str> = endpoint
        .path_segments()
        .map(|s| s.filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let Some(v3) = segments.iter().position(|s| *s == "v3") else {
        return Err(OpenStackError::new(
            OpenStackErrorKind::Config,
            format!(
                "Cinder's endpoint {endpoint} names no API version: it must end in /v3 or \
                 /v3/<project> (check the catalog's block-storage endpoint, or [cinder] endpoint)"
            ),
        ));
    };
    let mut base = endpoint.clone();
    let mut path = format!("/{}/", segments.join("/"));
    if v3 + 1 < segments.len() {
        base.set_path(&path);
        return Ok((base, MICROVERSION));
    }
    match project {
        Some(project) => {
            path.push_str(project);
            path.push('/');
            base.set_path(&path);
            Ok((base, MICROVERSION))
        }
        None => {
            base.set_path(&path);
            Ok((base, PROJECTLESS_MICROVERSION))
        }
    }
}

#[derive(Deserialize)]
struct OneVolume {
    volume: Volume,
}

#[derive(Deserialize)]
struct Volumes {
    volumes: Vec<Volume>,
}

#[derive(Deserialize)]
struct OneAttachment {
    attachment: Attachment,
}

#[derive(Deserialize)]
struct Attachments {
    attachments: Vec<Attachment>,
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

impl Cinder {
    /// Authenticates and finds Cinder's endpoint (catalog type `service_type`, usually
    /// `block-storage`; older clouds list it as `volumev3`).
    pub async fn connect(
        source: &CloudSource,
        service_type: &str,
        timeout: Duration,
    ) -> Result<Self, OpenStackError> {
        let client = ServiceClient::connect(source, service_type, timeout).await?;
        let (base, microversion) = v3_base(client.base(), source.project_id.as_deref())?;
        Ok(Self {
            client: client.with_base(base),
            microversion,
        })
    }

    pub fn endpoint(&self) -> &reqwest::Url {
        self.client.base()
    }

    /// Sends a request at tether's microversion; an error answer is an [`OpenStackError`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<reqwest::Response, OpenStackError> {
        let mut request = self
            .client
            .request(method, path)?
            .header("OpenStack-API-Version", self.microversion);
        if let Some(body) = &body {
            request = request.json(body);
        }
        self.client.send(request, what).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<T, OpenStackError> {
        let response = self.send(method, path, body, what).await?;
        response.json::<T>().await.map_err(|e| {
            OpenStackError::new(
                OpenStackErrorKind::BadAnswer,
                format!("{what}: the answer does not parse: {e}"),
            )
        })
    }
}

/// A path segment as Cinder takes it: names may hold anything.
fn segment(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a valid URL");
    url.path_segments_mut().expect("a base URL").push(s);
    url.path()[1..].to_string()
}

impl CinderApi for Cinder {
    async fn find_volume(&self, id_or_name: &str) -> Result<Volume, OpenStackError> {
        let what = format!("volume {id_or_name}");
        if is_uuid(id_or_name) {
            let path = format!("volumes/{}", segment(id_or_name));
            match self
                .call::<OneVolume>(Method::GET, &path, None, &what)
                .await
            {
                Ok(found) => return Ok(found.volume),
                Err(e) if e.kind == OpenStackErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let query =
            reqwest::Url::parse_with_params("http://x/volumes/detail", [("name", id_or_name)])
                .expect("a valid URL");
        let path = format!("volumes/detail?{}", query.query().unwrap_or_default());
        let found: Volumes = self.call(Method::GET, &path, None, &what).await?;
        let mut matching: Vec<Volume> = found
            .volumes
            .into_iter()
            .filter(|v| v.name.as_deref() == Some(id_or_name))
            .collect();
        match matching.len() {
            0 => Err(OpenStackError::new(
                OpenStackErrorKind::NotFound,
                format!("Cinder has no volume with id or name {id_or_name:?}"),
            )),
            1 => Ok(matching.remove(0)),
            n => Err(OpenStackError::new(
                OpenStackErrorKind::Conflict,
                format!("{n} Cinder volumes are named {id_or_name:?}: give the volume's id"),
            )),
        }
    }

    async fn reserve(
        &self,
        volume_id: &str,
        read_only: bool,
    ) -> Result<Attachment, OpenStackError> {
        let body = json!({"attachment": {
            "volume_uuid": volume_id,
            "mode": if read_only { "ro" } else { "rw" },
        }});
        let what = format!("reserving volume {volume_id}");
        let created: OneAttachment = self
            .call(Method::POST, "attachments", Some(body), &what)
            .await?;
        Ok(created.attachment)
    }

    async fn connect(&self, id: &str, connector: &Value) -> Result<Attachment, OpenStackError> {
        let path = format!("attachments/{}", segment(id));
        let body = json!({"attachment": {"connector": connector}});
        let what = format!("exporting the volume of attachment {id}");
        let updated: OneAttachment = self.call(Method::PUT, &path, Some(body), &what).await?;
        Ok(updated.attachment)
    }

    async fn attachment(&self, id: &str) -> Result<Option<Attachment>, OpenStackError> {
        let path = format!("attachments/{}", segment(id));
        match self
            .call::<OneAttachment>(Method::GET, &path, None, &format!("attachment {id}"))
            .await
        {
            Ok(found) => Ok(Some(found.attachment)),
            Err(e) if e.kind == OpenStackErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn attachments_of(&self, volume_id: &str) -> Result<Vec<Attachment>, OpenStackError> {
        let query = reqwest::Url::parse_with_params("http://x/", [("volume_id", volume_id)])
            .expect("a valid URL");
        let path = format!("attachments?{}", query.query().unwrap_or_default());
        let what = format!("attachments of volume {volume_id}");
        let found: Attachments = self.call(Method::GET, &path, None, &what).await?;
        Ok(found.attachments)
    }

    async fn complete_attachment(&self, id: &str) -> Result<(), OpenStackError> {
        let path = format!("attachments/{}/action", segment(id));
        self.send(
            Method::POST,
            &path,
            Some(json!({"os-complete": null})),
            &format!("completing attachment {id}"),
        )
        .await
        .map(|_| ())
    }

    async fn delete_attachment(&self, id: &str) -> Result<(), OpenStackError> {
        let path = format!("attachments/{}", segment(id));
        let what = format!("deleting attachment {id}");
        match self.send(Method::DELETE, &path, None, &what).await {
            Err(e) if e.kind == OpenStackErrorKind::NotFound => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod endpoints {
    use super::*;

    fn base(endpoint: &str, project: Option<&str>) -> Result<(String, &'static str), String> {
        let url = reqwest::Url::parse(endpoint).unwrap();
        v3_base(&url, project)
            .map(|(u, m)| (u.to_string(), m))
            .map_err(|e| e.message)
    }

    #[test]
    fn the_v3_api_is_found_below_every_usual_endpoint() {
        let p = "0123456789abcdef0123456789abcdef";
        let with = format!("http://c:8776/v3/{p}/");
        assert_eq!(
            base(&format!("http://c:8776/v3/{p}"), None),
            Ok((with.clone(), MICROVERSION))
        );
        assert_eq!(
            base("http://c:8776/v3", Some(p)),
            Ok((with.clone(), MICROVERSION))
        );
        assert_eq!(base("http://c:8776/v3/", Some(p)), Ok((with, MICROVERSION)));
        assert_eq!(
            base("https://api.example/volume/v3", None),
            Ok((
                "https://api.example/volume/v3/".into(),
                PROJECTLESS_MICROVERSION
            ))
        );
        for unversioned in [
            "http://c:8776",
            "http://c:8776/",
            "https://api.example/volume/",
        ] {
            let err = base(unversioned, None).unwrap_err();
            assert!(err.contains("names no API version"), "{unversioned}: {err}");
        }
    }
}

#[cfg(test)]
mod fixtures {
    //! Answers of a real Cinder 21.3 (tests/fixtures/cinder/, scripts/vm/capture-fixtures
    //! --cinder), read the way the client reads them.
    use super::*;
    use crate::openstack::connection::{CephKey, map_connection_info};

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/cinder/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn attachment(name: &str) -> Attachment {
        serde_json::from_str::<OneAttachment>(&fixture(name))
            .unwrap()
            .attachment
    }

    fn as_target(
        mapped: &crate::openstack::connection::MappedTarget,
    ) -> crate::protocol::VolumeTarget {
        crate::protocol::VolumeTarget {
            uuid: uuid::Uuid::nil(),
            node_uuid: uuid::Uuid::nil(),
            volume_type: mapped.volume_type.into(),
            volume_id: "vol".into(),
            boot_index: None,
            properties: mapped.properties.clone(),
            extra: Map::new(),
            size_bytes: None,
        }
    }

    #[test]
    fn an_lvm_attachment_becomes_an_iscsi_target_with_cinders_chap() {
        let created = attachment("attachment-create-lvm.json");
        assert_eq!(created.status, "reserved");
        assert_eq!(created.attach_mode.as_deref(), Some("rw"));
        let shown = format!("{created:?}");
        assert!(!shown.contains("FakeChapPass16ch"), "{shown}");
        let info = created.connection_info.unwrap();
        let mapped = map_connection_info(&info, &[], false).unwrap();
        assert_eq!(mapped.volume_type, "iscsi");
        let mut kept: Vec<&str> = mapped.properties.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "access_mode",
                "auth_method",
                "auth_password",
                "auth_username",
                "target_iqn",
                "target_lun",
                "target_portal"
            ]
        );
        assert_eq!(
            mapped.ignored,
            [
                "attachment_id",
                "cacheable",
                "encrypted",
                "qos_specs",
                "target_discovered",
                "volume_id"
            ]
        );
        let spec = crate::protocol::target::parse(&as_target(&mapped)).unwrap();
        assert!(format!("{spec:?}").contains("iqn.2010-10.org.openstack:volume-"));
    }

    #[test]
    fn an_rbd_attachment_becomes_an_rbd_target_with_the_conductors_key() {
        let info = attachment("attachment-create-rbd.json")
            .connection_info
            .unwrap();
        assert!(info.get("auth_key").is_none(), "Cinder sends no cephx key");
        let keys = [CephKey {
            monitors: vec!["127.0.0.1:6789".into()],
            cluster_name: None,
            user: "cinder".into(),
            key_file: "/etc/tether/ceph/cinder.key".into(),
        }];
        let mut mapped = map_connection_info(&info, &keys, true).unwrap();
        assert_eq!(mapped.volume_type, "rbd");
        assert_eq!(mapped.key_file, Some("/etc/tether/ceph/cinder.key".into()));
        assert_eq!(mapped.properties["access_mode"], "ro", "--read-only wins");
        for ignored in [
            "secret_type",
            "secret_uuid",
            "discard",
            "volume_id",
            "attachment_id",
        ] {
            assert!(
                mapped.ignored.iter().any(|k| k == ignored),
                "{ignored}: {:?}",
                mapped.ignored
            );
        }
        mapped.properties.insert(
            "auth_key".into(),
            Value::from("AQBIkAdrAAAAABAAdGV0aGVyLWRvY3Mtb25seQ=="),
        );
        crate::protocol::target::parse(&as_target(&mapped)).unwrap();
    }

    #[test]
    fn volumes_and_lists_parse() {
        let volume: OneVolume = serde_json::from_str(&fixture("volume-lvm-in-use.json")).unwrap();
        assert_eq!(volume.volume.status, "in-use");
        assert!(!volume.volume.attachments.is_empty());
        let available: OneVolume =
            serde_json::from_str(&fixture("volume-rbd-available.json")).unwrap();
        assert_eq!(available.volume.status, "available");
        let by_name: Volumes =
            serde_json::from_str(&fixture("volumes-detail-by-name.json")).unwrap();
        assert_eq!(by_name.volumes.len(), 1);
        let none: Volumes =
            serde_json::from_str(&fixture("volumes-detail-by-name-none.json")).unwrap();
        assert!(none.volumes.is_empty());
        let listed: Attachments =
            serde_json::from_str(&fixture("attachments-detail-by-volume-lvm.json")).unwrap();
        assert!(!listed.attachments.is_empty());
        let after = attachment("attachment-lvm-after-complete.json");
        assert_eq!(after.status, "attached");
    }
}
