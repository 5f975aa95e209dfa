//! `petty gateway`: Petty's REST API (`/v1`) and MCP (`/mcp`) over any
//! number of `petty serve` nodes, so clients see one endpoint.
//!
//! - **Placement**: a create goes to the least loaded of `gateway.best_of`
//!   placeable nodes picked at random (up, ready, not drained, below
//!   capacity), among those holding its template when any does; a node
//!   that cannot take it (gone, at capacity) passes it to the next.
//! - **Routing**: every request for a sandbox goes to its node, found in
//!   the listings the health loop reads (a miss reads them again); a
//!   snapshot's routes go to the node that holds it; an MCP session stays
//!   on the node its `initialize` went to. Bodies stream both ways,
//!   unbuffered.
//! - **Node loss**: a node that does not answer is `down`; requests for
//!   its sandboxes fail at once with a 503 naming it, listings show its
//!   sandboxes as `lost`, creates go elsewhere; when it answers again its
//!   sandboxes are routable again.
//! - **State**: none of its own beyond what the nodes say (and which node
//!   each live MCP session is on): a restarted gateway reads it all again.
//!   Draining is kept on the node (`POST /v1/node/drain`).

mod e2b;
mod nodes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use petty_config::Settings;
use petty_server::error::{ApiError, ErrorKind};
use serde_json::{json, Value};

pub use nodes::{describe, Node, NodeState, Nodes};

/// The largest create or MCP request body the gateway reads to place it.
const MAX_PLACED_BODY: usize = 1 << 20;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// The gateway's shared state.
#[derive(Clone)]
pub struct Gateway {
    nodes: Nodes,
    best_of: usize,
    /// Which node each live MCP session is on.
    sessions: Arc<Mutex<BTreeMap<String, String>>>,
    /// Seed of the placement's random picks.
    seed: Arc<std::sync::atomic::AtomicU64>,
    /// `e2b.domain`: the hosts E2B's SDKs name sandboxes by.
    e2b_domain: Option<String>,
}

impl Gateway {
    /// A gateway over `settings.gateway`'s nodes (discovered ones join at
    /// the first health read).
    pub fn new(settings: &Settings) -> Result<Self, GatewayError> {
        let g = &settings.gateway;
        if g.nodes.is_empty() && g.discover.is_empty() {
            return Err(GatewayError::Config(
                "the gateway has no nodes: give --node URL (gateway.nodes) or --discover dns:NAME (gateway.discover)".into(),
            ));
        }
        for url in &g.nodes {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(GatewayError::Config(format!(
                    "gateway.nodes: {url:?} is not a URL; give http://HOST:PORT"
                )));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| GatewayError::Config(format!("making the HTTP client: {e}")))?;
        let key = (!g.node_key.is_empty()).then(|| g.node_key.clone());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Ok(Self {
            nodes: Nodes::new(&g.nodes, http, key),
            best_of: g.best_of,
            sessions: Arc::default(),
            seed: Arc::new(seed.into()),
            e2b_domain: (!settings.e2b.domain.is_empty()).then(|| {
                settings
                    .e2b
                    .domain
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            }),
        })
    }

    /// The nodes.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// A pseudo-random number (xorshift): placement's picks need spread,
    /// not secrecy.
    fn random(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x
    }

