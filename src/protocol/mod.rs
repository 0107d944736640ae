//! Protocol v1: the wire types shared by the agent and the conductor.
//!
//! docs/protocol.md is the contract; its examples are parsed by tests against these types.
//! Readers of responses tolerate unknown fields; requests that change state refuse them.

pub mod cinder;
pub mod report;
pub mod secret;
pub mod target;
pub mod text;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use secret::{MASK, Secret, mask_properties};

/// Sent as a header on every conductor response.
pub const VERSION_HEADER: &str = "tether-protocol-version";
pub const VERSION: &str = "1";

/// Most MAC addresses one lookup may name (`400 too_many_addresses` beyond): a node has a few
/// interfaces, a guesser of addresses many.
pub const MAX_LOOKUP_ADDRESSES: usize = 16;

/// `GET /v1/lookup`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LookupResponse {
    pub node: NodeRef,
    pub config: AgentSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRef {
    pub uuid: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentSettings {
    pub heartbeat_interval_s: u64,
    /// The node's agent token, or [`MASK`] once it has been issued.
    pub agent_token: String,
}

/// `GET /v1/nodes/{uuid}/volume/targets`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetsResponse {
    pub generation: u64,
    pub targets: Vec<VolumeTarget>,
}

/// Ironic's volume target. `properties` is Cinder's connection info and stays raw JSON on the
/// wire so that one malformed target fails alone, in the agent, with a precise kind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeTarget {
    pub uuid: Uuid,
    pub node_uuid: Uuid,
    pub volume_type: String,
    pub volume_id: String,
    #[serde(default)]
    pub boot_index: Option<u32>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// The volume's size at the storage, when the conductor knows it; the agent grows an
    /// attached device to it. Absent from targets that never changed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// Per-volume state as reported in heartbeats.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    Pending,
    Attaching,
    Attached,
    Mounted,
    Detaching,
    DetachBlocked,
    Failed,
}

impl VolumeState {
    /// Every state, in lifecycle order (for metrics that list each one, zero or not).
    pub const ALL: [VolumeState; 7] = [
        Self::Pending,
        Self::Attaching,
        Self::Attached,
        Self::Mounted,
        Self::Detaching,
        Self::DetachBlocked,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Attaching => "attaching",
            Self::Attached => "attached",
            Self::Mounted => "mounted",
            Self::Detaching => "detaching",
            Self::DetachBlocked => "detach_blocked",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stable error kind plus a sentence that says what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorReport {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    #[serde(rename = "type")]
    pub connector_type: String,
    pub connector_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeReport {
    pub target_uuid: Uuid,
    pub volume_id: String,
    pub volume_type: String,
    pub state: VolumeState,
    #[serde(default)]
    pub device_path: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub wwn: Option<String>,
    #[serde(default)]
    pub mountpoint: Option<String>,
    #[serde(default)]
    pub error: Option<ErrorReport>,
    /// An attached volume with a path down (kind `path_down`): it stays attached, I/O waits or
    /// goes through other paths. Absent while every path is up, so that conductors older than
    /// the field accept the reports of a healthy node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<ErrorReport>,
    /// RFC 3339 time at which the volume entered `state`.
    pub since: String,
}

/// An attachment on the node that the agent did not create: reported, never touched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForeignAttachment {
    pub volume_type: String,
    pub description: String,
    #[serde(default)]
    pub device_path: Option<String>,
}

/// `POST /v1/heartbeat/{uuid}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub agent_version: String,
    /// The generation of the assignment the agent has applied; `None` before the first answer.
    pub generation: Option<u64>,
    #[serde(default)]
    pub connectors: Vec<Connector>,
    #[serde(default)]
    pub volumes: Vec<VolumeReport>,
    #[serde(default)]
    pub foreign: Vec<ForeignAttachment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatAccepted {
    pub heartbeat_interval_s: u64,
}

/// Body of every non-2xx response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorReport,
}

// ---- operator API ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeCreate {
    pub name: String,
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// MAC addresses the node's agent looks itself up by.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// A token provisioned out of band (for example on the kernel command line). When absent,
    /// the conductor issues one at the node's first lookup.
    #[serde(default)]
    pub agent_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub uuid: Uuid,
    pub name: String,
    pub addresses: Vec<String>,
    pub token_issued: bool,
    pub created_at: String,
    #[serde(default)]
    pub last_seen: Option<String>,
    /// `manual` (enrolled with `ctl node create`) or `ironic` (kept in step with Ironic).
    #[serde(default)]
    pub source: NodeSource,
    /// Ironic's, for a synced node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_state: Option<String>,
    /// Deleted in Ironic: its volumes are being detached, then it goes.
    #[serde(default)]
    pub leaving: bool,
    /// Something the operator should look at, such as an Ironic volume connector that differs
    /// from the initiator the agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Where a node comes from. A synced node's name and addresses follow Ironic and are not
/// edited by hand.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeSource {
    #[default]
    Manual,
    Ironic,
}

