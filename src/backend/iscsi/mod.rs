//! iSCSI volumes: node records, logins, LUN scans and safe logouts.
//!
//! The rules users rely on live here, written once against [`IscsiHost`]: node records are
//! created with `node.startup = manual`; an existing session to the same (portal, iqn) is reused;
//! only the LUN wanted is scanned; a session is logged out only if the agent logged it in and no
//! other owned LUN uses it; sessions the agent did not create are never touched.

pub(crate) mod iscsiadm;
pub(crate) mod multipath;
pub(crate) mod sysfs;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{
    Attached, BlockDevice, BlockHost, Creations, DetachOutcome, ErrorKind, HostError,
    IscsiAttachment, IscsiPathAttachment, LunRef, MultipathMap, Ownership, VolumeBackend,
};
use crate::protocol::ForeignAttachment;
use crate::protocol::target::{Chap, IscsiPath, IscsiSpec, Portal, SessionKey, VolumeType};
use multipath::MultipathHost;

/// A logged-in session as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// N in /sys/class/iscsi_session/sessionN.
    pub(crate) sid: u32,
    pub(crate) key: SessionKey,
    /// H in /sys/class/scsi_host/hostH: each iSCSI session has a SCSI host of its own.
    pub(crate) host_no: u32,
    /// LUNs the kernel has for this session, with their block device's kernel name.
    pub(crate) luns: Vec<(u16, String)>,
    /// The kernel's session state (`LOGGED_IN`, `FAILED` while it reconnects, `FREE`); `None`
    /// when sysfs has no `state` file.
    pub(crate) state: Option<String>,
}

impl Session {
    /// The connection is lost and the kernel is trying to log in again: I/O to its LUNs waits
    /// (and fails after open-iscsi's `replacement_timeout`).
    pub(crate) fn is_down(&self) -> bool {
        self.state.as_deref().is_some_and(|s| s != "LOGGED_IN")
    }

    pub(crate) fn lun_device(&self, lun: u16) -> Option<&str> {
        self.luns
            .iter()
            .find(|(l, _)| *l == lun)
            .map(|(_, k)| k.as_str())
    }
}

/// open-iscsi and the iSCSI parts of sysfs.
pub(crate) trait IscsiHost: Send + Sync {
    fn sessions(&self) -> Result<Vec<Session>, HostError>;
    /// SendTargets discovery against `portal`; returns the targets it offers.
    fn discover(
        &self,
        portal: &Portal,
        chap: Option<&Chap>,
    ) -> Result<Vec<(String, String)>, HostError>;
    /// Creates (or updates) the node record with `node.startup = manual` and the CHAP settings.
    fn create_record(&self, path: &IscsiPath, chap: Option<&Chap>) -> Result<(), HostError>;
    /// Logs in; "session exists" is success.
    fn login(&self, session: &SessionKey) -> Result<(), HostError>;
    /// Logs out; "no session" is success.
    fn logout(&self, session: &SessionKey) -> Result<(), HostError>;
    /// Deletes the node record; "no record" is success.
    fn delete_record(&self, session: &SessionKey) -> Result<(), HostError>;
    /// Asks the kernel to scan one LUN of the session.
    fn scan_lun(&self, session: &Session, lun: u16) -> Result<(), HostError>;
    /// Deletes the SCSI device behind a block device (`/sys/block/<dev>/device/delete`).
    fn delete_device(&self, kernel_name: &str) -> Result<(), HostError>;
    /// Has the kernel read the SCSI device's capacity again (`/sys/block/<dev>/device/rescan`).
    fn rescan_device(&self, kernel_name: &str) -> Result<(), HostError>;
}

impl<T: IscsiHost + ?Sized> IscsiHost for std::sync::Arc<T> {
    fn sessions(&self) -> Result<Vec<Session>, HostError> {
        (**self).sessions()
    }
    fn discover(
        &self,
        portal: &Portal,
        chap: Option<&Chap>,
    ) -> Result<Vec<(String, String)>, HostError> {
        (**self).discover(portal, chap)
    }
    fn create_record(&self, path: &IscsiPath, chap: Option<&Chap>) -> Result<(), HostError> {
        (**self).create_record(path, chap)
    }
    fn login(&self, session: &SessionKey) -> Result<(), HostError> {
        (**self).login(session)
    }
    fn logout(&self, session: &SessionKey) -> Result<(), HostError> {
        (**self).logout(session)
    }
    fn delete_record(&self, session: &SessionKey) -> Result<(), HostError> {
        (**self).delete_record(session)
    }
    fn scan_lun(&self, session: &Session, lun: u16) -> Result<(), HostError> {
        (**self).scan_lun(session, lun)
    }
    fn delete_device(&self, kernel_name: &str) -> Result<(), HostError> {
        (**self).delete_device(kernel_name)
    }
    fn rescan_device(&self, kernel_name: &str) -> Result<(), HostError> {
        (**self).rescan_device(kernel_name)
    }
}

