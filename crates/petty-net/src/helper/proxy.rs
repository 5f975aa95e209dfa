//! The guest's TCP connections out, and published ports in.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{sni, Shared};
use crate::guest::GUEST_IP;
use crate::policy::Denied;
use crate::spec::Publish;

/// How long a connection out may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BUF: usize = 64 * 1024;

/// A token bucket: at most `rate` bytes a second, bursts of a tenth of a
/// second.
pub(crate) struct Bucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub(crate) fn new(rate: u64) -> Self {
        Self {
            rate: rate as f64,
            state: Mutex::new((rate as f64 / 10.0, Instant::now())),
        }
    }

    /// Takes `n` bytes' worth at `now`; how long to wait before sending
    /// them, if at all (the bucket goes into debt, so every byte is paid
    /// for once).
    fn reserve(&self, n: usize, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let burst = self.rate / 10.0;
        s.0 = (s.0 + now.saturating_duration_since(s.1).as_secs_f64() * self.rate).min(burst);
        s.1 = now;
        s.0 -= n as f64;
        (s.0 < 0.0).then(|| Duration::from_secs_f64(-s.0 / self.rate))
    }

    /// Waits until `n` bytes may pass.
    async fn take(&self, n: usize) {
        if let Some(wait) = self.reserve(n, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The destination the guest asked for, before the redirect.
fn original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: getsockopt into a sockaddr_in of the size given.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }
}

/// Closes `stream` with a reset, so the guest's connection fails at once.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a linger of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// The host's own addresses, now.
pub(crate) fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs/freeifaddrs as documented; every pointer read is
    // checked for null and the sockaddr read by its family.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(sin6.sin6_addr.s6_addr.into()));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Accepts the guest's redirected connections.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move { connect_out(shared, stream).await });
    }
}

/// One connection counted open while it lives (from its accept, so
/// connections still opening count against the cap too).
struct Open<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connect_out(shared: Arc<Shared>, guest: TcpStream) {
    let c = &shared.counters;
    let open_before = c.active.fetch_add(1, Ordering::Relaxed);
    let _open = Open(&c.active);
    let dst = match original_dst(&guest) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("a redirected connection without its destination: {e}");
            return reset(guest);
        }
    };
    let ip = IpAddr::V4(*dst.ip());
    let verdict = if host_addresses().contains(&ip) {
        Err(Denied::Host.to_string())
    } else {
        let names = shared.names_for(ip);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        shared
            .policy
            .connect(ip, dst.port(), &names)
            .map_err(|d| d.to_string())
    };
    let max = u64::from(shared.config.max_connections);
    let verdict = verdict.and_then(|()| {
        if max > 0 && open_before >= max {
            Err(format!(
                "{max} connections are open (network.max_connections)"
            ))
        } else {
            Ok(())
        }
    });
    // Let through by a name rule on 443 or 80: the connection must also
    // ask (TLS server name, HTTP Host) for a name the rules allow, or an
    // address many sites share would reach them all.
    let mut guest = guest;
    let mut head = Vec::new();
    let verdict = match verdict {
        Ok(()) if needs_name_check(&shared, ip, dst.port()) => {
            match read_asked_name(&mut guest, dst.port(), &mut head).await {
                sni::Asked::Name(n) if shared.policy.connect(ip, dst.port(), &[&n]).is_ok() => {
                    Ok(())
                }
                sni::Asked::Name(n) => Err(format!(
                    "it asked for {n} (TLS server name or HTTP Host), which no rule allows"
                )),
                _ => Err(format!(
                    "a name rule lets port {} through only for a TLS server name or HTTP Host \
                     the rules allow, and it gave none",
                    dst.port()
                )),
            }
        }
        other => other,
    };
    if let Err(reason) = verdict {
        c.refused_connections.fetch_add(1, Ordering::Relaxed);
        shared.refuse(dst.to_string(), reason);
        return reset(guest);
    }
    let out = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(sandbox = %shared.config.sandbox, %dst, "connecting: {e}");
            return reset(guest);
        }
        Err(_) => {
            tracing::debug!(sandbox = %shared.config.sandbox, %dst, "connecting timed out");
            return reset(guest);
        }
    };
    c.connections.fetch_add(1, Ordering::Relaxed);
    let _ = guest.set_nodelay(true);
    let _ = out.set_nodelay(true);
    let (gr, gw) = guest.into_split();
    let (or, mut ow) = out.into_split();
    if !head.is_empty() {
        if ow.write_all(&head).await.is_err() {
            return;
        }
        c.bytes_out.fetch_add(head.len() as u64, Ordering::Relaxed);
    }
    let _ = tokio::join!(
        pipe(gr, ow, shared.up.as_ref(), &c.bytes_out),
        pipe(or, gw, shared.down.as_ref(), &c.bytes_in),
    );
}

