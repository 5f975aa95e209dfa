//! Background processes: each started command runs in a task of its own
//! that owns its exec stream, so it outlives the request that started it
//! (REST's and MCP's background processes and terminals, E2B's
//! commands); its output so far is kept (up to [`KEPT_BYTES`]) for
//! whoever attaches or reads later, and live output goes to every stream
//! attached. A pid here is Petty's: unique in the daemon, not the
//! guest's own. One registry per daemon, shared by REST, MCP and E2B's
//! envd, so a process started through one is seen through the others.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use petty_core::{ExecEvent, ExecStream, PtySize, StdinHandle};
use serde_json::Value;
use tokio::sync::broadcast;

/// Output a process keeps for streams that attach later; beyond it the
/// oldest goes.
const KEPT_BYTES: usize = 8 << 20;
/// Processes that may run at once in one sandbox: each keeps up to
/// [`KEPT_BYTES`], a bound on what one sandbox's caller can make the
/// daemon hold.
pub(crate) const MAX_PER_SANDBOX: usize = 64;
/// Ended processes kept per sandbox (the newest), so their exit code and
/// last output can still be read.
const KEPT_ENDED: usize = 8;

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ended {
    /// Shell-style: 128 + N when signal N killed it, 124 on a timeout.
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Set when its stream broke rather than ended (the sandbox went).
    pub error: Option<String>,
}

/// One event of a process.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// A terminal's output (a process started with a PTY has only this).
    Pty(Vec<u8>),
    End(Ended),
}

impl Event {
    /// Its output bytes, if it is output.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Stdout(b) | Self::Stderr(b) | Self::Pty(b) => Some(b),
            Self::End(_) => None,
        }
    }

    fn len(&self) -> usize {
        self.bytes().map_or(0, <[u8]>::len)
    }
}

/// What a process was started as.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    /// The command as it runs (`["/bin/sh", "-c", line]` for a shell line).
    pub argv: Vec<String>,
    /// A name the caller gave it (E2B's tag); unique among running ones
    /// is not enforced, a lookup by tag takes a running one first.
    pub tag: Option<String>,
    /// The starting request as its API took it (envd's `ProcessConfig`),
    /// given back by envd's `List`.
    pub config: Value,
    /// It takes stdin after start.
    pub stdin: bool,
    /// Started on a terminal.
    pub pty: bool,
}

/// A running (or recently ended) process.
pub(crate) struct Proc {
    pub pid: u32,
    pub started: Started,
    pub started_at: SystemTime,
    stdin: StdinHandle,
    log: Mutex<Log>,
    live: broadcast::Sender<Event>,
}

#[derive(Default)]
struct Log {
    events: VecDeque<Event>,
    bytes: usize,
    /// Output bytes dropped from the front (the offset of the first kept).
    dropped: u64,
    ended: Option<Ended>,
}

/// Output read from an offset on (merged streams, in order).
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub data: Vec<u8>,
    /// The offset to read from next.
    pub next: u64,
    /// Bytes between the offset asked for and the oldest kept, lost.
    pub skipped: u64,
    pub ended: Option<Ended>,
}

impl Proc {
    /// What it printed so far (and its end, if it ended), and a receiver
    /// of what follows: taken together, so nothing falls between.
    pub(crate) fn attach(&self) -> (Vec<Event>, Option<broadcast::Receiver<Event>>) {
        let log = lock(&self.log);
        let past = log.events.iter().cloned().collect();
        let rx = log.ended.is_none().then(|| self.live.subscribe());
        (past, rx)
    }

    /// Its end, once it ended.
    pub(crate) fn ended(&self) -> Option<Ended> {
        lock(&self.log).ended.clone()
    }