pub(crate) struct IscsiBackend<H, B> {
    pub(crate) host: H,
    pub(crate) block: B,
    /// One login per (portal, iqn) at a time: parallel logins to one target make duplicate
    /// sessions. Held only while a session is looked up and established, not while the device
    /// is awaited, so LUNs of one target attach together.
    session_locks: Mutex<HashMap<SessionKey, Arc<Mutex<()>>>>,
    multipath: Option<Box<dyn MultipathHost>>,
}

impl<H: IscsiHost, B: BlockHost> IscsiBackend<H, B> {
    pub(crate) fn new(host: H, block: B) -> Self {
        Self {
            host,
            block,
            session_locks: Mutex::new(HashMap::new()),
            multipath: None,
        }
    }

    /// Volumes with several paths get a dm-multipath map when multipathd runs.
    pub(crate) fn with_multipath(mut self, multipath: Option<Box<dyn MultipathHost>>) -> Self {
        self.multipath = multipath;
        self
    }

    /// The map over a volume's path devices: one multipathd made by itself, or one it makes
    /// when asked. None when multipathd does not run here.
    fn assemble_map(
        &self,
        handles: &[IscsiPathAttachment],
        timeout: Duration,
    ) -> Result<Option<(BlockDevice, MultipathMap)>, HostError> {
        let Some(multipath) = self.multipath.as_ref().filter(|m| m.available()) else {
            return Ok(None);
        };
        let paths: Vec<String> = handles.iter().map(|h| h.kernel_name.clone()).collect();
        let what = multipath::MultipathMatcher {
            paths: paths.clone(),
        };
        let (device, wwid_registered) = match self.block.wait_for_device(&what, Duration::ZERO) {
            Ok(device) => (device, false),
            Err(_) => {
                let registered = multipath.claim(&paths)?;
                let device = self.block.wait_for_device(&what, timeout).map_err(|e| {
                    HostError::new(
                        ErrorKind::MultipathFailed,
                        format!(
                            "{}; multipathd runs but made no map: \
                             check blacklist and find_multipaths in /etc/multipath.conf",
                            e.message
                        ),
                    )
                });
                match device {
                    Ok(device) => (device, registered),
                    Err(e) => {
                        if registered {
                            let _ = multipath.forget(&paths[0]);
                        }
                        return Err(e);
                    }
                }
            }
        };
        let name = device
            .device_path
            .strip_prefix("/dev/mapper/")
            .unwrap_or(&device.kernel_name)
            .to_string();
        let map = MultipathMap {
            name,
            wwid_registered,
        };
        Ok(Some((device, map)))
    }

    /// Takes the map down before its paths go. None when done; a holder when the map is busy.
    fn remove_map(
        &self,
        map: &MultipathMap,
        map_device: &str,
        paths: &[IscsiPathAttachment],
    ) -> Result<Option<String>, HostError> {
        let multipath = self.multipath.as_ref().ok_or_else(|| {
            HostError::new(
                ErrorKind::MultipathFailed,
                format!(
                    "the volume is on multipath map {} but the multipath tools are missing; \
                     install multipath-tools",
                    map.name
                ),
            )
        })?;
        let Some(first) = paths.first() else {
            return Ok(None);
        };
        let present = self
            .block
            .holders(&first.kernel_name)?
            .iter()
            .any(|holder| holder == map_device);
        if present {
            self.block.flush(map_device)?;
            if let Err(e) = multipath.flush(&map.name) {
                if e.kind == ErrorKind::DeviceBusy {
                    return Ok(Some(format!(
                        "multipath map {} is open: {}",
                        map.name, e.message
                    )));
                }
                return Err(e);
            }
        }
        if map.wwid_registered {
            multipath.forget(&first.kernel_name)?;
        }
        Ok(None)
    }

