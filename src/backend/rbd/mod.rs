//! Ceph RBD volumes: kernel map and unmap, never of a mapping the agent did not make.

pub(crate) mod device;
pub(crate) mod system;

use std::time::Duration;

use crate::backend::{
    Attached, BlockDevice, BlockHost, Creations, DetachOutcome, ErrorKind, HostError, Ownership,
    RbdAttachment, RbdImage, VolumeBackend,
};
use crate::protocol::ForeignAttachment;
use crate::protocol::target::{RbdSpec, VolumeType};
use device::RbdMatcher;

/// A kernel RBD mapping as /sys/bus/rbd/devices/N shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) device_id: u32,
    pub(crate) pool: String,
    pub(crate) namespace: Option<String>,
    pub(crate) image: String,
}

impl Mapping {
    fn is(&self, pool: &str, namespace: Option<&str>, image: &str) -> bool {
        self.pool == pool && self.namespace.as_deref() == namespace && self.image == image
    }
}

/// The `rbd` CLI or the kernel's rbd bus.
pub(crate) trait RbdHost: Send + Sync {
    fn mappings(&self) -> Result<Vec<Mapping>, HostError>;
    /// Maps the image; the key travels in a file or the kernel keyring, never on a command line.
    fn map(&self, spec: &RbdSpec, read_only: bool) -> Result<u32, HostError>;
    /// Unmaps; a busy device is the error kind `device_busy`.
    fn unmap(&self, device_id: u32) -> Result<(), HostError>;
}

impl<T: RbdHost + ?Sized> RbdHost for std::sync::Arc<T> {
    fn mappings(&self) -> Result<Vec<Mapping>, HostError> {
        (**self).mappings()
    }
    fn map(&self, spec: &RbdSpec, read_only: bool) -> Result<u32, HostError> {
        (**self).map(spec, read_only)
    }
    fn unmap(&self, device_id: u32) -> Result<(), HostError> {
        (**self).unmap(device_id)
    }
}

pub(crate) struct RbdBackend<H, B> {
    pub(crate) host: H,
    pub(crate) block: B,
}

impl<H: RbdHost, B: BlockHost> RbdBackend<H, B> {
    pub(crate) fn new(host: H, block: B) -> Self {
        Self { host, block }
    }
}

impl<H: RbdHost, B: BlockHost> VolumeBackend for RbdBackend<H, B> {
    type Spec = RbdSpec;
    type Record = RbdAttachment;

