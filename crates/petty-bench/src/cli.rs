//! Argument definitions and dispatch: the subcommands and flags `petty
//! bench` had when it was part of `petty`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petty_config::Settings;

/// Petty's benchmarks: figures beside a baseline measured in the same run
/// (also run as `petty bench`).
#[derive(Parser)]
#[command(name = "petty-bench", version, propagate_version = true)]
pub struct Cli {
    /// A TOML config file read after /etc/petty/config.toml and
    /// ~/.config/petty/config.toml (default $PETTY_CONFIG; see
    /// petty.example.toml and `petty config show`).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Boot time of `petty run -- true` against bare QEMU booting the same
    /// kernel, and exec round trip against the guest's own spawn cost.
    Boot {
        /// Runs per measurement.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Warm-pool acquire time against a cold create, from the same run.
    Pool {
        /// Runs per measurement.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Create from a template against a cold boot, snapshot cost, forks, and their memory.
    Snapshot {
        /// Runs per measurement.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Children in the fork and branch measurements.
        #[arg(long, default_value_t = 10)]
        forks: usize,
        /// Also start this many sandboxes and have each run a command at
        /// the same moment (0: skip): every one must answer; the round
        /// trips' spread is reported (p99 / p50).
        #[arg(long, default_value_t = 0)]
        concurrency: usize,
        /// Instead: create from this template (`petty templates`) to first
        /// exec against the same from `base`, interleaved in one run.
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
    },
    /// Exec round trip through the REST API against the in-process round
    /// trip, and the throughput of many concurrent REST clients.
    Serve {
        /// Runs per measurement.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Concurrent clients in the throughput measurement.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Commands each client runs.
        #[arg(long, default_value_t = 10)]
        per_client: usize,
    },
    /// Three nodes (`petty serve`) behind a gateway: exec round trip
    /// through the gateway beside the same sent to the node, many clients'
    /// throughput and balance, and how soon a lost node is noticed.
    Gateway {
        /// Runs per measurement.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Concurrent clients in the throughput measurement.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Commands each client runs.
        #[arg(long, default_value_t = 10)]
        per_client: usize,
    },
    /// How soon a guest's power-off ends the command in flight, beside how
    /// soon an ordinary command's exit reaches the host.
    Halt {
        /// Runs (one sandbox each).
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Sandbox networks (needs root): create to first exec with `--network
    /// public` beside `none`; a download in the guest from a test host in a
    /// namespace of its own beside the host's; round trips through a
    /// published port beside a host-local echo server.
    Network {
        /// Creates of each kind (interleaved).
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Downloads of each kind.
        #[arg(long, default_value_t = 3)]
        downloads: usize,
        /// Size of each download, in MB (10^6 bytes).
        #[arg(long, default_value_t = 50)]
        megabytes: u64,
        /// Echo round trips of each kind.
        #[arg(long, default_value_t = 200)]
        round_trips: usize,
    },
    /// Start many idle sandboxes, check each answers, and report host memory per sandbox.
    Density {
        /// How many sandboxes.
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// Guest memory of each, in MiB.
        #[arg(long, default_value_t = 256)]
        memory_mib: u32,
    },
}

pub async fn dispatch(cli: Cli, s: &Settings) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        BenchCmd::Boot { runs } => crate::bench::boot(runs, cli.config.as_deref(), s).await,
        BenchCmd::Pool { runs } => crate::bench::pool(runs, s).await,
        BenchCmd::Snapshot {
            runs,
            template: Some(name),
            ..
        } => crate::bench::template(runs, &name, s).await,
        BenchCmd::Snapshot {
            runs,
            forks,
            concurrency,
            ..
        } => crate::bench::snapshot(runs, forks, concurrency, s).await,
        BenchCmd::Serve {
            runs,
            clients,
            per_client,
        } => crate::serve::serve(runs, clients, per_client, s).await,
        BenchCmd::Gateway {
            runs,
            clients,
            per_client,
        } => crate::gateway::gateway(runs, clients, per_client, s).await,
        BenchCmd::Halt { runs } => crate::bench::halt(runs, s).await,
        BenchCmd::Network {
            iterations,
            downloads,
            megabytes,
            round_trips,
        } => {
            let o = crate::network::Options {
                iterations,
                downloads,
                megabytes,
                round_trips,
            };
            crate::network::network(o, s).await
        }
        BenchCmd::Density { count, memory_mib } => {
            crate::bench::density(count, memory_mib, s).await
        }
    }
}
