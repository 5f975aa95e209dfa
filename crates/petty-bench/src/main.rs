//! `petty-bench`: Petty's benchmarks, each printing figures beside a
//! baseline measured in the same run (they never assert). A binary of its
//! own so that `petty` carries no HTTP client; `petty bench ARGS` runs it.
//! Loads the settings as `petty` does (`--config`, `PETTY_*`, the files).

mod bench;
mod cli;
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
    let env = petty_config::env::Env::process();
    let filter = [petty_config::env::PETTY_LOG, petty_config::env::RUST_LOG]
        .iter()
        .find_map(|name| env.text(name))
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && env.get(petty_config::env::NO_COLOR).is_none(),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("petty-bench: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::dispatch(cli, &loaded.settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petty-bench: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
