//! `SandboxManager` and `SandboxPool` with real VMs and a real SQLite file.

use std::time::{Duration, Instant};

use petty_core::{CoreError, ManagerConfig, PoolConfig, SandboxManager, SandboxPool, SandboxState};

use crate::{base_image_mib, df_size_mib, leftovers, processes_mentioning, vmm, Env, DF_ROOT};

/// Polls (bounded) until `f` holds; the bound only stops a broken build hanging.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_sandboxes_then_nothing_left() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let id = m.create_default().await.unwrap();
            let r = m
                .execute(&id.to_string(), &format!("echo sandbox-{i}"))
                .await
                .unwrap();
            assert_eq!(r.stdout, format!("sandbox-{i}\n"));
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(m.count().await.unwrap(), 20);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    m.destroy_all().await.unwrap();
    assert_eq!(m.count().await.unwrap(), 0);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_error_past_the_limit_and_bad_names() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            max_sandboxes: 2,
            ..env.config()
        })
        .await;
    let a = crate::config_builder().name("alpha").build().unwrap();
    m.create(a.clone()).await.unwrap();
    match m.create(a).await {
        Err(CoreError::NameTaken(n)) => assert_eq!(n, "alpha"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    m.create_default().await.unwrap();
    // The third is refused before any VM is started.
    match m.create_default().await {
        Err(e @ CoreError::Capacity { max: 2 }) => assert!(e.to_string().contains("max_sandboxes")),
        other => panic!("expected Capacity, got {other:?}"),
    }
    assert_eq!(leftovers(env.root.path()).len(), 2);
    match m.execute("no-such-box", "true").await {
        Err(e @ CoreError::NotFound(_)) => assert!(e.to_string().contains("no-such-box")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    m.stop("alpha", true).await.unwrap();
    match m.execute("alpha", "true").await {
        Err(e @ CoreError::InvalidState { .. }) => {
            assert!(e.to_string().contains("alpha is stopped"), "{e}")
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_destroys_and_records_why() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let cfg = crate::config_builder()
        .name("short-lived")
        .ttl(Duration::from_secs(2))
        .build()
        .unwrap();
    m.create(cfg).await.unwrap();
    assert!(m.exists("short-lived").await.unwrap());
    eventually("the reaper", || async {
        !m.exists("short-lived").await.unwrap()
    })
    .await;
    let h = m.history("short-lived").await.unwrap();
    assert!(h[0].reason.contains("ttl expired"), "{:?}", h);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_create_leaves_no_row_process_or_file() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            connect_timeout: Duration::from_secs(5),
            ..env.config()
        })
        .await;
    let junk = env.data.path().join("junk-kernel");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    let cfg = crate::config_builder()
        .name("doomed")
        .kernel(&junk)
        .build()
        .unwrap();
    assert!(m.create(cfg).await.is_err());
    assert!(m.list().await.unwrap().is_empty());
    assert!(m.history("doomed").await.unwrap()[0]
        .reason
        .starts_with("create failed"));
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_manager_finds_live_sandboxes_and_reaps_dead_ones() {
    let env = Env::new();
    // No health checks by the first: a pass of its reaper still running
    // when it is dropped would mark the killed VM failed itself, and the
    // recovery under test would find a failed row, not a dead VM.
    let first = env
        .manager(petty_core::ManagerConfig {
            health_interval: Duration::from_secs(3600),
            ..env.config()
        })
        .await;
    first
        .create(crate::config_builder().name("keeper").build().unwrap())
        .await
        .unwrap();
    first
        .create(crate::config_builder().name("goner").build().unwrap())
        .await
        .unwrap();
    first
        .write_file("keeper", "/root/note", b"kept")
        .await
        .unwrap();
    let goner_pid = first.info("goner").await.unwrap().vmm_pid.unwrap();
    drop(first);

    // The VMs outlived their manager. Kill one behind the store's back.
    // SAFETY: signalling a QEMU this test started.
    unsafe { libc::kill(goner_pid as i32, libc::SIGKILL) };
    let root = env.root.path().display().to_string();
    eventually("QEMU to die", || async {
        processes_mentioning(&format!("{root}/{}", "")).len() == 1
    })
    .await;

    let second = env.manager(env.config()).await;
    assert!(!second.exists("goner").await.unwrap());
    assert_eq!(
        second.history("goner").await.unwrap()[0].reason,
        "its VMM process is gone"
    );
    assert_eq!(
        second.read_file("keeper", "/root/note").await.unwrap(),
        b"kept"
    );
    assert_eq!(leftovers(env.root.path()).len(), 1);
    second.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_marks_a_dead_vm_failed() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    m.create(crate::config_builder().name("fragile").build().unwrap())
        .await
        .unwrap();
    m.execute("fragile", "true").await.unwrap();
    let pid = m.info("fragile").await.unwrap().vmm_pid.unwrap();
    // SAFETY: signalling a QEMU this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    m.reap_now().await.unwrap();
    let info = m.info("fragile").await.unwrap();
    assert_eq!(info.state, SandboxState::Failed);
    let reason = info.reason.unwrap();
    // Seen by the VM's watch the moment QEMU exits, or by this health check
    // if it ran first (or its agent connection broke before).
    assert!(
        reason.contains(&format!("VMM process (QEMU, pid {pid}) exited"))
            || reason.contains("VMM process is gone")
            || reason.contains("agent does not answer"),
        "{reason}"
    );
    m.destroy("fragile").await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_counts_hits_and_misses_and_cleans_up() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let pool = SandboxPool::new(
        m.clone(),
        PoolConfig {
            min_size: 2,
            max_concurrent_boots: 2,
            fill_interval: Duration::from_millis(200),
            ..PoolConfig::default()
        },
    );
    pool.start();
    assert!(pool.is_running());
    eventually("the pool to fill", || async { pool.size() == 2 }).await;
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    // Empty now (refills take a boot): this one boots on the spot.
    let c = pool.acquire().await.unwrap();
    let s = pool.stats();
    assert_eq!((s.warm_hits, s.cold_misses), (2, 1));
    assert!((s.hit_rate - 2.0 / 3.0).abs() < 1e-9);
    for id in [a, b, c] {
        let r = m.execute(&id.to_string(), "echo ok").await.unwrap();
        assert_eq!(r.stdout, "ok\n");
        assert!(!m.info(&id.to_string()).await.unwrap().pooled);
    }
    eventually("the pool to refill", || async { pool.size() == 2 }).await;
    pool.shutdown().await.unwrap();
    assert!(!pool.is_running());
    let s = pool.stats();
    assert_eq!(s.created, 4);
    assert_eq!(s.destroyed, 2);
    assert_eq!(m.count().await.unwrap(), 3);
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_sandbox_goes_and_the_pool_gets_a_fresh_one_without_its_files() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let pool = SandboxPool::new(
        m.clone(),
        PoolConfig {
            min_size: 1,
            fill_interval: Duration::from_millis(200),
            ..PoolConfig::default()
        },
    );
    pool.start();
    eventually("the pool to fill", || async { pool.size() == 1 }).await;
    let a = pool.acquire().await.unwrap().to_string();
    let info = m.info(&a).await.unwrap();
    assert_eq!(info.start_kind, petty_core::StartKind::Pool);
    assert_eq!(info.execs, 0, "the pool's warm-up is not the user's");
    m.execute(&a, "echo mine > /root/user-file").await.unwrap();
    eventually("the refill", || async { pool.size() == 1 }).await;
    // Released: the sandbox goes (its overlay with it), and the pool
    // restores a fresh one from the template, first in line.
    let run_dir = info.run_dir.clone().unwrap();
    let fresh = pool.release(&a).await.unwrap();
    assert!(!m.exists(&a).await.unwrap(), "a released sandbox is gone");
    assert!(!run_dir.exists(), "its disk went with it");
    assert_eq!(pool.stats().released, 1);
    let b = pool.acquire().await.unwrap();
    assert_eq!(b, fresh, "the replacement is handed out next");
    let b = b.to_string();
    assert_ne!(a, b);
    let r = m.execute(&b, "cat /root/user-file 2>&1").await.unwrap();
    assert!(r.stdout.contains("No such file"), "{r:?}");
    // What the pool cannot have made is refused and left alone.
    let other = m
        .create(crate::config_builder().memory_mib(320).build().unwrap())
        .await
        .unwrap()
        .to_string();
    let e = pool.release(&other).await.unwrap_err();
    assert!(e.to_string().contains("destroy it instead"), "{e}");
    assert!(m.exists(&other).await.unwrap());
    pool.shutdown().await.unwrap();
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_the_disk_and_start_boots_it_with_every_file() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(crate::config_builder().name("desk").build().unwrap())
        .await
        .unwrap()
        .to_string();
    m.execute(
        "desk",
        "echo work > /root/kept && echo scratch > /tmp/not-kept && sync",
    )
    .await
    .unwrap();
    let e = m.start("desk").await.unwrap_err();
    assert!(
        e.to_string().contains("only a stopped sandbox starts"),
        "{e}"
    );

    m.stop("desk", true).await.unwrap();
    let r = m.info("desk").await.unwrap();
    assert_eq!(r.state, SandboxState::Stopped);
    // A stopped sandbox holds no VM and no slot, but its disk.
    assert!(
        leftovers(env.root.path()).is_empty(),
        "{:?}",
        leftovers(env.root.path())
    );
    assert!(processes_mentioning(&env.root.path().display().to_string()).is_empty());
    assert_eq!(m.count().await.unwrap(), 0);
    let kept = env.data.path().join("disks").join(&id);
    assert!(kept.is_file(), "its disk is kept in the data directory");
    let met = m.metrics("desk").await.unwrap();
    assert!(met.host.is_none() && met.disk_bytes > 0, "{met:?}");

    m.start("desk").await.unwrap();
    let r = m.info("desk").await.unwrap();
    assert_eq!(
        (r.state, r.id.to_string()),
        (SandboxState::Ready, id.clone())
    );
    let out = m
        .execute("desk", "cat /root/kept; cat /tmp/not-kept 2>&1; hostname")
        .await
        .unwrap();
    assert!(out.stdout.starts_with("work\n"), "{out:?}");
    assert!(
        out.stdout.contains("No such file"),
        "a boot, not a resume: {out:?}"
    );
    assert!(out.stdout.ends_with("desk\n"), "{out:?}");
    // It stops and starts again as often as asked; writes since are kept too.
    m.execute("desk", "echo more >> /root/kept && sync")
        .await
        .unwrap();
    m.stop("desk", true).await.unwrap();
    m.start("desk").await.unwrap();
    assert_eq!(
        m.execute("desk", "cat /root/kept").await.unwrap().stdout,
        "work\nmore\n"
    );
    // Removing it removes its disk.
    m.stop("desk", true).await.unwrap();
    m.destroy("desk").await.unwrap();
    assert!(!kept.exists(), "rm frees the disk");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_stops_rather_than_destroys_when_configured() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            on_idle: petty_core::IdleAction::Stop,
            ..env.config()
        })
        .await;
    let config = crate::config_builder()
        .name("sleepy")
        .idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    m.create(config).await.unwrap();
    m.execute("sleepy", "echo mine > /root/f && sync")
        .await
        .unwrap();
    eventually("the idle timeout to stop it", || async {
        m.info("sleepy").await.unwrap().state == SandboxState::Stopped
    })
    .await;
    let r = m.info("sleepy").await.unwrap();
    assert!(r.reason.as_deref().unwrap_or("").contains("idle"), "{r:?}");
    assert!(leftovers(env.root.path()).is_empty());
    m.start("sleepy").await.unwrap();
    assert_eq!(
        m.execute("sleepy", "cat /root/f").await.unwrap().stdout,
        "mine\n"
    );
    m.destroy("sleepy").await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernate_and_resume_keep_processes_and_files_across_restarts() {
    let env = Env::new();
    let count = |m: petty_core::SandboxManager| async move {
        m.execute("den", "cat /root/count")
            .await
            .unwrap()
            .stdout
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    {
        let m = env.manager(env.config()).await;
        m.create(crate::config_builder().name("den").build().unwrap())
            .await
            .unwrap();
        m.execute(
            "den",
            "echo note > /root/file; (setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done' >/dev/null 2>&1 &); sleep 0.5",
        )
        .await
        .unwrap();
        let before = count(m.clone()).await;
        assert!(before > 0);
        m.hibernate("den").await.unwrap();
        let r = m.info("den").await.unwrap();
        assert_eq!(r.state, SandboxState::Hibernated);
        assert!(leftovers(env.root.path()).is_empty(), "no run directory");
        assert!(processes_mentioning(&env.root.path().display().to_string()).is_empty());
        assert_eq!(m.count().await.unwrap(), 0, "no slot");
        assert!(m.metrics("den").await.unwrap().disk_bytes > 0);
    }
    // A new manager (as after a restart): an exec resumes it first, and the
    // counter counted on from where it was.
    let m = env.manager(env.config()).await;
    let after = count(m.clone()).await;
    assert_eq!(m.info("den").await.unwrap().state, SandboxState::Ready);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = count(m.clone()).await;
    assert!(later > after, "the counter runs on: {after} -> {later}");
    assert_eq!(
        m.execute("den", "cat /root/file").await.unwrap().stdout,
        "note\n"
    );
    // Hibernated again, every VMM killed and the run directory cleared (as
    // a host reboot would): an explicit resume brings it back all the same.
    m.hibernate("den").await.unwrap();
    crate::kill_vms_under(env.root.path());
    for e in std::fs::read_dir(env.root.path()).unwrap().flatten() {
        let _ = std::fs::remove_dir_all(e.path());
    }
    let m = env.manager(env.config()).await;
    m.resume("den").await.unwrap();
    assert!(count(m.clone()).await >= later);
    // Stopping a hibernated sandbox lets its memory go and keeps its disk.
    m.hibernate("den").await.unwrap();
    m.stop("den", true).await.unwrap();
    assert_eq!(m.info("den").await.unwrap().state, SandboxState::Stopped);
    m.start("den").await.unwrap();
    assert_eq!(
        m.execute("den", "cat /root/file").await.unwrap().stdout,
        "note\n"
    );
    // A corrupt hibernation fails clearly, and leaves it hibernated and removable.
    m.hibernate("den").await.unwrap();
    let id = m.info("den").await.unwrap().id.to_string();
    let state = env.data.path().join("hibernated").join(&id).join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let e = m.resume("den").await.unwrap_err();
    assert!(!e.to_string().is_empty());
    assert_eq!(m.info("den").await.unwrap().state, SandboxState::Hibernated);
    assert!(
        leftovers(env.root.path()).is_empty(),
        "a failed resume leaves nothing: {e}"
    );
    // Removing it removes its files.
    let saved = env.data.path().join("hibernated");
    assert!(std::fs::read_dir(&saved).unwrap().next().is_some());
    m.destroy("den").await.unwrap();
    assert!(
        std::fs::read_dir(&saved).unwrap().next().is_none(),
        "rm frees it"
    );
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_adopts_a_sandbox_or_hands_it_back() {
    fn assert_shareable<T: Send + Sync + Clone>() {}
    assert_shareable::<SandboxManager>();
    assert_shareable::<SandboxPool>();

    let env = Env::new();
    let v = vmm(env.root.path());
    let m = env
        .manager(ManagerConfig {
            max_sandboxes: 1,
            ..env.config()
        })
        .await;
    let sb =
        petty_core::Sandbox::create(&v, crate::config_builder().name("adopted").build().unwrap())
            .await
            .unwrap();
    let id = m.register(sb).await.map_err(|(e, _)| e).unwrap();
    assert_eq!(
        m.execute("adopted", "echo hi").await.unwrap().stdout,
        "hi\n"
    );
    // At the limit, the sandbox comes back with the error, for the caller to clean up.
    let extra = petty_core::Sandbox::create(&v, crate::sandbox_config())
        .await
        .unwrap();
    let (err, extra) = m.register(extra).await.unwrap_err();
    assert!(matches!(err, CoreError::Capacity { max: 1 }), "{err:?}");
    extra.destroy().await.unwrap();
    m.destroy(&id.to_string()).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_idle_timeout() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let cfg = crate::config_builder().name("napper").build().unwrap();
    m.create(cfg).await.unwrap();
    m.pause("napper").await.unwrap();
    // The idle timeout is set once paused: however long the create and the
    // pause took, it never ran while the sandbox was ready.
    m.set_lifetime("napper", None, Some(Some(Duration::from_secs(3))))
        .await
        .unwrap();
    assert_eq!(m.info("napper").await.unwrap().state, SandboxState::Paused);
    match m.execute("napper", "true").await {
        Err(e @ CoreError::InvalidState { .. }) => {
            assert!(
                e.to_string().contains("napper is paused; resume it first"),
                "{e}"
            )
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    // A paused sandbox is not idle-reaped; a resumed one is, once idle.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(m.exists("napper").await.unwrap());
    m.resume("napper").await.unwrap();
    assert_eq!(
        m.execute("napper", "echo awake").await.unwrap().stdout,
        "awake\n"
    );
    eventually("the idle reaper", || async {
        !m.exists("napper").await.unwrap()
    })
    .await;
    assert!(m.history("napper").await.unwrap()[0]
        .reason
        .contains("idle for 3"));
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_fill_the_limit_exactly() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            max_sandboxes: 3,
            ..env.config()
        })
        .await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move { m.create_default().await }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("all three fit under a limit of three");
    }
    assert!(matches!(
        m.create_default().await,
        Err(CoreError::Capacity { max: 3 })
    ));
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

/// Size of `/` in MiB in sandbox `key`, as `df` reports it.
async fn root_fs_mib(m: &SandboxManager, key: &str) -> u64 {
    let r = m.execute(key, DF_ROOT).await.unwrap();
    assert!(r.success(), "{r:?}");
    df_size_mib(&r.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_creates_get_the_disk_size_asked_for() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let base = base_image_mib();
    let named = |n: &str| crate::config_builder().name(n);
    m.create(named("plain").disk_free_mib(0).build().unwrap())
        .await
        .unwrap();
    m.create(named("big").disk_size_mib(base + 512).build().unwrap())
        .await
        .unwrap();
    let info = m.info("big").await.unwrap();
    assert_eq!(info.disk_size_mib, Some(base + 512));
    // It was restored from the template (the grown disk is the restore
    // path's), not booted.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", info.vmm_pid.unwrap())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains(&*info.run_dir.unwrap().to_string_lossy())
            && cmdline.contains("-incoming"),
        "not restored from the template: {cmdline}"
    );
    let (before, after) = (root_fs_mib(&m, "plain").await, root_fs_mib(&m, "big").await);
    eprintln!(
        "df -m / after template restores: {before} MiB plain, {after} MiB with disk_size_mib {}",
        base + 512
    );
    assert!(
        (480..=512).contains(&after.saturating_sub(before)),
        "/ grew from {before} to {after} MiB on a disk 512 MiB larger"
    );
    // Asked for nothing: the image plus room to work, from a template of
    // that size (nothing to grow at create).
    m.create(named("roomy").build().unwrap()).await.unwrap();
    let info = m.info("roomy").await.unwrap();
    assert_eq!(
        info.disk_size_mib,
        Some(base + petty_core::DEFAULT_DISK_FREE_MIB)
    );
    let free = df_size_mib(
        &m.execute("roomy", "df -m --output=avail /")
            .await
            .unwrap()
            .stdout,
    );
    assert!(free >= 2048, "only {free} MiB free on a default sandbox");
    // A disk smaller than the image is refused before any row or VM.
    let err = m
        .create(named("small").disk_size_mib(base - 1).build().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("disk_size_mib"), "{err}");
    assert!(!m.exists("small").await.unwrap());
    assert!(m.history("small").await.unwrap().is_empty());
    assert_eq!(leftovers(env.root.path()).len(), 3);
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sandbox_picks_its_backend_and_snapshots_remember_it() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    // Asked for by name, QEMU runs it; the row and its snapshots say so.
    let cfg = crate::config_builder()
        .name("on-qemu")
        .backend(petty_core::BackendKind::Qemu)
        .build()
        .unwrap();
    m.create(cfg).await.unwrap();
    assert_eq!(m.info("on-qemu").await.unwrap().backend, "qemu");
    let snap = m.snapshot("on-qemu", "q-snap").await.unwrap();
    assert_eq!(snap.backend, "qemu");
    let child = m.restore("q-snap", None).await.unwrap();
    assert_eq!(m.info(&child.to_string()).await.unwrap().backend, "qemu");

    // A backend this host cannot run is refused before any row or VM exists,
    // saying why.
    let fc = petty::settings::backend_options(crate::settings())
        .firecracker(env.root.path().to_path_buf());
    match fc.availability() {
        Ok(_) => eprintln!("firecracker is usable here: the refusal is not checked"),
        Err(why) => {
            let cfg = crate::config_builder()
                .name("on-fc")
                .backend(petty_core::BackendKind::Firecracker)
                .build()
                .unwrap();
            let e = m.create(cfg).await.unwrap_err().to_string();
            assert!(e.contains("firecracker") && e.contains(&why), "{e}");
            assert!(!m.exists("on-fc").await.unwrap());
        }
    }
    let e = petty_core::backend_choice("xen").unwrap_err();
    assert!(e.to_string().contains("backend \"xen\""), "{e}");

    m.destroy_all().await.unwrap();
    m.delete_snapshot("q-snap").await.unwrap();
    env.assert_clean();
}
