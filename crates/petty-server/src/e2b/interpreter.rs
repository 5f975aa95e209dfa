//! E2B's code interpreter (the port 49999 of `e2b-code-interpreter`):
//! `POST /execute` runs a cell in a code context and streams its output
//! as NDJSON; `/contexts` makes, lists, restarts and removes contexts.
//! A context is one persistent kernel process in the guest, fed cells on
//! its stdin, so variables live between calls: Python (`kernel.py`) or
//! bash (`kernel_bash.py`, one bash whose variables and working directory
//! carry over; a non-zero status is the cell's error). Each sandbox has a
//! default context per language, made at its first cell in it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use petty_core::{ExecEvent, ExecRequest, ExecStream};
use serde_json::{json, Value};

use super::{envd_target, E2b, E2bError, PerSandbox};

const KERNEL: &str = include_str!("kernel.py");
const BASH_KERNEL: &str = include_str!("kernel_bash.py");
/// The languages a context may be in.
const LANGUAGES: &str = "python, bash";
/// Longest line a kernel may write (one output chunk or result).
const MAX_LINE: usize = 16 << 20;

pub(super) fn routes() -> Router<Arc<E2b>> {
    Router::new()
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", delete(remove_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .route(
            "/contexts/{id}/ping",
            get(|| async { StatusCode::NO_CONTENT }),
        )
}

/// One code context: its kernel process, one cell at a time.
pub(super) struct Context {
    id: String,
    language: String,
    cwd: String,
    io: tokio::sync::Mutex<Option<ExecStream>>,
}

/// Every sandbox's code contexts.
#[derive(Clone, Default)]
pub(super) struct Contexts {
    next: Arc<AtomicU32>,
    by_sandbox: PerSandbox<String, Context>,
}

impl Contexts {
    pub(super) fn forget(&self, sandbox: &str) {
        self.by_sandbox.forget(sandbox);
    }

    fn get(&self, sandbox: &str, id: &str) -> Option<Arc<Context>> {
        self.by_sandbox.get(sandbox, &id.to_string())
    }

    fn insert(&self, sandbox: &str, c: Arc<Context>) {
        self.by_sandbox.insert(sandbox, c.id.clone(), c);
    }

    fn remove(&self, sandbox: &str, id: &str) -> Option<Arc<Context>> {
        self.by_sandbox.remove(sandbox, &id.to_string())
    }
}

fn sandbox_of(headers: &HeaderMap) -> Result<String, E2bError> {
    envd_target(headers)
        .map(|(id, _)| id)
        .ok_or_else(|| E2bError::new(StatusCode::BAD_REQUEST, "no E2b-Sandbox-Id header"))
}

fn check_language(language: Option<&str>) -> Result<String, E2bError> {
    match language.map(str::to_ascii_lowercase).as_deref() {
        None | Some("python") | Some("python3") => Ok("python".into()),
        Some("bash") => Ok("bash".into()),
        Some(other) => Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "language {other} is not supported by Petty's code interpreter; it runs {LANGUAGES}"
            ),
        )),
    }
}

/// Starts a kernel for `language` in `sandbox` working in `cwd`.
async fn start_kernel(
    e2b: &E2b,
    sandbox: &str,
    cwd: &str,
    language: &str,
) -> Result<ExecStream, E2bError> {
    let kernel = if language == "bash" {
        BASH_KERNEL
    } else {
        KERNEL
    };
    let mut req = ExecRequest::argv(["python3", "-u", "-c", kernel]);
    req.stdin = true;
    req.cwd = Some(cwd.to_string());
    req.env = e2b.extra(sandbox).env_vars.into_iter().collect();
    Ok(e2b.service.start_process(sandbox, req).await?)
}

async fn new_context(
    e2b: &E2b,
    sandbox: &str,
    id: String,
    language: String,
    cwd: String,
) -> Result<Arc<Context>, E2bError> {
    let stream = start_kernel(e2b, sandbox, &cwd, &language).await?;
    let c = Arc::new(Context {
        id,
        language,
        cwd,
        io: tokio::sync::Mutex::new(Some(stream)),
    });
    e2b.contexts.insert(sandbox, c.clone());
    Ok(c)
}

fn context_json(c: &Context) -> Value {
    json!({"id": c.id, "language": c.language, "cwd": c.cwd})
}