impl NodeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Ironic => "ironic",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeList {
    pub nodes: Vec<Node>,
    /// With an `[ironic]` section: how the sync with Ironic goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ironic: Option<IronicSync>,
}

/// The state of the node sync with Ironic.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IronicSync {
    /// `starting` (no pass finished yet), `ok` or `failing` (the last pass failed; the nodes
    /// known before stay as they were).
    pub state: String,
    #[serde(default)]
    pub last_success: Option<String>,
    /// Kind and message of the last failure, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorReport>,
    /// Ironic nodes seen by the last successful pass.
    #[serde(default)]
    pub nodes: u64,
    /// Ironic nodes (or their names, addresses) left out, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `PATCH /v1/nodes/{node}`: what an operator may change on a manual node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// Replaces the node's MAC addresses.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectorCreate {
    pub node_uuid: Uuid,
    #[serde(rename = "type")]
    pub connector_type: String,
    pub connector_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeConnector {
    pub uuid: Uuid,
    pub node_uuid: Uuid,
    #[serde(rename = "type")]
    pub connector_type: String,
    pub connector_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorList {
    pub connectors: Vec<VolumeConnector>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetCreate {
    pub node_uuid: Uuid,
    pub volume_type: String,
    pub volume_id: String,
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub boot_index: Option<u32>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub extra: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// `PATCH /v1/volume/targets/{uuid}`: the volume grew at the storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetResize {
    pub size_bytes: u64,
}

impl TargetCreate {
    /// The target this request creates, under `uuid`.
    pub fn target(&self, uuid: Uuid) -> VolumeTarget {
        VolumeTarget {
            uuid,
            node_uuid: self.node_uuid,
            volume_type: self.volume_type.clone(),
            volume_id: self.volume_id.clone(),
            boot_index: self.boot_index,
            properties: self.properties.clone(),
            extra: self.extra.clone(),
            size_bytes: self.size_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetList {
    pub targets: Vec<VolumeTarget>,
}

/// `GET /v1/nodes/{uuid}/volume/status`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub node_uuid: Uuid,
    pub node_name: String,
    /// Generation of the node's current assignment at the conductor.
    pub generation: u64,
    #[serde(default)]
    pub last_seen: Option<String>,
    #[serde(default)]
    pub report: Option<Heartbeat>,
    /// Targets the report lists that the node does not have (now): a volume being detached
    /// after its target was deleted, or a report to look into. Kept, never refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_targets: Vec<Uuid>,
}

/// Formats a time the way every timestamp in the protocol is written.
pub fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::VolumeState;

    #[test]
    fn all_states_lists_every_state_once() {
        // The match fails to compile when a state is added, until ALL has it too.
        let position = |s: VolumeState| match s {
            VolumeState::Pending => 0,
            VolumeState::Attaching => 1,
            VolumeState::Attached => 2,
            VolumeState::Mounted => 3,
            VolumeState::Detaching => 4,
            VolumeState::DetachBlocked => 5,
            VolumeState::Failed => 6,
        };
        for (i, state) in VolumeState::ALL.into_iter().enumerate() {
            assert_eq!(position(state), i, "{state:?}");
        }
    }
}
