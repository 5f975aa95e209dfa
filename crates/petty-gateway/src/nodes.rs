//! The nodes a gateway fronts: where they come from (the static list and
//! DNS), what each was last seen to be (its `/v1/node` info and its
//! sandboxes), and the loop that looks again every
//! `gateway.health_interval_secs`. Nothing here outlives the process: the
//! nodes' own state is the truth, read again after a restart.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use petty_net::dns;
use serde::Serialize;
use serde_json::Value;

/// How long a node may take to answer a health read.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// What a node is, as the gateway last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Not read yet.
    Unknown,
    /// Answered its last read.
    Up,
    /// Did not: its sandboxes are `lost` until it answers again.
    Down,
}

/// One node.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// `host:port` of its URL: how `petty gateway nodes` and the drain
    /// route name it.
    pub name: String,
    /// Its base URL.
    pub url: String,
    pub state: NodeState,
    /// Why it is down.
    pub error: Option<String>,
    /// When its state last changed, ms since the Unix epoch.
    pub since_ms: u64,
    /// Its `/v1/node` answer.
    pub info: Option<Value>,
    /// Its sandboxes (their REST views), as last listed.
    #[serde(skip)]
    pub sandboxes: Vec<Value>,
    /// Where it came from: `static` or the discovery name.
    pub source: String,
}

impl Node {
    fn new(url: &str, source: &str) -> Self {
        let url = url.trim_end_matches('/').to_string();
        let name = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .to_string();
        Self {
            name,
            url,
            state: NodeState::Unknown,
            error: None,
            since_ms: now_ms(),
            info: None,
            sandboxes: Vec::new(),
            source: source.into(),
        }
    }