/// `POST /contexts` `{"language", "cwd"}`.
async fn create_context(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, E2bError> {
    let sandbox = sandbox_of(&headers)?;
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let language = check_language(body.get("language").and_then(Value::as_str))?;
    let cwd = body
        .get("cwd")
        .and_then(Value::as_str)
        .unwrap_or("/root")
        .to_string();
    let id = format!(
        "ctx-{}",
        e2b.contexts.next.fetch_add(1, Ordering::Relaxed) + 1
    );
    let c = new_context(&e2b, &sandbox, id, language, cwd).await?;
    Ok(Json(context_json(&c)))
}

/// `GET /contexts`.
async fn list_contexts(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
) -> Result<Json<Value>, E2bError> {
    let sandbox = sandbox_of(&headers)?;
    let all: Vec<Value> = e2b
        .contexts
        .by_sandbox
        .list(&sandbox)
        .iter()
        .map(|c| context_json(c))
        .collect();
    Ok(Json(Value::Array(all)))
}

/// `DELETE /contexts/{id}`: its kernel ends.
async fn remove_context(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    let sandbox = sandbox_of(&headers)?;
    e2b.contexts
        .remove(&sandbox, &id)
        .ok_or_else(|| E2bError::new(StatusCode::NOT_FOUND, format!("no context {id}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /contexts/{id}/restart`: a new kernel, its variables gone.
async fn restart_context(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    let sandbox = sandbox_of(&headers)?;
    let c = e2b
        .contexts
        .get(&sandbox, &id)
        .ok_or_else(|| E2bError::new(StatusCode::NOT_FOUND, format!("no context {id}")))?;
    let fresh = start_kernel(&e2b, &sandbox, &c.cwd, &c.language).await?;
    // The old kernel is killed as its stream drops.
    *c.io.lock().await = Some(fresh);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /execute` `{"code", "context_id", "language", "env_vars"}`: the
/// cell's output as it comes, one JSON object per line, ending with
/// `end_of_execution`.
async fn execute(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, E2bError> {
    let sandbox = sandbox_of(&headers)?;
    let code = body
        .get("code")
        .and_then(Value::as_str)
        .ok_or_else(|| E2bError::new(StatusCode::BAD_REQUEST, "code is required"))?
        .to_string();
    let context = match body.get("context_id").and_then(Value::as_str) {
        Some(id) => e2b
            .contexts
            .get(&sandbox, id)
            .ok_or_else(|| E2bError::new(StatusCode::NOT_FOUND, format!("no context {id}")))?,
        None => {
            let language = check_language(body.get("language").and_then(Value::as_str))?;
            let id = format!("default-{language}");
            match e2b.contexts.get(&sandbox, &id) {
                Some(c) => c,
                None => new_context(&e2b, &sandbox, id, language, "/root".into()).await?,
            }
        }
    };
    let cell =
        json!({"code": code, "env_vars": body.get("env_vars").cloned().unwrap_or(Value::Null)});
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (e2b2, sandbox2) = (e2b.clone(), sandbox.clone());
    tokio::spawn(async move {
        // One cell at a time per context; the cell is read to its end even
        // if the client goes, so the next one starts in step.
        let mut io = context.io.lock().await;
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        let failed = |why: String| {
            [
                line(
                    json!({"type": "error", "name": "KernelError", "value": why, "traceback": why}),
                ),
                line(json!({"type": "end_of_execution"})),
            ]
        };
        let Some(stream) = io.as_mut() else {
            for l in failed("this context's kernel has ended; restart it".into()) {
                let _ = tx.send(Ok(l)).await;
            }
            return;
        };
        let mut request = cell.to_string().into_bytes();
        request.push(b'\n');
        if let Err(e) = stream.write_stdin(&request).await {
            for l in failed(format!("sending the cell to the kernel: {e}")) {
                let _ = tx.send(Ok(l)).await;
            }
            return;
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            match stream.next().await {
                Ok(ExecEvent::Stdout(b)) => {
                    buf.extend_from_slice(&b);
                    // A kernel that never ends its line (a hostile guest) is
                    // let go rather than held in memory without bound.
                    if buf.len() > MAX_LINE && !buf.contains(&b'\n') {
                        *io = None;
                        e2b2.contexts.remove(&sandbox2, &context.id);
                        for l in failed(format!(
                            "the kernel wrote a line of more than {} MiB; the context is removed",
                            MAX_LINE >> 20
                        )) {
                            let _ = tx.send(Ok(l)).await;
                        }
                        return;
                    }
                    while let Some(at) = buf.iter().position(|&c| c == b'\n') {
                        let l: Vec<u8> = buf.drain(..=at).collect();
                        let end = serde_json::from_slice::<Value>(&l)
                            .is_ok_and(|v| v["type"] == "end_of_execution");
                        let _ = tx.send(Ok(Bytes::from(l))).await;
                        if end {
                            return;
                        }
                    }
                }
                Ok(ExecEvent::Stderr(b)) => {
                    tracing::debug!(sandbox = %sandbox2, "kernel: {}", String::from_utf8_lossy(&b));
                }
                Ok(ExecEvent::Exit(s)) => {
                    *io = None;
                    e2b2.contexts.remove(&sandbox2, &context.id);
                    for l in failed(format!("the kernel ended (exit code {})", s.code)) {
                        let _ = tx.send(Ok(l)).await;
                    }
                    return;
                }
                Err(e) => {
                    *io = None;
                    e2b2.contexts.remove(&sandbox2, &context.id);
                    for l in failed(format!("the kernel's stream broke: {e}")) {
                        let _ = tx.send(Ok(l)).await;
                    }
                    return;
                }
            }
        }
    });
    let mut r = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r.into_response())
}
