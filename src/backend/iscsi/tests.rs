//! The multipath rules of [`IscsiBackend`], on the simulated kernel (which has no
//! device-mapper, so a map never appears) and a recording multipath-tools.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::multipath::MultipathHost;
use super::*;
use crate::backend::simulated::SimKernel;
use crate::protocol::VolumeTarget;

const IQN: &str = "iqn.2003-01.test.tether:multi";

#[derive(Default)]
struct Tools {
    running: bool,
    wwid_is_new: bool,
    calls: Mutex<Vec<String>>,
}

impl Tools {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl MultipathHost for Arc<Tools> {
    fn available(&self) -> bool {
        self.running
    }
    fn claim(&self, paths: &[String]) -> Result<bool, HostError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("claim {}", paths.join(" ")));
        Ok(self.wwid_is_new)
    }
    fn flush(&self, map: &str) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("flush {map}"));
        Ok(())
    }
    fn forget(&self, path: &str) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("forget {path}"));
        Ok(())
    }
    fn resize(&self, map: &str) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("resize {map}"));
        Ok(())
    }
}

fn two_paths() -> IscsiSpec {
    let target: VolumeTarget = serde_json::from_value(serde_json::json!({
        "uuid": "5b1f1a1e-0000-4000-8000-000000000001",
        "node_uuid": "5b1f1a1e-0000-4000-8000-000000000002",
        "volume_type": "iscsi",
        "volume_id": "vol-multi",
        "properties": {
            "target_portals": ["127.0.0.1:3260", "127.0.0.2:3260"],
            "target_iqns": [IQN, IQN],
            "target_luns": [0, 0],
        },
    }))
    .unwrap();
    match crate::protocol::target::parse(&target).unwrap().backend {
        crate::protocol::target::BackendSpec::Iscsi(spec) => spec,
        other => panic!("{other:?}"),
    }
}

fn backend(
    kernel: &Arc<SimKernel>,
    tools: &Arc<Tools>,
) -> IscsiBackend<Arc<SimKernel>, Arc<SimKernel>> {
    IscsiBackend::new(kernel.clone(), kernel.clone()).with_multipath(Some(Box::new(tools.clone())))
}

#[test]
fn without_multipathd_every_path_is_reported_and_the_first_is_the_device() {
    let kernel = Arc::new(SimKernel::new(Duration::ZERO));
    let tools = Arc::new(Tools::default());
    let attachment = backend(&kernel, &tools)
        .attach(
            &two_paths(),
            false,
            &Ownership::default(),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(attachment.paths.len(), 2);
    assert_eq!(attachment.device.device_path, attachment.paths[0]);
    assert_eq!(attachment.record.multipath, None);
    assert!(tools.calls().is_empty(), "{:?}", tools.calls());
    assert_eq!(kernel.session_count("127.0.0.1:3260", IQN), 1);
    assert_eq!(kernel.session_count("127.0.0.2:3260", IQN), 1);
}

/// Attaches the two-path volume with multipathd running but no map ever appearing.
fn attach_without_a_map(wwid_is_new: bool) -> (Arc<SimKernel>, Arc<Tools>, HostError) {
    let kernel = Arc::new(SimKernel::new(Duration::ZERO));
    let tools = Arc::new(Tools {
        running: true,
        wwid_is_new,
        ..Tools::default()
    });
    let error = backend(&kernel, &tools)
        .attach(
            &two_paths(),
            false,
            &Ownership::default(),
            Duration::from_millis(50),
        )
        .expect_err("no map appears");
    (kernel, tools, error)
}

#[test]
fn a_map_that_never_appears_fails_the_volume_and_undoes_everything() {
    let (kernel, tools, error) = attach_without_a_map(true);
    assert_eq!(error.kind, ErrorKind::MultipathFailed);
    assert!(error.message.contains("/etc/multipath.conf"), "{error}");
    // Asked for the map over both paths, then took back the WWID it registered.
    let calls = tools.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("claim sd"), "{calls:?}");
    assert!(calls[1].starts_with("forget sd"), "{calls:?}");
    for portal in ["127.0.0.1:3260", "127.0.0.2:3260"] {
        assert_eq!(kernel.session_count(portal, IQN), 0, "{portal}");
        assert!(!kernel.record_exists(portal, IQN), "{portal}");
    }
}

