//! `petty bench network`: what a sandbox network costs, each figure beside
//! a baseline measured in the same run:
//!
//! 1. create from a template to the first exec's result with `--network
//!    public`, beside `--network none` both with a standby VMM waiting (a
//!    daemon's usual create) and without one (the path a networked create
//!    takes, since a standby has no namespace), interleaved; and the
//!    network's setup and removal timed alone;
//! 2. a download inside the guest (`--network allow`, the test host's /30
//!    allowed) from a server on a test host in a network namespace of its
//!    own, joined to the host by a veth pair, beside the same download by
//!    this process on the host, and beside the guest reading the same
//!    bytes over its own loopback (its TCP stack and Python under
//!    emulation, no network);
//! 3. request round trips from the host through a published port to an
//!    echo server in the guest, beside round trips to an echo server of
//!    this process on 127.0.0.1.
//!
//! Packets go only to loopback, the guest and the test host this
//! benchmark makes. Everything it makes (sandboxes, their networks, the
//! test host's namespace and veth pair, scratch directories) is removed at
//! the end, on a failure and on Ctrl-C or SIGTERM. A benchmark, not a
//! test: it prints, never asserts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use petty::settings::ensure_assets;
use petty_config::Settings;
use petty_core::{ExecRequest, SandboxConfig, SandboxManager};
use petty_net::netns::Netns;
use petty_net::{NetSettings, NetworkMode, NetworkSpec, Publish};

use crate::bench::{median, ms, nearest_rank, wait_for_standby};

/// The test host's /30: the host's end of the veth pair, and the test host.
const TEST_NET: &str = "10.209.250.0/30";
const HOST_END: Ipv4Addr = Ipv4Addr::new(10, 209, 250, 1);
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(10, 209, 250, 2);
/// The test host's download server.
const DOWNLOAD_PORT: u16 = 8000;
/// The guest's echo server, published on a host port the helper chooses.
const ECHO_PORT: u16 = 7000;
/// Bytes of each echo request (and its answer).
const ECHO_BYTES: usize = 64;
/// Round trips before the measured ones (first-use translation under TCG,
/// the helper's and the guest's code paths).
const WARM_ROUND_TRIPS: usize = 20;

/// The flags of `petty bench network`.
pub struct Options {
    /// Creates of each kind.
    pub iterations: usize,
    /// Downloads of each kind.
    pub downloads: usize,
    /// Size of each download, in MB (10^6 bytes).
    pub megabytes: u64,
    /// Round trips of each kind.
    pub round_trips: usize,
}

