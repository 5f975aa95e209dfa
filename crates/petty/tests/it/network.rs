//! A VM's network interface (issue 14): a virtio-net device on a TAP
//! device inside a network namespace made for it, which the agent
//! configures with the fixed addresses of `petty_protocol::net`; a snapshot
//! of such a VM restored into another namespace set up the same way
//! reaches that namespace with nothing re-addressed. The networked tests
//! need root (network namespaces), iproute2's `ip` and `python3` on the
//! host (a test server in the namespace); without them they say why and
//! check nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use petty_agent_client::AgentClient;
use petty_net::netns::Netns;
use petty_protocol::net::{GATEWAY_IP, GATEWAY_MAC, GUEST_MAC, PREFIX_LEN, TAP_NAME};
use petty_protocol::ExecRequest;
use petty_vmm::{Vm, VmConfig, VmNetwork, Vmm};

use crate::{leftovers, run_root, vmm};

/// The port the test server listens on, on the gateway's address.
const PORT: u16 = 8321;

/// `ip` and `python3`, when this host can run the networked tests.
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a VM's network namespace needs root");
        return None;
    }
    let dirs: Vec<PathBuf> = petty_vmm::STANDARD_PATH.iter().map(PathBuf::from).collect();
    let Some(ip) = petty_vmm::find_on_path("ip", &dirs) else {
        eprintln!("skipped: no iproute2 `ip` (scripts/install-deps installs it)");
        return None;
    };
    let Some(python) = petty_vmm::find_on_path("python3", &dirs) else {
        eprintln!("skipped: no python3 on the host for the namespace's test server");
        return None;
    };
    if petty_vmm::find_on_path("qemu-system-x86_64", &dirs).is_none() {
        eprintln!("skipped: no qemu-system-x86_64 (scripts/install-deps installs it)");
        return None;
    }
    Some((ip, python))
}

