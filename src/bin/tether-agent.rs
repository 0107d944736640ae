//! `tether-agent`: the node agent without the conductor and `tether ctl`, for ramdisks and
//! nodes. Without a subcommand it runs the agent; `agent`, `status` and `check-config` are
//! those of `tether`, so that it can stand in for `tether` where only the agent is installed.

#[path = "../node.rs"]
mod node;
#[path = "../status.rs"]
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use node::AgentArgs;

#[derive(Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "The tether node agent: attach the remote volumes assigned to this node",
    after_long_help = "Configuration and the kernel command line as for `tether agent`; see \
                       tether(1) and /usr/share/doc/tether/operations.md."
)]
struct Cli {
    /// Configuration file; replaces /etc/tether/tether.toml. Drop-ins in /etc/tether/config.d
    /// still apply.
    #[arg(long, short, global = true, env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// Kernel command line whose tether.* keys apply over the configuration files
    /// [default: /proc/cmdline].
    #[arg(long, global = true, env = "TETHER_CMDLINE", value_name = "FILE")]
    cmdline: Option<PathBuf>,
    /// More log output (-v debug, -vv trace). TETHER_LOG overrides it with a tracing filter.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (the same as no subcommand).
    Agent(AgentArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_some() && cli.agent != AgentArgs::default() {
        // Rather than ignore them: the agent's flags go after `agent`, or without a subcommand.
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "the agent's flags go after `agent`, or alone without a subcommand",
            )
            .exit();
    }
    node::init_logging(cli.verbose);
    let sources = node::Sources {
        config: cli.config.as_deref(),
        cmdline: cli.cmdline.as_deref(),
    };
    node::exit_code(match cli.command {
        None => node::run_agent(&sources, cli.agent),
        Some(Command::Agent(flags)) => node::run_agent(&sources, flags),
        Some(Command::Status { state_dir, json }) => node::status(&sources, state_dir, json),
        Some(Command::CheckConfig) => node::check_config(&sources),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn it_takes_tethers_agent_command_line_too() {
        let bare = Cli::try_parse_from(["tether-agent", "--simulated", "-c", "/c"]).unwrap();
        assert!(bare.agent.simulated && bare.command.is_none());
        assert_eq!(bare.config, Some(PathBuf::from("/c")));
        let as_tether =
            Cli::try_parse_from(["tether", "--config", "/c", "agent", "--state-dir", "/s"])
                .unwrap();
        let Some(Command::Agent(flags)) = as_tether.command else {
            panic!("not the agent command");
        };
        assert_eq!(flags.state_dir, Some(PathBuf::from("/s")));
        let mixed = Cli::try_parse_from(["tether-agent", "--simulated", "status"]).unwrap();
        assert!(mixed.command.is_some() && mixed.agent != AgentArgs::default());
        assert!(Cli::try_parse_from(["tether-agent", "conductor"]).is_err());
    }
}