/// `petty bench network`.
pub async fn network(o: Options, s: &Settings) -> anyhow::Result<ExitCode> {
    if o.iterations == 0 || o.downloads == 0 || o.megabytes == 0 || o.round_trips == 0 {
        bail!("--iterations, --downloads, --megabytes and --round-trips must be at least 1");
    }
    // Before anything starts: networks need root, iproute2, nftables, the
    // helper program (`petty`, beside this binary) and /dev/net/tun.
    if let Some(why) = petty::settings::net_settings(s).unavailable() {
        let hint = if why.contains("helper") {
            "the helper is the `petty` binary, found beside petty-bench or on the search path: \
             cargo build --release -p petty -p petty-bench"
        } else {
            "run it as root; `petty doctor` shows what else this host lacks"
        };
        bail!(
            "`petty bench network` needs sandbox networks, which this host cannot make: {why} \
             (hint: {hint}); nothing was measured"
        );
    }
    ensure_assets(s, true).await?;
    let scratch = tempfile::Builder::new().prefix("petty-bench-").tempdir()?;
    let mut config = s.clone();
    config.paths.data_dir = scratch.path().join("data");
    config.paths.run_dir = scratch.path().join("run");
    let net = petty::settings::net_settings(&config);
    let (vmm, notice) =
        petty::settings::backend_options(&config).qemu(config.paths.run_dir.clone());
    eprintln!("{notice}");
    let accel = vmm.accel().accel.to_string();
    let vmm: Arc<dyn petty_vmm::Vmm> = Arc::new(vmm);
    // Two managers on the scratch directories: one keeping a standby VMM
    // for its template (as a daemon does), one keeping none.
    let mut mc = petty::settings::manager_config(&config);
    mc.max_sandboxes = 16;
    mc.templates = true;
    mc.standby = true;
    let standby = SandboxManager::new(mc.clone(), vmm.clone()).await?;
    mc.data_dir = scratch.path().join("data-no-standby");
    mc.standby = false;
    let plain = SandboxManager::new(mc, vmm).await?;

    let outcome = tokio::select! {
        r = measure(&standby, &plain, &net, &o, &accel) => Some(r),
        _ = interrupted() => None,
    };
    // Whatever happened: the sandboxes and their networks go, then any
    // network or VMM left under the scratch directories (a create cut
    // short), then the directories. The test host went with `measure`.
    for m in [&standby, &plain] {
        if let Err(e) = m.destroy_all().await {
            eprintln!("petty bench network: destroying its sandboxes: {e}");
        }
        m.stop_standbys();
    }
    remove_networks_under(&net);
    crate::bench::kill_processes_mentioning(scratch.path());
    drop((standby, plain));
    match outcome {
        Some(Ok(report)) => {
            report.print();
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(e)) => Err(e),
        None => {
            eprintln!("\npetty bench network: interrupted; what it made is removed");
            Ok(ExitCode::from(130))
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Removes every sandbox network whose directory is under `net`'s state
/// root (this benchmark's own): its helper, its namespace, its directory.
fn remove_networks_under(net: &NetSettings) {
    let Ok(entries) = std::fs::read_dir(&net.state_root) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if let Err(e) = petty_net::sandbox::remove(net, &id) {
            eprintln!("petty bench network: removing the network of {id}: {e}");
        }
    }
}

/// Percentiles (nearest rank) of a set of durations.
struct Stats {
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self {
            p50: nearest_rank(&v, 0.50),
            p95: nearest_rank(&v, 0.95),
            p99: nearest_rank(&v, 0.99),
            max: *v.last().expect("at least one sample"),
        }
    }

    /// `p50 …  p95 …  p99 …  max …`, with `decimals` places of ms.
    fn line(&self, decimals: usize) -> String {
        let f = |d: Duration| format!("{:.*} ms", decimals, d.as_secs_f64() * 1000.0);
        format!(
            "p50 {}  p95 {}  p99 {}  max {}",
            f(self.p50),
            f(self.p95),
            f(self.p99),
            f(self.max)
        )
    }
}

/// The three kinds of create, in the order of [`Report::creates`].
const CREATE_KINDS: [&str; 3] = [
    "--network none, standby VMM waiting",
    "--network none, no standby VMM",
    "--network public (never a standby)",
];

/// One kind of create: to a ready sandbox, to the first exec's result,
/// and its destroy.
#[derive(Default)]
struct Creates {
    ready: Vec<Duration>,
    total: Vec<Duration>,
    destroy: Vec<Duration>,
}

struct Report {
    accel: String,
    iterations: usize,
    creates: [Creates; 3],
    setup: Vec<Duration>,
    teardown: Vec<Duration>,
    megabytes: u64,
    /// Seconds of each download: the host's, the guest's through its
    /// network, the guest's over its own loopback.
    host_dl: Vec<f64>,
    guest_dl: Vec<f64>,
    guest_lo: Vec<f64>,
    bandwidth_mbit: u32,
    round_trips: usize,
    host_rtt: Vec<Duration>,
    pub_rtt: Vec<Duration>,
    host_conn: Vec<Duration>,
    pub_conn: Vec<Duration>,
    guest_rtt: Vec<Duration>,
    guest_conn: Vec<Duration>,
    publish: SocketAddr,
}

async fn measure(
    standby: &SandboxManager,
    plain: &SandboxManager,
    net: &NetSettings,
    o: &Options,
    accel: &str,
) -> anyhow::Result<Report> {
    let public = NetworkSpec::mode(NetworkMode::Public);
    let none = NetworkSpec::default();
    // Warm-up, not counted: each manager makes its templates (the
    // networked one too), and the standby manager its standby VMM.
    eprintln!("making the templates (not counted)");
    for (m, spec) in [(standby, &none), (plain, &none), (plain, &public)] {
        create_and_exec(m, spec).await?;
    }
    wait_for_standby(standby).await?;

    // 1. Create to first exec, the three kinds in turn, rotated each
    //    iteration so none always follows another.
    let mut creates: [Creates; 3] = Default::default();
    for i in 0..o.iterations {
        for k in 0..3 {
            let kind = (i + k) % 3;
            let (m, spec) = match kind {
                0 => (standby, &none),
                1 => (plain, &none),
                _ => (plain, &public),
            };
            // Every create starts on a quiet host, with the standby ready.
            wait_for_standby(standby).await?;
            let (ready, total, destroy) = create_and_exec(m, spec).await?;
            let c = &mut creates[kind];
            c.ready.push(ready);
            c.total.push(total);
            c.destroy.push(destroy);
        }
        eprint!("\rcreate to first exec: {}/{}", i + 1, o.iterations);
    }
    eprintln!();
    // The network alone, as a create makes it and a destroy removes it.
    let (mut setup, mut teardown) = (Vec::new(), Vec::new());
    for i in 0..o.iterations {
        let (net, id) = (net.clone(), format!("bench{}n{i}", std::process::id()));
        let spec = public.clone();
        let (made, gone) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let sn = petty_net::SandboxNet::create(&net, &id, &spec, std::process::id())?;
            let made = t.elapsed();
            sn.keep();
            let t = Instant::now();
            petty_net::sandbox::remove(&net, &id)?;
            Ok::<_, petty_net::NetError>((made, t.elapsed()))
        })
        .await??;
        setup.push(made);
        teardown.push(gone);
    }

    // 2 and 3: one sandbox that may reach the test host and publishes its
    // echo server's port.
    let test_host = TestHost::start(&net.ip, o.megabytes * 1_000_000)?;
    let spec = NetworkSpec {
        mode: NetworkMode::Allow,
        allow_cidrs: vec![TEST_NET.into()],
        publish: vec![Publish {
            guest: ECHO_PORT,
            host: 0,
        }],
        ..NetworkSpec::default()
    };
    let id = plain
        .create(SandboxConfig::builder().network(spec).build()?)
        .await?
        .to_string();
    let info = plain.info(&id).await?;
    let host_port = info
        .network
        .as_ref()
        .and_then(|n| n.publish.first())
        .map(|p| p.host)
        .context("the sandbox's published port")?;
    let publish_ip = match net.publish_address {
        a if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        a => a,
    };
    let publish = SocketAddr::new(publish_ip, host_port);

    let bytes = o.megabytes * 1_000_000;
    let download = SocketAddr::from((TEST_HOST, DOWNLOAD_PORT));
    // Warm-up: a small download each way, so the guest's code paths are
    // translated before the measured runs.
    guest_seconds(plain, &id, &guest_download(download, None)).await?;
    host_download(download, bytes).await?;
    let (mut host_dl, mut guest_dl, mut guest_lo) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..o.downloads {
        host_dl.push(host_download(download, bytes).await?);
        guest_dl.push(guest_seconds(plain, &id, &guest_download(download, Some(bytes))).await?);
        guest_lo.push(guest_seconds(plain, &id, &guest_loopback(bytes)).await?);
        eprint!("\rdownloads: {}/{}", i + 1, o.downloads);
    }
    eprintln!();
    drop(test_host);

    // 3. The guest's echo server, started in a session of its own.
    let r = plain
        .exec(&id, python(&echo_server_starter()), None)
        .await?;
    if !r.success() || r.stdout.trim() != "ready" {
        bail!("the guest's echo server did not start: {r:?}");
    }
    let n = o.round_trips;
    let (host_rtt, pub_rtt, host_conn, pub_conn) =
        tokio::task::spawn_blocking(move || round_trips(publish, n))
            .await
            .context("the round-trip thread")??;
    let (guest_rtt, guest_conn) = guest_round_trips(plain, &id, n).await?;
    plain.destroy(&id).await?;

    Ok(Report {
        accel: accel.to_string(),
        iterations: o.iterations,
        creates,
        setup,
        teardown,
        megabytes: o.megabytes,
        host_dl,
        guest_dl,
        guest_lo,
        bandwidth_mbit: net.bandwidth_mbit,
        round_trips: n,
        host_rtt,
        pub_rtt,
        host_conn,
        pub_conn,
        guest_rtt,
        guest_conn,
        publish,
    })
}

