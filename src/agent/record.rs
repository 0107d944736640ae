//! The agent's state directory: ownership record, token and last report.
//!
//! The record says which attachments are the agent's. It holds no secrets, and it is written
//! atomically (temp file, fsync, rename) with mode 0600 before the agent reports a volume as
//! attached, so a crash never leaves an attachment that the agent would not recognise.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::Attachment;
use crate::fsutil::{write_atomic, write_private};
use crate::protocol::Heartbeat;

pub const RECORD_FILE: &str = "volumes.json";
pub const TOKEN_FILE: &str = "token";
pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    pub(crate) version: u32,
    pub(crate) volumes: BTreeMap<Uuid, OwnedVolume>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct OwnedVolume {
    pub(crate) volume_id: String,
    pub(crate) attachment: Attachment,
}

/// What `tether status` reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalStatus {
    #[serde(default)]
    pub node_uuid: Option<Uuid>,
    #[serde(default)]
    pub node_name: Option<String>,
    pub conductor_url: String,
    /// The conductor's last answer or the reason there was none.
    pub conductor: String,
    pub updated_at: String,
    pub report: Heartbeat,
}

pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub(crate) fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads the ownership record. A corrupt record is moved aside, and the agent starts with
    /// none: it then treats what it finds on the host as foreign, which never detaches anything.
    pub(crate) fn load_record(&self) -> Record {
        let path = self.file(RECORD_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Record::default(),
            Err(e) => {
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "cannot read the ownership record; starting without it"
                );
                return Record::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(record) => record,
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "the ownership record is corrupt; \
                     existing attachments will be reported as foreign"
                );
                Record::default()
            }
        }
    }

    pub(crate) fn save_record(&self, record: &Record) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_private(&self.file(RECORD_FILE), &data)
    }

    pub(crate) fn load_token(&self) -> Option<String> {
        crate::fsutil::read_trimmed(&self.file(TOKEN_FILE))
    }

    pub(crate) fn save_token(&self, token: &str) -> std::io::Result<()> {
        write_private(&self.file(TOKEN_FILE), format!("{token}\n").as_bytes())
    }

    pub(crate) fn save_status(&self, status: &LocalStatus) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        // No secrets in it: readable so that anyone on the node can run `tether status`.
        write_atomic(&self.file(STATUS_FILE), &data, 0o644)
    }

    pub fn load_status(&self) -> std::io::Result<LocalStatus> {
        let text = std::fs::read_to_string(self.file(STATUS_FILE))?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the first release wrote it: the type renames since must read it unchanged.
    const FIRST_RELEASE: &str = r#"{
  "version": 1,
  "volumes": {
    "00000000-0000-4000-8000-000000000001": {
      "volume_id": "vol-iscsi",
      "attachment": {
        "device": {"kernel_name": "dm-0", "device_path": "/dev/mapper/mpatha",
                   "size_bytes": 1073741824, "wwn": "36001405abc"},
        "paths": ["/dev/disk/by-path/ip-192.0.2.1:3260-iscsi-iqn.2003-01.org.example:x-lun-0",
                  "/dev/disk/by-path/ip-[2001:db8::1]:3260-iscsi-iqn.2003-01.org.example:x-lun-0"],
        "handle": {"type": "iscsi",
                   "paths": [{"portal": "192.0.2.1:3260", "iqn": "iqn.2003-01.org.example:x",
                              "lun": 0, "kernel_name": "sdb", "session_created": true,
                              "device_created": true},
                             {"portal": "[2001:db8::1]:3260", "iqn": "iqn.2003-01.org.example:x",
                              "lun": 0, "kernel_name": "sdc", "session_created": false,
                              "device_created": true}],
                   "multipath": {"name": "mpatha", "wwid_registered": true}},
        "mount": {"path": "/srv/data", "by_agent": true}
      }
    },
    "00000000-0000-4000-8000-000000000002": {
      "volume_id": "vol-rbd",
      "attachment": {
        "device": {"kernel_name": "rbd0", "device_path": "/dev/rbd/volumes/img", "size_bytes": 1,
                   "wwn": null},
        "paths": ["/dev/rbd/volumes/img"],
        "handle": {"type": "rbd", "device_id": 0, "pool": "volumes", "namespace": null,
                   "image": "img", "mapped_by_agent": true},
        "mount": null
      }
    }
  }
}"#;

    #[test]
    fn a_first_release_record_reads_the_same_and_writes_back_its_fields() {
        use crate::backend::BackendAttachment;
        use crate::protocol::target::{SessionKey, parse_portal};

        let record: Record = serde_json::from_str(FIRST_RELEASE).unwrap();
        let iscsi = &record.volumes.values().next().unwrap().attachment;
        let BackendAttachment::Iscsi(paths) = &iscsi.backend else {
            panic!("{iscsi:?}")
        };
        let key =
            |portal| SessionKey::new(&parse_portal(portal).unwrap(), "iqn.2003-01.org.example:x");
        assert_eq!(paths.paths[0].session, key("192.0.2.1:3260"));
        assert_eq!(paths.paths[1].session, key("[2001:db8::1]:3260"));
        assert_eq!(paths.multipath.as_ref().unwrap().name, "mpatha");

        let original: serde_json::Value = serde_json::from_str(FIRST_RELEASE).unwrap();
        let written = serde_json::to_value(&record).unwrap();
        assert_eq!(written, original);
    }
}
