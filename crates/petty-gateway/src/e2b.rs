//! E2B's API through the gateway (`gateway.e2b_listen`), so E2B's SDKs
//! see one endpoint over many nodes: creates are placed as Petty's are
//! and go to the chosen node's E2B listener; every other control-plane
//! call for a sandbox goes to its node; listings gather every node's;
//! envd and code-interpreter calls go to the node of the sandbox their
//! `E2b-Sandbox-Id` header (or `<port>-<id>.<domain>` host) names. A
//! sandbox's access token is its node's, passed through untouched.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use petty_config::Settings;
use serde_json::{json, Value};

use crate::{small_body, Api, Gateway, Node, NodeState};

/// An error as E2B's control plane answers one (`{code, message}`).
fn e2b_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

fn from_api(e: petty_server::error::ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    e2b_error(status, e.message)
}

/// `POST /sandboxes`, `POST /v2/sandboxes`: placed, then sent to the
/// chosen node's E2B API.
async fn create(State(g): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match small_body(body).await {
        Ok(b) => b,
        Err(e) => return from_api(e),
    };
    let spec: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // E2B's templateID: base, a template, or a snapshot (which only its
    // holder can restore).
    let template = spec.get("templateID").and_then(Value::as_str);
    let mut candidates: Vec<Node> = g
        .placement(template)
        .into_iter()
        .filter(|n| n.e2b_url().is_some())
        .collect();
    if let Some(t) = template {
        let holders: Vec<Node> = g
            .nodes
            .list()
            .into_iter()
            .filter(|n| {
                n.state == NodeState::Up && n.holds("snapshots", t) && n.e2b_url().is_some()
            })
            .collect();
        if !holders.is_empty() {
            candidates = holders;
        }
    }
    if candidates.is_empty() {
        return e2b_error(
            StatusCode::TOO_MANY_REQUESTS,
            "no node serving E2B's API can take a create now; add nodes with e2b.listen, undrain one, or wait",
        );
    }
    let mut last = None;
    for node in &candidates {
        match g
            .forward_via(Api::E2b, node, &parts, reqwest::Body::from(bytes.clone()))
            .await
        {
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => last = Some(r),
            Ok(r) if r.status() == StatusCode::CREATED => {
                g.nodes.count_create(&node.url);
                let (p, body) = r.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if let Some(id) = v.get("sandboxID").and_then(Value::as_str) {
                    g.nodes
                        .add_sandbox(&node.url, json!({"id": id, "name": id}));
                    tracing::info!(node = %node.name, sandbox = id, "E2B create placed");
                }
                return Response::from_parts(p, axum::body::Body::from(bytes));
            }
            Ok(r) => return r,
            Err(e) => last = Some(from_api(e)),
        }
    }
    last.expect("at least one candidate was tried")
}

/// A control-plane call for sandbox `rest`'s first segment: to its node.
async fn to_sandbox(State(g): State<Gateway>, Path(rest): Path<String>, req: Request) -> Response {
    let id = rest.split('/').next().unwrap_or_default().to_string();
    route(&g, &id, req).await
}

async fn route(g: &Gateway, id: &str, req: Request) -> Response {
    let node = match g.node_of_sandbox(id).await {
        Ok(n) => n,
        Err(e) => return from_api(e),
    };
    if node.state == NodeState::Down {
        return from_api(Gateway::lost(&node, "it"));
    }
    let deleting = req.method() == axum::http::Method::DELETE;
    let (parts, body) = req.into_parts();
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    match g.forward_via(Api::E2b, &node, &parts, body).await {
        Ok(r) => {
            if deleting && r.status().is_success() {
                g.nodes.remove_sandbox(&node.url, id);
            }
            r
        }
        Err(e) => from_api(e),
    }
}

