//! envd's processes: each started command runs in a task of its own that
//! owns its exec stream, so it outlives the request that started it (E2B's
//! background commands, a client that disconnects); its output so far is
//! kept (up to [`KEPT_BYTES`]) for whoever connects to it later, and live
//! output goes to every stream attached. A pid here is Petty's: unique in
//! the daemon, not the guest's own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use petty_core::{ExecEvent, ExecStream, PtySize, StdinHandle};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{lock, PerSandbox};

/// Output a process keeps for streams that attach later; beyond it the
/// oldest goes.
const KEPT_BYTES: usize = 8 << 20;
/// Processes started through envd that may run at once in one sandbox.
pub(super) const MAX_PER_SANDBOX: usize = 64;

/// One event of a process, as envd's `ProcessEvent` JSON carries it.
#[derive(Debug, Clone)]
pub(super) enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// A terminal's output (a process started with a PTY has only this).
    Pty(Vec<u8>),
    End {
        exit_code: i32,
        status: String,
        error: Option<String>,
    },
}

impl Event {
    pub(super) fn to_json(&self) -> Value {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Self::Stdout(b) => json!({"event": {"data": {"stdout": b64(b)}}}),
            Self::Stderr(b) => json!({"event": {"data": {"stderr": b64(b)}}}),
            Self::Pty(b) => json!({"event": {"data": {"pty": b64(b)}}}),
            Self::End {
                exit_code,
                status,
                error,
            } => {
                let mut end = json!({"exitCode": exit_code, "exited": true, "status": status});
                if let Some(e) = error {
                    end["error"] = json!(e);
                }
                json!({"event": {"end": end}})
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Stdout(b) | Self::Stderr(b) | Self::Pty(b) => b.len(),
            Self::End { .. } => 0,
        }
    }
}

/// A running (or just ended) process.
pub(super) struct Proc {
    pub pid: u32,
    pub tag: Option<String>,
    /// `ProcessConfig` as it was started (cmd, args, envs, cwd).
    pub config: Value,
    stdin: StdinHandle,
    with_stdin: bool,
    /// Started on a terminal.
    pty: bool,
    log: Mutex<Log>,
    live: broadcast::Sender<Event>,
}

#[derive(Default)]
struct Log {
    events: VecDeque<Event>,
    bytes: usize,
    ended: bool,
}

impl Proc {
    /// What it printed so far (and its end, if it ended), and a receiver
    /// of what follows: taken together, so nothing falls between.
    pub(super) fn attach(&self) -> (Vec<Event>, Option<broadcast::Receiver<Event>>) {
        let log = lock(&self.log);
        let past = log.events.iter().cloned().collect();
        let rx = (!log.ended).then(|| self.live.subscribe());
        (past, rx)
    }

    fn push(&self, e: Event) {
        let mut log = lock(&self.log);
        if matches!(e, Event::End { .. }) {
            log.ended = true;
        }
        log.bytes += e.len();
        log.events.push_back(e.clone());
        while log.bytes > KEPT_BYTES {
            match log.events.pop_front() {
                Some(old) => log.bytes -= old.len(),
                None => break,
            }
        }
        let _ = self.live.send(e);
    }

    pub(super) async fn signal(&self, signal: i32) -> Result<(), petty_core::ClientError> {
        self.stdin.signal(signal).await
    }

    /// Resizes its terminal.
    pub(super) async fn resize(&self, size: PtySize) -> Result<(), String> {
        if !self.pty {
            return Err(format!(
                "process {} has no terminal; start it with a pty to resize it",
                self.pid
            ));
        }
        self.stdin.resize(size).await.map_err(|e| e.to_string())
    }

    pub(super) async fn write_stdin(&self, data: &[u8]) -> Result<(), String> {
        if !self.with_stdin {
            return Err(format!(
                "process {} was started without stdin; start it with stdin: true",
                self.pid
            ));
        }
        self.stdin.write(data).await.map_err(|e| e.to_string())
    }

    pub(super) async fn close_stdin(&self) -> Result<(), String> {
        if !self.with_stdin {
            return Ok(());
        }
        self.stdin.close().await.map_err(|e| e.to_string())
    }
}

/// Every sandbox's processes.
#[derive(Clone, Default)]
pub(super) struct Processes {
    next: Arc<AtomicU32>,
    by_sandbox: PerSandbox<u32, Proc>,
}

impl Processes {
    /// Takes over `stream` (started with `config`) as a new process of
    /// `sandbox`; `done` is called with its end once it ends.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        &self,
        sandbox: &str,
        mut stream: ExecStream,
        config: Value,
        tag: Option<String>,
        with_stdin: bool,
        pty: bool,
        done: impl FnOnce(Result<(), petty_core::ClientError>) + Send + 'static,
    ) -> Arc<Proc> {
        let pid = 1000 + self.next.fetch_add(1, Ordering::Relaxed);
        let (live, _) = broadcast::channel(1024);
        let proc = Arc::new(Proc {
            pid,
            tag,
            config,
            stdin: stream.stdin(),
            with_stdin,
            pty,
            log: Mutex::new(Log::default()),
            live,
        });
        self.by_sandbox.insert(sandbox, pid, proc.clone());
        let (me, sandbox, p) = (self.clone(), sandbox.to_string(), proc.clone());
        tokio::spawn(async move {
            let ended = loop {
                match stream.next().await {
                    Ok(ExecEvent::Stdout(b)) if pty => p.push(Event::Pty(b)),
                    Ok(ExecEvent::Stdout(b)) => p.push(Event::Stdout(b)),
                    Ok(ExecEvent::Stderr(b)) => p.push(Event::Stderr(b)),
                    Ok(ExecEvent::Exit(s)) => {
                        let status = match s.signal {
                            Some(9) => "signal: killed".to_string(),
                            Some(n) => format!("signal: {n}"),
                            None => format!("exit status {}", s.code),
                        };
                        let exit_code = if s.signal.is_some() { -1 } else { s.code };
                        p.push(Event::End {
                            exit_code,
                            status,
                            error: s.timed_out.then(|| "the command timed out".to_string()),
                        });
                        break Ok(());
                    }
                    Err(e) => {
                        p.push(Event::End {
                            exit_code: -1,
                            status: "error".into(),
                            error: Some(e.to_string()),
                        });
                        break Err(e);
                    }
                }
            };
            drop(stream);
            me.by_sandbox.remove(&sandbox, &p.pid);
            done(ended);
        });
        proc
    }

    /// The process of `sandbox` that `selector` (`{"pid": N}` or
    /// `{"tag": "…"}`) names.
    pub(super) fn find(&self, sandbox: &str, selector: &Value) -> Option<Arc<Proc>> {
        if let Some(pid) = selector.get("pid").and_then(Value::as_u64) {
            return self.by_sandbox.get(sandbox, &(pid as u32));
        }
        let tag = selector.get("tag").and_then(Value::as_str)?;
        self.by_sandbox
            .find(sandbox, |p| p.tag.as_deref() == Some(tag))
    }

    /// The processes of `sandbox` that still run.
    pub(super) fn list(&self, sandbox: &str) -> Vec<Arc<Proc>> {
        self.by_sandbox.list(sandbox)
    }

    /// Drops what is known of `sandbox`'s processes (it was removed; their
    /// streams end with its VM).
    pub(super) fn forget(&self, sandbox: &str) {
        self.by_sandbox.forget(sandbox);
    }
}