    /// The nodes to try a create on, best first: the best of K placeable
    /// ones picked at random (those holding `template` when any does),
    /// then every other placeable one as a fallback.
    pub(crate) fn placement(&self, template: Option<&str>) -> Vec<Node> {
        let mut ok: Vec<Node> = self
            .nodes
            .list()
            .into_iter()
            .filter(Node::placeable)
            .collect();
        if let Some(t) = template.filter(|t| *t != "base") {
            if ok.iter().any(|n| n.holds("templates", t)) {
                ok.retain(|n| n.holds("templates", t));
            }
        }
        // Shuffle, then the first K compete on load.
        for i in (1..ok.len()).rev() {
            let j = (self.random() % (i as u64 + 1)) as usize;
            ok.swap(i, j);
        }
        let k = match self.best_of {
            0 => ok.len(),
            k => k.min(ok.len()),
        };
        let load = |n: &Node| {
            let cap = n.capacity().max(1) as f64;
            (n.running() as f64 / cap, u64::MAX - n.memory_available())
        };
        ok[..k].sort_by(|a, b| {
            load(a)
                .partial_cmp(&load(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        ok
    }

    /// The node sandbox `key` (an id or a name) is on, reading the
    /// listings again on a miss.
    pub(crate) async fn node_of_sandbox(&self, key: &str) -> Result<Node, ApiError> {
        for attempt in 0..2 {
            let holders: Vec<Node> = self
                .nodes
                .list()
                .into_iter()
                .filter(|n| n.has_sandbox(key))
                .collect();
            match holders.len() {
                1 => return Ok(holders.into_iter().next().expect("one")),
                0 if attempt == 0 => self.nodes.refresh().await,
                0 => break,
                _ => {
                    return Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!(
                            "more than one node has a sandbox named {key} ({}); use its id",
                            holders
                                .iter()
                                .map(|n| n.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
            }
        }
        Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no node has a sandbox {key}; GET /v1/sandboxes lists them"),
        ))
    }

    /// The node holding snapshot `name`.
    async fn node_of_snapshot(&self, name: &str) -> Result<Node, ApiError> {
        for attempt in 0..2 {
            if let Some(n) = self
                .nodes
                .list()
                .into_iter()
                .find(|n| n.holds("snapshots", name))
            {
                return Ok(n);
            }
            if attempt == 0 {
                self.nodes.refresh().await;
            }
        }
        Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no node holds a snapshot {name}; GET /v1/snapshots lists them"),
        ))
    }

    /// Copies template `name` from node `from` to node `to`: its image
    /// streamed from one to the other (never held here), the record and
    /// checksum in the headers; `to` checks both and refuses an image whose
    /// agent speaks another protocol.
    pub async fn copy_template(&self, from: &Node, to: &Node, name: &str) -> Result<(), ApiError> {
        let t = std::time::Instant::now();
        let fail = |what: String| ApiError::new(ErrorKind::Unavailable, what);
        let src = self
            .nodes
            .request(
                Method::GET,
                &format!("{}/v1/templates/{name}/image", from.url),
            )
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "reading template {name} from node {}: {}",
                    from.name,
                    describe(&e)
                ))
            })?;
        if !src.status().is_success() {
            let status = src.status();
            let body = src.text().await.unwrap_or_default();
            return Err(fail(format!(
                "node {} answered {status} for template {name}'s image: {body}",
                from.name
            )));
        }
        let mut put = self
            .nodes
            .request(
                Method::PUT,
                &format!("{}/v1/templates/{name}/image", to.url),
            )
            .header(header::CONTENT_TYPE, petty_server::node::SPARSE_TYPE);
        for h in [
            petty_server::node::TEMPLATE_HEADER,
            petty_server::node::PROTOCOL_HEADER,
        ] {
            if let Some(v) = src.headers().get(h) {
                put = put.header(h, v);
            }
        }
        let resp = put
            .body(reqwest::Body::wrap_stream(src.bytes_stream()))
            .send()
            .await
            .map_err(|e| {
                fail(format!(
                    "writing template {name} to node {}: {}",
                    to.name,
                    describe(&e)
                ))
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let message = body["message"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            let kind = if status == StatusCode::CONFLICT {
                ErrorKind::Conflict
            } else {
                ErrorKind::Unavailable
            };
            return Err(ApiError::new(
                kind,
                format!(
                    "copying template {name} from node {} to node {}: {message}",
                    from.name, to.name
                ),
            ));
        }
        tracing::info!(template = name, from = %from.name, to = %to.name, ms = t.elapsed().as_millis() as u64, "template copied");
        self.nodes.refresh().await;
        Ok(())
    }

    /// The error for a request to `node`, which is down.
    pub(crate) fn lost(node: &Node, what: &str) -> ApiError {
        ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "{what} is on node {}, which is not answering ({}); it is lost until the node comes back",
                node.name,
                node.error.as_deref().unwrap_or("no answer yet")
            ),
        )
    }

    /// Sends `req` to `node` as it came (its body streamed), and its answer
    /// back (streamed too). A node that cannot be reached is marked down.
    async fn forward(
        &self,
        node: &Node,
        parts: &axum::http::request::Parts,
        body: reqwest::Body,
    ) -> Result<Response, ApiError> {
        self.forward_via(Api::Rest, node, parts, body).await
    }

    /// [`Gateway::forward`] to `api` of `node`: Petty's REST API (the node
    /// key as the bearer), or E2B's (the node key as `X-API-KEY`, the
    /// client's `Authorization` kept: envd reads the user from it).
    pub(crate) async fn forward_via(
        &self,
        api: Api,
        node: &Node,
        parts: &axum::http::request::Parts,
        body: reqwest::Body,
    ) -> Result<Response, ApiError> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut r = match api {
            Api::Rest => self
                .nodes
                .request(parts.method.clone(), &format!("{}{path}", node.url)),
            Api::E2b => {
                let base = node.e2b_url().ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::Unavailable,
                        format!("node {} does not serve E2B's API (e2b.listen)", node.name),
                    )
                })?;
                let mut r = self
                    .nodes
                    .plain_request(parts.method.clone(), &format!("{base}{path}"));
                if let Some(k) = self.nodes.node_key() {
                    r = r.header("x-api-key", k);
                }
                r
            }
        };
        for (name, value) in &parts.headers {
            let keep = match api {
                Api::Rest => passes(name),
                Api::E2b => {
                    (passes(name) || name == header::AUTHORIZATION) && name.as_str() != "x-api-key"
                }
            };
            if keep {
                r = r.header(name, value);
            }
        }
        let resp = match r.body(body).send().await {
            Ok(resp) => resp,
            Err(e) => {
                let why = describe(&e);
                if e.is_connect() || e.is_timeout() || e.is_request() {
                    self.nodes.failed(&node.url, why.clone());
                }
                let mut n = node.clone();
                n.error = Some(why);
                return Err(Self::lost(&n, "this request's sandbox or session"));
            }
        };
        let mut out = Response::builder().status(resp.status().as_u16());
        for (name, value) in resp.headers() {
            if passes(name) {
                out = out.header(name, value);
            }
        }
        Ok(out
            .body(Body::from_stream(resp.bytes_stream()))
            .expect("a status and headers from a response"))
    }

    async fn forward_request(&self, node: &Node, req: Request) -> Response {
        if node.state == NodeState::Down {
            return Self::lost(node, "it").into_response();
        }
        let (parts, body) = req.into_parts();
        let body = reqwest::Body::wrap_stream(body.into_data_stream());
        match self.forward(node, &parts, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }
}

