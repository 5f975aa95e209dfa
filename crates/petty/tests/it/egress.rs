//! Sandbox networks through the `petty` CLI, on real VMs (issue 14): the
//! modes and what each reaches, DNS through Petty's resolver, published
//! ports (at create and on a running sandbox), forks of a networked
//! snapshot, and nothing left on the host after destroy, a failed create
//! and a SIGKILLed `petty run`.
//!
//! What the guests are aimed at is limited on purpose: the package
//! registry the host's own apt sources name (read from them here, never
//! written down), servers this test runs on the host, and a test host in
//! a network namespace this test makes. Without root the tests say why
//! and check nothing.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petty_net::netns::Netns;

use crate::Env;

/// Whether this host can run the tests: root, `ip` and `nft`.
pub(crate) fn can_run() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: sandbox networks need root");
        return false;
    }
    let net = petty::settings::net_settings(crate::settings());
    if let Some(why) = net.unavailable() {
        // The helper is this test binary's `petty`; only the host matters.
        if !why.contains("helper") {
            eprintln!("skipped: {why}");
            return false;
        }
    }
    true
}

pub(crate) fn ip_tool() -> PathBuf {
    petty::settings::net_settings(crate::settings()).ip
}

/// The first `http://` package source of the host's apt configuration,
/// as (host, URL of its Release file). Read at run time: the registry's
/// name is the machine's, not the test's.
fn registry() -> (String, String) {
    let (uri, suite) = apt_source();
    release_of(&uri, &suite)
}

/// The first `http://` package source of the host's apt configuration, as
/// (URI, suite): what a guest's `sources.list` names to reach the same
/// registry. Read at run time, never written down.
pub(crate) fn apt_source() -> (String, String) {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str());
            if matches!(ext, Some("sources" | "list")) {
                texts.push(std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    for text in texts {
        // deb822: "URIs: http://host/path" and "Suites: a b".
        let mut uri = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(u) = line.strip_prefix("URIs:") {
                uri = u.split_whitespace().find(|u| u.starts_with("http://"));
            }
            if let (Some(u), Some(s)) = (uri, line.strip_prefix("Suites:")) {
                let suite = s.split_whitespace().next().unwrap();
                return (u.to_string(), suite.to_string());
            }
            // One-line form: "deb [opts] http://host/path suite comp".
            if line.starts_with("deb ") {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(i) = words.iter().position(|w| w.starts_with("http://")) {
                    if let Some(suite) = words.get(i + 1) {
                        return (words[i].to_string(), suite.to_string());
                    }
                }
            }
        }
    }
    panic!("no http:// package source in the host's apt configuration");
}

