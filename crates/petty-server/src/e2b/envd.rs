//! envd, E2B's in-sandbox API, served by the daemon for every sandbox:
//! `/health`, `/files` (multipart and raw uploads, downloads), and the
//! Connect services `process.Process` (Start with or without a PTY,
//! Connect, List, SendSignal, SendInput, StreamInput, CloseStdin, Update)
//! and `filesystem.Filesystem` (Stat, ListDir, MakeDir, Move, Remove,
//! WatchDir, CreateWatcher, GetWatcherEvents, RemoveWatcher), each onto
//! the sandbox's guest agent. The user
//! is root unless the call names one (HTTP Basic, or `username`); relative
//! paths are under that user's home.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use petty_core::{ExecRequest, FileStat, FileType, PtySize};
use serde_json::{json, Value};

use super::connect::{self, RpcError};
use super::{envd_target, E2b, E2bError};
use crate::processes::{Event, Proc};

type RpcResult = Result<Response, RpcError>;

pub(super) fn routes() -> Router<Arc<E2b>> {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(download).post(upload))
        .route("/process.Process/{method}", post(process))
        .route("/filesystem.Filesystem/{method}", post(filesystem))
}

/// The sandbox a request is for (the key check found it already).
fn sandbox_of(headers: &HeaderMap) -> Result<String, RpcError> {
    envd_target(headers)
        .map(|(id, _)| id)
        .ok_or_else(|| RpcError::invalid("no E2b-Sandbox-Id header: which sandbox is this for?"))
}

/// The user a call runs as: HTTP Basic `user:`, else `username`, else
/// root.
fn user_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.split(':').next().unwrap_or_default().to_string());
    basic
        .or_else(|| query.map(str::to_string))
        .filter(|u| !u.is_empty())
}

fn home_of(user: Option<&str>) -> String {
    match user {
        None | Some("root") => "/root".into(),
        Some(u) => format!("/home/{u}"),
    }
}

/// `path` made absolute under `user`'s home.
fn absolute(path: &str, user: Option<&str>) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() || path == "." {
        home_of(user)
    } else {
        format!("{}/{}", home_of(user), path.trim_start_matches("./"))
    }
}

/// `GET /health`: envd answers 204 while the sandbox runs.
async fn health(State(e2b): State<Arc<E2b>>, headers: HeaderMap) -> Response {
    let Ok(id) = sandbox_of(&headers) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    match e2b.service.get(&id).await {
        Ok(v) if v.state == "ready" => StatusCode::NO_CONTENT.into_response(),
        Ok(v) => E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox {id} is {}: it was not found running", v.state),
        )
        .into_response(),
        Err(_) => E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox {id} was not found"),
        )
        .into_response(),
    }
}

/// An envd HTTP error: `{"code": STATUS, "message": …}`.
fn http_error(e: crate::error::ApiError) -> Response {
    E2bError::from(e).into_response()
}

/// `GET /files?path=P[&username=U]`: the file's bytes.
async fn download(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let id = match sandbox_of(&headers) {
        Ok(id) => id,
        Err(e) => return E2bError::new(StatusCode::BAD_REQUEST, e.message).into_response(),
    };
    let user = user_of(&headers, q.get("username").map(String::as_str));
    let Some(path) = q.get("path") else {
        return E2bError::new(StatusCode::BAD_REQUEST, "path is required").into_response();
    };
    let path = absolute(path, user.as_deref());
    // Streamed as the guest sends it: memory stays bounded.
    let limit = e2b.service.config().limits.max_download_mib << 20;
    match e2b.service.read_file_stream(&id, &path, Some(limit)).await {
        Ok(rx) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
            .into_response(),
        Err(e) => http_error(e),
    }
}

