//! The `tether` binary: wires configuration, logging and the real host to the library.
//! `tether-agent` (src/bin/tether-agent.rs) is its node-side part alone.

mod cli;
mod ctl;
mod node;
mod status;

use std::process::ExitCode;

fn main() -> ExitCode {
    let result = match cli::parse() {
        cli::Invocation::Generate(what) => cli::generate(what).map(|()| ExitCode::SUCCESS),
        cli::Invocation::Run(cli) => {
            node::init_logging(cli.verbose);
            cli::run(*cli)
        }
    };
    node::exit_code(result)
}
