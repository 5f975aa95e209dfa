//! Snapshots, restores and forks of real VMs.

use std::time::Duration;

use petty_core::{CoreError, SandboxManager};

use crate::{base_image_mib, df_size_mib, Env, DF_ROOT};

async fn named(m: &SandboxManager, name: &str) -> String {
    let id = m
        .create(crate::config_builder().name(name).build().unwrap())
        .await
        .unwrap();
    m.info(&id.to_string()).await.unwrap().name
}

async fn sh(m: &SandboxManager, key: &str, script: &str) -> String {
    let r = m.execute(key, script).await.unwrap();
    assert!(r.success(), "{script}: {r:?}");
    r.stdout
}

async fn name_of(m: &SandboxManager, id: petty_core::SandboxId) -> String {
    m.info(&id.to_string()).await.unwrap().name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_a_running_process_survive_snapshot_and_restore() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    named(&m, "origin").await;
    // A Python process counting in memory, publishing its count on tmpfs.
    // (Written to a temporary file and renamed, so a reader never sees it empty.)
    sh(&m, "origin", "echo on-disk > /root/kept; nohup python3 -c '\nimport os, time\nc = 0\nwhile True:\n    c += 1\n    open(\"/tmp/count.new\", \"w\").write(str(c))\n    os.replace(\"/tmp/count.new\", \"/tmp/count\")\n    time.sleep(0.02)\n' >/dev/null 2>&1 &").await;
    sh(
        &m,
        "origin",
        "while [ ! -s /tmp/count ] || [ $(cat /tmp/count) -lt 5 ]; do sleep 0.05; done",
    )
    .await;
    let snap = m.snapshot("origin", "counting").await.unwrap();
    assert!(snap.size_bytes > 0);
    let at_snapshot: u64 = sh(&m, "origin", "cat /tmp/count")
        .await
        .trim()
        .parse()
        .unwrap();

    let r = m.restore("counting", Some("copy")).await.unwrap();
    let copy = name_of(&m, r).await;
    assert_eq!(sh(&m, &copy, "cat /root/kept").await, "on-disk\n");
    // The same process goes on counting from where its memory was: it did
    // not start again from zero.
    let first: u64 = sh(&m, &copy, "cat /tmp/count")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(first >= 5, "counter restarted: {first}");
    let later: u64 = sh(&m, &copy, "sleep 0.5; cat /tmp/count")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(later > first, "counter stopped: {first} then {later}");
    assert!(at_snapshot >= 5);

    m.destroy_all().await.unwrap();
    m.delete_snapshot("counting").await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_write_their_own_files_and_draw_different_randomness() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    named(&m, "parent").await;
    sh(&m, "parent", "echo base > /root/shared").await;
    let kids = m.fork("parent", 2).await.unwrap();
    let (a, b) = (name_of(&m, kids[0]).await, name_of(&m, kids[1]).await);
    sh(&m, &a, "echo from-a > /root/mine").await;
    sh(&m, &b, "echo from-b > /root/mine").await;
    assert_eq!(
        sh(&m, &a, "cat /root/mine /root/shared").await,
        "from-a\nbase\n"
    );
    assert_eq!(
        sh(&m, &b, "cat /root/mine /root/shared").await,
        "from-b\nbase\n"
    );
    let parent = m.execute("parent", "cat /root/mine").await.unwrap();
    assert_ne!(parent.exit_code, 0, "the parent saw a child's file");

    // Same memory image, yet different random bytes: each was reseeded.
    let ra = sh(&m, &a, "head -c 32 /dev/urandom | od -An -tx1").await;
    let rb = sh(&m, &b, "head -c 32 /dev/urandom | od -An -tx1").await;
    assert_ne!(ra, rb);
    assert_ne!(sh(&m, &a, "hostname").await, sh(&m, &b, "hostname").await);

    let snap = m.list_snapshots().await.unwrap().remove(0);
    // Both children map the snapshot's RAM file: the pages they only read
    // are the same page-cache pages, counted as shared in each VMM.
    let ram = snap.dir.join(petty_vmm::SNAPSHOT_RAM);
    for kid in [&a, &b] {
        let pid = m.info(kid).await.unwrap().vmm_pid.unwrap();
        let shared_kib = shared_kib_of_mapping(pid, &ram);
        assert!(
            shared_kib > 8 * 1024,
            "{kid} shares only {shared_kib} KiB of {}",
            ram.display()
        );
    }
    // Children still read its disk layer: deleting it is refused, by name.
    match m.delete_snapshot(&snap.name).await {
        Err(e @ CoreError::SnapshotInUse { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&a) && msg.contains(&b), "{msg}");
        }
        other => panic!("expected SnapshotInUse, got {other:?}"),
    }
    m.destroy(&a).await.unwrap();
    m.destroy(&b).await.unwrap();
    m.delete_snapshot(&snap.name).await.unwrap();
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_sandbox_snapshots_again_and_restores_after_a_restart() {
    let env = Env::new();
    let first = env.manager(env.config()).await;
    named(&first, "gen0").await;
    sh(&first, "gen0", "echo 0 > /root/gen").await;
    first.snapshot("gen0", "s0").await.unwrap();
    let g1 = first.restore("s0", Some("gen1")).await.unwrap();
    let g1 = name_of(&first, g1).await;
    sh(&first, &g1, "echo 1 >> /root/gen").await;
    let s1 = first.snapshot(&g1, "s1").await.unwrap();
    assert_eq!(s1.parent.as_deref(), Some("s0"));
    drop(first);

    // A new process (manager) restores from the store.
    let second = env.manager(env.config()).await;
    let g2 = second.restore("s1", Some("gen2")).await.unwrap();
    let g2 = name_of(&second, g2).await;
    assert_eq!(sh(&second, &g2, "cat /root/gen").await, "0\n1\n");
    match second.delete_snapshot("s0").await {
        Err(CoreError::SnapshotInUse { dependents, .. }) => {
            assert!(
                dependents.iter().any(|d| d == "snapshot s1"),
                "{dependents:?}"
            )
        }
        other => panic!("expected SnapshotInUse, got {other:?}"),
    }
    second.destroy_all().await.unwrap();
    second.delete_snapshot("s1").await.unwrap();
    second.delete_snapshot("s0").await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_snapshot_fails_clearly_and_leaves_nothing() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    named(&m, "victim").await;
    let snap = m.snapshot("victim", "broken").await.unwrap();
    m.destroy("victim").await.unwrap();
    let state = snap.dir.join(petty_vmm::SNAPSHOT_STATE);
    let bytes = std::fs::read(&state).unwrap();
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("corrupt", {
            let mut b = bytes.clone();
            for x in b.iter_mut().take(4096).skip(16) {
                *x ^= 0xA5;
            }
            b
        }),
    ] {
        std::fs::write(&state, &damaged).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(120), m.restore("broken", None))
            .await
            .expect("restore must fail, not hang")
            .unwrap_err()
            .to_string();
        assert!(err.contains("restoring snapshot"), "{what}: {err}");
        assert!(m.list().await.unwrap().is_empty(), "{what}: a row was left");
        env.assert_clean();
    }
    m.delete_snapshot("broken").await.unwrap();
}

