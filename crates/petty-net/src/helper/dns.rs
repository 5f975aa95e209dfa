//! The guest's resolver: names the policy refuses get NXDOMAIN; the others
//! are asked of the host's resolvers, and their answers are checked (an
//! answer onto a denied address is refused: no DNS rebinding) and
//! remembered, so connections to them are judged by the names they answer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::Shared;
use crate::dns::{self, Rcode};
use crate::policy::{NetworkMode, Rule};

/// How long each upstream resolver gets.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries in flight at once; a guest sending more has the rest dropped
/// (as a busy resolver drops them), so a flood costs the helper little.
const MAX_IN_FLIGHT: usize = 64;

pub(crate) async fn serve_udp(shared: Arc<Shared>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let shared = shared.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Some(reply) = answer(&shared, &query, false).await {
                let _ = socket.send_to(&reply, peer).await;
            }
            drop(slot);
        });
    }
}

pub(crate) async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(30), tcp_session(&shared, stream)).await;
        });
    }
}

async fn tcp_session(shared: &Arc<Shared>, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut query).await?;
        match answer(shared, &query, true).await {
            Some(reply) => stream.write_all(&dns::tcp_frame(&reply)).await?,
            None => return Ok(()),
        }
    }
}

/// The reply to `query`, or nothing for what is not a query.
async fn answer(shared: &Shared, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = dns::parse_query(query).ok()?;
    let c = &shared.counters;
    if let Err(why) = shared.policy.name(&q.name) {
        c.refused_names.fetch_add(1, Ordering::Relaxed);
        shared.refuse(q.name.clone(), why.to_string());
        return dns::answer_with_rcode(query, Rcode::NxDomain).ok();
    }
    let Some(reply) = ask_upstream(shared, query, tcp).await else {
        return dns::answer_with_rcode(query, Rcode::ServFail).ok();
    };
    let Ok(r) = dns::parse_response(&reply) else {
        return dns::answer_with_rcode(query, Rcode::ServFail).ok();
    };
    // Every address an allowed name answers must be one the sandbox may
    // reach by that name; one that is not refuses the whole answer.
    for (ip, _) in &r.addrs {
        let denied = shared.policy.denied_address(*ip).is_some() && !cidr_allows(shared, *ip);
        if denied {
            c.refused_names.fetch_add(1, Ordering::Relaxed);
            shared.refuse(
                q.name.clone(),
                format!("it resolved to {ip}, an address this sandbox may not reach"),
            );
            return dns::answer_with_rcode(query, Rcode::NxDomain).ok();
        }
    }
    for (ip, ttl) in &r.addrs {
        shared.remember(*ip, &q.name, *ttl);
    }
    c.names.fetch_add(1, Ordering::Relaxed);
    Some(reply)
}

fn cidr_allows(shared: &Shared, ip: std::net::IpAddr) -> bool {
    shared.policy.mode == NetworkMode::Allow
        && shared
            .policy
            .rules
            .iter()
            .any(|r| matches!(r, Rule::Cidr { cidr, .. } if cidr.contains(ip)))
}

/// The first answer from the host's resolvers, in order.
async fn ask_upstream(shared: &Shared, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    for &upstream in &shared.config.upstreams {
        let reply = if tcp {
            tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(upstream, query)).await
        } else {
            tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(upstream, query)).await
        };
        match reply {
            Ok(Ok(r)) => return Some(r),
            Ok(Err(e)) => tracing::debug!(%upstream, "resolver: {e}"),
            Err(_) => tracing::debug!(%upstream, "resolver timed out"),
        }
    }
    None
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Only the answer to this query (same id).
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    s.write_all(&dns::tcp_frame(query)).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
