//! The real [`IscsiHost`]: open-iscsi's `iscsiadm` for records and logins, sysfs for the rest.
//!
//! The record is created with `iscsiadm -o new`; its settings, CHAP secrets included, are then
//! written into the record file itself (mode 0600, root only), which iscsid reads at login. So
//! no secret goes on a command line (other users can read those in /proc), and one process
//! start replaces one per setting.

use std::path::{Path, PathBuf};

use super::{IscsiHost, Session, sysfs};
use crate::backend::cmd::{self, Output};
use crate::backend::{ErrorKind, HostError};
use crate::protocol::target::{Chap, IscsiPath, Portal, SessionKey};

// open-iscsi's exit codes (include/iscsi_err.h).
const ERR_TRANS: i32 = 4;
const ERR_LOGIN: i32 = 5;
const ERR_TRANS_TIMEOUT: i32 = 8;
const ERR_PDU_TIMEOUT: i32 = 11;
const ERR_SESS_EXISTS: i32 = 15;
const ERR_ISCSID_COMM: i32 = 18;
const ERR_FATAL_LOGIN: i32 = 19;
const ERR_ISCSID_NOTCONN: i32 = 20;
const ERR_NO_OBJS_FOUND: i32 = 21;
const ERR_LOGIN_AUTH_FAILED: i32 = 24;

pub(crate) struct SystemIscsi {
    root: PathBuf,
    iscsiadm: PathBuf,
    /// Where open-iscsi keeps node records (`/etc/iscsi/nodes` on Debian).
    nodes_dir: PathBuf,
    /// iscsiadm keeps one discovery record per portal: discoveries with CHAP take turns.
    discovery_lock: std::sync::Mutex<()>,
}

impl SystemIscsi {
    pub(crate) fn new(root: &Path) -> Result<Self, HostError> {
        let host = Self {
            root: root.to_path_buf(),
            iscsiadm: cmd::resolve(root, "iscsiadm")?,
            nodes_dir: root.join("etc/iscsi/nodes"),
            discovery_lock: std::sync::Mutex::new(()),
        };
        host.discovery_journal().recover();
        Ok(host)
    }

    fn discovery_journal(&self) -> DiscoveryJournal {
        DiscoveryJournal {
            dir: self.iscsi_dir().join("tether-discovery"),
            send_targets: self.iscsi_dir().join("send_targets"),
        }
    }

    /// `/etc/iscsi`: the parent of the record directories, on the same file system.
    fn iscsi_dir(&self) -> PathBuf {
        self.root.join("etc/iscsi")
    }

    fn node_args<'a>(portal: &'a str, iqn: &'a str) -> Vec<&'a str> {
        vec!["-m", "node", "-T", iqn, "-p", portal]
    }

    fn iscsiadm(&self, args: &[&str]) -> Result<Output, HostError> {
        cmd::run(&self.iscsiadm, args)
    }

