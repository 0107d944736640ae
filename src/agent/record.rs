//! The agent's state directory: ownership record, token and last report.
//!
//! The record says which attachments are the agent's. It holds no secrets, and it is written
//! atomically (temp file, fsync, rename) with mode 0600 before the agent reports a volume as
//! attached, so a crash never leaves an attachment that the agent would not recognise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::{Attachment, Creations};
use crate::fsutil::{write_atomic, write_private};
use crate::protocol::Heartbeat;

pub const RECORD_FILE: &str = "volumes.json";
pub const TOKEN_FILE: &str = "token";
pub const STATUS_FILE: &str = "status.json";
/// The record format this agent writes; it refuses to start on a newer one.
pub(crate) const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error(
        "cannot read the ownership record {}: {source}; the agent does not start without \
         knowing which attachments are its own (fix the state directory, then start it again)",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the ownership record {} has version {version}, written by a newer tether (this one \
         reads {RECORD_VERSION}); run that version, or move the file aside to start without it",
        path.display()
    )]
    Newer { path: PathBuf, version: u32 },
}

/// Moves a corrupt record to `<name>.corrupt-<unix seconds>[-n]`, a name no earlier copy has.
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 0..1000u32 {
        let suffix = match n {
            0 => format!("corrupt-{stamp}"),
            n => format!("corrupt-{stamp}-{n}"),
        };
        let mut name = path.as_os_str().to_owned();
        name.push(".");
        name.push(&suffix);
        let aside = PathBuf::from(name);
        // A hard link fails if the name exists: no copy is ever overwritten.
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                std::fs::remove_file(path)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "too many set-aside copies of the record",
    ))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    pub(crate) version: u32,
    pub(crate) volumes: BTreeMap<Uuid, OwnedVolume>,
    /// Attaches under way, written before each starts: what each may create.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) intents: BTreeMap<Uuid, Intent>,
}

/// An attach under way and what it may create on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Intent {
    pub(crate) volume_id: String,
    pub(crate) volume_type: String,
    #[serde(flatten)]
    pub(crate) creates: Creations,
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
    /// The conductor in use (the first configured until it was asked).
    pub conductor_url: String,
    /// The address of the conductor in use, when its name resolves to several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conductor_address: Option<String>,
    /// Every configured conductor, in the order they are tried.
    #[serde(default)]
    pub conductors: Vec<String>,
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

    /// Reads the ownership record. A record that cannot be parsed (bytes that are not UTF-8,
    /// JSON that is not a record) is moved aside under a name of its own, never over an
    /// earlier one, and the agent starts with none: it then treats what it finds on the host as
    /// foreign, which never detaches anything. Any other failure to read it, or a record from a
    /// newer tether, is an error: starting blind, or overwriting it, would lose what it says.
    pub(crate) fn load_record(&self) -> Result<Record, RecordError> {
        let path = self.file(RECORD_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(e) => return Err(RecordError::Unreadable { path, source: e }),
        };
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Record>(text).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) if record.version > RECORD_VERSION => Err(RecordError::Newer {
                path,
                version: record.version,
            }),
            Ok(record) => Ok(record),
            Err(problem) => {
                let aside = set_aside(&path).map_err(|e| RecordError::Unreadable {
                    path: path.clone(),
                    source: e,
                })?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %problem,
                    "THE OWNERSHIP RECORD IS CORRUPT and was set aside; the attachments it \
                     listed are now reported as foreign and are never detached by the agent: \
                     compare the set-aside copy with the host, and detach by hand what it lists \
                     and is no longer assigned"
                );
                Ok(Record::default())
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

    fn set_aside_copies(dir: &Path) -> Vec<Vec<u8>> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("volumes.json.corrupt-"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect()
    }

    /// Bytes that are not UTF-8 were once overwritten with an empty record, and a second
    /// corruption overwrote the copy of the first.
    #[test]
    fn every_unparseable_record_is_set_aside_under_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = dir.path().join(RECORD_FILE);
        let corruptions: [&[u8]; 3] = [b"\xff\xfe{\"version\": 1", b"{\"version\": ", b"[]"];
        for bytes in corruptions {
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(state.load_record().unwrap(), Record::default());
            assert!(!path.exists(), "moved, not left to be overwritten");
        }
        assert_eq!(
            set_aside_copies(dir.path()),
            corruptions.map(<[u8]>::to_vec)
        );
    }

    #[test]
    fn a_record_that_cannot_be_read_or_is_newer_stops_the_agent_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = dir.path().join(RECORD_FILE);
        std::fs::create_dir(&path).unwrap();
        let e = state.load_record().unwrap_err();
        assert!(matches!(e, RecordError::Unreadable { .. }), "{e}");
        assert!(e.to_string().contains("does not start"), "{e}");
        std::fs::remove_dir(&path).unwrap();

        let newer = r#"{"version": 2, "volumes": {}, "what_v2_adds": []}"#;
        std::fs::write(&path, newer).unwrap();
        let e = state.load_record().unwrap_err();
        assert!(matches!(e, RecordError::Newer { version: 2, .. }), "{e}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            newer,
            "left as it was"
        );
        assert!(set_aside_copies(dir.path()).is_empty());
    }
}