/// One create with `spec`, its first exec (`true`, through the agent) and
/// its destroy: create to ready, create to the exec's result, destroy.
async fn create_and_exec(
    m: &SandboxManager,
    spec: &NetworkSpec,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let config = SandboxConfig::builder().network(spec.clone()).build()?;
    let t = Instant::now();
    let id = m.create(config).await?.to_string();
    let ready = t.elapsed();
    let r = m.exec(&id, ExecRequest::argv(["true"]), None).await;
    let total = t.elapsed();
    let t = Instant::now();
    m.destroy(&id).await?;
    let destroy = t.elapsed();
    let r = r?;
    if !r.success() {
        bail!("the first exec of `true` failed: {r:?}");
    }
    Ok((ready, total, destroy))
}

/// `python3 -c CODE`, with a timeout long enough for a slow emulated guest.
fn python(code: &str) -> ExecRequest {
    let mut req = ExecRequest::argv(["python3", "-c", code]);
    req.timeout_ms = Some(600_000);
    req
}

/// Runs `code` in the guest; the seconds it printed last (`BYTES
/// SECONDS`), checking it read what was sent when `bytes` is known.
async fn guest_seconds(
    m: &SandboxManager,
    id: &str,
    code: &(String, Option<u64>),
) -> anyhow::Result<f64> {
    let (code, bytes) = code;
    let r = m.exec(id, python(code), None).await?;
    let said = r.stdout.trim();
    let mut words = said.split_whitespace();
    let (got, secs) = match (words.next(), words.next()) {
        (Some(n), Some(s)) if r.success() => (n.parse::<u64>()?, s.parse::<f64>()?),
        _ => bail!("the guest's download failed: {r:?}"),
    };
    if let Some(b) = bytes {
        if got != *b {
            bail!("the guest read {got} bytes of {b}");
        }
    }
    Ok(secs)
}