    /// The record files of (portal, iqn): `nodes/<iqn>/<addr>,<port>[,<tpgt>]`, a file (as
    /// Debian's open-iscsi 2.1 writes it) or a directory of one file per iface.
    fn record_files(&self, portal: &str, iqn: &str) -> Vec<PathBuf> {
        let exact = record_portal(portal);
        let prefix = format!("{exact},");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.nodes_dir.join(iqn))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != exact && !name.starts_with(&prefix) {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                files.extend(
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            } else {
                files.push(path);
            }
        }
        files
    }

    /// Sets keys in the record files (mode 0600), replacing any earlier value of those keys.
    fn write_record(
        &self,
        portal: &str,
        iqn: &str,
        secrets: &[(&str, &str)],
    ) -> Result<(), HostError> {
        let files = self.record_files(portal, iqn);
        if files.is_empty() {
            return Err(HostError::new(
                ErrorKind::RecordFailed,
                format!(
                    "iscsiadm created no record file for {iqn} at {portal} under {}",
                    self.nodes_dir.display()
                ),
            ));
        }
        for file in files {
            update_record_file(&file, secrets, &self.iscsi_dir())?;
        }
        Ok(())
    }

    /// SendTargets discovery with CHAP. The credentials go into a discovery record (mode 0600,
    /// like node records) that exists only for the length of the call: iscsiadm can take them
    /// from nowhere else but its command line. An operator's own record for the portal is put
    /// back as it was.
    fn discover_with_chap(
        &self,
        portal: &str,
        chap: &Chap,
    ) -> Result<Vec<(String, String)>, HostError> {
        let _one_at_a_time = self
            .discovery_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let record = self
            .root
            .join("etc/iscsi/send_targets")
            .join(record_portal(portal))
            .join("st_config");
        let saved = std::fs::read(&record).ok();
        // Written down before the secret goes into the record, so that an agent killed before
        // the cleanup below undoes it at its next start.
        let journal = self.discovery_journal();
        let entry = journal.begin(&record_portal(portal), saved.as_deref())?;
        let discoverydb = |args: &[&str]| {
            let base = ["-m", "discoverydb", "-t", "sendtargets", "-p", portal];
            self.iscsiadm(&[&base[..], args].concat())
        };
        let result = (|| {
            let out = discoverydb(&["-o", "new"])?;
            if out.code != 0 {
                return Err(classify(
                    &out,
                    &format!("creating the discovery record of {portal}"),
                ));
            }
            let settings = chap_settings(&DISCOVERY_AUTH, Some(chap));
            update_record_file(&record, &settings, &self.iscsi_dir())?;
            let out = discoverydb(&["--discover", "-o", "nonpersistent"])?;
            if out.code == ERR_LOGIN_AUTH_FAILED {
                return Err(HostError::new(
                    ErrorKind::AuthFailed,
                    format!(
                        "SendTargets discovery at {portal} failed to authenticate ({}); \
                         check discovery_auth_username and discovery_auth_password, \
                         and the target's discovery CHAP settings",
                        out.reason()
                    ),
                ));
            }
            if out.code != 0 {
                return Err(classify(
                    &out,
                    &format!("SendTargets discovery with CHAP at {portal}"),
                ));
            }
            Ok(parse_discovery(&out.stdout))
        })();
        // The record holds the secret: it never outlives the call.
        let cleanup = match saved {
            Some(bytes) => {
                crate::fsutil::write_atomic_via(&record, &bytes, 0o600, &self.iscsi_dir())
                    .map_err(|e| format!("cannot restore {}: {e}", record.display()))
            }
            None => match discoverydb(&["-o", "delete"]) {
                Ok(out) if out.code == 0 || out.code == ERR_NO_OBJS_FOUND => Ok(()),
                Ok(out) => Err(out.reason()),
                Err(e) => Err(e.message),
            },
        };
        if cleanup.is_ok() {
            journal.end(&entry);
        }
        if let Err(reason) = cleanup {
            tracing::error!(
                portal,
                reason = %reason,
                record = %record.display(),
                "could not remove the discovery record that holds the discovery CHAP secret; \
                 remove it by hand"
            );
            if result.is_ok() {
                return Err(HostError::new(
                    ErrorKind::RecordFailed,
                    format!(
                        "the discovery record {} could not be removed ({reason}); \
                         it holds the discovery CHAP secret",
                        record.display()
                    ),
                ));
            }
        }
        result
    }
}

/// Where one kind of open-iscsi record keeps a CHAP credential set.
struct AuthKeys {
    method: &'static str,
    username: &'static str,
    password: &'static str,
    username_in: &'static str,
    password_in: &'static str,
}

const NODE_AUTH: AuthKeys = AuthKeys {
    method: "node.session.auth.authmethod",
    username: "node.session.auth.username",
    password: "node.session.auth.password",
    username_in: "node.session.auth.username_in",
    password_in: "node.session.auth.password_in",
};

const DISCOVERY_AUTH: AuthKeys = AuthKeys {
    method: "discovery.sendtargets.auth.authmethod",
    username: "discovery.sendtargets.auth.username",
    password: "discovery.sendtargets.auth.password",
    username_in: "discovery.sendtargets.auth.username_in",
    password_in: "discovery.sendtargets.auth.password_in",
};

/// The record settings for `chap` (or for no authentication), secrets included.
fn chap_settings<'a>(keys: &AuthKeys, chap: Option<&'a Chap>) -> Vec<(&'static str, &'a str)> {
    let Some(chap) = chap else {
        return vec![(keys.method, "None")];
    };
    let mut settings = vec![
        (keys.method, "CHAP"),
        (keys.username, chap.username.as_str()),
        (keys.password, chap.password.expose()),
    ];
    if let Some((user_in, password_in)) = &chap.mutual {
        settings.push((keys.username_in, user_in.as_str()));
        settings.push((keys.password_in, password_in.expose()));
    }
    settings
}

