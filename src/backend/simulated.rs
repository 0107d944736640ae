//! An in-memory kernel: iSCSI sessions, SCSI and RBD block devices, udev links and mounts.
//!
//! It stands behind the same host traits as the real system, so the agent's logic runs
//! unchanged on it. It serves any target by default; tests configure CHAP, unreachable portals,
//! foreign sessions and foreign mounts, and read counters to check the agent's invariants.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::backend::block::DeviceMatcher;
use crate::backend::iscsi::sysfs::LunMatcher;
use crate::backend::iscsi::{IscsiHost, Session};
use crate::backend::nvme::device::NamespaceMatcher;
use crate::backend::nvme::{Controller, Namespace, NvmeHost};
use crate::backend::rbd::device::RbdMatcher;
use crate::backend::rbd::{Mapping, RbdHost};
use crate::backend::{BlockDevice, BlockHost, ErrorKind, HostError};
use crate::protocol::target::{
    Chap, IscsiPath, NvmeofSpec, Portal, RbdSpec, SessionKey, parse_portal,
};

pub const DEFAULT_LUN_SIZE: u64 = 1 << 30;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub logins: u64,
    pub logouts: u64,
    pub maps: u64,
    pub unmaps: u64,
    pub mkfs: u64,
    pub nvme_connects: u64,
    /// File systems grown online.
    pub filesystem_grows: u64,
    pub nvme_disconnects: u64,
    /// Most logins ever in flight at once for one (portal, iqn).
    pub max_concurrent_logins_per_target: u32,
}

#[derive(Debug, Clone)]
struct SimDevice {
    size: u64,
    wwn: String,
    path: String,
    mounts: Vec<PathBuf>,
    holders: Vec<String>,
    /// The array-side volume behind the device: its data outlives logins and maps.
    backing: String,
}

#[derive(Debug, Clone)]
struct SimSession {
    sid: u32,
    key: SessionKey,
    luns: BTreeMap<u16, String>,
}

#[derive(Debug, Clone)]
struct SimController {
    name: String,
    key: SessionKey,
}

/// The NQN the simulated host connects with.
pub const SIM_HOST_NQN: &str =
    "nqn.2014-08.org.nvmexpress:uuid:5e1f0000-0000-4000-8000-000000000001";

#[derive(Debug, Default)]
struct SimState {
    chap: BTreeMap<String, (String, String)>,
    unreachable: BTreeSet<String>,
    rbd_keys: BTreeMap<String, String>,
    records: BTreeMap<SessionKey, Option<(String, String)>>,
    /// What SendTargets discovery answers.
    offered: BTreeSet<SessionKey>,
    sessions: Vec<SimSession>,
    devices: BTreeMap<String, SimDevice>,
    mappings: Vec<(Mapping, String)>,
    maps_time_out_late: bool,
    /// Namespaces (nsid, uuid) by subsystem NQN; a subsystem not listed has namespace 1.
    nvme_namespaces: BTreeMap<String, Vec<(u32, Option<String>)>>,
    /// DH-HMAC-CHAP secrets subsystems require of this host.
    nvme_dhchap: BTreeMap<String, String>,
    nvme_controllers: Vec<SimController>,
    /// Subsystem NQNs in the order the kernel met them: the index names their devices.
    nvme_subsystems: Vec<String>,
    next_controller: u32,
    /// Filesystem signatures on the array's volumes, by backing name.
    filesystems: BTreeMap<String, String>,
    /// The options of each mount the agent made, by mount point.
    mount_options: BTreeMap<PathBuf, String>,
    logins_in_flight: BTreeMap<SessionKey, u32>,
    next_sid: u32,
    next_disk: u32,
    next_rbd: u32,
    stats: SimStats,
}

pub struct SimKernel {
    state: Mutex<SimState>,
    changed: Condvar,
    login_delay: Duration,
}

impl Default for SimKernel {
    fn default() -> Self {
        Self::new(Duration::from_millis(5))
    }
}

