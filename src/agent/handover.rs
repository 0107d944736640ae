//! Taking over what an initramfs agent attached, after switch-root.
//!
//! The dracut module gives the initramfs's agent the state directory [`HANDOVER_DIR`], in `/run`,
//! which the initramfs hands to the installed system at switch-root. The installed agent merges
//! the ownership record and the token it finds there into its own state directory before it
//! recovers, so that it owns exactly the volumes the initramfs attached: nothing it did not
//! attach becomes its own, and what its own record already lists stays.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use super::record::{RECORD_FILE, Record, RecordError, STATUS_FILE, StateDir, TOKEN_FILE};

/// The initramfs agent's state directory, below the host root.
pub(crate) const HANDOVER_DIR: &str = "run/tether-initramfs";

/// What the initramfs agent last reported about itself: whose volumes the record lists.
#[derive(Deserialize)]
struct HandedOverStatus {
    #[serde(default)]
    node_uuid: Option<Uuid>,
    conductor_url: String,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Handover {
    /// No handover to take (none left, or this agent is the initramfs's own).
    Absent,
    /// Left where it is: its volumes stay foreign. The reason says why.
    Refused(String),
    Adopted {
        volumes: usize,
        token: bool,
    },
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => a == b,
    }
}

/// Merges the record and token in `from` (the initramfs agent's state directory) into `state`,
/// then removes `from`, when they were written for this agent's conductor and node. For the
/// targets the handed-over record names, its entries replace this record's: they describe this
/// boot, and this record's entries for them an earlier one. An error only when this agent's own
/// record cannot be read or written.
pub(crate) fn adopt(
    state: &StateDir,
    from: &StateDir,
    conductor_urls: &[String],
    node_uuid: Option<Uuid>,
) -> Result<Handover, RecordError> {
    let record_path = from.path.join(RECORD_FILE);
    let handed_token = from.load_token();
    if same_dir(&state.path, &from.path) || (!record_path.exists() && handed_token.is_none()) {
        return Ok(Handover::Absent);
    }
    let status_path = from.path.join(STATUS_FILE);
    let status: HandedOverStatus = match std::fs::read(&status_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(status) => status,
        Err(e) => {
            return Ok(Handover::Refused(format!(
                "{} cannot be read ({e}): which conductor and node the record is for is unknown",
                status_path.display()
            )));
        }
    };
    // The initramfs agent's conductor must be one of ours: the same fleet, one database.
    let theirs = status.conductor_url.trim_end_matches('/');
    if !conductor_urls
        .iter()
        .any(|ours| ours.trim_end_matches('/') == theirs)
    {
        return Ok(Handover::Refused(format!(
            "the initramfs agent used the conductor {theirs}, which is not one of this one's \
             ({}); set the same conductor_url in both",
            conductor_urls.join(", ")
        )));
    }
    if let (Some(node), Some(theirs)) = (node_uuid, status.node_uuid)
        && node != theirs
    {
        return Ok(Handover::Refused(format!(
            "the initramfs agent was node {theirs}, this one is configured as node {node}"
        )));
    }
    let handed = match from.load_record() {
        Ok(record) => record,
        Err(e) => return Ok(Handover::Refused(e.to_string())),
    };
    let mut record = state.load_record()?;
    let volumes = handed.volumes.len();
    merge(&mut record, handed);
    state
        .save_record(&record)
        .map_err(|source| RecordError::Unreadable {
            path: state.path.join(RECORD_FILE),
            source,
        })?;
    // The token in the initramfs was issued this boot: whatever this directory holds is older.
    if let Some(token) = &handed_token
        && let Err(e) = state.save_token(token)
    {
        tracing::error!(
            error = %e,
            "cannot save the handed-over agent token in the state directory"
        );
    }
    // Taken once: a later start of this agent must not take it again over its own changes.
    for name in [RECORD_FILE, TOKEN_FILE] {
        if let Err(e) = std::fs::remove_file(from.path.join(name))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, file = name, "cannot remove the handed-over file");
        }
    }
    let _ = std::fs::remove_dir_all(&from.path);
    Ok(Handover::Adopted {
        volumes,
        token: handed_token.is_some(),
    })
}

