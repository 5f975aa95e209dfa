//! The MCP server: Petty's operations as tools, over stdio (`petty mcp`)
//! and streamable HTTP (`/mcp` on the daemon), with the official Rust SDK.
//!
//! A failed operation is a tool result with `isError: true` and a message
//! that names the sandbox and says what to try, so the model can read it
//! and recover; the connection stays up.

use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rmcp::model::Extensions;
use rmcp::transport::common::server_side_http::SessionId;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::SessionManager as _;

use crate::error::{ApiError, ApiResult};
use crate::service::{CreateSpec, ExecSpec, LifetimeSpec, Requester, SandboxView, Service};
use crate::templates::{BuildLine, BuildTemplateSpec};

/// Largest file `download_file` returns (a tool result goes to a model's
/// context whole; bigger files are for the REST download).
pub const MAX_TOOL_FILE: u64 = 8 * 1024 * 1024;

/// The tools, over one [`Service`], for one MCP session.
#[derive(Clone)]
pub struct PettyMcp {
    service: Service,
    session: Arc<Session>,
    tool_router: ToolRouter<Self>,
}

/// How the MCP client reaches this server.
#[derive(Clone)]
pub enum Transport {
    /// `petty mcp`: one client, one session, for the life of the process.
    Stdio,
    /// `/mcp` on the daemon: one handler per session (or per request, for
    /// clients without sessions). A session with no call in flight and
    /// none for `idle` is ended through `sessions`.
    Http {
        /// The daemon's MCP sessions.
        sessions: Arc<LocalSessionManager>,
        /// `mcp.session_idle_secs`.
        idle: Duration,
    },
}

/// What a session is doing, for its idle clock.
struct Activity {
    /// Tool calls running now: a session is never idle during one.
    in_flight: usize,
    /// When the last call ended (or the session began).
    last: Instant,
    /// Its `Mcp-Session-Id`, once a call carried one.
    id: Option<String>,
    /// The idle watch runs.
    watched: bool,
}

/// The sandboxes an MCP session made that go when it ends: stdin closed or
/// the client killed (stdio), the session deleted or idle past
/// `mcp.session_idle_secs` (HTTP). A sandbox created with `keep: true` or a
/// TTL is not among them.
struct Session {
    service: Service,
    transport: Transport,
    owned: std::sync::Mutex<Vec<String>>,
    activity: std::sync::Mutex<Activity>,
    /// Counts this session as live for [`Service::wait_for_sessions`].
    _live: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// A tool call in flight; its end restarts the session's idle clock.
struct InFlight(Arc<Session>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = lock(&self.0.activity);
        a.in_flight -= 1;
        a.last = Instant::now();
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.owned))
    }

    /// A tool call starts, in the HTTP session `id` if it carries one: the
    /// session is busy until the result is dropped, and is watched for
    /// idleness from its first call on.
    fn begin(self: &Arc<Self>, id: Option<&str>) -> InFlight {
        let watch = {
            let mut a = lock(&self.activity);
            a.in_flight += 1;
            if a.id.is_none() {
                a.id = id.map(str::to_string);
            }
            let start = a.id.is_some() && !a.watched;
            a.watched |= start;
            start
        };
        if let (true, Transport::Http { sessions, idle }) = (watch, &self.transport) {
            tokio::spawn(watch_idle(Arc::downgrade(self), sessions.clone(), *idle));
        }
        InFlight(self.clone())
    }

    /// Destroys the session's sandboxes now.
    async fn end(&self) {
        destroy_owned(&self.service, self.take()).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let owned = self.take();
        if owned.is_empty() {
            return;
        }
        let service = self.service.clone();
        // Tracked: the daemon's shutdown waits for it.
        self.service
            .track(async move { destroy_owned(&service, owned).await });
    }
}

