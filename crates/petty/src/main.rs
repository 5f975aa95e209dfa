//! `petty`: the one command-line tool. Parses arguments, sets up logging, runs
//! the subcommand, and turns its result into an exit code.

mod bench;
mod bench_serve;
mod cli;
mod doctor;
mod manage;
mod partial;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The daemon's config is read first: it decides the log format, and a
    // bad one stops everything before a socket or VM exists.
    let server = match cli.server_config().transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("petty: error: {e}");
            return ExitCode::from(2);
        }
    };
    // The daemon logs what it does (info); commands only what went wrong.
    let default_filter = if server.is_some() {
        "warn,petty=info,petty_server=info,petty_core=info,petty_vmm=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PETTY_LOG")
        .unwrap_or_else(|_| default_filter.into());
    let json = server
        .as_ref()
        .is_some_and(|c| c.server.log_format == petty_server::config::LogFormat::Json);
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
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
    match rt.block_on(cli::dispatch(cli, server)) {
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
