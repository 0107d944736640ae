//! NVMe over TCP volumes: one controller per (portal, subsystem), shared by the subsystem's
//! namespaces as an iSCSI session is shared by its LUNs; a controller is disconnected only when
//! the agent connected it and no owned namespace, nor anything mounted, still uses it; foreign
//! controllers are never touched.

pub(crate) mod device;
pub(crate) mod system;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{
    Attached, BlockDevice, BlockHost, Creations, DetachOutcome, ErrorKind, HostError,
    NvmeAttachment, NvmeControllerAttachment, Ownership, VolumeBackend,
};
use crate::protocol::ForeignAttachment;
use crate::protocol::target::{NamespaceId, NvmeofSpec, Portal, SessionKey, VolumeType};
use device::NamespaceMatcher;

/// A controller as /sys/class/nvme/nvmeN shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Controller {
    /// `nvmeN`.
    pub(crate) name: String,
    /// (portal, subsystem NQN).
    pub(crate) key: SessionKey,
    /// `live`, `connecting` while the kernel reconnects, `deleting`…
    pub(crate) state: Option<String>,
    /// The host NQN it was connected with: another host identity's controller is not ours.
    pub(crate) host_nqn: Option<String>,
    pub(crate) namespaces: Vec<Namespace>,
}

impl Controller {
    pub(crate) fn is_down(&self) -> bool {
        self.state.as_deref().is_some_and(|s| s != "live")
    }
}

/// One namespace reached through a controller, by its block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    /// The block device: `nvmeXnY` (the multipath head when the kernel has native multipath).
    pub(crate) kernel_name: String,
    pub(crate) nsid: u32,
    pub(crate) uuid: Option<String>,
    pub(crate) nguid: Option<String>,
    /// What udev names the device by: `uuid.…`, `eui.…`, or `nvme.…` from serial and model.
    pub(crate) wwid: Option<String>,
}

impl Namespace {
    pub(crate) fn is(&self, id: &NamespaceId) -> bool {
        if let Some(uuid) = &id.uuid {
            return self.uuid.as_ref() == Some(uuid);
        }
        if let Some(nguid) = &id.nguid {
            return self.nguid.as_ref() == Some(nguid);
        }
        id.nsid == Some(self.nsid)
    }
}

/// The kernel's NVMe-oF host: sysfs and `/dev/nvme-fabrics`.
pub(crate) trait NvmeHost: Send + Sync {
    fn controllers(&self) -> Result<Vec<Controller>, HostError>;
    /// Connects a controller to the subsystem through `portal` (an IP address); returns its
    /// name. The DH-HMAC-CHAP secrets go to the kernel only, never on a command line.
    fn connect(&self, spec: &NvmeofSpec, portal: &Portal) -> Result<String, HostError>;
    /// Disconnects; "no such controller" is success.
    fn disconnect(&self, controller: &str) -> Result<(), HostError>;
    /// The host NQN this node connects with.
    fn host_nqn(&self) -> &str;
    /// Has the controller read its namespaces (and their sizes) again.
    fn rescan(&self, controller: &str) -> Result<(), HostError>;
}

impl<T: NvmeHost + ?Sized> NvmeHost for Arc<T> {
    fn controllers(&self) -> Result<Vec<Controller>, HostError> {
        (**self).controllers()
    }
    fn connect(&self, spec: &NvmeofSpec, portal: &Portal) -> Result<String, HostError> {
        (**self).connect(spec, portal)
    }
    fn disconnect(&self, controller: &str) -> Result<(), HostError> {
        (**self).disconnect(controller)
    }
    fn host_nqn(&self) -> &str {
        (**self).host_nqn()
    }
    fn rescan(&self, controller: &str) -> Result<(), HostError> {
        (**self).rescan(controller)
    }
}

pub(crate) struct NvmeBackend<H, B> {
    pub(crate) host: H,
    pub(crate) block: B,
    /// One connect per (portal, subsystem) at a time, and none while it is disconnected.
    controller_locks: Mutex<HashMap<SessionKey, Arc<Mutex<()>>>>,
}

