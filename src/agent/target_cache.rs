//! The node's cache of its own volumes' targets, secrets included (CHAP passwords, cephx keys,
//! DH-HMAC-CHAP secrets), so that after a reboot the agent can attach them again before the
//! conductor answers (`agent.offline_reattach`).
//!
//! One file per volume, `<state dir>/targets/<target uuid>.json`: the target as the conductor
//! last sent it, mode 0600 in a directory of mode 0700, written atomically when an attach
//! succeeds (and again when the conductor changes the target of a volume the agent has),
//! removed when its detach starts (the conductor unassigned it) or it is forgotten. Nothing in
//! it is ever logged.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::fsutil::write_private;
use crate::protocol::VolumeTarget;

/// The cache's directory under the state directory.
pub const TARGETS_DIR: &str = "targets";

pub(crate) struct TargetCache {
    dir: PathBuf,
}

impl TargetCache {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(TARGETS_DIR),
        }
    }

    fn file(&self, uuid: Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    pub(crate) fn save(&self, target: &VolumeTarget) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // A directory made by hand, or under another umask, is made root-only too.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let json = serde_json::to_vec(target).map_err(io::Error::other)?;
        write_private(&self.file(target.uuid), &json)
    }

    pub(crate) fn remove(&self, uuid: Uuid) -> io::Result<()> {
        match std::fs::remove_file(self.file(uuid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every cached target. A file that is not one (a temporary file a crash left, a target
    /// that does not parse) is removed: it may hold a secret no volume needs.
    pub(crate) fn load(&self) -> Vec<VolumeTarget> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(
                    path = %self.dir.display(),
                    error = %e,
                    "cannot read the node's target cache; volumes attach once the conductor \
                     answers"
                );
                return Vec::new();
            }
        };
        let mut targets = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<Uuid>().ok());
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<VolumeTarget>(&bytes).ok());
            match (named, parsed) {
                (Some(uuid), Some(target)) if target.uuid == uuid => targets.push(target),
                _ => {
                    // The error would quote the file: only its name is said.
                    tracing::warn!(
                        path = %path.display(),
                        "removing a file of the target cache that is not a cached target"
                    );
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove it");
                    }
                }
            }
        }
        targets.sort_by_key(|t| t.uuid);
        targets
    }

    /// Removes the cache and every secret in it.
    pub(crate) fn clear(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn target(n: u8) -> VolumeTarget {
        serde_json::from_value(serde_json::json!({
            "uuid": Uuid::from_bytes([n; 16]), "node_uuid": Uuid::nil(),
            "volume_type": "rbd", "volume_id": format!("vol-{n}"),
            "properties": {"name": "rbd/img", "hosts": ["192.0.2.9"],
                           "auth_username": "node", "auth_key": "secret-key-material"},
        }))
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn targets_are_kept_root_only_and_read_back_whole() {
        let state = tempfile::tempdir().unwrap();
        let cache = TargetCache::new(state.path());
        assert!(cache.load().is_empty(), "no cache yet");
        // A directory someone made with a wider mode is narrowed.
        std::fs::create_dir(state.path().join(TARGETS_DIR)).unwrap();
        std::fs::set_permissions(
            state.path().join(TARGETS_DIR),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        cache.save(&target(2)).unwrap();
        cache.save(&target(1)).unwrap();
        assert_eq!(mode(&state.path().join(TARGETS_DIR)), 0o700);
        assert_eq!(mode(&cache.file(target(1).uuid)), 0o600);
        assert_eq!(cache.load(), vec![target(1), target(2)]);
        let text = std::fs::read_to_string(cache.file(target(1).uuid)).unwrap();
        assert!(text.contains("secret-key-material"), "kept whole: {text}");

        cache.remove(target(1).uuid).unwrap();
        cache.remove(target(1).uuid).unwrap();
        assert_eq!(cache.load(), vec![target(2)]);
        cache.clear().unwrap();
        assert!(!state.path().join(TARGETS_DIR).exists());
        cache.clear().unwrap();
    }

    #[test]
    fn files_that_are_not_cached_targets_are_removed() {
        let state = tempfile::tempdir().unwrap();
        let cache = TargetCache::new(state.path());
        cache.save(&target(1)).unwrap();
        let dir = state.path().join(TARGETS_DIR);
        let left = [
            // What a crash in the middle of a write leaves.
            dir.join(format!(".{}.json.tmp-1-0", target(3).uuid)),
            dir.join(format!("{}.json", target(4).uuid)),
            // Named for another target than the one it holds.
            dir.join(format!("{}.json", target(5).uuid)),
        ];
        std::fs::write(&left[0], "{\"auth_key\": \"half").unwrap();
        std::fs::write(&left[1], "not json").unwrap();
        std::fs::write(&left[2], serde_json::to_vec(&target(6)).unwrap()).unwrap();
        assert_eq!(cache.load(), vec![target(1)]);
        for path in &left {
            assert!(!path.exists(), "{} removed", path.display());
        }
    }
}
