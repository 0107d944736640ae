//! `extra.mount`: where and how a volume may be mounted, whatever node it goes to.
//!
//! The rules here are the node-independent half, applied by the conductor at creation and by
//! the agent before anything runs: a normal absolute path outside the system's own trees, and
//! options from an allow-list. The node's half (its mount prefixes, `nosuid,nodev`, a path
//! resolved without following links) is `backend::block::mount` and `mountpoint`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{MountSpec, TargetError, printable};

/// Where a node lets volumes be mounted when its configuration does not say
/// (`agent.mount_prefixes`).
pub const DEFAULT_MOUNT_PREFIXES: &[&str] = &["/srv", "/mnt"];

/// Trees a volume is never mounted in, over or above, whatever a node allows: what the system
/// boots and runs from, root's home, the agent's default state directory, cron's spool.
pub const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/tether",
    "/var/spool",
];

/// Directories a volume may go below but never over: mounting there hides what they hold.
const SHARED_DIRS: &[&str] = &["/home", "/media", "/mnt", "/opt", "/srv", "/tmp"];

/// Mount options a target may ask for: the kernel's filesystem-neutral flags, and a few ext4
/// and xfs options that change neither who may use the volume nor what it reaches. `suid` and
/// `dev` pass here; a node refuses them unless `agent.mount_allow_suid_dev` is set.
pub const MOUNT_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "sync",
    "async",
    "dirsync",
    "discard",
    "nodiscard",
    "errors=remount-ro",
    "errors=continue",
    "data=ordered",
    "data=writeback",
    "data=journal",
    "inode64",
    "nouuid",
];

/// The allowed options a node refuses unless `agent.mount_allow_suid_dev` is set.
pub const SUID_DEV_OPTIONS: &[&str] = &["suid", "dev"];

const MAX_PATH: usize = 1024;

/// Whether a mount at `path` would sit in `dir` or cover it (component-wise: `/srvx` is not
/// in `/srv`).
pub fn overlaps(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) || dir.starts_with(path)
}

/// The system tree (of [`SYSTEM_TREES`]) a mount at `path` would sit in or cover.
pub fn system_tree(path: &Path) -> Option<&'static str> {
    SYSTEM_TREES
        .iter()
        .copied()
        .find(|tree| overlaps(path, Path::new(tree)))
}

/// `path` if it is absolute and in normal form: no empty (`//`), `.` or `..` component, only
/// letters, digits and `. _ -` in names, at most 1024 characters. One trailing `/` is dropped.
pub fn normal_path(path: &str) -> Result<PathBuf, String> {
    let shown = printable(path);
    if !path.starts_with('/') {
        return Err(format!("path {shown:?} is not absolute"));
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "path {shown:?} is longer than {MAX_PATH} characters"
        ));
    }
    let trimmed = match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    };
    if trimmed == "/" {
        return Ok(PathBuf::from("/"));
    }
    for name in trimmed[1..].split('/') {
        let problem = match name {
            "" => "an empty component (//)",
            "." | ".." => "a . or .. component",
            _ if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
            {
                "a character other than letters, digits and . _ - in a name"
            }
            _ => continue,
        };
        return Err(format!(
            "path {shown:?} has {problem}; write it in normal form, like /srv/data"
        ));
    }
    Ok(PathBuf::from(trimmed))
}

