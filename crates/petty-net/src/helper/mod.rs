//! The per-sandbox network helper: one small process per networked sandbox,
//! started detached beside its VMM, that owns every verdict of the egress
//! policy.
//!
//! It holds sockets in two namespaces at once. Inside the sandbox's
//! namespace (made on a thread that joined it: a socket stays in the
//! namespace it was made in) it listens on the gateway address for the
//! guest's redirected TCP connections and DNS queries, and it makes the
//! sockets that reach into the guest for published ports. In the host's
//! namespace it connects out for the guest, asks the host's resolvers, and
//! listens on published host ports. Nothing is routed or NATed: the
//! namespace forwards nothing, and no rule is added to the host's own
//! firewall.
//!
//! Once its sockets exist it gives up root (it becomes `nobody`, with no
//! way back): everything that parses what the guest sends runs
//! unprivileged.
//!
//! Its life follows the sandbox's: it watches the process that made it
//! until it is told the VMM's pid, then the VMM, and exits when the one it
//! watches is gone. The manager removes a sandbox's namespace with its VM;
//! one whose VMM died unseen, or whose helper was killed, has no helper
//! left, and the next sweep of any Petty process removes it
//! ([`crate::sandbox::sweep`]; helpers are found by their command line,
//! `petty __net-helper DIR/net.json`).

mod dns;
mod proxy;
mod sni;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

use crate::addr::Cidr;
use crate::guest::GATEWAY_IP;
use crate::policy::Policy;
use crate::ruleset::{DNS_PORT, PROXY_PORT};
use crate::spec::{NetworkSpec, Publish};

/// The helper's control socket, in its directory.
pub const CONTROL_SOCKET: &str = "ctl.sock";
/// Its configuration, in its directory.
pub const CONFIG_FILE: &str = "net.json";
/// What it logs, in its directory.
pub const LOG_FILE: &str = "helper.log";

/// Refusals kept for `petty network show`.
const RECENT: usize = 32;

/// What the helper is started with (its directory's `net.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperConfig {
    /// The sandbox, for logs.
    pub sandbox: String,
    /// The namespace's name (`ip netns`) and file.
    pub netns: String,
    /// `/run/netns/NAME`.
    pub netns_path: PathBuf,
    /// The helper's directory (control socket, pid, log).
    pub dir: PathBuf,
    /// iproute2's `ip`, to remove the namespace.
    pub ip: PathBuf,
    /// Mode, rules and ports.
    pub spec: NetworkSpec,
    /// The deny list.
    pub deny: Vec<Cidr>,
    /// The resolvers to ask.
    pub upstreams: Vec<SocketAddr>,
    /// Cap on each direction's bytes per second, all connections together;
    /// 0: none.
    pub bandwidth_bytes: u64,
    /// Most connections open at once; 0: none.
    pub max_connections: u32,
    /// Where published host ports listen.
    pub publish_address: IpAddr,
    /// The process whose end ends the helper until a VMM is named.
    pub owner_pid: u32,
}

/// A request on the control socket (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Forward a host port to a guest port.
    Publish {
        /// The port.
        #[serde(flatten)]
        publish: Publish,
    },
    /// Follow this process (the VMM) from now on.
    Watch {
        /// Its pid.
        pid: u32,
    },
    /// Counters and recent refusals.
    Status,
}

/// One refusal, as `petty network show` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// When, in ms since the epoch.
    pub at_ms: u64,
    /// What the guest wanted: `ADDR:PORT`, or a name.
    pub destination: String,
    /// Why it was refused.
    pub reason: String,
}

/// What the helper reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// The sandbox.
    pub sandbox: String,
    /// Mode, rules and ports (with their host ports).
    pub spec: NetworkSpec,
    /// Where published ports listen.
    pub publish_address: String,
    /// Connections the guest opened that were let through.
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections refused by the policy or the caps.
    pub refused_connections: u64,
    /// Names answered.
    pub names: u64,
    /// Names refused (NXDOMAIN).
    pub refused_names: u64,
    /// Bytes from the guest out.
    pub bytes_out: u64,
    /// Bytes from outside to the guest.
    pub bytes_in: u64,
    /// The latest refusals, oldest first.
    pub recent_refusals: Vec<Refusal>,
}

/// State the helper's tasks share.
pub(crate) struct Shared {
    config: HelperConfig,
    policy: Policy,
    ns: NsSockets,
    /// Addresses the resolver gave out, with the names they answered and
    /// when that stops counting.
    resolved: Mutex<HashMap<IpAddr, Vec<(String, Instant)>>>,
    published: Mutex<Vec<Publish>>,
    counters: Counters,
    recent: Mutex<Vec<Refusal>>,
    up: Option<proxy::Bucket>,
    down: Option<proxy::Bucket>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    active: AtomicU64,
    refused_connections: AtomicU64,
    names: AtomicU64,
    refused_names: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

impl Shared {
    fn refuse(&self, destination: String, reason: String) {
        tracing::warn!(sandbox = %self.config.sandbox, %destination, %reason, "network refusal");
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.remove(0);
        }
        recent.push(Refusal {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            destination,
            reason,
        });
    }

