//! E2B's API, so E2B's own SDKs work against Petty unchanged: the
//! control plane (`E2B_API_URL`: create, get, list, kill, timeout, pause,
//! connect, metrics, fork) and the in-sandbox API envd serves in E2B
//! (`E2B_SANDBOX_URL`: `/health`, `/files`, and the Connect services
//! `process.Process` and `filesystem.Filesystem`), on the one listener
//! `e2b.listen`. A request for envd names its sandbox in the
//! `E2b-Sandbox-Id` header (or the `<port>-<id>.<domain>` host form);
//! everything maps onto [`Service`]'s operations, so limits, logging and
//! counting are REST's.
//!
//! Keys: with `server.api_keys` set, the control plane wants one in
//! `X-API-KEY`; envd and code-interpreter calls always want the
//! sandbox's `envdAccessToken` (`X-Access-Token`, or the same value as
//! `trafficAccessToken` in `E2B-Traffic-Access-Token`), a keyed hash of its id under a secret kept in the
//! data directory, so only whoever created (or connected to) the sandbox
//! can drive it, across daemon restarts.

mod connect;
mod control;
mod envd;
mod interpreter;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};
pub(crate) use crate::processes::{lock, PerSandbox};
use crate::service::Service;

/// The envd version Petty's envd answers as: the features of E2B's SDKs
/// it implements (multipart and octet-stream uploads, `CloseStdin`) are
/// those of envd 0.5.7.
pub const ENVD_VERSION: &str = "0.5.7";
/// The port E2B's SDKs name for envd.
const ENVD_PORT: &str = "49983";

/// What E2B's API keeps about a sandbox beyond Petty's own record: the
/// template it was asked for, its metadata and its variables (every
/// command it runs gets them). `<data_dir>/e2b/sandboxes/<id>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Extra {
    template_id: String,
    metadata: BTreeMap<String, String>,
    env_vars: BTreeMap<String, String>,
    /// `autoPause`: its timeout puts it away (the core's `on_expiry`)
    /// rather than killing it.
    #[serde(default)]
    auto_pause: bool,
    /// `autoResume.enabled`: a call into it while it is put away brings
    /// it back.
    #[serde(default)]
    auto_resume: bool,
    /// The timeout it was last given (create, `set_timeout`, connect): what
    /// a connect that names none gives it when it comes back.
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// The state E2B's routes share.
#[derive(Clone)]
pub(crate) struct E2b {
    service: Service,
    secret: Arc<[u8; 32]>,
    dir: PathBuf,
    extras: Arc<Mutex<BTreeMap<String, Extra>>>,
    contexts: interpreter::Contexts,
    watchers: watch::Watchers,
}

impl E2b {
    fn new(service: Service) -> std::io::Result<Self> {
        let data = service.config().paths.data_dir.clone();
        let dir = data.join("e2b");
        std::fs::create_dir_all(dir.join("sandboxes"))?;
        let secret = load_secret(&dir.join("secret"))?;
        Ok(Self {
            service,
            secret: Arc::new(secret),
            dir,
            extras: Arc::new(Mutex::new(BTreeMap::new())),
            contexts: interpreter::Contexts::default(),
            watchers: watch::Watchers::default(),
        })
    }

    /// The `envdAccessToken` of sandbox `id`: HMAC-SHA256 of its id under
    /// the secret, hex.
    fn token(&self, id: &str) -> String {
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&self.secret[..]);
        let pad = |b: u8| key.iter().map(|k| k ^ b).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(id.as_bytes())
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        outer.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn extra_path(&self, id: &str) -> PathBuf {
        self.dir.join("sandboxes").join(format!("{id}.json"))
    }

    /// What E2B's API keeps about `id` (defaults for a sandbox made
    /// through Petty's own API).
    fn extra(&self, id: &str) -> Extra {
        if let Some(e) = lock(&self.extras).get(id) {
            return e.clone();
        }
        let e: Extra = std::fs::read(self.extra_path(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Extra {
                template_id: "base".into(),
                ..Extra::default()
            });
        lock(&self.extras).insert(id.to_string(), e.clone());
        e
    }

    fn set_extra(&self, id: &str, e: Extra) -> Result<(), ApiError> {
        let path = self.extra_path(id);
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, serde_json::to_vec(&e).expect("serializes"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("recording the sandbox's E2B metadata: {e}"),
                )
            })?;
        lock(&self.extras).insert(id.to_string(), e);
        Ok(())
    }

    /// `e2b.domain`, if set: what creates answer as their `domain`, and
    /// the domain of the host form.
    fn domain(&self) -> Option<String> {
        let d = &self.service.config().e2b.domain;
        (!d.is_empty()).then(|| d.clone())
    }

    fn forget(&self, id: &str) {
        lock(&self.extras).remove(id);
        let _ = std::fs::remove_file(self.extra_path(id));
        self.service.processes().forget(id);
        self.contexts.forget(id);
        self.watchers.forget(id);
    }
}

