//! The real [`NvmeHost`]: controllers from /sys/class/nvme, connects written to
//! `/dev/nvme-fabrics` (what nvme-cli does itself), disconnects through `delete_controller`.
//!
//! The option string, DH-HMAC-CHAP secrets included, goes from the agent to the kernel through
//! a device only root can open: never a command line, never a file.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;

use super::{Controller, NvmeHost, device};
use crate::backend::{ErrorKind, HostError, cmd};
use crate::fsutil::read_trimmed;
use crate::protocol::target::{NvmeofSpec, Portal, SessionKey, parse_nqn, parse_portal};

/// The fabrics transports whose controllers a volume agent may meet; PCIe drives and loop
/// controllers are the node's own disks, not attachments.
const FABRICS: &[&str] = &["tcp", "rdma", "fc"];

/// How long the check that tells an unreachable portal from a refusal waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Who this node is to NVMe targets: `/etc/nvme/hostnqn` and `/etc/nvme/hostid`, the files
/// nvme-cli reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostIdentity {
    pub(crate) nqn: String,
    pub(crate) id: String,
}

impl HostIdentity {
    /// Reads the identity under `root`, or makes one and writes it (once: every later start,
    /// and nvme-cli, read the same). A host id missing beside an existing NQN is taken from
    /// the NQN's UUID when it has one.
    pub(crate) fn ensure(root: &Path) -> Result<Self, HostError> {
        let dir = root.join("etc/nvme");
        let nqn_file = dir.join("hostnqn");
        let id_file = dir.join("hostid");
        let unwritable = |path: &Path, e: std::io::Error| {
            HostError::new(
                ErrorKind::HostIdentity,
                format!(
                    "cannot write the NVMe host identity {}: {e}",
                    path.display()
                ),
            )
        };
        let nqn = match read_trimmed(&nqn_file).filter(|n| !n.is_empty()) {
            Some(nqn) => {
                parse_nqn("hostnqn", &nqn).map_err(|e| {
                    HostError::new(
                        ErrorKind::HostIdentity,
                        format!("{} holds no usable host NQN: {e}", nqn_file.display()),
                    )
                })?;
                nqn
            }
            None => {
                let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
                let nqn = format!("nqn.2014-08.org.nvmexpress:uuid:{uuid}");
                std::fs::create_dir_all(&dir).map_err(|e| unwritable(&dir, e))?;
                crate::fsutil::write_atomic(&nqn_file, format!("{nqn}\n").as_bytes(), 0o644)
                    .map_err(|e| unwritable(&nqn_file, e))?;
                tracing::info!(hostnqn = %nqn, "made this node's NVMe host NQN");
                nqn
            }
        };
        let id = match read_trimmed(&id_file).and_then(|i| uuid::Uuid::try_parse(&i).ok()) {
            Some(id) => id.hyphenated().to_string(),
            None => {
                let id = nqn
                    .rsplit_once(":uuid:")
                    .and_then(|(_, u)| uuid::Uuid::try_parse(u).ok())
                    .unwrap_or_else(uuid::Uuid::new_v4)
                    .hyphenated()
                    .to_string();
                crate::fsutil::write_atomic(&id_file, format!("{id}\n").as_bytes(), 0o644)
                    .map_err(|e| unwritable(&id_file, e))?;
                id
            }
        };
        Ok(Self { nqn, id })
    }
}

pub(crate) struct SystemNvme {
    root: PathBuf,
    identity: HostIdentity,
}

impl SystemNvme {
    pub(crate) fn new(root: &Path) -> Result<Self, HostError> {
        Ok(Self {
            root: root.to_path_buf(),
            identity: HostIdentity::ensure(root)?,
        })
    }

    fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }

    /// The kernel's fabrics device and TCP transport, loaded on first use as nvme-cli does.
    fn load_modules(&self) {
        let loaded = self.sys().join("module/nvme_tcp").exists()
            && self.root.join("dev/nvme-fabrics").exists();
        if loaded {
            return;
        }
        match cmd::resolve(&self.root, "modprobe") {
            Ok(modprobe) => match cmd::run(&modprobe, &["nvme-tcp"]) {
                Ok(out) if out.code != 0 => {
                    tracing::warn!(reason = %out.reason(), "modprobe nvme-tcp failed")
                }
                Err(e) => tracing::warn!(error = %e, "cannot run modprobe nvme-tcp"),
                Ok(_) => {}
            },
            Err(e) => tracing::warn!(error = %e, "cannot load nvme-tcp"),
        }
    }

    /// The kernel's options for a connect; secrets among them.
    fn options(&self, spec: &NvmeofSpec, portal: &Portal) -> String {
        let mut options = format!(
            "nqn={},transport=tcp,traddr={},trsvcid={},hostnqn={},hostid={}",
            spec.subsys_nqn, portal.host, portal.port, self.identity.nqn, self.identity.id
        );
        if let Some(dhchap) = &spec.dhchap {
            options.push_str(",dhchap_secret=");
            options.push_str(dhchap.host_secret.expose());
            if let Some(ctrl) = &dhchap.ctrl_secret {
                options.push_str(",dhchap_ctrl_secret=");
                options.push_str(ctrl.expose());
            }
        }
        options
    }

    fn read_controller(&self, dir: &Path) -> Option<Controller> {
        let name = dir.file_name()?.to_string_lossy().into_owned();
        let transport = read_trimmed(&dir.join("transport"))?;
        if !FABRICS.contains(&transport.as_str()) {
            return None;
        }
        let portal = portal_of(&read_trimmed(&dir.join("address"))?)?;
        let nqn = read_trimmed(&dir.join("subsysnqn"))?;
        Some(Controller {
            namespaces: device::namespaces(&self.sys(), &name),
            name,
            key: SessionKey::new(&portal, &nqn),
            state: read_trimmed(&dir.join("state")),
            host_nqn: read_trimmed(&dir.join("hostnqn")),
        })
    }
}

/// `traddr=192.0.2.1,trsvcid=4420[,src_addr=…]` as sysfs writes a controller's address.
fn portal_of(address: &str) -> Option<Portal> {
    let field = |name: &str| {
        address
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
    };
    let host = field("traddr")?;
    let port = field("trsvcid")?;
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    };
    parse_portal(&format!("{host}:{port}")).ok()
}

/// `instance=N,cntlid=M`, what the fabrics device answers a connect with.
fn controller_name(answer: &str) -> Option<String> {
    answer
        .trim()
        .split(',')
        .find_map(|kv| kv.strip_prefix("instance="))
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| format!("nvme{n}"))
}

impl NvmeHost for SystemNvme {
    fn controllers(&self) -> Result<Vec<Controller>, HostError> {
        let class = self.sys().join("class/nvme");
        let mut found: Vec<Controller> = std::fs::read_dir(&class)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| self.read_controller(&entry.path()))
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn connect(&self, spec: &NvmeofSpec, portal: &Portal) -> Result<String, HostError> {
        self.load_modules();
        let fabrics = self.root.join("dev/nvme-fabrics");
        let mut device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fabrics)
            .map_err(|e| {
                HostError::new(
                    ErrorKind::ToolMissing,
                    format!(
                        "cannot open {} ({e}): the kernel has no NVMe over TCP host \
                         (modprobe nvme-tcp)",
                        fabrics.display()
                    ),
                )
            })?;
        // The write blocks until the controller is up or the kernel gave up.
        if let Err(e) = device.write_all(self.options(spec, portal).as_bytes()) {
            return Err(self.classify(e, spec, portal));
        }
        let mut answer = String::new();
        let _ = device.read_to_string(&mut answer);
        let controller = controller_name(&answer).ok_or_else(|| {
            HostError::new(
                ErrorKind::ConnectFailed,
                format!("the kernel connected but answered {answer:?}, not instance=N"),
            )
        })?;
        if spec.dhchap.is_some() {
            self.hide_secrets(&controller);
        }
        Ok(controller)
    }

    fn disconnect(&self, controller: &str) -> Result<(), HostError> {
        let delete = self
            .sys()
            .join("class/nvme")
            .join(controller)
            .join("delete_controller");
        match std::fs::write(&delete, "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::new(
                ErrorKind::DisconnectFailed,
                format!("cannot disconnect {controller}: {e}"),
            )),
        }
    }

    fn host_nqn(&self) -> &str {
        &self.identity.nqn
    }

    fn rescan(&self, controller: &str) -> Result<(), HostError> {
        let rescan = self
            .sys()
            .join("class/nvme")
            .join(controller)
            .join("rescan_controller");
        std::fs::write(&rescan, "1").map_err(|e| {
            HostError::new(
                ErrorKind::ScanFailed,
                format!("cannot rescan the namespaces of {controller}: {e}"),
            )
        })
    }
}

