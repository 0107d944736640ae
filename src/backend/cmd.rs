//! Every external program tether runs: resolved from fixed directories (never `$PATH`), run
//! without a shell, with stdout and stderr captured for errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ErrorKind, HostError};

/// Where the tools are looked for, in order.
const DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// The last line of stderr (or stdout), which is where the tools put the reason.
    pub(crate) fn reason(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines
            .iter()
            .rev()
            .take(2)
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

fn captured(program: &Path, args: &[&str], output: std::process::Output) -> Output {
    let out = Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    tracing::debug!(program = %program.display(), ?args, code = out.code, "ran");
    out
}

/// Finds `name` in the fixed directories under `root`.
pub(crate) fn resolve(root: &Path, name: &str) -> Result<PathBuf, HostError> {
    DIRS.iter()
        .map(|dir| root.join(dir.trim_start_matches('/')).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            HostError::new(
                ErrorKind::ToolMissing,
                format!(
                    "{name} is not installed (looked in {}); install its package",
                    DIRS.join(", ")
                ),
            )
        })
}

/// Runs `program` with `args`. Arguments must never hold secrets: other users can read them.
pub(crate) fn run(program: &Path, args: &[&str]) -> Result<Output, HostError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            HostError::new(
                ErrorKind::CommandFailed,
                format!("cannot run {}: {e}", program.display()),
            )
        })?;
    Ok(captured(program, args, output))
}

/// [`run`], killed after `timeout`: for tools that may wait on the network without bound.
pub(crate) fn run_with_timeout(
    program: &Path,
    args: &[&str],
    timeout: std::time::Duration,
) -> Result<Output, HostError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|e| {
            HostError::new(
                ErrorKind::CommandFailed,
                format!("cannot run {}: {e}", program.display()),
            )
        })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            return Err(HostError::new(
                ErrorKind::Timeout,
                format!(
                    "{} did not finish within {}s and was stopped",
                    program.display(),
                    timeout.as_secs()
                ),
            ));
        }
    };
    let output = output.map_err(|e| {
        HostError::new(
            ErrorKind::CommandFailed,
            format!("{}: {e}", program.display()),
        )
    })?;
    Ok(captured(program, args, output))
}

/// The tools a node needs for iSCSI and mounts that are missing, for a warning at start.
pub(crate) fn missing(root: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| resolve(root, n).is_err())
        .map(|n| n.to_string())
        .collect()
}
