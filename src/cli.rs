//! Command line: `tether agent | conductor | ctl | status | check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use tether::agent::{self, Backends};
use tether::backend::simulated::SimKernel;
use tether::config::{AgentConfig, BackendKind, Config, cmdline, default_fragments};

/// Also the EXTRA section of the man page.
const AFTER_LONG_HELP: &str = "\
Configuration, later winning key by key: /usr/lib/tether/config.d/*.toml, /etc/tether/tether.toml \
(or --config), /etc/tether/config.d/*.toml; then the kernel command line's tether.* keys (for \
agent, status and check-config); then the command's flags.

Kernel command line keys: tether.conductor=URL[,URL...], tether.node=UUID, tether.token_file=PATH, \
tether.token=TOKEN (any user can read /proc/cmdline: prefer tether.token_file), \
tether.state_dir=PATH, tether.conductor_ca_file=PATH, tether.allow_insecure_http=0|1, \
tether.device_timeout_s=SECONDS, tether.offline_reattach=0|1.

Environment: TETHER_CONFIG, TETHER_CMDLINE, TETHER_LOG (a tracing filter), TETHER_ADMIN_TOKEN \
(conductor, ctl), TETHER_URL and TETHER_CA_FILE (ctl).

See /usr/share/doc/tether/operations.md.";

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Remote block volumes (iSCSI, Ceph RBD) for bare-metal machines",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Configuration file; replaces /etc/tether/tether.toml. Drop-ins in /etc/tether/config.d
    /// still apply.
    #[arg(long, short, global = true, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kernel command line whose tether.* keys apply over the configuration files (agent,
    /// status, check-config) [default: /proc/cmdline].
    #[arg(long, global = true, env = "TETHER_CMDLINE", value_name = "FILE")]
    pub cmdline: Option<PathBuf>,
    /// More log output (-v debug, -vv trace). TETHER_LOG overrides it with a tracing filter.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the node agent: attach assigned volumes, detach unassigned ones, report.
    Agent {
        /// Use the in-memory simulated kernel instead of the host (demos, benchmarks).
        #[arg(long)]
        simulated: bool,
        /// Conductor URL, overriding agent.conductor_url; repeat it (or separate URLs by
        /// commas) for several conductors, tried in this order.
        #[arg(long, value_delimiter = ',')]
        conductor_url: Vec<String>,
        /// State directory, overriding agent.state_dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Root for host paths (/sys, /etc/iscsi), overriding agent.host_root.
        #[arg(long)]
        host_root: Option<PathBuf>,
    },
    /// Run the reference conductor (HTTP API over SQLite or PostgreSQL).
    Conductor {
        /// Address to listen on, overriding conductor.listen.
        #[arg(long)]
        listen: Option<String>,
        /// SQLite database file or postgres:// URL, overriding conductor.database.
        #[arg(long)]
        database: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<ConductorAction>,
    },
    /// Operator client: enroll nodes, assign volume targets, read node status.
    Ctl(crate::ctl::CtlArgs),
    /// Show what the local agent did, from its state directory.
    Status {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration files and print the merged result.
    CheckConfig,
}

/// What `tether conductor` does besides serving.
#[derive(Subcommand)]
pub enum ConductorAction {
    /// Copy a SQLite conductor's data into an empty PostgreSQL database (conductor.database,
    /// with conductor.database_password_file), then start the conductors on PostgreSQL.
    Migrate {
        /// The SQLite database to copy (stop its conductor first).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL to copy into, overriding conductor.database. Keep the password
        /// out of it (process listings show it): use conductor.database_password_file.
        #[arg(long)]
        to: Option<String>,
    },
}

/// `tether generate man|completions DIR`, run by scripts/build-deb. It is attached to the
/// parser at run time, not declared in [`Command`], so that the man pages and completions made
/// from [`Cli`] do not offer it (clap_complete lists hidden commands too).
#[derive(Subcommand)]
pub enum Generated {
    /// One man page per command: tether.1, tether-agent.1, tether-ctl-node-create.1, ...
    Man { dir: PathBuf },
    /// Completions for bash (tether.bash), zsh (_tether) and fish (tether.fish).
    Completions { dir: PathBuf },
}

/// The `tether.*` keys of the kernel command line: `--cmdline`/TETHER_CMDLINE, or /proc/cmdline
/// when it exists.
fn read_cmdline(path: Option<&Path>) -> anyhow::Result<cmdline::CmdlineSettings> {
    Ok(match path {
        Some(path) => cmdline::read(path, true)?,
        None => cmdline::read(Path::new(cmdline::DEFAULT_PATH), false)?,
    })
}

