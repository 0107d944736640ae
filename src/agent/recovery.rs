//! Start-up: rebuilding volume state from the ownership record and what the host really has.

use std::collections::BTreeMap;
use std::time::SystemTime;

use uuid::Uuid;

use super::apply::Volumes;
use super::backends::Backends;
use super::record::{Intent, OwnedVolume, Record};
use super::volume::Volume;
use crate::backend::ErrorKind;
use crate::protocol::target::VolumeType;

/// What the agent starts with: its volumes, and the intents it could not resolve yet (kept in
/// the record for the next start).
#[derive(Default)]
pub(crate) struct Recovered {
    pub(crate) volumes: Volumes,
    pub(crate) unresolved: BTreeMap<Uuid, Intent>,
}

/// Volumes of the record still on the host come back as attached; those gone are dropped (they
/// attach again when assigned); those that cannot be checked are kept, never taken for foreign.
/// Attaches that were under way come back as what they left on the host.
pub(crate) async fn recover(backends: &Backends, record: Record) -> Recovered {
    let backends = backends.clone();
    tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        let mut volumes = Volumes::new();
        for (uuid, mut owned) in record.volumes {
            match backends.is_present(&owned.attachment) {
                Ok(true) => {
                    tracing::info!(
                        target_uuid = %uuid,
                        volume_id = %owned.volume_id,
                        device = %owned.attachment.device.device_path,
                        "volume still attached from before"
                    );
                    forget_lost_mount(&backends, uuid, &mut owned);
                }
                Ok(false) if owned.attachment.may_leave_traces() => {
                    // A reboot, or a detach that stopped halfway: what is left (a session, a
                    // node record) is the agent's, completed if assigned, removed if not.
                    tracing::info!(
                        target_uuid = %uuid,
                        volume_id = %owned.volume_id,
                        "volume from before is no longer on the host, not whole; it will attach \
                         again when assigned, and what is left of it goes if not"
                    );
                    let volume = Volume::interrupted(uuid, owned.volume_id, owned.attachment, now);
                    volumes.insert(uuid, volume);
                    continue;
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
        let mut unresolved = BTreeMap::new();
        for (uuid, intent) in record.intents {
            if volumes.contains_key(&uuid) {
                continue;
            }
            match interrupted(&backends, uuid, &intent, now) {
                Ok(Some(volume)) => {
                    volumes.insert(uuid, volume);
                }
                Ok(None) => {}
                Err(()) => {
                    unresolved.insert(uuid, intent);
                }
            }
        }
        Recovered {
            volumes,
            unresolved,
        }
    })
    .await
    .unwrap_or_default()
}

/// A recorded mount that is no longer there is forgotten: the volume is reported attached, not
/// mounted, and its detach unmounts nothing. (After switch-root, the initramfs agent's mounts
/// outside the new root are gone while its sessions stay.) Kept when it cannot be checked.
fn forget_lost_mount(backends: &Backends, uuid: Uuid, owned: &mut OwnedVolume) {
    match backends.mount_kept(&owned.attachment) {
        Ok(true) => {}
        Ok(false) => {
            if let Some(mount) = owned.attachment.mount.take() {
                tracing::warn!(
                    target_uuid = %uuid,
                    volume_id = %owned.volume_id,
                    mountpoint = %mount.path.display(),
                    "the volume is no longer mounted where it was; reported attached, not mounted"
                );
            }
        }
        Err(e) => tracing::warn!(
            target_uuid = %uuid,
            kind = %e.kind,
            error = %e,
            "cannot check a recorded volume's mount; keeping it"
        ),
    }
}

/// An attach the agent did not see finish: what of its intent the host has is the agent's own.
/// Nothing else is touched: a part the host had before the attach began was never in the intent.
/// `Err` when that cannot be known now: the intent is kept for the next start.
fn interrupted(
    backends: &Backends,
    uuid: Uuid,
    intent: &Intent,
    now: SystemTime,
) -> Result<Option<Volume>, ()> {
    let Some(volume_type) = VolumeType::parse(&intent.volume_type) else {
        tracing::error!(
            target_uuid = %uuid,
            volume_type = %intent.volume_type,
            "an interrupted attach of a volume type this agent does not know; kept in the record"
        );
        return Err(());
    };
    match backends.leftover(volume_type, &intent.creates) {
        Ok(Some(attachment)) => {
            tracing::warn!(
                target_uuid = %uuid,
                volume_id = %intent.volume_id,
                kind = ErrorKind::Interrupted.as_str(),
                leftover = ?attachment.backend,
                "an attach was interrupted; what it made is the agent's: completed if the volume \
                 is still assigned, removed if not"
            );
            Ok(Some(Volume::interrupted(
                uuid,
                intent.volume_id.clone(),
                attachment,
                now,
            )))
        }
        Ok(None) => {
            tracing::info!(
                target_uuid = %uuid,
                volume_id = %intent.volume_id,
                "an attach was interrupted before it made anything"
            );
            Ok(None)
        }
        Err(e) => {
            // Kept in the record; meanwhile what it made is listed as foreign, never touched.
            tracing::error!(
                target_uuid = %uuid,
                volume_id = %intent.volume_id,
                kind = %e.kind,
                error = %e,
                "cannot check what an interrupted attach left; looking again at the next start"
            );
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::backend::simulated::SimKernel;
    use crate::backend::{
        Attachment, BackendAttachment, BlockDevice, IscsiAttachment, MountRecord,
    };
    use crate::protocol::VolumeState;

    fn owned(mount: &str) -> OwnedVolume {
        OwnedVolume {
            volume_id: "vol-1".into(),
            attachment: Attachment {
                device: BlockDevice {
                    kernel_name: "sda".into(),
                    device_path: "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2003-01.t:m-lun-0"
                        .into(),
                    size_bytes: 0,
                    wwn: None,
                },
                paths: Vec::new(),
                backend: BackendAttachment::Iscsi(IscsiAttachment {
                    paths: Vec::new(),
                    multipath: None,
                }),
                mount: Some(MountRecord {
                    path: PathBuf::from(mount),
                    by_agent: true,
                }),
            },
        }
    }

    #[tokio::test]
    async fn a_mount_gone_since_the_record_is_reported_attached_and_one_still_there_mounted() {
        let kernel = Arc::new(SimKernel::default());
        kernel.login_by_hand("127.0.0.1:3260", "iqn.2003-01.t:m", &[0]);
        kernel.mount_by_hand("sda", "/srv/kept");
        let backends = Backends::simulated(kernel);
        let (kept, lost) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let record = Record {
            version: 1,
            volumes: [(kept, owned("/srv/kept")), (lost, owned("/srv/lost"))].into(),
            intents: BTreeMap::new(),
        };
        let recovered = recover(&backends, record).await;
        assert_eq!(recovered.volumes[&kept].state(), VolumeState::Mounted);
        assert_eq!(recovered.volumes[&lost].state(), VolumeState::Attached);
        let lost = recovered.volumes[&lost].attachment.as_ref().unwrap();
        assert_eq!(lost.mount, None);
    }
}