/// `POST /files[?path=P]`: multipart parts named `file` (the target its
/// `path`, else the part's file name) or the raw body (`path` needed);
/// answers each file written as `{"name", "type": "file", "path"}`.
async fn upload(
    State(e2b): State<Arc<E2b>>,
    Query(q): Query<BTreeMap<String, String>>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let id = match sandbox_of(&headers) {
        Ok(id) => id,
        Err(e) => return E2bError::new(StatusCode::BAD_REQUEST, e.message).into_response(),
    };
    let user = user_of(&headers, q.get("username").map(String::as_str));
    let bad = |m: String| E2bError::new(StatusCode::BAD_REQUEST, m).into_response();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if crate::guard::content_type_is(&headers, "multipart/form-data") {
        let mut form = match axum::extract::Multipart::from_request(req, &()).await {
            Ok(f) => f,
            Err(e) => return bad(format!("reading the multipart body: {e}")),
        };
        loop {
            match form.next_field().await {
                Ok(Some(field)) => {
                    let target = match (q.get("path"), field.file_name()) {
                        (Some(p), _) => p.clone(),
                        (None, Some(f)) => f.to_string(),
                        (None, None) => {
                            return bad("a part names no file and no path was given".into())
                        }
                    };
                    match field.bytes().await {
                        Ok(b) => files.push((target, b.to_vec())),
                        Err(e) => return bad(format!("reading the multipart body: {e}")),
                    }
                }
                Ok(None) => break,
                Err(e) => return bad(format!("reading the multipart body: {e}")),
            }
        }
    } else {
        let Some(path) = q.get("path") else {
            return bad("path is required for a raw upload".into());
        };
        let gzip = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let body = match Bytes::from_request(req, &()).await {
            Ok(b) => b.to_vec(),
            Err(e) => return bad(format!("reading the body: {e}")),
        };
        if gzip {
            let limit = e2b.service.config().limits.max_upload_mib << 20;
            match gunzip(&body, limit) {
                Ok(data) => files.push((path.clone(), data)),
                Err(r) => return *r,
            }
        } else {
            files.push((path.clone(), body));
        }
    }
    let mut written = Vec::new();
    for (target, data) in files {
        let path = absolute(&target, user.as_deref());
        if let Err(e) = e2b.service.write_file(&id, &path, &data).await {
            return http_error(e);
        }
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        written.push(json!({"name": name, "type": "file", "path": path}));
    }
    Json(Value::Array(written)).into_response()
}

/// A gzip body, decoded, of at most `limit` bytes (a bigger one is a 413
/// naming `limits.max_upload_mib`).
fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, Box<Response>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            E2bError::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid gzip ({e}); send it as it is, or gzip it whole"),
            )
            .into_response()
        })
        .map_err(Box::new)?;
    if out.len() as u64 > limit {
        return Err(Box::new(
            E2bError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the upload unpacks to more than {} MiB (limits.max_upload_mib)",
                    limit >> 20
                ),
            )
            .into_response(),
        ));
    }
    Ok(out)
}

/// `/process.Process/{method}`.
async fn process(
    State(e2b): State<Arc<E2b>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let out = match method.as_str() {
        "Start" => start(&e2b, &headers, &body).await,
        "Connect" => reconnect(&e2b, &headers, &body).await,
        "List" => list(&e2b, &headers),
        "SendSignal" => send_signal(&e2b, &headers, &body).await,
        "SendInput" => send_input(&e2b, &headers, &body).await,
        "CloseStdin" => close_stdin(&e2b, &headers, &body).await,
        "Update" => update(&e2b, &headers, &body).await,
        "StreamInput" => stream_input(&e2b, &headers, &body).await,
        other => Err(RpcError::new(
            "unimplemented",
            format!("process.Process has no method {other}"),
        )),
    };
    out.unwrap_or_else(IntoResponse::into_response)
}

