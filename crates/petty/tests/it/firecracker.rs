//! The Firecracker backend with real VMs. They run where a `firecracker`
//! binary and a KVM that boots its guests exist; elsewhere each test prints
//! one line saying what is missing and returns. The jailer's settings
//! (`backend.firecracker.jailer*`), a TAP device and Diff snapshots come
//! from the settings, as for `petty` itself, so the same tests run jailed where
//! those are set. (What the backend asks of Firecracker, where it puts each
//! file, the jail and its removal, and the merge of Diff memory are tested
//! without Firecracker in `crates/petty-vmm/tests/it/firecracker_vmm.rs`.)

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petty_core::{ManagerConfig, Sandbox, SandboxManager};
use petty_vmm::firecracker::FirecrackerVmm;

use crate::{leftovers, petty, processes_mentioning, run_root, Env};

fn firecracker(root: &std::path::Path) -> Option<FirecrackerVmm> {
    let fc = petty::settings::backend_options(crate::settings()).firecracker(root.to_path_buf());
    match fc.availability() {
        Ok(_) => {
            crate::assets();
            Some(fc)
        }
        Err(why) => {
            eprintln!("skipping Firecracker real-VM test: {why}");
            None
        }
    }
}

/// A manager whose VMs are Firecracker's.
async fn manager(fc: FirecrackerVmm, config: ManagerConfig) -> SandboxManager {
    SandboxManager::new(config, Arc::new(fc)).await.unwrap()
}

async fn sh(m: &SandboxManager, key: &str, script: &str) -> String {
    let r = m.execute(key, script).await.unwrap();
    assert!(r.success(), "{script}: {r:?}");
    r.stdout
}

/// No jail left of the VMs `ids` (the chroot base may hold other VMs').
fn no_jails(base: Option<&std::path::Path>, ids: &[String]) {
    let Some(base) = base else { return };
    for exec in std::fs::read_dir(base).into_iter().flatten().flatten() {
        for id in ids {
            let jail = exec.path().join(id);
            assert!(!jail.exists(), "jail left: {}", jail.display());
        }
    }
}

/// The ids of every sandbox of `m`: what their jails are named after.
async fn vm_ids(m: &SandboxManager) -> Vec<String> {
    m.list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect()
}

