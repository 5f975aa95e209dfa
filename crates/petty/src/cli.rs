//! Argument definitions and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Run untrusted code in microVMs.
#[derive(Parser)]
#[command(name = "petty", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a sandbox, run one command in it with live output, exit with its
    /// exit code, and destroy the sandbox.
    Run(RunArgs),
    /// Create a sandbox that keeps running after this command returns; prints its name.
    Create(crate::manage::CreateArgs),
    /// Run a command in a running sandbox, streaming its output; exits with its exit code.
    Exec(crate::manage::ExecArgs),
    /// Copy a regular file between the host and a sandbox: `petty cp ./a NAME:/root/a` or `petty cp NAME:/root/a ./a`.
    Cp(crate::manage::CpArgs),
    /// List sandboxes.
    Ls {
        /// Include sandboxes held by a warm pool.
        #[arg(long, short)]
        all: bool,
    },
    /// Shut sandboxes down cleanly; their records stay until `petty rm`.
    Stop {
        /// Names or ids.
        #[arg(required = true)]
        sandboxes: Vec<String>,
    },
    /// Kill sandboxes' VMs at once; their records stay until `petty rm`.
    Kill {
        /// Names or ids.
        #[arg(required = true)]
        sandboxes: Vec<String>,
    },
    /// Remove stopped sandboxes (with -f, running ones too).
    Rm {
        /// Remove even if running.
        #[arg(long, short)]
        force: bool,
        /// Names or ids.
        #[arg(required = true)]
        sandboxes: Vec<String>,
    },
    /// Snapshot a running sandbox (memory, devices, disk) under a name.
    Snapshot {
        /// The sandbox's name or id.
        sandbox: String,
        /// Name for the snapshot.
        name: String,
    },
    /// Start a new sandbox from a snapshot; prints its name.
    Restore {
        /// The snapshot's name.
        snapshot: String,
        /// Name for the new sandbox.
        #[arg(long)]
        name: Option<String>,
    },
    /// Start N new sandboxes from a snapshot, or from a running sandbox (snapshotted first).
    Fork {
        /// A snapshot's name, or a running sandbox's name or id.
        source: String,
        /// How many children.
        #[arg(long, short = 'n', default_value_t = 1)]
        count: usize,
    },
    /// List snapshots (`petty snapshots rm NAME` deletes one).
    Snapshots {
        #[command(subcommand)]
        cmd: Option<SnapshotsCmd>,
    },
    /// Build or locate the guest kernel and root filesystem.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Run the daemon: REST API under /v1, MCP over streamable HTTP at /mcp,
    /// /metrics, /healthz, /readyz. Stops on SIGTERM or Ctrl-C.
    Serve(ServerArgs),
    /// Serve MCP over stdin/stdout, for a desktop or IDE agent to launch.
    Mcp(ServerArgs),
    /// Say what this host has and lacks for running sandboxes, and how to fix each gap.
    Doctor,
    /// Benchmarks (figures beside a baseline measured in the same run).
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum SnapshotsCmd {
    /// Delete snapshots (refused while a sandbox or snapshot depends on one).
    Rm {
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build whatever guest asset is missing (kernel, rootfs); a no-op when all are cached.
    Build {
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print the paths of the cached assets (fails if they are not built).
    Path,
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
        /// Children in the fork measurement.
        #[arg(long, default_value_t = 10)]
        forks: usize,
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
    /// How soon a guest's power-off ends the command in flight, beside how
    /// soon an ordinary command's exit reaches the host.
    Halt {
        /// Runs (one sandbox each).
        #[arg(long, default_value_t = 10)]
        runs: usize,
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

/// Options of `petty serve` and `petty mcp`; each overrides the config
/// file and the environment (`PETTY_<SECTION>_<KEY>`).
#[derive(Args)]
pub struct ServerArgs {
    /// TOML config file (see petty.example.toml).
    #[arg(long, short, value_name = "FILE", env = "PETTY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (server.listen), e.g. 127.0.0.1:8080; port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Accept this bearer API key (server.api_keys; repeatable).
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Accept requests naming this host besides the listen address, loopback
    /// and localhost (server.allowed_hosts; repeatable).
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
    /// Let web pages from this origin call the daemon, with CORS, e.g.
    /// https://app.example.com (server.allowed_origins; repeatable).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// VMM backend (backend.kind): auto, qemu or firecracker.
    #[arg(long, value_name = "KIND")]
    pub backend: Option<String>,
    /// Warm sandboxes to keep ready (pool.size; 0 turns the pool off).
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,
    /// Most sandboxes at once (limits.max_concurrent_sandboxes).
    #[arg(long, value_name = "N")]
    pub max_sandboxes: Option<usize>,
    /// On SIGTERM, keep sandboxes running or destroy them (server.on_shutdown).
    #[arg(long, value_name = "keep|destroy")]
    pub on_shutdown: Option<String>,
}

impl ServerArgs {
    /// The configuration: file, then environment, then these flags.
    pub fn load(&self) -> anyhow::Result<petty_server::Config> {
        use petty_server::config::{env_overrides, Override};
        let mut overrides = env_overrides(std::env::vars());
        let mut flag = |key: &str, raw: String, name: &str| {
            overrides.push(Override::parse(key, &raw, name));
        };
        if let Some(v) = &self.listen {
            flag("server.listen", format!("{v:?}"), "--listen");
        }
        if let Some(v) = &self.backend {
            flag("backend.kind", format!("{v:?}"), "--backend");
        }
        if let Some(v) = self.pool_size {
            flag("pool.size", v.to_string(), "--pool-size");
        }
        if let Some(v) = self.max_sandboxes {
            flag(
                "limits.max_concurrent_sandboxes",
                v.to_string(),
                "--max-sandboxes",
            );
        }
        if let Some(v) = &self.on_shutdown {
            flag("server.on_shutdown", format!("{v:?}"), "--on-shutdown");
        }
        for (key, values, name) in [
            ("server.api_keys", &self.api_keys, "--api-key"),
            (
                "server.allowed_hosts",
                &self.allowed_hosts,
                "--allowed-host",
            ),
            (
                "server.allowed_origins",
                &self.allowed_origins,
                "--allowed-origin",
            ),
        ] {
            if !values.is_empty() {
                overrides.push(Override {
                    key: key.into(),
                    value: toml::Value::Array(
                        values
                            .iter()
                            .map(|v| toml::Value::String(v.clone()))
                            .collect(),
                    ),
                    source: name.into(),
                });
            }
        }
        Ok(petty_server::Config::load(
            self.config.as_deref(),
            &overrides,
        )?)
    }
}

/// The VM a sandbox gets: shared by `petty run` and `petty create`.
#[derive(Args)]
pub struct VmOpts {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub memory_mib: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub vcpus: u32,
    /// Root disk size in MiB (default: the image's size plus 2048 MiB of room to
    /// work); the guest's / grows to fill it. Sparse: host disk is spent only as the guest writes.
    #[arg(long, value_name = "N")]
    pub disk_mib: Option<u32>,
    /// VMM backend: qemu, firecracker or auto (default: PETTY_BACKEND, else auto).
    #[arg(long, value_name = "KIND")]
    pub backend: Option<String>,
}

impl VmOpts {
    /// A sandbox config builder with these sizes.
    pub fn builder(&self) -> petty_core::SandboxConfigBuilder {
        let b = petty_core::SandboxConfig::builder()
            .memory_mib(self.memory_mib)
            .vcpu_count(self.vcpus);
        match self.disk_mib {
            Some(d) => b.disk_size_mib(d),
            None => b,
        }
    }
}

/// Arguments of `petty run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmOpts,
    #[command(flatten)]
    pub exec: ExecOpts,
    /// Run this Python code (python3 -c).
    #[arg(long, value_name = "CODE", conflicts_with_all = ["sh", "command"])]
    pub python: Option<String>,
    /// Run this shell script (sh -c).
    #[arg(long, value_name = "SCRIPT", conflicts_with = "command")]
    pub sh: Option<String>,
    /// Guest kernel to boot instead of the built one.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Root filesystem image instead of the built one.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How to run a command: shared by `petty run` and `petty exec`.
#[derive(Args)]
pub struct ExecOpts {
    /// Kill the command (and everything it started) after this many seconds; exit code 124.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Set an environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (default /root).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Forward this process's stdin to the command.
    #[arg(long, short = 'i')]
    pub stdin: bool,
}

impl ExecOpts {
    /// The request that runs `argv` with these options.
    pub fn request(self, argv: Vec<String>) -> anyhow::Result<petty_core::ExecRequest> {
        let timeout_ms = match self.timeout {
            Some(t) if !(t > 0.0 && t.is_finite()) => {
                anyhow::bail!("--timeout {t} must be a positive number of seconds")
            }
            Some(t) => Some((t * 1000.0).ceil() as u64),
            None => None,
        };
        let mut req = petty_core::ExecRequest::argv(argv);
        req.env = self.env;
        req.cwd = self.cwd;
        req.stdin = self.stdin;
        req.timeout_ms = timeout_ms;
        Ok(req)
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl Cli {
    /// For `serve` and `mcp`: the loaded configuration (its log format
    /// decides how logging is set up, before anything runs).
    pub fn server_config(&self) -> Option<anyhow::Result<petty_server::Config>> {
        match &self.cmd {
            Cmd::Serve(a) | Cmd::Mcp(a) => Some(a.load()),
            _ => None,
        }
    }
}

pub async fn dispatch(cli: Cli, server: Option<petty_server::Config>) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve(_) => {
            petty_server::serve(server.expect("loaded in main")).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Mcp(_) => {
            petty_server::serve_stdio(server.expect("loaded in main")).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(args) => crate::run::run(args).await,
        Cmd::Create(args) => crate::manage::create(args).await,
        Cmd::Exec(args) => crate::manage::exec(args).await,
        Cmd::Cp(args) => crate::manage::cp(args).await,
        Cmd::Ls { all } => crate::manage::ls(all).await,
        Cmd::Stop { sandboxes } => crate::manage::stop(sandboxes, true).await,
        Cmd::Kill { sandboxes } => crate::manage::stop(sandboxes, false).await,
        Cmd::Rm { force, sandboxes } => crate::manage::rm(sandboxes, force).await,
        Cmd::Snapshot { sandbox, name } => crate::manage::snapshot(sandbox, name).await,
        Cmd::Restore { snapshot, name } => crate::manage::restore(snapshot, name).await,
        Cmd::Fork { source, count } => crate::manage::fork(source, count).await,
        Cmd::Snapshots { cmd: None } => crate::manage::snapshots().await,
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Rm { names }),
        } => crate::manage::snapshots_rm(names).await,
        Cmd::Image { cmd } => image(cmd).await,
        Cmd::Doctor => crate::doctor::doctor().await,
        Cmd::Bench { cmd } => match cmd {
            BenchCmd::Boot { runs } => crate::bench::boot(runs).await,
            BenchCmd::Pool { runs } => crate::bench::pool(runs).await,
            BenchCmd::Snapshot { runs, forks } => crate::bench::snapshot(runs, forks).await,
            BenchCmd::Serve {
                runs,
                clients,
                per_client,
            } => crate::bench_serve::serve(runs, clients, per_client).await,
            BenchCmd::Halt { runs } => crate::bench::halt(runs).await,
            BenchCmd::Density { count, memory_mib } => {
                crate::bench::density(count, memory_mib).await
            }
        },
    }
}

async fn image(cmd: ImageCmd) -> anyhow::Result<ExitCode> {
    let assets = match cmd {
        ImageCmd::Build { quiet } => ensure_assets(!quiet).await?,
        ImageCmd::Path => petty_image::ImageBuilder::new(petty_image::cache_dir()).locate()?,
    };
    println!("kernel  {}", assets.kernel.display());
    println!("vmlinux {}", assets.vmlinux.display());
    println!("rootfs  {}", assets.rootfs.display());
    Ok(ExitCode::SUCCESS)
}

/// Builds any missing guest asset (progress on stderr) and returns them all.
pub async fn ensure_assets(progress: bool) -> anyhow::Result<petty_image::Assets> {
    let builder = petty_image::ImageBuilder::new(petty_image::cache_dir()).with_progress(progress);
    let assets = tokio::task::spawn_blocking(move || builder.ensure())
        .await
        .context("image build task")??;
    Ok(assets)
}
