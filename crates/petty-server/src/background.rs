//! Background processes and terminals through Petty's own API: a command
//! started here runs on after the request (and its client) is gone, on
//! pipes or on a pseudo-terminal, until it ends or is signalled; its
//! output is kept (see [`crate::processes`]) to be read by offset (REST's
//! `/output`, MCP's `read_process_output`) or followed as NDJSON
//! (`/stream`), and it takes stdin, resizes and signals later. The same
//! registry holds E2B's envd processes, so either API sees the other's.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use petty_core::{ExecRequest, PtySize};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::processes::{Ended, Event, Proc};
use crate::rest::{AppState, ErrorBody, ExecStreamLine, JsonBody, Utf8Carry};
use crate::service::Service;

/// The most output one read returns.
const MAX_READ: usize = 1 << 20;
/// The longest a read waits for output.
const MAX_WAIT_SECS: f64 = 60.0;

/// A terminal's size.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    /// Rows (lines), 1 to 1000.
    pub rows: u16,
    /// Columns, 1 to 1000.
    pub cols: u16,
}

impl TerminalSize {
    fn check(self) -> ApiResult<PtySize> {
        let ok = |n: u16| (1..=1000).contains(&n);
        if !ok(self.rows) || !ok(self.cols) {
            return Err(ApiError::bad_request(format!(
                "terminal size {}x{} is out of range; rows and cols go from 1 to 1000",
                self.rows, self.cols
            )));
        }
        Ok(PtySize {
            rows: self.rows,
            cols: self.cols,
        })
    }
}