/// Python that reads from `addr` until the end, timing itself from just
/// before the connect (`time.perf_counter`): prints `BYTES SECONDS`.
/// `None`: a warm-up that stops after a megabyte.
fn guest_download(addr: SocketAddr, bytes: Option<u64>) -> (String, Option<u64>) {
    let stop = bytes.map_or(1_000_000, |_| u64::MAX);
    let code = format!(
        "import socket, time\n\
         t = time.perf_counter()\n\
         s = socket.create_connection(('{ip}', {port}), timeout=120)\n\
         buf = bytearray(1 << 20)\n\
         n = 0\n\
         while n < {stop}:\n    \
             k = s.recv_into(buf)\n    \
             if not k:\n        break\n    \
             n += k\n\
         print(n, time.perf_counter() - t)\n",
        ip = addr.ip(),
        port = addr.port(),
    );
    (code, bytes)
}

/// Python that sends `bytes` zeros from a forked child to itself over the
/// guest's loopback and reads them, timed as [`guest_download`] is: the
/// guest's own TCP stack and Python, no network.
fn guest_loopback(bytes: u64) -> (String, Option<u64>) {
    let code = format!(
        "import os, socket, time\n\
         l = socket.socket()\n\
         l.bind(('127.0.0.1', 0))\n\
         l.listen(1)\n\
         pid = os.fork()\n\
         if pid == 0:\n    \
             c, _ = l.accept()\n    \
             z = memoryview(bytes(1 << 20))\n    \
             left = {bytes}\n    \
             while left:\n        \
                 k = min(left, len(z))\n        \
                 c.sendall(z[:k])\n        \
                 left -= k\n    \
             c.close()\n    \
             os._exit(0)\n\
         t = time.perf_counter()\n\
         s = socket.create_connection(l.getsockname(), timeout=120)\n\
         buf = bytearray(1 << 20)\n\
         n = 0\n\
         while True:\n    \
             k = s.recv_into(buf)\n    \
             if not k:\n        break\n    \
             n += k\n\
         dt = time.perf_counter() - t\n\
         os.waitpid(pid, 0)\n\
         print(n, dt)\n"
    );
    (code, Some(bytes))
}

/// This process reading `bytes` from `addr` until the end; seconds, from
/// just before the connect.
async fn host_download(addr: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to the test host at {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        if n != bytes {
            bail!("the host read {n} bytes of {bytes}");
        }
        Ok(secs)
    })
    .await
    .context("the download thread")?
}