#[test]
fn a_wwid_known_before_is_left_registered() {
    let (_, tools, error) = attach_without_a_map(false);
    assert_eq!(error.kind, ErrorKind::MultipathFailed);
    let calls = tools.calls();
    assert!(!calls.iter().any(|c| c.starts_with("forget")), "{calls:?}");
}

#[test]
fn detach_flushes_the_map_and_forgets_only_a_wwid_the_agent_registered() {
    let kernel = Arc::new(SimKernel::new(Duration::ZERO));
    let tools = Arc::new(Tools::default());
    let backend = backend(&kernel, &tools);
    let mut attachment = backend
        .attach(
            &two_paths(),
            false,
            &Ownership::default(),
            Duration::from_secs(5),
        )
        .unwrap();
    // As the real host would have it after the map was made: the simulated kernel has no
    // device-mapper, so the map is not in sysfs and only the WWID is to be taken back.
    attachment.record.multipath = Some(MultipathMap {
        name: "3600140500000000000000000000000001".into(),
        wwid_registered: true,
    });
    let outcome = backend
        .detach(
            &attachment.device,
            &attachment.record,
            &Ownership::default(),
        )
        .unwrap();
    assert!(matches!(outcome, DetachOutcome::Detached { .. }));
    let calls = tools.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].starts_with("forget sd"), "{calls:?}");
    assert_eq!(kernel.session_count("127.0.0.1:3260", IQN), 0);
    assert_eq!(kernel.session_count("127.0.0.2:3260", IQN), 0);
}

fn with_discovery(portal: &str, iqn: &str) -> IscsiSpec {
    let target: VolumeTarget = serde_json::from_value(serde_json::json!({
        "uuid": "5b1f1a1e-0000-4000-8000-000000000003",
        "node_uuid": "5b1f1a1e-0000-4000-8000-000000000002",
        "volume_type": "iscsi",
        "volume_id": "vol-discovered",
        "properties": {
            "target_portal": portal, "target_iqn": iqn, "target_lun": 0,
            "discovery": "sendtargets",
        },
    }))
    .unwrap();
    match crate::protocol::target::parse(&target).unwrap().backend {
        crate::protocol::target::BackendSpec::Iscsi(spec) => spec,
        other => panic!("{other:?}"),
    }
}

