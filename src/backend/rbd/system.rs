//! The real [`RbdHost`]: the kernel's rbd bus in sysfs, mapped with the `rbd` CLI when it is
//! installed, or by writing to `/sys/bus/rbd/add_single_major` where it is not (ramdisks).
//!
//! The cephx key never goes on a command line: the CLI reads it from a file of mode 0600 in a
//! directory of mode 0700, removed right after the map; the sysfs write carries it straight to
//! the kernel through a file only root can write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::device::read_mapping;
use super::{Mapping, RbdHost};
use nix::errno::Errno;

use crate::backend::cmd::{self, Output};
use crate::backend::{ErrorKind, HostError};
use crate::protocol::target::RbdSpec;

/// Key files in the runtime directory start with this; any found at start are leftovers.
const KEY_FILE_PREFIX: &str = "rbd-key-";

/// How long the kernel client waits for the monitors before giving up (its own default is 60 s).
const MOUNT_TIMEOUT_S: u64 = 20;

pub(crate) struct SystemRbd {
    root: PathBuf,
    rbd: Option<PathBuf>,
    /// Where key files live for the instant of a map (`/run/tether`, a tmpfs).
    runtime_dir: PathBuf,
}

impl SystemRbd {
    pub(crate) fn new(root: &Path, runtime_dir: &Path) -> Self {
        // A map cut short (the agent killed mid-map) can leave its key file: remove it now.
        for entry in std::fs::read_dir(runtime_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            // Its atomic write's temporary file too (`.rbd-key-….tmp-…`).
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.trim_start_matches('.').starts_with(KEY_FILE_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Self {
            root: root.to_path_buf(),
            rbd: cmd::resolve(root, "rbd").ok(),
            runtime_dir: runtime_dir.to_path_buf(),
        }
    }

    fn bus(&self) -> PathBuf {
        self.root.join("sys/bus/rbd")
    }

    fn monitors(spec: &RbdSpec) -> String {
        spec.monitors
            .iter()
            .map(|m| {
                if m.host.contains(':') {
                    format!("[{}]:{}", m.host, m.port)
                } else {
                    format!("{}:{}", m.host, m.port)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The arguments of `rbd device map`. No ceph.conf on the node: everything the map needs
    /// is on the command line, and the CLI's own wait for the monitors (300 s by default) is
    /// bounded like the kernel's. `--` ends the options, so the image spec is never read as one.
    fn map_args(spec: &RbdSpec, read_only: bool, key_path: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = [
            "device",
            "map",
            "--conf",
            "/dev/null",
            "--client_mount_timeout",
            &MOUNT_TIMEOUT_S.to_string(),
            "--cluster",
            &spec.cluster,
            "--id",
            &spec.user,
            "-m",
            &Self::monitors(spec),
            "-o",
            &format!("mount_timeout={MOUNT_TIMEOUT_S}"),
        ]
        .map(str::to_string)
        .into();
        if let Some(path) = key_path {
            args.extend(["--keyfile".to_string(), path.to_string()]);
        }
        if read_only {
            args.push("--read-only".into());
        }
        args.extend(["--".to_string(), spec.spec_name()]);
        args
    }

    fn map_with_cli(&self, rbd: &Path, spec: &RbdSpec, read_only: bool) -> Result<u32, HostError> {
        let key_file = match &spec.key {
            Some(key) => Some(KeyFile::write(&self.runtime_dir, key.expose())?),
            None => None,
        };
        let key_path = key_file
            .as_ref()
            .map(|k| k.path.to_string_lossy().into_owned());
        let args = Self::map_args(spec, read_only, key_path.as_deref());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cmd::run_with_timeout(rbd, &args, Duration::from_secs(MOUNT_TIMEOUT_S + 15))
            .map_err(|e| unreachable_on_timeout(e, spec))?;
        drop(key_file);
        if out.code != 0 {
            return Err(classify_map(&out, spec));
        }
        mapped_device(&out.stdout)
    }

    fn map_with_sysfs(&self, spec: &RbdSpec, read_only: bool) -> Result<u32, HostError> {
        let before: Vec<u32> = self.mappings()?.iter().map(|m| m.device_id).collect();
        let mut options = vec![
            format!("name={}", spec.user),
            format!("mount_timeout={MOUNT_TIMEOUT_S}"),
        ];
        if let Some(key) = &spec.key {
            options.push(format!("secret={}", key.expose()));
        }
        if let Some(ns) = &spec.namespace {
            options.push(format!("_pool_ns={ns}"));
        }
        if read_only {
            options.push("read_only".into());
        }
        let line = format!(
            "{} {} {} {} -",
            Self::monitors(spec),
            options.join(","),
            spec.pool,
            spec.image
        );
        let add = self.bus().join("add_single_major");
        // The write blocks until the kernel has mapped the image or given up.
        std::fs::write(&add, line).map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(0);
            let (kind, advice) = map_errno(errno);
            HostError::new(
                kind,
                format!("mapping {} failed ({e}); {advice}", spec.spec_name()),
            )
        })?;
        self.mappings()?
            .into_iter()
            .find(|m| {
                !before.contains(&m.device_id) && m.pool == spec.pool && m.image == spec.image
            })
            .map(|m| m.device_id)
            .ok_or_else(|| {
                HostError::new(
                    ErrorKind::MapFailed,
                    format!(
                        "the kernel mapped {} but no new device shows in sysfs",
                        spec.spec_name()
                    ),
                )
            })
    }
}

/// The device id in what a successful `rbd device map` printed: `/dev/rbdN`.
pub(crate) fn mapped_device(stdout: &str) -> Result<u32, HostError> {
    let device = stdout.trim();
    device
        .strip_prefix("/dev/rbd")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            HostError::new(
                ErrorKind::MapFailed,
                format!("rbd map printed {device:?}, not /dev/rbdN"),
            )
        })
}

/// A key file that exists only while it is needed.
struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    fn write(dir: &Path, key: &str) -> Result<Self, HostError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                HostError::new(
                    ErrorKind::KeyFile,
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
        let path = dir.join(format!(
            "{KEY_FILE_PREFIX}{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        crate::fsutil::write_private(&path, key.as_bytes()).map_err(|e| {
            HostError::new(
                ErrorKind::KeyFile,
                format!("cannot write a key file in {}: {e}", dir.display()),
            )
        })?;
        Ok(Self { path })
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn unreachable_on_timeout(e: HostError, spec: &RbdSpec) -> HostError {
    if e.kind == ErrorKind::Timeout {
        HostError::new(
            ErrorKind::ClusterUnreachable,
            format!(
                "no Ceph monitor of {} answered in time; check hosts, ports and the network",
                spec.spec_name()
            ),
        )
    } else {
        e
    }
}

/// errno from the kernel's rbd driver -> kind and advice.
fn map_errno(errno: i32) -> (ErrorKind, &'static str) {
    match Errno::from_raw(errno) {
        Errno::EPERM | Errno::EACCES => (
            ErrorKind::AuthFailed,
            "check auth_username and the cephx key stored for this target",
        ),
        Errno::ENOENT => (ErrorKind::ImageNotFound, "check the pool and image name"),
        Errno::ETIMEDOUT => (
            ErrorKind::ClusterUnreachable,
            "no Ceph monitor answered: check hosts, ports and the network",
        ),
        Errno::EBUSY => (ErrorKind::DeviceBusy, "something still has the device open"),
        _ => (
            ErrorKind::MapFailed,
            "see the kernel log (dmesg) for the rbd and libceph messages",
        ),
    }
}

/// Turns `rbd device map`'s failure into a kind. The CLI exits with the errno (13 for a refused
/// key, 110 for monitors that do not answer) and often prints it too: `(13) Permission denied`.
pub(crate) fn classify_map(out: &Output, spec: &RbdSpec) -> HostError {
    let reason = out.reason();
    let printed = reason
        .split('(')
        .skip(1)
        .filter_map(|s| s.split(')').next()?.parse::<i32>().ok())
        .last()
        .unwrap_or(0);
    // Exit 1 is the CLI's generic failure, not EPERM.
    let errno = if printed != 0 {
        printed
    } else if out.code > 1 {
        out.code
    } else {
        0
    };
    let (kind, advice) = map_errno(errno);
    HostError::new(
        kind,
        format!(
            "mapping {} failed (rbd exit {}: {reason}); {advice}",
            spec.spec_name(),
            out.code
        ),
    )
}

impl RbdHost for SystemRbd {
    fn mappings(&self) -> Result<Vec<Mapping>, HostError> {
        let devices = self.bus().join("devices");
        let mut mappings = Vec::new();
        for entry in std::fs::read_dir(&devices).into_iter().flatten().flatten() {
            let Ok(device_id) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            mappings.extend(read_mapping(&devices, device_id));
        }
        mappings.sort_by_key(|m| m.device_id);
        Ok(mappings)
    }

    fn map(&self, spec: &RbdSpec, read_only: bool) -> Result<u32, HostError> {
        match &self.rbd {
            Some(rbd) => self.map_with_cli(rbd, spec, read_only),
            None => self.map_with_sysfs(spec, read_only),
        }
    }

    fn unmap(&self, device_id: u32) -> Result<(), HostError> {
        let remove = self.bus().join("remove_single_major");
        match std::fs::write(&remove, device_id.to_string()) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => Err(HostError::new(
                ErrorKind::DeviceBusy,
                format!("/dev/rbd{device_id} is busy (EBUSY): something still has it open"),
            )),
            Err(e) => Err(HostError::new(
                ErrorKind::UnmapFailed,
                format!("cannot unmap /dev/rbd{device_id}: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::target::Monitor;

    fn spec() -> RbdSpec {
        RbdSpec {
            pool: "volumes".into(),
            namespace: None,
            image: "v1".into(),
            monitors: vec![
                Monitor {
                    host: "192.0.2.1".into(),
                    port: 6789,
                },
                Monitor {
                    host: "2001:db8::1".into(),
                    port: 3300,
                },
            ],
            cluster: "ceph".into(),
            user: "cinder".into(),
            key: None,
        }
    }

    #[test]
    fn key_files_left_by_a_crash_are_removed_at_start_temporary_ones_too() {
        let run = tempfile::tempdir().unwrap();
        let leftovers = ["rbd-key-41-7", ".rbd-key-41-8.tmp-41-0"];
        for name in leftovers.iter().chain(&["keep-me"]) {
            std::fs::write(run.path().join(name), "AQB...").unwrap();
        }
        SystemRbd::new(Path::new("/nonexistent-root"), run.path());
        for name in leftovers {
            assert!(!run.path().join(name).exists(), "{name} survived");
        }
        assert!(run.path().join("keep-me").exists());
    }

    #[test]
    fn monitors_are_listed_together() {
        assert_eq!(
            SystemRbd::monitors(&spec()),
            "192.0.2.1:6789,[2001:db8::1]:3300"
        );
    }

    #[test]
    fn the_image_spec_follows_the_end_of_options() {
        let mut spec = spec();
        spec.namespace = Some("ns".into());
        let args = SystemRbd::map_args(&spec, true, Some("/run/tether/rbd-key-1-2"));
        assert_eq!(
            args[args.len() - 2..],
            ["--", "volumes/ns/v1"],
            "the spec is the last argument, after `--`: {args:?}"
        );
        assert_eq!(args.iter().filter(|a| *a == "--").count(), 1);
        let at = |flag: &str| args.iter().position(|a| a == flag).unwrap();
        assert_eq!(args[at("--id") + 1], "cinder");
        assert_eq!(args[at("--keyfile") + 1], "/run/tether/rbd-key-1-2");
        assert!(at("--read-only") < at("--"));
        let args = SystemRbd::map_args(&spec, false, None);
        assert!(!args.iter().any(|a| a == "--keyfile" || a == "--read-only"));
        assert_eq!(args.last().map(String::as_str), Some("volumes/ns/v1"));
    }

    #[test]
    fn map_errors_get_kinds_from_the_errno() {
        let out = |stderr: &str| Output {
            code: 1,
            stdout: String::new(),
            stderr: stderr.into(),
        };
        let kind = |s| classify_map(&out(s), &spec()).kind.as_str();
        assert_eq!(
            kind("rbd: sysfs write failed\\nrbd: map failed: (13) Permission denied"),
            "auth_failed"
        );
        assert_eq!(
            kind("rbd: map failed: (110) Connection timed out"),
            "cluster_unreachable"
        );
        assert_eq!(
            kind("rbd: map failed: (2) No such file or directory"),
            "image_not_found"
        );
        assert_eq!(kind("rbd: something else"), "map_failed");
        let refused = Output {
            code: 13,
            stdout: String::new(),
            stderr: "rbd: couldn't connect to the cluster!\n".into(),
        };
        assert_eq!(classify_map(&refused, &spec()).kind, ErrorKind::AuthFailed);
    }

    #[test]
    fn mappings_are_read_from_the_rbd_bus() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("sys/bus/rbd/devices/3");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("pool"), "volumes\n").unwrap();
        std::fs::write(dev.join("name"), "v1\n").unwrap();
        std::fs::write(dev.join("pool_ns"), "\n").unwrap();
        let run = root.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("rbd-key-1-2"), "left behind").unwrap();
        let host = SystemRbd::new(root.path(), &run);
        assert!(
            !run.join("rbd-key-1-2").exists(),
            "stale key files are removed at start"
        );
        assert_eq!(
            host.mappings().unwrap(),
            vec![Mapping {
                device_id: 3,
                pool: "volumes".into(),
                namespace: None,
                image: "v1".into()
            }]
        );
    }

    #[test]
    fn key_files_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/tether");
        let path = {
            let key = KeyFile::write(&run, "AQBkey==").unwrap();
            assert_eq!(
                std::fs::metadata(&key.path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
                0o700
            );
            key.path.clone()
        };
        assert!(!path.exists());
    }
}
