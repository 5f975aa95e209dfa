//! Sandboxes that outlive the command that made them: `create`, `exec`,
//! `cp`, `ls`, `stop`, `kill`, `rm`. State lives in SQLite under the data
//! directory; every command opens a manager on it, which also reaps what
//! expired or died since the last one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use petty::settings::ensure_assets;
use petty_config::Settings;
use petty_core::{ClientError, CoreError, FileType, SandboxManager, SandboxState};
use tokio::io::AsyncWriteExt;

use crate::cli::ExecOpts;

/// Opens the manager on the configured data and run directories. No
/// standby VMMs: a CLI command ends right after its create, and one would
/// die unused with it.
pub async fn manager(s: &Settings) -> anyhow::Result<SandboxManager> {
    Ok(petty::settings::manager(s, false).await?.0)
}

/// Arguments of `petty create`.
#[derive(Args)]
pub struct CreateArgs {
    /// Name to refer to it by (default: derived from its id).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub vm: crate::cli::VmOpts,
    /// Destroy it this many seconds after creation.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<f64>,
    /// Destroy it after this many seconds without an exec or file operation.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// What the idle timeout does: destroy, stop (keeping its disk for
    /// `petty start`) or hibernate (keeping its memory too; its next use
    /// resumes it). Default: limits.on_idle.
    #[arg(long, value_name = "ACTION")]
    pub on_idle: Option<petty_core::IdleAction>,
}

fn secs(flag: &str, v: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match v {
        Some(s) if !(s > 0.0 && s.is_finite()) => {
            bail!("--{flag} {s} must be a positive number of seconds")
        }
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
        None => Ok(None),
    }
}

