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
    async fn create_attachment(
        &self,
        volume_id: &str,
        instance: &str,
        connector: &Value,
        read_only: bool,
    ) -> Result<Attachment, OpenStackError>;
    /// `None` when Cinder has no such attachment (any more).
    async fn attachment(&self, id: &str) -> Result<Option<Attachment>, OpenStackError>;
    /// The attachments made for `instance` (a node's uuid), on every volume.
    async fn attachments_of(&self, instance: &str) -> Result<Vec<Attachment>, OpenStackError>;
    /// Marks the attachment attached: the volume becomes `in-use`.
    async fn complete_attachment(&self, id: &str) -> Result<(), OpenStackError>;
    /// Deletes the attachment (Cinder unexports the volume); one already gone is success.
    async fn delete_attachment(&self, id: &str) -> Result<(), OpenStackError>;
}

/// The real Cinder.
#[derive(Debug, Clone)]
pub struct Cinder {
    client: ServiceClient,
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
        Ok(Self {
            client: ServiceClient::connect(source, service_type, timeout).await?,
        })
    }

    pub fn endpoint(&self) -> &reqwest::Url {
        self.client.base()
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<T, OpenStackError> {
        let mut request = self
            .client
            .request(method, path)?
            .header("OpenStack-API-Version", MICROVERSION);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = self.client.send(request, what).await?;
        response.json::<T>().await.map_err(|e| {
            OpenStackError::new(
                OpenStackErrorKind::BadAnswer,
                format!("{what}: the answer does not parse: {e}"),
            )
        })
    }

    async fn call_no_answer(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(), OpenStackError> {
        let mut request = self
            .client
            .request(method, path)?
            .header("OpenStack-API-Version", MICROVERSION);
        if let Some(body) = &body {
            request = request.json(body);
        }
        self.client.send(request, what).await.map(|_| ())
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

    async fn create_attachment(
        &self,
        volume_id: &str,
        instance: &str,
        connector: &Value,
        read_only: bool,
    ) -> Result<Attachment, OpenStackError> {
        let body = json!({"attachment": {
            "volume_uuid": volume_id,
            "instance_uuid": instance,
            "connector": connector,
            "mode": if read_only { "ro" } else { "rw" },
        }});
        let what = format!("creating an attachment of volume {volume_id}");
        let created: OneAttachment = self
            .call(Method::POST, "attachments", Some(body), &what)
            .await?;
        Ok(created.attachment)
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

    async fn attachments_of(&self, instance: &str) -> Result<Vec<Attachment>, OpenStackError> {
        let query = reqwest::Url::parse_with_params("http://x/", [("instance_id", instance)])
            .expect("a valid URL");
        let path = format!("attachments/detail?{}", query.query().unwrap_or_default());
        let found: Attachments = self
            .call(
                Method::GET,
                &path,
                None,
                &format!("attachments of {instance}"),
            )
            .await?;
        Ok(found.attachments)
    }

    async fn complete_attachment(&self, id: &str) -> Result<(), OpenStackError> {
        let path = format!("attachments/{}/action", segment(id));
        self.call_no_answer(
            Method::POST,
            &path,
            Some(json!({"os-complete": null})),
            &format!("completing attachment {id}"),
        )
        .await
    }

    async fn delete_attachment(&self, id: &str) -> Result<(), OpenStackError> {
        let path = format!("attachments/{}", segment(id));
        match self
            .call_no_answer(
                Method::DELETE,
                &path,
                None,
                &format!("deleting attachment {id}"),
            )
            .await
        {
            Err(e) if e.kind == OpenStackErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
