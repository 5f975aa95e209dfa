//! The VM benchmarks: `petty bench boot` (sandbox start-to-exit against
//! bare QEMU booting the same kernel, and exec round trip against the
//! guest's own spawn cost, all measured in one run), `pool`, `density`,
//! `snapshot` and `halt`. Benchmarks, not tests: they print, never assert.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use petty::settings::ensure_assets;
use petty_config::Settings;
use petty_core::{ExecRequest, Sandbox, SandboxConfig};
use petty_vmm::VmConfig;

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A distribution of timings: median, p95, p99 and max (nearest rank).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dist {
    pub(crate) p50: Duration,
    pub(crate) p95: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Dist {
    pub(crate) fn of(v: &[Duration]) -> Self {
        let mut v = v.to_vec();
        v.sort();
        Self {
            p50: nearest_rank(&v, 0.50),
            p95: nearest_rank(&v, 0.95),
            p99: nearest_rank(&v, 0.99),
            max: *v.last().expect("at least one timing"),
        }
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {}  p95 {}  p99 {}  max {}",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// `petty bench boot`; `config` is the `--config` given, which the timed
/// `petty run` gets too.
pub async fn boot(runs: usize, config: Option<&Path>, s: &Settings) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let assets = ensure_assets(s, true).await?;
    let (vmm, notice) = petty::settings::backend_options(s).qemu(s.paths.run_dir.clone());
    let qemu = vmm.find_binary()?;
    // What step 2 times, found before step 1 takes its time.
    let exe = petty::exe::find("petty", &s.paths.search_path).context(
        "timing `petty run -- true`: no `petty` beside petty-bench or on the search path \
         (hint: cargo build --release -p petty)",
    )?;
    eprintln!("{notice}");

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
            extra_cmdline: vec!["petty.mode=poweroff".into()],
            ..VmConfig::new(format!("bench-{i}"), &assets.kernel, &assets.rootfs)
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
    let mut petty_run = Vec::new();
    for i in 0..runs {
        let mut cmd = tokio::process::Command::new(&exe);
        if let Some(file) = config {
            cmd.arg("--config").arg(file);
        }
        let t = Instant::now();
        let status = cmd
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
    let sandbox = Sandbox::create(
        &vmm,
        SandboxConfig::builder()
            .assets_dir(s.paths.cache_dir.clone())
            .build()?,
    )
    .await?;
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

    let (bare, petty_run, rtt, ping) = (
        Dist::of(&bare),
        Dist::of(&petty_run),
        Dist::of(&rtt),
        Dist::of(&ping),
    );
    let (guest_sh, guest_spawn) = (Dist::of(&guest_sh), Dist::of(&guest_spawn));
    let ratio = petty_run.p50.as_secs_f64() / bare.p50.as_secs_f64();
    let floor = guest_sh.p50.min(guest_spawn.p50);
    // Signed: under the noise of emulation the round trip can come in below the floor.
    let overhead_ms = (rtt.p50.as_secs_f64() - floor.as_secs_f64()) * 1000.0;
    println!(
        "petty bench boot ({runs} runs; accel {}; 256 MiB, 2 vCPUs)",
        vmm.accel().accel
    );
    println!(
        "  bare qemu: boot same kernel to init, power off   {}",
        bare
    );
    println!(
        "  petty run -- true: start to exit                 {}",
        petty_run
    );
    println!("  ratio                                            {ratio:.2} (target <= 1.30)");
    println!("  exec `true` round trip on a running sandbox      {}", rtt);
    println!(
        "  ping round trip (the channel alone)              {}",
        ping
    );
    println!("  guest's own cost of spawning /bin/true, timed inside the guest:");
    println!(
        "    sh: fork+exec+wait                             {}",
        guest_sh
    );
    println!(
        "    python: posix_spawn+wait                       {}",
        guest_spawn
    );
    println!(
        "  agent + channel overhead over the lower floor    {overhead_ms:+.1} ms (target <= 2 ms)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Managed sandboxes outlive their process by design, and a benchmark's
/// live in a scratch directory no later `petty` looks at: on Ctrl-C or
/// SIGTERM, kill every VMM under it and remove it, then exit.
pub(crate) fn clean_up_on_signal(scratch: std::path::PathBuf) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("\npetty bench: interrupted; stopping its sandboxes");
        kill_processes_mentioning(&scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        std::process::exit(130);
    });
}

/// SIGKILLs every process (but this one) whose command line names `dir`:
/// the VMMs of a benchmark's scratch directory.
pub(crate) fn kill_processes_mentioning(dir: &std::path::Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                // SAFETY: kill only sends a signal, to a VMM of our scratch directory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A manager on throwaway data and run directories, so a benchmark never
/// touches the user's sandboxes.
async fn scratch_manager(
    s: &Settings,
    max_sandboxes: usize,
) -> anyhow::Result<(petty_core::SandboxManager, tempfile::TempDir)> {
    let scratch = tempfile::Builder::new().prefix("petty-bench-").tempdir()?;
    clean_up_on_signal(scratch.path().to_path_buf());
    let (vmm, _) = petty::settings::backend_options(s).qemu(scratch.path().join("run"));
    let mut config = petty::settings::manager_config(s);
    config.data_dir = scratch.path().join("data");
    config.max_sandboxes = max_sandboxes;
    config.templates = true;
    config.standby = true;
    let manager = petty_core::SandboxManager::new(config, std::sync::Arc::new(vmm)).await?;
    Ok((manager, scratch))
}

/// A manager beside [`scratch_manager`]'s, under `scratch`, that makes no
/// templates: each of its creates boots a VM.
async fn booting_manager(
    s: &Settings,
    scratch: &std::path::Path,
    max_sandboxes: usize,
) -> anyhow::Result<petty_core::SandboxManager> {
    let mut config = petty::settings::manager_config(s);
    config.data_dir = scratch.join("data-cold");
    config.templates = false;
    config.max_sandboxes = max_sandboxes;
    let (vmm, _) = petty::settings::backend_options(s).qemu(scratch.join("run"));
    Ok(petty_core::SandboxManager::new(config, std::sync::Arc::new(vmm)).await?)
}

/// Waits (at most 120 s) until the pool holds a warm sandbox.
async fn wait_for_warm(pool: &petty_core::SandboxPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while pool.size() < 1 {
        if Instant::now() > deadline {
            bail!("the pool did not refill within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `petty bench pool`: warm `acquire` against a cold create, same run.
pub async fn pool(runs: usize, s: &Settings) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    ensure_assets(s, true).await?;
    let (manager, scratch) = scratch_manager(s, runs + 8).await?;
    // Cold: a create that boots (no template), as before the pool existed.
    let cold_manager = booting_manager(s, scratch.path(), runs + 8).await?;
    let mut cold = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let id = cold_manager.create_default().await?;
        cold.push(t.elapsed());
        cold_manager.destroy(&id.to_string()).await?;
        eprint!("\rcold create: {}/{runs}", i + 1);
    }
    eprintln!();
    let pool = petty_core::SandboxPool::new(
        manager.clone(),
        petty_core::PoolConfig {
            min_size: 3,
            ..petty_core::PoolConfig::default()
        },
    );
    pool.start();
    let mut warm = Vec::new();
    for i in 0..runs {
        // Let the pool refill, so every acquire below is a warm hit.
        wait_for_warm(&pool).await?;
        let t = Instant::now();
        let id = pool.acquire().await?;
        warm.push(t.elapsed());
        manager.destroy(&id.to_string()).await?;
        eprint!("\rwarm acquire: {}/{runs}", i + 1);
    }
    eprintln!();
    pool.shutdown().await?;
    let stats = pool.stats();
    manager.destroy_all().await?;
    let (cold, warm) = (Dist::of(&cold), Dist::of(&warm));
    println!("petty bench pool ({runs} runs; 256 MiB, 2 vCPUs)");
    println!("  cold create (boot to agent ready)                {cold}");
    println!(
        "  warm pool acquire                                median {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  max {:.3} ms (target <= 1 ms)",
        warm.p50.as_secs_f64() * 1000.0,
        warm.p95.as_secs_f64() * 1000.0,
        warm.p99.as_secs_f64() * 1000.0,
        warm.max.as_secs_f64() * 1000.0
    );
    println!(
        "  speed-up                                         {:.0}x",
        cold.p50.as_secs_f64() / warm.p50.as_secs_f64()
    );
    println!(
        "  pool stats: {} hits, {} misses, {} created, {} destroyed",
        stats.warm_hits, stats.cold_misses, stats.created, stats.destroyed
    );
    Ok(ExitCode::SUCCESS)
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident and proportional set size of a process, in KiB.
fn rss_pss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// How long `petty bench density` watches idle sandboxes' CPU.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// `petty bench density`: N idle sandboxes, each answering exec; host memory per sandbox.
pub async fn density(count: usize, memory_mib: u32, s: &Settings) -> anyhow::Result<ExitCode> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    ensure_assets(s, true).await?;
    let (manager, _scratch) = scratch_manager(s, count).await?;
    let available_before = meminfo_kib("MemAvailable:");
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        let config = SandboxConfig::builder().memory_mib(memory_mib).build()?;
        match manager.create(config).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("\nstopping at {i} sandboxes: {e}");
                break;
            }
        }
        eprint!("\rbooted {}/{count}", i + 1);
    }
    eprintln!();
    let boot_all = t.elapsed();
    let mut answered = 0;
    for id in &ids {
        if manager.execute(&id.to_string(), "true").await?.success() {
            answered += 1;
        }
    }
    // Let the guests settle into idle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let available_after = meminfo_kib("MemAvailable:");
    // Idle CPU: every VMM's CPU time over a few quiet seconds.
    let pids: Vec<u32> = manager
        .list()
        .await?
        .iter()
        .filter_map(|r| r.vmm_pid)
        .collect();
    let cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|p| petty_core::metrics::host_usage(*p))
            .map(|u| u.cpu_seconds)
            .sum()
    };
    let (cpu0, t0) = (cpu(&pids), Instant::now());
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cores = (cpu(&pids) - cpu0) / t0.elapsed().as_secs_f64();
    let (mut rss, mut pss) = (0u64, 0u64);
    for r in manager.list().await? {
        if let Some(pid) = r.vmm_pid {
            let (a, b) = rss_pss_kib(pid);
            rss += a;
            pss += b;
        }
    }
    manager.destroy_all().await?;
    let n = ids.len().max(1) as u64;
    println!(
        "petty bench density ({} sandboxes of {memory_mib} MiB, 2 vCPUs, idle)",
        ids.len()
    );
    println!(
        "  booted one after another in                     {:.1} s",
        boot_all.as_secs_f64()
    );
    println!(
        "  answered exec                                    {answered}/{}",
        ids.len()
    );
    println!(
        "  QEMU RSS per sandbox                             {} MiB",
        rss / n / 1024
    );
    println!(
        "  QEMU PSS per sandbox (shared pages split)        {} MiB",
        pss / n / 1024
    );
    println!(
        "  host MemAvailable drop per sandbox               {} MiB",
        available_before.saturating_sub(available_after) / n / 1024
    );
    println!(
        "  idle CPU, all together over {} s                 {:.1} % of one core ({:.3} % per sandbox)",
        IDLE_WINDOW.as_secs(),
        idle_cores * 100.0,
        idle_cores * 100.0 / n as f64
    );
    Ok(ExitCode::SUCCESS)
}

async fn pss_of_all(manager: &petty_core::SandboxManager) -> anyhow::Result<u64> {
    let mut pss = 0;
    for r in manager.list().await? {
        if let Some(pid) = r.vmm_pid {
            pss += rss_pss_kib(pid).1;
        }
    }
    Ok(pss)
}

/// Waits until `manager` has a standby VMM waiting (see
/// `ManagerConfig::standby`), so a measurement starts with one, as a
/// daemon's create does unless it follows another within a fraction of a
/// second.
pub(crate) async fn wait_for_standby(manager: &petty_core::SandboxManager) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while manager.standby_count() == 0 {
        if Instant::now() > deadline {
            bail!("no standby VMM started within 30 s (see PETTY_LOG=debug)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// `petty bench snapshot`: create from a template against a cold boot,
/// snapshot cost, a 10-way fork, and the memory of forks against boots.
pub async fn snapshot(
    runs: usize,
    forks: usize,
    concurrency: usize,
    s: &Settings,
) -> anyhow::Result<ExitCode> {
    if runs == 0 || forks == 0 {
        bail!("--runs and --forks must be at least 1");
    }
    ensure_assets(s, true).await?;
    let (manager, scratch) = scratch_manager(s, 2 * forks + concurrency + 8).await?;
    let cold_manager = booting_manager(s, scratch.path(), 2 * forks + 8).await?;
    // The first create makes the template; it is not one of the measured
    // runs. After it the manager keeps a standby VMM for the template.
    let first = manager.create_default().await?;
    manager.destroy(&first.to_string()).await?;
    wait_for_standby(&manager).await?;

    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    // Where a create from template spends its time: to a ready sandbox,
    // its first exec (a fresh QEMU translates every guest code path on
    // first use under TCG), and a second exec.
    let (mut to_ready, mut first_exec, mut second_exec) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let id = manager.create_default().await?;
        let ready = t.elapsed();
        manager.execute(&id.to_string(), "true").await?;
        warm.push(t.elapsed());
        to_ready.push(ready);
        first_exec.push(t.elapsed() - ready);
        let t2 = Instant::now();
        manager.execute(&id.to_string(), "true").await?;
        second_exec.push(t2.elapsed());
        manager.destroy(&id.to_string()).await?;
        // The cold boot runs on a quiet host, not beside a standby's start.
        wait_for_standby(&manager).await?;
        let t = Instant::now();
        let id = cold_manager.create_default().await?;
        cold_manager.execute(&id.to_string(), "true").await?;
        cold.push(t.elapsed());
        cold_manager.destroy(&id.to_string()).await?;
        eprint!("\rcreate to first exec: {}/{runs}", i + 1);
    }
    eprintln!();

    // The same through a warm pool: acquire, then the first exec.
    let pool = petty_core::SandboxPool::new(
        manager.clone(),
        petty_core::PoolConfig {
            min_size: 2,
            ..petty_core::PoolConfig::default()
        },
    );
    pool.start();
    let mut pooled = Vec::new();
    for _ in 0..runs {
        wait_for_warm(&pool).await?;
        let t = Instant::now();
        let id = pool.acquire().await?;
        manager.execute(&id.to_string(), "true").await?;
        pooled.push(t.elapsed());
        manager.destroy(&id.to_string()).await?;
    }
    pool.shutdown().await?;

    // Snapshot a sandbox that did some work; restore it, branch it, fork it.
    let src = manager
        .create(SandboxConfig::builder().name("bench-src").build()?)
        .await?;
    manager
        .execute(
            "bench-src",
            "python3 -c 'import json; print(len(json.dumps(list(range(100000)))))'",
        )
        .await?;
    let mut snap_times = Vec::new();
    let mut snap_size = 0;
    for i in 0..runs {
        let t = Instant::now();
        let s = manager
            .snapshot("bench-src", &format!("bench-snap-{i}"))
            .await?;
        snap_times.push(t.elapsed());
        snap_size = s.size_bytes;
    }
    // Restores of one snapshot, one at a time: to ready, and on to a first
    // exec's answer.
    let (mut restores, mut restore_exec) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let id = manager.restore("bench-snap-0", None).await?.to_string();
        restores.push(t.elapsed());
        manager.execute(&id, "true").await?;
        restore_exec.push(t.elapsed());
        manager.destroy(&id).await?;
    }
    // The baseline: the VMM layer alone restoring the same snapshot (QEMU
    // started on its state and RAM file, the overlay made; no agent, no
    // guest refresh, no store), started and stopped.
    let snap0 = manager.snapshot_info("bench-snap-0").await?;
    let (bare_vmm, _) = petty::settings::backend_options(s).qemu(scratch.path().join("run"));
    let mut bare_restores = Vec::new();
    for i in 0..runs {
        let config = VmConfig {
            memory_mib: snap0.memory_mib,
            vcpus: snap0.vcpus,
            memory: petty_vmm::Vmm::restore_memory(&bare_vmm, &snap0.dir),
            restore_from: Some(snap0.dir.clone()),
            ..VmConfig::new(
                format!("bench-bare-{i}-{}", std::process::id()),
                snap0.kernel.clone(),
                snap0.rootfs.clone(),
            )
        };
        let t = Instant::now();
        let vm = petty_vmm::Vmm::start(&bare_vmm, &config).await?;
        bare_restores.push(t.elapsed());
        vm.stop().await?;
    }
    // Branches: a snapshot of the running sandbox and its children ready,
    // in one call.
    let (mut branch_one, mut branch_many) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for (n, into) in [(1, &mut branch_one), (forks, &mut branch_many)] {
            let t = Instant::now();
            let (_, kids) = manager
                .branch(
                    "bench-src",
                    &format!("bench-branch-{n}-{i}"),
                    n,
                    SandboxConfig::default(),
                )
                .await?;
            into.push(t.elapsed());
            for k in kids {
                manager.destroy(&k.to_string()).await?;
            }
        }
        eprint!("\rrestore and branch: {}/{runs}", i + 1);
    }
    eprintln!();
    let t = Instant::now();
    let children = manager.fork("bench-snap-0", forks).await?;
    let fork_time = t.elapsed();
    for c in &children {
        manager.execute(&c.to_string(), "true").await?;
    }
    manager.destroy(&src.to_string()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fork_pss = pss_of_all(&manager).await?;
    let t = Instant::now();
    for _ in 0..forks {
        let id = cold_manager.create_default().await?;
        cold_manager.execute(&id.to_string(), "true").await?;
    }
    let cold_many = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cold_pss = pss_of_all(&cold_manager).await?;
    manager.destroy_all().await?;
    cold_manager.destroy_all().await?;

    // Scale: `concurrency` sandboxes (forks of the snapshot) each run a
    // command at the same moment; every one must answer.
    let concurrent = if concurrency > 0 {
        let mut ids = Vec::with_capacity(concurrency);
        while ids.len() < concurrency {
            let n = (concurrency - ids.len()).min(64);
            ids.extend(manager.fork("bench-snap-0", n).await?);
            eprint!("\rconcurrency: {}/{concurrency} started", ids.len());
        }
        eprintln!();
        let mut set = tokio::task::JoinSet::new();
        for id in &ids {
            let (m, id) = (manager.clone(), id.to_string());
            set.spawn(async move {
                let t = Instant::now();
                let ok = m.execute(&id, "true").await.is_ok_and(|r| r.success());
                (t.elapsed(), ok)
            });
        }
        let (mut times, mut answered) = (Vec::new(), 0);
        while let Some(joined) = set.join_next().await {
            let (took, ok) = joined?;
            times.push(took);
            answered += usize::from(ok);
        }
        manager.destroy_all().await?;
        Some((answered, Dist::of(&times)))
    } else {
        None
    };
    for s in manager.list_snapshots().await? {
        manager.delete_snapshot(&s.name).await?;
    }

    let (warm, cold, snap, pooled) = (
        Dist::of(&warm),
        Dist::of(&cold),
        Dist::of(&snap_times),
        Dist::of(&pooled),
    );
    println!("petty bench snapshot ({runs} runs; 256 MiB, 2 vCPUs)");
    println!("  create from template to first exec result      {warm} (target <= 100 ms)");
    println!(
        "    of which: create to ready {}, first exec {}, (a second exec {})",
        ms(median(to_ready)),
        ms(median(first_exec)),
        ms(median(second_exec))
    );
    println!("  cold boot to first exec result                 {cold}");
    println!(
        "  ratio                                          {:.1}x (target >= 10x)",
        cold.p50.as_secs_f64() / warm.p50.as_secs_f64()
    );
    println!(
        "  warm-pool acquire to first exec result         {pooled} ({:.1}x faster than cold)",
        cold.p50.as_secs_f64() / pooled.p50.as_secs_f64()
    );
    println!(
        "  snapshot of a running sandbox                  {snap}, {:.1} MiB on disk (target <= 150 ms)",
        snap_size as f64 / 1048576.0
    );
    println!(
        "  restore of that snapshot to ready              {} (target p95 <= 50 ms)",
        Dist::of(&restores)
    );
    println!(
        "    and on to a first exec result                {}",
        Dist::of(&restore_exec)
    );
    println!(
        "    baseline: the VMM layer alone restoring it   {}",
        Dist::of(&bare_restores)
    );
    println!(
        "  branch: snapshot + 1 child ready               {} (target <= 250 ms)",
        Dist::of(&branch_one)
    );
    println!(
        "  branch: snapshot + {forks} children ready          {} (target <= 400 ms)",
        Dist::of(&branch_many)
    );
    println!(
        "  fork of {forks} children from a snapshot           {} total",
        ms(fork_time)
    );
    println!(
        "  {forks} cold boots, one after another                {} total",
        ms(cold_many)
    );
    println!(
        "  host memory (QEMU PSS) of {forks} forks            {} MiB",
        fork_pss / 1024
    );
    println!(
        "  host memory (QEMU PSS) of {forks} cold boots       {} MiB",
        cold_pss / 1024
    );
    if let Some((answered, d)) = concurrent {
        println!("  {concurrency} sandboxes each running `true` at once: {answered}/{concurrency} answered");
        println!(
            "    exec round trip                              {d}, p99/p50 {:.1}",
            d.p99.as_secs_f64() / d.p50.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `petty bench snapshot --template NAME`: create from template `NAME` to
/// its first exec against the same from `base`, interleaved in one run,
/// each with a standby VMM waiting (as a daemon's creates have). The exec
/// is the agent's own binary, which every template has (an image without a
/// shell too).
pub async fn template(runs: usize, name: &str, s: &Settings) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    ensure_assets(s, true).await?;
    let db = s.paths.data_dir.join("petty.db");
    let record = petty_core::store::Store::open(&db)?
        .get_template(name)?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "there is no template {name} in {}\nhint: `petty templates` lists them; `petty template build` makes one",
                db.display()
            )
        })?;
    let (manager, _scratch) = scratch_manager(s, 8).await?;
    manager.add_template(record).await?;
    let from = |t: Option<&str>| {
        let b = SandboxConfig::builder();
        match t {
            Some(t) => b.template(t),
            None => b,
        }
        .build()
    };
    let probe = ExecRequest::argv(["/sbin/petty-agent", "--version"]);
    // The first create of each makes its template snapshot; not measured.
    for t in [None, Some(name)] {
        let id = manager.create(from(t)?).await?.to_string();
        manager.exec(&id, probe.clone(), None).await?;
        manager.destroy(&id).await?;
    }
    let wait_for_both = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while manager.standby_count() < 2 {
            if Instant::now() > deadline {
                bail!("no standby VMMs within 30 s (see PETTY_LOG=debug)");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    };
    let (mut base, mut custom) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for (t, into) in [(None, &mut base), (Some(name), &mut custom)] {
            wait_for_both().await?;
            let t0 = Instant::now();
            let id = manager.create(from(t)?).await?.to_string();
            let r = manager.exec(&id, probe.clone(), None).await?;
            into.push(t0.elapsed());
            manager.destroy(&id).await?;
            if r.exit_code != 0 {
                bail!("the probe exited with {}: {}", r.exit_code, r.stderr.trim());
            }
        }
        eprint!("\rcreate to first exec: {}/{runs}", i + 1);
    }
    eprintln!();
    manager.destroy_all().await?;
    let ratio = median(custom.clone()).as_secs_f64() / median(base.clone()).as_secs_f64();
    println!(
        "petty bench snapshot --template {name} ({runs} runs each, interleaved; 256 MiB, 2 vCPUs)"
    );
    println!(
        "  create from base to first exec      {}",
        percentiles(base)
    );
    println!("  create from {name:<22}  {}", percentiles(custom));
    println!("  ratio of medians, {name} / base      {ratio:.2} (target <= 1.10)");
    Ok(ExitCode::SUCCESS)
}

/// The `p` quantile (0 to 1) of `sorted`, by nearest rank.
pub(crate) fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The p50, p95 and p99 of `v` (nearest rank), formatted.
pub(crate) fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| nearest_rank(&v, p);
    format!(
        "p50 {}  p95 {}  p99 {}",
        ms(at(0.50)),
        ms(at(0.95)),
        ms(at(0.99))
    )
}