    /// Output from byte `offset` on (of everything it printed, all
    /// streams together), at most `max` bytes of it.
    pub(crate) fn read(&self, offset: u64, max: usize) -> Chunk {
        let log = lock(&self.log);
        let mut chunk = Chunk {
            skipped: log.dropped.saturating_sub(offset),
            ended: log.ended.clone(),
            ..Chunk::default()
        };
        let mut at = log.dropped;
        let from = offset.max(log.dropped);
        for b in log.events.iter().filter_map(Event::bytes) {
            let end = at + b.len() as u64;
            if end > from && chunk.data.len() < max {
                let start = from.saturating_sub(at) as usize;
                let take = (b.len() - start).min(max - chunk.data.len());
                chunk.data.extend_from_slice(&b[start..start + take]);
            }
            at = end;
        }
        chunk.next = from + chunk.data.len() as u64;
        if chunk.next < at {
            // More is kept than was asked for: it has not ended for the reader.
            chunk.ended = None;
        }
        chunk
    }

    /// [`Proc::read`], waiting up to `wait` for output past `offset` (or
    /// the end) when there is none yet.
    pub(crate) async fn read_wait(&self, offset: u64, max: usize, wait: Duration) -> Chunk {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut rx = self.live.subscribe();
            let chunk = self.read(offset, max);
            if !chunk.data.is_empty() || chunk.ended.is_some() || chunk.skipped > 0 {
                return chunk;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return chunk,
                Ok(Err(broadcast::error::RecvError::Closed)) => return self.read(offset, max),
                Ok(_) => {}
            }
        }
    }

    fn push(&self, e: Event) {
        let mut log = lock(&self.log);
        if let Event::End(end) = &e {
            log.ended = Some(end.clone());
        }
        log.bytes += e.len();
        log.events.push_back(e.clone());
        while log.bytes > KEPT_BYTES {
            match log.events.pop_front() {
                Some(old) => {
                    log.bytes -= old.len();
                    log.dropped += old.len() as u64;
                }
                None => break,
            }
        }
        let _ = self.live.send(e);
    }

    /// Sends `signal` to its process group.
    pub(crate) async fn signal(&self, signal: i32) -> Result<(), petty_core::ClientError> {
        self.stdin.signal(signal).await
    }

    /// Resizes its terminal.
    pub(crate) async fn resize(&self, size: PtySize) -> Result<(), String> {
        if !self.started.pty {
            return Err(format!(
                "process {} has no terminal; start it with a pty to resize it",
                self.pid
            ));
        }
        self.stdin.resize(size).await.map_err(|e| e.to_string())
    }

    pub(crate) async fn write_stdin(&self, data: &[u8]) -> Result<(), String> {
        if !self.started.stdin {
            return Err(format!(
                "process {} was started without stdin; start it with stdin: true",
                self.pid
            ));
        }
        if self.ended().is_some() {
            return Err(format!("process {} has ended", self.pid));
        }
        self.stdin.write(data).await.map_err(|e| e.to_string())
    }

    pub(crate) async fn close_stdin(&self) -> Result<(), String> {
        if !self.started.stdin || self.ended().is_some() {
            return Ok(());
        }
        self.stdin.close().await.map_err(|e| e.to_string())
    }
}

/// Every sandbox's processes.
#[derive(Clone, Default)]
pub(crate) struct Processes {
    next: Arc<AtomicU32>,
    by_sandbox: PerSandbox<u32, Proc>,
}