/// Ends an HTTP session once it has had no call in flight for `idle`:
/// rmcp's own keep-alive counts a long call as idle time, so it is set far
/// beyond this and this decides.
async fn watch_idle(session: Weak<Session>, sessions: Arc<LocalSessionManager>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let Some(s) = session.upgrade() else { return };
        let id = {
            let a = lock(&s.activity);
            if a.in_flight > 0 || a.last.elapsed() < idle {
                continue;
            }
            a.id.clone()
        };
        tracing::info!(session = ?id, idle_secs = idle.as_secs(), "MCP session idle; ending it");
        s.end().await;
        drop(s);
        if let Some(id) = id {
            let _ = sessions.close_session(&SessionId::from(id)).await;
        }
        return;
    }
}

/// The `Mcp-Session-Id` of an HTTP request, if it carries one.
fn session_id(ext: &Extensions) -> Option<&str> {
    ext.get::<axum::http::request::Parts>()
        .and_then(|p| p.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
}

async fn destroy_owned(service: &Service, ids: Vec<String>) {
    for id in ids {
        match service.destroy(&id).await {
            Ok(()) => tracing::info!(sandbox = %id, "MCP session ended; its sandbox destroyed"),
            // The client destroyed it itself.
            Err(e) if e.status == 404 => {}
            Err(e) => {
                tracing::warn!(sandbox = %id, "destroying an ended MCP session's sandbox: {e}")
            }
        }
    }
}

/// Arguments naming one sandbox.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct SandboxParams {
    /// The sandbox's id or name, as create_sandbox or list_sandboxes returned it.
    pub sandbox: String,
}

/// `execute_command` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ExecuteCommandParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Shell command line, run with /bin/sh -c as root (e.g. "ls -la /root && python3 --version").
    pub command: String,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory (default /root).
    pub cwd: Option<String>,
    /// Text to feed to the command's standard input.
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (default from the server's config, usually 300).
    pub timeout_secs: Option<f64>,
}

/// `start_process` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct StartProcessParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Shell command line, run with /bin/sh -c (e.g. "python3 -m http.server 8000", or "bash" with a terminal).
    pub command: String,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory (default /root).
    pub cwd: Option<String>,
    /// Keep its standard input open for send_process_input (a terminal always takes input).
    #[serde(default)]
    pub stdin: bool,
    /// Run it on a pseudo-terminal of this size, for interactive programs (shells, REPLs, editors).
    pub pty: Option<crate::background::TerminalSize>,
    /// Kill it after this many seconds (default: it runs until it ends or kill_process).
    pub timeout_secs: Option<f64>,
}

/// `read_process_output` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ReadProcessParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// The process's pid, as start_process or list_processes gave it.
    pub pid: u32,
    /// Read from this byte offset: 0 (the default) for everything kept, the last answer's next_offset for what is new.
    pub offset: Option<u64>,
    /// Wait up to this many seconds (at most 60, default 1) for output when there is none new yet.
    pub wait_secs: Option<f64>,
}

/// `send_process_input` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ProcessInputParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// The process's pid.
    pub pid: u32,
    /// Text to send to its standard input (on a terminal, what is typed: end a line with "\n").
    #[serde(default)]
    pub input: String,
    /// Close its standard input after (end of input).
    #[serde(default)]
    pub close_stdin: bool,
}

/// `kill_process` and `list_processes` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ProcessParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// The process's pid (kill_process only).
    pub pid: Option<u32>,
    /// The signal for kill_process: a name (TERM, KILL, INT, HUP…) or number; default KILL.
    pub signal: Option<serde_json::Value>,
}

/// `execute_code` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ExecuteCodeParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Language of the code: "python", "bash" or "sh".
    pub language: String,
    /// The program text.
    pub code: String,
    /// Kill the program after this many seconds (default from the server's config).
    pub timeout_secs: Option<f64>,
}

/// `upload_file` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct UploadFileParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Absolute path to write in the sandbox (parent directories are created).
    pub path: String,
    /// The file's content: text, or base64 when encoding is "base64".
    pub content: String,
    /// "utf8" (default) or "base64" for binary content.
    pub encoding: Option<String>,
}