/// Reads the secret envd tokens are made under, making it (mode 0600) the
/// first time.
fn load_secret(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(b) = std::fs::read(path) {
        if let Ok(s) = <[u8; 32]>::try_from(b.as_slice()) {
            return Ok(s);
        }
    }
    let mut s = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut s)?;
    let tmp = path.with_extension("partial");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&s)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(s)
}

/// An error as E2B's control plane answers one: `{"code": STATUS,
/// "message": …}`, which the SDKs parse for every documented status.
pub(crate) struct E2bError(StatusCode, String);

impl E2bError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self(status, e.message)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let mut r = (
            self.0,
            axum::Json(json!({"code": self.0.as_u16(), "message": self.1})),
        )
            .into_response();
        // Not retried by the SDKs unless it is worth it.
        if self.0.is_server_error() || self.0 == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                "should-retry",
                axum::http::HeaderValue::from_static("false"),
            );
        }
        r
    }
}

/// The sandbox an envd request is for, `E2b-Sandbox-Id` (which
/// [`authorize`] sets from the host form `<port>-<id>.<domain>` when that
/// named it), and the port it names.
fn envd_target(headers: &HeaderMap) -> Option<(String, String)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let id = header("e2b-sandbox-id")?;
    let port = header("e2b-sandbox-port").unwrap_or_else(|| ENVD_PORT.into());
    Some((id, port))
}

/// The port E2B's SDKs name the code interpreter by.
const INTERPRETER_PORT: &str = "49999";

/// `(sandbox id, port)` of a request whose `Host` is E2B's host form
/// `<port>-<id>.<domain>` under `domain` (`e2b.domain`); the guard admitted
/// no other domain's.
fn host_target(headers: &HeaderMap, domain: &str) -> Option<(String, String)> {
    let host = headers.get(axum::http::header::HOST)?.to_str().ok()?;
    let crate::guard::HostName::Name(name) = crate::guard::parse_host(host)? else {
        return None;
    };
    let (port, id) = crate::guard::e2b_host_form(&name, domain)?;
    Some((id.to_string(), port.to_string()))
}

/// The code interpreter's routes (port 49999).
fn interpreter_path(path: &str) -> bool {
    path == "/execute" || path == "/contexts" || path.starts_with("/contexts/")
}

/// envd's routes (port 49983).
fn envd_path(path: &str) -> bool {
    matches!(path, "/health" | "/files")
        || path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
}

/// Whether a host-form request for `port` may go to `path`: 49983 is envd,
/// 49999 the code interpreter (and its `/health`); any other port is one
/// Petty does not proxy into the guest: 502, as E2B's proxy answers a port
/// nothing listens on.
fn port_serves(id: &str, port: &str, path: &str) -> Result<(), E2bError> {
    match port {
        ENVD_PORT if envd_path(path) => Ok(()),
        INTERPRETER_PORT if interpreter_path(path) || path == "/health" => Ok(()),
        ENVD_PORT | INTERPRETER_PORT => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{path} is not served at port {port} of sandbox {id}: envd is at {ENVD_PORT}, the code interpreter (/execute, /contexts) at {INTERPRETER_PORT}"
            ),
        )),
        other => Err(E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "port {other} of sandbox {id} is not served: Petty answers only envd ({ENVD_PORT}) and the code interpreter ({INTERPRETER_PORT}) by the host form"
            ),
        )),
    }
}