    fn session_lock(&self, key: &SessionKey) -> Arc<Mutex<()>> {
        let mut locks = self.session_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    fn find_session(&self, key: &SessionKey) -> Result<Option<Session>, HostError> {
        Ok(self.host.sessions()?.into_iter().find(|s| s.key == *key))
    }

    /// Finds the session to (portal, iqn) or logs in. Returns it and whether this call made it.
    fn establish(
        &self,
        spec: &IscsiSpec,
        path: &IscsiPath,
        key: &SessionKey,
    ) -> Result<(Session, bool), HostError> {
        if let Some(session) = self.find_session(key)? {
            return Ok((session, false));
        }
        if spec.discovery {
            let offered = self
                .host
                .discover(&path.portal, spec.discovery_chap.as_ref())?;
            if !offered.iter().any(|(_, iqn)| *iqn == path.iqn) {
                return Err(HostError::new(
                    ErrorKind::TargetNotFound,
                    format!(
                        "discovery at {} does not offer {}; check the target's ACLs and IQN",
                        key.portal(),
                        path.iqn
                    ),
                ));
            }
        }
        self.host.create_record(path, spec.chap.as_ref())?;
        crate::failpoints::crash("iscsi.record_created");
        let started = std::time::Instant::now();
        if let Err(e) = self.host.login(key) {
            // iscsiadm can fail after the kernel logged in (a database error on another
            // record, say). No session existed before, under this lock: any session is ours.
            if let Ok(Some(_)) = self.find_session(key) {
                let _ = self.host.logout(key);
            }
            let _ = self.host.delete_record(key);
            return Err(e);
        }
        tracing::debug!(
            session = %key,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "logged in"
        );
        crate::failpoints::crash("iscsi.logged_in");
        let session = self.find_session(key)?.ok_or_else(|| {
            HostError::new(
                ErrorKind::LoginFailed,
                format!(
                    "iscsiadm logged in to {} at {} but no session shows in sysfs",
                    key.iqn(),
                    key.portal()
                ),
            )
        })?;
        Ok((session, true))
    }

    /// Undoes a session this attempt created, unless another LUN came to use it meanwhile.
    fn abandon(&self, key: &SessionKey, lun: u16) {
        match self.find_session(key) {
            Ok(Some(session)) if session.luns.iter().all(|(l, _)| *l == lun) => {
                let _ = self.host.logout(key);
                let _ = self.host.delete_record(key);
            }
            Ok(None) => {
                let _ = self.host.delete_record(key);
            }
            _ => {}
        }
    }

    fn attach_path(
        &self,
        spec: &IscsiSpec,
        path: &IscsiPath,
        timeout: Duration,
    ) -> Result<(IscsiPathAttachment, BlockDevice), HostError> {
        // Sessions show the portal's address in sysfs: name it the same way from the start.
        let resolved = IscsiPath {
            portal: crate::backend::resolve_portal(&path.portal)?,
            ..path.clone()
        };
        let path = &resolved;
        let key = path.session();
        let lock = self.session_lock(&key);
        // Held until the LUN is scanned: a detach of another LUN of the session, which takes
        // the same lock to log out, then sees this LUN and keeps the session.
        let (session_created, device_created) = {
            let _session = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (session, created) = self.establish(spec, path, &key)?;
            let device_created = session.lun_device(path.lun).is_none();
            if device_created && let Err(e) = self.host.scan_lun(&session, path.lun) {
                if created {
                    self.abandon(&key, path.lun);
                }
                return Err(e);
            }
            (created, device_created)
        };
        let cleanup = |e: HostError| {
            if session_created {
                let _session = lock.lock().unwrap_or_else(|e| e.into_inner());
                self.abandon(&key, path.lun);
            }
            e
        };
        let what = sysfs::LunMatcher {
            session: key.clone(),
            lun: path.lun,
        };
        let device = self
            .block
            .wait_for_device(&what, timeout)
            .map_err(cleanup)?;
        tracing::debug!(
            session = %key,
            lun = path.lun,
            device = %device.kernel_name,
            "device ready"
        );
        crate::failpoints::crash("iscsi.device_seen");
        let handle = IscsiPathAttachment {
            session: key,
            lun: path.lun,
            kernel_name: device.kernel_name.clone(),
            session_created,
            device_created,
        };
        Ok((handle, device))
    }
}

impl<H: IscsiHost, B: BlockHost> VolumeBackend for IscsiBackend<H, B> {
    type Spec = IscsiSpec;
    type Record = IscsiAttachment;

