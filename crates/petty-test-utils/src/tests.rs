//! The fixtures themselves: the fake agent through the real client, and
//! the fake backend's run directories and processes.

use std::time::Duration;

use petty_agent_client::{AgentClient, ClientError};
use petty_protocol::{ExecRequest, Request};
use petty_vmm::{Vm, VmConfig, Vmm, VmmError, DETACHED_MARKER, OWNER_FILE, PID_FILE};

use super::*;

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
    fake: FakeVmm,
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, rootfs) = fake_assets(&dir.path().join("assets"));
    let root = dir.path().join("run");
    Host {
        fake: FakeVmm::new(&root),
        root,
        kernel,
        rootfs,
        _dir: dir,
    }
}

impl Host {
    fn config(&self, id: &str) -> VmConfig {
        VmConfig::new(id, &self.kernel, &self.rootfs)
    }

    /// Run directories under the root (its own dot-files aside).
    fn run_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

async fn client(vm: &dyn Vm) -> AgentClient {
    let stream = vm.connect_agent().await.unwrap();
    AgentClient::new(stream, Duration::from_secs(30))
}

#[tokio::test(start_paused = true)]
async fn a_fake_vm_has_a_run_directory_and_a_process_like_any_vm() {
    let h = host();
    let detached = VmConfig {
        die_with_parent: false,
        ..h.config("vm-1")
    };
    let vm = h.fake.start(&detached).await.unwrap();
    let dir = vm.run_dir().to_path_buf();
    assert_eq!(dir, h.root.join("vm-1"));
    for f in [OWNER_FILE, PID_FILE, DETACHED_MARKER] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(petty_vmm::vmm_alive(vm.pid(), &dir));
    assert!(vm.is_running());
    assert_eq!(h.fake.running().len(), 1);
    assert_eq!(h.fake.starts()[0].id, "vm-1");

    // Another process attaches to it by pid; a dead pid is refused.
    let attached = h.fake.attach("vm-1", vm.pid()).unwrap();
    assert_eq!(attached.pid(), vm.pid());
    attached.detach();
    match h.fake.attach("vm-1", dead_pid()) {
        Err(VmmError::Gone { .. }) => {}
        Err(e) => panic!("expected Gone, got {e}"),
        Ok(_) => panic!("attached to a dead pid"),
    }

    vm.stop().await.unwrap();
    assert!(h.run_dirs().is_empty(), "{:?}", h.run_dirs());
    assert!(h.fake.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failed_starts_leave_nothing() {
    let h = host();
    h.fake.fail_starts(1);
    assert!(matches!(
        h.fake.start(&h.config("a")).await,
        Err(VmmError::Spawn { .. })
    ));
    let missing = VmConfig {
        restore_from: Some(h.root.join("no-snapshot")),
        ..h.config("b")
    };
    assert!(matches!(
        h.fake.start(&missing).await,
        Err(VmmError::Snapshot { .. })
    ));
    let no_kernel = VmConfig::new("c", h.root.join("nothing"), &h.rootfs);
    assert!(matches!(
        h.fake.start(&no_kernel).await,
        Err(VmmError::AssetMissing { .. })
    ));
    assert_eq!(h.fake.start_attempts(), 3);
    assert!(h.fake.starts().is_empty());
    assert!(h.run_dirs().is_empty());
    // The countdown is spent: the next start works.
    let vm = h.fake.start(&h.config("d")).await.unwrap();
    vm.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_killed_vm_ends_and_its_agent_hangs_up() {
    let h = host();
    let vm = h.fake.start(&h.config("vm")).await.unwrap();
    let agent = client(vm.as_ref()).await;
    agent.handshake(Duration::from_secs(10)).await.unwrap();
    let ended = tokio::spawn(vm.ended());
    h.fake.vm("vm").unwrap().kill();
    let cause = ended.await.unwrap();
    assert!(cause.contains("exited"), "{cause}");
    assert!(!vm.is_running());
    assert!(agent.ping().await.is_err(), "the connection closed");
    vm.stop().await.unwrap();
    assert!(h.run_dirs().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_fake_agent_answers_the_real_client() {
    let h = host();
    let vm = h.fake.start(&h.config("vm")).await.unwrap();
    let agent = client(vm.as_ref()).await;
    let pong = agent.handshake(Duration::from_secs(10)).await.unwrap();
    assert_eq!(pong.protocol, petty_protocol::PROTOCOL_VERSION);
    agent.sync_clock().await.unwrap();

    let out = agent
        .exec_collect(ExecRequest::shell("echo hello there"), None, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.status.code),
        (&b"hello there\n"[..], 0)
    );
    let out = agent
        .exec_collect(ExecRequest::argv(["cat"]), Some(b"in".to_vec()), 1 << 20)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"in");
    assert_eq!(
        agent
            .exec_collect(ExecRequest::shell("exit 3"), None, 1 << 20)
            .await
            .unwrap()
            .status
            .code,
        3
    );
    // An exec runs on tokio's clock: a minute costs no real time, and a
    // timeout below it ends it.
    let mut long = ExecRequest::shell("sleep 60");
    long.timeout_ms = Some(1000);
    let out = agent.exec_collect(long, None, 1 << 20).await.unwrap();
    assert!(out.status.timed_out);

    agent
        .write_file("/root/dir/a.txt", b"abc", None)
        .await
        .unwrap();
    assert_eq!(agent.read_file("/root/dir/a.txt").await.unwrap(), b"abc");
    let names: Vec<_> = agent
        .list_dir("/root")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(names, [("dir".to_string(), true)]);
    assert!(agent.stat("/root/dir").await.unwrap().is_dir);
    agent
        .rename("/root/dir/a.txt", "/root/b.txt")
        .await
        .unwrap();
    assert!(matches!(
        agent.read_file("/root/dir/a.txt").await,
        Err(ClientError::Remote { .. })
    ));
    assert_eq!(
        h.fake.vm("vm").unwrap().file("/root/b.txt").unwrap(),
        b"abc"
    );
    agent.remove("/root/b.txt", false).await.unwrap();

    let seen = h.fake.vm("vm").unwrap().requests();
    assert!(matches!(seen[0], Request::Hello));
    assert!(seen.iter().any(|r| matches!(r, Request::SetTime { .. })));
    vm.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn agent_modes_play_a_hung_a_crashed_and_a_mismatched_guest() {
    let h = host();
    let vm = h.fake.start(&h.config("vm")).await.unwrap();
    let handle = h.fake.vm("vm").unwrap();
    let agent = client(vm.as_ref()).await;
    agent.handshake(Duration::from_secs(10)).await.unwrap();

    // Hung: the request times out (on tokio's clock).
    handle.set_agent(AgentMode::Silent);
    assert!(matches!(
        agent.ping().await,
        Err(ClientError::Timeout { .. })
    ));
    // Slow, but within the deadline.
    handle.set_agent(AgentMode::Slow(Duration::from_secs(20)));
    agent.ping().await.unwrap();
    // Another protocol version.
    handle.set_agent(AgentMode::WrongVersion);
    assert!(matches!(
        agent.ping().await,
        Err(ClientError::Version { .. })
    ));
    // Paused: nothing is answered until it resumes.
    handle.set_agent(AgentMode::Answer);
    vm.pause().await.unwrap();
    let ping = tokio::spawn({
        let agent = agent.clone();
        async move { agent.ping().await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!ping.is_finished());
    vm.resume().await.unwrap();
    ping.await.unwrap().unwrap();
    // Crashed: the connection closes.
    handle.set_agent(AgentMode::Hangup);
    assert!(matches!(
        agent.ping().await,
        Err(ClientError::Disconnected(_))
    ));
    // No socket at all.
    handle.set_agent(AgentMode::Refuse);
    assert!(matches!(
        vm.connect_agent().await,
        Err(VmmError::AgentConnect { .. })
    ));
    vm.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn snapshots_write_what_restores_and_templates_read() {
    let h = host();
    let snap = h.root.parent().unwrap().join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    let ram = snap.join(petty_vmm::SNAPSHOT_RAM);
    let template = VmConfig {
        memory: petty_vmm::MemoryBacking::File {
            path: ram.clone(),
            shared: true,
        },
        ..h.config("template")
    };
    let vm = h.fake.start(&template).await.unwrap();
    assert!(ram.is_file(), "the VMM makes a shared RAM file");
    vm.snapshot(&snap, false).await.unwrap();
    assert!(h.fake.snapshot_exists(&snap));
    assert!(h.fake.vm("template").unwrap().is_paused());
    vm.stop().await.unwrap();

    let restore = VmConfig {
        memory: h.fake.restore_memory(&snap),
        restore_from: Some(snap.clone()),
        ..h.config("child")
    };
    let child = h.fake.start(&restore).await.unwrap();
    h.fake.fail_snapshots(1);
    assert!(child.snapshot(&snap, true).await.is_err());
    child.stop().await.unwrap();
}
