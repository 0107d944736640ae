//! What runs on a node, shared by the two binaries: `tether` (everything) and `tether-agent`
//! (the agent, `status` and `check-config` only, so that the conductor, `ctl` and their
//! dependencies stay out of a ramdisk). Configuration loading, logging, the agent's runtime.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use tether::agent::{self, Backends};
use tether::backend::simulated::SimKernel;
use tether::config::{AgentConfig, BackendKind, Config, cmdline, default_fragments};

/// The agent's flags, which win over the files and the kernel command line.
#[derive(Args, Debug, Default, PartialEq)]
pub struct AgentArgs {
    /// Use the in-memory simulated kernel instead of the host (demos, benchmarks).
    #[arg(long)]
    pub simulated: bool,
    /// Conductor URL, overriding agent.conductor_url; repeat it (or separate URLs by
    /// commas) for several conductors, tried in this order.
    #[arg(long, value_delimiter = ',')]
    pub conductor_url: Vec<String>,
    /// State directory, overriding agent.state_dir.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Root for host paths (/sys, /etc/iscsi), overriding agent.host_root.
    #[arg(long)]
    pub host_root: Option<PathBuf>,
}

impl AgentArgs {
    pub fn apply(self, mut config: AgentConfig) -> AgentConfig {
        if !self.conductor_url.is_empty() {
            config.conductor_urls = self.conductor_url;
        }
        if let Some(dir) = self.state_dir {
            config.state_dir = dir;
        }
        if let Some(root) = self.host_root {
            config.host_root = root;
        }
        if self.simulated {
            config.backend = BackendKind::Simulated;
        }
        config
    }
}

/// Where the configuration comes from: the global flags of both binaries.
pub struct Sources<'a> {
    pub config: Option<&'a Path>,
    pub cmdline: Option<&'a Path>,
}

/// The `tether.*` keys of the kernel command line: `--cmdline`/TETHER_CMDLINE, or /proc/cmdline
/// when it exists.
pub fn read_cmdline(path: Option<&Path>) -> anyhow::Result<cmdline::CmdlineSettings> {
    Ok(match path {
        Some(path) => cmdline::read(path, true)?,
        None => cmdline::read(Path::new(cmdline::DEFAULT_PATH), false)?,
    })
}

/// Files, then the kernel command line over them. The conductor passes no command line: its
/// settings are not there, and a bad `tether.*` word meant for an agent must not stop it.
pub fn load_config(
    explicit: Option<&Path>,
    from_cmdline: &cmdline::CmdlineSettings,
) -> anyhow::Result<Config> {
    let etc = Path::new("/etc/tether");
    let mut files = match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => Vec::new(),
    };
    let fragments = default_fragments(etc, Path::new("/usr/lib/tether"));
    let main = etc.join("tether.toml");
    files.extend(
        fragments
            .into_iter()
            .filter(|f| explicit.is_none() || *f != main),
    );
    Ok(Config::load_with_cmdline(&files, from_cmdline)?)
}

pub fn check_config(sources: &Sources) -> anyhow::Result<ExitCode> {
    let from_cmdline = read_cmdline(sources.cmdline)?;
    let mut shown = load_config(sources.config, &from_cmdline)?;
    if shown.agent.token.is_some() {
        shown.agent.token = Some(tether::protocol::MASK.into());
    }
    println!("configuration is valid");
    if !from_cmdline.is_empty() {
        let path = sources.cmdline.unwrap_or(Path::new(cmdline::DEFAULT_PATH));
        println!(
            "from the kernel command line ({}): {}",
            path.display(),
            from_cmdline.keys().join(", ")
        );
    }
    println!("{shown:#?}");
    Ok(ExitCode::SUCCESS)
}

pub fn status(
    sources: &Sources,
    state_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let dir = match state_dir {
        Some(dir) => dir,
        None => {
            let from_cmdline = read_cmdline(sources.cmdline)?;
            load_config(sources.config, &from_cmdline)?.agent.state_dir
        }
    };
    crate::status::show(&dir, json)
}