pub async fn create(args: CreateArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let mut b = args.vm.builder(s).owner("cli");
    if let Some(n) = args.name {
        b = b.name(n);
    }
    if let Some(crate::cli::Choice(k)) = args.vm.backend {
        b = b.backend(k);
    }
    if let Some(t) = secs("ttl", args.ttl)? {
        b = b.ttl(t);
    }
    if let Some(t) = secs("idle-timeout", args.idle_timeout)? {
        b = b.idle_timeout(t);
    }
    if let Some(action) = args.on_idle {
        b = b.on_idle(action);
    }
    let config = b.build()?;
    let (vmm, notice) = petty::settings::backend(s, args.vm.backend(s))?;
    vmm.check()?;
    ensure_assets(s, true).await?;
    eprintln!("{notice}");
    let manager = manager(s).await?;
    let id = manager.create(config).await?;
    let info = manager.info(&id.to_string()).await?;
    say_published(&info, s);
    println!("{}", info.name);
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `petty exec`.
#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub exec: ExecOpts,
    /// Run the command on a terminal in the sandbox, of this terminal's
    /// size (following it when it is resized); its output comes as stdout.
    /// With -i (`-it`), what you type goes to it, this terminal raw
    /// meanwhile, as with `docker exec -it`.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Start the command detached and return at once, printing its pid in
    /// the sandbox: it keeps running after this command exits, in a session
    /// of its own, with stdin, stdout and stderr on /dev/null (redirect
    /// inside the command to keep its output). --timeout still ends it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// With -d: print {"pid": N} instead of the bare pid, for scripts.
    #[arg(long, requires = "detach")]
    pub json: bool,
    /// The sandbox's name or id.
    pub sandbox: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How `petty exec` runs its command.
#[derive(Clone, Copy)]
enum ExecMode {
    /// Pipes: stdout and stderr apart, stdin with -i.
    Attached,
    /// On a guest terminal (-t), typed into with -i.
    Terminal { interactive: bool },
    /// Started and left running (-d); its pid printed.
    Detached { json: bool },
}

impl ExecArgs {
    /// The mode the flags ask for, refusing what does not go together
    /// before anything starts.
    fn mode(&self) -> anyhow::Result<ExecMode> {
        let interactive = self.exec.stdin;
        if self.detach {
            if interactive || self.tty {
                bail!(
                    "petty exec -d starts the command detached, with stdin, stdout and stderr on /dev/null: it takes neither -i nor -t\n\
                     hint: drop -d to run the command attached (petty exec -it {} -- ...), or drop -i/-t",
                    self.sandbox
                );
            }
            return Ok(ExecMode::Detached { json: self.json });
        }
        if self.tty {
            crate::terminal::check(interactive)?;
            return Ok(ExecMode::Terminal { interactive });
        }
        Ok(ExecMode::Attached)
    }
}

/// Runs the command as `mode` says; the exit code for this process.
async fn run_exec(
    sandbox: &petty_core::Sandbox,
    req: petty_core::ExecRequest,
    mode: ExecMode,
) -> anyhow::Result<u8> {
    match mode {
        ExecMode::Attached => crate::run::stream(sandbox, req).await,
        ExecMode::Terminal { interactive } => {
            let timeout_ms = req.timeout_ms;
            let status = crate::terminal::run(sandbox, req, interactive).await?;
            Ok(crate::run::exit_code(&status, timeout_ms))
        }
        ExecMode::Detached { json } => {
            let pid = sandbox.exec_detached(req).await?;
            if json {
                println!("{}", serde_json::json!({ "pid": pid }));
            } else {
                println!("{pid}");
            }
            Ok(0)
        }
    }
}

pub async fn exec(args: ExecArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let mode = args.mode()?;
    let req = args.exec.request(args.command)?;
    let manager = manager(s).await?;
    let sandbox = manager.get(&args.sandbox).await?;
    let id = sandbox.id().to_string();
    // A signal ends the command's stream (and with it any raw mode of the
    // local terminal) before this returns its exit code.
    let outcome = tokio::select! {
        r = run_exec(&sandbox, req, mode) => r,
        code = crate::run::interrupted() => Ok(code),
    };
    // Record the use for idle timeouts, or the VM's end if it ended.
    let recorded = manager.with_sandbox_async(&id, |_| async { Ok(()) }).await;
    if let Some(cause) = sandbox.died() {
        return Err(petty_core::CoreError::Died {
            id: args.sandbox,
            cause,
        }
        .into());
    }
    let code = outcome?;
    recorded?;
    Ok(ExitCode::from(code))
}

/// `NAME:/path` or a host path.
enum Place {
    Host(std::path::PathBuf),
    Guest { sandbox: String, path: String },
}

fn place(s: &str) -> Place {
    match s.split_once(':') {
        Some((sb, path)) if !sb.is_empty() && !sb.contains('/') => Place::Guest {
            sandbox: sb.to_string(),
            path: path.to_string(),
        },
        _ => Place::Host(s.into()),
    }
}

/// What `petty cp` copies from a sandbox unless told otherwise: the
/// daemon's `limits.max_download_mib` default, so a guest file that never
/// ends (or lies about its size) cannot fill the host's disk.
pub const DEFAULT_MAX_COPY: u64 = 4 << 30;

/// Arguments of `petty cp`.
#[derive(Args)]
pub struct CpArgs {
    /// Source: a host path or NAME:/path.
    pub src: String,
    /// Destination: a host path (an existing directory takes the source's
    /// name) or NAME:/path.
    pub dst: String,
    /// Largest file to copy from a sandbox, counted as it arrives: bytes,
    /// or with a K, M, G or T suffix (powers of 1024). Default 4G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "no_limit")]
    pub max_size: Option<u64>,
    /// Copy from a sandbox whatever the file's size.
    #[arg(long)]
    pub no_limit: bool,
}

/// `1048576`, `512K`, `10M`, `4G`, `1T` (also `4GiB`, `4gb`): powers of 1024.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; give bytes, or e.g. 512K, 10M, 4G"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `4.0 GiB`.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub async fn cp(args: CpArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let limit = match (args.max_size, args.no_limit) {
        (_, true) => None,
        (Some(n), false) => Some(n),
        (None, false) => Some(DEFAULT_MAX_COPY),
    };
    match (place(&args.src), place(&args.dst)) {
        (Place::Host(from), Place::Guest { sandbox, path }) => {
            if args.max_size.is_some() || args.no_limit {
                bail!("--max-size and --no-limit apply to copies from a sandbox; a copy into one is bounded by its free disk");
            }
            copy_in(&from, &sandbox, &path, s).await
        }
        (Place::Guest { sandbox, path }, Place::Host(to)) => {
            copy_out(&sandbox, &path, &to, limit, s).await
        }
        _ => bail!("one side must be a sandbox path (NAME:/path) and the other a host path\nhint: petty cp ./file.txt mybox:/root/file.txt"),
    }
}

