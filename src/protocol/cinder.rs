//! The operator API for Cinder volumes: `POST /v1/nodes/{node}/volumes` attaches a Cinder volume
//! to a node, `DELETE /v1/nodes/{node}/volumes/{volume}` detaches it, `GET /v1/volumes` lists
//! them with what Cinder and the node's agent say.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{ErrorReport, VolumeState};

/// `POST /v1/nodes/{node}/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    /// A Cinder volume id, or a name that one volume has.
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
    /// The target's `extra.mount` (path, fstype, options, mkfs).
    #[serde(default)]
    pub mount: Option<Map<String, Value>>,
}

/// Where a Cinder volume is in the attach or detach flow (docs/openstack.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CinderPhase {
    /// Creating the Cinder attachment for the node's connector.
    Creating,
    /// The target is assigned; the agent is attaching it.
    Attaching,
    /// The agent has the device; telling Cinder (`os-complete`).
    Completing,
    /// Cinder shows the volume `in-use` by the node.
    Attached,
    /// Unassigned; the agent is detaching it.
    Detaching,
    /// The agent let it go; deleting the Cinder attachment.
    Deleting,
    /// The attach cannot go on (`error` says why); `detach` cleans up.
    Failed,
}

impl CinderPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Attaching => "attaching",
            Self::Completing => "completing",
            Self::Attached => "attached",
            Self::Detaching => "detaching",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
        }
    }

    pub const ALL: [Self; 7] = [
        Self::Creating,
        Self::Attaching,
        Self::Completing,
        Self::Attached,
        Self::Detaching,
        Self::Deleting,
        Self::Failed,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for CinderPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a volume entered a phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseTime {
    pub phase: CinderPhase,
    /// RFC 3339, with milliseconds.
    pub at: String,
}

/// A Cinder volume tether attaches to a node, or is detaching from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CinderVolume {
    pub node_uuid: Uuid,
    pub node: String,
    pub volume_id: String,
    #[serde(default)]
    pub volume_name: Option<String>,
    /// `attached` until a detach was asked, then `detached`.
    pub want: String,
    pub phase: CinderPhase,
    #[serde(default)]
    pub attachment_id: Option<String>,
    #[serde(default)]
    pub target_uuid: Option<Uuid>,
    /// The volume's status as Cinder last said it (`available`, `reserved`, `attaching`,
    /// `in-use`, `detaching`…).
    #[serde(default)]
    pub cinder_status: Option<String>,
    /// False while Cinder does not answer; `cinder_error` says what the last call got.
    pub cinder_reachable: bool,
    #[serde(default)]
    pub cinder_error: Option<String>,
    /// Why the flow stopped (`phase` failed), or the agent's error for this volume.
    #[serde(default)]
    pub error: Option<ErrorReport>,
    /// What the node's agent reports for the target.
    #[serde(default)]
    pub agent_state: Option<VolumeState>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub mountpoint: Option<String>,
    pub read_only: bool,
    pub phases: Vec<PhaseTime>,
}

/// `GET /v1/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CinderVolumeList {
    pub volumes: Vec<CinderVolume>,
}
