//! Host failures: a stable kind that code may branch on, and a sentence for people.

use thiserror::Error;

/// A failure on the host, with a stable kind and a sentence that says what to do.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct HostError {
    pub kind: ErrorKind,
    pub message: String,
}

impl HostError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

macro_rules! error_kinds {
    ($($(#[$doc:meta])* $variant:ident => $wire:literal,)+) => {
        /// Every kind a host operation can fail with. The wire names appear in reports, logs,
        /// metrics and docs/operations.md, so they never change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorKind {
            pub const ALL: &[ErrorKind] = &[$(Self::$variant,)+];

            /// The stable wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }
    };
}

error_kinds! {
    AuthFailed => "auth_failed",
    ClusterUnreachable => "cluster_unreachable",
    CommandFailed => "command_failed",
    /// An NVMe-oF connect failed for a reason the kernel did not name.
    ConnectFailed => "connect_failed",
    DeleteFailed => "delete_failed",
    /// The kernel or a tool said the device is busy (EBUSY, "in use").
    DeviceBusy => "device_busy",
    /// A detach found something else holding the device.
    DeviceInUse => "device_in_use",
    DeviceTimeout => "device_timeout",
    DisconnectFailed => "disconnect_failed",
    FlushFailed => "flush_failed",
    /// The device grew but its file system could not be grown (resize2fs, xfs_growfs).
    GrowFailed => "grow_failed",
    /// The node's NVMe host NQN or host id cannot be read or made (/etc/nvme).
    HostIdentity => "host_identity",
    ImageNotFound => "image_not_found",
    /// A bug in the agent, not something an operator can fix.
    Internal => "internal",
    /// The agent stopped (crashed, was killed) during this attach; it completes it or undoes it.
    Interrupted => "interrupted",
    IscsiadmFailed => "iscsiadm_failed",
    IscsidNotRunning => "iscsid_not_running",
    KeyFile => "key_file",
    LoginFailed => "login_failed",
    LoginRefused => "login_refused",
    MapFailed => "map_failed",
    MkfsFailed => "mkfs_failed",
    MountFailed => "mount_failed",
    /// The node's mount rules refuse the mount point or an option; nothing was mounted.
    MountRefused => "mount_refused",
    MountsUnreadable => "mounts_unreadable",
    MultipathFailed => "multipath_failed",
    NoFilesystem => "no_filesystem",
    NoRecord => "no_record",
    /// An attached volume's path is down (its iSCSI session lost its connection): not an
    /// error of an operation, but the reason a volume is reported degraded.
    PathDown => "path_down",
    PortalUnreachable => "portal_unreachable",
    ProbeFailed => "probe_failed",
    RecordFailed => "record_failed",
    /// The agent's ownership record cannot be written: no attach starts until it can.
    RecordUnwritable => "record_unwritable",
    ScanFailed => "scan_failed",
    SessionGone => "session_gone",
    Sysfs => "sysfs",
    TargetNotFound => "target_not_found",
    /// A command ran past its time limit.
    Timeout => "timeout",
    ToolMissing => "tool_missing",
    UdevUnavailable => "udev_unavailable",
    UnmapFailed => "unmap_failed",
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_distinct_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in ErrorKind::ALL {
            let name = kind.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
    }
}
