//! Argument definitions and dispatch.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use petty_config::{Loaded, Override, Settings};
use petty_core::BackendKind;

/// Run untrusted code in microVMs.
#[derive(Parser)]
#[command(name = "petty", version, about, propagate_version = true)]
pub struct Cli {
    /// A TOML config file read after /etc/petty/config.toml and
    /// ~/.config/petty/config.toml (default $PETTY_CONFIG; see
    /// petty.example.toml and `petty config show`).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Run a command in a running sandbox, streaming its output; exits with
    /// its exit code (-it: on a terminal, as typed into; -d: detached).
    Exec(crate::manage::ExecArgs),
    /// Copy a regular file between the host and a sandbox: `petty cp ./a NAME:/root/a` or `petty cp NAME:/root/a ./a`.
    Cp(crate::manage::CpArgs),
    /// List sandboxes.
    Ls {
        /// Include sandboxes held by a warm pool.
        #[arg(long, short)]
        all: bool,
        /// One JSON object per sandbox (REST's sandbox shape), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// What each sandbox costs and does: how it started and its startup
    /// time, host CPU and memory (PSS, RSS), the guest's memory, disk,
    /// commands run, network bytes. Refreshes like `top` on a terminal.
    Stats(crate::stats::StatsArgs),
    /// Boot stopped sandboxes again on the disks their stop kept: every
    /// file they had, none of their processes.
    Start {
        /// Names or ids.
        #[arg(required = true)]
        sandboxes: Vec<String>,
    },
    /// Save sandboxes' memory, devices and disk to the data directory and
    /// end their VMs; `petty resume` (or any command for one) brings each
    /// back exactly, processes included, also after a reboot.
    Hibernate {
        /// Names or ids.
        #[arg(required = true)]
        sandboxes: Vec<String>,
    },
    /// Bring hibernated sandboxes back (or let paused ones run again).
    Resume {
        /// Names or ids.
        #[arg(required = true)]
        sandboxes: Vec<String>,
    },
    /// Shut sandboxes down cleanly; their records and disks stay for
    /// `petty start`, until `petty rm`.
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
        /// One JSON object per snapshot (REST's snapshot shape), for scripts.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: Option<SnapshotsCmd>,
    },
    /// Build templates: root file systems from a Dockerfile or an OCI image
    /// that sandboxes are created from (`--template NAME`).
    Template {
        #[command(subcommand)]
        cmd: crate::template::TemplateCmd,
    },
    /// List templates (name, size, created, last used, source);
    /// `petty templates rm NAME`, `petty templates prune`.
    Templates {
        /// One JSON object per template, for scripts.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: Option<crate::template::TemplatesCmd>,
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
    /// One REST (/v1) and MCP (/mcp) endpoint over many `petty serve`
    /// nodes: creates placed by load and template, every request routed to
    /// its sandbox's node. `petty gateway nodes` shows the nodes.
    Gateway(crate::gateway::GatewayArgs),
    /// Say what this host has and lacks for running sandboxes, and how to fix each gap.
    Doctor,
    /// A sandbox's network: what it may reach, its published ports, what it
    /// refused.
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// The effective settings and where each came from.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Benchmarks (figures beside a baseline measured in the same run):
    /// boot, pool, snapshot, serve, halt, density. Run by the `petty-bench`
    /// binary, found beside this one or on PATH; `petty bench --help` lists
    /// them and their flags.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Bench {
        /// The benchmark and its flags, given to `petty-bench` as they are.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print every key, its value and its source (default, a file, a
    /// variable, a flag).
    Show {
        /// One JSON object per key, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Mode, rules, published ports, counters and the latest refusals.
    Show {
        /// The sandbox's name or id.
        sandbox: String,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Publish a port of a running sandbox: GUEST_PORT[:HOST_PORT]; prints
    /// the host address.
    Publish {
        /// The sandbox's name or id.
        sandbox: String,
        /// GUEST_PORT[:HOST_PORT].
        port: petty_net::Publish,
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

/// Options of `petty serve` and `petty mcp`; each overrides the config
/// files and the environment (`PETTY_<SECTION>_<KEY>`).
#[derive(Args)]
pub struct ServerArgs {
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
    /// Also serve E2B's API here, for E2B's own SDKs (e2b.listen), e.g.
    /// 127.0.0.1:3000: set E2B_API_URL and E2B_SANDBOX_URL to http://ADDR.
    #[arg(long = "e2b-listen", value_name = "ADDR")]
    pub e2b_listen: Option<String>,
    /// Warm sandboxes to keep ready (pool.size; 0 turns the pool off).
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,
    /// Most sandboxes at once (limits.max_concurrent_sandboxes).
    #[arg(long, value_name = "N")]
    pub max_sandboxes: Option<usize>,
    /// On SIGTERM, keep sandboxes running or destroy them (server.on_shutdown).
    #[arg(long, value_name = "keep|destroy")]
    pub on_shutdown: Option<String>,
    /// State directory (paths.data_dir): one per node when several run on a host.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Run directory (paths.run_dir): one per node when several run on a host.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// These flags as settings, applied after every other source.
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        let text = |v: &str| toml::Value::String(v.to_string());
        if let Some(v) = &self.listen {
            out.push(Override::new("server.listen", text(v), "--listen"));
        }
        if let Some(v) = &self.backend {
            out.push(Override::new("backend.kind", text(v), "--backend"));
        }
        if let Some(v) = &self.e2b_listen {
            out.push(Override::new("e2b.listen", text(v), "--e2b-listen"));
        }
        if let Some(v) = self.pool_size {
            out.push(Override::parse("pool.size", &v.to_string(), "--pool-size"));
        }
        if let Some(v) = self.max_sandboxes {
            out.push(Override::parse(
                "limits.max_concurrent_sandboxes",
                &v.to_string(),
                "--max-sandboxes",
            ));
        }
        if let Some(v) = &self.on_shutdown {
            out.push(Override::new(
                "server.on_shutdown",
                text(v),
                "--on-shutdown",
            ));
        }
        for (key, dir, flag) in [
            ("paths.data_dir", &self.data_dir, "--data-dir"),
            ("paths.run_dir", &self.run_dir, "--run-dir"),
        ] {
            if let Some(d) = dir {
                out.push(Override::new(key, text(&d.display().to_string()), flag));
            }
        }
        for (key, values, flag) in [
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
                let list = values.iter().map(|v| text(v)).collect::<Vec<_>>();
                out.push(Override::new(key, toml::Value::Array(list), flag));
            }
        }
        out
    }
}

/// The VM a sandbox gets: shared by `petty run` and `petty create`.
#[derive(Args)]
pub struct VmOpts {
    /// Create from this template (`petty templates` lists them; default
    /// `base`, Petty's own image).
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// Guest memory in MiB (default: defaults.memory_mb, 256).
    #[arg(long, value_name = "N")]
    pub memory_mib: Option<u32>,
    /// Number of vCPUs (default: defaults.vcpu, 2).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Root disk size in MiB (default: defaults.disk_size_mb, else the image's
    /// size plus defaults.disk_free_mb, 2048 MiB of room to work); the guest's
    /// / grows to fill it. Sparse: host disk is spent only as the guest writes.
    #[arg(long, value_name = "N")]
    pub disk_mib: Option<u32>,
    /// VMM backend: qemu, firecracker or auto (default: backend.kind).
    #[arg(long, value_name = "KIND", value_parser = parse_backend)]
    pub backend: Option<Choice>,
    /// Network: none (only lo), public (the internet, never the host or the
    /// networks around it) or allow (only what --allow-host/--allow-cidr
    /// allow); default network.default.
    #[arg(long, value_name = "MODE")]
    pub network: Option<petty_net::NetworkMode>,
    /// With --network allow: a name that may resolve and be reached
    /// (example.com, *.example.com for the names below it, optionally
    /// :PORT; repeatable).
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// With --network allow: a block that may be reached (10.0.0.0/8,
    /// optionally :PORT; repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidrs: Vec<String>,
    /// Forward a host port (on network.publish_address, 127.0.0.1) to a
    /// guest port: GUEST_PORT[:HOST_PORT], the host's chosen when left out
    /// (repeatable).
    #[arg(long = "publish", short = 'p', value_name = "GUEST[:HOST]")]
    pub publish: Vec<petty_net::Publish>,
}

/// A backend named on the command line: `auto` or one backend.
#[derive(Debug, Clone, Copy)]
pub struct Choice(pub Option<BackendKind>);

fn parse_backend(s: &str) -> Result<Choice, String> {
    petty_core::backend_choice(s)
        .map(Choice)
        .map_err(|_| format!("{s:?} is not a backend; use qemu, firecracker or auto"))
}

impl VmOpts {
    /// A sandbox config builder with these sizes, the rest from `defaults.*`
    /// and guest assets from `paths.cache_dir`.
    pub fn builder(&self, s: &Settings) -> petty_core::SandboxConfigBuilder {
        let d = &s.defaults;
        let b = petty_core::SandboxConfig::builder()
            .memory_mib(self.memory_mib.unwrap_or(d.memory_mb))
            .vcpu_count(self.vcpus.unwrap_or(d.vcpu))
            .disk_free_mib(d.disk_free_mb)
            .assets_dir(s.paths.cache_dir.clone());
        let b = b.network(self.network_spec(s));
        let b = match &self.template {
            Some(t) => b.template(t.clone()),
            None => b,
        };
        match self.disk_mib.or(d.disk_size_mb) {
            Some(mib) => b.disk_size_mib(mib),
            None => b,
        }
    }

    /// The network asked for: the flags', the mode from network.default
    /// when none is given (allow when rules are, without a mode).
    pub fn network_spec(&self, s: &Settings) -> petty_net::NetworkSpec {
        let rules = !self.allow_hosts.is_empty() || !self.allow_cidrs.is_empty();
        let mode = match self.network {
            Some(m) => m,
            None if rules => petty_net::NetworkMode::Allow,
            None if !self.publish.is_empty()
                && s.network.default == petty_net::NetworkMode::None =>
            {
                petty_net::NetworkMode::Public
            }
            None => s.network.default,
        };
        petty_net::NetworkSpec {
            mode,
            allow_hosts: self.allow_hosts.clone(),
            allow_cidrs: self.allow_cidrs.clone(),
            publish: self.publish.clone(),
        }
    }

    /// The backend asked for: the flag's, else `backend.kind`.
    pub fn backend(&self, s: &Settings) -> Option<BackendKind> {
        match self.backend {
            Some(Choice(kind)) => kind,
            None => petty::settings::configured_backend(s),
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
    /// Boot the VM from its kernel instead of restoring the saved state of
    /// one that booted before (the image's template, made by the first run
    /// and kept in the data directory).
    #[arg(long)]
    pub cold: bool,
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
    /// Working directory in the guest (default: the template's, else /root).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Run as this user: NAME, UID, NAME:GROUP or UID:GID (default: the
    /// template's, else root).
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Forward this process's stdin to the command.
    #[arg(long, short = 'i', visible_alias = "interactive")]
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
        req.user = self.user;
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
    /// True for the long-running commands (`serve`, `mcp`), which log what
    /// they do.
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, Cmd::Serve(_) | Cmd::Mcp(_))
    }

    /// `petty bench ARGS`: what to run instead of a command of this binary's.
    pub fn bench(&self) -> Option<Bench> {
        match &self.cmd {
            Cmd::Bench { args } => Some(Bench {
                config: self.config.clone(),
                args: args.clone(),
            }),
            _ => None,
        }
    }

    /// The settings for this command: every source, this command's flags last.
    pub fn load_settings(&self) -> anyhow::Result<Loaded> {
        let flags = match &self.cmd {
            Cmd::Serve(a) | Cmd::Mcp(a) => a.overrides(),
            Cmd::Gateway(a) => a.overrides(),
            _ => Vec::new(),
        };
        let loaded = petty::settings::load(self.config.clone(), flags)?;
        if self.is_daemon() {
            petty_server::check_settings(&loaded.settings)?;
        }
        Ok(loaded)
    }
}

pub async fn dispatch(cli: Cli, loaded: Loaded) -> anyhow::Result<ExitCode> {
    let s = &loaded.settings;
    match cli.cmd {
        Cmd::Serve(_) => {
            let listener = petty_server::bind(s).await?;
            let (manager, notice) = petty::settings::manager(s, true).await?;
            eprintln!("{notice}");
            let builder = petty::settings::template_builder(s, manager.clone());
            let service = petty_server::start_service(manager, s, true, Some(builder)).await?;
            petty_server::serve(listener, service).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Mcp(_) => {
            let (manager, notice) = petty::settings::manager(s, true).await?;
            tracing::info!("{notice}");
            // No warm pool: the daemon keeps one; this creates from templates.
            let builder = petty::settings::template_builder(s, manager.clone());
            let service = petty_server::start_service(manager, s, false, Some(builder)).await?;
            petty_server::serve_stdio(service).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gateway(args) => crate::gateway::gateway(args, s).await,
        Cmd::Config {
            cmd: ConfigCmd::Show { json },
        } => config_show(&loaded, json),
        Cmd::Run(args) => crate::run::run(args, s).await,
        Cmd::Create(args) => crate::manage::create(args, s).await,
        Cmd::Exec(args) => crate::manage::exec(args, s).await,
        Cmd::Cp(args) => crate::manage::cp(args, s).await,
        Cmd::Ls { all, json } => crate::manage::ls(all, json, s).await,
        Cmd::Stats(args) => crate::stats::stats(args, s).await,
        Cmd::Start { sandboxes } => crate::manage::start(sandboxes, s).await,
        Cmd::Hibernate { sandboxes } => crate::manage::hibernate(sandboxes, s).await,
        Cmd::Resume { sandboxes } => crate::manage::resume(sandboxes, s).await,
        Cmd::Stop { sandboxes } => crate::manage::stop(sandboxes, true, s).await,
        Cmd::Kill { sandboxes } => crate::manage::stop(sandboxes, false, s).await,
        Cmd::Rm { force, sandboxes } => crate::manage::rm(sandboxes, force, s).await,
        Cmd::Snapshot { sandbox, name } => crate::manage::snapshot(sandbox, name, s).await,
        Cmd::Restore { snapshot, name } => crate::manage::restore(snapshot, name, s).await,
        Cmd::Fork { source, count } => crate::manage::fork(source, count, s).await,
        Cmd::Snapshots { json, cmd: None } => crate::manage::snapshots(json, s).await,
        Cmd::Snapshots {
            cmd: Some(SnapshotsCmd::Rm { names }),
            ..
        } => crate::manage::snapshots_rm(names, s).await,
        Cmd::Template {
            cmd: crate::template::TemplateCmd::Build(args),
        } => crate::template::build(args, s).await,
        Cmd::Templates { json, cmd: None } => crate::template::list(json, s).await,
        Cmd::Templates {
            cmd: Some(crate::template::TemplatesCmd::Rm { names }),
            ..
        } => crate::template::remove(names, s).await,
        Cmd::Templates {
            cmd: Some(crate::template::TemplatesCmd::Prune { json }),
            ..
        } => crate::template::prune(json, s).await,
        Cmd::Image { cmd } => image(cmd, s).await,
        Cmd::Doctor => crate::doctor::doctor(s).await,
        Cmd::Network {
            cmd: NetworkCmd::Show { sandbox, json },
        } => crate::manage::network_show(sandbox, json, s).await,
        Cmd::Network {
            cmd: NetworkCmd::Publish { sandbox, port },
        } => crate::manage::network_publish(sandbox, port, s).await,
        // `main` runs it before loading the settings: petty-bench loads them.
        Cmd::Bench { args } => Ok(Bench {
            config: cli.config,
            args,
        }
        .exec()),
    }
}

/// `petty config show`: every key, its source and its value.
fn config_show(loaded: &Loaded, json: bool) -> anyhow::Result<ExitCode> {
    match print_settings(loaded, json) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => Ok(r.map(|()| ExitCode::SUCCESS)?),
    }
}

fn print_settings(loaded: &Loaded, json: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let rows = loaded.rows();
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({ "key": r.key, "value": r.value, "source": r.source }))
            .collect();
        let text = serde_json::to_string_pretty(&list).expect("plain data");
        writeln!(out, "{text}")?;
    } else {
        let key_w = rows.iter().map(|r| r.key.len()).max().unwrap_or(3);
        let src_w = rows.iter().map(|r| r.source.len()).max().unwrap_or(6);
        writeln!(out, "{:key_w$}  {:src_w$}  VALUE", "KEY", "SOURCE")?;
        for r in &rows {
            writeln!(
                out,
                "{:key_w$}  {:src_w$}  {}",
                r.key,
                r.source,
                r.value_text()
            )?;
        }
    }
    out.flush()
}

async fn image(cmd: ImageCmd, s: &Settings) -> anyhow::Result<ExitCode> {
    let assets = match cmd {
        ImageCmd::Build { quiet } => petty::settings::ensure_assets(s, !quiet).await?,
        ImageCmd::Path => petty::settings::image_builder(s).locate()?,
    };
    println!("kernel  {}", assets.kernel.display());
    println!("vmlinux {}", assets.vmlinux.display());
    println!("rootfs  {}", assets.rootfs.display());
    Ok(ExitCode::SUCCESS)
}

/// `petty bench ARGS`, which the `petty-bench` binary runs: the benchmarks
/// are apart from this binary, so that it carries no HTTP client.
pub struct Bench {
    config: Option<PathBuf>,
    args: Vec<OsString>,
}

/// What `petty bench` runs, and how to get it when it is missing.
const BENCH_BIN: &str = "petty-bench";

impl Bench {
    /// Replaces this process with `petty-bench [--config FILE] ARGS`, found
    /// beside this binary or on `$PATH`, so its exit status (or the signal
    /// that ended it) is this command's. Returns only on failure.
    pub fn exec(self) -> ExitCode {
        use std::os::unix::process::CommandExt as _;
        let env = petty_config::env::Env::process();
        let search_path: Vec<PathBuf> = env
            .get(petty_config::env::PATH)
            .map(|p| std::env::split_paths(p).collect())
            .unwrap_or_default();
        let Some(bin) = petty::exe::find(BENCH_BIN, &search_path) else {
            let here = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.display().to_string()))
                .unwrap_or_else(|| "this binary's directory".into());
            eprintln!(
                "petty: error: `petty bench` runs the `{BENCH_BIN}` binary, and there is none in {here} or on PATH\n  \
                 hint: build it beside petty with `cargo build --release -p {BENCH_BIN}` (or put it on PATH)"
            );
            return ExitCode::FAILURE;
        };
        let mut cmd = std::process::Command::new(&bin);
        // Its usage lines then read `petty bench …`, as it was called.
        cmd.arg0("petty bench");
        if let Some(file) = self.config {
            cmd.arg("--config").arg(file);
        }
        cmd.args(self.args);
        let err = cmd.exec();
        eprintln!("petty: error: running {}: {err}", bin.display());
        ExitCode::FAILURE
    }
}