/// A name no other test run uses.
fn random_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("petty-t-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// A sandbox's namespace, set up as the host sets one up: its TAP device
/// with the gateway's address and MAC, and a test server on the gateway's
/// address that writes `greeting` to whoever connects. Dropping it stops
/// the server and removes the TAP device and the namespace, also when a
/// test fails.
struct SandboxNet {
    server: Option<Child>,
    ns: Option<Netns>,
}

impl SandboxNet {
    fn new(ip: &Path, python: &Path, greeting: &str) -> Self {
        let ns = Netns::create(ip, &random_name()).expect("a network namespace");
        let mut net = Self {
            server: None,
            ns: Some(ns),
        };
        let ns = net.ns.as_ref().unwrap();
        let gateway = format!("{GATEWAY_IP}/{PREFIX_LEN}");
        for args in [
            &["tuntap", "add", "dev", TAP_NAME, "mode", "tap"][..],
            &["link", "set", TAP_NAME, "address", GATEWAY_MAC],
            &["addr", "add", &gateway, "dev", TAP_NAME],
            &["link", "set", TAP_NAME, "up"],
        ] {
            ns.ip(args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
        }
        let server = "import socket, sys\n\
                      s = socket.socket()\n\
                      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind((sys.argv[1], int(sys.argv[2])))\n\
                      s.listen(8)\n\
                      print('ready', flush=True)\n\
                      while True:\n    \
                          c, _ = s.accept()\n    \
                          c.sendall(sys.argv[3].encode())\n    \
                          c.close()\n";
        let mut child = ns
            .command(&[python.as_os_str()])
            .arg("-c")
            .arg(server)
            .arg(GATEWAY_IP.to_string())
            .arg(PORT.to_string())
            .arg(greeting)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the namespace's test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        net.server = Some(child);
        assert_eq!(line.trim(), "ready", "the test server did not start");
        net
    }

    /// What a VM living in this namespace is given.
    fn network(&self) -> VmNetwork {
        VmNetwork {
            netns: self.ns.as_ref().unwrap().path(),
            tap: TAP_NAME.into(),
            mac: GUEST_MAC.into(),
        }
    }
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(ns) = self.ns.take() {
            let _ = ns.ip(["link", "delete", TAP_NAME]);
            if let Err(e) = ns.remove() {
                eprintln!("removing the test's network namespace: {e}");
            }
        }
    }
}

/// The agent of `vm`, greeted.
async fn agent_of(vm: &dyn Vm) -> AgentClient {
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match vm.connect_agent().await {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => panic!("agent socket: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let agent = AgentClient::new(stream, Duration::from_secs(120));
    if let Err(e) = agent.handshake(Duration::from_secs(240)).await {
        panic!(
            "the agent did not answer: {e}; console:\n{}",
            vm.console_tail()
        );
    }
    agent
}

/// Runs `script` with `sh -c` in the guest; its stdout, which it must succeed.
async fn sh(agent: &AgentClient, script: &str) -> String {
    let mut req = ExecRequest::shell(script);
    req.timeout_ms = Some(120_000);
    let out = agent.exec_collect(req, None, 1 << 20).await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{script}: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// What the guest reads from the test server at the gateway's address.
async fn fetch_from_gateway(agent: &AgentClient) -> String {
    sh(
        agent,
        &format!(
            "python3 -c \"import socket\n\
             s = socket.create_connection(('{GATEWAY_IP}', {PORT}), timeout=60)\n\
             data = b''\n\
             while True:\n    \
                 chunk = s.recv(4096)\n    \
                 if not chunk: break\n    \
                 data += chunk\n\
             print(data.decode())\""
        ),
    )
    .await
    .trim()
    .to_string()
}

/// The guest's default route, from `/proc/net/route`: its interface and
/// gateway (little-endian hex, as the kernel prints it).
async fn default_route(agent: &AgentClient) -> Option<(String, String)> {
    sh(agent, "cat /proc/net/route")
        .await
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| (f[0].to_string(), f[2].to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_a_network_has_only_loopback() {
    let root = run_root();
    let vmm = vmm(root.path());
    let assets = crate::assets();
    let vm = vmm
        .start(&VmConfig::new("no-net", &assets.kernel, &assets.rootfs))
        .await
        .unwrap();
    let agent = agent_of(&*vm).await;
    assert_eq!(sh(&agent, "ls /sys/class/net").await, "lo\n");
    assert_eq!(default_route(&agent).await, None);
    // Its snapshot restores only into a VM without a network: QEMU would
    // load it into one with a network device the guest never learns of.
    let snap = tempfile::tempdir().unwrap();
    vm.snapshot(snap.path(), false).await.unwrap();
    drop(agent);
    vm.stop().await.unwrap();
    let err = vmm
        .start(&VmConfig {
            restore_from: Some(snap.path().to_path_buf()),
            network: Some(VmNetwork::new("/run/netns/petty-t-none")),
            ..VmConfig::new("no-net-restored", &assets.kernel, &assets.rootfs)
        })
        .await
        .err()
        .expect("a snapshot without a network restored with one");
    assert!(err.to_string().contains("cannot add one"), "{err}");
    assert!(leftovers(root.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networked_vm_reaches_its_namespace_and_its_restore_reaches_another() {
    let Some((ip, python)) = prerequisites() else {
        return;
    };
    let first = SandboxNet::new(&ip, &python, "hello from the first namespace");
    let second = SandboxNet::new(&ip, &python, "hello from the second namespace");
    let root = run_root();
    let vmm = vmm(root.path());
    let assets = crate::assets();
    let snap = tempfile::tempdir().unwrap();
    let base = VmConfig {
        network: Some(first.network()),
        ..VmConfig::new("net-origin", &assets.kernel, &assets.rootfs)
    };

    let vm = vmm.start(&base).await.unwrap();
    let agent = agent_of(&*vm).await;
    assert_eq!(sh(&agent, "ls /sys/class/net").await, "eth0\nlo\n");
    assert_eq!(
        sh(&agent, "cat /sys/class/net/eth0/address").await.trim(),
        GUEST_MAC
    );
    // Via 169.254.0.22 (0x1600fea9 little-endian) on eth0.
    assert_eq!(
        default_route(&agent).await,
        Some(("eth0".into(), "1600FEA9".into()))
    );
    let resolv = sh(&agent, "cat /etc/resolv.conf").await;
    assert!(
        resolv.contains(&format!("nameserver {GATEWAY_IP}")),
        "{resolv}"
    );
    assert_eq!(
        fetch_from_gateway(&agent).await,
        "hello from the first namespace"
    );

    // Snapshot it, as the manager does (its RAM then re-saved into a file
    // of its own by a VM that needs a TAP device too, while this one still
    // holds the namespace's).
    agent.before_snapshot().await.unwrap();
    vm.snapshot(snap.path(), true).await.unwrap();
    vmm.share_snapshot_ram(snap.path(), &base).await.unwrap();
    assert_eq!(
        fetch_from_gateway(&agent).await,
        "hello from the first namespace",
        "the snapshotted VM runs on"
    );
    drop(agent);
    vm.stop().await.unwrap();

    // Restored into the second namespace: the same addresses reach it.
    let restored = vmm
        .start(&VmConfig {
            restore_from: Some(snap.path().to_path_buf()),
            memory: vmm.restore_memory(snap.path()),
            network: Some(second.network()),
            ..VmConfig::new("net-restored", &assets.kernel, &assets.rootfs)
        })
        .await
        .unwrap();
    let agent = agent_of(&*restored).await;
    agent
        .refresh_identity(Some("restored"), None)
        .await
        .unwrap();
    assert_eq!(
        fetch_from_gateway(&agent).await,
        "hello from the second namespace"
    );
    let resolv = sh(&agent, "cat /etc/resolv.conf").await;
    assert!(
        resolv.contains(&format!("nameserver {GATEWAY_IP}")),
        "{resolv}"
    );

    // Restoring it without a network is refused before QEMU starts (its
    // state has a network device).
    let without = vmm
        .start(&VmConfig {
            restore_from: Some(snap.path().to_path_buf()),
            memory: vmm.restore_memory(snap.path()),
            ..VmConfig::new("net-missing", &assets.kernel, &assets.rootfs)
        })
        .await;
    let err = without
        .err()
        .expect("a networked snapshot restored without its network");
    assert!(
        err.to_string().contains("taken with a network interface"),
        "{err}"
    );

    // A standby VMM for the same snapshot, started ahead of need in the
    // first namespace (free again) and finished later: the same device.
    let standby = vmm
        .start(&VmConfig {
            restore_from: Some(snap.path().to_path_buf()),
            memory: vmm.restore_memory(snap.path()),
            network: Some(first.network()),
            die_with_parent: false,
            standby: true,
            ..VmConfig::new("net-standby", &assets.kernel, &assets.rootfs)
        })
        .await
        .unwrap();
    standby.finish_standby(None).await.unwrap();
    let standby_agent = agent_of(&*standby).await;
    assert_eq!(
        fetch_from_gateway(&standby_agent).await,
        "hello from the first namespace"
    );
    drop(standby_agent);
    standby.stop().await.unwrap();

    drop(agent);
    restored.stop().await.unwrap();
    assert!(leftovers(root.path()).is_empty());
}