/// A test host: a network namespace of its own on a veth pair
/// ([`HOST_END`] on the host, [`TEST_HOST`] inside), and a server on it,
/// a thread of this process that joined the namespace, sending each
/// connection a fixed number of zero bytes and closing it. Dropped, it
/// stops the server and removes the veth pair and the namespace.
struct TestHost {
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    ns: Option<Netns>,
}

impl TestHost {
    fn start(ip: &Path, bytes: u64) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let mut ns = Netns::create(ip, &format!("petty-bench-{pid}"))?;
        ns.veth(
            &format!("pbn{}", pid % 100_000),
            "eth0",
            HOST_END,
            TEST_HOST,
        )?;
        let mut host = Self {
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
            ns: None,
        };
        let file = std::fs::File::open(ns.path())?;
        host.ns = Some(ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let stop = host.stop.clone();
        host.server = Some(std::thread::Builder::new().name("test-host".into()).spawn(
            move || {
                // SAFETY: setns on this thread only (CLONE_NEWNET is
                // per thread); the descriptor is the namespace's file.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let listener = match TcpListener::bind((TEST_HOST, DOWNLOAD_PORT)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    std::thread::spawn(move || {
                        let zeros = vec![0u8; 1 << 20];
                        let mut left = bytes;
                        while left > 0 {
                            let k = left.min(zeros.len() as u64) as usize;
                            if conn.write_all(&zeros[..k]).is_err() {
                                return;
                            }
                            left -= k as u64;
                        }
                        let _ = conn.shutdown(std::net::Shutdown::Write);
                    });
                }
            },
        )?);
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the test host's server thread ended"))?
            .context("the test host's server")?;
        Ok(host)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            // A connection wakes its accept, which then sees `stop`.
            let addr = SocketAddr::from((TEST_HOST, DOWNLOAD_PORT));
            if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
                let _ = server.join();
            }
        }
        if let Some(ns) = self.ns.take() {
            if let Err(e) = ns.remove() {
                eprintln!("petty bench network: removing the test host's namespace: {e}");
            }
        }
    }
}

/// Python that starts the guest's echo server on [`ECHO_PORT`] in a
/// session of its own (its output on /dev/null, so the exec ends) and
/// prints `ready` once it accepts connections.
fn echo_server_starter() -> String {
    format!(
        "import os, socket, threading, time\n\
         if os.fork() == 0:\n    \
             os.setsid()\n    \
             null = os.open('/dev/null', os.O_RDWR)\n    \
             for fd in (0, 1, 2):\n        os.dup2(null, fd)\n    \
             l = socket.socket()\n    \
             l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    \
             l.bind(('0.0.0.0', {ECHO_PORT}))\n    \
             l.listen(64)\n    \
             def serve(c):\n        \
                 c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n        \
                 while True:\n            \
                     d = c.recv(65536)\n            \
                     if not d:\n                break\n            \
                     c.sendall(d)\n        \
                 c.close()\n    \
             while True:\n        \
                 c, _ = l.accept()\n        \
                 threading.Thread(target=serve, args=(c,), daemon=True).start()\n\
         for _ in range(600):\n    \
             try:\n        \
                 socket.create_connection(('127.0.0.1', {ECHO_PORT}), timeout=5).close()\n        \
                 print('ready')\n        \
                 break\n    \
             except OSError:\n        \
                 time.sleep(0.05)\n"
    )
}