/// Why `option` (one item of `extra.mount.options`) is refused, if it is.
fn option_refusal(option: &str) -> Option<String> {
    if MOUNT_OPTIONS.contains(&option) {
        return None;
    }
    let lower = option.to_ascii_lowercase();
    let name = lower.split('=').next().unwrap_or_default();
    let reason = match name {
        "" => "an empty option (two commas, or one at an end)",
        "bind" | "rbind" | "move" | "remount" => {
            "it changes other mounts instead of mounting the volume"
        }
        "shared" | "rshared" | "private" | "rprivate" | "slave" | "rslave" | "unbindable"
        | "runbindable" => "it changes mount propagation",
        _ if name.starts_with("make-") => "it changes mount propagation",
        _ if name.starts_with("x-") => {
            "X-* options are for mount(8) and systemd (X-mount.mkdir would create the \
             directory, following links)"
        }
        "loop" | "offset" | "sizelimit" => "it mounts a file or a part of the device",
        "defaults" => "it means rw,suid,dev,exec,async: name the options you want instead",
        "user" | "users" | "owner" | "group" | "nouser" => {
            "it lets other users mount or unmount the volume"
        }
        _ => "it is not an allowed option",
    };
    Some(format!(
        "option {:?} is refused: {reason} (allowed: {})",
        printable(option),
        MOUNT_OPTIONS.join(", ")
    ))
}

fn mount_path(path: &str) -> Result<PathBuf, String> {
    let path = normal_path(path)?;
    if let Some(tree) = system_tree(&path) {
        return Err(format!(
            "path {:?} is in or over the system directory {tree}, where volumes are never \
             mounted; use a path below {}",
            path.display(),
            DEFAULT_MOUNT_PREFIXES.join(" or ")
        ));
    }
    if SHARED_DIRS.iter().any(|d| path == Path::new(d)) {
        return Err(format!(
            "path {:?} would hide everything in it; mount below it, like {}/data",
            path.display(),
            path.display()
        ));
    }
    Ok(path)
}

/// File systems the agent grows online (resize2fs, xfs_growfs) when the volume grows.
pub const GROWABLE: &[&str] = &["ext2", "ext3", "ext4", "xfs"];