/// Sets keys in one record file (mode 0600), replacing any earlier value of those keys. The
/// temporary file goes in `tmp_dir`: iscsiadm reads every entry of a record's directory, and
/// a stray file there fails other logins to the same target.
fn update_record_file(
    file: &Path,
    values: &[(&str, &str)],
    tmp_dir: &Path,
) -> Result<(), HostError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        HostError::new(
            ErrorKind::RecordFailed,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let updated = set_record_values(&text, values);
    crate::fsutil::write_atomic_via(file, updated.as_bytes(), 0o600, tmp_dir).map_err(|e| {
        HostError::new(
            ErrorKind::RecordFailed,
            format!("cannot write {}: {e}", file.display()),
        )
    })
}

/// `127.0.0.1:3260` -> `127.0.0.1,3260`, `[fd00::1]:3260` -> `fd00::1,3260`, as record names are.
/// What a discovery with CHAP is about to change, kept until the change is undone: the
/// original record's bytes, or a note that there was none. One file per portal record, in a
/// directory of `/etc/iscsi` that iscsiadm does not read.
struct DiscoveryJournal {
    dir: PathBuf,
    send_targets: PathBuf,
}

impl DiscoveryJournal {
    /// The entry's file: a record directory's name has dots in it (an address), so the
    /// suffix is appended, never taken for an extension.
    fn entry(&self, record_dir: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{record_dir}.{suffix}"))
    }

    fn begin(&self, record_dir: &str, original: Option<&[u8]>) -> Result<String, HostError> {
        let written = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let (suffix, bytes) = match original {
                Some(bytes) => ("orig", bytes),
                None => ("new", &[][..]),
            };
            crate::fsutil::write_private(&self.entry(record_dir, suffix), bytes)
        });
        written.map_err(|e| {
            HostError::new(
                ErrorKind::RecordFailed,
                format!(
                    "cannot note the discovery record's state in {}: {e}",
                    self.dir.display()
                ),
            )
        })?;
        Ok(record_dir.to_string())
    }

    fn end(&self, record_dir: &str) {
        for suffix in ["orig", "new"] {
            let _ = std::fs::remove_file(self.entry(record_dir, suffix));
        }
    }

    /// Puts back every record a discovery left changed: the original where there was one,
    /// none (so no discovery CHAP secret stays on disk) where there was not.
    fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((record_dir, suffix)) = name.rsplit_once('.') else {
                continue;
            };
            let record = self.send_targets.join(record_dir).join("st_config");
            let undone = match suffix {
                // The temporary file goes beside the journal: iscsiadm reads every file of
                // a record's directory.
                "orig" => std::fs::read(&path).and_then(|bytes| {
                    crate::fsutil::write_atomic_via(&record, &bytes, 0o600, &self.dir)
                }),
                "new" => match std::fs::remove_file(&record) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => {
                        let _ = std::fs::remove_dir(record.parent().unwrap_or(&record));
                        Ok(())
                    }
                },
                _ => continue,
            };
            match undone {
                Ok(()) => {
                    tracing::warn!(
                        record = %record.display(),
                        "undid a discovery record change that a stopped agent left behind"
                    );
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => tracing::error!(
                    record = %record.display(),
                    error = %e,
                    "cannot undo a discovery record change; it may hold a discovery CHAP secret"
                ),
            }
        }
    }
}

fn record_portal(portal: &str) -> String {
    match portal.rsplit_once(':') {
        Some((host, port)) => format!(
            "{},{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        ),
        None => portal.to_string(),
    }
}

/// Sets `key = value` lines in an open-iscsi record, appending keys it lacks before its
/// `# END RECORD` line.
pub(crate) fn set_record_values(text: &str, values: &[(&str, &str)]) -> String {
    let mut lines = Vec::new();
    let mut done = vec![false; values.len()];
    for line in text.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match values.iter().position(|(k, _)| Some(*k) == key) {
            Some(i) => {
                lines.push(format!("{} = {}", values[i].0, values[i].1));
                done[i] = true;
            }
            None => lines.push(line.to_string()),
        }
    }
    let missing = values
        .iter()
        .zip(done)
        .filter(|(_, done)| !done)
        .map(|((k, v), _)| format!("{k} = {v}"));
    // Keep the "# END RECORD" line last, as iscsiadm writes it; a line that only ends with those
    // words is not the marker.
    let end = lines
        .iter()
        .rposition(|l| l == "# END RECORD")
        .unwrap_or(lines.len());
    lines.splice(end..end, missing);
    lines.into_iter().map(|line| line + "\n").collect()
}

