//! `petty`: the one command-line tool. Parses arguments, sets up logging, runs
//! the subcommand, and turns its result into an exit code.

mod cli;
mod doctor;
mod manage;
mod partial;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
    let env = petty_config::env::Env::process();
    let filter = [petty_config::env::PETTY_LOG, petty_config::env::RUST_LOG]
        .iter()
        .find_map(|name| env.text(name))
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| default_filter.into());
    let json =
        cli.is_daemon() && loaded.settings.server.log_format == petty_config::LogFormat::Json;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && env.get(petty_config::env::NO_COLOR).is_none(),
        );
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("petty: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::dispatch(cli, loaded)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petty: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