/// `Start`: runs `process.cmd` with `process.args` as its own process
/// (not under `/bin/sh`), the sandbox's variables and then the call's
/// under it, in `process.cwd` (default the user's home); the stream
/// answers `start` with its pid, its output, its `end`.
async fn start(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let id = sandbox_of(headers)?;
    let msg = connect::request_message(body)?;
    let pty = match msg.get("pty") {
        None | Some(Value::Null) => None,
        Some(p) => Some(pty_size(p)?),
    };
    let config = msg.get("process").cloned().unwrap_or_else(|| json!({}));
    let cmd = config
        .get("cmd")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RpcError::invalid("process.cmd is required"))?;
    let mut argv = vec![cmd.to_string()];
    if let Some(args) = config.get("args").and_then(Value::as_array) {
        for a in args {
            argv.push(
                a.as_str()
                    .ok_or_else(|| RpcError::invalid("process.args must be strings"))?
                    .to_string(),
            );
        }
    }
    let user = user_of(headers, None);
    let mut env: BTreeMap<String, String> = e2b.extra(&id).env_vars;
    if let Some(envs) = config.get("envs").and_then(Value::as_object) {
        for (k, v) in envs {
            env.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    // A terminal always takes input: it is what is typed.
    let with_stdin = pty.is_some() || msg.get("stdin").and_then(Value::as_bool).unwrap_or(false);
    let mut req = ExecRequest::argv(argv);
    req.env = env.into_iter().collect();
    req.cwd = Some(
        config
            .get("cwd")
            .and_then(Value::as_str)
            .map(|c| absolute(c, user.as_deref()))
            .unwrap_or_else(|| home_of(user.as_deref())),
    );
    req.stdin = with_stdin;
    req.pty = pty;
    req.user = user.filter(|u| u != "root");
    let tag = msg.get("tag").and_then(Value::as_str).map(str::to_string);
    let proc = e2b.service.spawn_process(&id, req, tag, config).await?;
    Ok(follow(proc))
}

/// `Connect`: the stream of a process already running (what it printed
/// so far first).
async fn reconnect(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let id = sandbox_of(headers)?;
    let msg = connect::request_message(body)?;
    let selector = msg.get("process").cloned().unwrap_or_default();
    let proc = find_in(e2b, &id, &selector).ok_or_else(|| {
        RpcError::not_found(format!("no process {selector} runs in sandbox {id}"))
    })?;
    Ok(follow(proc))
}

/// The Connect stream of `proc`: `start`, every event so far and each
/// that follows, a keepalive every 30 s of silence, and the end.
fn follow(proc: Arc<Proc>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let send = |m: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(connect::envelope(&m))).await.is_ok() }
        };
        if !send(json!({"event": {"start": {"pid": proc.pid}}})).await {
            return;
        }
        let (past, live) = proc.attach();
        let mut ended = false;
        for e in past {
            ended |= matches!(e, Event::End(_));
            if !send(event_json(&e)).await {
                return;
            }
        }
        if let (false, Some(mut live)) = (ended, live) {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), live.recv()).await {
                    Ok(Ok(e)) => {
                        let end = matches!(e, Event::End(_));
                        if !send(event_json(&e)).await {
                            return;
                        }
                        if end {
                            break;
                        }
                    }
                    // Output this stream was too slow to take is skipped.
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
                    Err(_) => {
                        if !send(json!({"event": {"keepalive": {}}})).await {
                            return;
                        }
                    }
                }
            }
        }
        let _ = tx.send(Ok(connect::end_of_stream(None))).await;
    });
    connect::stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `List`: the sandbox's running processes.
fn list(e2b: &Arc<E2b>, headers: &HeaderMap) -> RpcResult {
    let id = sandbox_of(headers)?;
    let processes: Vec<Value> = e2b
        .service
        .processes()
        .running(&id)
        .into_iter()
        .map(|p| {
            let mut v = json!({"pid": p.pid, "config": p.started.config});
            if let Some(t) = &p.started.tag {
                v["tag"] = json!(t);
            }
            v
        })
        .collect();
    Ok(connect::unary(json!({ "processes": processes })))
}

fn find(e2b: &Arc<E2b>, headers: &HeaderMap, msg: &Value) -> Result<Arc<Proc>, RpcError> {
    let id = sandbox_of(headers)?;
    let selector = msg.get("process").cloned().unwrap_or_default();
    find_in(e2b, &id, &selector)
        .ok_or_else(|| RpcError::not_found(format!("no process {selector} runs in sandbox {id}")))
}

/// The running process of sandbox `id` that `selector` (`{"pid": N}` or
/// `{"tag": "…"}`) names: to envd an ended process is gone (the SDK's
/// `kill` of one answers false), though Petty's own API still shows it.
fn find_in(e2b: &E2b, id: &str, selector: &Value) -> Option<Arc<Proc>> {
    let processes = e2b.service.processes();
    let found = match selector.get("pid").and_then(Value::as_u64) {
        Some(pid) => processes.get(id, u32::try_from(pid).ok()?),
        None => processes.by_tag(id, selector.get("tag").and_then(Value::as_str)?),
    }?;
    found.ended().is_none().then_some(found)
}