/// `download_file` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct DownloadFileParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Absolute path of the file in the sandbox.
    pub path: String,
    /// "utf8" (default; invalid bytes are replaced) or "base64" for the exact bytes.
    pub encoding: Option<String>,
}

/// `list_files` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ListFilesParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Absolute directory path (default /root).
    pub path: Option<String>,
}

/// `snapshot_sandbox` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct SnapshotParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// Name for the snapshot (letters, digits, '-', '_', '.'); restore_snapshot and fork_sandbox take it.
    pub snapshot: String,
}

/// `restore_snapshot` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct RestoreParams {
    /// The snapshot's name.
    pub snapshot: String,
    /// Optional name for the new sandbox.
    pub name: Option<String>,
}

/// `fork_sandbox` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct ForkParams {
    /// A running sandbox's id or name (snapshotted first), or a snapshot's name.
    pub source: String,
    /// How many children to start (1 to 64). Each starts exactly where the source was and then diverges.
    pub count: usize,
}

/// `branch_sandbox` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct BranchParams {
    /// The running sandbox's id or name.
    pub sandbox: String,
    /// Name for the snapshot taken (letters, digits, '-', '_', '.'); restore_snapshot and branch again from it later.
    pub snapshot: String,
    /// How many children to start from the snapshot (1 to 64).
    pub count: usize,
}

/// `set_sandbox_lifetime` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct LifetimeParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// The sandbox ends this many seconds from now (0: no limit).
    pub ttl_secs: Option<u64>,
    /// How long the sandbox may sit without a command or file operation (0: no limit).
    pub idle_timeout_secs: Option<u64>,
}

/// `publish_port` arguments.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct PublishParams {
    /// The sandbox's id or name.
    pub sandbox: String,
    /// The guest's port.
    pub guest_port: u16,
    /// The host's port (default: one the host picks).
    pub host_port: Option<u16>,
}

/// Empty arguments.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct NoParams {}

/// Arguments naming one template.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct TemplateParams {
    /// The template's name, as list_templates or build_template returned it.
    pub template: String,
}

/// Output of a failed build kept for the tool's message (its end).
const BUILD_OUTPUT_TAIL: usize = 4096;

/// What a build said, for the tool's result: its step lines and notes,
/// and the end of its output.
#[derive(Default)]
struct BuildLog {
    lines: Vec<String>,
    output: String,
}

impl BuildLog {
    fn add(&mut self, line: &BuildLine) {
        if let Some(l) = line.summary() {
            self.lines.push(l);
        }
        if let BuildLine::Output { data, .. } = line {
            self.output.push_str(data);
            if self.output.len() > 2 * BUILD_OUTPUT_TAIL {
                let cut = char_floor(&self.output, self.output.len() - BUILD_OUTPUT_TAIL);
                self.output.drain(..cut);
            }
        }
    }

    /// The last [`BUILD_OUTPUT_TAIL`] bytes of output, or about.
    fn tail(&self) -> &str {
        let cut = char_floor(
            &self.output,
            self.output.len().saturating_sub(BUILD_OUTPUT_TAIL),
        );
        &self.output[cut..]
    }
}

/// The first character boundary at or after `i`.
fn char_floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn ok_json<T: Serialize>(v: &T) -> Result<CallToolResult, ErrorData> {
    let value =
        serde_json::to_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    // MCP structured content must be an object.
    let value = match value {
        serde_json::Value::Object(_) => value,
        other => serde_json::json!({ "items": other }),
    };
    Ok(CallToolResult::structured(value))
}

fn tool_error(what: &str, e: ApiError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{what} failed ({}): {}",
        e.kind, e.message
    ))])
}

fn respond<T: Serialize>(what: &str, r: ApiResult<T>) -> Result<CallToolResult, ErrorData> {
    match r {
        Ok(v) => ok_json(&v),
        Err(e) => Ok(tool_error(what, e)),
    }
}

/// How file content travels in a tool's JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// As text (invalid UTF-8 replaced when reading).
    Utf8,
    /// As base64: the exact bytes.
    Base64,
}

