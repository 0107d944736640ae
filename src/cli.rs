//! Command line: `tether agent | conductor | ctl | status | check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::node::{self, AgentArgs};

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
    Agent(AgentArgs),
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
    let sources = node::Sources {
        config: cli.config.as_deref(),
        cmdline: cli.cmdline.as_deref(),
    };
    match cli.command {
        Command::CheckConfig => node::check_config(&sources),
        Command::Status { state_dir, json } => node::status(&sources, state_dir, json),
        Command::Ctl(args) => runtime()?.block_on(crate::ctl::run(args)),
        Command::Conductor {
            listen,
            database,
            action,
        } => {
            let no_cmdline = tether::config::cmdline::CmdlineSettings::default();
            let loaded = node::load_config(cli.config.as_deref(), &no_cmdline)?;
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
                    node::shutdown_signal(),
                )
                .await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(flags) => node::run_agent(&sources, flags),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_lists_every_kernel_command_line_key() {
        for (key, _, _) in tether::config::cmdline::KEYS {
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
        let Command::Agent(flags) = cli.command else {
            panic!("not the agent");
        };
        assert_eq!(
            flags.conductor_url,
            ["https://a:1", "https://b:2", "https://c:3"]
        );
    }

    #[test]
    fn the_cmdline_flag_is_global() {
        let cli = Cli::try_parse_from(["tether", "status", "--cmdline", "/x"]).unwrap();
        assert_eq!(cli.cmdline, Some(PathBuf::from("/x")));
    }
}