/// Turns iscsiadm's exit code and message into a stable kind and a sentence.
pub(crate) fn classify(out: &Output, doing: &str) -> HostError {
    let reason = out.reason();
    let (kind, advice) = match out.code {
        ERR_LOGIN_AUTH_FAILED => (
            ErrorKind::AuthFailed,
            "check auth_username and auth_password, and the target's CHAP settings",
        ),
        ERR_TRANS | ERR_TRANS_TIMEOUT | ERR_PDU_TIMEOUT => (
            ErrorKind::PortalUnreachable,
            "check the portal address, the routes to it and that the target listens there",
        ),
        ERR_ISCSID_COMM | ERR_ISCSID_NOTCONN => (
            ErrorKind::IscsidNotRunning,
            "start iscsid (systemctl start iscsid)",
        ),
        ERR_LOGIN | ERR_FATAL_LOGIN => (
            ErrorKind::LoginRefused,
            "the target refused the login: \
             check the IQN and that its ACL allows this node's initiator name",
        ),
        ERR_NO_OBJS_FOUND => (ErrorKind::NoRecord, "the node record is missing"),
        _ => (ErrorKind::IscsiadmFailed, "see the message for details"),
    };
    HostError::new(
        kind,
        format!(
            "{doing} failed (iscsiadm exit {}: {reason}); {advice}",
            out.code
        ),
    )
}

impl IscsiHost for SystemIscsi {
    fn sessions(&self) -> Result<Vec<Session>, HostError> {
        sysfs::read_sessions(&self.root.join("sys"))
    }

    fn discover(
        &self,
        portal: &Portal,
        chap: Option<&Chap>,
    ) -> Result<Vec<(String, String)>, HostError> {
        let portal = portal.to_string();
        if let Some(chap) = chap {
            return self.discover_with_chap(&portal, chap);
        }
        // Non-persistent: discovery must not create records (with whatever startup mode the
        // distribution defaults to) for every target the portal offers.
        let out = self.iscsiadm(&[
            "-m",
            "discovery",
            "-t",
            "sendtargets",
            "-p",
            &portal,
            "-o",
            "nonpersistent",
        ])?;
        if out.code != 0 {
            return Err(classify(
                &out,
                &format!("SendTargets discovery at {portal}"),
            ));
        }
        Ok(parse_discovery(&out.stdout))
    }

    fn create_record(&self, path: &IscsiPath, chap: Option<&Chap>) -> Result<(), HostError> {
        let key = path.session();
        let (portal, iqn) = (key.portal(), key.iqn());
        let mut args = Self::node_args(portal, iqn);
        args.extend(["-o", "new"]);
        let out = self.iscsiadm(&args)?;
        if out.code != 0 {
            return Err(classify(
                &out,
                &format!("creating the node record of {iqn} at {portal}"),
            ));
        }
        let mut settings = vec![
            // The agent, not iscsid, decides what is logged in, and only the LUN wanted is scanned.
            ("node.startup", "manual"),
            ("node.conn[0].startup", "manual"),
            ("node.session.scan", "manual"),
            // A dead portal fails in about 30 s instead of open-iscsi's two minutes; the agent
            // retries the volume with backoff anyway.
            ("node.conn[0].timeo.login_timeout", "10"),
            ("node.session.initial_login_retry_max", "2"),
        ];
        settings.extend(chap_settings(&NODE_AUTH, chap));
        // Written into the record file in one go: one iscsiadm run per setting would cost a
        // process start each, and would put the passwords on a command line.
        self.write_record(portal, iqn, &settings)
    }

    fn login(&self, session: &SessionKey) -> Result<(), HostError> {
        let (portal, iqn) = (session.portal(), session.iqn());
        let mut args = Self::node_args(portal, iqn);
        args.push("--login");
        let out = self.iscsiadm(&args)?;
        match out.code {
            0 | ERR_SESS_EXISTS => Ok(()),
            _ => Err(classify(&out, &format!("login to {iqn} at {portal}"))),
        }
    }