/// One event of a process as envd's `ProcessEvent` JSON carries it.
fn event_json(e: &Event) -> Value {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match e {
        Event::Stdout(b) => json!({"event": {"data": {"stdout": b64(b)}}}),
        Event::Stderr(b) => json!({"event": {"data": {"stderr": b64(b)}}}),
        Event::Pty(b) => json!({"event": {"data": {"pty": b64(b)}}}),
        Event::End(end) => {
            let status = match (&end.error, end.signal) {
                (Some(_), None) if !end.timed_out => "error".to_string(),
                (_, Some(9)) => "signal: killed".to_string(),
                (_, Some(n)) => format!("signal: {n}"),
                (_, None) => format!("exit status {}", end.code),
            };
            // envd reports a signalled process's code as -1.
            let exit_code = if end.signal.is_some() { -1 } else { end.code };
            let mut v = json!({"exitCode": exit_code, "exited": true, "status": status});
            if let Some(e) = &end.error {
                v["error"] = json!(e);
            }
            json!({"event": {"end": v}})
        }
    }
}

/// `SendSignal`: `SIGNAL_SIGKILL` or `SIGNAL_SIGTERM` (or their numbers)
/// to the process's group.
async fn send_signal(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let msg = connect::unary_message(body)?;
    let proc = find(e2b, headers, &msg)?;
    let signal = match msg.get("signal") {
        Some(Value::String(s)) if s == "SIGNAL_SIGKILL" => 9,
        Some(Value::String(s)) if s == "SIGNAL_SIGTERM" => 15,
        Some(Value::Number(n)) if matches!(n.as_i64(), Some(9 | 15)) => n.as_i64().unwrap() as i32,
        other => {
            return Err(RpcError::invalid(format!(
                "signal {other:?} is not one envd sends; use SIGNAL_SIGKILL or SIGNAL_SIGTERM"
            )))
        }
    };
    proc.signal(signal)
        .await
        .map_err(|e| RpcError::new("internal", e.to_string()))?;
    Ok(connect::unary(json!({})))
}

/// A `PTY` message's size (`{"size": {"rows", "cols"}}`).
fn pty_size(pty: &Value) -> Result<PtySize, RpcError> {
    let dim = |key: &str| {
        pty.pointer(&format!("/size/{key}"))
            .and_then(Value::as_u64)
            .filter(|n| (1..=u16::MAX as u64).contains(n))
            .map(|n| n as u16)
            .ok_or_else(|| {
                RpcError::invalid(format!("pty.size.{key} must be a number from 1 to 65535"))
            })
    };
    Ok(PtySize {
        rows: dim("rows")?,
        cols: dim("cols")?,
    })
}

/// The bytes of a `ProcessInput` (`{"stdin": b64}` or `{"pty": b64}`).
fn input_bytes(input: Option<&Value>) -> Result<Vec<u8>, RpcError> {
    let b64 = input
        .and_then(|i| i.get("stdin").or_else(|| i.get("pty")))
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid("input needs stdin or pty (base64 bytes)"))?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| RpcError::invalid(format!("input is not base64: {e}")))
}

/// `SendInput`: bytes (`input.stdin` or, to a terminal, `input.pty`,
/// base64) to a process started with `stdin: true` or a PTY.
async fn send_input(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let msg = connect::unary_message(body)?;
    let proc = find(e2b, headers, &msg)?;
    let data = input_bytes(msg.get("input"))?;
    proc.write_stdin(&data)
        .await
        .map_err(|e| RpcError::new("failed_precondition", e))?;
    Ok(connect::unary(json!({})))
}

/// `StreamInput`: a client stream, `start` naming the process then `data`
/// events (and keepalives), answered once all of it was written.
async fn stream_input(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let mut proc = None;
    for msg in connect::request_messages(body)? {
        if let Some(start) = msg.get("start") {
            proc = Some(find(e2b, headers, start)?);
        } else if let Some(data) = msg.get("data") {
            let p = proc
                .as_ref()
                .ok_or_else(|| RpcError::invalid("the input stream must begin with start"))?;
            let bytes = input_bytes(data.get("input"))?;
            p.write_stdin(&bytes)
                .await
                .map_err(|e| RpcError::new("failed_precondition", e))?;
        }
    }
    let frames = [
        Ok(connect::envelope(&json!({}))),
        Ok(connect::end_of_stream(None)),
    ];
    Ok(connect::stream(tokio_stream::iter(frames)))
}

/// `Update`: a new size for a process's terminal.
async fn update(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let msg = connect::unary_message(body)?;
    let proc = find(e2b, headers, &msg)?;
    let Some(pty) = msg.get("pty").filter(|p| !p.is_null()) else {
        return Ok(connect::unary(json!({})));
    };
    proc.resize(pty_size(pty)?)
        .await
        .map_err(|e| RpcError::new("failed_precondition", e))?;
    Ok(connect::unary(json!({})))
}

