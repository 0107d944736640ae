//! A conductor run as its own process, for the tests against real OpenStack services
//! (tests/keystone, tests/ironic): plain HTTP on a free loopback port, its database, its
//! configuration and its log in the test's directory, and `HOME` there too (where osauth looks
//! for `.config/openstack/clouds.yaml`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct ConductorProcess {
    child: Child,
    pub url: String,
    log: PathBuf,
    /// The environment variable naming a directory to copy the log into at `stop`.
    keep_logs_in: &'static str,
}

impl ConductorProcess {
    /// `tether conductor` with `[conductor]`'s listen and database set, then `config` (more
    /// `[conductor]` keys first, then other sections), logging `log_filter` to `dir/NAME.log`.
    pub fn start(
        dir: &Path,
        name: &str,
        config: &str,
        admin_token: &str,
        log_filter: &str,
        keep_logs_in: &'static str,
    ) -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let file = dir.join(format!("{name}.toml"));
        let db = dir.join(format!("{name}.db"));
        let head = format!(
            "[conductor]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n",
            db.display()
        );
        std::fs::write(&file, head + config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("--config")
            .arg(&file)
            .arg("conductor")
            .env("HOME", dir)
            .env("TETHER_ADMIN_TOKEN", admin_token)
            .env("TETHER_LOG", log_filter)
            .env("TETHER_LOG_FORMAT", "text")
            .env_remove("OS_CLOUD")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            keep_logs_in,
        }
    }

    /// Resident memory, from /proc.
    #[allow(dead_code)] // not every test target measures it
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Stops it (SIGTERM, as systemd would) and returns what it logged.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if let Ok(keep) = std::env::var(self.keep_logs_in) {
            let name = self.log.file_name().unwrap();
            let _ = std::fs::copy(&self.log, Path::new(&keep).join(name));
        }
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// A test that fails leaves no conductor behind.
impl Drop for ConductorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