/// Which of a node's APIs a request goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Rest,
    E2b,
}

/// Whether a header passes through the gateway: not hop-by-hop ones, not
/// the client's key (the node gets the node key), not `Host` (the node's
/// own), not `Origin` (the gateway's guard judged it).
fn passes(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "origin"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Reads a body of at most [`MAX_PLACED_BODY`] bytes.
pub(crate) async fn small_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_PLACED_BODY)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorKind::TooLarge,
                format!("reading the request body: {e}"),
            )
        })
}

/// `POST /v1/sandboxes`, `POST /v1/templates`: placed, then forwarded;
/// the node's answer comes back as it is.
async fn place(State(g): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match small_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let spec: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(name) = spec.get("name").and_then(Value::as_str) {
        if parts.uri.path() == "/v1/sandboxes" && g.nodes.list().iter().any(|n| n.has_sandbox(name))
        {
            return ApiError::new(
                ErrorKind::Conflict,
                format!("a sandbox named {name} exists already; pick another name"),
            )
            .into_response();
        }
    }
    let template = spec.get("template").and_then(Value::as_str);
    let candidates = g.placement(template);
    // A template no placeable node holds is copied from a node that does
    // to the first choice (streamed, checked by SHA-256 on arrival).
    if let (Some(t), Some(first)) = (template, candidates.first()) {
        if t != "base" && !first.holds("templates", t) && parts.uri.path() == "/v1/sandboxes" {
            let holder = g
                .nodes
                .list()
                .into_iter()
                .find(|n| n.state == NodeState::Up && n.holds("templates", t));
            if let Some(from) = holder {
                if let Err(e) = g.copy_template(&from, first, t).await {
                    return e.into_response();
                }
            }
        }
    }
    if candidates.is_empty() {
        let why = g
            .nodes
            .list()
            .iter()
            .map(|n| format!("{} {}", n.name, why_not(n)))
            .collect::<Vec<_>>()
            .join("; ");
        return ApiError::new(
            ErrorKind::Capacity,
            format!("no node can take a create now ({why}); add nodes, undrain one, or wait"),
        )
        .into_response();
    }
    let mut last = None;
    for node in &candidates {
        match g
            .forward(node, &parts, reqwest::Body::from(bytes.clone()))
            .await
        {
            // Full since its last read: the next may not be.
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => last = Some(r),
            Ok(r) => {
                g.nodes.count_create(&node.url);
                if parts.uri.path() == "/v1/sandboxes" && r.status() == StatusCode::CREATED {
                    return remember_created(&g, node, r).await;
                }
                tracing::info!(node = %node.name, path = parts.uri.path(), "placed");
                return r;
            }
            Err(e) => last = Some(e.into_response()),
        }
    }
    last.expect("at least one candidate was tried")
}