/// KiB of a process's mapping of `file` that are shared with other processes.
pub(crate) fn shared_kib_of_mapping(pid: u32, file: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let name = file.display().to_string();
    let mut in_mapping = false;
    let mut shared = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_mapping = line.ends_with(&name);
        } else if in_mapping && (first == "Shared_Clean:" || first == "Shared_Dirty:") {
            shared += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    shared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_keep_or_grow_the_snapshot_disk_never_shrink_it() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let base = base_image_mib();
    let named = |n: &str| crate::config_builder().name(n);
    let df = |key: &'static str| {
        let m = m.clone();
        async move { df_size_mib(&sh(&m, key, DF_ROOT).await) }
    };
    m.create(named("big").disk_size_mib(base + 512).build().unwrap())
        .await
        .unwrap();
    sh(&m, "big", "echo kept > /root/kept").await;
    let big = df("big").await;
    m.snapshot("big", "big-snap").await.unwrap();
    // Without a size, a restore has the snapshot's disk.
    m.restore("big-snap", Some("same")).await.unwrap();
    assert_eq!(df("same").await, big);
    // With a larger one, the restored guest grows its `/` onto it.
    let bigger = named("bigger").disk_size_mib(base + 1024).build().unwrap();
    m.restore_with("big-snap", bigger).await.unwrap();
    let grown = df("bigger").await;
    eprintln!("df -m /: {big} MiB in the snapshot, {grown} MiB restored onto 512 MiB more disk");
    assert!(
        (480..=512).contains(&grown.saturating_sub(big)),
        "/ grew from {big} to {grown} MiB on a disk 512 MiB larger"
    );
    assert_eq!(sh(&m, "bigger", "cat /root/kept").await, "kept\n");
    // Smaller than the snapshot's disk (though larger than the image): refused.
    let small = named("small").disk_size_mib(base + 100).build().unwrap();
    let err = m.restore_with("big-snap", small).await.unwrap_err();
    assert!(matches!(err, CoreError::InvalidConfig(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("disk_size_mib {}", base + 100))
            && msg.contains(&format!("{} MiB", base + 512)),
        "{msg}"
    );
    assert!(!m.exists("small").await.unwrap());
    m.destroy_all().await.unwrap();
    m.delete_snapshot("big-snap").await.unwrap();
    env.assert_clean();
}

