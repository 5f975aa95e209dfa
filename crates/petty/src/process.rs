//! What both of Petty's binaries (`petty`, `petty-bench`) do around their
//! command: logging set up from the settings' variables, the async
//! runtime, and an error turned into its message, its causes and an exit
//! code.

use std::future::Future;
use std::process::ExitCode;

use petty_config::env::{self, Env};

/// Logs to stderr, filtered by `PETTY_LOG`, else `RUST_LOG`, else
/// `default_filter`; colour on a terminal unless `NO_COLOR`; JSON lines
/// when `json`.
pub fn init_logging(default_filter: &str, json: bool) {
    let env = Env::process();
    let filter = [env::PETTY_LOG, env::RUST_LOG]
        .iter()
        .find_map(|name| env.text(name))
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| default_filter.into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && env.get(env::NO_COLOR).is_none(),
        );
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

/// Runs `main` on a multi-threaded runtime; its exit code, or on an error
/// `PROGRAM: error: …` with each cause on stderr and failure.
pub fn run(program: &str, main: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
