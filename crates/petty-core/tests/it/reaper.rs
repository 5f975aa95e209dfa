//! VMs that end on their own, agents that fall silent, and VMs that died
//! while no process watched.

use petty_core::{CoreError, SandboxState};
use petty_test_utils::AgentMode;

use crate::{eventually, removed_because, Env};

#[tokio::test(start_paused = true)]
async fn a_vm_that_dies_is_marked_failed_with_why() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("box").build().unwrap())
        .await
        .unwrap();
    let vm = env.vm(id);
    vm.kill();
    // Seen through `Vm::ended` (a pidfd on the VMM), not a health check:
    // the reaper does not run here.
    eventually("the sandbox to be marked failed", || async {
        m.info("box").await.unwrap().state == SandboxState::Failed
    })
    .await;
    let row = m.info("box").await.unwrap();
    let reason = row.reason.unwrap();
    assert!(reason.contains("exited"), "{reason}");
    assert_eq!(m.count().await.unwrap(), 0, "a failed sandbox holds no VM");
    match m.execute("box", "true").await {
        Err(CoreError::InvalidState { state, hint, .. }) => {
            assert_eq!(state, "failed");
            assert!(hint.contains("exited"), "{hint}");
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    // Its files went with it; the row stays until removed.
    assert!(env.run_dirs().is_empty(), "{:?}", env.run_dirs());
    m.destroy("box").await.unwrap();
    assert!(!m.exists("box").await.unwrap());
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_fails_its_health_check() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("hung").build().unwrap())
        .await
        .unwrap();
    m.create(env.sandbox().name("fine").build().unwrap())
        .await
        .unwrap();
    env.vm(id).set_agent(AgentMode::Silent);
    // The ping waits out its deadline (30 s of tokio time).
    m.reap_now().await.unwrap();
    let hung = m.info("hung").await.unwrap();
    assert_eq!(hung.state, SandboxState::Failed);
    let reason = hung.reason.unwrap();
    assert!(
        reason.starts_with("health check: its agent does not answer"),
        "{reason}"
    );
    assert!(!env.vm(id).is_alive(), "a failed sandbox's VM is killed");
    assert_eq!(m.info("fine").await.unwrap().state, SandboxState::Ready);
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_died_unwatched_is_removed_when_next_used() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("box").build().unwrap())
        .await
        .unwrap();
    // This process lets go of it (as a CLI process ends), then it dies.
    m.release_all().await;
    env.vm(id).kill();
    match m.execute("box", "true").await {
        Err(CoreError::NotFound(what)) => assert!(what.contains("had died"), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!m.exists("box").await.unwrap());
    assert_eq!(removed_because(&m, "box").await, "its VMM process is gone");
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn another_process_attaches_to_a_released_sandbox() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("box").build().unwrap())
        .await
        .unwrap();
    m.write_file("box", "/root/kept", b"state").await.unwrap();
    m.release_all().await;
    drop(m);
    // The VM ran on without a holder; a new manager attaches to it.
    let vm = env.vm(id);
    assert!(vm.is_alive());
    let m = env.manager(env.config()).await;
    assert_eq!(m.read_file("box", "/root/kept").await.unwrap(), b"state");
    let hellos = vm
        .requests()
        .iter()
        .filter(|r| matches!(r, petty_protocol::Request::Hello))
        .count();
    assert_eq!(hellos, 2, "one greeting per connection");
    m.destroy("box").await.unwrap();
    env.assert_clean();
}