/// `CloseStdin`: the process reads end-of-file.
async fn close_stdin(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let msg = connect::unary_message(body)?;
    let proc = find(e2b, headers, &msg)?;
    proc.close_stdin()
        .await
        .map_err(|e| RpcError::new("internal", e))?;
    Ok(connect::unary(json!({})))
}

/// `/filesystem.Filesystem/{method}`.
async fn filesystem(
    State(e2b): State<Arc<E2b>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == "WatchDir" {
        return watch_dir(&e2b, &headers, &body)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let out = async {
        let id = sandbox_of(&headers)?;
        let msg = connect::unary_message(&body)?;
        let user = user_of(&headers, None);
        let path_of = |key: &str| -> Result<String, RpcError> {
            let p = msg
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| RpcError::invalid(format!("{key} is required")))?;
            Ok(absolute(p, user.as_deref()))
        };
        let s = &e2b.service;
        match method.as_str() {
            "Stat" => {
                let path = path_of("path")?;
                let p = path.clone();
                let st = s
                    .with_sandbox(&id, |sb| async move { sb.stat(&p).await })
                    .await
                    .map_err(not_found_or)?;
                Ok(connect::unary(json!({"entry": entry(&path, &st)})))
            }
            "ListDir" => {
                let path = path_of("path")?;
                let depth = msg.get("depth").and_then(Value::as_u64).unwrap_or(1).max(1);
                let mut entries = Vec::new();
                let mut dirs = vec![(path.clone(), 1u64)];
                while let Some((dir, level)) = dirs.pop() {
                    let d = dir.clone();
                    let listed = s
                        .with_sandbox(&id, |sb| async move {
                            let mut out = Vec::new();
                            for e in sb.list_dir(&d).await? {
                                let full = format!("{}/{}", d.trim_end_matches('/'), e.name);
                                let st = sb.stat(&full).await?;
                                out.push((full, st));
                            }
                            Ok(out)
                        })
                        .await
                        .map_err(not_found_or)?;
                    for (full, st) in listed {
                        if st.is_dir && level < depth {
                            dirs.push((full.clone(), level + 1));
                        }
                        entries.push(entry(&full, &st));
                    }
                }
                Ok(connect::unary(json!({ "entries": entries })))
            }
            "MakeDir" => {
                let path = path_of("path")?;
                let p = path.clone();
                let made = s
                    .with_sandbox(&id, |sb| async move {
                        if sb.stat(&p).await.is_ok() {
                            return Ok(None);
                        }
                        sb.mkdir(&p).await?;
                        sb.stat(&p).await.map(Some)
                    })
                    .await
                    .map_err(RpcError::from)?;
                match made {
                    Some(st) => Ok(connect::unary(json!({"entry": entry(&path, &st)}))),
                    None => Err(RpcError::new(
                        "already_exists",
                        format!("{path} already exists"),
                    )),
                }
            }
            "Move" => {
                let (from, to) = (path_of("source")?, path_of("destination")?);
                let (f, t) = (from.clone(), to.clone());
                let st = s
                    .with_sandbox(&id, |sb| async move {
                        sb.rename(&f, &t).await?;
                        sb.stat(&t).await
                    })
                    .await
                    .map_err(not_found_or)?;
                Ok(connect::unary(json!({"entry": entry(&to, &st)})))
            }
            "Remove" => {
                let path = path_of("path")?;
                s.remove_file(&id, &path, true)
                    .await
                    .map_err(not_found_or)?;
                Ok(connect::unary(json!({})))
            }
            "CreateWatcher" => {
                let path = path_of("path")?;
                let recursive = msg
                    .get("recursive")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if e2b.watchers.count(&id) >= super::watch::MAX_PER_SANDBOX {
                    return Err(RpcError::new(
                        "resource_exhausted",
                        format!(
                            "sandbox {id} has {} watchers already; stop some first",
                            super::watch::MAX_PER_SANDBOX
                        ),
                    ));
                }
                let stream = s
                    .with_sandbox(&id, |sb| async move { sb.watch(&path, recursive).await })
                    .await
                    .map_err(RpcError::from)?;
                let watcher = e2b.watchers.add(&id, stream);
                Ok(connect::unary(json!({ "watcherId": watcher })))
            }
            "GetWatcherEvents" => {
                let watcher = msg
                    .get("watcherId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let events = e2b.watchers.take(&id, watcher).ok_or_else(|| {
                    RpcError::not_found(format!("no watcher {watcher:?} in sandbox {id}"))
                })?;
                Ok(connect::unary(json!({ "events": events })))
            }
            "RemoveWatcher" => {
                let watcher = msg
                    .get("watcherId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !e2b.watchers.remove(&id, watcher) {
                    return Err(RpcError::not_found(format!(
                        "no watcher {watcher:?} in sandbox {id}"
                    )));
                }
                Ok(connect::unary(json!({})))
            }
            other => Err(RpcError::unimplemented(&format!(
                "filesystem.Filesystem/{other}"
            ))),
        }
    }
    .await;
    out.unwrap_or_else(IntoResponse::into_response)
}

