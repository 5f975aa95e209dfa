use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use petty_flintlock::standin::{StandIn, StandInServer};
use petty_flintlock::{spec, FlintlockConfig, FlintlockVmm, InterfaceType, RECORD_FILE};
use petty_vmm::{choose_backend, BackendKind, BackendOptions, VmConfig, Vmm, VmmError};

fn config(endpoint: String) -> FlintlockConfig {
    FlintlockConfig {
        endpoint,
        namespace: "petty-test".into(),
        kernel_image: "example/petty-kernel:test".into(),
        kernel_filename: None,
        root_image: "example/petty-rootfs:test".into(),
        guest_cidr: "10.77.0.0/24".parse().unwrap(),
        gateway: None,
        interface_type: InterfaceType::Tap,
        bridge: None,
        agent_port: 52,
        provider: None,
    }
}

async fn standin() -> StandInServer {
    StandIn::new(None).serve().await.unwrap()
}

/// Waits (without a deadline that could flake: the test's own timeout
/// bounds it) until `f` holds.
async fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn standin_create_list_get_delete_through_the_backend() {
    let server = standin().await;
    let root = tempfile::tempdir().unwrap();
    let vmm = FlintlockVmm::new(config(server.endpoint()), root.path().join("run"));
    vmm.check().unwrap();
    assert!(!vmm.can_restore());
    assert_eq!(vmm.kind(), BackendKind::Flintlock);

    let vm = vmm
        .start(&VmConfig {
            memory_mib: 384,
            vcpus: 1,
            ..VmConfig::new("sb-one", "/unused", "/unused")
        })
        .await
        .unwrap();
    let st = server.standin();
    assert_eq!(
        st.calls(),
        ["ListMicroVMs petty-test", "CreateMicroVM petty-test/sb-one"]
    );
    let m = st.microvms().pop().unwrap();
    let s = m.spec.unwrap();
    assert_eq!((s.vcpu, s.memory_in_mb), (1, 384));
    let words = spec::cmdline_words(&s);
    let token = words
        .iter()
        .find_map(|w| w.strip_prefix("petty.token="))
        .expect("a token on the command line");
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    let net = words
        .iter()
        .find_map(|w| w.strip_prefix("petty.net="))
        .and_then(petty_protocol::tcp::GuestNet::parse)
        .expect("petty.net");
    assert!(config(String::new()).guest_cidr.contains(net.ip));
    assert_ne!(net.ip, net.gateway);

    // The run directory records the VM for this user alone.
    assert_eq!(vm.pid(), 0);
    let record = vm.run_dir().join(RECORD_FILE);
    let mode = std::fs::metadata(&record).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        text.contains(token) && text.contains(&net.ip.to_string()),
        "{text}"
    );

    // Another process attaches by id.
    let again = vmm.attach("sb-one", 0).unwrap();
    again.detach();

    // No snapshots, and the error says what to use.
    let snap = tempfile::tempdir().unwrap();
    let e = vm.snapshot(snap.path(), true).await.unwrap_err();
    assert!(matches!(e, VmmError::NotSupported { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("flintlock backend has no snapshots") && text.contains("qemu or firecracker"),
        "{text}"
    );
    let e = vmm
        .start(&VmConfig {
            restore_from: Some(snap.path().into()),
            ..VmConfig::new("sb-two", "/unused", "/unused")
        })
        .await
        .err()
        .expect("a restore is refused");
    assert!(e.to_string().contains("has no snapshots"), "{e}");
    assert!(vm
        .pause()
        .await
        .unwrap_err()
        .to_string()
        .contains("no pause"));

    // A second VM gets another address.
    let second = vmm
        .start(&VmConfig::new("sb-two", "/unused", "/unused"))
        .await
        .unwrap();
    let used = spec::used_addresses(&st.microvms());
    assert_eq!(used.len(), 2, "{used:?}");

    let dir = vm.run_dir().to_path_buf();
    vm.stop().await.unwrap();
    assert!(!dir.exists());
    assert!(st
        .calls()
        .iter()
        .any(|c| c.starts_with("DeleteMicroVM standin-")));
    assert_eq!(st.microvms().len(), 1);

    // Dropping a VM neither stopped nor detached deletes its MicroVM.
    drop(second);
    until(|| st.microvms().is_empty()).await;
    server.shutdown().await;
}

#[tokio::test]
async fn standin_failed_microvm_ends_the_vm() {
    let server = standin().await;
    let root = tempfile::tempdir().unwrap();
    let vmm = FlintlockVmm::new(config(server.endpoint()), root.path().join("run"));
    let vm = vmm
        .start(&VmConfig::new("sb-fails", "/unused", "/unused"))
        .await
        .unwrap();
    let uid = server.standin().microvms()[0]
        .spec
        .as_ref()
        .unwrap()
        .uid
        .clone()
        .unwrap();
    let ended = vm.ended();
    server.standin().fail(&uid);
    let why = ended.await;
    assert!(why.contains("FAILED") && why.contains(&uid), "{why}");
    assert!(!vm.is_running());
    vm.stop().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_error_naming_it() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let vmm = FlintlockVmm::new(config(endpoint.clone()), root.path().join("run"));
    let e = vmm.list().await.unwrap_err().to_string();
    assert!(e.contains(&endpoint) && e.contains("ListMicroVMs"), "{e}");
    let e = vmm
        .start(&VmConfig::new("sb", "/unused", "/unused"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot connect"), "{e}");
    assert!(!root.path().join("run/sb").exists());
}

#[test]
fn choose_backend_makes_flintlock_only_when_asked_and_configured() {
    let root = tempfile::tempdir().unwrap();
    let none = BackendOptions::default();
    let e = choose_backend(Some(BackendKind::Flintlock), root.path().into(), &none)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("backend.flintlock.endpoint"), "{e}");
    let options = BackendOptions {
        flintlock: Some(petty_flintlock::maker(Ok(config(
            "http://127.0.0.1:9".into(),
        )))),
        ..Default::default()
    };
    let (vmm, notice) =
        choose_backend(Some(BackendKind::Flintlock), root.path().into(), &options).unwrap();
    assert_eq!(
        (vmm.kind(), notice.as_str()),
        (BackendKind::Flintlock, "petty: using Flintlock")
    );
    // auto never picks it, configured or not.
    let (vmm, _) = choose_backend(None, root.path().into(), &options).unwrap();
    assert_ne!(vmm.kind(), BackendKind::Flintlock);
    // Bad settings say so at make time.
    let bad = BackendOptions {
        flintlock: Some(petty_flintlock::maker(Err(
            "backend.flintlock.guest_cidr: bad".into(),
        ))),
        ..Default::default()
    };
    let e = choose_backend(Some(BackendKind::Flintlock), root.path().into(), &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("guest_cidr"), "{e}");
    assert_eq!(
        "flintlock".parse::<BackendKind>().unwrap(),
        BackendKind::Flintlock
    );
}
