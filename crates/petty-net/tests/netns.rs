//! Real network namespaces: made, joined by a veth pair to this one, a test
//! host inside answering over it, and nothing left after the handle drops.
//! Needs root (CI runs as root); says so and checks nothing otherwise.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use petty_net::netns::{self, NetError, Netns};

/// iproute2's `ip`, when this test can make namespaces (root).
fn ip() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return None;
    }
    let found = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    assert!(
        found.is_some(),
        "iproute2's ip is missing (scripts/install-deps installs it)"
    );
    found
}

fn link_exists(ip: &Path, name: &str) -> bool {
    std::process::Command::new(ip)
        .args(["link", "show", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_namespace_reaches_this_one_over_its_veth_and_leaves_nothing_when_dropped() {
    let Some(ip) = ip() else { return };
    let pid = std::process::id();
    let name = format!("petty-test-{pid}");
    let host_if = format!("ptv{}h", pid % 100_000);
    // A /30 of 10.209.0.0/16 between this namespace and the test's own.
    let third = (pid % 250) as u8;
    let (host_addr, inside_addr) = (
        Ipv4Addr::new(10, 209, third, 1),
        Ipv4Addr::new(10, 209, third, 2),
    );
    let mut ns = Netns::create(&ip, &name).unwrap();
    assert!(netns::list(&ip).unwrap().contains(&name));
    assert!(ns.path().exists(), "{}", ns.path().display());
    ns.veth(&host_if, "eth0", host_addr, inside_addr).unwrap();
    assert!(link_exists(&ip, &host_if));
    // A second namespace of the same name is refused, and the first stays.
    match Netns::create(&ip, &name) {
        Err(NetError::Failed { command, .. }) => assert!(command.contains(&name), "{command}"),
        other => panic!("{other:?}"),
    }
    assert!(netns::list(&ip).unwrap().contains(&name));

    // A test host inside: one TCP answer on its veth address.
    let script = format!(
        "import socket; s = socket.socket(); s.bind(('{inside_addr}', 8000)); s.listen(1); \
         print('up', flush=True); c, _ = s.accept(); c.sendall(b'hello from the namespace'); c.close()"
    );
    let mut server = ns
        .command(&["python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    server.stdout.as_mut().unwrap().read_exact(&mut up).unwrap();
    let to = SocketAddr::from((inside_addr, 8000));
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from the namespace");
    assert!(server.wait().unwrap().success());

    drop(ns);
    assert!(!netns::list(&ip).unwrap().contains(&name));
    assert!(!Path::new(netns::NETNS_DIR).join(&name).exists());
    assert!(
        !link_exists(&ip, &host_if),
        "the veth outlived its namespace"
    );
}

#[test]
fn names_that_are_not_pettys_are_refused_before_anything_runs() {
    let Some(ip) = ip() else { return };
    for bad in ["other", "petty-has space", "petty-x/y", ""] {
        assert!(
            matches!(Netns::create(&ip, bad), Err(NetError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        netns::remove_named(&ip, "default"),
        Err(NetError::Invalid(_))
    ));
}

#[test]
fn the_sandbox_ruleset_loads_into_a_namespace_and_its_counter_reads_back() {
    let Some(ip) = ip() else { return };
    let Some(nft) = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!("skipped: no nft (scripts/install-deps installs nftables)");
        return;
    };
    let name = format!("petty-t-rules{}", std::process::id());
    let ns = Netns::create(&ip, &name).unwrap();
    let mut load = ns
        .command(&[nft.as_os_str(), "-f".as_ref(), "-".as_ref()])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    load.stdin
        .take()
        .unwrap()
        .write_all(petty_net::ruleset::ruleset().as_bytes())
        .unwrap();
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft refused the ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ns
        .command(&[nft.as_os_str(), "list".as_ref(), "ruleset".as_ref()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("redirect to :15001"), "{listed}");
    assert!(listed.contains("counter refused"), "{listed}");
    drop(ns);
    assert!(!netns::list(&ip).unwrap().contains(&name));
}
