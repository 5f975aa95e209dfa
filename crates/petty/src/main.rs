//! `petty`: the one command-line tool. Parses arguments, sets up logging, runs
//! the subcommand, and turns its result into an exit code.

mod cli;
mod doctor;
mod gateway;
mod manage;
mod partial;
mod run;
mod stats;
mod template;
mod terminal;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A sandbox's network helper, which a create starts (not for users).
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("__net-helper")) {
        petty::process::init_logging("info", false);
        let config = std::path::PathBuf::from(args.next().unwrap_or_default());
        return match petty_net::helper::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("petty network helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = cli::Cli::parse();
    // `petty bench` is another binary's, settings and all.
    if let Some(bench) = cli.bench() {
        return bench.exec();
    }
    // The settings are read first, once: they decide the log format, and a
    // bad one stops everything before a socket or VM exists.
    let loaded = match cli.load_settings() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("petty: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The daemon logs what it does (info); commands only what went wrong.
    let default_filter = if cli.is_daemon() {
        "warn,petty=info,petty_server=info,petty_core=info,petty_vmm=info"
    } else {
        "warn"
    };
    let json =
        cli.is_daemon() && loaded.settings.server.log_format == petty_config::LogFormat::Json;
    petty::process::init_logging(default_filter, json);
    petty::process::run("petty", cli::dispatch(cli, loaded))
}