/// Why `n` takes no creates now.
fn why_not(n: &Node) -> String {
    match n.state {
        NodeState::Down => format!("is down: {}", n.error.as_deref().unwrap_or("")),
        NodeState::Unknown => "has not answered yet".into(),
        NodeState::Up if n.draining() => "is drained".into(),
        NodeState::Up if n.running() >= n.capacity() => {
            format!("is full ({} of {})", n.running(), n.capacity())
        }
        NodeState::Up => "is not ready".into(),
    }
}

/// Records the sandbox a create made on `node` (so its next request is
/// routed without a read) and adds `node` to its view.
async fn remember_created(g: &Gateway, node: &Node, r: Response) -> Response {
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_PLACED_BODY)
        .await
        .unwrap_or_default();
    let mut view: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if view.is_object() {
        g.nodes.add_sandbox(&node.url, view.clone());
        view["node"] = json!(node.name);
        tracing::info!(node = %node.name, sandbox = %view["id"], "create placed");
        return (parts.status, Json(view)).into_response();
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// `GET /v1/sandboxes`: every node's, each with its `node`; a down
/// node's as last seen, `lost`.
async fn list_sandboxes(State(g): State<Gateway>) -> Json<Vec<Value>> {
    g.nodes.refresh().await;
    let mut all = Vec::new();
    for n in g.nodes.list() {
        for s in &n.sandboxes {
            let mut s = s.clone();
            s["node"] = json!(n.name);
            if n.state == NodeState::Down {
                s["state"] = json!("lost");
                s["reason"] = json!(format!(
                    "node {} is not answering: {}",
                    n.name,
                    n.error.as_deref().unwrap_or("")
                ));
            }
            all.push(s);
        }
    }
    all.sort_by_key(|s| s["created_at_ms"].as_i64().unwrap_or(0));
    Json(all)
}

/// `GET /v1/snapshots`, `GET /v1/templates`: every up node's, each with
/// its `node`.
async fn gather(State(g): State<Gateway>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let nodes: Vec<Node> = g
        .nodes
        .list()
        .into_iter()
        .filter(|n| n.state == NodeState::Up)
        .collect();
    let reads = nodes.iter().map(|n| {
        let r = g
            .nodes
            .request(Method::GET, &format!("{}{path}", n.url))
            .timeout(Duration::from_secs(10));
        async move {
            let v: Value = r.send().await.ok()?.json().await.ok()?;
            Some((n.name.clone(), v))
        }
    });
    let mut all = Vec::new();
    for (name, v) in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
    {
        for mut item in v.as_array().cloned().unwrap_or_default() {
            item["node"] = json!(name);
            all.push(item);
        }
    }
    Json(all).into_response()
}

/// Everything under `/v1/sandboxes/{key}`: to its node.
async fn to_sandbox(State(g): State<Gateway>, Path(rest): Path<String>, req: Request) -> Response {
    let key = rest.split('/').next().unwrap_or_default().to_string();
    let node = match g.node_of_sandbox(&key).await {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let deleting = req.method() == Method::DELETE && !rest.contains('/');
    let r = g.forward_request(&node, req).await;
    if deleting && r.status().is_success() {
        g.nodes.remove_sandbox(&node.url, &key);
    }
    r
}

/// Everything under `/v1/snapshots/{name}`: to the node that holds it.
async fn to_snapshot(State(g): State<Gateway>, Path(rest): Path<String>, req: Request) -> Response {
    let name = rest.split('/').next().unwrap_or_default().to_string();
    match g.node_of_snapshot(&name).await {
        Ok(n) => g.forward_request(&n, req).await,
        Err(e) => e.into_response(),
    }
}

/// `/v1/templates/{name}`: to a node that holds it.
async fn to_template(State(g): State<Gateway>, Path(name): Path<String>, req: Request) -> Response {
    let holder = g
        .nodes
        .list()
        .into_iter()
        .find(|n| n.state == NodeState::Up && n.holds("templates", &name));
    match holder {
        Some(n) => g.forward_request(&n, req).await,
        None => ApiError::new(
            ErrorKind::NotFound,
            format!("no node holds a template {name}; GET /v1/templates lists them"),
        )
        .into_response(),
    }
}

/// `/mcp`: a session stays on the node its `initialize` was placed on.
async fn mcp(State(g): State<Gateway>, req: Request) -> Response {
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let node = match &session {
        Some(id) => {
            let url = g
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .cloned();
            match url.and_then(|u| g.nodes.find(&u)) {
                Some(n) => n,
                None => {
                    return ApiError::new(
                        ErrorKind::NotFound,
                        format!("no MCP session {id} through this gateway; initialize a new one"),
                    )
                    .into_response()
                }
            }
        }
        None => match g.placement(None).into_iter().next() {
            Some(n) => n,
            None => {
                return ApiError::new(ErrorKind::Capacity, "no node can take an MCP session now")
                    .into_response()
            }
        },
    };
    let closing = req.method() == Method::DELETE;
    let r = g.forward_request(&node, req).await;
    let mut sessions = g.sessions.lock().unwrap_or_else(|e| e.into_inner());
    match (
        &session,
        r.headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
    ) {
        (_, Some(id)) => {
            sessions.insert(id.to_string(), node.url.clone());
        }
        (Some(id), None) if closing => {
            sessions.remove(id);
        }
        _ => {}
    }
    r
}

/// `GET /v1/gateway/nodes`: each node, its state and capacity.
async fn list_nodes(State(g): State<Gateway>) -> Json<Vec<Value>> {
    Json(
        g.nodes
            .list()
            .into_iter()
            .map(|n| {
                let mut v = serde_json::to_value(&n).expect("plain data");
                v["sandboxes"] = json!(n.sandboxes.len());
                v["draining"] = json!(n.draining());
                v
            })
            .collect(),
    )
}

/// `POST /v1/gateway/nodes/{name}/drain` (`{"draining": bool}`): kept on the node.
async fn drain(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(node) = g.nodes.find(&name) else {
        return ApiError::new(
            ErrorKind::NotFound,
            format!("no node {name}; GET /v1/gateway/nodes lists them"),
        )
        .into_response();
    };
    let _ = headers;
    let r = g
        .nodes
        .request(Method::POST, &format!("{}/v1/node/drain", node.url))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            g.nodes.refresh().await;
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                Json(v),
            )
                .into_response()
        }
        Err(e) => {
            g.nodes.failed(&node.url, describe(&e));
            Gateway::lost(&node, "this node").into_response()
        }
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready while at least one node is up.
async fn readyz(State(g): State<Gateway>) -> Response {
    let nodes = g.nodes.list();
    let up = nodes.iter().filter(|n| n.state == NodeState::Up).count();
    let status = if up > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"status": if up > 0 { "ok" } else { "no node is up" }, "nodes": nodes.len(), "up": up}))).into_response()
}