    fn info_u64(&self, key: &str) -> u64 {
        self.info
            .as_ref()
            .and_then(|i| i.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// Its E2B API's base URL, when it serves one: its host at the port
    /// its info names.
    pub fn e2b_url(&self) -> Option<String> {
        let port = self.info.as_ref()?.get("e2b_port")?.as_u64()?;
        let (scheme, rest) = self.url.split_once("://")?;
        let host = match rest.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => rest,
        };
        Some(format!("{scheme}://{host}:{port}"))
    }

    /// Sandboxes with a VM on it, as it last said.
    pub fn running(&self) -> u64 {
        self.info_u64("sandboxes")
    }

    pub fn capacity(&self) -> u64 {
        self.info_u64("capacity")
    }

    pub fn memory_available(&self) -> u64 {
        self.info_u64("memory_available_bytes")
    }

    pub fn draining(&self) -> bool {
        self.info
            .as_ref()
            .and_then(|i| i.get("draining"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether its info lists `name` under `key` (`templates`, `snapshots`).
    pub fn holds(&self, key: &str, name: &str) -> bool {
        self.info
            .as_ref()
            .and_then(|i| i.get(key))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
    }

    /// Takes creates: up, ready, not drained, below its capacity.
    pub fn placeable(&self) -> bool {
        let ready = self
            .info
            .as_ref()
            .and_then(|i| i.get("ready"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.state == NodeState::Up && ready && !self.draining() && self.running() < self.capacity()
    }

    /// Whether sandbox `key` (an id or a name) is one of its own.
    pub fn has_sandbox(&self, key: &str) -> bool {
        self.sandboxes
            .iter()
            .any(|s| s["id"] == key || s["name"] == key)
    }

    fn mark(&mut self, state: NodeState, error: Option<String>) {
        if self.state != state {
            self.since_ms = now_ms();
            match state {
                NodeState::Down => tracing::warn!(node = %self.name, error = ?error, "node down"),
                _ => tracing::info!(node = %self.name, "node up"),
            }
        }
        self.state = state;
        self.error = error;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every node, by URL.
#[derive(Clone)]
pub struct Nodes {
    all: Arc<Mutex<BTreeMap<String, Node>>>,
    http: reqwest::Client,
    node_key: Option<String>,
}

impl Nodes {
    /// The nodes of `urls`, read with `http` (which carries no key: each
    /// request gets `node_key` as its bearer).
    pub fn new(urls: &[String], http: reqwest::Client, node_key: Option<String>) -> Self {
        let all = urls
            .iter()
            .map(|u| {
                let n = Node::new(u, "static");
                (n.url.clone(), n)
            })
            .collect();
        Self {
            all: Arc::new(Mutex::new(all)),
            http,
            node_key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of every node.
    pub fn list(&self) -> Vec<Node> {
        self.lock().values().cloned().collect()
    }

    /// The node called `name` (`host:port`) or at URL `name`.
    pub fn find(&self, name: &str) -> Option<Node> {
        self.lock()
            .values()
            .find(|n| n.name == name || n.url == name.trim_end_matches('/'))
            .cloned()
    }

    /// A request with no key of its own.
    pub fn plain_request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// The key the nodes take, if any.
    pub fn node_key(&self) -> Option<&str> {
        self.node_key.as_deref()
    }

    /// A request to node `url`, with the node key.
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.node_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sets the nodes discovery `source` found to `urls`: new ones are
    /// added, and ones it no longer names go unless they are static.
    pub fn discovered(&self, source: &str, urls: &[String]) {
        let mut all = self.lock();
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        all.retain(|url, n| n.source != source || urls.contains(url));
        for u in &urls {
            all.entry(u.clone()).or_insert_with(|| {
                tracing::info!(node = %u, source, "node discovered");
                Node::new(u, source)
            });
        }
    }

    /// Says node `url` failed to answer `why` (a request through it found it gone).
    pub fn failed(&self, url: &str, why: String) {
        if let Some(n) = self.lock().get_mut(url) {
            n.mark(NodeState::Down, Some(why));
        }
    }

    /// Reads every node's info and sandboxes now, all at once.
    pub async fn refresh(&self) {
        let urls: Vec<String> = self.lock().keys().cloned().collect();
        let reads = urls.into_iter().map(|url| async move {
            let got = self.read(&url).await;
            (url, got)
        });
        for (url, got) in futures_util::future::join_all(reads).await {
            let mut all = self.lock();
            let Some(n) = all.get_mut(&url) else { continue };
            match got {
                Ok((info, sandboxes)) => {
                    n.info = Some(info);
                    n.sandboxes = sandboxes;
                    n.mark(NodeState::Up, None);
                }
                Err(e) => n.mark(NodeState::Down, Some(e)),
            }
        }
    }

    /// Node `url`'s info and sandboxes.
    async fn read(&self, url: &str) -> Result<(Value, Vec<Value>), String> {
        let get = |path: &'static str| {
            let r = self
                .request(reqwest::Method::GET, &format!("{url}{path}"))
                .timeout(HEALTH_TIMEOUT);
            async move {
                let resp = r.send().await.map_err(|e| describe(&e))?;
                let status = resp.status();
                let body: Value = resp.json().await.map_err(|e| describe(&e))?;
                if !status.is_success() {
                    return Err(format!("{path} answered {status}: {body}"));
                }
                Ok(body)
            }
        };
        let info = get("/v1/node").await?;
        let sandboxes = get("/v1/sandboxes").await?;
        Ok((info, sandboxes.as_array().cloned().unwrap_or_default()))
    }

    /// Records sandbox `view` (just made or found) as node `url`'s.
    pub fn add_sandbox(&self, url: &str, view: Value) {
        if let Some(n) = self.lock().get_mut(url) {
            n.sandboxes.retain(|s| s["id"] != view["id"]);
            n.sandboxes.push(view);
        }
    }

    /// Forgets sandbox `id` of node `url` (it was deleted).
    pub fn remove_sandbox(&self, url: &str, key: &str) {
        if let Some(n) = self.lock().get_mut(url) {
            n.sandboxes.retain(|s| s["id"] != key && s["name"] != key);
        }
    }

    /// Counts a create just placed on `url` before its next read.
    pub fn count_create(&self, url: &str) {
        if let Some(n) = self.lock().get_mut(url) {
            if let Some(Value::Object(info)) = n.info.as_mut() {
                let running = info.get("sandboxes").and_then(Value::as_u64).unwrap_or(0);
                info.insert("sandboxes".into(), (running + 1).into());
            }
        }
    }
}

/// An HTTP client error as a person reads it (reqwest's top line hides the cause).
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Resolves `discover` to node URLs: `dns:NAME[:PORT]` is NAME's A and
/// AAAA records at PORT (default `default_port`), `srv:NAME` its SRV
/// records (each target's addresses at the record's port). Queries go to
/// `server` when given (`gateway.dns_server`), else `dns:` uses the
/// system's resolver and `srv:` the first `nameserver` of
/// `/etc/resolv.conf`.
pub async fn resolve(
    discover: &str,
    default_port: u16,
    server: Option<SocketAddr>,
) -> Result<Vec<String>, String> {
    let mut urls: Vec<String> = if let Some(name) = discover.strip_prefix("dns:") {
        let (name, port) = match name.rsplit_once(':') {
            Some((n, p)) if p.parse::<u16>().is_ok() => (n, p.parse().expect("checked")),
            _ => (name, default_port),
        };
        match server {
            Some(server) => addresses(server, name)
                .await?
                .into_iter()
                .map(|ip| url(ip, port))
                .collect(),
            None => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| format!("resolving {name}: {e}"))?
                .map(|a| url(a.ip(), a.port()))
                .collect(),
        }
    } else if let Some(name) = discover.strip_prefix("srv:") {
        let server = match server {
            Some(s) => s,
            None => system_nameserver()?,
        };
        let answer = query(server, name, dns::TYPE_SRV).await?;
        let mut urls = Vec::new();
        for srv in answer.srvs {
            for ip in addresses(server, &srv.target).await? {
                urls.push(url(ip, srv.port));
            }
        }
        urls
    } else {
        return Err(format!(
            "gateway.discover = {discover:?} is not a discovery; use dns:NAME (its A/AAAA records at gateway.discover_port) or srv:NAME (its SRV records)"
        ));
    };
    urls.sort();
    urls.dedup();
    Ok(urls)
}

fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}

/// `name`'s A and AAAA records, asked of `server`: an error only when
/// neither question was answered (a server may refuse the type a name
/// has no records of).
async fn addresses(server: SocketAddr, name: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    let mut failed = None;
    for qtype in [dns::TYPE_A, dns::TYPE_AAAA] {
        match query(server, name, qtype).await {
            Ok(r) => out.extend(r.addrs.into_iter().map(|(ip, _)| ip)),
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// The first `nameserver` of `/etc/resolv.conf`.
fn system_nameserver() -> Result<SocketAddr, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| "no nameserver in /etc/resolv.conf; set gateway.dns_server".to_string())
}

/// One question to `server` over UDP: three tries, 2 s each.
async fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<dns::Response, String> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63)
    {
        return Err(format!("{name:?} is not a DNS name"));
    }
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("a socket for DNS: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("DNS server {server}: {e}"))?;
    let id = (now_ms() as u16) ^ (qtype << 3);
    let msg = dns::build_query(id, name, qtype);
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        sock.send(&msg)
            .await
            .map_err(|e| format!("asking {server}: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            let n = got.map_err(|e| format!("asking {server}: {e}"))?;
            let Ok(r) = dns::parse_response(&buf[..n]) else {
                continue;
            };
            if r.id != id {
                continue;
            }
            return match r.rcode {
                0 => Ok(r),
                3 => Err(format!("{server} knows no {name}")),
                code => Err(format!("{server} answered {name} with error code {code}")),
            };
        }
    }
    Err(format!("{server} did not answer for {name}"))
}