/// Files, then the kernel command line over them. The conductor passes no command line: its
/// settings are not there, and a bad `tether.*` word meant for an agent must not stop it.
fn load_config(
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

/// The agent's flags, which win over the files and the kernel command line.
struct AgentFlags {
    conductor_urls: Vec<String>,
    state_dir: Option<PathBuf>,
    host_root: Option<PathBuf>,
    simulated: bool,
}

impl AgentFlags {
    fn apply(self, mut config: AgentConfig) -> AgentConfig {
        if !self.conductor_urls.is_empty() {
            config.conductor_urls = self.conductor_urls;
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

pub enum Invocation {
    Run(Box<Cli>),
    Generate(Generated),
}

/// Parses the process arguments; exits with clap's message and code on a usage error.
pub fn parse() -> Invocation {
    let generate = Generated::augment_subcommands(
        clap::Command::new("generate")
            .about("Write man pages or shell completions (for packaging)")
            .hide(true)
            .subcommand_required(true),
    );
    let matches = Cli::command().subcommand(generate).get_matches();
    let parsed = match matches.subcommand() {
        Some(("generate", sub)) => Generated::from_arg_matches(sub).map(Invocation::Generate),
        _ => Cli::from_arg_matches(&matches).map(|cli| Invocation::Run(Box::new(cli))),
    };
    parsed.unwrap_or_else(|e| e.exit())
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig => {
            let from_cmdline = read_cmdline(cli.cmdline.as_deref())?;
            let mut shown = load_config(cli.config.as_deref(), &from_cmdline)?;
            if shown.agent.token.is_some() {
                shown.agent.token = Some(tether::protocol::MASK.into());
            }
            println!("configuration is valid");
            if !from_cmdline.is_empty() {
                let path = cli
                    .cmdline
                    .as_deref()
                    .unwrap_or(Path::new(cmdline::DEFAULT_PATH));
                println!(
                    "from the kernel command line ({}): {}",
                    path.display(),
                    from_cmdline.keys().join(", ")
                );
            }
            println!("{shown:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { state_dir, json } => {
            let dir = match state_dir {
                Some(dir) => dir,
                None => {
                    let from_cmdline = read_cmdline(cli.cmdline.as_deref())?;
                    load_config(cli.config.as_deref(), &from_cmdline)?
                        .agent
                        .state_dir
                }
            };
            crate::status::show(&dir, json)
        }
        Command::Ctl(args) => runtime()?.block_on(crate::ctl::run(args)),
        Command::Conductor {
            listen,
            database,
            action,
        } => {
            let no_cmdline = cmdline::CmdlineSettings::default();
            let loaded = load_config(cli.config.as_deref(), &no_cmdline)?;
            let mut config = loaded.conductor;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(database) = database {
                config.database = database;
            }
            if let Some(ConductorAction::Migrate { from, to }) = action {
                if let Some(to) = to {
                    config.database = PathBuf::from(to);
                }
                runtime()?.block_on(tether::conductor::migrate(&from, &config))?;
                return Ok(ExitCode::SUCCESS);
            }
            let token =
                tether::conductor::admin_token(&config, std::env::var("TETHER_ADMIN_TOKEN").ok())?;
            runtime()?.block_on(async {
                let listener = listen_for_fleet(&config.listen)
                    .await
                    .with_context(|| format!("listening on {}", config.listen))?;
                let openstack = tether::conductor::OpenStack {
                    cinder: loaded.cinder.clone(),
                    ironic: loaded.ironic.clone(),
                };
                tether::conductor::serve_with(
                    &config,
                    &openstack,
                    &token,
                    listener,
                    shutdown_signal(),
                )
                .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent {
            simulated,
            conductor_url,
            state_dir,
            host_root,
        } => {
            tether::failpoints::setup();
            let from_cmdline = read_cmdline(cli.cmdline.as_deref())?;
            let flags = AgentFlags {
                conductor_urls: conductor_url,
                state_dir,
                host_root,
                simulated,
            };
            let config = flags.apply(load_config(cli.config.as_deref(), &from_cmdline)?.agent);
            let host = match config.backend {
                BackendKind::Simulated => {
                    tracing::warn!("using the simulated kernel: nothing is attached for real");
                    Backends::simulated(Arc::new(SimKernel::default()))
                }
                BackendKind::System => Backends::system(&config.host_root)?,
            };
            agent_runtime()?
                .block_on(async { agent::run(config, host, shutdown_signal()).await })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn generate(what: Generated) -> anyhow::Result<()> {
    let (Generated::Man { dir } | Generated::Completions { dir }) = &what;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    match what {
        Generated::Man { dir } => clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("writing man pages to {}", dir.display()))?,
        Generated::Completions { dir } => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd, "tether", &dir)
                    .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Pending connections the kernel queues for the conductor (capped by net.core.somaxconn).
/// The default of 128 overflows at fleet scale: 10,000 agents open about 330 connections a
/// second (one per heartbeat), and an overflow costs a client a SYN retransmission (1 s, then 3,
/// 7, 15 s).
const LISTEN_BACKLOG: u32 = 4096;

/// Like `TcpListener::bind`, with a backlog of `LISTEN_BACKLOG`.
async fn listen_for_fleet(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let mut failed = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        let listening = socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG));
        match listening {
            Ok(listener) => return Ok(listener),
            Err(e) => failed = Some(e),
        }
    }
    Err(match failed {
        Some(e) => e.into(),
        None => anyhow::anyhow!("{address} names no address"),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The agent's work is a few requests and timers: one thread runs them, and host commands run
/// on the blocking pool, whose idle threads go away after a few seconds.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .build()
        .context("starting the async runtime")
}

/// SIGTERM or SIGINT. Stopping the agent never detaches volumes. The handlers are installed
/// at once, not when the future is first polled, so a signal right after start-up is not lost.
/// Must be called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
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
        let flags = AgentFlags {
            conductor_urls: vec!["https://flag:3".into()],
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

    #[test]
    fn the_man_page_lists_every_kernel_command_line_key() {
        for (key, _, _) in cmdline::KEYS {
            assert!(AFTER_LONG_HELP.contains(&format!("tether.{key}=")), "{key}");
        }
    }

    #[test]
    fn several_conductors_on_the_command_line() {
        let cli = Cli::try_parse_from([
            "tether",
            "agent",
            "--conductor-url",
            "https://a:1,https://b:2",
            "--conductor-url=https://c:3",
        ])
        .unwrap();
        let Command::Agent { conductor_url, .. } = cli.command else {
            panic!("not the agent");
        };
        assert_eq!(conductor_url, ["https://a:1", "https://b:2", "https://c:3"]);
    }

    #[test]
    fn the_cmdline_flag_is_global() {
        let cli = Cli::try_parse_from(["tether", "status", "--cmdline", "/x"]).unwrap();
        assert_eq!(cli.cmdline, Some(PathBuf::from("/x")));
    }
}