pub(super) fn parse_mount(value: &Value) -> Result<MountSpec, TargetError> {
    let obj = value
        .as_object()
        .ok_or_else(|| TargetError::InvalidMount("it must be an object".into()))?;
    for key in obj.keys() {
        if !["path", "fstype", "options", "mkfs", "grow"].contains(&key.as_str()) {
            return Err(TargetError::InvalidMount(format!(
                "unknown key {:?} (known: path, fstype, options, mkfs, grow)",
                printable(key)
            )));
        }
    }
    let path = obj
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| TargetError::InvalidMount("path is missing".into()))?;
    let path = mount_path(path).map_err(TargetError::InvalidMount)?;
    let fstype = obj
        .get("fstype")
        .and_then(Value::as_str)
        .ok_or_else(|| TargetError::InvalidMount("fstype is missing".into()))?;
    if fstype.is_empty()
        || !fstype
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(TargetError::InvalidMount(format!(
            "fstype {:?} is not a filesystem name",
            printable(fstype)
        )));
    }
    let options = match obj.get("options") {
        None | Some(Value::Null) => None,
        Some(Value::String(o)) if o.is_empty() => None,
        Some(Value::String(o)) => {
            if let Some(refusal) = o.split(',').find_map(option_refusal) {
                return Err(TargetError::InvalidMount(refusal));
            }
            Some(o.clone())
        }
        Some(_) => {
            return Err(TargetError::InvalidMount(
                "options must be a string of comma-separated options".into(),
            ));
        }
    };
    let flag = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(TargetError::InvalidMount(format!(
            "{key} must be true or false"
        ))),
    };
    let mkfs = flag("mkfs")?;
    let grow = flag("grow")?;
    if grow && !GROWABLE.contains(&fstype) {
        return Err(TargetError::InvalidMount(format!(
            "grow works for {} only, not {:?}",
            GROWABLE.join(", "),
            printable(fstype)
        )));
    }
    Ok(MountSpec {
        path,
        fstype: fstype.to_string(),
        options,
        mkfs,
        grow,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(path: &str, options: Option<&str>) -> String {
        let value = json!({"path": path, "fstype": "ext4", "options": options});
        match parse_mount(&value) {
            Ok(spec) => panic!("{value} was accepted as {spec:?}"),
            Err(e) => {
                assert_eq!(e.kind(), "invalid_mount", "{value}");
                e.to_string()
            }
        }
    }

    fn accepted(path: &str, options: Option<&str>) -> MountSpec {
        let value = json!({"path": path, "fstype": "ext4", "options": options});
        parse_mount(&value).unwrap_or_else(|e| panic!("{value} was refused: {e}"))
    }

    #[test]
    fn system_directories_are_refused_in_over_and_above() {
        for (path, tree) in [
            ("/etc/ssh", "/etc"),
            ("/usr/bin", "/usr"),
            ("/lib", "/lib"),
            ("/lib64/x", "/lib64"),
            ("/boot/efi", "/boot"),
            ("/root/.ssh", "/root"),
            ("/var/lib/tether", "/var/lib/tether"),
            ("/var/lib/tether/data", "/var/lib/tether"),
            ("/var/spool/cron/crontabs", "/var/spool"),
            // Above: a mount there would cover the tree.
            ("/var", "/var/lib/tether"),
            ("/", "/bin"),
        ] {
            let message = refusal(path, None);
            assert!(
                message.contains(&format!("the system directory {tree}")),
                "{path}: {message}"
            );
        }
        for path in ["/srv", "/mnt", "/home", "/tmp"] {
            assert!(
                refusal(path, None).contains("would hide everything"),
                "{path}"
            );
        }
        // Component-wise, not string prefixes.
        for path in [
            "/srv/data",
            "/mnt/vol1",
            "/var/lib/tether-data/x",
            "/etcx",
            "/srvx/a",
        ] {
            assert_eq!(accepted(path, None).path, PathBuf::from(path));
        }
    }

    #[test]
    fn paths_must_be_absolute_and_normal() {
        for path in [
            "srv/data",
            "",
            "//srv/data",
            "/srv//data",
            "/srv/./data",
            "/srv/data/..",
            "/srv/../etc",
            "/srv/data//",
            "/srv/da ta",
            "/srv/data\n",
            "/srv/\u{7}bell",
            "/srv/dätä",
            "/srv/a,b",
        ] {
            refusal(path, None);
        }
        refusal(&format!("/srv/{}", "a".repeat(1100)), None);
        // One trailing slash, as shells complete directories, is dropped.
        assert_eq!(
            accepted("/srv/data/", None).path,
            PathBuf::from("/srv/data")
        );
    }

    #[test]
    fn options_come_from_an_allow_list() {
        for (options, why) in [
            ("bind", "changes other mounts"),
            ("rbind", "changes other mounts"),
            ("move", "changes other mounts"),
            ("noatime,remount", "changes other mounts"),
            ("X-mount.mkdir", "X-* options"),
            ("X-mount.mkdir=0755", "X-* options"),
            ("x-systemd.automount", "X-* options"),
            ("make-rshared", "propagation"),
            ("rshared", "propagation"),
            ("loop", "a file or a part"),
            ("offset=4096", "a file or a part"),
            ("defaults", "rw,suid,dev"),
            ("user", "other users"),
            ("uid=0", "not an allowed option"),
            (
                "context=system_u:object_r:etc_t:s0",
                "not an allowed option",
            ),
            ("errors=panic", "not an allowed option"),
            ("noatime,,ro", "an empty option"),
            ("noatime,", "an empty option"),
            ("rw bad", "not an allowed option"),
            ("noatime\n,bind", "not an allowed option"),
        ] {
            let message = refusal("/srv/x", Some(options));
            assert!(message.contains(why), "{options}: {message}");
        }
        for options in [
            "noatime,discard",
            "ro,nosuid,nodev,noexec",
            "errors=remount-ro,data=ordered,lazytime",
            "inode64,nouuid",
            // Allowed here; a node refuses them unless its configuration allows them.
            "suid,dev",
        ] {
            assert_eq!(
                accepted("/srv/x", Some(options)).options.as_deref(),
                Some(options)
            );
        }
        assert_eq!(accepted("/srv/x", Some("")).options, None);
    }
}