    /// The names the resolver answered with `ip`, still current.
    fn names_for(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&ip) {
            Some(names) => {
                names.retain(|(_, until)| *until > now);
                names.iter().map(|(n, _)| n.clone()).collect()
            }
            None => Vec::new(),
        }
    }

    fn remember(&self, ip: IpAddr, name: &str, ttl: u32) {
        // Held a while past short TTLs: clients cache answers longer than
        // they are told to, and a connection made from a cached answer
        // should not be refused.
        let until = Instant::now() + Duration::from_secs(u64::from(ttl).clamp(300, 86_400));
        let mut map = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        let names = map.entry(ip).or_default();
        names.retain(|(n, _)| n != name);
        names.push((name.to_string(), until));
    }

    fn status(&self) -> Status {
        let c = &self.counters;
        let mut spec = self.config.spec.clone();
        spec.publish = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Status {
            sandbox: self.config.sandbox.clone(),
            spec,
            publish_address: self.config.publish_address.to_string(),
            connections: c.connections.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            refused_connections: c.refused_connections.load(Ordering::Relaxed),
            names: c.names.load(Ordering::Relaxed),
            refused_names: c.refused_names.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            recent_refusals: self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Makes sockets inside the sandbox's namespace, on a thread that joined it.
pub(crate) struct NsSockets {
    tx: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<io::Result<OwnedFd>>>,
}

impl NsSockets {
    /// A fresh, unconnected, non-blocking IPv4 TCP socket in the namespace.
    pub(crate) async fn tcp(&self) -> io::Result<tokio::net::TcpSocket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| io::Error::other("the namespace thread is gone"))?;
        let fd = rx
            .await
            .map_err(|_| io::Error::other("the namespace thread is gone"))??;
        // SAFETY: a TCP socket this process just made and owns.
        Ok(unsafe { tokio::net::TcpSocket::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) })
    }
}

/// The listeners made inside the namespace.
struct NsListeners {
    proxy: std::net::TcpListener,
    dns_udp: std::net::UdpSocket,
    dns_tcp: std::net::TcpListener,
}

/// Joins the namespace on a thread of its own, makes the listeners there,
/// and keeps the thread to make sockets on request.
fn enter_namespace(path: &Path) -> io::Result<(NsSockets, NsListeners)> {
    let file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<io::Result<OwnedFd>>>();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // SAFETY: setns on this thread only (CLONE_NEWNET is per thread).
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(io::Error::last_os_error()));
                return;
            }
            let listeners = (|| {
                let proxy = std::net::TcpListener::bind((GATEWAY_IP, PROXY_PORT))?;
                let dns_udp = std::net::UdpSocket::bind((GATEWAY_IP, DNS_PORT))?;
                let dns_tcp = std::net::TcpListener::bind((GATEWAY_IP, DNS_PORT))?;
                proxy.set_nonblocking(true)?;
                dns_udp.set_nonblocking(true)?;
                dns_tcp.set_nonblocking(true)?;
                Ok(NsListeners {
                    proxy,
                    dns_udp,
                    dns_tcp,
                })
            })();
            let _ = ready_tx.send(listeners);
            while let Ok(reply) = rx.recv() {
                // SAFETY: plain socket(2).
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                let r = if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // SAFETY: a descriptor socket(2) just returned.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                };
                let _ = reply.send(r);
            }
        })?;
    let listeners = ready_rx
        .recv()
        .map_err(|_| io::Error::other("the namespace thread ended"))??;
    Ok((NsSockets { tx }, listeners))
}

/// Runs the helper for the configuration in `config` (the hidden
/// `petty __net-helper` command): sets up, prints one JSON line on stdout
/// (the published ports) when ready, then serves until the process it
/// watches ends.
pub fn run(config: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("reading {}: {e}", config.display()))?;
    let config: HelperConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let policy = config
        .spec
        .policy(&config.deny)
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(serve(config, policy))
}

