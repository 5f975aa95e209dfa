//! Teardown on every path: failed creates, panics, Ctrl-C and SIGKILL leave
//! no VMM process, socket or disk overlay behind.

use std::process::Stdio;
use std::time::{Duration, Instant};

use petty_core::{CoreError, Sandbox};

use crate::{leftovers, petty, processes_mentioning, run_root, vmm};

/// Waits (bounded) until `f` holds; the bound only keeps a broken build
/// from hanging the suite, it is not what the test measures.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nothing_left(root: &std::path::Path) {
    assert!(leftovers(root).is_empty(), "left: {:?}", leftovers(root));
    let root = root.display().to_string();
    assert!(
        processes_mentioning(&root).is_empty(),
        "VMM still running for {root}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kernel_fails_create_and_leaves_nothing() {
    let root = run_root();
    let junk = root.path().with_extension("junk-kernel");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    let config = crate::config_builder()
        .kernel(&junk)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = Sandbox::create(&vmm(root.path()), config)
        .await
        .err()
        .expect("must fail");
    std::fs::remove_file(&junk).unwrap();
    assert!(
        matches!(
            err,
            CoreError::Vm(_) | CoreError::AgentTimeout { .. } | CoreError::Connection { .. }
        ),
        "{err:?}"
    );
    nothing_left(root.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_never_answers_fails_create_and_leaves_nothing() {
    let root = run_root();
    // A root filesystem that is not one: the kernel boots, finds no init,
    // and the agent never answers.
    let junk = root.path().with_extension("junk-rootfs");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let config = crate::config_builder()
        .rootfs(&junk)
        .connect_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let err = Sandbox::create(&vmm(root.path()), config)
        .await
        .err()
        .expect("must fail");
    std::fs::remove_file(&junk).unwrap();
    match &err {
        CoreError::AgentTimeout { console, .. } | CoreError::Connection { console, .. } => {
            // The guest console explains it.
            assert!(
                console.contains("VFS") || console.contains("panic"),
                "console: {console}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    nothing_left(root.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_while_holding_a_sandbox_kills_the_vm() {
    let root = run_root();
    let path = root.path().to_path_buf();
    let task = tokio::spawn(async move {
        let sb = Sandbox::create(&vmm(&path), crate::config_builder().build().unwrap())
            .await
            .unwrap();
        assert!(sb.is_healthy().await);
        panic!("test panic while a sandbox is alive");
    });
    assert!(task.await.unwrap_err().is_panic());
    nothing_left(root.path());
}

#[test]
fn ctrl_c_destroys_the_sandbox() {
    let root = run_root();
    let mut child = petty(root.path())
        .args(["run", "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the VM to start", || !leftovers(root.path()).is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    nothing_left(root.path());
}

#[test]
fn sigkill_of_petty_kills_the_vm_and_the_next_run_sweeps_its_files() {
    let root = run_root();
    let mut child = petty(root.path())
        .args(["run", "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the VM to start", || !leftovers(root.path()).is_empty());
    let dir = leftovers(root.path())[0].display().to_string();
    wait_until("QEMU to run", || !processes_mentioning(&dir).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    // The VMM dies with its parent (PR_SET_PDEATHSIG)...
    wait_until("QEMU to die with petty", || {
        processes_mentioning(&dir).is_empty()
    });
    // ...and the next petty removes the files the killed one left.
    let out = petty(root.path())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    nothing_left(root.path());
}