/// What to start in the background (`POST /v1/sandboxes/{id}/processes`,
/// MCP `start_process`).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// A shell command line, run with `/bin/sh -c`.
    pub command: Option<String>,
    /// An argv, run directly (instead of `command`).
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/root`).
    pub cwd: Option<String>,
    /// Keep its stdin open for input sent later (a terminal always takes input).
    #[serde(default)]
    pub stdin: bool,
    /// Run it on a pseudo-terminal of this size (an interactive shell, a
    /// REPL): what it prints arrives as one stream, input is what is typed.
    pub pty: Option<TerminalSize>,
    /// A name to find it by.
    pub tag: Option<String>,
    /// Kill it after this many seconds (default: it runs until it ends or is killed).
    pub timeout_secs: Option<f64>,
}

/// A background process.
#[derive(Debug, Serialize, Deserialize, ToSchema, schemars::JsonSchema)]
pub struct ProcessView {
    /// Its id in this daemon (not the guest's pid).
    pub pid: u32,
    /// The name it was started with.
    pub tag: Option<String>,
    /// What runs.
    pub argv: Vec<String>,
    /// It runs on a terminal.
    pub pty: bool,
    /// It takes input.
    pub stdin: bool,
    /// False once it ended.
    pub running: bool,
    /// Its exit code once it ended (128+N when signal N killed it, 124 on timeout).
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// What went wrong, when its sandbox went or its timeout passed.
    pub error: Option<String>,
    /// When it started, seconds since the Unix epoch.
    pub started_at: f64,
}

impl ProcessView {
    fn of(p: &Proc) -> Self {
        let end = p.ended();
        Self {
            pid: p.pid,
            tag: p.started.tag.clone(),
            argv: p.started.argv.clone(),
            pty: p.started.pty,
            stdin: p.started.stdin,
            running: end.is_none(),
            exit_code: end.as_ref().map(|e| e.code),
            signal: end.as_ref().and_then(|e| e.signal),
            error: end.and_then(|e| e.error),
            started_at: p
                .started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// Output of a background process from an offset on.
#[derive(Debug, Serialize, Deserialize, ToSchema, schemars::JsonSchema)]
pub struct OutputView {
    /// What it printed, stdout and stderr together in order (a terminal's
    /// output as it is, escape sequences included): UTF-8 text with
    /// invalid bytes replaced, or base64 when asked for.
    pub output: String,
    /// `utf8` or `base64`.
    pub encoding: String,
    /// Where the next read starts.
    pub next_offset: u64,
    /// Bytes lost between the offset asked for and the oldest kept (only
    /// the last 8 MiB are kept).
    pub skipped: u64,
    /// False once it ended and everything it printed has been read.
    pub running: bool,
    /// Its exit code once it ended.
    pub exit_code: Option<i32>,
}

/// Query of `GET …/processes/{pid}/output`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Read from this byte offset (default 0: all that is kept).
    pub offset: Option<u64>,
    /// Wait up to this many seconds (at most 60) for output when there is none yet.
    pub wait_secs: Option<f64>,
    /// `utf8` (default) or `base64`.
    pub encoding: Option<String>,
}

/// Input for a background process.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Text to send (what is typed, on a terminal; "\r" or "\n" ends a line).
    pub data: Option<String>,
    /// Bytes to send, base64 (instead of `data`).
    pub data_base64: Option<String>,
    /// Close its stdin after (end of input).
    #[serde(default)]
    pub close: bool,
}

/// A signal to send.
#[derive(Debug, Deserialize, Serialize, ToSchema, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalSpec {
    /// A name (`TERM`, `KILL`, `INT`, `HUP`, `QUIT`, `USR1`, `USR2`, `SIGTERM`…) or a number.
    pub signal: serde_json::Value,
}

/// The signal `v` names.
pub(crate) fn signal_number(v: &serde_json::Value) -> ApiResult<i32> {
    if let Some(n) = v.as_i64() {
        if (1..=64).contains(&n) {
            return Ok(n as i32);
        }
    }
    let name = v.as_str().unwrap_or_default().to_ascii_uppercase();
    let n = match name.strip_prefix("SIG").unwrap_or(&name) {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        _ => {
            return Err(ApiError::bad_request(format!(
                "signal {v} is not one Petty sends; use a name (TERM, KILL, INT, HUP, QUIT, USR1, USR2, CONT, STOP) or a number from 1 to 64"
            )))
        }
    };
    Ok(n)
}

impl Service {
    /// Starts `spec` in the background.
    #[tracing::instrument(skip(self, spec))]
    pub async fn start_background(
        &self,
        sandbox: &str,
        spec: ProcessSpec,
    ) -> ApiResult<ProcessView> {
        let pty = spec.pty.map(TerminalSize::check).transpose()?;
        let mut req = match (spec.command, spec.argv) {
            (Some(c), None) if !c.trim().is_empty() => ExecRequest::shell(c),
            (None, Some(a)) if !a.is_empty() && !a[0].is_empty() => ExecRequest::argv(a),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give either command (a shell line) or argv (a list), not both",
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "nothing to run: give command (a shell line, e.g. \"python3 -m http.server\") or argv",
                ))
            }
        };
        req.env = spec.env.into_iter().collect();
        req.cwd = spec.cwd;
        req.stdin = spec.stdin || pty.is_some();
        req.pty = pty;
        if let Some(secs) = spec.timeout_secs {
            if !(secs > 0.0 && secs <= 7.0 * 86_400.0) {
                return Err(ApiError::bad_request(format!(
                    "timeout_secs {secs} is out of range; use more than 0 and at most 604800, or none to run until it ends"
                )));
            }
            req.timeout_ms = Some((secs * 1000.0).ceil() as u64);
        }
        let p = self
            .spawn_process(sandbox, req, spec.tag, serde_json::Value::Null)
            .await?;
        tracing::info!(pid = p.pid, "background process started");
        Ok(ProcessView::of(&p))
    }

    /// The sandbox's background processes, running and recently ended.
    pub async fn list_background(&self, sandbox: &str) -> ApiResult<Vec<ProcessView>> {
        let id = self.get(sandbox).await?.id;
        Ok(self
            .processes()
            .all(&id)
            .iter()
            .map(|p| ProcessView::of(p))
            .collect())
    }

    /// One background process.
    pub async fn background(&self, sandbox: &str, pid: &str) -> ApiResult<ProcessView> {
        Ok(ProcessView::of(&*self.process(sandbox, pid).await?))
    }

    /// Its output from `offset` on, waiting up to `wait_secs` for some.
    pub async fn read_background(
        &self,
        sandbox: &str,
        pid: &str,
        offset: u64,
        wait_secs: f64,
        base64: bool,
    ) -> ApiResult<OutputView> {
        if !(0.0..=MAX_WAIT_SECS).contains(&wait_secs) {
            return Err(ApiError::bad_request(format!(
                "wait_secs {wait_secs} is out of range; use 0 to {MAX_WAIT_SECS}"
            )));
        }
        let p = self.process(sandbox, pid).await?;
        let chunk = p
            .read_wait(offset, MAX_READ, Duration::from_secs_f64(wait_secs))
            .await;
        Ok(OutputView {
            output: if base64 {
                base64::engine::general_purpose::STANDARD.encode(&chunk.data)
            } else {
                String::from_utf8_lossy(&chunk.data).into_owned()
            },
            encoding: if base64 { "base64" } else { "utf8" }.into(),
            next_offset: chunk.next,
            skipped: chunk.skipped,
            running: chunk.ended.is_none(),
            exit_code: chunk.ended.map(|e| e.code),
        })
    }

    /// Sends it input (and closes its stdin when asked).
    pub async fn write_background(
        &self,
        sandbox: &str,
        pid: &str,
        input: InputSpec,
    ) -> ApiResult<ProcessView> {
        let data = match (input.data, input.data_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give data or data_base64, not both"))
            }
            (Some(s), None) => s.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ApiError::bad_request(format!("data_base64: {e}")))?,
            (None, None) if input.close => Vec::new(),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "nothing to send: give data, data_base64 or close: true",
                ))
            }
        };
        let p = self.process(sandbox, pid).await?;
        if !data.is_empty() {
            p.write_stdin(&data).await.map_err(conflict)?;
        }
        if input.close {
            p.close_stdin().await.map_err(conflict)?;
        }
        Ok(ProcessView::of(&p))
    }

    /// Resizes its terminal.
    pub async fn resize_background(
        &self,
        sandbox: &str,
        pid: &str,
        size: TerminalSize,
    ) -> ApiResult<ProcessView> {
        let size = size.check()?;
        let p = self.process(sandbox, pid).await?;
        p.resize(size).await.map_err(conflict)?;
        Ok(ProcessView::of(&p))
    }

    /// Sends it `signal` (its whole process group).
    pub async fn signal_background(
        &self,
        sandbox: &str,
        pid: &str,
        signal: i32,
    ) -> ApiResult<ProcessView> {
        let p = self.process(sandbox, pid).await?;
        if p.ended().is_none() {
            p.signal(signal)
                .await
                .map_err(|e| conflict(e.to_string()))?;
        }
        tracing::info!(pid, signal, "background process signalled");
        Ok(ProcessView::of(&p))
    }
}

fn conflict(message: String) -> ApiError {
    ApiError::new(crate::error::ErrorKind::Conflict, message)
}

type ApiJson<T> = Result<Json<T>, ApiError>;

/// Start a command in the background (on a terminal with `pty`); it runs
/// until it ends or is killed, whoever started it gone or not.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = ProcessSpec,
    responses((status = 201, body = ProcessView), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn start_process(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<ProcessSpec>,
) -> Result<(StatusCode, Json<ProcessView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.service.start_background(&id, spec).await?),
    ))
}

/// The sandbox's background processes: running ones and the last few ended.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = [ProcessView]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_processes(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiJson<Vec<ProcessView>> {
    Ok(Json(s.service.list_background(&id).await?))
}

/// One background process.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with")),
    responses((status = 200, body = ProcessView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_process(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> ApiJson<ProcessView> {
    Ok(Json(s.service.background(&id, &pid).await?))
}

/// Kill a background process (SIGKILL to its process group).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with")),
    responses((status = 200, body = ProcessView), (status = 404, body = ErrorBody)))]
pub(crate) async fn kill_process(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> ApiJson<ProcessView> {
    Ok(Json(
        s.service
            .signal_background(&id, &pid, libc::SIGKILL)
            .await?,
    ))
}

/// Its output from an offset on, waiting for some when asked.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}/output", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with"), OutputQuery),
    responses((status = 200, body = OutputView), (status = 404, body = ErrorBody)))]
pub(crate) async fn process_output(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Query(q): Query<OutputQuery>,
) -> ApiJson<OutputView> {
    let base64 = match q.encoding.as_deref().unwrap_or("utf8") {
        "utf8" | "utf-8" | "text" => false,
        "base64" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "encoding {other:?} is not supported; use utf8 or base64"
            )))
        }
    };
    let out = s
        .service
        .read_background(
            &id,
            &pid,
            q.offset.unwrap_or(0),
            q.wait_secs.unwrap_or(0.0),
            base64,
        )
        .await?;
    Ok(Json(out))
}

/// Follow a background process: what it printed so far, then what it
/// prints, as newline-delimited JSON ([`ExecStreamLine`], a terminal's
/// output as `stdout`), ending with `exit` (or `error`). Leaving does not
/// stop it.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}/stream", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with")),
    responses((status = 200, content_type = "application/x-ndjson", body = ExecStreamLine), (status = 404, body = ErrorBody)))]
pub(crate) async fn follow_process(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let p = s.service.process(&id, &pid).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    tokio::spawn(async move {
        let (past, live) = p.attach();
        let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
        let mut line = |e: &Event| -> Option<ExecStreamLine> {
            Some(match e {
                Event::Stdout(b) | Event::Pty(b) => ExecStreamLine::Stdout { data: out.push(b) },
                Event::Stderr(b) => ExecStreamLine::Stderr { data: err.push(b) },
                Event::End(end) => end_line(end),
            })
        };
        let send = |l: ExecStreamLine| {
            let tx = tx.clone();
            async move {
                let mut buf = serde_json::to_vec(&l).expect("plain data");
                buf.push(b'\n');
                tx.send(Ok(Bytes::from(buf))).await.is_ok()
            }
        };
        for e in &past {
            if let Some(l) = line(e) {
                if !send(l).await {
                    return;
                }
            }
        }
        let Some(mut live) = live else { return };
        if past.iter().any(|e| matches!(e, Event::End(_))) {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    let end = matches!(e, Event::End(_));
                    if let Some(l) = line(&e) {
                        if !send(l).await || end {
                            return;
                        }
                    }
                }
                // Output this stream was too slow to take is skipped.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn end_line(end: &Ended) -> ExecStreamLine {
    match &end.error {
        Some(message) if !end.timed_out => ExecStreamLine::Error {
            kind: "agent_error".into(),
            message: message.clone(),
        },
        _ => ExecStreamLine::Exit {
            exit_code: end.code,
            timed_out: end.timed_out,
        },
    }
}

/// Send input to a background process (what is typed, on a terminal).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/input", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with")),
    request_body = InputSpec,
    responses((status = 200, body = ProcessView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn process_input(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(input): JsonBody<InputSpec>,
) -> ApiJson<ProcessView> {
    Ok(Json(s.service.write_background(&id, &pid, input).await?))
}

/// Resize a background process's terminal (it gets SIGWINCH).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/resize", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with")),
    request_body = TerminalSize,
    responses((status = 200, body = ProcessView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn resize_process(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(size): JsonBody<TerminalSize>,
) -> ApiJson<ProcessView> {
    Ok(Json(s.service.resize_background(&id, &pid, size).await?))
}

/// Send a signal to a background process's process group.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id or name"), ("pid" = String, Path, description = "Process id, or the tag it was started with")),
    request_body = SignalSpec,
    responses((status = 200, body = ProcessView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn signal_process(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(spec): JsonBody<SignalSpec>,
) -> ApiJson<ProcessView> {
    let signal = signal_number(&spec.signal)?;
    Ok(Json(s.service.signal_background(&id, &pid, signal).await?))
}
