//! Create, use and destroy: the rows, the limit, names, failed creates,
//! snapshots and restores.

use petty_core::{ClientError, CoreError, ManagerConfig, SandboxState};
use petty_protocol::Request;
use petty_test_utils::AgentMode;

use crate::{removed_because, Env};

#[tokio::test(start_paused = true)]
async fn create_exec_and_destroy_keep_the_row_and_the_vm_in_step() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("box").build().unwrap())
        .await
        .unwrap();
    let row = m.info("box").await.unwrap();
    let vm = env.vm(id);
    assert_eq!(row.state, SandboxState::Ready);
    assert_eq!(row.vmm_pid, Some(vm.pid()));
    assert_eq!(row.run_dir.as_deref(), Some(vm.run_dir()));
    assert_eq!(row.owner_pid, std::process::id());
    // A managed sandbox's VM outlives its creator.
    assert!(!vm.config().unwrap().die_with_parent);
    assert!(vm.run_dir().join(petty_vmm::DETACHED_MARKER).exists());
    assert_eq!(m.count().await.unwrap(), 1);

    let out = m.execute("box", "echo hello").await.unwrap();
    assert_eq!((out.stdout.as_str(), out.exit_code), ("hello\n", 0));
    assert_eq!(m.execute("box", "exit 7").await.unwrap().exit_code, 7);
    let seen = vm.requests();
    assert!(matches!(seen[0], Request::Hello), "{seen:?}");
    assert!(matches!(seen[1], Request::SetTime { .. }), "{seen:?}");

    m.destroy("box").await.unwrap();
    assert!(!m.exists("box").await.unwrap());
    assert_eq!(removed_because(&m, "box").await, "destroyed");
    assert!(matches!(
        m.execute("box", "true").await,
        Err(CoreError::NotFound(_))
    ));
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn the_limit_and_taken_names_are_refused_before_any_vm_starts() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            max_sandboxes: 2,
            ..env.config()
        })
        .await;
    let alpha = env.sandbox().name("alpha").build().unwrap();
    m.create(alpha.clone()).await.unwrap();
    match m.create(alpha).await {
        Err(CoreError::NameTaken(n)) => assert_eq!(n, "alpha"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    m.create(env.sandbox().build().unwrap()).await.unwrap();
    match m.create(env.sandbox().build().unwrap()).await {
        Err(e @ CoreError::Capacity { max: 2 }) => {
            assert!(e.to_string().contains("max_sandboxes"), "{e}")
        }
        other => panic!("expected Capacity, got {other:?}"),
    }
    assert_eq!(env.fake.start_attempts(), 2, "no VM for a refused create");
    assert_eq!(m.list().await.unwrap().len(), 2);

    // A stopped sandbox keeps its row and name but holds no slot.
    m.stop("alpha", true).await.unwrap();
    let alpha = m.info("alpha").await.unwrap();
    assert_eq!(alpha.state, SandboxState::Stopped);
    assert_eq!(alpha.reason.as_deref(), Some("stopped"));
    assert_eq!(m.count().await.unwrap(), 1);
    match m.execute("alpha", "true").await {
        Err(CoreError::InvalidState { state, hint, .. }) => {
            assert_eq!(state, "stopped");
            assert!(hint.contains("petty rm alpha"), "{hint}");
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    // The guest was asked to power off, and its VM is gone.
    let vm = env.vm(alpha.id);
    assert!(vm.requests().contains(&Request::Shutdown));
    assert!(!vm.is_alive());
    m.create(env.sandbox().build().unwrap()).await.unwrap();
    assert_eq!(m.count().await.unwrap(), 2);

    m.destroy_all().await.unwrap();
    assert!(m.list().await.unwrap().is_empty());
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_leaves_no_row_and_no_run_directory() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let config = env.sandbox().name("box").build().unwrap();

    // The VMM cannot start.
    env.fake.fail_starts(1);
    let e = m.create(config.clone()).await.unwrap_err();
    assert!(matches!(e, CoreError::Vm(_)), "{e:?}");
    // The agent never answers: the guest's deadline passes (on tokio's
    // clock: the handshake's own bound), and the VM is killed.
    env.fake.set_agent(AgentMode::Silent);
    let e = m.create(config.clone()).await.unwrap_err();
    assert!(matches!(e, CoreError::AgentTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains("fake console"), "{e}");
    // The agent hangs up, or speaks another protocol.
    env.fake.set_agent(AgentMode::Hangup);
    let e = m.create(config.clone()).await.unwrap_err();
    assert!(matches!(e, CoreError::Connection { .. }), "{e:?}");
    env.fake.set_agent(AgentMode::WrongVersion);
    let e = m.create(config.clone()).await.unwrap_err();
    assert!(
        matches!(
            e,
            CoreError::Connection {
                source: ClientError::Version { .. },
                ..
            }
        ),
        "{e:?}"
    );

    assert_eq!(env.fake.start_attempts(), 4);
    assert!(m.list().await.unwrap().is_empty());
    let history = m.history("box").await.unwrap();
    assert_eq!(history.len(), 4);
    assert!(history
        .iter()
        .all(|h| h.reason.starts_with("create failed: ")));
    env.assert_clean();

    // Nothing was held: the name is free and the next create works.
    env.fake.set_agent(AgentMode::Answer);
    m.create(config).await.unwrap();
    m.destroy("box").await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn pause_and_resume_reach_the_vm_and_the_row() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    let id = m
        .create(env.sandbox().name("box").build().unwrap())
        .await
        .unwrap();
    m.pause("box").await.unwrap();
    assert!(env.vm(id).is_paused());
    assert_eq!(m.info("box").await.unwrap().state, SandboxState::Paused);
    assert!(matches!(
        m.execute("box", "true").await,
        Err(CoreError::InvalidState { .. })
    ));
    // A paused guest answers no ping; the health check does not ask it.
    m.reap_now().await.unwrap();
    assert_eq!(m.info("box").await.unwrap().state, SandboxState::Paused);
    m.resume("box").await.unwrap();
    assert!(!env.vm(id).is_paused());
    assert_eq!(m.execute("box", "echo up").await.unwrap().stdout, "up\n");
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn snapshots_restores_and_forks_keep_their_rows() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    m.create(env.sandbox().name("src").build().unwrap())
        .await
        .unwrap();

    // A failed snapshot leaves no row and no directory.
    env.fake.fail_snapshots(1);
    assert!(m.snapshot("src", "broken").await.is_err());
    assert!(m.list_snapshots().await.unwrap().is_empty());
    assert!(!env.data_dir().join("snapshots/broken").exists());

    let snap = m.snapshot("src", "s1").await.unwrap();
    assert_eq!(snap.source_sandbox, "src");
    assert!(snap.dir.join(petty_vmm::SNAPSHOT_STATE).is_file());
    assert!(matches!(
        m.snapshot("src", "s1").await,
        Err(CoreError::NameTaken(_))
    ));
    let src = m.info("src").await.unwrap();
    assert!(env.vm(src.id).requests().contains(&Request::BeforeSnapshot));
    assert_eq!(m.execute("src", "echo on").await.unwrap().stdout, "on\n");

    // A restore boots from the snapshot and is told its own name.
    let copy = m.restore("s1", Some("copy")).await.unwrap();
    let vm = env.vm(copy);
    assert_eq!(vm.config().unwrap().restore_from.as_ref(), Some(&snap.dir));
    let refreshed = vm
        .requests()
        .into_iter()
        .any(|r| matches!(r, Request::Refresh { hostname: Some(h), .. } if h == "copy"));
    assert!(refreshed, "{:?}", vm.requests());
    assert_eq!(
        m.info("copy").await.unwrap().from_snapshot.as_deref(),
        Some("s1")
    );
    match m.delete_snapshot("s1").await {
        Err(CoreError::SnapshotInUse { dependents, .. }) => {
            assert_eq!(dependents, ["sandbox copy"])
        }
        other => panic!("expected SnapshotInUse, got {other:?}"),
    }
    let children = m.fork("s1", 2).await.unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(m.count().await.unwrap(), 4);

    m.destroy_all().await.unwrap();
    m.delete_snapshot("s1").await.unwrap();
    assert!(!snap.dir.exists());
    env.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_network_the_host_cannot_give_is_refused_before_any_row_or_vm() {
    let env = Env::new();
    let public = petty_net::NetworkSpec::mode(petty_net::NetworkMode::Public);
    // A manager opened without network settings.
    let m = env.manager(env.config()).await;
    let config = env
        .sandbox()
        .name("box")
        .network(public.clone())
        .build()
        .unwrap();
    let e = m.create(config.clone()).await.unwrap_err();
    assert!(matches!(e, CoreError::NetworkUnavailable(_)), "{e:?}");
    assert!(e.to_string().contains("ManagerConfig::network"), "{e}");
    // Settings naming programs that do not exist: the message says what to
    // install (or, not root, that networks need root).
    let settings = petty_net::NetSettings {
        ip: "/nonexistent/ip".into(),
        nft: "/nonexistent/nft".into(),
        helper: Some("/nonexistent/petty".into()),
        state_root: env.dir.path().join("net"),
        deny: petty_net::policy::default_deny(),
        upstreams: Vec::new(),
        bandwidth_mbit: 0,
        max_connections: 0,
        publish_address: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let m = env
        .manager(ManagerConfig {
            network: Some(settings),
            ..env.config()
        })
        .await;
    let e = m.create(config.clone()).await.unwrap_err();
    assert!(matches!(e, CoreError::NetworkUnavailable(_)), "{e:?}");
    let said = e.to_string();
    assert!(
        said.contains("apt-get install iproute2") || said.contains("need root"),
        "{said}"
    );
    // Rules that do not hold together, refused with what to write.
    let bad = petty_net::NetworkSpec {
        allow_hosts: vec!["example.com".into()],
        ..public
    };
    let e = m
        .create(env.sandbox().network(bad).build().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CoreError::NetworkUnavailable(_) | CoreError::InvalidConfig(_)
        ),
        "{e:?}"
    );
    assert_eq!(env.fake.start_attempts(), 0);
    assert!(m.list().await.unwrap().is_empty());
    env.assert_clean();
    // A sandbox outside a manager has no network to get.
    match petty_core::Sandbox::create(env.fake.as_ref(), config).await {
        Err(e) => assert!(e.to_string().contains("needs a SandboxManager"), "{e}"),
        Ok(_) => panic!("a sandbox outside a manager got a network"),
    }
}