/// The handed-over entries win for the targets they name, volumes and intents alike.
fn merge(record: &mut Record, handed: Record) {
    for uuid in handed.volumes.keys().chain(handed.intents.keys()) {
        record.volumes.remove(uuid);
        record.intents.remove(uuid);
    }
    record.volumes.extend(handed.volumes);
    record.intents.extend(handed.intents);
    record.version = record.version.max(handed.version);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::agent::record::{Intent, OwnedVolume, RECORD_VERSION};

    const CONDUCTOR: &str = "https://10.0.9.1:6387";

    /// The installed agent's conductors: the initramfs agent's is the second.
    fn ours() -> Vec<String> {
        vec!["https://10.0.9.2:6387".into(), CONDUCTOR.into()]
    }
    const NODE: Uuid = Uuid::from_u128(0x3c1d6f0e_9a2b_4c5d_8e7f_0a1b2c3d4e5f);

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A real attachment (an RBD mapping) under another volume id.
    fn owned(volume_id: &str) -> OwnedVolume {
        let json = r#"{
            "volume_id": "x",
            "attachment": {
                "device": {"kernel_name": "rbd0", "device_path": "/dev/rbd/volumes/img",
                           "size_bytes": 1, "wwn": null},
                "paths": ["/dev/rbd/volumes/img"],
                "handle": {"type": "rbd", "device_id": 0, "pool": "volumes", "namespace": null,
                           "image": "img", "mapped_by_agent": true},
                "mount": null
            }
        }"#;
        let mut volume: OwnedVolume = serde_json::from_str(json).unwrap();
        volume.volume_id = volume_id.into();
        volume
    }

    fn intent(volume_id: &str) -> Intent {
        let json = format!(r#"{{"volume_id": "{volume_id}", "volume_type": "rbd"}}"#);
        serde_json::from_str(&json).unwrap()
    }

    fn record(volumes: &[(u128, &str)], intents: &[(u128, &str)]) -> Record {
        Record {
            version: RECORD_VERSION,
            volumes: volumes.iter().map(|(n, v)| (uuid(*n), owned(v))).collect(),
            intents: intents.iter().map(|(n, v)| (uuid(*n), intent(v))).collect(),
        }
    }

    /// The initramfs agent's directory as it leaves it: record, token, status.
    fn initramfs_dir(root: &Path, record: &Record, token: Option<&str>, node: Uuid) -> StateDir {
        let dir = StateDir::new(root.join(HANDOVER_DIR));
        dir.create().unwrap();
        dir.save_record(record).unwrap();
        if let Some(token) = token {
            dir.save_token(token).unwrap();
        }
        let status = serde_json::json!({
            "node_uuid": node, "node_name": "ramdisk-node", "conductor_url": CONDUCTOR,
            "conductor": "ok", "updated_at": "2024-01-01T00:00:00Z", "report": {}
        });
        std::fs::write(dir.path.join(STATUS_FILE), status.to_string()).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_empty_state_directory_takes_the_record_and_token_with_their_modes() {
        let root = tempfile::tempdir().unwrap();
        let handed = record(&[(1, "vol-a")], &[(2, "vol-b")]);
        let from = initramfs_dir(root.path(), &handed, Some("tok-issued-in-initramfs"), NODE);
        let state = StateDir::new(root.path().join("var/lib/tether"));
        state.create().unwrap();

        let got = adopt(&state, &from, &ours(), None).unwrap();

        assert_eq!(
            got,
            Handover::Adopted {
                volumes: 1,
                token: true
            }
        );
        assert_eq!(state.load_record().unwrap(), handed);
        assert_eq!(
            state.load_token().as_deref(),
            Some("tok-issued-in-initramfs")
        );
        assert_eq!(mode(&state.path.join(RECORD_FILE)), 0o600);
        assert_eq!(mode(&state.path.join(TOKEN_FILE)), 0o600);
        assert!(!from.path.exists(), "taken once, token copy gone from /run");
        assert_eq!(
            adopt(&state, &from, &ours(), None).unwrap(),
            Handover::Absent
        );
    }

    #[test]
    fn the_installed_record_is_merged_and_the_handover_wins_for_its_own_targets() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::new(root.path().join("var/lib/tether"));
        state.create().unwrap();
        state.save_token("tok-old").unwrap();
        let installed = record(
            &[(1, "vol-earlier-boot"), (3, "vol-installed-only")],
            &[(2, "vol-b-earlier"), (4, "vol-installed-intent")],
        );
        state.save_record(&installed).unwrap();
        let handed = record(&[(1, "vol-a"), (2, "vol-b")], &[(5, "vol-c")]);
        let from = initramfs_dir(root.path(), &handed, None, NODE);

        let got = adopt(&state, &from, &[format!("{CONDUCTOR}/")], Some(NODE)).unwrap();

        assert_eq!(
            got,
            Handover::Adopted {
                volumes: 2,
                token: false
            }
        );
        let merged = state.load_record().unwrap();
        let volumes: Vec<_> = merged
            .volumes
            .iter()
            .map(|(u, v)| (*u, v.volume_id.as_str()))
            .collect();
        assert_eq!(
            volumes,
            [
                (uuid(1), "vol-a"),
                (uuid(2), "vol-b"),
                (uuid(3), "vol-installed-only")
            ]
        );
        let intents: Vec<_> = merged
            .intents
            .iter()
            .map(|(u, i)| (*u, i.volume_id.as_str()))
            .collect();
        assert_eq!(
            intents,
            [(uuid(4), "vol-installed-intent"), (uuid(5), "vol-c")]
        );
        assert_eq!(
            state.load_token().as_deref(),
            Some("tok-old"),
            "no token handed over: its own stays"
        );
    }

    #[test]
    fn another_conductor_or_node_leaves_the_handover_and_the_record_alone() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::new(root.path().join("var/lib/tether"));
        state.create().unwrap();
        let installed = record(&[(3, "vol-installed-only")], &[]);
        state.save_record(&installed).unwrap();
        let from = initramfs_dir(
            root.path(),
            &record(&[(1, "vol-a")], &[]),
            Some("tok"),
            NODE,
        );

        let others = ["https://192.0.2.7:6387".to_string()];
        let other_conductor = adopt(&state, &from, &others, None).unwrap();
        let other_node = adopt(&state, &from, &ours(), Some(uuid(9))).unwrap();

        for (got, names) in [
            (other_conductor, ["https://192.0.2.7:6387", CONDUCTOR]),
            (other_node, [&uuid(9).to_string(), &NODE.to_string()]),
        ] {
            let Handover::Refused(reason) = got else {
                panic!("{got:?}")
            };
            assert!(names.iter().all(|n| reason.contains(n)), "{reason}");
            assert!(!reason.contains("tok"), "{reason}");
        }
        assert_eq!(state.load_record().unwrap(), installed);
        assert_eq!(state.load_token(), None);
        assert!(from.path.join(RECORD_FILE).exists());
        assert!(from.path.join(TOKEN_FILE).exists());
    }

    #[test]
    fn the_initramfs_agent_itself_and_a_missing_status_adopt_nothing() {
        let root = tempfile::tempdir().unwrap();
        let from = initramfs_dir(root.path(), &record(&[(1, "vol-a")], &[]), None, NODE);
        let itself = StateDir::new(&from.path);
        assert_eq!(
            adopt(&itself, &from, &ours(), None).unwrap(),
            Handover::Absent
        );

        std::fs::remove_file(from.path.join(STATUS_FILE)).unwrap();
        let state = StateDir::new(root.path().join("var/lib/tether"));
        state.create().unwrap();
        let got = adopt(&state, &from, &ours(), None).unwrap();
        assert!(
            matches!(&got, Handover::Refused(r) if r.contains("status.json")),
            "{got:?}"
        );
        assert_eq!(state.load_record().unwrap(), Record::default());
    }
}