/// Runs `script` as a streamed exec in `sb`: the guest's clock when the
/// script printed it (its first line, seconds since the epoch) and the
/// host's when the stream ended (its exit, or its error), with the error.
async fn stream_end(
    sb: &Sandbox,
    script: &str,
) -> anyhow::Result<(f64, f64, Option<petty_core::ClientError>)> {
    let mut stream = sb.exec_stream(ExecRequest::shell(script)).await?;
    let mut said = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.next().await {
                Ok(petty_core::ExecEvent::Stdout(b)) => said.push_str(&String::from_utf8_lossy(&b)),
                Ok(petty_core::ExecEvent::Stderr(_)) => {}
                Ok(petty_core::ExecEvent::Exit(_)) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .context("the command did not end within 60 s")?;
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let guest: f64 = said
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("the guest printed {said:?}, not its clock"))?;
    Ok((guest, host, ended))
}

/// `petty bench halt`: how soon a guest's power-off ends the command in
/// flight (the VM's watch: QEMU's VSERPORT_CHANGE event), beside how soon
/// an ordinary command's end reaches the host, in the same sandboxes. Both
/// are timed from the guest's clock (set from the host's) printed just
/// before, so they include the clock's skew alike.
pub async fn halt(runs: usize, s: &Settings) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    ensure_assets(s, true).await?;
    let (manager, _scratch) = scratch_manager(s, runs + 1).await?;
    const CLOCK: &str = "import time; print(time.time(), flush=True)";
    let exit_script = format!("python3 -c '{CLOCK}'");
    // The line must reach the host before the kernel halts (it drops what
    // its agent has not sent yet): the guest prints when it will power off,
    // waits that 0.25 s, and does.
    let halt_script = "python3 -c 'import time, ctypes; print(time.time() + 0.25, flush=True); \
        time.sleep(0.25); ctypes.CDLL(None).syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)' \
        & sleep 100";
    let (mut exits, mut halts) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let id = manager
            .create(SandboxConfig::builder().name(format!("halt-{i}")).build()?)
            .await?;
        let sb = manager.get(&id.to_string()).await?;
        let (guest, host, err) = stream_end(&sb, &exit_script).await?;
        if let Some(e) = err {
            bail!("the baseline command failed: {e}");
        }
        exits.push(Duration::from_secs_f64((host - guest).max(0.0)));
        let (guest, host, err) = stream_end(&sb, halt_script).await?;
        match err {
            Some(e) if e.to_string().contains("powered itself off") => {}
            other => bail!("the power-off was not seen as such: {other:?}"),
        }
        halts.push(Duration::from_secs_f64((host - guest).max(0.0)));
        drop(sb);
        manager.destroy(&id.to_string()).await?;
    }
    println!("petty bench halt ({runs} runs; from the guest's last word to the host)");
    println!(
        "  baseline: a command's exit reaches the host    {}",
        percentiles(exits)
    );
    println!(
        "  a guest's power-off ends the exec in flight   {}",
        percentiles(halts)
    );
    println!("  (before the VM's watch: the health check's ping deadline, ~40 s)");
    manager.destroy_all().await?;
    Ok(ExitCode::SUCCESS)
}