    fn logout(&self, session: &SessionKey) -> Result<(), HostError> {
        let (portal, iqn) = (session.portal(), session.iqn());
        let mut args = Self::node_args(portal, iqn);
        args.push("--logout");
        let out = self.iscsiadm(&args)?;
        match out.code {
            0 | ERR_NO_OBJS_FOUND => Ok(()),
            _ => Err(classify(&out, &format!("logout from {iqn} at {portal}"))),
        }
    }

    fn delete_record(&self, session: &SessionKey) -> Result<(), HostError> {
        let (portal, iqn) = (session.portal(), session.iqn());
        let mut args = Self::node_args(portal, iqn);
        args.extend(["-o", "delete"]);
        let out = self.iscsiadm(&args)?;
        match out.code {
            0 | ERR_NO_OBJS_FOUND => Ok(()),
            _ => Err(classify(
                &out,
                &format!("deleting the node record of {iqn} at {portal}"),
            )),
        }
    }

    fn scan_lun(&self, session: &Session, lun: u16) -> Result<(), HostError> {
        // Wildcard channel and target: the session's host has exactly one target.
        let scan = self
            .root
            .join(format!("sys/class/scsi_host/host{}/scan", session.host_no));
        std::fs::write(&scan, format!("- - {lun}")).map_err(|e| {
            HostError::new(
                ErrorKind::ScanFailed,
                format!("cannot scan LUN {lun} through {}: {e}", scan.display()),
            )
        })
    }

    fn rescan_device(&self, kernel_name: &str) -> Result<(), HostError> {
        let rescan = self
            .root
            .join(format!("sys/block/{kernel_name}/device/rescan"));
        std::fs::write(&rescan, "1").map_err(|e| {
            HostError::new(
                ErrorKind::ScanFailed,
                format!("cannot rescan the SCSI device of {kernel_name}: {e}"),
            )
        })
    }

    fn delete_device(&self, kernel_name: &str) -> Result<(), HostError> {
        let delete = self
            .root
            .join(format!("sys/block/{kernel_name}/device/delete"));
        match std::fs::write(&delete, "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::new(
                ErrorKind::DeleteFailed,
                format!("cannot delete the SCSI device of {kernel_name}: {e}"),
            )),
        }
    }
}

