//! What the fuzz targets (fuzz/, run by scripts/fuzz) call: the parsers of outside input that are
//! private to their modules, each behind a function of public types. Not an API: it exists for
//! fuzz/ alone and changes with the code it calls. The public parsers (`protocol`, `config`,
//! the conductor's router) are fuzzed through their own paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::identity;
use crate::backend::block::{DeviceMatcher, SystemBlock, mountinfo};
use crate::backend::cmd::Output;
use crate::backend::iscsi::multipath::{self, MultipathMatcher};
use crate::backend::iscsi::{iscsiadm, sysfs};
use crate::backend::rbd::RbdHost;
use crate::backend::rbd::device::RbdMatcher;
use crate::backend::rbd::system::{self, SystemRbd};
use crate::backend::{BlockHost, HostError};
use crate::protocol::target::{RbdSpec, SessionKey};

fn output(code: i32, stdout: &str, stderr: &str) -> Output {
    Output {
        code,
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
    }
}

/// `iscsiadm -m discovery` output -> (portal, iqn) pairs.
pub fn iscsiadm_discovery(stdout: &str) -> Vec<(String, String)> {
    iscsiadm::parse_discovery(stdout)
}

/// A failed iscsiadm run, as the agent reports it.
pub fn iscsiadm_failure(code: i32, stdout: &str, stderr: &str) -> HostError {
    iscsiadm::classify(&output(code, stdout, stderr), "iscsiadm")
}

/// An open-iscsi node record with `values` set, as the agent writes it back.
pub fn iscsi_record_with(record: &str, values: &[(&str, &str)]) -> String {
    iscsiadm::set_record_values(record, values)
}

/// The WWID that `multipath -a` says it added.
pub fn multipath_added_wwid(stdout: &str) -> Option<&str> {
    multipath::added_wwid(stdout)
}

/// A failed `rbd device map`, as the agent reports it.
pub fn rbd_map_failure(code: i32, stdout: &str, stderr: &str, spec: &RbdSpec) -> HostError {
    system::classify_map(&output(code, stdout, stderr), spec)
}

/// The device id that a successful `rbd device map` printed.
pub fn rbd_mapped_device(stdout: &str) -> Result<u32, HostError> {
    system::mapped_device(stdout)
}

/// The mount points, in a mountinfo text, of the devices numbered `major:minor`.
pub fn mount_points(mountinfo: &str, numbers: &[String]) -> Vec<PathBuf> {
    mountinfo::mount_points(mountinfo, numbers)
}

/// What the agent's readers make of a host tree: sysfs under `root/sys`, udev's links under
/// `root/dev`, `root/proc/self/mountinfo` and `root/etc/iscsi/initiatorname.iscsi`.
#[derive(Debug, Default)]
pub struct HostView {
    pub sessions: Vec<IscsiSession>,
    pub mappings: Vec<RbdMapping>,
    /// What a wait finds for each LUN of each session, for the multipath map over each
    /// session's LUNs, and for each mapping, in that order.
    pub devices: Vec<Result<Device, HostError>>,
    pub macs: Vec<String>,
    /// The MAC addresses a lookup sends.
    pub lookup_macs: Vec<String>,
    pub system_uuid: Option<String>,
    pub initiator_iqn: Option<String>,
}

#[derive(Debug)]
pub struct IscsiSession {
    pub sid: u32,
    pub key: SessionKey,
    pub host_no: u32,
    /// LUNs and their block devices' kernel names.
    pub luns: Vec<(u16, String)>,
    pub state: Option<String>,
}

#[derive(Debug)]
pub struct RbdMapping {
    pub device_id: u32,
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
}

/// A device found as a wait finds it, with its holders and mount points.
#[derive(Debug)]
pub struct Device {
    pub kernel_name: String,
    pub device_path: String,
    pub size_bytes: u64,
    pub wwn: Option<String>,
    pub holders: Vec<String>,
    pub mounts: Vec<PathBuf>,
}

/// Reads the host tree at `root` as the agent's real host does (no udev: a wait looks once).
pub fn host_view(root: &Path) -> Result<HostView, HostError> {
    let block = SystemBlock::without_udev(root);
    let found = |what: &dyn DeviceMatcher| -> Result<Device, HostError> {
        let device = block.wait_for_device(what, Duration::ZERO)?;
        Ok(Device {
            holders: block.holders(&device.kernel_name)?,
            mounts: block.mounts_of(&device.kernel_name)?,
            kernel_name: device.kernel_name,
            device_path: device.device_path,
            size_bytes: device.size_bytes,
            wwn: device.wwn,
        })
    };
    let mut view = HostView::default();
    for session in sysfs::read_sessions(&root.join("sys"))? {
        for &(lun, _) in &session.luns {
            let key = session.key.clone();
            let matcher = sysfs::LunMatcher { session: key, lun };
            view.devices.push(found(&matcher));
        }
        let paths = session.luns.iter().map(|(_, name)| name.clone()).collect();
        view.devices.push(found(&MultipathMatcher { paths }));
        view.sessions.push(IscsiSession {
            sid: session.sid,
            key: session.key,
            host_no: session.host_no,
            luns: session.luns,
            state: session.state,
        });
    }
    for mapping in SystemRbd::new(root, &root.join("run/tether")).mappings()? {
        let matcher = RbdMatcher {
            device_id: mapping.device_id,
        };
        view.devices.push(found(&matcher));
        view.mappings.push(RbdMapping {
            device_id: mapping.device_id,
            pool: mapping.pool,
            namespace: mapping.namespace,
            image: mapping.image,
        });
    }
    let identity = identity::collect(root);
    view.lookup_macs = identity.lookup_macs().to_vec();
    view.macs = identity.macs;
    view.system_uuid = identity.system_uuid;
    view.initiator_iqn = identity.initiator_iqn;
    Ok(view)
}

/// The bytes a client sends on one connection -> what the conductor's own HTTP/1.1 code
/// (conductor/http1.rs) writes back, with `router` serving the requests it reads. The client
/// closes its side after the input; a connection still open after a second is cut.
pub async fn conductor_connection(router: axum::Router, input: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (_drain, draining) = tokio::sync::watch::channel(false);
    let peer = std::net::SocketAddr::from(([192, 0, 2, 1], 40000));
    let serving =
        crate::conductor::http1::serve(server, peer, router, Duration::from_millis(100), draining);
    let talking = async {
        let (mut from_server, mut to_server) = tokio::io::split(&mut client);
        let sending = async {
            // The server may close before it has read everything: that is an answer too.
            let _ = to_server.write_all(input).await;
            let _ = to_server.shutdown().await;
        };
        let mut answer = Vec::new();
        let receiving = from_server.read_to_end(&mut answer);
        let (_, _) = tokio::join!(sending, receiving);
        answer
    };
    let both = async { tokio::join!(serving, talking).1 };
    tokio::time::timeout(Duration::from_secs(1), both)
        .await
        .unwrap_or_default()
}