async fn serve(config: HelperConfig, policy: Policy) -> Result<(), String> {
    let (ns, listeners) = enter_namespace(&config.netns_path)
        .map_err(|e| format!("joining the sandbox's network namespace: {e}"))?;
    let bucket = |rate: u64| (rate > 0).then(|| proxy::Bucket::new(rate));
    let shared = Arc::new(Shared {
        up: bucket(config.bandwidth_bytes),
        down: bucket(config.bandwidth_bytes),
        policy,
        ns,
        resolved: Mutex::default(),
        published: Mutex::default(),
        counters: Counters::default(),
        recent: Mutex::default(),
        config,
    });
    let dir = shared.config.dir.clone();
    let control_path = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&control_path);
    let control = UnixListener::bind(&control_path)
        .map_err(|e| format!("binding {}: {e}", control_path.display()))?;

    let proxy = TcpListener::from_std(listeners.proxy).map_err(|e| e.to_string())?;
    let dns_udp = tokio::net::UdpSocket::from_std(listeners.dns_udp).map_err(|e| e.to_string())?;
    let dns_tcp = TcpListener::from_std(listeners.dns_tcp).map_err(|e| e.to_string())?;
    tokio::spawn(proxy::serve(shared.clone(), proxy));
    tokio::spawn(dns::serve_udp(shared.clone(), dns_udp));
    tokio::spawn(dns::serve_tcp(shared.clone(), dns_tcp));

    for p in shared.config.spec.publish.clone() {
        proxy::publish(&shared, p)
            .await
            .map_err(|e| format!("publishing guest port {}: {e}", p.guest))?;
    }

    // Every socket that needs root exists: what parses the guest's bytes
    // from here on does so as nobody, without a way back.
    drop_privileges().map_err(|e| format!("giving up root: {e}"))?;

    // Ready: say so on stdout, then let it go.
    let ready = serde_json::json!({ "ready": true, "publish": *shared.published.lock().unwrap_or_else(|e| e.into_inner()) });
    println!("{ready}");
    // SAFETY: point stdout at /dev/null so the reader's end can close.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    tracing::info!(sandbox = %shared.config.sandbox, mode = %shared.config.spec.mode, "network helper ready");

    let (watch_tx, mut watch_rx) = tokio::sync::watch::channel(shared.config.owner_pid);
    tokio::spawn(control_loop(shared.clone(), control, watch_tx));
    loop {
        let pid = *watch_rx.borrow_and_update();
        tokio::select! {
            gone = process_gone(pid) => {
                if let Err(e) = gone {
                    tracing::warn!(pid, "watching: {e}");
                }
                break;
            }
            changed = watch_rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!(sandbox = %shared.config.sandbox, "the sandbox's VMM is gone; removing its network");
    teardown(&shared.config);
    Ok(())
}

/// The user the helper runs as once set up.
const NOBODY: libc::uid_t = 65534;

/// Becomes `nobody` (no supplementary groups, no new privileges), when
/// root: the helper reads what a hostile guest sends (DNS, TLS, HTTP).
/// Host ports below 1024 can then be published only at create.
fn drop_privileges() -> io::Result<()> {
    // SAFETY: plain credential syscalls; glibc applies set*id to every
    // thread of the process (the namespace thread included).
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(());
        }
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(NOBODY, NOBODY, NOBODY))?;
        check(libc::setresuid(NOBODY, NOBODY, NOBODY))?;
        if libc::geteuid() == 0 {
            return Err(io::Error::other("still root after setresuid"));
        }
    }
    Ok(())
}

/// Removes the namespace and the helper's directory, where it still may
/// (a helper that gave up root leaves both to the next sweep).
fn teardown(config: &HelperConfig) {
    let _ = std::process::Command::new(&config.ip)
        .args(["netns", "delete", &config.netns])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&config.dir);
}

/// Waits for process `pid` to end (a pidfd becomes readable).
async fn process_gone(pid: u32) -> io::Result<()> {
    // SAFETY: pidfd_open(2) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(e),
        };
    }
    // SAFETY: the descriptor pidfd_open returned.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the descriptor, which nothing else closes.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)?;
    let _ = fd.readable().await?;
    Ok(())
}

async fn control_loop(
    shared: Arc<Shared>,
    listener: UnixListener,
    watch: tokio::sync::watch::Sender<u32>,
) {
    let watch = Arc::new(watch);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        let watch = watch.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match serde_json::from_str::<Control>(&line) {
                    Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
                    Ok(Control::Watch { pid }) => {
                        let _ = watch.send(pid);
                        serde_json::json!({ "ok": true })
                    }
                    Ok(Control::Status) => serde_json::to_value(shared.status())
                        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
                    Ok(Control::Publish { publish }) => {
                        match proxy::publish(&shared, publish).await {
                            Ok(p) => serde_json::json!({ "ok": true, "publish": p }),
                            Err(e) => serde_json::json!({
                                "error": format!("publishing guest port {}: {e}", publish.guest)
                            }),
                        }
                    }
                };
                let mut out = reply.to_string();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