/// A chain 20 snapshots deep, each taken from a restore of the one before
/// (the shape of one path of a tree search): every level restores with the
/// files of every level above it, and memory (a tmpfs file) too. Prints
/// each level's snapshot time (docs/BENCHMARKS.md; never asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_deep_snapshot_chain_restores_every_levels_files() {
    const DEPTH: usize = 20;
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let mut at = named(&m, "level-0").await;
    let mut times = Vec::new();
    for level in 1..=DEPTH {
        sh(
            &m,
            &at,
            &format!("echo {level} > /root/level-{level}; echo {level} >> /dev/shm/levels"),
        )
        .await;
        let started = std::time::Instant::now();
        let snap = m.snapshot(&at, &format!("chain-{level}")).await.unwrap();
        times.push(started.elapsed());
        if level > 1 {
            assert_eq!(
                snap.parent.as_deref(),
                Some(format!("chain-{}", level - 1).as_str()),
                "level {level}'s parent"
            );
        }
        m.destroy(&at).await.unwrap();
        let id = m.restore(&format!("chain-{level}"), None).await.unwrap();
        at = name_of(&m, id).await;
    }
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
        .collect();
    eprintln!("snapshot times by level (ms): {}", ms.join(" "));
    // The deepest restore sees every level; so does one from the middle,
    // and only its own levels.
    let expect = |n: usize| -> String { (1..=n).map(|l| format!("{l}\n")).collect() };
    let every = sh(&m, &at, &format!("cat $(seq -f /root/level-%g 1 {DEPTH})")).await;
    assert_eq!(every, expect(DEPTH));
    assert_eq!(sh(&m, &at, "cat /dev/shm/levels").await, expect(DEPTH));
    let mid = name_of(&m, m.restore("chain-10", None).await.unwrap()).await;
    assert_eq!(sh(&m, &mid, "cat /dev/shm/levels").await, expect(10));
    assert_eq!(
        sh(&m, &mid, "ls /root | grep -c '^level-'").await.trim(),
        "10"
    );
    m.destroy_all().await.unwrap();
    for level in (1..=DEPTH).rev() {
        m.delete_snapshot(&format!("chain-{level}")).await.unwrap();
    }
    env.assert_clean();
}

/// `branch`: one call snapshots a sandbox and starts its children side by
/// side; each child starts at the snapshot and writes only its own files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_snapshots_once_and_starts_every_child_there() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    named(&m, "trunk").await;
    sh(&m, "trunk", "echo trunk > /root/at").await;
    let (snap, children) = m
        .branch(
            "trunk",
            "fork-point",
            3,
            petty_core::SandboxConfig::default(),
        )
        .await
        .unwrap();
    assert_eq!(snap.name, "fork-point");
    assert_eq!(children.len(), 3);
    for (i, child) in children.iter().enumerate() {
        let c = name_of(&m, *child).await;
        assert_eq!(sh(&m, &c, "cat /root/at").await, "trunk\n");
        sh(&m, &c, &format!("echo {i} > /root/mine")).await;
    }
    for (i, child) in children.iter().enumerate() {
        let c = name_of(&m, *child).await;
        assert_eq!(sh(&m, &c, "cat /root/mine").await, format!("{i}\n"));
    }
    // The snapshot is kept, and a count of zero is refused before any work.
    assert!(m.snapshot_info("fork-point").await.is_ok());
    let err = m
        .branch("trunk", "never", 0, petty_core::SandboxConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    assert!(m.snapshot_info("never").await.is_err());
    m.destroy_all().await.unwrap();
    m.delete_snapshot("fork-point").await.unwrap();
    env.assert_clean();
}