/// Host to guest: the file streams in; the guest renames it into place
/// only once it is whole.
async fn copy_in(
    from: &std::path::Path,
    sandbox: &str,
    path: &str,
    s: &Settings,
) -> anyhow::Result<ExitCode> {
    let file = tokio::fs::File::open(from)
        .await
        .with_context(|| format!("opening {}", from.display()))?;
    let md = file.metadata().await?;
    if !md.is_file() {
        bail!(
            "{} is {}, not a regular file; petty cp copies regular files only",
            from.display(),
            host_kind(&md)
        );
    }
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        md.permissions().mode() & 0o7777
    };
    let manager = manager(s).await?;
    let sb = manager.get(sandbox).await?;
    let n = sb.write_file_from(path, file, Some(mode)).await?;
    eprintln!("petty: copied {n} bytes to {sandbox}:{path}");
    Ok(ExitCode::SUCCESS)
}

fn host_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Guest to host: into `.NAME.petty-partial.PID` beside the destination,
/// renamed over it when whole; removed on error and on SIGINT, SIGTERM or
/// SIGHUP (exit 128 + n, as the shell's). Partials that killed copies left
/// for the same destination are removed first.
async fn copy_out(
    sandbox: &str,
    path: &str,
    to: &std::path::Path,
    limit: Option<u64>,
    s: &Settings,
) -> anyhow::Result<ExitCode> {
    let to = if to.is_dir() {
        let name = std::path::Path::new(path)
            .file_name()
            .with_context(|| format!("{sandbox}:{path} does not name a file"))?;
        to.join(name)
    } else {
        to.to_path_buf()
    };
    for stale in crate::partial::sweep_stale(&to) {
        eprintln!(
            "petty: removed {}, left by a copy that was killed",
            stale.display()
        );
    }
    let manager = manager(s).await?;
    let sb = manager.get(sandbox).await?;
    let what = format!("{sandbox}:{path}");
    // Refused before anything is written when the guest says so; the
    // limit is also counted while the file streams (a guest may lie).
    let stat = sb.stat_target(path).await?;
    if stat.is_dir {
        bail!("{what} is a directory; petty cp copies single files");
    }
    if !matches!(stat.file_type, FileType::File | FileType::Unknown) {
        bail!(
            "{what} is {}, not a regular file; petty cp copies regular files only\n\
             hint: read part of it with `petty exec {sandbox} -- head -c 1048576 {path}`",
            stat.file_type.describe()
        );
    }
    let over = |why: String, limit: u64| {
        anyhow::anyhow!(
            "{what} {why}, more than petty cp's limit of {}; pass --max-size with more, or --no-limit",
            human(limit)
        )
    };
    if let Some(limit) = limit.filter(|l| stat.size > *l) {
        return Err(over(format!("is {}", human(stat.size)), limit));
    }

    let mut signals = crate::run::Signals::new()?;
    let (partial, file) = crate::partial::Partial::create(&to)
        .with_context(|| format!("creating a partial file beside {}", to.display()))?;
    let mut file = tokio::fs::File::from_std(file);
    let copy = async {
        let n = sb
            .read_file_into(path, &mut file, limit.unwrap_or(u64::MAX))
            .await?;
        file.flush().await?;
        anyhow::Ok(n)
    };
    let copied = tokio::select! {
        r = copy => r,
        code = signals.recv_quietly() => {
            eprintln!(
                "petty: interrupted; removing the partial copy {}",
                partial.path().display()
            );
            drop(partial);
            return Ok(ExitCode::from(code));
        }
    };
    let n = match copied {
        Ok(n) => n,
        Err(e) => {
            drop(partial);
            return Err(match (e.downcast_ref::<CoreError>(), limit) {
                (Some(CoreError::Rpc(ClientError::TooLarge { .. })), Some(limit)) => over(
                    "sent more than it said it had (it grew, or the guest lied)".into(),
                    limit,
                ),
                _ => e,
            });
        }
    };
    partial
        .commit()
        .with_context(|| format!("renaming the partial file to {}", to.display()))?;
    eprintln!("petty: copied {n} bytes from {what}");
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(all: bool, json: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    // Lifetimes are enforced by whichever petty process runs: this one, now.
    manager.reap_now().await?;
    if json {
        for r in manager.list().await? {
            if r.pooled && !all {
                continue;
            }
            let view = petty_server::service::view_of(&manager, r);
            println!("{}", serde_json::to_string(&view)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = petty_core::store::now_ms();
    println!(
        "{:<20} {:<36} {:<10} {:>6} {:>5} {:>8} {:>8} {:>8}  {:<20} {:>8}  {:<7} PORTS",
        "NAME", "ID", "STATE", "MEM", "VCPUS", "DISK", "AGE", "EXPIRES", "OWNER", "PID", "NETWORK"
    );
    let secs = |ms: i64| Duration::from_millis(ms.max(0) as u64).as_secs();
    for r in manager.list().await? {
        if r.pooled && !all {
            continue;
        }
        let expires = match r.expires_at_ms() {
            Some(at) if r.state.has_vm() => format!("{}s", secs(at - now)),
            _ => "-".into(),
        };
        // One word, so the columns split on whitespace.
        let owner = match (r.owner.as_str(), r.bound_to_owner) {
            ("", _) => "-".to_string(),
            (o, true) => format!("{o}(session)"),
            (o, false) => o.to_string(),
        };
        let (mode, ports) = match &r.network {
            Some(n) => (n.mode.as_str(), published_list(s, &n.publish)),
            None => ("none", "-".to_string()),
        };
        println!(
            "{:<20} {:<36} {:<10} {:>6} {:>5} {:>8} {:>7}s {:>8}  {owner:<20} {:>8}  {mode:<7} {ports}",
            r.name,
            r.id,
            if r.pooled { "pooled" } else { r.state.as_str() },
            r.memory_mib,
            r.vcpus,
            human_bytes(manager.disk_use(&r)),
            secs(now - r.created_at_ms),
            expires,
            r.vmm_pid
                .filter(|_| r.state.has_vm())
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes as `petty ls` shows them: `0`, `512K`, `46M`, `1.2G`.
fn human_bytes(b: u64) -> String {
    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;
    match b {
        0 => "0".into(),
        b if b < M => format!("{}K", b.div_ceil(K)),
        b if b < G => format!("{}M", b.div_ceil(M)),
        b => format!("{:.1}G", b as f64 / G as f64),
    }
}

/// Published ports as `petty ls` shows them: `HOST_ADDR:PORT->GUEST_PORT`,
/// comma-separated (one word), or `-`.
fn published_list(s: &Settings, ports: &[petty_net::Publish]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    let addr = s.network.publish_address;
    ports
        .iter()
        .map(|p| format!("{}->{}", std::net::SocketAddr::new(addr, p.host), p.guest))
        .collect::<Vec<_>>()
        .join(",")
}

/// Says on stderr where each of a new sandbox's ports was published.
pub(crate) fn say_published(info: &petty_core::SandboxInfo, s: &Settings) {
    for p in info.network.iter().flat_map(|n| &n.publish) {
        eprintln!(
            "guest port {} published on {}",
            p.guest,
            std::net::SocketAddr::new(s.network.publish_address, p.host)
        );
    }
}

/// `petty network show`.
pub async fn network_show(sandbox: String, json: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    let (status, packets) = manager.network_status(&sandbox).await?;
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["refused_packets"] = packets.into();
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let spec = &status.spec;
    println!("sandbox      {}", status.sandbox);
    println!("mode         {}", spec.mode);
    if spec.mode == petty_net::NetworkMode::Allow {
        let rules: Vec<&str> = spec
            .allow_hosts
            .iter()
            .chain(&spec.allow_cidrs)
            .map(String::as_str)
            .collect();
        println!(
            "allow        {}",
            if rules.is_empty() {
                "-".into()
            } else {
                rules.join(" ")
            }
        );
    }
    println!("published    {}", published_list(s, &spec.publish));
    println!(
        "connections  {} made, {} open, {} refused",
        status.connections, status.active, status.refused_connections
    );
    println!(
        "names        {} answered, {} refused",
        status.names, status.refused_names
    );
    println!(
        "bytes        {} out, {} in",
        status.bytes_out, status.bytes_in
    );
    println!("other        {packets} packets refused (not TCP or DNS)");
    for r in &status.recent_refusals {
        println!("refused      {} ({})", r.destination, r.reason);
    }
    Ok(ExitCode::SUCCESS)
}

/// `petty network publish`.
pub async fn network_publish(
    sandbox: String,
    port: petty_net::Publish,
    s: &Settings,
) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    let p = manager.publish(&sandbox, port).await?;
    println!(
        "{}",
        std::net::SocketAddr::new(s.network.publish_address, p.host)
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `op` on every name given, in order: one that fails is reported on
/// stderr and the rest still get their turn. Exit 0 when all succeeded, or
/// when `missing_ok` and the only failures were names that do not exist
/// (`rm -f`); else 1.
async fn each(
    names: Vec<String>,
    missing_ok: bool,
    op: impl AsyncFn(&str) -> Result<(), anyhow::Error>,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for n in names {
        match op(&n).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                let missing = matches!(
                    e.downcast_ref::<petty_core::CoreError>(),
                    Some(petty_core::CoreError::NotFound(_))
                );
                eprintln!("petty: {n}: {e:#}");
                failed |= !(missing && missing_ok);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn stop(names: Vec<String>, graceful: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    each(names, false, async |n| {
        Ok(manager.stop(n, graceful).await?)
    })
    .await
}

pub async fn start(names: Vec<String>, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    each(names, false, async |n| Ok(manager.start(n).await?)).await
}

pub async fn hibernate(names: Vec<String>, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    each(names, false, async |n| Ok(manager.hibernate(n).await?)).await
}

pub async fn resume(names: Vec<String>, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    each(names, false, async |n| Ok(manager.resume(n).await?)).await
}

pub async fn rm(names: Vec<String>, force: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    each(names, force, async |n| {
        let info = manager.info(n).await?;
        if info.state.has_vm() && info.state != SandboxState::Creating && !force {
            bail!(
                "sandbox {n} is {}; stop it first (`petty stop {n}`) or use `petty rm -f {n}`",
                info.state
            );
        }
        Ok(manager.destroy(n).await?)
    })
    .await
}

pub async fn snapshot(sandbox: String, name: String, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    eprintln!("petty: snapshotting {sandbox} (the guest pauses while its state is saved)");
    let t = std::time::Instant::now();
    let snap = manager.snapshot(&sandbox, &name).await?;
    eprintln!(
        "petty: snapshot {} of {sandbox}: {:.1} MiB in {:.2} s",
        snap.name,
        snap.size_bytes as f64 / (1024.0 * 1024.0),
        t.elapsed().as_secs_f64()
    );
    println!("{}", snap.name);
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(
    snapshot: String,
    name: Option<String>,
    s: &Settings,
) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    let id = manager.restore(&snapshot, name.as_deref()).await?;
    println!("{}", manager.info(&id.to_string()).await?.name);
    Ok(ExitCode::SUCCESS)
}

pub async fn fork(source: String, count: usize, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    for id in manager.fork(&source, count).await? {
        println!("{}", manager.info(&id.to_string()).await?.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshots(json: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    if json {
        for r in manager.list_snapshots().await? {
            let view = petty_server::service::SnapshotView::from(r);
            println!("{}", serde_json::to_string(&view)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<20} {:<28} {:>9} {:>6}",
        "NAME", "SOURCE", "PARENT", "SIZE", "MEM"
    );
    for s in manager.list_snapshots().await? {
        println!(
            "{:<28} {:<20} {:<28} {:>8.1}M {:>6}",
            s.name,
            s.source_sandbox,
            s.parent.as_deref().unwrap_or("-"),
            s.size_bytes as f64 / (1024.0 * 1024.0),
            s.memory_mib
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshots_rm(names: Vec<String>, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = manager(s).await?;
    for n in names {
        manager.delete_snapshot(&n).await?;
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("10m"), Ok(10 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(human(DEFAULT_MAX_COPY), "4.0 GiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
