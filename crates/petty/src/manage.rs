//! Sandboxes that outlive the command that made them: `create`, `exec`,
//! `cp`, `ls`, `stop`, `kill`, `rm`. State lives in SQLite under the data
//! directory; every command opens a manager on it, which also reaps what
//! expired or died since the last one.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use petty_core::{ManagerConfig, SandboxManager, SandboxState};
use petty_vmm::{choose_backend, runtime_root};
use tokio::io::AsyncWriteExt;

use crate::cli::{ensure_assets, ExecOpts};

/// Opens the manager on the default data and run directories. No standby
/// VMMs: a CLI command ends right after its create, and one would die
/// unused with it.
pub async fn manager() -> anyhow::Result<SandboxManager> {
    let (vmm, _) = choose_backend(None, runtime_root())?;
    let config = ManagerConfig {
        standby: false,
        ..ManagerConfig::default()
    };
    Ok(SandboxManager::new(config, Arc::from(vmm)).await?)
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

pub async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut b = args.vm.builder().owner("cli");
    if let Some(n) = args.name {
        b = b.name(n);
    }
    if let Some(k) = &args.vm.backend {
        b = b.backend(k);
    }
    if let Some(t) = secs("ttl", args.ttl)? {
        b = b.ttl(t);
    }
    if let Some(t) = secs("idle-timeout", args.idle_timeout)? {
        b = b.idle_timeout(t);
    }
    let config = b.build()?;
    let (vmm, notice) = choose_backend(args.vm.backend.as_deref(), runtime_root())?;
    vmm.check()?;
    ensure_assets(true).await?;
    eprintln!("{notice}");
    let manager = manager().await?;
    let id = manager.create(config).await?;
    let info = manager.info(&id.to_string()).await?;
    println!("{}", info.name);
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `petty exec`.
#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub exec: ExecOpts,
    /// The sandbox's name or id.
    pub sandbox: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let req = args.exec.request(args.command)?;
    let manager = manager().await?;
    let sandbox = manager.get(&args.sandbox).await?;
    let id = sandbox.id().to_string();
    let outcome = tokio::select! {
        r = crate::run::stream(&sandbox, req) => r,
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

pub async fn cp(src: String, dst: String) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
    match (place(&src), place(&dst)) {
        (Place::Host(from), Place::Guest { sandbox, path }) => {
            let file = tokio::fs::File::open(&from)
                .await
                .with_context(|| format!("opening {}", from.display()))?;
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                file.metadata().await?.permissions().mode() & 0o7777
            };
            let sb = manager.get(&sandbox).await?;
            let n = sb.agent().write_file_from(&path, file, Some(mode)).await?;
            eprintln!("petty: copied {n} bytes to {sandbox}:{path}");
        }
        (Place::Guest { sandbox, path }, Place::Host(to)) => {
            let sb = manager.get(&sandbox).await?;
            let tmp = to.with_extension("petty-partial");
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let copied = sb.agent().read_file_into(&path, &mut file, u64::MAX).await;
            file.flush().await?;
            match copied {
                Ok(n) => {
                    tokio::fs::rename(&tmp, &to).await?;
                    eprintln!("petty: copied {n} bytes from {sandbox}:{path}");
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e.into());
                }
            }
        }
        _ => bail!("one side must be a sandbox path (NAME:/path) and the other a host path\nhint: petty cp ./file.txt mybox:/root/file.txt"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(all: bool) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
    // Lifetimes are enforced by whichever petty process runs: this one, now.
    manager.reap_now().await?;
    let now = petty_core::store::now_ms();
    println!(
        "{:<20} {:<36} {:<8} {:>6} {:>5} {:>8} {:>8} {:>8}  OWNER",
        "NAME", "ID", "STATE", "MEM", "VCPUS", "AGE", "PID", "EXPIRES"
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
        let owner = match (r.owner.as_str(), r.bound_to_owner) {
            ("", _) => "-".to_string(),
            (o, true) => format!("{o} (session)"),
            (o, false) => o.to_string(),
        };
        println!(
            "{:<20} {:<36} {:<8} {:>6} {:>5} {:>7}s {:>8} {:>8}  {owner}",
            r.name,
            r.id,
            if r.pooled { "pooled" } else { r.state.as_str() },
            r.memory_mib,
            r.vcpus,
            secs(now - r.created_at_ms),
            r.vmm_pid
                .filter(|_| r.state.has_vm())
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            expires,
        );
    }
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

pub async fn stop(names: Vec<String>, graceful: bool) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
    each(names, false, async |n| {
        Ok(manager.stop(n, graceful).await?)
    })
    .await
}

pub async fn rm(names: Vec<String>, force: bool) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
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

pub async fn snapshot(sandbox: String, name: String) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
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

pub async fn restore(snapshot: String, name: Option<String>) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
    let id = manager.restore(&snapshot, name.as_deref()).await?;
    println!("{}", manager.info(&id.to_string()).await?.name);
    Ok(ExitCode::SUCCESS)
}

pub async fn fork(source: String, count: usize) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
    for id in manager.fork(&source, count).await? {
        println!("{}", manager.info(&id.to_string()).await?.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshots() -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
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

pub async fn snapshots_rm(names: Vec<String>) -> anyhow::Result<ExitCode> {
    let manager = manager().await?;
    for n in names {
        manager.delete_snapshot(&n).await?;
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}