impl Processes {
    /// Takes over `stream` (started as `started`) as a new process of
    /// `sandbox` (its id); `done` is called with its end once it ends.
    pub(crate) fn spawn(
        &self,
        sandbox: &str,
        mut stream: ExecStream,
        started: Started,
        done: impl FnOnce(Result<(), petty_core::ClientError>) + Send + 'static,
    ) -> Arc<Proc> {
        let pid = 1000 + self.next.fetch_add(1, Ordering::Relaxed);
        let (live, _) = broadcast::channel(1024);
        let pty = started.pty;
        let proc = Arc::new(Proc {
            pid,
            started,
            started_at: SystemTime::now(),
            stdin: stream.stdin(),
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
                        p.push(Event::End(Ended {
                            code: s.code,
                            signal: s.signal,
                            timed_out: s.timed_out,
                            error: s.timed_out.then(|| "the command timed out".to_string()),
                        }));
                        break Ok(());
                    }
                    Err(e) => {
                        p.push(Event::End(Ended {
                            code: -1,
                            signal: None,
                            timed_out: false,
                            error: Some(e.to_string()),
                        }));
                        break Err(e);
                    }
                }
            };
            drop(stream);
            me.keep_ended(&sandbox);
            done(ended);
        });
        proc
    }

    /// Drops the oldest ended processes of `sandbox` beyond [`KEPT_ENDED`].
    fn keep_ended(&self, sandbox: &str) {
        let ended: Vec<u32> = self
            .by_sandbox
            .list(sandbox)
            .iter()
            .filter(|p| p.ended().is_some())
            .map(|p| p.pid)
            .collect();
        for pid in ended.iter().take(ended.len().saturating_sub(KEPT_ENDED)) {
            self.by_sandbox.remove(sandbox, pid);
        }
    }

    /// Process `pid` of `sandbox`, running or recently ended.
    pub(crate) fn get(&self, sandbox: &str, pid: u32) -> Option<Arc<Proc>> {
        self.by_sandbox.get(sandbox, &pid)
    }

    /// The process of `sandbox` tagged `tag`: a running one first.
    pub(crate) fn by_tag(&self, sandbox: &str, tag: &str) -> Option<Arc<Proc>> {
        let tagged = |p: &Proc| p.started.tag.as_deref() == Some(tag);
        self.by_sandbox
            .find(sandbox, |p| tagged(p) && p.ended().is_none())
            .or_else(|| self.by_sandbox.find(sandbox, tagged))
    }

    /// The processes of `sandbox` that still run.
    pub(crate) fn running(&self, sandbox: &str) -> Vec<Arc<Proc>> {
        let mut all = self.all(sandbox);
        all.retain(|p| p.ended().is_none());
        all
    }

    /// The processes of `sandbox`, running and recently ended, oldest first.
    pub(crate) fn all(&self, sandbox: &str) -> Vec<Arc<Proc>> {
        self.by_sandbox.list(sandbox)
    }

    /// Drops what is known of `sandbox`'s processes (it was removed; their
    /// streams end with its VM).
    pub(crate) fn forget(&self, sandbox: &str) {
        self.by_sandbox.forget(sandbox);
    }
}

/// What each sandbox has of one kind (its processes, its code
/// contexts, its watchers), by key.
pub(crate) struct PerSandbox<K, V>(Arc<Mutex<BySandbox<K, V>>>);

/// Sandbox id -> key -> value.
type BySandbox<K, V> = BTreeMap<String, BTreeMap<K, Arc<V>>>;

impl<K, V> Clone for PerSandbox<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> Default for PerSandbox<K, V> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Ord + Clone, V> PerSandbox<K, V> {
    pub(crate) fn insert(&self, sandbox: &str, key: K, value: Arc<V>) {
        lock(&self.0)
            .entry(sandbox.to_string())
            .or_default()
            .insert(key, value);
    }

    pub(crate) fn get(&self, sandbox: &str, key: &K) -> Option<Arc<V>> {
        lock(&self.0).get(sandbox)?.get(key).cloned()
    }

    /// The first of `sandbox`'s that `matches`.
    pub(crate) fn find(&self, sandbox: &str, matches: impl Fn(&V) -> bool) -> Option<Arc<V>> {
        lock(&self.0)
            .get(sandbox)?
            .values()
            .find(|v| matches(v))
            .cloned()
    }

    pub(crate) fn remove(&self, sandbox: &str, key: &K) -> Option<Arc<V>> {
        let mut all = lock(&self.0);
        let of = all.get_mut(sandbox)?;
        let gone = of.remove(key);
        if of.is_empty() {
            all.remove(sandbox);
        }
        gone
    }

    pub(crate) fn list(&self, sandbox: &str) -> Vec<Arc<V>> {
        lock(&self.0)
            .get(sandbox)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops what is known of `sandbox`'s (it was removed).
    pub(crate) fn forget(&self, sandbox: &str) {
        lock(&self.0).remove(sandbox);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