/// Keys: the control plane wants one of `server.api_keys` in `X-API-KEY`
/// (when any are set); envd wants the sandbox's token in `X-Access-Token`.
async fn authorize(e2b: Arc<E2b>, mut req: Request, next: Next) -> Response {
    // The host form (E2B_DOMAIN without E2B_SANDBOX_URL) names the sandbox
    // and port in `Host`: made the headers the routes read.
    if envd_target(req.headers()).is_none() {
        if let Some((id, port)) = e2b.domain().and_then(|d| host_target(req.headers(), &d)) {
            if let Err(e) = port_serves(&id, &port, req.uri().path()) {
                return e.into_response();
            }
            for (name, value) in [("e2b-sandbox-id", id), ("e2b-sandbox-port", port)] {
                if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                    req.headers_mut().insert(name, v);
                }
            }
        }
    }
    let headers = req.headers();
    // A sandbox's token reaches its envd and code interpreter, never the
    // control plane (which wants the API key whatever else is sent).
    let path = req.uri().path();
    let into_sandbox = envd_path(path) || interpreter_path(path);
    if let Some((id, _port)) = envd_target(headers).filter(|_| into_sandbox) {
        // The code interpreter's context calls carry only the traffic
        // token; create answers the same token as both.
        let token = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let want = e2b.token(&id);
        if !["x-access-token", "e2b-traffic-access-token"]
            .iter()
            .any(|h| constant_eq(token(h).as_bytes(), want.as_bytes()))
        {
            return E2bError::new(
                StatusCode::UNAUTHORIZED,
                format!("missing or wrong X-Access-Token for sandbox {id}: use the envdAccessToken its create or connect answered"),
            )
            .into_response();
        }
        // autoResume: a call into a sandbox put away brings it back.
        if let Err(e) = control::wake_for_traffic(&e2b, &id).await {
            return e.into_response();
        }
        return next.run(req).await;
    }
    let keys = &e2b.service.config().server.api_keys;
    if !keys.is_empty() {
        let given = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !keys
            .iter()
            .any(|k| constant_eq(k.as_bytes(), given.as_bytes()))
        {
            return E2bError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong X-API-KEY: set E2B_API_KEY to one of the daemon's server.api_keys",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// E2B's API over `service`, behind the same request guard as the
/// daemon's own routes (no web page can drive it), then the key check.
pub fn app(service: Service) -> std::io::Result<Router> {
    let config = service.config().clone();
    let listen = config
        .e2b_listen_addr()
        .ok()
        .flatten()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let guard = Arc::new(
        crate::guard::Guard::new(&config.server, listen).for_e2b(Some(&config.e2b.domain)),
    );
    let max_body = usize::try_from(config.server.max_body_mib.saturating_mul(1024 * 1024))
        .unwrap_or(usize::MAX);
    let e2b = Arc::new(E2b::new(service)?);
    let auth = e2b.clone();
    Ok(control::routes()
        .merge(envd::routes())
        .merge(interpreter::routes())
        .with_state(e2b)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(move |req, next| {
            authorize(auth.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::guard::guard(guard.clone(), req, next)
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envd_requests_are_told_by_header_or_host() {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:3000".parse().unwrap());
        assert_eq!(envd_target(&h), None);
        h.insert("e2b-sandbox-id", "abc".parse().unwrap());
        assert_eq!(envd_target(&h), Some(("abc".into(), "49983".into())));
        let mut h = HeaderMap::new();
        h.insert("host", "49999-1b2c-3d.sandbox.local:3000".parse().unwrap());
        assert_eq!(envd_target(&h), None, "the host form is authorize's");
        assert_eq!(
            host_target(&h, "sandbox.local"),
            Some(("1b2c-3d".into(), "49999".into()))
        );
        assert_eq!(host_target(&h, "other.local"), None);
        let mut h = HeaderMap::new();
        h.insert("host", "api-x.example.com".parse().unwrap());
        assert_eq!(host_target(&h, "example.com"), None);
        assert!(port_serves("x", "49983", "/files").is_ok());
        assert!(port_serves("x", "49999", "/execute").is_ok());
        assert!(port_serves("x", "49999", "/contexts/c1/restart").is_ok());
        assert_eq!(
            port_serves("x", "49983", "/execute").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            port_serves("x", "49999", "/files").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            port_serves("x", "49983", "/sandboxes").unwrap_err().0,
            StatusCode::NOT_FOUND,
            "no control plane by a sandbox's host"
        );
        assert_eq!(
            port_serves("x", "8080", "/").unwrap_err().0,
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn tokens_are_keyed_by_sandbox_and_compared_in_constant_time() {
        assert!(constant_eq(b"abc", b"abc"));
        assert!(!constant_eq(b"abc", b"abd"));
        assert!(!constant_eq(b"abc", b"ab"));
    }
}