impl<H: NvmeHost, B: BlockHost> NvmeBackend<H, B> {
    pub(crate) fn new(host: H, block: B) -> Self {
        Self {
            host,
            block,
            controller_locks: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self, key: &SessionKey) -> Arc<Mutex<()>> {
        let mut locks = self
            .controller_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    /// Controllers of this host identity to `key`: the one the agent would use or made.
    fn find(&self, key: &SessionKey) -> Result<Option<Controller>, HostError> {
        Ok(self
            .host
            .controllers()?
            .into_iter()
            .find(|c| self.mine(c, key)))
    }

    fn mine(&self, controller: &Controller, key: &SessionKey) -> bool {
        controller.key == *key
            && controller
                .host_nqn
                .as_deref()
                .is_none_or(|h| h == self.host.host_nqn())
    }

    /// Finds the controller to (portal, subsystem) or connects one; whether this call made it.
    fn establish(
        &self,
        spec: &NvmeofSpec,
        portal: &Portal,
    ) -> Result<NvmeControllerAttachment, HostError> {
        let portal = crate::backend::resolve_portal(portal)?;
        let key = SessionKey::new(&portal, &spec.subsys_nqn);
        let lock = self.lock(&key);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = self.find(&key)? {
            return Ok(NvmeControllerAttachment {
                key,
                controller: existing.name,
                created: false,
            });
        }
        let started = std::time::Instant::now();
        let controller = self.host.connect(spec, &portal)?;
        tracing::debug!(
            controller = %controller,
            subsystem = %spec.subsys_nqn,
            portal = %key.portal(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected"
        );
        crate::failpoints::crash("nvme.connected");
        Ok(NvmeControllerAttachment {
            key,
            controller,
            created: true,
        })
    }

    /// Disconnects the controllers of `made` that the agent connected and nothing else uses.
    fn disconnect_unused(
        &self,
        made: &[NvmeControllerAttachment],
        ownership: &Ownership,
        namespace: &NamespaceId,
    ) -> Result<Vec<SessionKey>, HostError> {
        let mut kept = Vec::new();
        for controller in made {
            let key = &controller.key;
            if !controller.created && !ownership.owned_sessions.contains(key) {
                continue;
            }
            if ownership.sessions_used_by_others.contains(key) {
                if controller.created {
                    kept.push(key.clone());
                }
                continue;
            }
            let lock = self.lock(key);
            let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
            let Some(now) = self.find(key)? else {
                continue;
            };
            if let Some(busy) = self.other_namespace_in_use(&now, namespace)? {
                tracing::warn!(
                    controller = %now.name,
                    namespace = %busy,
                    "not disconnecting: another namespace of the controller is in use"
                );
                continue;
            }
            self.host.disconnect(&now.name)?;
            crate::failpoints::crash("nvme.disconnected");
        }
        Ok(kept)
    }

    /// A namespace of `controller`, other than the volume's, that is mounted or held: a
    /// disconnect would take it away from whoever uses it.
    fn other_namespace_in_use(
        &self,
        controller: &Controller,
        namespace: &NamespaceId,
    ) -> Result<Option<String>, HostError> {
        for ns in controller.namespaces.iter().filter(|ns| !ns.is(namespace)) {
            let name = &ns.kernel_name;
            if !self.block.mounts_of(name)?.is_empty() || !self.block.holders(name)?.is_empty() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }
}

impl<H: NvmeHost, B: BlockHost> VolumeBackend for NvmeBackend<H, B> {
    type Spec = NvmeofSpec;
    type Record = NvmeAttachment;

    fn attach(
        &self,
        spec: &NvmeofSpec,
        _read_only: bool,
        ownership: &Ownership,
        timeout: Duration,
    ) -> Result<Attached<NvmeAttachment>, HostError> {
        let mut controllers = Vec::new();
        for portal in &spec.portals {
            match self.establish(spec, portal) {
                Ok(made) => controllers.push(made),
                Err(e) => {
                    // Attached whole or not at all.
                    let _ = self.disconnect_unused(&controllers, ownership, &spec.namespace);
                    return Err(e);
                }
            }
        }
        let what = NamespaceMatcher {
            controllers: controllers.iter().map(|c| c.controller.clone()).collect(),
            namespace: spec.namespace.clone(),
        };
        let device = match self.block.wait_for_device(&what, timeout) {
            Ok(device) => device,
            Err(e) => {
                let _ = self.disconnect_unused(&controllers, ownership, &spec.namespace);
                let e = match e.kind {
                    ErrorKind::DeviceTimeout => HostError::new(
                        ErrorKind::DeviceTimeout,
                        format!(
                            "{}; the subsystem {} may not have this namespace, or not for \
                             this host ({})",
                            e.message,
                            spec.subsys_nqn,
                            self.host.host_nqn()
                        ),
                    ),
                    _ => e,
                };
                return Err(e);
            }
        };
        tracing::debug!(
            subsystem = %spec.subsys_nqn,
            device = %device.kernel_name,
            "device ready"
        );
        crate::failpoints::crash("nvme.device_seen");
        Ok(Attached {
            paths: vec![device.device_path.clone()],
            device,
            record: NvmeAttachment {
                controllers,
                namespace: spec.namespace.clone(),
            },
        })
    }

    fn detach(
        &self,
        device: &BlockDevice,
        record: &NvmeAttachment,
        ownership: &Ownership,
    ) -> Result<DetachOutcome, HostError> {
        if !device.kernel_name.is_empty() && self.is_present(record)? {
            self.block.flush(&device.kernel_name)?;
            crate::failpoints::crash("nvme.flushed");
        }
        let sessions_kept =
            self.disconnect_unused(&record.controllers, ownership, &record.namespace)?;
        Ok(DetachOutcome::Detached { sessions_kept })
    }

    fn is_present(&self, record: &NvmeAttachment) -> Result<bool, HostError> {
        let controllers = self.host.controllers()?;
        Ok(record.controllers.iter().all(|made| {
            controllers.iter().any(|c| {
                self.mine(c, &made.key) && c.namespaces.iter().any(|ns| ns.is(&record.namespace))
            })
        }))
    }

    fn paths_down(&self, record: &NvmeAttachment) -> Result<Vec<String>, HostError> {
        let controllers = self.host.controllers()?;
        Ok(record
            .controllers
            .iter()
            .filter_map(|made| {
                let (nqn, portal) = (made.key.iqn(), made.key.portal());
                match controllers.iter().find(|c| self.mine(c, &made.key)) {
                    None => Some(format!("no controller to {nqn} at {portal}")),
                    Some(c) if c.is_down() => Some(format!(
                        "controller {} to {nqn} at {portal} is {}",
                        c.name,
                        c.state.as_deref().unwrap_or_default()
                    )),
                    Some(_) => None,
                }
            })
            .collect())
    }

    fn creations(&self, spec: &NvmeofSpec) -> Result<Creations, HostError> {
        let controllers = self.host.controllers()?;
        // No name lookup on the agent's loop: a portal named by DNS matches nothing here.
        let sessions: Vec<SessionKey> = spec
            .portals
            .iter()
            .map(|p| SessionKey::new(p, &spec.subsys_nqn))
            .filter(|key| !controllers.iter().any(|c| self.mine(c, key)))
            .collect();
        Ok(Creations {
            namespace: (!sessions.is_empty()).then(|| spec.namespace.clone()),
            sessions,
            ..Creations::default()
        })
    }

    fn leftover(
        &self,
        creations: &Creations,
    ) -> Result<Option<Attached<NvmeAttachment>>, HostError> {
        let Some(namespace) = &creations.namespace else {
            return Ok(None);
        };
        let present = self.host.controllers()?;
        let controllers: Vec<NvmeControllerAttachment> = creations
            .sessions
            .iter()
            .filter_map(|key| {
                present
                    .iter()
                    .find(|c| self.mine(c, key))
                    .map(|c| NvmeControllerAttachment {
                        key: key.clone(),
                        controller: c.name.clone(),
                        created: true,
                    })
            })
            .collect();
        if controllers.is_empty() {
            return Ok(None);
        }
        let what = NamespaceMatcher {
            controllers: controllers.iter().map(|c| c.controller.clone()).collect(),
            namespace: namespace.clone(),
        };
        let device = self
            .block
            .wait_for_device(&what, Duration::ZERO)
            .unwrap_or_else(|_| BlockDevice::none());
        Ok(Some(Attached {
            paths: Some(device.device_path.clone())
                .filter(|p| !p.is_empty())
                .into_iter()
                .collect(),
            device,
            record: NvmeAttachment {
                controllers,
                namespace: namespace.clone(),
            },
        }))
    }

    fn rescan(&self, _device: &BlockDevice, record: &NvmeAttachment) -> Result<(), HostError> {
        // A target that announces the change (an AEN) has the kernel read it already.
        let present = self.host.controllers()?;
        for made in &record.controllers {
            if let Some(c) = present.iter().find(|c| self.mine(c, &made.key)) {
                self.host.rescan(&c.name)?;
            }
        }
        Ok(())
    }

    fn foreign(&self, owned: &[&NvmeAttachment]) -> Result<Vec<ForeignAttachment>, HostError> {
        let ours: Vec<&SessionKey> = owned
            .iter()
            .flat_map(|a| a.controllers.iter())
            .filter(|c| c.created)
            .map(|c| &c.key)
            .collect();
        Ok(self
            .host
            .controllers()?
            .into_iter()
            .filter(|c| !ours.iter().any(|key| self.mine(c, key)))
            .map(|c| ForeignAttachment {
                volume_type: VolumeType::Nvmeof.to_string(),
                description: format!(
                    "controller {} to {} at {} ({} namespaces)",
                    c.name,
                    c.key.iqn(),
                    c.key.portal(),
                    c.namespaces.len()
                ),
                device_path: None,
            })
            .collect())
    }
}