/// KiB of `memory` that a VM's Firecracker process has mapped as shared
/// pages. A jailed one maps it through its hard link in the jail,
/// `loaded.memory`, which is the name its maps show.
fn shared_kib(pid: u32, memory: &std::path::Path) -> u64 {
    crate::snapshots::shared_kib_of_mapping(pid, memory)
        + crate::snapshots::shared_kib_of_mapping(pid, std::path::Path::new("/loaded.memory"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_runs_commands_moves_files_and_snapshots() {
    let root = run_root();
    let Some(fc) = firecracker(root.path()) else {
        return;
    };
    let sb = Sandbox::create(&fc, crate::sandbox_config()).await.unwrap();
    let r = sb.execute("echo hello; uname -r").await.unwrap();
    assert!(r.stdout.starts_with("hello\n6.1."), "{r:?}");
    sb.write_file("/root/x", b"over vsock").await.unwrap();
    assert_eq!(sb.read_file("/root/x").await.unwrap(), b"over vsock");
    let snap = tempfile::tempdir().unwrap();
    let files = sb.snapshot_to(snap.path()).await.unwrap();
    assert!(files.state_bytes > 0 && files.disk_bytes > 0);
    // The sandbox runs on after its snapshot.
    assert_eq!(
        sb.execute("cat /root/x").await.unwrap().stdout,
        "over vsock"
    );
    sb.destroy().await.unwrap();
    assert!(leftovers(root.path()).is_empty());
    assert!(processes_mentioning(&root.path().display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_with_its_files_and_its_running_processes() {
    let env = Env::new();
    let Some(fc) = firecracker(env.root.path()) else {
        return;
    };
    let jails = fc.jailer().map(|j| j.chroot_base.clone());
    // Templates on: the first create makes the template (a Firecracker
    // snapshot) and restores from it, so this covers templates too.
    let m = manager(fc, env.config()).await;
    m.create(crate::config_builder().name("origin").build().unwrap())
        .await
        .unwrap();
    assert!(
        std::fs::read_dir(env.data.path().join("templates"))
            .unwrap()
            .flatten()
            .any(|e| e.path().join(petty_vmm::SNAPSHOT_STATE).is_file()),
        "the first create made a template"
    );
    sh(&m, "origin", "echo on-disk > /root/kept; nohup python3 -c '\nimport os, time\nc = 0\nwhile True:\n    c += 1\n    open(\"/tmp/count.new\", \"w\").write(str(c))\n    os.replace(\"/tmp/count.new\", \"/tmp/count\")\n    time.sleep(0.02)\n' >/dev/null 2>&1 &").await;
    sh(
        &m,
        "origin",
        "while [ ! -s /tmp/count ] || [ $(cat /tmp/count) -lt 5 ]; do sleep 0.05; done",
    )
    .await;
    let snap = m.snapshot("origin", "counting").await.unwrap();
    assert!(snap
        .dir
        .join(petty_vmm::firecracker::SNAPSHOT_MEMORY)
        .is_file());

    let copy = m.restore("counting", Some("copy")).await.unwrap();
    let copy = m.info(&copy.to_string()).await.unwrap().name;
    assert_eq!(sh(&m, &copy, "cat /root/kept").await, "on-disk\n");
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
    // The origin runs on, its disk its own.
    sh(&m, &copy, "echo copy-only > /root/copy").await;
    assert_ne!(
        m.execute("origin", "cat /root/copy")
            .await
            .unwrap()
            .exit_code,
        0
    );

    let ids = vm_ids(&m).await;
    m.destroy_all().await.unwrap();
    m.delete_snapshot("counting").await.unwrap();
    env.assert_clean();
    no_jails(jails.as_deref(), &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_of_one_snapshot_run_at_once_each_with_its_own_writes() {
    let env = Env::new();
    let Some(fc) = firecracker(env.root.path()) else {
        return;
    };
    let jails = fc.jailer().map(|j| j.chroot_base.clone());
    let m = manager(fc, env.config()).await;
    m.create(crate::config_builder().name("parent").build().unwrap())
        .await
        .unwrap();
    sh(&m, "parent", "echo base > /root/shared").await;
    let kids = m.fork("parent", 2).await.unwrap();
    let mut names = Vec::new();
    for k in &kids {
        names.push(m.info(&k.to_string()).await.unwrap().name);
    }
    let (a, b) = (&names[0], &names[1]);
    // Both at once: each writes, then each reads back only its own.
    let (wa, wb) = tokio::join!(
        m.execute(a, "echo from-a > /root/mine"),
        m.execute(b, "echo from-b > /root/mine")
    );
    assert!(wa.unwrap().success() && wb.unwrap().success());
    assert_eq!(
        sh(&m, a, "cat /root/mine /root/shared").await,
        "from-a\nbase\n"
    );
    assert_eq!(
        sh(&m, b, "cat /root/mine /root/shared").await,
        "from-b\nbase\n"
    );
    assert_ne!(
        m.execute("parent", "cat /root/mine")
            .await
            .unwrap()
            .exit_code,
        0
    );
    // Reseeded on restore: same memory image, different randomness.
    assert_ne!(
        sh(&m, a, "head -c 32 /dev/urandom | od -An -tx1").await,
        sh(&m, b, "head -c 32 /dev/urandom | od -An -tx1").await
    );

    // Both map the snapshot's memory file privately: the pages they only
    // read are the same page-cache pages.
    let snap = m.list_snapshots().await.unwrap().remove(0);
    let memory = snap.dir.join(petty_vmm::firecracker::SNAPSHOT_MEMORY);
    for kid in [a, b] {
        let info = m.info(kid).await.unwrap();
        let kib = shared_kib(info.vmm_pid.unwrap(), &memory);
        assert!(
            kib > 8 * 1024,
            "{kid} shares only {kib} KiB of {}",
            memory.display()
        );
    }

    let ids = vm_ids(&m).await;
    m.destroy_all().await.unwrap();
    m.delete_snapshot(&snap.name).await.unwrap();
    env.assert_clean();
    no_jails(jails.as_deref(), &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diff_snapshot_of_a_clone_restores_what_the_clone_wrote() {
    let env = Env::new();
    let Some(fc) = firecracker(env.root.path()) else {
        return;
    };
    let jails = fc.jailer().map(|j| j.chroot_base.clone());
    let m = manager(fc.with_diff_snapshots(true), env.config()).await;
    m.create(crate::config_builder().name("base").build().unwrap())
        .await
        .unwrap();
    m.snapshot("base", "s1").await.unwrap();
    let clone = m.restore("s1", Some("clone")).await.unwrap();
    let clone = m.info(&clone.to_string()).await.unwrap().name;
    // In memory (tmpfs) and on disk.
    sh(
        &m,
        &clone,
        "echo in-memory > /tmp/m; echo on-disk > /root/d",
    )
    .await;
    // The clone's memory base is s1's: this one is a Diff, merged onto it.
    m.snapshot(&clone, "s2").await.unwrap();
    let again = m.restore("s2", Some("again")).await.unwrap();
    let again = m.info(&again.to_string()).await.unwrap().name;
    assert_eq!(
        sh(&m, &again, "cat /tmp/m /root/d").await,
        "in-memory\non-disk\n"
    );

    let ids = vm_ids(&m).await;
    m.destroy_all().await.unwrap();
    m.delete_snapshot("s2").await.unwrap();
    m.delete_snapshot("s1").await.unwrap();
    env.assert_clean();
    no_jails(jails.as_deref(), &ids);
}

#[test]
fn sigkill_of_the_managing_process_leaves_nothing_once_the_next_run_sweeps() {
    let root = run_root();
    let Some(fc) = firecracker(root.path()) else {
        return;
    };
    let jails = fc.jailer().map(|j| j.chroot_base.clone());
    let mut child = petty(root.path())
        .env("PETTY_BACKEND_KIND", "firecracker")
        .args(["run", "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid_file = loop {
        let found = leftovers(root.path())
            .into_iter()
            .map(|d| d.join(petty_vmm::PID_FILE))
            .find(|p| p.is_file());
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "the VM never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    let id = pid_file
        .parent()
        .and_then(|d| d.file_name())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Unjailed, Firecracker dies with petty (PR_SET_PDEATHSIG); jailed, the
    // next run's sweep kills it. Either way the next run removes its files.
    let out = petty(root.path())
        .env("PETTY_BACKEND_KIND", "firecracker")
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while petty_vmm::pid_alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "Firecracker {pid} outlived petty"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        leftovers(root.path()).is_empty(),
        "left: {:?}",
        leftovers(root.path())
    );
    no_jails(jails.as_deref(), &[id]);
}
