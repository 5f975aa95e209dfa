//! Standby VMMs: a QEMU started ahead of need for a template, which the
//! next create from that template restores into (`ManagerConfig::standby`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use petty_core::{ManagerConfig, SandboxManager};
use petty_vmm::{sweep_stale_run_dirs, DETACHED_MARKER, PID_FILE};

use crate::{base_image_mib, df_size_mib, leftovers, processes_mentioning, Env, DF_ROOT};

fn with_standby(env: &Env) -> ManagerConfig {
    ManagerConfig {
        standby: true,
        ..env.config()
    }
}

/// Waits (bounded) until `m` has a standby VMM, and returns its run
/// directory: the one under the run root that no sandbox row names.
async fn standby_dir(env: &Env, m: &SandboxManager) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.standby_count() == 0 {
        assert!(Instant::now() < deadline, "no standby VMM started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owned: Vec<PathBuf> = m
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.run_dir)
        .collect();
    let spare: Vec<PathBuf> = leftovers(env.root.path())
        .into_iter()
        .filter(|d| !owned.contains(d))
        .collect();
    assert_eq!(spare.len(), 1, "one standby run directory: {spare:?}");
    spare.into_iter().next().unwrap()
}

/// A manager with standby VMMs and a sandbox "first": its create made the
/// template and booted; a standby followed. The standby's run directory.
async fn first_and_a_standby(env: &Env) -> (SandboxManager, PathBuf) {
    let m = env.manager(with_standby(env)).await;
    m.create(crate::config_builder().name("first").build().unwrap())
        .await
        .unwrap();
    let standby = standby_dir(env, &m).await;
    (m, standby)
}

fn vmm_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join(PID_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn sh(m: &SandboxManager, key: &str, script: &str) -> String {
    let r = m.execute(key, script).await.unwrap();
    assert!(r.success(), "{script}: {r:?}");
    r.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_from_a_template_restores_into_the_standby_vmm() {
    let env = Env::new();
    let (m, standby) = first_and_a_standby(&env).await;
    assert!(
        !standby.join(DETACHED_MARKER).exists(),
        "a standby is not the store's until a sandbox takes it"
    );
    assert!(!processes_mentioning(&standby.display().to_string()).is_empty());

    // The next create of the template's size (the default: the image plus
    // room to work) takes it: its run directory is the standby's, now the
    // store's, with the disk the template was made with.
    let disk_mib = base_image_mib() + petty_core::DEFAULT_DISK_FREE_MIB;
    let id = m
        .create(crate::config_builder().name("second").build().unwrap())
        .await
        .unwrap();
    let info = m.info(&id.to_string()).await.unwrap();
    assert_eq!(info.run_dir.as_deref(), Some(standby.as_path()));
    assert!(standby.join(DETACHED_MARKER).exists());
    assert_eq!(sh(&m, "second", "hostname").await, "second\n");
    let df = df_size_mib(&sh(&m, "second", DF_ROOT).await);
    assert!(df + 64 > u64::from(disk_mib), "/ is {df} MiB of {disk_mib}");
    // Its randomness is its own, not the template's.
    let a = sh(&m, "first", "head -c 16 /dev/urandom | od -An -tx1").await;
    let b = sh(&m, "second", "head -c 16 /dev/urandom | od -An -tx1").await;
    assert_ne!(a, b);

    // A replacement starts; dropping the manager stops it, not the sandboxes.
    let next = standby_dir(&env, &m).await;
    assert_ne!(next, standby);
    drop(m);
    let deadline = Instant::now() + Duration::from_secs(10);
    while next.exists() {
        assert!(Instant::now() < deadline, "standby left behind: {next:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(processes_mentioning(&next.display().to_string()).is_empty());
    assert_eq!(leftovers(env.root.path()).len(), 2, "the two sandboxes");

    // Both are ordinary persistent sandboxes to a later manager.
    let m = env.manager(env.config()).await;
    assert_eq!(sh(&m, "second", "echo still here").await, "still here\n");
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_spares_a_live_managers_standby_and_a_dead_one_is_not_used() {
    let env = Env::new();
    let (m, standby) = first_and_a_standby(&env).await;
    // Another petty process's sweep: its owner (this process) lives.
    sweep_stale_run_dirs(env.root.path());
    assert!(
        standby.is_dir(),
        "the sweep removed a live manager's standby"
    );

    // Killed behind the manager's back: the next create starts a VMM of
    // its own, whether the death is seen before the standby is taken or
    // while it is being finished.
    let pid = vmm_pid(&standby);
    // SAFETY: signalling the standby QEMU this test's manager started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let id = m
        .create(crate::config_builder().name("second").build().unwrap())
        .await
        .unwrap();
    let info = m.info(&id.to_string()).await.unwrap();
    assert!(info.vmm_pid.is_some_and(|p| p != pid), "{info:?}");
    assert_eq!(sh(&m, "second", "hostname").await, "second\n");

    // destroy_all takes the standbys with the sandboxes.
    let _ = standby_dir(&env, &m).await;
    m.destroy_all().await.unwrap();
    env.assert_clean();
}
