//! What a manager finds at its start: rows and run directories left by
//! processes that are gone, VMs that died, VMs that run on.

use petty_core::SandboxState;
use petty_test_utils::dead_pid;
use petty_vmm::{Vm, VmConfig, Vmm, OWNER_FILE};

use crate::{removed_because, Env};

impl Env {
    /// Starts a VM outside any manager (as another process's create would
    /// have) and lets go of it; `detached` as a managed sandbox's is.
    async fn loose_vm(&self, detached: bool) -> petty_test_utils::VmHandle {
        let id = petty_core::SandboxId::new().to_string();
        let config = VmConfig {
            die_with_parent: !detached,
            ..VmConfig::new(&id, &self.kernel, &self.rootfs)
        };
        let vm: Box<dyn Vm> = self.fake.start(&config).await.unwrap();
        vm.detach();
        self.fake.vm(&id).unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn recovery_keeps_live_vms_and_reaps_what_is_gone() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let kept = m
        .create(env.sandbox().name("kept").build().unwrap())
        .await
        .unwrap();
    let died = m
        .create(env.sandbox().name("died").build().unwrap())
        .await
        .unwrap();
    // The process ends (its sandboxes run on), then one VM dies.
    m.release_all().await;
    drop(m);
    env.vm(died).kill();

    // Rows other processes left, now dead: a create cut short, an MCP
    // session's sandbox, a warm pool's, and a CLI's, which outlives it.
    let gone = dead_pid();
    let store = env.store();
    let mut creating = env.record("creating", SandboxState::Creating, None, gone);
    creating.vmm_pid = None;
    store.insert(&creating, None).unwrap();
    let session_vm = env.loose_vm(true).await;
    let mut session = env.record("session", SandboxState::Ready, Some(&session_vm), gone);
    session.bound_to_owner = true;
    store.insert(&session, None).unwrap();
    let pool_vm = env.loose_vm(true).await;
    let mut pooled = env.record("pooled", SandboxState::Ready, Some(&pool_vm), gone);
    pooled.pooled = true;
    store.insert(&pooled, None).unwrap();
    let cli_vm = env.loose_vm(true).await;
    let cli = env.record("cli", SandboxState::Ready, Some(&cli_vm), gone);
    store.insert(&cli, None).unwrap();

    let m = env.manager(env.config()).await;
    let mut names: Vec<String> = m
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(names, ["cli", "kept"]);
    for (name, why) in [
        ("died", "its VMM process is gone"),
        ("creating", "its create was interrupted"),
        ("session", "the process (MCP session) it belonged to ended"),
        ("pooled", "its warm pool's process ended"),
    ] {
        assert_eq!(removed_because(&m, name).await, why, "{name}");
    }
    for vm in [&session_vm, &pool_vm] {
        assert!(!vm.is_alive(), "{vm:?} was killed");
        assert!(!vm.run_dir().exists(), "{vm:?}'s files were removed");
    }
    // The live ones are attached to and used.
    assert!(env.vm(kept).is_alive() && cli_vm.is_alive());
    assert_eq!(m.execute("kept", "echo k").await.unwrap().stdout, "k\n");
    assert_eq!(m.execute("cli", "echo c").await.unwrap().stdout, "c\n");
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn recovery_removes_run_directories_no_row_claims() {
    let env = Env::new();
    // A detached VM whose row never came (its maker died in between).
    let orphan = env.loose_vm(true).await;
    std::fs::write(orphan.run_dir().join(OWNER_FILE), dead_pid().to_string()).unwrap();
    // A VM that was to die with its maker (a template being made, a
    // standby VMM), who is gone.
    let stale = env.loose_vm(false).await;
    std::fs::write(stale.run_dir().join(OWNER_FILE), dead_pid().to_string()).unwrap();
    // A detached VM whose maker runs: a create under way elsewhere.
    let starting = env.loose_vm(true).await;

    let m = env.manager(env.config()).await;
    for vm in [&orphan, &stale] {
        assert!(!vm.is_alive(), "{vm:?} was killed");
        assert!(!vm.run_dir().exists(), "{vm:?} was removed");
    }
    assert!(starting.is_alive() && starting.run_dir().exists());
    assert!(m.list().await.unwrap().is_empty());

    // Once its maker is gone too, the next manager removes it.
    std::fs::write(starting.run_dir().join(OWNER_FILE), dead_pid().to_string()).unwrap();
    m.recover().await.unwrap();
    assert!(!starting.is_alive());
    env.assert_clean();
}
