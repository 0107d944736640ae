//! Command line: `tether agent | conductor | ctl | status | check-config`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use tether::agent::{self, Host};
use tether::backend::simulated::SimKernel;
use tether::config::{BackendKind, Config, default_fragments};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Remote block volumes (iSCSI, Ceph RBD) for bare-metal machines"
)]
pub struct Cli {
    /// Configuration file; replaces /etc/tether/tether.toml. Drop-ins in /etc/tether/config.d still apply.
    #[arg(long, short, global = true, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
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
        /// Conductor URL, overriding agent.conductor_url.
        #[arg(long)]
        conductor_url: Option<String>,
        /// State directory, overriding agent.state_dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Root for host paths (/sys, /etc/iscsi), overriding agent.host_root.
        #[arg(long)]
        host_root: Option<PathBuf>,
    },
    /// Run the reference conductor (HTTP API over SQLite).
    Conductor {
        /// Address to listen on, overriding conductor.listen.
        #[arg(long)]
        listen: Option<String>,
        /// SQLite database file, overriding conductor.database.
        #[arg(long)]
        database: Option<PathBuf>,
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

fn load_config(explicit: Option<&Path>) -> anyhow::Result<Config> {
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
    Ok(Config::load(&files)?)
}

pub enum Invocation {
    Run(Cli),
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
        _ => Cli::from_arg_matches(&matches).map(Invocation::Run),
    };
    parsed.unwrap_or_else(|e| e.exit())
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig => {
            let config = load_config(cli.config.as_deref())?;
            let mut shown = config.clone();
            if shown.agent.token.is_some() {
                shown.agent.token = Some(tether::protocol::MASK.into());
            }
            println!("configuration is valid:\n{shown:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { state_dir, json } => {
            let dir = match state_dir {
                Some(dir) => dir,
                None => load_config(cli.config.as_deref())?.agent.state_dir,
            };
            crate::status::show(&dir, json)
        }
        Command::Ctl(args) => runtime()?.block_on(crate::ctl::run(args)),
        Command::Conductor { listen, database } => {
            let mut config = load_config(cli.config.as_deref())?.conductor;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(database) = database {
                config.database = database;
            }
            let token =
                tether::conductor::admin_token(&config, std::env::var("TETHER_ADMIN_TOKEN").ok())?;
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(&config.listen)
                    .await
                    .with_context(|| format!("listening on {}", config.listen))?;
                tether::conductor::serve(&config, &token, listener, shutdown_signal()).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent {
            simulated,
            conductor_url,
            state_dir,
            host_root,
        } => {
            let mut config = load_config(cli.config.as_deref())?.agent;
            if let Some(url) = conductor_url {
                config.conductor_url = url;
            }
            if let Some(dir) = state_dir {
                config.state_dir = dir;
            }
            if let Some(root) = host_root {
                config.host_root = root;
            }
            if simulated {
                config.backend = BackendKind::Simulated;
            }
            let host = match config.backend {
                BackendKind::Simulated => {
                    tracing::warn!("using the simulated kernel: nothing is attached for real");
                    Host::simulated(Arc::new(SimKernel::default()))
                }
                BackendKind::System => Host::system(&config.host_root)?,
            };
            let settings = agent::Settings::from_config(&config)?;
            agent_runtime()?
                .block_on(async { agent::run(settings, host, shutdown_signal()).await })?;
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