fn release_of(uri: &str, suite: &str) -> (String, String) {
    let host = uri["http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let url = format!("{}/dists/{suite}/Release", uri.trim_end_matches('/'));
    (host, url)
}

/// Runs Python `code` in sandbox `name`; (exit code, stdout, stderr).
fn py(env: &Env, name: &str, code: &str) -> (i32, String, String) {
    let out = env.run(&["exec", name, "--", "python3", "-c", code]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Python that fetches `url` and prints the status, or the error's class.
fn fetch(url: &str) -> String {
    format!(
        "import urllib.request\n\
         try:\n    print(urllib.request.urlopen({url:?}, timeout=30).status)\n\
         except Exception as e:\n    print(type(e).__name__, getattr(e, 'reason', e))"
    )
}

/// Python that opens `n` connections to ip:port, keeping each, and prints
/// what each read or its error's class, one a line.
fn connect_many(ip: &str, port: u16, n: usize) -> String {
    format!(
        "import socket\nkeep = []\nfor i in range({n}):\n    try:\n        \
         s = socket.create_connection(({ip:?}, {port}), timeout=10)\n        keep.append(s)\n        \
         print(s.recv(100).decode() or 'EOF')\n    except Exception as e:\n        \
         print(type(e).__name__)"
    )
}

/// Python that connects to ip:port and prints what it reads, or the
/// error's class (a refusal is a reset or refused connection, not a
/// timeout).
pub(crate) fn connect(ip: &str, port: u16) -> String {
    format!(
        "import socket\n\
         try:\n    s = socket.create_connection(({ip:?}, {port}), timeout=10)\n    \
         print(s.recv(100).decode() or 'EOF')\n\
         except Exception as e:\n    print(type(e).__name__)"
    )
}

/// A TCP server on the host that greets each connection, until dropped.
pub(crate) struct Greeter {
    pub(crate) port: u16,
    _stop: std::sync::mpsc::Sender<()>,
}

pub(crate) fn greeter(addr: IpAddr, greeting: &'static str) -> Greeter {
    let l = TcpListener::bind((addr, 0)).unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || loop {
        if !matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
            return;
        }
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.write_all(greeting.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    });
    Greeter { port, _stop: tx }
}

/// A test host in its own namespace, on a veth pair: 10.209.N.2 behind
/// the host's 10.209.N.1, running a greeter on port 8080.
pub(crate) struct TestHost {
    server: Child,
    _ns: Netns,
    pub(crate) addr: Ipv4Addr,
    pub(crate) cidr: String,
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub(crate) fn test_host(n: u8) -> TestHost {
    let ip = ip_tool();
    let name = format!("petty-t-eg{}-{n}", std::process::id());
    let mut ns = Netns::create(&ip, &name).unwrap();
    let host_if = format!("pt{}h{n}", std::process::id() % 100_000);
    let addr = Ipv4Addr::new(10, 209, n, 2);
    ns.veth(&host_if, "eth0", Ipv4Addr::new(10, 209, n, 1), addr)
        .unwrap();
    let server = ns
        .command(&[
            "python3",
            "-c",
            "import socket, threading\ns = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 8080))\ns.listen(16)\n\
             def serve(c):\n    c.sendall(b'test host')\n    \
             while c.recv(100):\n        pass\n    c.close()\n\
             while True:\n    c, _ = s.accept()\n    \
             threading.Thread(target=serve, args=(c,), daemon=True).start()",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Listening within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns
        .command(&[
            "python3",
            "-c",
            "import socket; socket.create_connection(('127.0.0.1', 8080), timeout=1)",
        ])
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(
            Instant::now() < deadline,
            "the test host's server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    TestHost {
        server,
        _ns: ns,
        addr,
        cidr: format!("10.209.{n}.0/30"),
    }
}

/// These tests compare the host's namespaces before and after, so they
/// take turns, as every test making a sandbox network does (the daemon's
/// in `serve/network.rs` too).
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This test's turn, once networks an earlier failed run left are swept
/// (any petty process's recovery sweeps them).
pub(crate) fn turn() -> std::sync::MutexGuard<'static, ()> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    Env::new().ok(&["ls"]);
    turn
}

/// This test's turn, when this host can run it.
fn begin() -> Option<std::sync::MutexGuard<'static, ()>> {
    can_run().then(turn)
}

/// `petty create ARGS` with environment `vars`; the sandbox's name.
fn create_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> String {
    let out = env
        .cmd()
        .envs(vars.iter().copied())
        .arg("create")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) type HostState = (Vec<String>, Vec<String>, String);

/// What the host's network looks like: sandbox namespaces, links (a TAP
/// or veth of a sandbox's would be a leak: they live in its namespace),
/// the host's own ruleset. Ports a helper listened on go with its process,
/// which [`Env::assert_clean`] checks for.
pub(crate) fn host_state() -> HostState {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ip = ip_tool();
    let ip = ip.to_str().unwrap();
    let netns: Vec<String> = run(&[ip, "netns", "list"])
        .lines()
        .filter(|l| l.starts_with("petty-sb-"))
        .map(str::to_string)
        .collect();
    let links: Vec<String> = run(&[ip, "-o", "link", "show"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .filter(|l| l.starts_with("tap") || l.starts_with("veth"))
        .collect();
    let nft = petty::settings::net_settings(crate::settings()).nft;
    let ruleset = run(&[nft.to_str().unwrap(), "list", "ruleset"]);
    (netns, links, ruleset)
}

/// Waits (bounded) until the host's network state is `before` again.
pub(crate) fn assert_back_to(before: &HostState) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = host_state();
        if &now == before {
            return;
        }
        if Instant::now() > deadline {
            assert_eq!(&now, before, "the host's network is not what it was");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn create(env: &Env, args: &[&str]) -> String {
    create_with(env, &[], args)
}

#[test]
fn none_has_only_loopback_and_public_reaches_the_registry_never_the_host_or_private_networks() {
    let Some(_turn) = begin() else { return };
    let before = host_state();
    let env = Env::new();
    let (_, url) = registry();
    let host_server = greeter(Ipv4Addr::UNSPECIFIED.into(), "host");
    let testhost = test_host(1);

    let none = create(&env, &["--network", "none"]);
    let (_, ifaces, _) = py(
        &env,
        &none,
        "import os; print(sorted(os.listdir('/sys/class/net')))",
    );
    assert_eq!(ifaces, "['lo']");

    let public = create(&env, &["--network", "public"]);
    assert_eq!(py(&env, &public, &fetch(&url)).1, "200", "{url}");
    // The host: by its own addresses (every one), and the gateway.
    let host_addrs: Vec<String> = petty_net_host_addrs()
        .into_iter()
        .filter(|a| a.is_ipv4() && !a.is_loopback())
        .map(|a| a.to_string())
        .collect();
    assert!(!host_addrs.is_empty());
    for a in host_addrs.iter().chain([&"169.254.0.22".to_string()]) {
        let (_, out, err) = py(&env, &public, &connect(a, host_server.port));
        assert!(
            out == "ConnectionResetError" || out == "ConnectionRefusedError",
            "the host at {a}: {out} {err}"
        );
    }
    // A private network's test host.
    let (_, out, _) = py(&env, &public, &connect(&testhost.addr.to_string(), 8080));
    assert_eq!(
        out, "ConnectionResetError",
        "the test host from public mode"
    );
    // Each refusal is counted and shown with its destination.
    let show = env.ok(&["network", "show", &public]);
    assert!(show.contains("mode         public"), "{show}");
    assert!(
        show.contains(&format!("refused      {}:8080", testhost.addr)),
        "{show}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["network", "show", &public, "--json"])).unwrap();
    assert!(json["refused_connections"].as_u64().unwrap() >= 2, "{json}");

    // Allowed by its block, the test host answers; the host still does not.
    let allowed = create(
        &env,
        &["--network", "allow", "--allow-cidr", &testhost.cidr],
    );
    assert_eq!(
        py(&env, &allowed, &connect(&testhost.addr.to_string(), 8080)).1,
        "test host"
    );
    let (_, out, _) = py(&env, &allowed, &connect(&host_addrs[0], host_server.port));
    assert_eq!(out, "ConnectionResetError");
    // UDP and ICMP other than DNS fail at once.
    let (_, out, _) = py(
        &env,
        &allowed,
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(10)\n\
         s.connect(('10.209.1.2', 9999))\ns.send(b'x')\ntry:\n    s.recv(10)\n    print('answer')\n\
         except Exception as e:\n    print(type(e).__name__, e.errno)",
    );
    // ICMP administratively prohibited: EHOSTUNREACH, at once.
    assert_eq!(out, "OSError 113", "UDP to a non-DNS port");

    let ls = env.ok(&["ls"]);
    assert!(ls.contains("public"), "{ls}");
    for name in [&none, &public, &allowed] {
        env.ok(&["rm", "-f", name]);
    }
    env.assert_clean();
    drop(testhost);
    assert_back_to(&before);
}

/// The host's addresses, as the helper sees them.
fn petty_net_host_addrs() -> Vec<IpAddr> {
    let out = Command::new(ip_tool())
        .args(["-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "inet" || *x == "inet6")?;
            w.get(i + 1)?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn allow_rules_decide_what_resolves_and_what_connects() {
    let Some(_turn) = begin() else { return };
    let env = Env::new();
    let (host, url) = registry();
    let registry_ip = (host.as_str(), 80)
        .to_socket_addrs()
        .unwrap()
        .find(|a| a.is_ipv4())
        .expect("the registry's IPv4 address")
        .ip()
        .to_string();

    let named = create(&env, &["--network", "allow", "--allow-host", &host]);
    assert_eq!(py(&env, &named, &fetch(&url)).1, "200");
    // The address the allowed name resolved to, asked for another name
    // (an address shared by many sites reaches only the allowed one).
    let (_, out, _) = py(
        &env,
        &named,
        &format!(
            "import socket\naddr = socket.getaddrinfo({host:?}, 80, socket.AF_INET)[0][4][0]\n\
             s = socket.create_connection((addr, 80), timeout=10)\n\
             s.sendall(b'GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n')\n\
             try:\n    print(s.recv(100) or 'EOF')\nexcept Exception as e:\n    print(type(e).__name__)"
        ),
    );
    assert_eq!(
        out, "ConnectionResetError",
        "another Host at an allowed address"
    );
    let show = env.ok(&["network", "show", &named]);
    assert!(show.contains("it asked for example.com"), "{show}");

    let other = create(&env, &["--network", "allow", "--allow-host", "example.com"]);
    let (_, out, _) = py(
        &env,
        &other,
        &format!(
            "import socket\ntry:\n    socket.getaddrinfo({host:?}, 80)\n    print('resolved')\n\
             except socket.gaierror as e:\n    print('gaierror')"
        ),
    );
    assert_eq!(out, "gaierror", "a name no rule allows must not resolve");
    let (_, out, _) = py(&env, &other, &connect(&registry_ip, 80));
    assert_eq!(out, "ConnectionResetError", "its address, directly");
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["network", "show", &other, "--json"])).unwrap();
    assert!(status["refused_names"].as_u64().unwrap() >= 1, "{status}");
    let refusals = status["recent_refusals"].to_string();
    assert!(refusals.contains(&host), "{refusals}");
    assert!(refusals.contains(&registry_ip), "{refusals}");

    // Bad rules are refused before anything starts.
    let out = env.run(&[
        "create",
        "--network",
        "public",
        "--allow-host",
        "example.com",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("need network mode allow"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [&named, &other] {
        env.ok(&["rm", "-f", name]);
    }
    env.assert_clean();
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The host ports `petty ls` shows for sandbox `name` (`ADDR:PORT->GUEST`).
fn ls_ports(env: &Env, name: &str) -> Vec<(u16, u16)> {
    let ls = env.ok(&["ls"]);
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in {ls}"));
    let ports = line.split_whitespace().last().unwrap();
    if ports == "-" {
        return Vec::new();
    }
    ports
        .split(',')
        .map(|p| {
            let (host, guest) = p.split_once("->").unwrap();
            let host = host.rsplit_once(':').unwrap().1.parse().unwrap();
            (host, guest.parse().unwrap())
        })
        .collect()
}

/// Starts `python3 -m http.server PORT` in the guest, serving a file that
/// names the sandbox.
fn serve_in(env: &Env, name: &str, port: u16) {
    env.ok(&["exec", name, "--", "sh", "-c", &serve_script(port)]);
}

/// The shell line [`serve_in`] runs in the guest: it starts the server
/// and waits (bounded) until it listens; exit 1 if it never does.
pub(crate) fn serve_script(port: u16) -> String {
    format!(
        "mkdir -p /srv && hostname > /srv/who && cd /srv && \
         (setsid python3 -m http.server {port} >/dev/null 2>&1 &) && \
         for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    )
}

#[test]
fn published_ports_reach_the_guest_and_forks_each_get_their_own() {
    let Some(_turn) = begin() else { return };
    let before = host_state();
    let env = Env::new();
    let (_, url) = registry();
    let name = create(
        &env,
        &["--network", "public", "--publish", "8000", "--name", "web"],
    );
    let ports = ls_ports(&env, &name);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].1, 8000);
    serve_in(&env, &name, 8000);
    let page = http_get(ports[0].0);
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");
    // Published on a running sandbox.
    let addr = env.ok(&["network", "publish", &name, "8001"]);
    let port: u16 = addr.trim().rsplit_once(':').unwrap().1.parse().unwrap();
    serve_in(&env, &name, 8001);
    assert!(http_get(port).contains("200"));
    assert_eq!(ls_ports(&env, &name).len(), 2);

    // Ten forks of a snapshot of it: each fetches the registry's page and
    // serves its own published port (the guests are identical, addresses
    // and all; each has a namespace of its own).
    env.ok(&["snapshot", &name, "webnet"]);
    env.ok(&["rm", "-f", &name]);
    let forks: Vec<String> = env
        .ok(&["fork", "webnet", "-n", "10"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(forks.len(), 10);
    for child in &forks {
        assert_eq!(py(&env, child, &fetch(&url)).1, "200", "{child}");
        env.ok(&["exec", child, "--", "sh", "-c", "hostname > /srv/who"]);
        let ports = ls_ports(&env, child);
        assert_eq!(ports.iter().map(|p| p.1).collect::<Vec<_>>(), [8000, 8001]);
        // The server the snapshot's guest ran, in this child's copy of it.
        let page = http_get(ports[0].0);
        assert!(page.contains("200"), "{child}: {page}");
    }
    for child in &forks {
        env.ok(&["rm", "-f", child]);
    }
    env.ok(&["snapshots", "rm", "webnet"]);
    env.assert_clean();
    assert_back_to(&before);
}

#[test]
fn the_connection_cap_refuses_connections_past_it() {
    let Some(_turn) = begin() else { return };
    let env = Env::new();
    let testhost = test_host(3);
    let name = create_with(
        &env,
        &[("PETTY_NETWORK_MAX_CONNECTIONS", "2")],
        &["--network", "allow", "--allow-cidr", &testhost.cidr],
    );
    let (_, out, _) = py(
        &env,
        &name,
        &connect_many(&testhost.addr.to_string(), 8080, 3),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["test host", "test host", "ConnectionResetError"]
    );
    let show = env.ok(&["network", "show", &name]);
    assert!(show.contains("network.max_connections"), "{show}");
    // Closed, they make room again (once the helper has seen both ends
    // close: a bounded wait).
    let mut answer = String::new();
    for _ in 0..40 {
        answer = py(&env, &name, &connect(&testhost.addr.to_string(), 8080)).1;
        if answer == "test host" {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(answer, "test host");
    env.ok(&["rm", "-f", &name]);
    env.assert_clean();
}

#[test]
fn failed_creates_and_killed_runs_leave_no_network_behind() {
    let Some(_turn) = begin() else { return };
    let before = host_state();
    let env = Env::new();
    // A host port that is taken: the create fails, naming it, and leaves
    // nothing.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = env.run(&[
        "create",
        "--network",
        "public",
        "--publish",
        &format!("80:{port}"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("publishing guest port 80"), "{err}");
    env.assert_clean();
    assert_back_to(&before);
    drop(taken);

    // `petty run` SIGKILLed mid-command: the next petty process removes
    // its sandbox, and with it the network.
    let mut run = env
        .cmd()
        .args(["run", "--network", "public", "--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while host_state().0.len() == before.0.len() {
        assert!(Instant::now() < deadline, "petty run made no network");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its command is running once the row is ready.
    while !env.ok(&["ls"]).contains("ready") {
        assert!(
            Instant::now() < deadline,
            "petty run's sandbox never became ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    env.ok(&["ls"]);
    env.assert_clean();
    assert_back_to(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The turn is held across the whole test on purpose: the other tests that
// wait for it run on threads of their own, not on this runtime.
#[allow(clippy::await_holding_lock)]
async fn the_warm_pool_holds_sandboxes_with_the_default_network() {
    let Some(_turn) = begin() else { return };
    let before = host_state();
    let env = Env::new();
    let (_, url) = registry();
    let mut d = crate::serve::Daemon::start_with(
        &env,
        &["--pool-size", "1", "--on-shutdown", "destroy"],
        &[("PETTY_NETWORK_DEFAULT", "public")],
    );
    let mut ready = false;
    for _ in 0..600 {
        if d.ok("GET", "/v1/pool", None).await["ready"] == 1 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the pool never filled");
    let view = d
        .ok("POST", "/v1/sandboxes", Some(serde_json::json!({})))
        .await;
    assert_eq!(view["network"]["mode"], "public", "{view}");
    assert_eq!(d.ok("GET", "/v1/pool", None).await["hits"], 1);
    let id = view["id"].as_str().unwrap().to_string();
    let code = fetch(&url);
    let out = d
        .ok(
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(serde_json::json!({ "argv": ["python3", "-c", code] })),
        )
        .await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "200", "{out}");
    // A create asking for another network is not the pool's.
    let none = d
        .ok(
            "POST",
            "/v1/sandboxes",
            Some(serde_json::json!({ "network": "none" })),
        )
        .await;
    assert!(none["network"].is_null(), "{none}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    env.assert_clean();
    assert_back_to(&before);
}

#[test]
fn a_cold_booted_sandbox_gets_its_network_too() {
    let Some(_turn) = begin() else { return };
    let env = Env::new();
    let (_, url) = registry();
    // No template: the guest boots with its interface and configures it.
    let name = create_with(
        &env,
        &[("PETTY_BACKEND_TEMPLATES", "false")],
        &["--network", "public"],
    );
    assert_eq!(py(&env, &name, &fetch(&url)).1, "200");
    env.ok(&["rm", "-f", &name]);
    env.assert_clean();
}

#[test]
fn a_networked_sandbox_hibernates_resumes_stops_and_starts_with_its_network() {
    let Some(_turn) = begin() else { return };
    let before = host_state();
    let env = Env::new();
    let (_, url) = registry();
    let name = create(
        &env,
        &["--network", "public", "--publish", "8000", "--name", "nws"],
    );
    let port = ls_ports(&env, &name)[0].0;
    serve_in(&env, &name, 8000);
    assert!(http_get(port).contains("200"));
    let state_of = |env: &Env| {
        let ls = env.ok(&["ls"]);
        let line = ls
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{ls}"))
            .to_string();
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    // Hibernated, it leaves no network on the host...
    env.ok(&["hibernate", &name]);
    assert_eq!(state_of(&env), "hibernated");
    assert_back_to(&before);
    // ...and resumed, the server it was running answers on the same host
    // port, and the guest reaches the registry.
    env.ok(&["resume", &name]);
    assert_eq!(ls_ports(&env, &name), [(port, 8000)]);
    assert!(http_get(port).contains("200"));
    assert_eq!(py(&env, &name, &fetch(&url)).1, "200");
    // Stopped, it leaves none either; started, it boots with its network
    // (its server, a process, is gone and is started again).
    env.ok(&["stop", &name]);
    assert_eq!(state_of(&env), "stopped");
    assert_back_to(&before);
    env.ok(&["start", &name]);
    assert_eq!(py(&env, &name, &fetch(&url)).1, "200");
    serve_in(&env, &name, 8000);
    assert_eq!(ls_ports(&env, &name), [(port, 8000)]);
    assert!(http_get(port).contains("200"));
    env.ok(&["rm", "-f", &name]);
    env.assert_clean();
    assert_back_to(&before);
}
