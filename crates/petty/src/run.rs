//! `petty run`: one sandbox, one command, live output, exit code, teardown.

use std::process::ExitCode;

use anyhow::bail;
use petty::settings::ensure_assets;
use petty_config::Settings;
use petty_core::{ExecEvent, ExecRequest, Sandbox};
use petty_vmm::sweep_stale_run_dirs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::RunArgs;

/// Exit code when `--timeout` killed the command (as GNU `timeout` uses).
const EXIT_TIMEOUT: u8 = 124;

pub async fn run(args: RunArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    // Everything that can be checked is checked before a VM starts.
    let argv = match (&args.python, &args.sh, args.command.is_empty()) {
        (Some(code), _, _) => petty_core::code_argv("python", code)?,
        (_, Some(script), _) => petty_core::code_argv("sh", script)?,
        (None, None, false) => args.command.clone(),
        (None, None, true) => match &args.vm.template {
            // A template's CMD (after its ENTRYPOINT) runs when none is given.
            Some(t) => {
                let manager = crate::manage::manager(s).await?;
                match manager.template_info(t).await?.defaults.command() {
                    Some(argv) => argv,
                    None => bail!(
                        "template {t} has no default command (CMD or ENTRYPOINT)\nhint: petty run --template {t} -- CMD [ARGS...]"
                    ),
                }
            }
            None => bail!(
                "nothing to run\nhint: petty run -- CMD [ARGS...], or petty run --python CODE, or petty run --sh SCRIPT"
            ),
        },
    };
    let mut builder = args.vm.builder(s);
    if let Some(k) = &args.kernel {
        builder = builder.kernel(k);
    }
    if let Some(r) = &args.rootfs {
        builder = builder.rootfs(r);
    }
    let config = builder.build()?;
    let (vmm, notice) = petty::settings::backend(s, args.vm.backend(s))?;
    vmm.check()?;
    if config.kernel.is_none() || config.rootfs.is_none() {
        ensure_assets(s, true).await?;
    }
    sweep_stale_run_dirs(&s.paths.run_dir);
    eprintln!("{notice}");

    let req = args.exec.request(argv)?;

    let mut signals = Signals::new()?;
    // Unless told to boot, the sandbox is the manager's: a restore of the
    // image's template snapshot (the first run for an image, memory size
    // and vCPU count makes it), a network with its helper and namespace,
    // a template in its store.
    if !args.cold {
        return run_managed(config, req, s, &mut signals).await;
    }
    if config.network.has_network() || config.template.is_some() {
        bail!("--cold boots a VM of its own, without the manager a network or a template needs\nhint: drop --cold (a template's sandbox restores its snapshot), or drop --network/--template");
    }
    // Dropping the create future on a signal drops the half-started VM, which kills it.
    let sandbox = tokio::select! {
        s = Sandbox::create(vmm.as_ref(), config) => s?,
        code = signals.recv() => return Ok(ExitCode::from(code)),
    };
    let outcome = tokio::select! {
        r = stream(&sandbox, req) => r,
        code = signals.recv() => Ok(code),
    };
    let destroyed = sandbox.destroy().await;
    let code = outcome?;
    destroyed?;
    Ok(ExitCode::from(code))
}

/// `petty run` without `--cold`: the sandbox is the manager's, restored
/// from the template snapshot of its image (its network has a helper and a
/// namespace the manager sweeps, its template is in the manager's store),
/// bound to this process, whose VM dies with it (even on SIGKILL); the
/// next Petty process removes what a killed one left.
async fn run_managed(
    config: petty_core::SandboxConfig,
    req: ExecRequest,
    s: &Settings,
    signals: &mut Signals,
) -> anyhow::Result<ExitCode> {
    // A one-shot manager: no standby VMM, and the sandbox's VM dies with
    // this process even if it is killed (the next petty sweeps the record).
    let mut mc = petty::settings::manager_config(s);
    mc.standby = false;
    mc.vms_die_with_process = true;
    let (manager, _) = petty::settings::manager_with(s, mc).await?;
    let config = petty_core::SandboxConfig {
        owner: Some("cli".into()),
        bound_to_owner: true,
        ..config
    };
    let id = tokio::select! {
        id = manager.create(config) => id?.to_string(),
        code = signals.recv() => return Ok(ExitCode::from(code)),
    };
    let outcome = async {
        crate::manage::say_published(&manager.info(&id).await?, s);
        let sandbox = manager.get(&id).await?;
        tokio::select! {
            r = stream(&sandbox, req) => r,
            code = signals.recv() => Ok(code),
        }
    }
    .await;
    let destroyed = manager.destroy(&id).await;
    let code = outcome?;
    destroyed?;
    Ok(ExitCode::from(code))
}

/// Runs the command, copying its output to ours as it arrives.
pub(crate) async fn stream(sandbox: &Sandbox, req: ExecRequest) -> anyhow::Result<u8> {
    let (forward_stdin, timeout_ms) = (req.stdin, req.timeout_ms);
    let mut exec = sandbox.exec_stream(req).await?;
    if forward_stdin {
        let stdin = exec.stdin();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdin.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stdin.close().await;
        });
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    loop {
        match exec.next().await? {
            ExecEvent::Stdout(b) => {
                out.write_all(&b).await?;
                out.flush().await?;
            }
            ExecEvent::Stderr(b) => {
                err.write_all(&b).await?;
                err.flush().await?;
            }
            ExecEvent::Exit(status) => return Ok(exit_code(&status, timeout_ms)),
        }
    }
}

/// This process's exit code for how the command ended: its own, or
/// [`EXIT_TIMEOUT`] (saying so on stderr) when `--timeout` killed it.
pub(crate) fn exit_code(status: &petty_core::ExitStatus, timeout_ms: Option<u64>) -> u8 {
    if status.timed_out {
        eprintln!(
            "petty: command timed out after {} s; its process group was killed",
            timeout_ms.unwrap_or_default() as f64 / 1000.0
        );
        return EXIT_TIMEOUT;
    }
    status.code.clamp(0, 255) as u8
}

/// Waits for SIGINT, SIGTERM or SIGHUP; the shell's 128 + n exit code.
/// Says nothing: the caller says what it does about it (`petty exec` only
/// exits, and a message now would land on a terminal `-it` still has raw).
pub(crate) async fn interrupted() -> u8 {
    match Signals::new() {
        Ok(mut s) => s.recv_quietly().await,
        Err(_) => std::future::pending().await,
    }
}

/// SIGINT, SIGTERM and SIGHUP, mapped to the shell's 128 + n exit codes.
/// Once made, these signals no longer end the process: the caller handles them.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> u8 {
        let code = self.recv_quietly().await;
        eprintln!("petty: interrupted; destroying the sandbox");
        code
    }

    /// The next signal's exit code, saying nothing.
    pub(crate) async fn recv_quietly(&mut self) -> u8 {
        let sig = tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        };
        (128 + sig) as u8
    }
}