fn disk_name(n: u32) -> String {
    // sda … sdz, sdaa …, as the kernel names them.
    let mut n = n as usize;
    let mut name = Vec::new();
    loop {
        name.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    name.reverse();
    format!("sd{}", String::from_utf8_lossy(&name))
}

impl SimKernel {
    /// `login_delay` is how long a login takes: long enough to catch two at once.
    pub fn new(login_delay: Duration) -> Self {
        Self {
            state: Mutex::new(SimState::default()),
            changed: Condvar::new(),
            login_delay,
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn require_chap(&self, iqn: &str, user: &str, password: &str) {
        self.state()
            .chap
            .insert(iqn.into(), (user.into(), password.into()));
    }

    /// Makes SendTargets discovery at `portal` offer `iqn`.
    pub fn offer_target(&self, portal: &str, iqn: &str) {
        self.state().offered.insert(session_key(portal, iqn));
    }

    pub fn set_unreachable(&self, portal: &str, unreachable: bool) {
        let mut s = self.state();
        if unreachable {
            s.unreachable.insert(portal.into());
        } else {
            s.unreachable.remove(portal);
        }
    }

    /// Makes the next maps time out after the kernel has mapped the image anyway.
    pub fn time_out_maps_after_mapping(&self, on: bool) {
        self.state().maps_time_out_late = on;
    }

    /// The NVMe subsystem `nqn` has these namespaces (nsid, uuid).
    pub fn nvme_namespaces(&self, nqn: &str, namespaces: &[(u32, Option<&str>)]) {
        self.state().nvme_namespaces.insert(
            nqn.into(),
            namespaces
                .iter()
                .map(|(nsid, uuid)| (*nsid, uuid.map(str::to_string)))
                .collect(),
        );
    }

    pub fn require_dhchap(&self, nqn: &str, secret: &str) {
        self.state().nvme_dhchap.insert(nqn.into(), secret.into());
    }

    /// Controllers to `nqn` at `portal`, the agent's or anyone's.
    pub fn controller_count(&self, portal: &str, nqn: &str) -> usize {
        let key = session_key(portal, nqn);
        self.state()
            .nvme_controllers
            .iter()
            .filter(|c| c.key == key)
            .count()
    }

    /// A controller someone connected by hand.
    pub fn connect_by_hand(&self, portal: &str, nqn: &str) {
        let mut s = self.state();
        add_controller(&mut s, session_key(portal, nqn));
        self.changed.notify_all();
    }

    pub fn require_rbd_key(&self, user: &str, key: &str) {
        self.state().rbd_keys.insert(user.into(), key.into());
    }

    pub fn stats(&self) -> SimStats {
        self.state().stats.clone()
    }

    pub fn session_count(&self, portal: &str, iqn: &str) -> usize {
        self.state()
            .sessions
            .iter()
            .filter(|s| s.key == session_key(portal, iqn))
            .count()
    }

    pub fn record_exists(&self, portal: &str, iqn: &str) -> bool {
        self.state().records.contains_key(&session_key(portal, iqn))
    }

    pub fn mapping_count(&self) -> usize {
        self.state().mappings.len()
    }

    /// A session someone logged in by hand, with its LUNs scanned.
    pub fn login_by_hand(&self, portal: &str, iqn: &str, luns: &[u16]) {
        let mut s = self.state();
        let key = session_key(portal, iqn);
        s.records.insert(key.clone(), None);
        let sid = new_session(&mut s, key);
        for lun in luns {
            add_lun(&mut s, sid, *lun);
        }
        self.changed.notify_all();
    }

    /// A reboot: every session, device, mapping and mount is gone; node records (files in
    /// /etc/iscsi) and the arrays' data stay.
    pub fn reboot(&self) {
        let mut s = self.state();
        s.sessions.clear();
        s.nvme_controllers.clear();
        s.devices.clear();
        s.mappings.clear();
        s.mount_options.clear();
        self.changed.notify_all();
    }

    /// Deletes a LUN's device as a detach does first (a detach stopped right after it).
    pub fn delete_lun_by_hand(&self, portal: &str, iqn: &str, lun: u16) {
        let mut s = self.state();
        let key = session_key(portal, iqn);
        let mut gone = Vec::new();
        for session in s.sessions.iter_mut().filter(|x| x.key == key) {
            gone.extend(session.luns.remove(&lun));
        }
        for name in gone {
            s.devices.remove(&name);
        }
        self.changed.notify_all();
    }

    /// Mounts a device the way an administrator would, outside the agent.
    pub fn mount_by_hand(&self, kernel_name: &str, path: &str) {
        let mut s = self.state();
        if let Some(dev) = s.devices.get_mut(kernel_name) {
            dev.mounts.push(PathBuf::from(path));
        }
    }

    pub fn unmount_by_hand(&self, path: &str) {
        let mut s = self.state();
        for dev in s.devices.values_mut() {
            dev.mounts.retain(|m| m != Path::new(path));
        }
        s.mount_options.remove(Path::new(path));
    }

    /// The kernel name of the device mounted at `path`.
    pub fn mounts_by_path(&self, path: &str) -> Option<String> {
        self.state()
            .devices
            .iter()
            .find(|(_, d)| d.mounts.iter().any(|m| m == Path::new(path)))
            .map(|(name, _)| name.clone())
    }

    /// The volume behind `kernel_name` grew at the storage, and the kernel already knows.
    pub fn grow_device(&self, kernel_name: &str, size_bytes: u64) {
        if let Some(dev) = self.state().devices.get_mut(kernel_name) {
            dev.size = size_bytes;
        }
    }

    /// The options the agent mounted `path` with, while it is mounted.
    pub fn mount_options(&self, path: &str) -> Option<String> {
        self.state().mount_options.get(Path::new(path)).cloned()
    }

    pub fn mounts(&self, kernel_name: &str) -> Vec<PathBuf> {
        self.state()
            .devices
            .get(kernel_name)
            .map(|d| d.mounts.clone())
            .unwrap_or_default()
    }
}

/// Tests name portals as text; a malformed one is a bug in the test.
fn session_key(portal: &str, iqn: &str) -> SessionKey {
    let portal = parse_portal(portal).unwrap_or_else(|e| panic!("{e}"));
    SessionKey::new(&portal, iqn)
}

fn new_session(s: &mut SimState, key: SessionKey) -> u32 {
    s.next_sid += 1;
    let sid = s.next_sid;
    s.sessions.push(SimSession {
        sid,
        key,
        luns: BTreeMap::new(),
    });
    sid
}

fn add_lun(s: &mut SimState, sid: u32, lun: u16) -> String {
    let name = disk_name(s.next_disk);
    s.next_disk += 1;
    let session = s
        .sessions
        .iter_mut()
        .find(|x| x.sid == sid)
        .expect("session exists");
    session.luns.insert(lun, name.clone());
    let path = format!(
        "/dev/disk/by-path/ip-{}-iscsi-{}-lun-{lun}",
        session.key.portal(),
        session.key.iqn()
    );
    let wwn = format!("naa.6001405{:09x}", s.next_disk);
    s.devices.insert(
        name.clone(),
        SimDevice {
            size: DEFAULT_LUN_SIZE,
            wwn,
            path,
            mounts: Vec::new(),
            holders: Vec::new(),
            backing: format!("iscsi:{}:{lun}", session.key.iqn()),
        },
    );
    name
}

fn block_device(name: &str, dev: &SimDevice) -> BlockDevice {
    BlockDevice {
        kernel_name: name.to_string(),
        device_path: dev.path.clone(),
        size_bytes: dev.size,
        wwn: Some(dev.wwn.clone()),
    }
}

/// The device `what` names, once "udev" has linked it. Only the matchers of simulated devices
/// are recognised: there is no device-mapper here, so a multipath map never appears.
fn find_device(s: &SimState, what: &dyn DeviceMatcher) -> Option<BlockDevice> {
    let what: &dyn Any = what;
    let located = if let Some(lun) = what.downcast_ref::<LunMatcher>() {
        lun.among(&sessions(s))
    } else if let Some(rbd) = what.downcast_ref::<RbdMatcher>() {
        rbd.among(s.mappings.iter().map(|(m, _)| m))
    } else if let Some(namespace) = what.downcast_ref::<NamespaceMatcher>() {
        namespace.find(|name| {
            s.nvme_controllers
                .iter()
                .find(|c| c.name == name)
                .map(|c| namespaces(s, &c.key))
                .unwrap_or_default()
        })
    } else {
        None
    }?;
    let dev = s
        .devices
        .get(&located.kernel_name)
        .filter(|d| d.path == located.link)?;
    Some(block_device(&located.kernel_name, dev))
}

/// The sessions as sysfs would list them.
fn sessions(s: &SimState) -> Vec<Session> {
    s.sessions
        .iter()
        .map(|x| Session {
            sid: x.sid,
            key: x.key.clone(),
            host_no: x.sid,
            luns: x.luns.iter().map(|(l, k)| (*l, k.clone())).collect(),
            // The kernel keeps a session whose portal went away, and reconnects it.
            state: Some(match s.unreachable.contains(x.key.portal()) {
                true => "FAILED".into(),
                false => "LOGGED_IN".into(),
            }),
        })
        .collect()
}

impl IscsiHost for SimKernel {
    fn sessions(&self) -> Result<Vec<Session>, HostError> {
        Ok(sessions(&self.state()))
    }

    fn discover(
        &self,
        portal: &Portal,
        _chap: Option<&Chap>,
    ) -> Result<Vec<(String, String)>, HostError> {
        let s = self.state();
        if s.unreachable.contains(&portal.to_string()) {
            return Err(unreachable(&portal.to_string()));
        }
        let portal = portal.to_string();
        Ok(s.offered
            .iter()
            .filter(|k| k.portal() == portal)
            .map(|k| (k.portal().to_string(), k.iqn().to_string()))
            .collect())
    }

    fn create_record(&self, path: &IscsiPath, chap: Option<&Chap>) -> Result<(), HostError> {
        let key = path.session();
        let creds = chap.map(|c| (c.username.clone(), c.password.expose().to_string()));
        self.state().records.insert(key, creds);
        Ok(())
    }

    fn login(&self, key: &SessionKey) -> Result<(), HostError> {
        let (portal, iqn) = (key.portal(), key.iqn());
        {
            let mut s = self.state();
            let in_flight = s.logins_in_flight.entry(key.clone()).or_default();
            *in_flight += 1;
            let now = *in_flight;
            let max = &mut s.stats.max_concurrent_logins_per_target;
            *max = (*max).max(now);
        }
        std::thread::sleep(self.login_delay);
        let mut s = self.state();
        *s.logins_in_flight.entry(key.clone()).or_default() -= 1;
        if s.unreachable.contains(portal) {
            return Err(unreachable(portal));
        }
        let Some(creds) = s.records.get(key).cloned() else {
            return Err(HostError::new(
                ErrorKind::NoRecord,
                format!("no node record for {iqn} at {portal}"),
            ));
        };
        if let Some(required) = s.chap.get(iqn)
            && creds.as_ref() != Some(required)
        {
            return Err(HostError::new(
                ErrorKind::AuthFailed,
                format!(
                    "the target {iqn} at {portal} refused the CHAP credentials; \
                     check auth_username and auth_password"
                ),
            ));
        }
        if s.sessions.iter().any(|x| x.key == *key) {
            return Ok(());
        }
        new_session(&mut s, key.clone());
        s.stats.logins += 1;
        self.changed.notify_all();
        Ok(())
    }

    fn logout(&self, key: &SessionKey) -> Result<(), HostError> {
        let mut s = self.state();
        let Some(pos) = s.sessions.iter().position(|x| x.key == *key) else {
            return Ok(());
        };
        let session = s.sessions.remove(pos);
        for name in session.luns.values() {
            s.devices.remove(name);
        }
        s.stats.logouts += 1;
        Ok(())
    }

    fn delete_record(&self, key: &SessionKey) -> Result<(), HostError> {
        self.state().records.remove(key);
        Ok(())
    }

    fn scan_lun(&self, session: &Session, lun: u16) -> Result<(), HostError> {
        let mut s = self.state();
        let exists = s
            .sessions
            .iter()
            .find(|x| x.sid == session.sid)
            .map(|x| x.luns.contains_key(&lun));
        match exists {
            None => Err(HostError::new(
                ErrorKind::SessionGone,
                format!("session {} ended during the scan", session.sid),
            )),
            Some(true) => Ok(()),
            Some(false) => {
                add_lun(&mut s, session.sid, lun);
                self.changed.notify_all();
                Ok(())
            }
        }
    }

    fn rescan_device(&self, kernel_name: &str) -> Result<(), HostError> {
        match self.state().devices.contains_key(kernel_name) {
            true => Ok(()),
            false => Err(HostError::new(
                ErrorKind::ScanFailed,
                format!("no SCSI device {kernel_name}"),
            )),
        }
    }

    fn delete_device(&self, kernel_name: &str) -> Result<(), HostError> {
        let mut s = self.state();
        s.devices.remove(kernel_name);
        for session in &mut s.sessions {
            session.luns.retain(|_, k| k != kernel_name);
        }
        Ok(())
    }
}

/// The namespaces a controller to `key` reaches, as sysfs would list them.
fn namespaces(s: &SimState, key: &SessionKey) -> Vec<Namespace> {
    let nqn = key.iqn();
    let index = s.nvme_subsystems.iter().position(|n| n == nqn).unwrap_or(0);
    let listed = s.nvme_namespaces.get(nqn).cloned();
    listed
        .unwrap_or_else(|| vec![(1, None)])
        .into_iter()
        .map(|(nsid, uuid)| Namespace {
            kernel_name: format!("nvme{index}n{nsid}"),
            nsid,
            wwid: Some(match &uuid {
                Some(uuid) => format!("uuid.{uuid}"),
                None => format!("nvme.1b36-{index:04x}-{nsid:08x}"),
            }),
            uuid,
            nguid: None,
        })
        .collect()
}

fn add_controller(s: &mut SimState, key: SessionKey) -> String {
    let name = format!("nvme{}", s.next_controller);
    s.next_controller += 1;
    if !s.nvme_subsystems.iter().any(|n| n == key.iqn()) {
        s.nvme_subsystems.push(key.iqn().to_string());
    }
    for ns in namespaces(s, &key) {
        let backing = format!("nvme:{}:{}", key.iqn(), ns.nsid);
        let path = format!("/dev/disk/by-id/nvme-{}", ns.wwid.unwrap_or_default());
        s.devices.entry(ns.kernel_name).or_insert(SimDevice {
            size: DEFAULT_LUN_SIZE,
            wwn: String::new(),
            path,
            mounts: Vec::new(),
            holders: Vec::new(),
            backing,
        });
    }
    s.nvme_controllers.push(SimController {
        name: name.clone(),
        key,
    });
    name
}

impl NvmeHost for SimKernel {
    fn controllers(&self) -> Result<Vec<Controller>, HostError> {
        let s = self.state();
        Ok(s.nvme_controllers
            .iter()
            .map(|c| Controller {
                name: c.name.clone(),
                key: c.key.clone(),
                state: Some(match s.unreachable.contains(c.key.portal()) {
                    true => "connecting".into(),
                    false => "live".into(),
                }),
                host_nqn: Some(SIM_HOST_NQN.into()),
                namespaces: namespaces(&s, &c.key),
            })
            .collect())
    }

    fn connect(&self, spec: &NvmeofSpec, portal: &Portal) -> Result<String, HostError> {
        std::thread::sleep(self.login_delay);
        let mut s = self.state();
        let key = SessionKey::new(portal, &spec.subsys_nqn);
        if s.unreachable.contains(key.portal()) {
            return Err(unreachable(key.portal()));
        }
        if let Some(required) = s.nvme_dhchap.get(&spec.subsys_nqn) {
            let given = spec.dhchap.as_ref().map(|d| d.host_secret.expose());
            if given != Some(required.as_str()) {
                return Err(HostError::new(
                    ErrorKind::AuthFailed,
                    format!(
                        "{} refused this host's DH-HMAC-CHAP authentication",
                        spec.subsys_nqn
                    ),
                ));
            }
        }
        if s.nvme_controllers.iter().any(|c| c.key == key) {
            return Err(HostError::new(
                ErrorKind::ConnectFailed,
                format!("already connected to {key} (EALREADY)"),
            ));
        }
        let name = add_controller(&mut s, key);
        s.stats.nvme_connects += 1;
        self.changed.notify_all();
        Ok(name)
    }

    fn disconnect(&self, controller: &str) -> Result<(), HostError> {
        let mut s = self.state();
        let Some(pos) = s.nvme_controllers.iter().position(|c| c.name == controller) else {
            return Ok(());
        };
        let gone = s.nvme_controllers.remove(pos);
        if !s
            .nvme_controllers
            .iter()
            .any(|c| c.key.iqn() == gone.key.iqn())
        {
            for ns in namespaces(&s, &gone.key) {
                s.devices.remove(&ns.kernel_name);
            }
        }
        s.stats.nvme_disconnects += 1;
        Ok(())
    }

    fn host_nqn(&self) -> &str {
        SIM_HOST_NQN
    }

    fn rescan(&self, _controller: &str) -> Result<(), HostError> {
        Ok(())
    }
}

fn unreachable(portal: &str) -> HostError {
    HostError::new(
        ErrorKind::PortalUnreachable,
        format!(
            "cannot connect to the portal {portal}; \
             check the address, the network and the target's listener"
        ),
    )
}

impl BlockHost for SimKernel {
    fn wait_for_device(
        &self,
        what: &dyn DeviceMatcher,
        timeout: Duration,
    ) -> Result<BlockDevice, HostError> {
        let s = self.state();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| find_device(s, what).is_none())
            .unwrap_or_else(|e| e.into_inner());
        find_device(&s, what).ok_or_else(|| {
            HostError::new(
                ErrorKind::DeviceTimeout,
                format!(
                    "no block device for {what} appeared within {}s",
                    timeout.as_secs()
                ),
            )
        })
    }

    fn holders(&self, kernel_name: &str) -> Result<Vec<String>, HostError> {
        Ok(self
            .state()
            .devices
            .get(kernel_name)
            .map(|d| d.holders.clone())
            .unwrap_or_default())
    }

    fn mounts_of(&self, kernel_name: &str) -> Result<Vec<PathBuf>, HostError> {
        Ok(self.mounts(kernel_name))
    }

    fn flush(&self, _kernel_name: &str) -> Result<(), HostError> {
        Ok(())
    }

    fn has_signature(&self, device_path: &str) -> Result<bool, HostError> {
        let s = self.state();
        Ok(s.devices
            .values()
            .any(|d| d.path == device_path && s.filesystems.contains_key(&d.backing)))
    }

    fn mkfs(&self, device_path: &str, fstype: &str) -> Result<(), HostError> {
        let mut s = self.state();
        let backing = s
            .devices
            .values()
            .find(|d| d.path == device_path)
            .map(|d| d.backing.clone())
            .ok_or_else(|| {
                HostError::new(
                    ErrorKind::MkfsFailed,
                    format!("{device_path} does not exist"),
                )
            })?;
        s.filesystems.insert(backing, fstype.to_string());
        s.stats.mkfs += 1;
        Ok(())
    }

    /// The simulated host has no directories: only the node's policy, applied before, refuses.
    fn prepare_mount_point(&self, _path: &Path) -> Result<(), HostError> {
        Ok(())
    }

    fn mount(
        &self,
        device_path: &str,
        path: &Path,
        _fstype: &str,
        options: &str,
    ) -> Result<(), HostError> {
        let mut s = self.state();
        if s.devices
            .values()
            .any(|d| d.mounts.iter().any(|m| m == path))
        {
            return Err(HostError::new(
                ErrorKind::MountFailed,
                format!(
                    "{} is already a mount point of another device",
                    path.display()
                ),
            ));
        }
        let dev = s
            .devices
            .values_mut()
            .find(|d| d.path == device_path)
            .ok_or_else(|| {
                HostError::new(
                    ErrorKind::MountFailed,
                    format!("{device_path} does not exist"),
                )
            })?;
        dev.mounts.push(path.to_path_buf());
        s.mount_options
            .insert(path.to_path_buf(), options.to_string());
        Ok(())
    }

    fn size_of(&self, kernel_name: &str) -> Result<u64, HostError> {
        self.state()
            .devices
            .get(kernel_name)
            .map(|d| d.size)
            .ok_or_else(|| HostError::new(ErrorKind::Sysfs, format!("no device {kernel_name}")))
    }

    fn grow_filesystem(
        &self,
        device_path: &str,
        _mount_path: &Path,
        fstype: &str,
    ) -> Result<(), HostError> {
        let mut s = self.state();
        let backing = s
            .devices
            .values()
            .find(|d| d.path == device_path)
            .map(|d| d.backing.clone());
        match backing.and_then(|b| s.filesystems.get(&b).cloned()) {
            Some(found) if found == fstype => {
                s.stats.filesystem_grows += 1;
                Ok(())
            }
            _ => Err(HostError::new(
                ErrorKind::GrowFailed,
                format!("no {fstype} file system on {device_path}"),
            )),
        }
    }

    fn unmount(&self, path: &Path) -> Result<(), HostError> {
        let mut s = self.state();
        for dev in s.devices.values_mut() {
            dev.mounts.retain(|m| m != path);
        }
        s.mount_options.remove(path);
        Ok(())
    }
}

impl RbdHost for SimKernel {
    fn mappings(&self) -> Result<Vec<Mapping>, HostError> {
        Ok(self
            .state()
            .mappings
            .iter()
            .map(|(m, _)| m.clone())
            .collect())
    }

    fn map(&self, spec: &RbdSpec, _read_only: bool) -> Result<u32, HostError> {
        let mut s = self.state();
        if spec
            .monitors
            .iter()
            .all(|m| s.unreachable.contains(&format!("{}:{}", m.host, m.port)))
        {
            return Err(HostError::new(
                ErrorKind::ClusterUnreachable,
                "no Ceph monitor answered; check hosts and ports and the node's network",
            ));
        }
        if let Some(required) = s.rbd_keys.get(&spec.user)
            && spec.key.as_ref().map(|k| k.expose()) != Some(required.as_str())
        {
            return Err(HostError::new(
                ErrorKind::AuthFailed,
                format!(
                    "the Ceph cluster refused the key of client.{}; \
                     check the key stored for this target",
                    spec.user
                ),
            ));
        }
        let device_id = s.next_rbd;
        s.next_rbd += 1;
        let kernel = format!("rbd{device_id}");
        let path = format!("/dev/rbd/{}", spec.spec_name());
        s.devices.insert(
            kernel.clone(),
            SimDevice {
                size: DEFAULT_LUN_SIZE,
                wwn: String::new(),
                path,
                mounts: Vec::new(),
                holders: Vec::new(),
                backing: format!("rbd:{}", spec.spec_name()),
            },
        );
        s.mappings.push((
            Mapping {
                device_id,
                pool: spec.pool.clone(),
                namespace: spec.namespace.clone(),
                image: spec.image.clone(),
            },
            kernel,
        ));
        s.stats.maps += 1;
        self.changed.notify_all();
        if s.maps_time_out_late {
            return Err(HostError::new(
                ErrorKind::ClusterUnreachable,
                "the map did not finish in time (simulated)",
            ));
        }
        Ok(device_id)
    }

    fn unmap(&self, device_id: u32) -> Result<(), HostError> {
        let mut s = self.state();
        let Some(pos) = s
            .mappings
            .iter()
            .position(|(m, _)| m.device_id == device_id)
        else {
            return Ok(());
        };
        let kernel = s.mappings[pos].1.clone();
        if s.devices
            .get(&kernel)
            .is_some_and(|d| !d.mounts.is_empty() || !d.holders.is_empty())
        {
            return Err(HostError::new(
                ErrorKind::DeviceBusy,
                format!("/dev/{kernel} is busy (EBUSY): something still has it open"),
            ));
        }
        s.mappings.remove(pos);
        s.devices.remove(&kernel);
        s.stats.unmaps += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::iscsi::multipath::MultipathMatcher;

    #[test]
    fn waits_find_the_devices_of_the_matchers_it_simulates() {
        let kernel = SimKernel::new(Duration::ZERO);
        kernel.login_by_hand("127.0.0.1:3260", "iqn.2003-01.test.tether:s", &[3]);
        let lun = LunMatcher {
            session: session_key("127.0.0.1:3260", "iqn.2003-01.test.tether:s"),
            lun: 3,
        };
        let device = kernel.wait_for_device(&lun, Duration::ZERO).unwrap();
        assert_eq!(device.kernel_name, "sda");
        assert_eq!(
            device.device_path,
            "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2003-01.test.tether:s-lun-3"
        );
        let map = MultipathMatcher {
            paths: vec!["sda".into()],
        };
        for missing in [&RbdMatcher { device_id: 0 } as &dyn DeviceMatcher, &map] {
            let error = kernel.wait_for_device(missing, Duration::ZERO).unwrap_err();
            assert_eq!(error.kind, ErrorKind::DeviceTimeout, "{missing}");
        }
    }

    #[test]
    fn disk_names_follow_the_kernel() {
        assert_eq!(disk_name(0), "sda");
        assert_eq!(disk_name(25), "sdz");
        assert_eq!(disk_name(26), "sdaa");
        assert_eq!(disk_name(27), "sdab");
        assert_eq!(disk_name(26 + 26 * 26), "sdaaa");
    }
}
