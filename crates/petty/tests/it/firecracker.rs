//! The Firecracker backend with real VMs. They run where a `firecracker`
//! binary and a KVM that boots its guests exist; elsewhere each test prints
//! one line saying what is missing and returns.

use petty_core::{Sandbox, SandboxConfig};
use petty_vmm::firecracker::FirecrackerVmm;

use crate::{leftovers, processes_mentioning, run_root};

fn firecracker(root: &std::path::Path) -> Option<FirecrackerVmm> {
    let fc = FirecrackerVmm::new(root.to_path_buf());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_runs_commands_moves_files_and_snapshots() {
    let root = run_root();
    let Some(fc) = firecracker(root.path()) else {
        return;
    };
    let sb = Sandbox::create(&fc, SandboxConfig::default())
        .await
        .unwrap();
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
async fn a_restore_is_refused_with_a_clear_error_and_leaves_nothing() {
    let root = run_root();
    let Some(fc) = firecracker(root.path()) else {
        return;
    };
    let snap = tempfile::tempdir().unwrap();
    let config = petty_vmm::VmConfig {
        id: "restore-refused".into(),
        kernel: crate::assets().vmlinux.clone(),
        rootfs: crate::assets().rootfs.clone(),
        memory_mib: 256,
        vcpus: 2,
        extra_cmdline: Vec::new(),
        die_with_parent: true,
        restore_from: Some(snap.path().to_path_buf()),
        memory: Default::default(),
        start_paused: false,
        disk_size_mib: None,
    };
    let err = petty_vmm::Vmm::start(&fc, &config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("jailer"), "{err}");
    assert!(leftovers(root.path()).is_empty());
}
