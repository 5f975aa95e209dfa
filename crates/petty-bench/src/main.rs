//! `petty-bench`: Petty's benchmarks, each printing figures beside a
//! baseline measured in the same run (they never assert). A binary of its
//! own so that `petty` carries no HTTP client; `petty bench ARGS` runs it.
//! Loads the settings as `petty` does (`--config`, `PETTY_*`, the files).

mod bench;
mod cli;
mod gateway;
mod network;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let loaded = match petty::settings::load(cli.config.clone(), Vec::new()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("petty-bench: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // As `petty`'s commands: only what went wrong.
    petty::process::init_logging("warn", false);
    petty::process::run("petty-bench", cli::dispatch(cli, &loaded.settings))
}
