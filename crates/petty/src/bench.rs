//! `petty bench boot`: sandbox start-to-exit against bare QEMU booting the
//! same kernel, and exec round trip against the guest's own spawn cost, all
//! measured in one run. A benchmark, not a test: it prints, it never asserts.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use petty_core::{ExecRequest, Sandbox, SandboxConfig};
use petty_vmm::qemu::QemuVmm;
use petty_vmm::{runtime_root, AccelChoice, VmConfig};

use crate::cli::ensure_assets;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn boot(runs: usize) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let assets = ensure_assets(true).await?;
    let accel = AccelChoice::detect();
    let vmm = QemuVmm::new(accel.clone(), runtime_root());
    let qemu = vmm.find_binary()?;
    eprintln!("{}", accel.notice());

    // 1. Baseline: bare QEMU, same kernel, same devices, the guest's init
    //    powering off as soon as it runs.
    let mut bare = Vec::new();
    for i in 0..runs {
        let dir = tempfile::Builder::new().prefix("petty-bench-").tempdir()?;
        let overlay = dir.path().join("overlay.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&assets.rootfs)
            .arg(&overlay)
            .status()?;
        if !st.success() {
            bail!("qemu-img create failed");
        }
        let config = VmConfig {
            id: format!("bench-{i}"),
            kernel: assets.kernel.clone(),
            rootfs: assets.rootfs.clone(),
            memory_mib: 256,
            vcpus: 2,
            extra_cmdline: vec!["petty.mode=poweroff".into()],
            die_with_parent: true,
        };
        let args = vmm.args(&config, dir.path(), &overlay);
        let t = Instant::now();
        let status = tokio::process::Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(Duration::from_secs(60), status)
            .await
            .context("bare QEMU did not power off within 60 s")??;
        bare.push(t.elapsed());
        if !status.success() {
            bail!("bare QEMU exited with {status}");
        }
        eprint!("\rbare qemu boot: {}/{runs}", i + 1);
    }
    eprintln!();

    // 2. `petty run -- true`, start to exit, as a user would see it.
    let exe = std::env::current_exe()?;
    let mut petty_run = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let status = tokio::process::Command::new(&exe)
            .args(["run", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        petty_run.push(t.elapsed());
        if !status.success() {
            bail!("`petty run -- true` exited with {status}");
        }
        eprint!("\rpetty run -- true: {}/{runs}", i + 1);
    }
    eprintln!();

    // 3. Exec round trip on a running sandbox, beside the guest's own cost of
    //    spawning `true`, timed inside the guest.
    let sandbox = Sandbox::create(&vmm, SandboxConfig::builder().build()?).await?;
    // Interleaved, so drift in the emulator's speed hits all alike. The two
    // floors are timed inside the guest: a shell's fork+exec+wait, and
    // posix_spawn+wait (the vfork-style spawn the agent itself uses).
    let (mut rtt, mut ping, mut guest_sh, mut guest_spawn) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs.max(10) {
        for _ in 0..5 {
            let t = Instant::now();
            let r = sandbox.exec(ExecRequest::argv(["true"]), None).await?;
            rtt.push(t.elapsed());
            if !r.success() {
                bail!("exec true failed: {r:?}");
            }
            let t = Instant::now();
            sandbox.agent().ping().await?;
            ping.push(t.elapsed());
        }
        let r = sandbox
            .execute("t0=$(date +%s%N); for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; t1=$(date +%s%N); echo $(( (t1 - t0) / 10 ))")
            .await?;
        let ns: u64 = r.stdout.trim().parse().context("guest timing output")?;
        guest_sh.push(Duration::from_nanos(ns));
        let r = sandbox
            .execute_code(
                "python",
                "import os, time\nt = time.perf_counter_ns()\nfor _ in range(10):\n    os.waitpid(os.posix_spawn('/usr/bin/true', ['true'], {}), 0)\nprint((time.perf_counter_ns() - t) // 10)",
            )
            .await?;
        let ns: u64 = r.stdout.trim().parse().context("guest timing output")?;
        guest_spawn.push(Duration::from_nanos(ns));
    }
    sandbox.destroy().await?;

    let (bare, petty_run, rtt, ping) = (median(bare), median(petty_run), median(rtt), median(ping));
    let (guest_sh, guest_spawn) = (median(guest_sh), median(guest_spawn));
    let ratio = petty_run.as_secs_f64() / bare.as_secs_f64();
    let floor = guest_sh.min(guest_spawn);
    // Signed: under the noise of emulation the round trip can come in below the floor.
    let overhead_ms = (rtt.as_secs_f64() - floor.as_secs_f64()) * 1000.0;
    println!(
        "petty bench boot ({runs} runs; accel {}; 256 MiB, 2 vCPUs)",
        accel.accel
    );
    println!(
        "  bare qemu: boot same kernel to init, power off   median {}",
        ms(bare)
    );
    println!(
        "  petty run -- true: start to exit                 median {}",
        ms(petty_run)
    );
    println!("  ratio                                            {ratio:.2} (target <= 1.30)");
    println!(
        "  exec `true` round trip on a running sandbox      median {}",
        ms(rtt)
    );
    println!(
        "  ping round trip (the channel alone)              median {}",
        ms(ping)
    );
    println!("  guest's own cost of spawning /bin/true, timed inside the guest:");
    println!(
        "    sh: fork+exec+wait                             median {}",
        ms(guest_sh)
    );
    println!(
        "    python: posix_spawn+wait                       median {}",
        ms(guest_spawn)
    );
    println!(
        "  agent + channel overhead over the lower floor    {overhead_ms:+.1} ms (target <= 2 ms)"
    );
    Ok(ExitCode::SUCCESS)
}