/// `WatchDir`: a stream answering `start` once the watch is in place,
/// then each change as a `filesystem` event (a keepalive every 30 s of
/// quiet), until the client goes or the directory does.
async fn watch_dir(e2b: &Arc<E2b>, headers: &HeaderMap, body: &[u8]) -> RpcResult {
    let id = sandbox_of(headers)?;
    let msg = connect::request_message(body)?;
    let user = user_of(headers, None);
    let path = msg
        .get("path")
        .and_then(Value::as_str)
        .map(|p| absolute(p, user.as_deref()))
        .ok_or_else(|| RpcError::invalid("path is required"))?;
    let recursive = msg
        .get("recursive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut stream = e2b
        .service
        .with_sandbox(&id, |sb| async move { sb.watch(&path, recursive).await })
        .await
        .map_err(RpcError::from)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let send = |m: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(connect::envelope(&m))).await.is_ok() }
        };
        if !send(json!({"start": {}})).await {
            return;
        }
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                Ok(Ok(Some(e))) => {
                    if let Some(v) = super::watch::event_json(&e) {
                        if !send(json!({ "filesystem": v })).await {
                            return;
                        }
                    }
                }
                Ok(Ok(None)) => break None,
                Ok(Err(e)) => break Some(RpcError::new("unavailable", e.to_string())),
                Err(_) => {
                    if !send(json!({"keepalive": {}})).await {
                        return;
                    }
                }
            }
        };
        let _ = tx.send(Ok(connect::end_of_stream(end.as_ref()))).await;
    });
    Ok(connect::stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

fn not_found_or(e: crate::error::ApiError) -> RpcError {
    RpcError::from(e)
}

/// envd's `EntryInfo` of `path`.
fn entry(path: &str, st: &FileStat) -> Value {
    let kind = match st.file_type {
        FileType::Directory => "FILE_TYPE_DIRECTORY",
        FileType::Symlink => "FILE_TYPE_SYMLINK",
        _ if st.is_dir => "FILE_TYPE_DIRECTORY",
        _ => "FILE_TYPE_FILE",
    };
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    json!({
        "name": name,
        "type": kind,
        "path": path,
        "size": st.size.to_string(),
        "mode": st.mode,
        "permissions": permissions(st),
        "owner": "root",
        "group": "root",
        "modifiedTime": super::control::rfc3339(st.mtime * 1000),
        "isSymlink": st.is_symlink,
    })
}

/// `ls -l`'s permission string of `st`.
fn permissions(st: &FileStat) -> String {
    let kind = if st.is_dir {
        'd'
    } else if st.is_symlink {
        'l'
    } else {
        '-'
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (st.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_paths_follow_envd() {
        let mut h = HeaderMap::new();
        assert_eq!(user_of(&h, None), None);
        assert_eq!(user_of(&h, Some("user")), Some("user".into()));
        h.insert(header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(user_of(&h, Some("user")), Some("root".into()));
        assert_eq!(absolute("a/b", None), "/root/a/b");
        assert_eq!(absolute("/etc", Some("user")), "/etc");
        assert_eq!(absolute("", Some("user")), "/home/user");
        let st = FileStat {
            is_dir: true,
            is_symlink: false,
            file_type: FileType::Directory,
            size: 4096,
            mode: 0o755,
            mtime: 0,
        };
        assert_eq!(permissions(&st), "drwxr-xr-x");
        let e = entry("/root/x/", &st);
        assert_eq!(
            (e["name"].as_str(), e["type"].as_str()),
            (Some("x"), Some("FILE_TYPE_DIRECTORY"))
        );
    }
}