impl Encoding {
    fn parse(name: Option<&str>) -> ApiResult<Self> {
        match name.unwrap_or("utf8") {
            "utf8" | "utf-8" | "text" => Ok(Self::Utf8),
            "base64" => Ok(Self::Base64),
            other => Err(ApiError::bad_request(format!(
                "encoding {other:?} is not supported; use \"utf8\" or \"base64\""
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Utf8 => "utf8",
            Self::Base64 => "base64",
        }
    }

    fn decode(self, content: String) -> ApiResult<Vec<u8>> {
        match self {
            Self::Utf8 => Ok(content.into_bytes()),
            Self::Base64 => base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| ApiError::bad_request(format!("content is not valid base64: {e}"))),
        }
    }

    fn encode(self, data: &[u8]) -> String {
        match self {
            Self::Utf8 => String::from_utf8_lossy(data).into_owned(),
            Self::Base64 => base64::engine::general_purpose::STANDARD.encode(data),
        }
    }
}

#[tool_router]
impl PettyMcp {
    /// Tools over `service` for one session reached over `transport`.
    pub fn new(service: Service, transport: Transport) -> Self {
        let session = Arc::new(Session {
            _live: service.session_token(),
            service: service.clone(),
            transport,
            owned: std::sync::Mutex::new(Vec::new()),
            activity: std::sync::Mutex::new(Activity {
                in_flight: 0,
                last: Instant::now(),
                id: None,
                watched: false,
            }),
        });
        Self {
            service,
            session,
            tool_router: Self::tool_router(),
        }
    }

    /// Ends the session: destroys the sandboxes it made (see [`Session`]).
    /// `petty mcp` calls it when its client goes; over HTTP the session's
    /// end does it.
    pub async fn end_session(&self) {
        self.session.end().await;
    }

    /// Who a call comes from. Over HTTP only a request carrying an
    /// `Mcp-Session-Id` belongs to a session (a client without sessions
    /// gets sandboxes that live by their TTL and idle timeout).
    fn requester(&self, ext: &Extensions) -> Requester {
        match self.session.transport {
            Transport::Stdio => Requester {
                owner: "mcp-stdio".into(),
                session: true,
            },
            Transport::Http { .. } => match session_id(ext) {
                Some(id) => Requester {
                    owner: format!("mcp-http:{}", id.chars().take(12).collect::<String>()),
                    session: true,
                },
                None => Requester {
                    owner: "mcp-http".into(),
                    session: false,
                },
            },
        }
    }

    /// Remembers the session-bound ones among `made`.
    fn own<'a>(&self, made: impl IntoIterator<Item = &'a SandboxView>) {
        let mut owned = self.session.owned.lock().unwrap_or_else(|e| e.into_inner());
        owned.extend(
            made.into_iter()
                .filter(|v| v.session_bound)
                .map(|v| v.id.clone()),
        );
    }

    #[tool(
        description = "Create a new sandbox: an isolated Linux microVM (Debian, python3) with its own kernel, disk, memory and CPUs, or one from a template (`template`, see list_templates and build_template). Returns its id and name; pass either as `sandbox` to the other tools. Destroy it with destroy_sandbox when done."
    )]
    async fn create_sandbox(
        &self,
        Parameters(spec): Parameters<CreateSpec>,
        ext: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let made = self.service.create(spec, &self.requester(&ext)).await;
        if let Ok(view) = &made {
            self.own([view]);
        }
        respond("create_sandbox", made)
    }

    #[tool(
        description = "Publish a port of a running sandbox created with a network: connections to the returned host_port on the server's host (127.0.0.1 unless configured) reach guest_port in the sandbox. Returns the sandbox, whose network.published lists its ports."
    )]
    async fn publish_port(
        &self,
        Parameters(p): Parameters<PublishParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("publish_port of sandbox {}", p.sandbox),
            self.service
                .publish(
                    &p.sandbox,
                    crate::service::PublishSpec {
                        guest_port: p.guest_port,
                        host_port: p.host_port,
                    },
                )
                .await,
        )
    }

    #[tool(
        description = "What a sandbox's network did: connections made, open and refused, DNS names answered and refused, bytes each way, and the latest refusals with their destination and reason."
    )]
    async fn network_status(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("network_status of sandbox {}", p.sandbox),
            self.service.network_status(&p.sandbox).await,
        )
    }

    #[tool(
        description = "What a sandbox costs and does now: how it started (cold, template, pool, restore, fork) and its startup ms, host memory of its VM (RSS, PSS) and CPU use, the guest's own used and available memory, disk bytes, commands run and their total time, and network bytes. Reading it does not count as a use."
    )]
    async fn sandbox_metrics(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("sandbox_metrics of sandbox {}", p.sandbox),
            self.service.sandbox_metrics(&p.sandbox).await,
        )
    }

    #[tool(
        description = "Extend (or shorten) a sandbox's life: ttl_secs makes it end that many seconds from now (0: no limit); idle_timeout_secs sets how long it may sit unused (0: no limit). Sandboxes end by default an hour after creation or after 5 minutes unused (the server's limits)."
    )]
    async fn set_sandbox_lifetime(
        &self,
        Parameters(p): Parameters<LifetimeParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("set_sandbox_lifetime of sandbox {}", p.sandbox),
            self.service
                .set_lifetime(
                    &p.sandbox,
                    LifetimeSpec {
                        ttl_secs: p.ttl_secs,
                        idle_timeout_secs: p.idle_timeout_secs,
                    },
                )
                .await,
        )
    }

    #[tool(
        description = "Run a shell command in a sandbox and wait for it. Returns exit_code, stdout, stderr and whether it timed out. A non-zero exit code is a normal result, not a tool error."
    )]
    async fn execute_command(
        &self,
        Parameters(p): Parameters<ExecuteCommandParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let spec = ExecSpec {
            command: Some(p.command),
            argv: None,
            env: p.env,
            cwd: p.cwd,
            stdin: p.stdin.map(String::into_bytes),
            timeout_secs: p.timeout_secs,
        };
        respond(
            &format!("execute_command in sandbox {}", p.sandbox),
            self.service.exec(&p.sandbox, spec).await,
        )
    }

    #[tool(
        description = "Start a command in a sandbox in the background (a server, a watcher, a long build, or an interactive program on a terminal with `pty`) and return at once with its pid. It runs until it ends or kill_process, keeping its last 8 MiB of output for read_process_output; send_process_input types into it."
    )]
    async fn start_process(
        &self,
        Parameters(p): Parameters<StartProcessParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let spec = crate::background::ProcessSpec {
            command: Some(p.command),
            env: p.env,
            cwd: p.cwd,
            stdin: p.stdin,
            pty: p.pty,
            timeout_secs: p.timeout_secs,
            ..Default::default()
        };
        respond(
            &format!("start_process in sandbox {}", p.sandbox),
            self.service.start_background(&p.sandbox, spec).await,
        )
    }

    #[tool(
        description = "List a sandbox's background processes (running ones and the last few that ended): pid, command, whether it runs, exit code."
    )]
    async fn list_processes(
        &self,
        Parameters(p): Parameters<ProcessParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("list_processes of sandbox {}", p.sandbox),
            self.service
                .list_background(&p.sandbox)
                .await
                .map(|processes| serde_json::json!({ "processes": processes })),
        )
    }

    #[tool(
        description = "Read a background process's output (stdout and stderr together) from an offset on, waiting up to wait_secs for new output. Returns output, next_offset (pass it as offset next time for only what is new), whether it still runs, and its exit code once it ended."
    )]
    async fn read_process_output(
        &self,
        Parameters(p): Parameters<ReadProcessParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!(
                "read_process_output of process {} in sandbox {}",
                p.pid, p.sandbox
            ),
            self.service
                .read_background(
                    &p.sandbox,
                    &p.pid.to_string(),
                    p.offset.unwrap_or(0),
                    p.wait_secs.unwrap_or(1.0),
                    false,
                )
                .await,
        )
    }

    #[tool(
        description = "Send text to a background process's standard input (started with stdin or pty), and optionally close it."
    )]
    async fn send_process_input(
        &self,
        Parameters(p): Parameters<ProcessInputParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let input = crate::background::InputSpec {
            data: (!p.input.is_empty()).then_some(p.input),
            data_base64: None,
            close: p.close_stdin,
        };
        respond(
            &format!(
                "send_process_input to process {} in sandbox {}",
                p.pid, p.sandbox
            ),
            self.service
                .write_background(&p.sandbox, &p.pid.to_string(), input)
                .await,
        )
    }

    #[tool(
        description = "Stop a background process: a signal (default KILL) to its whole process group. Returns the process; read_process_output still gives its last output."
    )]
    async fn kill_process(
        &self,
        Parameters(p): Parameters<ProcessParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let what = format!("kill_process in sandbox {}", p.sandbox);
        let r = async {
            let pid = p.pid.ok_or_else(|| {
                ApiError::bad_request("give pid: the process to stop (list_processes lists them)")
            })?;
            let signal = match &p.signal {
                Some(s) => crate::background::signal_number(s)?,
                None => libc::SIGKILL,
            };
            self.service
                .signal_background(&p.sandbox, &pid.to_string(), signal)
                .await
        };
        respond(&what, r.await)
    }

    #[tool(
        description = "Run a program in a sandbox with the language's interpreter (python, bash or sh) and wait for it. Returns exit_code, stdout and stderr."
    )]
    async fn execute_code(
        &self,
        Parameters(p): Parameters<ExecuteCodeParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("execute_code in sandbox {}", p.sandbox),
            self.service
                .run_code(&p.sandbox, &p.language, &p.code, p.timeout_secs)
                .await,
        )
    }

    #[tool(
        description = "Write a file into a sandbox (creating parent directories). Content is text, or base64 with encoding \"base64\" for binary files."
    )]
    async fn upload_file(
        &self,
        Parameters(p): Parameters<UploadFileParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let what = format!("upload_file to {} in sandbox {}", p.path, p.sandbox);
        let data = match Encoding::parse(p.encoding.as_deref()).and_then(|e| e.decode(p.content)) {
            Ok(d) => d,
            Err(e) => return Ok(tool_error(&what, e)),
        };
        let bytes = data.len();
        let r = self
            .service
            .write_file(&p.sandbox, &p.path, &data)
            .await
            .map(|()| serde_json::json!({ "path": p.path, "bytes": bytes }));
        respond(&what, r)
    }

    #[tool(
        description = "Read a regular file (at most 8 MiB) from a sandbox; devices, FIFOs and sockets are refused. Returns its content as text (encoding \"utf8\", the default) or base64 (encoding \"base64\") and its size in bytes."
    )]
    async fn download_file(
        &self,
        Parameters(p): Parameters<DownloadFileParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let what = format!("download_file {} from sandbox {}", p.path, p.sandbox);
        let encoding = match Encoding::parse(p.encoding.as_deref()) {
            Ok(e) => e,
            Err(e) => return Ok(tool_error(&what, e)),
        };
        let r = self
            .service
            .read_file(&p.sandbox, &p.path, MAX_TOOL_FILE)
            .await
            .map(|data| {
                serde_json::json!({
                    "path": p.path, "bytes": data.len(), "encoding": encoding.name(),
                    "content": encoding.encode(&data),
                })
            });
        respond(&what, r)
    }

    #[tool(
        description = "List a directory in a sandbox: each entry's name, full path, whether it is a directory, and size."
    )]
    async fn list_files(
        &self,
        Parameters(p): Parameters<ListFilesParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let path = p.path.unwrap_or_else(|| "/root".into());
        respond(
            &format!("list_files {path} in sandbox {}", p.sandbox),
            self.service
                .list_files(&p.sandbox, &path)
                .await
                .map(|entries| serde_json::json!({ "path": path, "entries": entries })),
        )
    }

    #[tool(
        description = "Give a sandbox back to the warm pool when done with it: it is destroyed (files, processes and memory go with it) and the pool restores a fresh one from the template in its place, so the next create_sandbox is served warm. Fails, changing nothing, when no warm pool makes sandboxes like it: use destroy_sandbox then."
    )]
    async fn release_sandbox(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("release_sandbox {}", p.sandbox),
            self.service.release(&p.sandbox).await,
        )
    }

    #[tool(
        description = "Stop a sandbox cleanly and keep its disk: it holds no memory or CPU until start_sandbox boots it again with every file it had (not its processes). destroy_sandbox deletes it."
    )]
    async fn stop_sandbox(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("stop_sandbox {}", p.sandbox),
            self.service.stop(&p.sandbox).await,
        )
    }

    #[tool(
        description = "Boot a stopped sandbox again on the disk its stop kept: every file it had, none of its processes."
    )]
    async fn start_sandbox(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("start_sandbox {}", p.sandbox),
            self.service.start(&p.sandbox).await,
        )
    }

    #[tool(
        description = "Hibernate a sandbox: save its memory, processes and files to disk and free its VM; any later call on it (or resume_sandbox) brings it back exactly as it was."
    )]
    async fn hibernate_sandbox(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("hibernate_sandbox {}", p.sandbox),
            self.service.hibernate(&p.sandbox).await,
        )
    }

    #[tool(description = "Resume a hibernated (or paused) sandbox exactly where it was.")]
    async fn resume_sandbox(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("resume_sandbox {}", p.sandbox),
            self.service.resume(&p.sandbox).await,
        )
    }

    #[tool(description = "Destroy a sandbox: stop its VM and delete its disk. Its snapshots stay.")]
    async fn destroy_sandbox(
        &self,
        Parameters(p): Parameters<SandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("destroy_sandbox {}", p.sandbox),
            self.service
                .destroy(&p.sandbox)
                .await
                .map(|()| serde_json::json!({ "destroyed": p.sandbox })),
        )
    }

    #[tool(description = "List the sandboxes that exist, with their id, name, state and size.")]
    async fn list_sandboxes(
        &self,
        Parameters(_): Parameters<NoParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            "list_sandboxes",
            self.service
                .list()
                .await
                .map(|s| serde_json::json!({ "sandboxes": s })),
        )
    }

    #[tool(
        description = "Snapshot a running sandbox under a name: its memory, running processes and disk. The sandbox keeps running. Use restore_snapshot or fork_sandbox to go back to this point later."
    )]
    async fn snapshot_sandbox(
        &self,
        Parameters(p): Parameters<SnapshotParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("snapshot_sandbox {} as {}", p.sandbox, p.snapshot),
            self.service.snapshot(&p.sandbox, &p.snapshot).await,
        )
    }

    #[tool(
        description = "Start a new sandbox from a snapshot, exactly as the snapshotted sandbox was (files, memory, running processes)."
    )]
    async fn restore_snapshot(
        &self,
        Parameters(p): Parameters<RestoreParams>,
        ext: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let made = self
            .service
            .restore(&p.snapshot, p.name.as_deref(), &self.requester(&ext))
            .await;
        if let Ok(view) = &made {
            self.own([view]);
        }
        respond(&format!("restore_snapshot {}", p.snapshot), made)
    }

    #[tool(
        description = "List the templates sandboxes can be created from (create_sandbox's `template`): each one's name, source, digest, size and the defaults its execs get (env, workdir, user). \"base\", Petty's own image, is always there and not listed."
    )]
    async fn list_templates(
        &self,
        Parameters(_): Parameters<NoParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            "list_templates",
            self.service
                .list_templates()
                .await
                .map(|t| serde_json::json!({ "templates": t })),
        )
    }

    #[tool(
        description = "Build a template, an image sandboxes can be created from (create_sandbox's `template`): from a Dockerfile's text (`dockerfile`: one stage, FROM base or FROM another template; RUN, COPY from `context`, a directory on the server's host, ENV, WORKDIR, USER, ARG with `build_args`) or from an OCI image (`from_image`). Steps are cached. Takes seconds to minutes; one build runs at a time. Returns the template and the build's step lines."
    )]
    async fn build_template(
        &self,
        Parameters(spec): Parameters<BuildTemplateSpec>,
    ) -> Result<CallToolResult, ErrorData> {
        let what = format!("build_template {}", spec.name);
        let plan = match self.service.check_build(spec) {
            Ok(p) => p,
            Err(e) => return Ok(tool_error(&what, e)),
        };
        let log = std::sync::Mutex::new(BuildLog::default());
        let built = self
            .service
            .build_template(plan, &|line: BuildLine| lock(&log).add(&line))
            .await;
        let log = log.into_inner().unwrap_or_else(|e| e.into_inner());
        match built {
            Ok(template) => ok_json(&serde_json::json!({ "template": template, "log": log.lines })),
            Err(e) => {
                let mut text = format!("{what} failed ({}): {}", e.kind, e.message);
                if !log.lines.is_empty() {
                    text.push_str("\n\nsteps:\n");
                    text.push_str(&log.lines.join("\n"));
                }
                let tail = log.tail().trim_end();
                if !tail.is_empty() {
                    text.push_str("\n\nlast output:\n");
                    text.push_str(tail);
                }
                Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
            }
        }
    }

    #[tool(
        description = "Remove a template and its image. Refused while a sandbox or snapshot uses it: destroy those first."
    )]
    async fn delete_template(
        &self,
        Parameters(p): Parameters<TemplateParams>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(
            &format!("delete_template {}", p.template),
            self.service
                .delete_template(&p.template)
                .await
                .map(|()| serde_json::json!({ "deleted": p.template })),
        )
    }

    #[tool(
        description = "Snapshot a running sandbox under a name and start `count` children from that snapshot, in one call: the branch point of a tree search. The sandbox keeps running; the snapshot is kept for restore_snapshot; each child starts exactly there and then diverges."
    )]
    async fn branch_sandbox(
        &self,
        Parameters(p): Parameters<BranchParams>,
        ext: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let made = self
            .service
            .branch(&p.sandbox, &p.snapshot, p.count, &self.requester(&ext))
            .await;
        if let Ok(view) = &made {
            self.own(&view.sandboxes);
        }
        respond(&format!("branch_sandbox {}", p.sandbox), made)
    }

    #[tool(
        description = "Fork a running sandbox (or a snapshot) into `count` new sandboxes that start from the same state and then diverge: for trying several actions from one point and keeping the best."
    )]
    async fn fork_sandbox(
        &self,
        Parameters(p): Parameters<ForkParams>,
        ext: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        let made = self
            .service
            .fork(&p.source, p.count, &self.requester(&ext))
            .await;
        if let Ok(views) = &made {
            self.own(views);
        }
        respond(
            &format!("fork_sandbox {}", p.source),
            made.map(|s| serde_json::json!({ "sandboxes": s })),
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PettyMcp {
    /// Routes the call; arguments that do not fit a tool's schema come back
    /// as a tool error the model can read and correct (MCP's advice for
    /// input validation), not as a protocol error a client may hide.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        let _busy = self.session.begin(session_id(&context.extensions));
        let name = request.name.to_string();
        let known = self.tool_router.has_route(&name);
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await {
            Err(e) if known && e.code == rmcp::model::ErrorCode::INVALID_PARAMS => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "{name} failed (bad_request): the arguments do not fit the tool's schema: {}",
                    e.message
                ))])
                .into())
            }
            other => other,
        }
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("petty", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Petty runs code in sandboxes: real microVMs, each with its own Linux kernel. \
                 create_sandbox, then execute_command / execute_code / upload_file / download_file / list_files \
                 with its id or name, and destroy_sandbox when done. snapshot_sandbox, restore_snapshot and \
                 fork_sandbox branch and backtrack. build_template makes an image with what a task needs \
                 (from a Dockerfile or an OCI image); create_sandbox with `template` starts from it.",
            )
    }
}