/// One request and its echo on `s`.
fn echo_once(s: &mut TcpStream, msg: &[u8; ECHO_BYTES]) -> std::io::Result<()> {
    let mut back = [0u8; ECHO_BYTES];
    s.write_all(msg)?;
    s.read_exact(&mut back)?;
    if &back != msg {
        return Err(std::io::Error::other("the echo differs from the request"));
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

type RoundTrips = (Vec<Duration>, Vec<Duration>, Vec<Duration>, Vec<Duration>);

/// Round trips to an echo server of this process on 127.0.0.1 and through
/// `published` to the guest's, alternating: `n` on one connection each,
/// then `n` each on a new connection per request (connect, request, echo,
/// close). (host, published, host with connect, published with connect).
fn round_trips(published: SocketAddr, n: usize) -> anyhow::Result<RoundTrips> {
    let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let local_addr = local.local_addr()?;
    // Lives until this process ends: a thread per connection, echoing.
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            for conn in local.incoming() {
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = c.set_nodelay(true);
                    let mut buf = [0u8; 65536];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => {
                                if c.write_all(&buf[..k]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })?;
    let msg = [b'x'; ECHO_BYTES];
    let mut host = connect(local_addr)?;
    let mut guest = connect(published).context("connecting to the published port")?;
    for _ in 0..WARM_ROUND_TRIPS {
        echo_once(&mut host, &msg)?;
        echo_once(&mut guest, &msg).context("a round trip through the published port")?;
    }
    let (mut h, mut g) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        echo_once(&mut host, &msg)?;
        h.push(t.elapsed());
        let t = Instant::now();
        echo_once(&mut guest, &msg).context("a round trip through the published port")?;
        g.push(t.elapsed());
    }
    drop((host, guest));
    let once = |addr: SocketAddr| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut s = connect(addr)?;
        echo_once(&mut s, &msg)?;
        drop(s);
        Ok(t.elapsed())
    };
    for _ in 0..WARM_ROUND_TRIPS {
        once(local_addr)?;
        once(published)?;
    }
    let (mut hc, mut gc) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        hc.push(once(local_addr)?);
        gc.push(once(published).context("a connection through the published port")?);
    }
    Ok((h, g, hc, gc))
}

/// `n` round trips inside the guest, from a Python client to its own echo
/// server on 127.0.0.1, each timed there (`time.perf_counter`): on one
/// connection, then on a new connection each (connect, request, echo,
/// close).
async fn guest_round_trips(
    m: &SandboxManager,
    id: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let code = format!(
        "import socket, time\n\
         msg = b'x' * {ECHO_BYTES}\n\
         def connect():\n    \
             s = socket.create_connection(('127.0.0.1', {ECHO_PORT}), timeout=30)\n    \
             s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n    \
             return s\n\
         def rt(s):\n    \
             s.sendall(msg)\n    \
             got = 0\n    \
             while got < {ECHO_BYTES}:\n        \
                 k = len(s.recv({ECHO_BYTES} - got))\n        \
                 if not k:\n            raise SystemExit('closed')\n        \
                 got += k\n\
         def once():\n    \
             s = connect()\n    \
             rt(s)\n    \
             s.close()\n\
         s = connect()\n\
         for _ in range({WARM_ROUND_TRIPS}):\n    rt(s)\n\
         out = []\n\
         for _ in range({n}):\n    \
             t = time.perf_counter()\n    \
             rt(s)\n    \
             out.append(time.perf_counter() - t)\n\
         s.close()\n\
         print(' '.join('%.9f' % x for x in out))\n\
         for _ in range({WARM_ROUND_TRIPS}):\n    once()\n\
         out = []\n\
         for _ in range({n}):\n    \
             t = time.perf_counter()\n    \
             once()\n    \
             out.append(time.perf_counter() - t)\n\
         print(' '.join('%.9f' % x for x in out))\n"
    );
    let r = m.exec(id, python(&code), None).await?;
    if !r.success() {
        bail!("the guest's round trips failed: {r:?}");
    }
    let line = |l: Option<&str>| -> anyhow::Result<Vec<Duration>> {
        l.context("the guest printed too few lines")?
            .split_whitespace()
            .map(|w| Ok(Duration::from_secs_f64(w.parse::<f64>()?)))
            .collect()
    };
    let mut lines = r.stdout.lines();
    Ok((line(lines.next())?, line(lines.next())?))
}