/// Whether a connection to `ip:port` that the policy allows must also
/// name an allowed host in its first bytes: `allow` mode, port 443 or 80,
/// and no CIDR rule covers it.
fn needs_name_check(shared: &Shared, ip: IpAddr, port: u16) -> bool {
    shared.policy.mode == crate::policy::NetworkMode::Allow
        && matches!(port, 80 | 443)
        && shared.policy.connect(ip, port, &[]).is_err()
}

/// How long a client gets to say which name it wants.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of it read to find the name.
const ASK_MAX: usize = 16 * 1024;

/// Reads the guest's first bytes into `head` until they name a host (TLS
/// on 443, HTTP on 80), show they never will, or time runs out.
async fn read_asked_name(guest: &mut TcpStream, port: u16, head: &mut Vec<u8>) -> sni::Asked {
    let parse = |b: &[u8]| {
        if port == 443 {
            sni::tls_server_name(b)
        } else {
            sni::http_host(b)
        }
    };
    let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        match parse(head) {
            sni::Asked::More if head.len() < ASK_MAX => {}
            sni::Asked::More => return sni::Asked::Nothing,
            done => return done,
        }
        match tokio::time::timeout_at(deadline, guest.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return sni::Asked::Nothing,
        }
    }
}

/// Copies `r` to `w` until the end, at the bucket's pace, and passes the
/// end on (a half-close).
async fn pipe(
    mut r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    bucket: Option<&Bucket>,
    count: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        if let Some(b) = bucket {
            b.take(n).await;
        }
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Listens on the host for `p` and forwards each connection into the
/// guest; the port as chosen.
pub(crate) async fn publish(shared: &Arc<Shared>, mut p: Publish) -> io::Result<Publish> {
    {
        let published = shared.published.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(have) = published.iter().find(|q| q.guest == p.guest) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("it is published already, on host port {}", have.host),
            ));
        }
    }
    let listener = match TcpListener::bind((shared.config.publish_address, p.host)).await {
        Ok(l) => l,
        // The helper gave up root once set up.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && p.host < 1024 => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "host port {} is below 1024, which can be published only when the \
                     sandbox is created (--publish {}:{})",
                    p.host, p.guest, p.host
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    p.host = listener.local_addr()?.port();
    shared
        .published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(p);
    tracing::info!(sandbox = %shared.config.sandbox, guest = p.guest, host = p.host, "published");
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let guest = SocketAddr::from((GUEST_IP, p.guest));
                let socket = match shared.ns.tcp().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("a socket in the namespace: {e}");
                        return reset(conn);
                    }
                };
                let inner = match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(guest)).await
                {
                    Ok(Ok(s)) => s,
                    _ => return reset(conn),
                };
                let _ = conn.set_nodelay(true);
                let _ = inner.set_nodelay(true);
                let c = &shared.counters;
                let (hr, hw) = conn.into_split();
                let (gr, gw) = inner.into_split();
                let _ = tokio::join!(
                    pipe(hr, gw, shared.down.as_ref(), &c.bytes_in),
                    pipe(gr, hw, shared.up.as_ref(), &c.bytes_out),
                );
            });
        }
    });
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_paces_at_its_rate() {
        let b = Bucket::new(1_000_000);
        let t0 = Instant::now();
        // A tenth of a second's worth passes at once.
        assert_eq!(b.reserve(100_000, t0), None);
        // The next megabyte waits a second.
        let wait = b.reserve(1_000_000, t0).unwrap();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // Paid for by waiting: a second later the debt is gone, and no
        // more than a burst builds up however long the bucket sits idle.
        assert_eq!(b.reserve(0, t0 + Duration::from_secs(1)), None);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(100_000, later), None);
        assert!(b.reserve(1, later).is_some());
    }
}
