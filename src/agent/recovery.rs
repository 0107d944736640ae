//! Start-up: rebuilding volume state from the ownership record and what the host really has.

use std::time::SystemTime;

use super::apply::Volumes;
use super::backends::Backends;
use super::record::Record;
use super::volume::Volume;

/// Volumes of the record still on the host come back as attached; those gone are dropped (they
/// attach again when assigned); those that cannot be checked are kept, never taken for foreign.
pub(crate) async fn recover(backends: &Backends, record: Record) -> Volumes {
    let backends = backends.clone();
    tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        let mut volumes = Volumes::new();
        for (uuid, owned) in record.volumes {
            match backends.is_present(&owned.attachment) {
                Ok(true) => {
                    tracing::info!(
                        target_uuid = %uuid,
                        volume_id = %owned.volume_id,
                        device = %owned.attachment.device.device_path,
                        "volume still attached from before"
                    );
                }
                Ok(false) => {
                    tracing::info!(
                        target_uuid = %uuid,
                        volume_id = %owned.volume_id,
                        "volume from before is no longer on the host; \
                         it will attach again when assigned"
                    );
                    continue;
                }
                Err(e) => {
                    // Unsure: keep it as ours rather than risk treating it as foreign or
                    // re-attaching.
                    tracing::warn!(
                        target_uuid = %uuid,
                        kind = %e.kind,
                        error = %e,
                        "cannot check a recorded volume; keeping it"
                    );
                }
            }
            let volume = Volume::recovered(uuid, owned.volume_id, owned.attachment, now);
            volumes.insert(uuid, volume);
        }
        volumes
    })
    .await
    .unwrap_or_default()
}