/// `+x.x ms`, signed.
fn diff_ms(a: Duration, b: Duration) -> String {
    format!("{:+.1} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Report {
    fn print(&self) {
        let mbps = |secs: f64| self.megabytes as f64 / secs;
        let runs = |v: &[f64]| {
            v.iter()
                .map(|s| format!("{:.1}", mbps(*s)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "petty bench network ({} iterations; accel {}; 256 MiB, 2 vCPUs)",
            self.iterations, self.accel
        );
        println!("  create from template to first exec result (`true`), interleaved:");
        let totals: Vec<Stats> = self
            .creates
            .iter()
            .map(|c| Stats::of(c.total.clone()))
            .collect();
        for (kind, s) in CREATE_KINDS.iter().zip(&totals) {
            println!("    {kind:<44}{}", s.line(1));
        }
        let (standby, plain, public) = (&totals[0], &totals[1], &totals[2]);
        println!(
            "    public vs none, no standby (the network)    p50 {} ({:.2}x), p95 {} (goal <= +10 ms)",
            diff_ms(public.p50, plain.p50),
            ratio(public.p50, plain.p50),
            diff_ms(public.p95, plain.p95)
        );
        println!(
            "    public vs none, standby (as a daemon sees)  p50 {} ({:.2}x), p95 {}",
            diff_ms(public.p50, standby.p50),
            ratio(public.p50, standby.p50),
            diff_ms(public.p95, standby.p95)
        );
        let part = |f: fn(&Creates) -> &Vec<Duration>| {
            self.creates
                .iter()
                .map(|c| ms(median(f(c).clone())))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let first_exec: Vec<String> = self
            .creates
            .iter()
            .map(|c| {
                let v: Vec<Duration> = c.total.iter().zip(&c.ready).map(|(t, r)| *t - *r).collect();
                ms(median(v))
            })
            .collect();
        println!("    medians, standby / no standby / public:");
        println!(
            "      create to ready                           {}",
            part(|c| &c.ready)
        );
        println!(
            "      then the first exec                       {}",
            first_exec.join(" / ")
        );
        println!(
            "      destroy                                   {}",
            part(|c| &c.destroy)
        );
        println!(
            "    a public network alone: set up              {}",
            Stats::of(self.setup.clone()).line(1)
        );
        println!(
            "                            removed             {}",
            Stats::of(self.teardown.clone()).line(1)
        );
        let cap = match self.bandwidth_mbit {
            0 => "no bandwidth cap".to_string(),
            m => format!("network.bandwidth_mbit = {m}"),
        };
        println!(
            "  {} MB download from a test host in its own namespace ({TEST_HOST}, veth), {} runs; {cap}:",
            self.megabytes,
            self.host_dl.len()
        );
        let (host, guest, lo) = (
            median_f64(self.host_dl.clone()),
            median_f64(self.guest_dl.clone()),
            median_f64(self.guest_lo.clone()),
        );
        println!(
            "    host process (baseline)                     median {:.1} MB/s (runs: {})",
            mbps(host),
            runs(&self.host_dl)
        );
        println!(
            "    guest, --network allow, via the helper      median {:.1} MB/s (runs: {})",
            mbps(guest),
            runs(&self.guest_dl)
        );
        println!(
            "    guest / host (speed)                        {:.3}",
            host / guest
        );
        println!(
            "    guest over its own loopback (no network)    median {:.1} MB/s (runs: {})",
            mbps(lo),
            runs(&self.guest_lo)
        );
        let n = self.round_trips;
        println!(
            "  {ECHO_BYTES}-byte echo round trips, {n} each, alternating (published on {}):",
            self.publish
        );
        let (h, g) = (
            Stats::of(self.host_rtt.clone()),
            Stats::of(self.pub_rtt.clone()),
        );
        println!(
            "    echo on the host, 127.0.0.1 (baseline)      {}",
            h.line(3)
        );
        println!(
            "    published port to the guest's echo          {}",
            g.line(3)
        );
        println!(
            "    ratio                                       p50 {:.1}x  p95 {:.1}x  p99 {:.1}x",
            ratio(g.p50, h.p50),
            ratio(g.p95, h.p95),
            ratio(g.p99, h.p99)
        );
        let (hc, gc) = (
            Stats::of(self.host_conn.clone()),
            Stats::of(self.pub_conn.clone()),
        );
        println!(
            "    inside the guest, its own client (Python)   {}",
            Stats::of(self.guest_rtt.clone()).line(3)
        );
        println!("    a new connection per request:");
        println!(
            "      echo on the host, 127.0.0.1 (baseline)    {}",
            hc.line(3)
        );
        println!(
            "      published port to the guest's echo        {}",
            gc.line(3)
        );
        println!(
            "      ratio                                     p50 {:.1}x  p95 {:.1}x  p99 {:.1}x",
            ratio(gc.p50, hc.p50),
            ratio(gc.p95, hc.p95),
            ratio(gc.p99, hc.p99)
        );
        println!(
            "      inside the guest, its own client (Python) {}",
            Stats::of(self.guest_conn.clone()).line(3)
        );
    }
}
