//! The `tether` binary: wires configuration, logging and the real host to the library.

mod cli;
mod ctl;
mod status;

use std::process::ExitCode;

fn main() -> ExitCode {
    let result = match cli::parse() {
        cli::Invocation::Generate(what) => cli::generate(what).map(|()| ExitCode::SUCCESS),
        cli::Invocation::Run(cli) => {
            init_logging(cli.verbose);
            cli::run(*cli)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // `-> cause` lines, the way zincati prints error chains. Configuration errors carry
            // their stable kind, for whoever greps the journal of a node that did not start.
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
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // journald stamps every line itself.
    if under_journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