impl SystemNvme {
    /// Linux 6.1 shows a controller's DH-HMAC-CHAP secrets in sysfs to every user (mode 0644):
    /// only root may read them.
    fn hide_secrets(&self, controller: &str) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.sys().join("class/nvme").join(controller);
        for name in ["dhchap_secret", "dhchap_ctrl_secret"] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(
                    controller,
                    file = name,
                    error = %e,
                    "cannot make the controller's secret in sysfs root's only"
                );
            }
        }
    }

    /// The kernel answers a refused connect and an unreachable portal alike (ECONNREFUSED,
    /// after DH-HMAC-CHAP fails too); a TCP connect of our own tells them apart.
    fn classify(&self, e: std::io::Error, spec: &NvmeofSpec, portal: &Portal) -> HostError {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
        let target = format!("{} at {portal}", spec.subsys_nqn);
        let reachable = || {
            portal.host.parse::<IpAddr>().is_ok_and(|ip| {
                TcpStream::connect_timeout(&SocketAddr::new(ip, portal.port), PROBE_TIMEOUT).is_ok()
            })
        };
        match errno {
            Errno::EKEYREJECTED | Errno::EACCES | Errno::EPERM => HostError::new(
                ErrorKind::AuthFailed,
                format!(
                    "{target} refused this host's DH-HMAC-CHAP authentication ({e}); check \
                     dhchap_secret and dhchap_ctrl_secret"
                ),
            ),
            Errno::ECONNREFUSED
            | Errno::ETIMEDOUT
            | Errno::EHOSTUNREACH
            | Errno::ENETUNREACH
            | Errno::ECONNRESET
                if !reachable() =>
            {
                HostError::new(
                    ErrorKind::PortalUnreachable,
                    format!(
                        "cannot connect to the portal {portal} ({e}); check the address, the \
                         network and the target's listener"
                    ),
                )
            }
            _ if spec.dhchap.is_some() => HostError::new(
                ErrorKind::AuthFailed,
                format!(
                    "{target} refused the connection ({e}) although its portal answers: check \
                     dhchap_secret and dhchap_ctrl_secret, and that the target allows host {}",
                    self.identity.nqn
                ),
            ),
            _ => HostError::new(
                ErrorKind::LoginRefused,
                format!(
                    "{target} refused the connection ({e}) although its portal answers: check \
                     the subsystem NQN, that the target allows host {} and whether it requires \
                     DH-HMAC-CHAP; the kernel log (dmesg) says more",
                    self.identity.nqn
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::secret::Secret;
    use crate::protocol::target::{DhChap, NamespaceId};

    #[test]
    fn a_host_identity_is_made_once_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        let made = HostIdentity::ensure(root.path()).unwrap();
        assert!(made.nqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert!(
            made.nqn.ends_with(&made.id),
            "the host id is the NQN's UUID"
        );
        assert_eq!(HostIdentity::ensure(root.path()).unwrap(), made);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join("etc/nvme/hostnqn"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "an identity, not a secret");
    }

    #[test]
    fn an_existing_host_nqn_is_kept_and_a_bad_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/nvme");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hostnqn"),
            "nqn.2014-08.org.nvmexpress:uuid:\
                       0f9c1b7e-2a4d-4c3b-9e8f-1a2b3c4d5e6f\n",
        )
        .unwrap();
        let identity = HostIdentity::ensure(root.path()).unwrap();
        assert_eq!(identity.id, "0f9c1b7e-2a4d-4c3b-9e8f-1a2b3c4d5e6f");
        std::fs::write(dir.join("hostnqn"), "nqn.x,dhchap_secret=y\n").unwrap();
        let e = HostIdentity::ensure(root.path()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::HostIdentity);
    }

    #[test]
    fn controller_addresses_and_answers_are_read() {
        assert_eq!(
            portal_of("traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1").map(|p| p.to_string()),
            Some("127.0.0.1:4420".into())
        );
        assert_eq!(
            portal_of("traddr=fd00::1,trsvcid=4420").map(|p| p.to_string()),
            Some("[fd00::1]:4420".into())
        );
        assert_eq!(portal_of("trsvcid=4420"), None);
        assert_eq!(
            controller_name("instance=3,cntlid=1\n").as_deref(),
            Some("nvme3")
        );
        assert_eq!(controller_name("error"), None);
    }

    #[test]
    fn the_option_string_carries_the_host_identity_and_the_secrets() {
        let root = tempfile::tempdir().unwrap();
        let host = SystemNvme::new(root.path()).unwrap();
        let secret = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
        let spec = NvmeofSpec {
            subsys_nqn: "nqn.2024-01.test:sub".into(),
            portals: vec![],
            namespace: NamespaceId::default(),
            dhchap: Some(DhChap {
                host_secret: Secret::new(secret),
                ctrl_secret: None,
            }),
        };
        let portal = parse_portal("192.0.2.1:4420").unwrap();
        let options = host.options(&spec, &portal);
        assert_eq!(
            options,
            format!(
                "nqn=nqn.2024-01.test:sub,transport=tcp,traddr=192.0.2.1,trsvcid=4420,\
                 hostnqn={},hostid={},dhchap_secret={secret}",
                host.identity.nqn, host.identity.id
            )
        );
    }

    #[test]
    fn controllers_are_read_from_sysfs_and_local_drives_left_out() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let ctrl = |name: &str, transport: &str| {
            let dir = sys.join("class/nvme").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("transport"), format!("{transport}\n")).unwrap();
            std::fs::write(dir.join("address"), "traddr=127.0.0.1,trsvcid=4420\n").unwrap();
            std::fs::write(dir.join("subsysnqn"), "nqn.2024-01.test:sub\n").unwrap();
            std::fs::write(dir.join("state"), "live\n").unwrap();
            dir
        };
        ctrl("nvme0", "pcie");
        let dir = ctrl("nvme1", "tcp");
        std::fs::create_dir_all(dir.join("nvme1c1n1")).unwrap();
        let block = sys.join("block/nvme1n1");
        std::fs::create_dir_all(&block).unwrap();
        std::fs::write(block.join("nsid"), "1\n").unwrap();
        std::fs::write(block.join("uuid"), "0F9C1B7E-2A4D-4C3B-9E8F-1A2B3C4D5E6F\n").unwrap();
        std::fs::write(
            block.join("nguid"),
            "00000000-0000-0000-0000-000000000000\n",
        )
        .unwrap();
        let host = SystemNvme::new(root.path()).unwrap();
        let controllers = host.controllers().unwrap();
        assert_eq!(controllers.len(), 1, "{controllers:?}");
        let c = &controllers[0];
        assert_eq!(
            (c.name.as_str(), c.key.portal()),
            ("nvme1", "127.0.0.1:4420")
        );
        assert_eq!(c.namespaces.len(), 1);
        assert_eq!(c.namespaces[0].kernel_name, "nvme1n1");
        assert_eq!(
            c.namespaces[0].uuid.as_deref(),
            Some("0f9c1b7e-2a4d-4c3b-9e8f-1a2b3c4d5e6f")
        );
        assert_eq!(c.namespaces[0].nguid, None, "an all-zero NGUID is none");
    }
}