/// `127.0.0.1:3260,1 iqn.…` lines -> (portal, iqn).
pub(crate) fn parse_discovery(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            let (portal_tpgt, iqn) = line.trim().split_once(' ')?;
            let portal = portal_tpgt.rsplit_once(',').map_or(portal_tpgt, |(p, _)| p);
            Some((portal.to_string(), iqn.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Output {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/iscsi/");
        let read =
            |ext: &str| std::fs::read_to_string(format!("{dir}{name}.{ext}")).unwrap_or_default();
        Output {
            code: read("exit").trim().parse().unwrap(),
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }

    #[test]
    fn captured_failures_get_stable_kinds() {
        let kind = |name| classify(&fixture(name), "x").kind.as_str();
        assert_eq!(kind("iscsiadm-login-wrong-chap"), "auth_failed");
        assert_eq!(kind("iscsiadm-login-dead-portal"), "portal_unreachable");
        assert_eq!(kind("iscsiadm-node-record-unknown"), "no_record");
        let message = classify(&fixture("iscsiadm-login-wrong-chap"), "login to t").message;
        assert!(message.contains("authorization failure"), "{message}");
    }

    #[test]
    fn exits_that_mean_done_already_are_known() {
        assert_eq!(fixture("iscsiadm-login-again").code, ERR_SESS_EXISTS);
        assert_eq!(
            fixture("iscsiadm-logout-no-session").code,
            ERR_NO_OBJS_FOUND
        );
        assert_eq!(
            fixture("iscsiadm-node-delete-unknown").code,
            ERR_NO_OBJS_FOUND
        );
    }

    #[test]
    fn discovery_output_parses() {
        let found = parse_discovery(&fixture("iscsiadm-discovery-sendtargets").stdout);
        assert!(!found.is_empty());
        assert!(
            found
                .iter()
                .all(|(portal, iqn)| portal == "127.0.0.1:3260" && iqn.starts_with("iqn."))
        );
        assert_eq!(
            parse_discovery("[fd00::1]:3260,1 iqn.x:y\n"),
            vec![("[fd00::1]:3260".into(), "iqn.x:y".into())]
        );
    }

    #[test]
    fn secrets_replace_record_lines_and_stay_before_the_end_marker() {
        let record = "# BEGIN RECORD 2.1.8\nnode.name = iqn.x\n\
                      node.session.auth.password = old\n# END RECORD\n";
        let out = set_record_values(
            record,
            &[
                ("node.session.auth.password", "new"),
                ("node.session.auth.password_in", "in"),
            ],
        );
        assert_eq!(
            out,
            "# BEGIN RECORD 2.1.8\nnode.name = iqn.x\nnode.session.auth.password = new\n\
             node.session.auth.password_in = in\n# END RECORD\n"
        );
    }

    /// Found by fuzzing (fuzz/seeds/iscsi_output/end-marker-mid-line): a setting was inserted
    /// in the middle of a line that ended with the end marker's words, so it was never set.
    #[test]
    fn missing_settings_go_before_the_end_marker_line_only() {
        let record = "node.name = iqn.x\nnode.conn[0].port = 3260 # END RECORD\n";
        let out = set_record_values(record, &[("node.session.auth.password", "new")]);
        assert_eq!(
            out,
            "node.name = iqn.x\nnode.conn[0].port = 3260 # END RECORD\n\
             node.session.auth.password = new\n"
        );
        let record = "node.name = iqn.x\n# END RECORD\ntrailing = 1\n";
        let out = set_record_values(record, &[("node.session.auth.password", "new")]);
        assert_eq!(
            out,
            "node.name = iqn.x\nnode.session.auth.password = new\n# END RECORD\ntrailing = 1\n"
        );
    }

    #[test]
    fn a_discovery_cut_short_is_undone_at_the_next_start() {
        let root = tempfile::tempdir().unwrap();
        let iscsi = root.path().join("etc/iscsi");
        let journal = DiscoveryJournal {
            dir: iscsi.join("tether-discovery"),
            send_targets: iscsi.join("send_targets"),
        };
        let record = |dir: &str| iscsi.join("send_targets").join(dir).join("st_config");
        // An operator's record, then ours over it; a record only we made.
        std::fs::create_dir_all(record("192.0.2.1,3260").parent().unwrap()).unwrap();
        std::fs::write(record("192.0.2.1,3260"), "operator's own\n").unwrap();
        journal
            .begin("192.0.2.1,3260", Some(b"operator's own\n"))
            .unwrap();
        std::fs::write(
            record("192.0.2.1,3260"),
            "discovery.sendtargets.auth.password = hunter2\n",
        )
        .unwrap();
        journal.begin("192.0.2.2,3260", None).unwrap();
        std::fs::create_dir_all(record("192.0.2.2,3260").parent().unwrap()).unwrap();
        std::fs::write(
            record("192.0.2.2,3260"),
            "discovery.sendtargets.auth.password = hunter2\n",
        )
        .unwrap();

        journal.recover();
        assert_eq!(
            std::fs::read_to_string(record("192.0.2.1,3260")).unwrap(),
            "operator's own\n"
        );
        assert!(
            !record("192.0.2.2,3260").exists(),
            "our record with the secret stayed"
        );
        let left = std::fs::read_dir(&journal.dir).unwrap().count();
        assert_eq!(left, 0, "the journal keeps entries it has undone");
    }

    #[test]
    fn record_portals_are_named_as_open_iscsi_names_them() {
        assert_eq!(record_portal("127.0.0.1:3260"), "127.0.0.1,3260");
        assert_eq!(record_portal("[fd00::1]:3260"), "fd00::1,3260");
    }

    #[test]
    fn secrets_land_in_the_record_file_open_iscsi_wrote() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/sbin")).unwrap();
        std::fs::write(root.path().join("usr/sbin/iscsiadm"), "").unwrap();
        let dir = root
            .path()
            .join("etc/iscsi/nodes/iqn.2003-01.test.tether:chap");
        std::fs::create_dir_all(&dir).unwrap();
        let record = dir.join("127.0.0.1,3260");
        std::fs::write(
            &record,
            "# BEGIN RECORD 2.1.8\nnode.session.auth.password = <empty>\n# END RECORD\n",
        )
        .unwrap();
        let host = SystemIscsi::new(root.path()).unwrap();
        host.write_record(
            "127.0.0.1:3260",
            "iqn.2003-01.test.tether:chap",
            &[("node.session.auth.password", "s3cret")],
        )
        .unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        assert!(
            text.contains("node.session.auth.password = s3cret\n"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