#[test]
fn discovery_must_offer_the_target_before_any_record_or_login() {
    let kernel = Arc::new(SimKernel::new(Duration::ZERO));
    let backend = IscsiBackend::new(kernel.clone(), kernel.clone());
    let spec = with_discovery("127.0.0.1:3260", IQN);
    let timeout = Duration::from_secs(5);
    let refused = backend
        .attach(&spec, false, &Ownership::default(), timeout)
        .expect_err("nothing is offered yet");
    assert_eq!(refused.kind, ErrorKind::TargetNotFound);
    assert!(!kernel.record_exists("127.0.0.1:3260", IQN));
    assert_eq!(kernel.stats().logins, 0);

    kernel.offer_target("127.0.0.1:3260", IQN);
    let attached = backend
        .attach(&spec, false, &Ownership::default(), timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(attached.record.paths[0].session_created);
    assert_eq!(kernel.session_count("127.0.0.1:3260", IQN), 1);
}

/// The simulated kernel, with a LUN scan that takes a while and says when it starts.
struct SlowScan {
    kernel: Arc<SimKernel>,
    scanning: std::sync::mpsc::SyncSender<()>,
}

impl IscsiHost for SlowScan {
    fn sessions(&self) -> Result<Vec<Session>, HostError> {
        self.kernel.sessions()
    }
    fn discover(
        &self,
        portal: &Portal,
        chap: Option<&Chap>,
    ) -> Result<Vec<(String, String)>, HostError> {
        self.kernel.discover(portal, chap)
    }
    fn create_record(&self, path: &IscsiPath, chap: Option<&Chap>) -> Result<(), HostError> {
        self.kernel.create_record(path, chap)
    }
    fn login(&self, session: &SessionKey) -> Result<(), HostError> {
        self.kernel.login(session)
    }
    fn logout(&self, session: &SessionKey) -> Result<(), HostError> {
        self.kernel.logout(session)
    }
    fn delete_record(&self, session: &SessionKey) -> Result<(), HostError> {
        self.kernel.delete_record(session)
    }
    fn scan_lun(&self, session: &Session, lun: u16) -> Result<(), HostError> {
        let _ = self.scanning.try_send(());
        std::thread::sleep(Duration::from_millis(300));
        self.kernel.scan_lun(session, lun)
    }
    fn delete_device(&self, kernel_name: &str) -> Result<(), HostError> {
        self.kernel.delete_device(kernel_name)
    }
    fn rescan_device(&self, kernel_name: &str) -> Result<(), HostError> {
        self.kernel.rescan_device(kernel_name)
    }
}

fn one_lun(lun: u16) -> IscsiSpec {
    let target: VolumeTarget = serde_json::from_value(serde_json::json!({
        "uuid": "5b1f1a1e-0000-4000-8000-000000000004",
        "node_uuid": "5b1f1a1e-0000-4000-8000-000000000002",
        "volume_type": "iscsi",
        "volume_id": format!("vol-{lun}"),
        "properties": {"target_portal": "127.0.0.1:3260", "target_iqn": IQN, "target_lun": lun},
    }))
    .unwrap();
    match crate::protocol::target::parse(&target).unwrap().backend {
        crate::protocol::target::BackendSpec::Iscsi(spec) => spec,
        other => panic!("{other:?}"),
    }
}

/// A logout could pull a session from under the attach of another of its LUNs: detach took no
/// session lock, and the new LUN was not on the session yet when detach looked.
#[test]
fn a_detach_never_logs_out_a_session_while_another_lun_of_it_is_being_scanned() {
    let kernel = Arc::new(SimKernel::new(Duration::ZERO));
    let (scanning, scan_started) = std::sync::mpsc::sync_channel(4);
    let backend = Arc::new(IscsiBackend::new(
        SlowScan {
            kernel: kernel.clone(),
            scanning,
        },
        kernel.clone(),
    ));
    let timeout = Duration::from_secs(5);
    let first = backend
        .attach(&one_lun(0), false, &Ownership::default(), timeout)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(first.record.paths[0].session_created);
    scan_started.recv().unwrap();

    let attaching = backend.clone();
    let second = std::thread::spawn(move || {
        attaching.attach(&one_lun(1), false, &Ownership::default(), timeout)
    });
    scan_started.recv().unwrap();
    // The second LUN is being scanned: detach the first, as its only owner.
    let ownership = Ownership {
        owned_sessions: first
            .record
            .paths
            .iter()
            .map(|p| p.session.clone())
            .collect(),
        sessions_used_by_others: Default::default(),
    };
    backend
        .detach(&first.device, &first.record, &ownership)
        .unwrap_or_else(|e| panic!("{e}"));
    let second = second
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the attach beside the detach failed: {e}"));
    assert!(
        !second.record.paths[0].session_created,
        "it found the session"
    );
    assert_eq!(
        kernel.session_count("127.0.0.1:3260", IQN),
        1,
        "still logged in"
    );
    let sessions = kernel.sessions().unwrap();
    assert!(sessions[0].lun_device(1).is_some());
    assert!(
        sessions[0].lun_device(0).is_none(),
        "the first LUN's device is gone"
    );
}