    fn attach(
        &self,
        spec: &IscsiSpec,
        _read_only: bool,
        ownership: &Ownership,
        timeout: Duration,
    ) -> Result<Attached<IscsiAttachment>, HostError> {
        // Every path logs in at once; the caller guarantees no other login to these sessions.
        let results: Vec<Result<(IscsiPathAttachment, BlockDevice), HostError>> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = spec
                    .paths
                    .iter()
                    .map(|path| scope.spawn(move || self.attach_path(spec, path, timeout)))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join().unwrap_or_else(|_| {
                            Err(HostError::new(
                                ErrorKind::Internal,
                                "a login worker panicked",
                            ))
                        })
                    })
                    .collect()
            });
        let mut paths = Vec::new();
        let mut devices = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok((path, device)) => {
                    paths.push(path);
                    devices.push(device);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(error) = first_error {
            // A volume is attached whole or not at all: undo the paths that came up.
            if let Some(device) = devices.first() {
                let partial = IscsiAttachment {
                    paths,
                    multipath: None,
                };
                let _ = self.detach(device, &partial, ownership);
            }
            return Err(error);
        }
        let map = if paths.len() > 1 {
            self.assemble_map(&paths, timeout)
        } else {
            Ok(None)
        };
        let mut attached = Attached {
            device: devices[0].clone(),
            paths: devices.iter().map(|d| d.device_path.clone()).collect(),
            record: IscsiAttachment {
                paths,
                multipath: None,
            },
        };
        match map {
            Ok(None) => {}
            Ok(Some((device, map))) => {
                attached.device = device;
                attached.record.multipath = Some(map);
            }
            Err(e) => {
                let _ = self.detach(&attached.device, &attached.record, ownership);
                return Err(e);
            }
        }
        Ok(attached)
    }

    fn detach(
        &self,
        device: &BlockDevice,
        record: &IscsiAttachment,
        ownership: &Ownership,
    ) -> Result<DetachOutcome, HostError> {
        let paths = &record.paths;
        if let Some(map) = &record.multipath
            && let Some(holder) = self.remove_map(map, &device.kernel_name, paths)?
        {
            return Ok(DetachOutcome::Blocked { holder });
        }
        let sessions = self.host.sessions()?;
        let mut sessions_kept = Vec::new();
        for path in paths {
            let key = &path.session;
            let session = sessions.iter().find(|s| s.key == *key);
            if let Some(session) = session
                && path.device_created
                && session.lun_device(path.lun) == Some(path.kernel_name.as_str())
            {
                self.block.flush(&path.kernel_name)?;
                crate::failpoints::crash("iscsi.flushed");
                self.host.delete_device(&path.kernel_name)?;
                crate::failpoints::crash("iscsi.device_deleted");
            }
            let ours = path.session_created || ownership.owned_sessions.contains(key);
            if !ours {
                continue;
            }
            if ownership.sessions_used_by_others.contains(key) {
                if path.session_created {
                    sessions_kept.push(key.clone());
                }
                continue;
            }
            // No login or LUN scan of this session runs while it is logged out (see attach_path).
            let lock = self.session_lock(key);
            let _session = lock.lock().unwrap_or_else(|e| e.into_inner());
            if session.is_some() {
                // LUNs still on the session belong to someone: logging out would yank them.
                let remaining = self.find_session(key)?.map(|s| s.luns).unwrap_or_default();
                if let Some((lun, dev)) = remaining.first() {
                    tracing::warn!(
                        session = %key,
                        lun,
                        device = %dev,
                        "not logging out: another LUN of the session is still present"
                    );
                    continue;
                }
                self.host.logout(key)?;
                crate::failpoints::crash("iscsi.logged_out");
            }
            self.host.delete_record(key)?;
        }
        Ok(DetachOutcome::Detached { sessions_kept })
    }

    fn is_present(&self, record: &IscsiAttachment) -> Result<bool, HostError> {
        let sessions = self.host.sessions()?;
        Ok(record.paths.iter().all(|p| {
            sessions
                .iter()
                .any(|s| s.key == p.session && s.lun_device(p.lun) == Some(p.kernel_name.as_str()))
        }))
    }

    fn paths_down(&self, record: &IscsiAttachment) -> Result<Vec<String>, HostError> {
        let sessions = self.host.sessions()?;
        Ok(record
            .paths
            .iter()
            .filter_map(|p| {
                let (iqn, portal) = (p.session.iqn(), p.session.portal());
                match sessions.iter().find(|s| s.key == p.session) {
                    None => Some(format!("no session to {iqn} at {portal}")),
                    Some(s) if s.is_down() => Some(format!(
                        "session {} to {iqn} at {portal} is {}",
                        s.sid,
                        s.state.as_deref().unwrap_or_default()
                    )),
                    Some(_) => None,
                }
            })
            .collect())
    }

    fn creations(&self, spec: &IscsiSpec) -> Result<Creations, HostError> {
        let sessions = self.host.sessions()?;
        let mut creations = Creations::default();
        for path in &spec.paths {
            // Called on the agent's main loop: no name lookup here. Portals were resolved when
            // the assignment arrived; one that did not resolve then keeps its name, matches no
            // session, and so explains nothing after a crash (never too much).
            let key = path.session();
            let lun = LunRef {
                session: key.clone(),
                lun: path.lun,
            };
            match sessions.iter().find(|s| s.key == key) {
                None => {
                    creations.sessions.push(key);
                    creations.luns.push(lun);
                }
                Some(session) if session.lun_device(path.lun).is_none() => creations.luns.push(lun),
                Some(_) => {}
            }
        }
        Ok(creations)
    }

    fn leftover(
        &self,
        creations: &Creations,
    ) -> Result<Option<Attached<IscsiAttachment>>, HostError> {
        let sessions = self.host.sessions()?;
        let mut paths = Vec::new();
        let mut devices = Vec::new();
        for lun in &creations.luns {
            let session = sessions.iter().find(|s| s.key == lun.session);
            let created = creations.sessions.contains(&lun.session);
            if session.is_none() && !created {
                continue;
            }
            // A session it meant to create and that is not there may still have left its node
            // record (CHAP secret included): the path stays, so that a detach deletes it.
            let kernel_name = session
                .and_then(|s| s.lun_device(lun.lun))
                .unwrap_or_default()
                .to_string();
            if !kernel_name.is_empty() {
                let matcher = sysfs::LunMatcher {
                    session: lun.session.clone(),
                    lun: lun.lun,
                };
                // Present now, or described by its kernel name if udev has not linked it yet.
                let device = self
                    .block
                    .wait_for_device(&matcher, Duration::ZERO)
                    .unwrap_or_else(|_| BlockDevice {
                        kernel_name: kernel_name.clone(),
                        device_path: format!("/dev/{kernel_name}"),
                        size_bytes: 0,
                        wwn: None,
                    });
                devices.push(device);
            }
            paths.push(IscsiPathAttachment {
                session: lun.session.clone(),
                lun: lun.lun,
                device_created: !kernel_name.is_empty(),
                kernel_name,
                session_created: created,
            });
        }
        if paths.is_empty() {
            return Ok(None);
        }
        let device = devices.first().cloned().unwrap_or_else(BlockDevice::none);
        Ok(Some(Attached {
            device,
            paths: devices.into_iter().map(|d| d.device_path).collect(),
            record: IscsiAttachment {
                paths,
                multipath: None,
            },
        }))
    }

    fn rescan(&self, _device: &BlockDevice, record: &IscsiAttachment) -> Result<(), HostError> {
        for path in &record.paths {
            self.host.rescan_device(&path.kernel_name)?;
        }
        if let Some(map) = &record.multipath {
            let multipath = self.multipath.as_ref().ok_or_else(|| {
                HostError::new(
                    ErrorKind::MultipathFailed,
                    format!(
                        "the volume is on multipath map {} but the multipath tools are missing",
                        map.name
                    ),
                )
            })?;
            multipath.resize(&map.name)?;
        }
        Ok(())
    }

    fn foreign(&self, owned: &[&IscsiAttachment]) -> Result<Vec<ForeignAttachment>, HostError> {
        let ours: Vec<&SessionKey> = owned
            .iter()
            .flat_map(|a| a.paths.iter())
            .filter(|p| p.session_created)
            .map(|p| &p.session)
            .collect();
        Ok(self
            .host
            .sessions()?
            .into_iter()
            .filter(|s| !ours.contains(&&s.key))
            .map(|s| ForeignAttachment {
                volume_type: VolumeType::Iscsi.to_string(),
                description: format!(
                    "session {} to {} at {} ({} LUNs)",
                    s.sid,
                    s.key.iqn(),
                    s.key.portal(),
                    s.luns.len()
                ),
                device_path: None,
            })
            .collect())
    }
}