    fn attach(
        &self,
        rbd: &RbdSpec,
        read_only: bool,
        _ownership: &Ownership,
        timeout: Duration,
    ) -> Result<Attached<RbdAttachment>, HostError> {
        let before = self.host.mappings()?;
        let existing = before
            .iter()
            .find(|m| m.is(&rbd.pool, rbd.namespace.as_deref(), &rbd.image));
        let (device_id, mapped_by_agent) = match existing {
            Some(m) => (m.device_id, false),
            None => match self.host.map(rbd, read_only) {
                Ok(id) => {
                    crate::failpoints::crash("rbd.mapped");
                    (id, true)
                }
                Err(e) => {
                    // A map that gave up (timed out, killed) may still have mapped the image:
                    // undo it now, or it would later look like someone else's mapping.
                    let leftovers =
                        self.host
                            .mappings()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|m| {
                                m.is(&rbd.pool, rbd.namespace.as_deref(), &rbd.image)
                                    && !before.iter().any(|b| b.device_id == m.device_id)
                            });
                    for m in leftovers {
                        tracing::warn!(
                            device = m.device_id,
                            "unmapping what a failed map left behind"
                        );
                        let _ = self.host.unmap(m.device_id);
                    }
                    return Err(e);
                }
            },
        };
        let device = match self
            .block
            .wait_for_device(&RbdMatcher { device_id }, timeout)
        {
            Ok(device) => device,
            Err(e) => {
                if mapped_by_agent {
                    let _ = self.host.unmap(device_id);
                }
                return Err(e);
            }
        };
        crate::failpoints::crash("rbd.device_seen");
        Ok(Attached {
            paths: vec![device.device_path.clone()],
            device,
            record: RbdAttachment {
                device_id,
                pool: rbd.pool.clone(),
                namespace: rbd.namespace.clone(),
                image: rbd.image.clone(),
                mapped_by_agent,
            },
        })
    }

    fn detach(
        &self,
        device: &BlockDevice,
        mapping: &RbdAttachment,
        _ownership: &Ownership,
    ) -> Result<DetachOutcome, HostError> {
        if mapping.mapped_by_agent && self.is_present(mapping)? {
            self.block.flush(&device.kernel_name)?;
            crate::failpoints::crash("rbd.flushed");
            match self.host.unmap(mapping.device_id) {
                Ok(()) => crate::failpoints::crash("rbd.unmapped"),
                Err(e) if e.kind == ErrorKind::DeviceBusy => {
                    return Ok(DetachOutcome::Blocked { holder: e.message });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(DetachOutcome::Detached {
            sessions_kept: Vec::new(),
        })
    }

    fn is_present(&self, mapping: &RbdAttachment) -> Result<bool, HostError> {
        Ok(self.host.mappings()?.iter().any(|m| {
            m.device_id == mapping.device_id
                && m.is(&mapping.pool, mapping.namespace.as_deref(), &mapping.image)
        }))
    }

    fn creations(&self, rbd: &RbdSpec) -> Result<Creations, HostError> {
        let mapped = self
            .host
            .mappings()?
            .iter()
            .any(|m| m.is(&rbd.pool, rbd.namespace.as_deref(), &rbd.image));
        Ok(Creations {
            image: (!mapped).then(|| RbdImage {
                pool: rbd.pool.clone(),
                namespace: rbd.namespace.clone(),
                image: rbd.image.clone(),
            }),
            ..Creations::default()
        })
    }

    fn leftover(
        &self,
        creations: &Creations,
    ) -> Result<Option<Attached<RbdAttachment>>, HostError> {
        let Some(image) = &creations.image else {
            return Ok(None);
        };
        let mappings = self.host.mappings()?;
        let Some(mapping) = mappings
            .iter()
            .find(|m| m.is(&image.pool, image.namespace.as_deref(), &image.image))
        else {
            return Ok(None);
        };
        let device_id = mapping.device_id;
        let device = self
            .block
            .wait_for_device(&RbdMatcher { device_id }, Duration::ZERO)
            .unwrap_or_else(|_| BlockDevice {
                kernel_name: format!("rbd{device_id}"),
                device_path: format!("/dev/rbd{device_id}"),
                size_bytes: 0,
                wwn: None,
            });
        Ok(Some(Attached {
            paths: vec![device.device_path.clone()],
            device,
            record: RbdAttachment {
                device_id,
                pool: image.pool.clone(),
                namespace: image.namespace.clone(),
                image: image.image.clone(),
                mapped_by_agent: true,
            },
        }))
    }

    fn foreign(&self, owned: &[&RbdAttachment]) -> Result<Vec<ForeignAttachment>, HostError> {
        let ours: Vec<u32> = owned
            .iter()
            .filter(|a| a.mapped_by_agent)
            .map(|a| a.device_id)
            .collect();
        Ok(self
            .host
            .mappings()?
            .into_iter()
            .filter(|m| !ours.contains(&m.device_id))
            .map(|m| ForeignAttachment {
                volume_type: VolumeType::Rbd.to_string(),
                description: format!(
                    "mapping rbd{} of {}/{}{}",
                    m.device_id,
                    m.pool,
                    m.namespace
                        .as_ref()
                        .map(|n| format!("{n}/"))
                        .unwrap_or_default(),
                    m.image
                ),
                device_path: Some(format!("/dev/rbd{}", m.device_id)),
            })
            .collect())
    }
}