pub fn run_agent(sources: &Sources, flags: AgentArgs) -> anyhow::Result<ExitCode> {
    tether::failpoints::setup();
    let from_cmdline = read_cmdline(sources.cmdline)?;
    let config = flags.apply(load_config(sources.config, &from_cmdline)?.agent);
    let host = match config.backend {
        BackendKind::Simulated => {
            tracing::warn!("using the simulated kernel: nothing is attached for real");
            Backends::simulated(Arc::new(SimKernel::default()))
        }
        BackendKind::System => Backends::system(&config.host_root)?,
    };
    agent_runtime()?.block_on(async { agent::run(config, host, shutdown_signal()).await })?;
    Ok(ExitCode::SUCCESS)
}

/// The agent's work is a few requests and timers: one thread runs them, and host commands run
/// on the blocking pool, whose idle threads go away after a while.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .context("starting the async runtime")
}

/// Longer than the interval of the health check (5 s), which runs on the blocking pool: the
/// check then reuses one waiting thread instead of starting a thread and ending it each time,
/// which cost more CPU than the check itself (BENCHMARKS.md, "Agent footprint").
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(12);

/// SIGTERM or SIGINT. Stopping the agent never detaches volumes. The handlers are installed
/// at once, not when the future is first polled, so a signal right after start-up is not lost.
/// Must be called inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// The exit of both binaries: `-> cause` lines, the way zincati prints error chains.
/// Configuration errors carry their stable kind, for whoever greps the journal of a node that
/// did not start.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<tether::config::ConfigError>() {
                Some(config) => eprintln!("error: {e} [{}]", config.kind()),
                None => eprintln!("error: {e}"),
            }
            for cause in e.chain().skip(1) {
                eprintln!("  -> {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, or straight to journald with every field as a journal field (so that
/// `journalctl -o json` has VOLUME_ID, TARGET_UUID, STATE…) when systemd connected stderr to the
/// journal. `TETHER_LOG_FORMAT=text` keeps plain text on stderr regardless.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // `target=level` directives (`tether=debug,info`); a filter without regular expressions,
    // whose code would stay resident in the agent (BENCHMARKS.md, "Agent footprint").
    let filter = std::env::var("TETHER_LOG")
        .ok()
        .and_then(|wanted| wanted.parse::<Targets>().ok())
        .unwrap_or_else(|| default.parse().expect("a level is a valid filter"));
    let under_journald = tether::journal::stderr_is_journal();
    let text_wanted = std::env::var("TETHER_LOG_FORMAT").is_ok_and(|f| f == "text");
    if under_journald && !text_wanted {
        tracing_subscriber::registry()
            .with(filter)
            .with(tether::journal::JournalLayer)
            .init();
        return;
    }
    use std::io::IsTerminal;
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let logging = tracing_subscriber::registry().with(filter);
    // journald stamps every line itself.
    if under_journald {
        logging.with(text.without_time()).init();
    } else {
        logging.with(text).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_kernel_command_line_which_wins_over_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("tether.toml");
        std::fs::write(
            &toml,
            "[agent]\nconductor_url = \"https://file:1\"\nstate_dir = \"/file\"\n\
             host_root = \"/file-root\"\ndevice_timeout_s = 5\n",
        )
        .unwrap();
        let cmdline_file = dir.path().join("cmdline");
        std::fs::write(
            &cmdline_file,
            "ro tether.conductor=https://cmdline:2 tether.state_dir=/cmdline \
             tether.device_timeout_s=9\n",
        )
        .unwrap();
        let from_cmdline = read_cmdline(Some(&cmdline_file)).unwrap();
        let loaded = load_config(Some(&toml), &from_cmdline).unwrap().agent;
        let flags = AgentArgs {
            conductor_url: vec!["https://flag:3".into()],
            state_dir: None,
            host_root: None,
            simulated: false,
        };
        let agent = flags.apply(loaded);
        assert_eq!(agent.conductor_urls, ["https://flag:3"]);
        assert_eq!(agent.state_dir, PathBuf::from("/cmdline"));
        assert_eq!(agent.device_timeout, std::time::Duration::from_secs(9));
        assert_eq!(agent.host_root, PathBuf::from("/file-root"));
        assert_eq!(agent.backend, BackendKind::System);

        // An explicit command line must exist; the default one may be absent.
        let missing = dir.path().join("absent");
        assert!(read_cmdline(Some(&missing)).is_err());
    }
}
