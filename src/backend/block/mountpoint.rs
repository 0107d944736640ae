//! Making a mount point without following links.
//!
//! The path is walked from the host root one name at a time, each opened relative to the
//! directory before it with `openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)` and `O_NOFOLLOW`
//! (plain `openat` with `O_NOFOLLOW` on kernels before 5.6, which is as safe for a single
//! name), so a link anywhere on the way is refused rather than followed. Every directory on
//! the way must be owned by root (or the user the agent runs as) and not writable by group or
//! others: then nobody else can swap one for a link between this walk and mount(8), which
//! finds the path again by name. A missing directory is made (mode 0755) only inside one that
//! passed. The last directory must be empty: mounting over files hides them.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, fstatat, mkdirat};

use super::mount::refused;
use crate::backend::{ErrorKind, HostError};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Walks `path` (absolute on the host) from `root`, making what is missing; see the module.
pub(crate) fn prepare(root: &Path, path: &Path) -> Result<(), HostError> {
    let mut shown = PathBuf::from("/");
    let mut dir = open(root, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
        .map_err(|e| failed(&shown, "open", e))?;
    check_owner(&dir, &shown)?;
    for component in path.components() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            _ => return Err(refused(format!("{} is not a normal path", path.display()))),
        };
        shown.push(name);
        let (next, made) = match open_dir(&dir, name) {
            Err(Errno::ENOENT) => {
                let made = match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => true,
                    // Made by another attach at the same time: it is checked as any other.
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(failed(&shown, "create", e)),
                };
                (open_dir(&dir, name), made)
            }
            other => (other, false),
        };
        let next = next.map_err(|e| walk_error(&shown, e))?;
        check_owner(&next, &shown)?;
        if made {
            // Whatever the umask: other users may go through to what is mounted below.
            fchmod(&next, Mode::from_bits_truncate(0o755))
                .map_err(|e| failed(&shown, "set the mode of", e))?;
        }
        dir = next;
    }
    check_empty(dir, &shown)
}

/// The directory `name` in `dir`; `ELOOP` when it is a link.
fn open_dir(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(DIR_FLAGS)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    let opened = match openat2(dir, name, how) {
        // No openat2 (before Linux 5.6, or a seccomp filter that does not know it).
        Err(Errno::ENOSYS | Errno::EPERM) => openat(dir, name, DIR_FLAGS, Mode::empty()),
        other => other,
    };
    link_is_eloop(dir, name, opened)
}

fn link_is_eloop(
    dir: &OwnedFd,
    name: &OsStr,
    opened: Result<OwnedFd, Errno>,
) -> Result<OwnedFd, Errno> {
    match opened {
        // O_DIRECTORY with O_NOFOLLOW answers ENOTDIR for a link: say which it is.
        Err(Errno::ENOTDIR) => match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat)
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK =>
            {
                Err(Errno::ELOOP)
            }
            _ => Err(Errno::ENOTDIR),
        },
        other => other,
    }
}

fn check_owner(dir: &OwnedFd, shown: &Path) -> Result<(), HostError> {
    let stat = fstat(dir).map_err(|e| failed(shown, "read", e))?;
    let agent = nix::unistd::geteuid().as_raw();
    if stat.st_uid != 0 && stat.st_uid != agent {
        return Err(refused(format!(
            "{} is owned by uid {}, who could replace what is below it with a link before \
             the mount; make it root's (chown root) or choose another path",
            shown.display(),
            stat.st_uid
        )));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(refused(format!(
            "{} is writable by group or others (mode {:o}), who could replace what is below \
             it with a link before the mount; chmod go-w it or choose another path",
            shown.display(),
            stat.st_mode & 0o7777
        )));
    }
    Ok(())
}

fn check_empty(dir: OwnedFd, shown: &Path) -> Result<(), HostError> {
    let mut entries = Dir::from_fd(dir).map_err(|e| failed(shown, "read", e))?;
    for entry in entries.iter() {
        let entry = entry.map_err(|e| failed(shown, "read", e))?;
        if ![&b"."[..], b".."].contains(&entry.file_name().to_bytes()) {
            return Err(refused(format!(
                "{} is not empty, and mounting over it would hide its files; empty it or \
                 choose another path",
                shown.display()
            )));
        }
    }
    Ok(())
}