/// `GET /v2/sandboxes`, `GET /sandboxes`, `GET /snapshots`: every node's.
async fn gather(State(g): State<Gateway>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let api_key = g.nodes.node_key().map(str::to_string);
    let nodes: Vec<Node> = g
        .nodes
        .list()
        .into_iter()
        .filter(|n| n.state == NodeState::Up)
        .collect();
    let reads = nodes.iter().filter_map(|n| {
        let url = format!("{}{path}", n.e2b_url()?);
        let mut r = g
            .nodes
            .plain_request(reqwest::Method::GET, &url)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(k) = &api_key {
            r = r.header("x-api-key", k);
        }
        Some(async move { r.send().await.ok()?.json::<Value>().await.ok() })
    });
    let mut all = Vec::new();
    for v in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
    {
        all.extend(v.as_array().cloned().unwrap_or_default());
    }
    Json(all).into_response()
}

/// envd and the code interpreter: to the node of the sandbox the request
/// names (`E2b-Sandbox-Id`, else the `<port>-<id>.<domain>` host form,
/// which is rewritten into the headers for the node).
async fn in_sandbox(State(g): State<Gateway>, req: Request) -> Response {
    let domain = g.e2b_domain.clone();
    let headers = req.headers();
    let by_header = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let by_host = domain.as_deref().and_then(|d| {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let name = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .to_ascii_lowercase();
        let (port, id) = petty_server::guard::e2b_host_form(&name, d)?;
        Some((port.to_string(), id.to_string()))
    });
    let (id, port) = match (by_header, by_host) {
        (Some(id), _) => (id, None),
        (None, Some((port, id))) => (id, Some(port)),
        (None, None) => {
            return e2b_error(
                StatusCode::BAD_REQUEST,
                "name the sandbox: send E2b-Sandbox-Id (E2B_SANDBOX_URL set to this gateway) or use the <port>-<id>.<domain> host form",
            )
        }
    };
    let mut req = req;
    if let Some(port) = port {
        // The node takes the header form (its Host is its own).
        let h = req.headers_mut();
        h.insert(
            "e2b-sandbox-id",
            id.parse()
                .expect("an id from a host name is a header value"),
        );
        h.insert("e2b-sandbox-port", port.parse().expect("digits"));
    }
    route(&g, &id, req).await
}

/// E2B's API key check: with `gateway.api_keys`, the control plane wants
/// one in `X-API-KEY` (envd and the interpreter carry the sandbox's own
/// token, which its node checks).
async fn require_key(
    keys: Arc<Vec<String>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let control = path.starts_with("/sandboxes")
        || path.starts_with("/v2/sandboxes")
        || path.starts_with("/snapshots")
        || path.starts_with("/templates");
    if keys.is_empty() || !control || req.headers().contains_key("e2b-sandbox-id") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if keys.iter().any(|k| k == given) {
        next.run(req).await
    } else {
        e2b_error(
            StatusCode::UNAUTHORIZED,
            "Invalid API key: send one of the gateway's keys in X-API-KEY",
        )
    }
}

/// E2B's routes on the gateway, behind the daemon's guard (E2B's media
/// types, `e2b.domain`'s hosts) and the key check.
pub fn app(g: Gateway, settings: &Settings, listen: std::net::SocketAddr) -> Router {
    let keys = Arc::new(settings.gateway.api_keys.clone());
    let domain = (!settings.e2b.domain.is_empty()).then_some(settings.e2b.domain.as_str());
    let guard =
        Arc::new(petty_server::guard::Guard::new(&settings.server, listen.ip()).for_e2b(domain));
    Router::new()
        .route("/sandboxes", post(create).get(gather))
        .route("/v2/sandboxes", post(create).get(gather))
        .route("/sandboxes/{*rest}", any(to_sandbox))
        .route("/v2/sandboxes/{*rest}", any(to_sandbox))
        .route("/snapshots", get(gather))
        .fallback(in_sandbox)
        .with_state(g)
        .layer(axum::middleware::from_fn(move |req, next| {
            require_key(keys.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            petty_server::guard::guard(guard.clone(), req, next)
        }))
}