/// Prometheus text: the nodes by state, and each one's sandboxes.
async fn metrics(State(g): State<Gateway>) -> Response {
    let nodes = g.nodes.list();
    let mut out = String::from(
        "# HELP petty_gateway_nodes Nodes by state.\n# TYPE petty_gateway_nodes gauge\n",
    );
    for state in ["up", "down", "unknown"] {
        let n = nodes
            .iter()
            .filter(|n| serde_json::to_value(n.state).ok() == Some(json!(state)))
            .count();
        out.push_str(&format!("petty_gateway_nodes{{state=\"{state}\"}} {n}\n"));
    }
    out.push_str("# HELP petty_gateway_node_sandboxes Sandboxes each node has.\n# TYPE petty_gateway_node_sandboxes gauge\n");
    for n in &nodes {
        out.push_str(&format!(
            "petty_gateway_node_sandboxes{{node=\"{}\"}} {}\n",
            n.name,
            n.sandboxes.len()
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The gateway's routes, behind its guard and key check.
pub fn app(g: Gateway, settings: &Settings, listen: SocketAddr) -> Router {
    let keys = Arc::new(settings.gateway.api_keys.clone());
    let guard = Arc::new(petty_server::guard::Guard::new(
        &settings.server,
        listen.ip(),
    ));
    Router::new()
        .route("/v1/sandboxes", post(place).get(list_sandboxes))
        .route("/v1/sandboxes/{*rest}", any(to_sandbox))
        .route("/v1/snapshots", get(gather))
        .route("/v1/snapshots/{*rest}", any(to_snapshot))
        .route("/v1/templates", get(gather).post(place))
        .route("/v1/templates/{name}", any(to_template))
        .route("/v1/gateway/nodes", get(list_nodes))
        .route("/v1/gateway/nodes/{name}/drain", post(drain))
        .route("/mcp", any(mcp))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                ErrorKind::NotFound,
                "no such route on the gateway: it serves /v1/sandboxes, /v1/snapshots, /v1/templates, /v1/gateway/nodes, /mcp",
            )
        })
        .with_state(g)
        .layer(axum::middleware::from_fn(move |req, next| {
            petty_server::rest::require_key(keys.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            petty_server::guard::guard(guard.clone(), req, next)
        }))
}

/// `gateway.dns_server` as an address (`None`: the system's resolver).
fn dns_server(settings: &Settings) -> Result<Option<SocketAddr>, GatewayError> {
    let v = settings.gateway.dns_server.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<SocketAddr>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map(Some)
        .map_err(|_| {
            GatewayError::Config(format!(
                "gateway.dns_server = {v:?} is not an address; use IP or IP:PORT such as 10.96.0.10:53"
            ))
        })
}

/// `gateway.listen` as an address, refused beyond loopback without keys.
pub fn listen_addr(settings: &Settings) -> Result<SocketAddr, GatewayError> {
    let g = &settings.gateway;
    let addr: SocketAddr = g.listen.parse().map_err(|_| {
        GatewayError::Config(format!(
            "gateway.listen = {:?} is not an address; use IP:PORT such as 127.0.0.1:8090",
            g.listen
        ))
    })?;
    if !addr.ip().is_loopback() && g.api_keys.is_empty() {
        return Err(GatewayError::Config(format!(
            "gateway.listen = {addr} is beyond loopback and no key is set; set gateway.api_keys (--api-key), or listen on 127.0.0.1"
        )));
    }
    if g.api_keys.iter().any(|k| k.len() < 16) {
        return Err(GatewayError::Config(
            "gateway.api_keys: every key must be at least 16 characters".into(),
        ));
    }
    Ok(addr)
}

/// Runs the gateway until SIGTERM or SIGINT: prints `petty: gateway on
/// http://ADDR over N node(s)` on stdout, reads the nodes every
/// `gateway.health_interval_secs` (and re-resolves `gateway.discover`).
pub async fn run(settings: &Settings) -> Result<(), GatewayError> {
    let addr = listen_addr(settings)?;
    let g = Gateway::new(settings)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(GatewayError::Serve)?;
    let discover = settings.gateway.discover.clone();
    let port = settings.gateway.discover_port;
    let dns_server = dns_server(settings)?;
    if !discover.is_empty() {
        // A bad discovery name is said at once.
        match nodes::resolve(&discover, port, dns_server).await {
            Ok(urls) => g.nodes.discovered(&discover, &urls),
            Err(e) if e.contains("is not a discovery") => return Err(GatewayError::Config(e)),
            Err(e) => tracing::warn!(error = %e, "discovery"),
        }
    }
    g.nodes.refresh().await;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "petty: gateway on http://{local} over {} node(s)",
            g.nodes.list().len()
        );
        let _ = out.flush();
    }
    let interval = Duration::from_secs(settings.gateway.health_interval_secs.max(1));
    let health = {
        let g = g.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if !discover.is_empty() {
                    match nodes::resolve(&discover, port, dns_server).await {
                        Ok(urls) => g.nodes.discovered(&discover, &urls),
                        Err(e) => tracing::warn!(error = %e, "discovery"),
                    }
                }
                g.nodes.refresh().await;
            }
        })
    };
    let e2b_task = match settings.gateway.e2b_listen.trim() {
        "" => None,
        listen => {
            let addr: SocketAddr = listen.parse().map_err(|_| {
                GatewayError::Config(format!(
                    "gateway.e2b_listen = {listen:?} is not an address; use IP:PORT such as 127.0.0.1:3000"
                ))
            })?;
            if !addr.ip().is_loopback() && settings.gateway.api_keys.is_empty() {
                return Err(GatewayError::Config(format!(
                    "gateway.e2b_listen = {addr} is beyond loopback and no key is set; set gateway.api_keys, or listen on 127.0.0.1"
                )));
            }
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { addr, source })?;
            let local = l.local_addr().map_err(GatewayError::Serve)?;
            {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "petty: gateway's E2B API on http://{local}: set E2B_API_URL and E2B_SANDBOX_URL to it");
                let _ = out.flush();
            }
            let app = e2b::app(g.clone(), settings, local);
            Some(tokio::spawn(async move { axum::serve(l, app).await }))
        }
    };
    let app = app(g, settings, local);
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("petty: gateway stopping");
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
    health.abort();
    if let Some(t) = e2b_task {
        t.abort();
    }
    served.map_err(GatewayError::Serve)
}