fn walk_error(shown: &Path, e: Errno) -> HostError {
    match e {
        Errno::ELOOP => refused(format!(
            "{} is a symbolic link, and mount points are resolved without following links; \
             name the real directory in extra.mount.path",
            shown.display()
        )),
        Errno::ENOTDIR => refused(format!("{} is not a directory", shown.display())),
        // Only a link can take a single name out of its directory.
        Errno::EXDEV => refused(format!("{} leads out of the host root", shown.display())),
        e => failed(shown, "open", e),
    }
}

fn failed(shown: &Path, what: &str, e: Errno) -> HostError {
    HostError::new(
        ErrorKind::MountFailed,
        format!("cannot {what} {}: {}", shown.display(), e.desc()),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    /// A host root with /etc/ssh holding a key, and an empty /srv.
    fn host() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssh")).unwrap();
        std::fs::write(root.path().join("etc/ssh/ssh_host_ed25519_key"), "key").unwrap();
        std::fs::create_dir(root.path().join("srv")).unwrap();
        root
    }

    fn refusal(root: &Path, path: &str) -> String {
        let error = prepare(root, Path::new(path)).unwrap_err();
        assert_eq!(error.kind, ErrorKind::MountRefused, "{error}");
        error.message
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn missing_directories_are_made_mode_0755_and_an_empty_one_is_kept() {
        let root = host();
        prepare(root.path(), Path::new("/srv/a/b")).unwrap();
        assert_eq!(mode(&root.path().join("srv/a")), 0o755);
        assert_eq!(mode(&root.path().join("srv/a/b")), 0o755);
        // Again, as after an unmount: the empty directory is fine.
        prepare(root.path(), Path::new("/srv/a/b")).unwrap();
        // Missing prefixes too (a ramdisk may have no /mnt).
        prepare(root.path(), Path::new("/mnt/vol1")).unwrap();
        assert!(root.path().join("mnt/vol1").is_dir());
    }

    #[test]
    fn a_symlink_on_the_way_is_refused_not_followed() {
        let root = host();
        symlink("../etc", root.path().join("srv/link")).unwrap();
        symlink(root.path().join("etc"), root.path().join("srv/absolute")).unwrap();
        for path in [
            "/srv/link/ssh",
            "/srv/link/new",
            "/srv/absolute/new",
            "/srv/link",
        ] {
            let message = refusal(root.path(), path);
            assert!(message.contains("is a symbolic link"), "{message}");
            assert!(message.starts_with("/srv/"), "{message}");
        }
        assert!(!root.path().join("etc/new").exists());
        // Kernels before openat2: openat with O_NOFOLLOW refuses the same links.
        let srv = open(&root.path().join("srv"), DIR_FLAGS, Mode::empty()).unwrap();
        for name in ["link", "absolute"] {
            let name = OsStr::new(name);
            let old_kernel = openat(&srv, name, DIR_FLAGS, Mode::empty());
            assert_eq!(
                link_is_eloop(&srv, name, old_kernel).unwrap_err(),
                Errno::ELOOP
            );
        }
        // The prefix itself too (on some systems /srv is a link to /var/srv: name that).
        std::fs::remove_dir_all(root.path().join("srv")).unwrap();
        symlink("etc", root.path().join("srv")).unwrap();
        assert!(refusal(root.path(), "/srv/x").contains("/srv is a symbolic link"));
        assert!(!root.path().join("etc/x").exists());
    }

    #[test]
    fn a_non_empty_directory_or_a_file_is_refused() {
        let root = host();
        std::fs::create_dir(root.path().join("srv/data")).unwrap();
        std::fs::write(root.path().join("srv/data/file"), "data").unwrap();
        let message = refusal(root.path(), "/srv/data");
        assert!(message.contains("/srv/data is not empty"), "{message}");
        std::fs::write(root.path().join("srv/file"), "").unwrap();
        let message = refusal(root.path(), "/srv/file");
        assert!(
            message.contains("/srv/file is not a directory"),
            "{message}"
        );
        let message = refusal(root.path(), "/srv/file/x");
        assert!(
            message.contains("/srv/file is not a directory"),
            "{message}"
        );
    }

    #[test]
    fn a_directory_another_user_could_change_is_refused() {
        let root = host();
        let srv = root.path().join("srv");
        std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o777)).unwrap();
        let message = refusal(root.path(), "/srv/x");
        assert!(
            message.contains("/srv is writable by group or others"),
            "{message}"
        );
        assert!(!srv.join("x").exists());
        std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Only root may give a directory away; elsewhere this part cannot be set up.
        if std::os::unix::fs::chown(&srv, Some(65534), None).is_ok() {
            let message = refusal(root.path(), "/srv/x");
            assert!(message.contains("/srv is owned by uid 65534"), "{message}");
        }
    }
}