/// One call of `petty gateway`'s own subcommands to the gateway at
/// `base`: `path` with `body` (JSON, POST) or none (GET), `key` as the
/// bearer when given; the answer's JSON (Null when it has none).
async fn call_gateway(
    base: &str,
    key: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let mut r = match &body {
        Some(b) => http.post(url).json(b),
        None => http.get(url),
    }
    .timeout(Duration::from_secs(10));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.map_err(|e| {
        format!(
            "asking the gateway at {base}: {}; is `petty gateway` running there?",
            describe(&e)
        )
    })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| describe(&e))?;
    if !status.is_success() {
        return Err(format!("the gateway at {base} answered {status}: {text}"));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET /v1/gateway/nodes` of the gateway at `base` (for `petty gateway
/// nodes`), with `key` as the bearer when given.
pub async fn fetch_nodes(base: &str, key: Option<&str>) -> Result<Vec<Value>, String> {
    let body = call_gateway(base, key, "/v1/gateway/nodes", None).await?;
    Ok(body.as_array().cloned().unwrap_or_default())
}

/// Drains node `node` (or undoes it) through the gateway at `base`.
pub async fn drain_node(
    base: &str,
    key: Option<&str>,
    node: &str,
    draining: bool,
) -> Result<(), String> {
    let path = format!("/v1/gateway/nodes/{node}/drain");
    call_gateway(base, key, &path, Some(json!({ "draining": draining })))
        .await
        .map(drop)
}
