//! The fake guest agent: one task per connection, speaking Petty's protocol
//! (`petty-protocol` frames) on the guest's end of a socket pair.
//!
//! It answers every request the host sends, from memory: the greeting and
//! pings with a [`Pong`] of this protocol's version, the clock, `refresh`,
//! `before_snapshot` and `cancel` with `Ok`, execs with what an
//! [`ExecHandler`] says (nothing runs), and file operations on a map that
//! stands for the guest's disk (kept across connections, gone with the VM).
//! `shutdown` powers the VM off: its placeholder process is killed, as a
//! real VMM exits when its guest powers off.
//!
//! Time is tokio's: an exec that "takes" a minute, a [`AgentMode::Slow`]
//! answer, a timeout, all run on the runtime's clock, so under
//! `tokio::time::pause()` they cost no real time. A paused VM
//! ([`petty_vmm::Vm::pause`]) answers nothing until it is resumed, as a
//! frozen guest would not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petty_protocol::{
    Command, ErrorKind, ExecRequest, ExitStatus, FileEntry, FileStat, FileType, Frame,
    FrameDecoder, FrameKind, Pong, Request, Response, CHUNK_SIZE, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

/// How a fake guest's agent behaves. Read at each connection and at each
/// request, so a test can change it while a sandbox runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentMode {
    /// Answers every request at once.
    #[default]
    Answer,
    /// Answers every request after this long (tokio time).
    Slow(Duration),
    /// Reads requests and never answers: a hung guest. Its connection stays
    /// open.
    Silent,
    /// Closes every connection at its first request (and any new one at
    /// once): an agent that crashed.
    Hangup,
    /// No connection can be opened: a VMM whose agent socket never appears.
    Refuse,
    /// Greets with another protocol version than the host's.
    WrongVersion,
}

/// What a fake exec prints and how it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecReply {
    /// Bytes on stdout.
    pub stdout: Vec<u8>,
    /// Bytes on stderr.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub code: i32,
    /// How long (tokio time) the command runs before it exits; a request's
    /// `timeout_ms` below it ends it as timed out.
    pub takes: Duration,
}

impl ExecReply {
    /// Exits with `code`, printing nothing, at once.
    pub fn exit(code: i32) -> Self {
        Self {
            code,
            ..Self::default()
        }
    }

    /// Prints `out` on stdout and exits 0.
    pub fn stdout(out: impl Into<Vec<u8>>) -> Self {
        Self {
            stdout: out.into(),
            ..Self::default()
        }
    }

    /// The same, running for `d` first.
    pub fn taking(mut self, d: Duration) -> Self {
        self.takes = d;
        self
    }
}

/// Decides what an exec does, from its request and the stdin it was given.
pub type ExecHandler = Arc<dyn Fn(&ExecRequest, &[u8]) -> ExecReply + Send + Sync>;

/// The execs the fake agent knows, by their first word (of the argv, or of
/// the shell line split at whitespace; no quoting): `echo ARGS` prints its
/// arguments and a newline, `cat` prints its stdin, `true` exits 0, `false`
/// 1, `exit N` N, `sleep N` runs N seconds. Anything else exits 0 and
/// prints nothing.
pub fn default_exec(req: &ExecRequest, stdin: &[u8]) -> ExecReply {
    let words: Vec<String> = match &req.command {
        Command::Argv(argv) => argv.clone(),
        Command::Shell(line) => line.split_whitespace().map(str::to_string).collect(),
    };
    let arg = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "echo" => ExecReply::stdout(format!("{}\n", words[1..].join(" "))),
        "cat" => ExecReply::stdout(stdin.to_vec()),
        "false" => ExecReply::exit(1),
        "exit" => ExecReply::exit(arg(1).parse().unwrap_or(0)),
        "sleep" => ExecReply::exit(0).taking(Duration::from_secs_f64(
            arg(1).parse::<f64>().unwrap_or(0.0).max(0.0),
        )),
        _ => ExecReply::exit(0),
    }
}

/// A file of the fake guest's disk.
#[derive(Debug, Clone)]
struct FileData {
    data: Vec<u8>,
    mode: u32,
}

/// The guest's disk: files by absolute path, and directories made with
/// `mkdir` (any parent of a file is a directory too).
#[derive(Debug, Default)]
struct Disk {
    files: BTreeMap<String, FileData>,
    dirs: BTreeSet<String>,
}

/// What one fake guest keeps between connections.
pub(crate) struct Guest {
    pub mode: Mutex<AgentMode>,
    /// True while the VM is paused: nothing is answered.
    pub paused: watch::Sender<bool>,
    /// True once the VM is gone: every connection closes.
    pub gone: watch::Sender<bool>,
    /// Every request received, in order, over every connection.
    pub requests: Mutex<Vec<Request>>,
    disk: Mutex<Disk>,
    /// Powers the VM off (what `shutdown` does).
    power_off: Box<dyn Fn() + Send + Sync>,
}

impl Guest {
    pub fn new(mode: AgentMode, power_off: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            mode: Mutex::new(mode),
            paused: watch::Sender::new(false),
            gone: watch::Sender::new(false),
            requests: Mutex::new(Vec::new()),
            disk: Mutex::new(Disk::default()),
            power_off,
        }
    }

    /// The contents of file `path` of the guest's disk.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.disk).files.get(path).map(|f| f.data.clone())
    }

    /// Waits while the VM is paused.
    async fn running(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's writer, shared by the tasks that answer; `None` once
/// the connection is closed.
#[derive(Clone)]
struct Out(Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>);

impl Out {
    async fn send(&self, frames: &[Frame]) {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode_into(&mut bytes);
        }
        let mut w = self.0.lock().await;
        if let Some(wr) = w.as_mut() {
            if wr.write_all(&bytes).await.is_err() {
                *w = None;
            }
        }
    }

    async fn respond(&self, id: u32, r: &Response) {
        self.send(&[Frame::json(FrameKind::Response, id, r)]).await;
    }

    async fn close(&self) {
        // Dropping the write half shuts it down: the host reads the end.
        self.0.lock().await.take();
    }
}

/// A file being written from the `Data` frames that follow its request.
struct Upload {
    path: String,
    mode: u32,
    data: Vec<u8>,
}

/// One connection's state, as the reading loop sees it.
struct Conn {
    guest: Arc<Guest>,
    exec: ExecHandler,
    out: Out,
    /// Stdin of execs that take it, until the host closes it.
    stdin: HashMap<u32, (Vec<u8>, oneshot::Sender<Vec<u8>>)>,
    uploads: HashMap<u32, Upload>,
    /// Running execs: a sender ends one with a signal.
    execs: Arc<Mutex<HashMap<u32, oneshot::Sender<i32>>>>,
}

/// Serves one connection on `stream` until the host closes it, the guest is
/// gone, or the mode says to hang up.
pub(crate) async fn serve(stream: UnixStream, guest: Arc<Guest>, exec: ExecHandler) {
    let (mut rd, wr) = stream.into_split();
    let mut conn = Conn {
        guest: guest.clone(),
        exec,
        out: Out(Arc::new(tokio::sync::Mutex::new(Some(wr)))),
        stdin: HashMap::new(),
        uploads: HashMap::new(),
        execs: Arc::new(Mutex::new(HashMap::new())),
    };
    let mut gone = guest.gone.subscribe();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    'conn: loop {
        let mode = *lock(&guest.mode);
        if mode == AgentMode::Hangup {
            break;
        }
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = gone.wait_for(|g| *g) => break,
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if !conn.frame(frame) {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                // As the real agent does: the stream cannot be read on.
                Err(_) => break 'conn,
            }
        }
    }
    conn.out.close().await;
}

impl Conn {
    /// Handles one frame; false to hang up.
    fn frame(&mut self, frame: Frame) -> bool {
        match frame.kind {
            FrameKind::Request => {
                let req: Request = match frame.parse() {
                    Ok(r) => r,
                    Err(e) => {
                        self.reply(frame.id, error(ErrorKind::InvalidRequest, e.to_string()));
                        return true;
                    }
                };
                lock(&self.guest.requests).push(req.clone());
                let mode = *lock(&self.guest.mode);
                match mode {
                    AgentMode::Silent => true,
                    AgentMode::Hangup | AgentMode::Refuse => false,
                    _ => {
                        self.request(frame.id, req);
                        true
                    }
                }
            }
            FrameKind::Stdin => {
                if frame.payload.is_empty() {
                    if let Some((input, done)) = self.stdin.remove(&frame.id) {
                        let _ = done.send(input);
                    }
                } else if let Some((input, _)) = self.stdin.get_mut(&frame.id) {
                    input.extend_from_slice(&frame.payload);
                }
                true
            }
            FrameKind::Data => {
                if frame.payload.is_empty() {
                    if let Some(up) = self.uploads.remove(&frame.id) {
                        let size = up.data.len() as u64;
                        lock(&self.guest.disk).files.insert(
                            up.path,
                            FileData {
                                data: up.data,
                                mode: up.mode,
                            },
                        );
                        self.reply(frame.id, Response::Done { size });
                    }
                } else if let Some(up) = self.uploads.get_mut(&frame.id) {
                    up.data.extend_from_slice(&frame.payload);
                } else {
                    self.reply(
                        frame.id,
                        error(ErrorKind::InvalidRequest, "data for no file write"),
                    );
                }
                true
            }
            // Frames only a guest sends: ignored.
            FrameKind::Response | FrameKind::Stdout | FrameKind::Stderr => true,
        }
    }

    /// Answers `response` to request `id`, once the guest runs and after the
    /// mode's delay.
    fn reply(&self, id: u32, response: Response) {
        self.reply_frames(id, Vec::new(), response);
    }

    fn reply_frames(&self, id: u32, mut frames: Vec<Frame>, response: Response) {
        let (guest, out) = (self.guest.clone(), self.out.clone());
        tokio::spawn(async move {
            answer_delay(&guest).await;
            frames.push(Frame::json(FrameKind::Response, id, &response));
            out.send(&frames).await;
        });
    }

    fn request(&mut self, id: u32, req: Request) {
        match req {
            Request::Hello | Request::Ping => {
                let mode = *lock(&self.guest.mode);
                let protocol = match mode {
                    AgentMode::WrongVersion => PROTOCOL_VERSION + 1,
                    _ => PROTOCOL_VERSION,
                };
                self.reply(
                    id,
                    Response::Pong(Pong {
                        protocol,
                        agent_version: "fake".into(),
                        kernel: "fake-kernel".into(),
                    }),
                );
            }
            Request::Auth { .. }
            | Request::SetTime { .. }
            | Request::Refresh { .. }
            | Request::BeforeSnapshot
            | Request::Sync => {
                self.reply(id, Response::Ok);
            }
            Request::Cancel { request_id } => {
                self.uploads.remove(&request_id);
                self.reply(id, Response::Ok);
            }
            Request::Shutdown => {
                let (guest, out) = (self.guest.clone(), self.out.clone());
                tokio::spawn(async move {
                    answer_delay(&guest).await;
                    out.respond(id, &Response::Ok).await;
                    (guest.power_off)();
                });
            }
            // A detached exec outlives its connection in a real guest; the
            // fake's execs are its connection's tasks.
            Request::Exec(req) if req.detach => self.reply(
                id,
                error(
                    ErrorKind::InvalidRequest,
                    "the fake agent runs no detached execs".to_string(),
                ),
            ),
            Request::Exec(req) => self.exec(id, req),
            Request::Signal { exec_id, signal } => {
                let running = lock(&self.execs).remove(&exec_id);
                match running {
                    Some(tx) => {
                        let _ = tx.send(signal);
                        self.reply(id, Response::Ok);
                    }
                    None => self.reply(
                        id,
                        error(
                            ErrorKind::InvalidRequest,
                            format!("no running exec with id {exec_id}"),
                        ),
                    ),
                }
            }
            // Terminals and watches need a real guest: the fake has neither.
            Request::Resize { .. } | Request::Watch { .. } => self.reply(
                id,
                error(
                    ErrorKind::InvalidRequest,
                    "the fake agent has no terminals or directory watches".to_string(),
                ),
            ),
            Request::WriteFile { path, mode } => {
                self.uploads.insert(
                    id,
                    Upload {
                        path,
                        mode: mode.unwrap_or(0o644),
                        data: Vec::new(),
                    },
                );
            }
            Request::ReadFile { path } => {
                let file = lock(&self.guest.disk).files.get(&path).cloned();
                match file {
                    Some(f) => {
                        let frames = f
                            .data
                            .chunks(CHUNK_SIZE)
                            .map(|c| Frame::new(FrameKind::Data, id, c.to_vec()))
                            .collect();
                        let size = f.data.len() as u64;
                        self.reply_frames(id, frames, Response::Done { size });
                    }
                    None => self.reply(id, not_found(&path)),
                }
            }
            Request::Stat { path, .. } => {
                let r = lock(&self.guest.disk).stat(&path);
                self.reply(id, r);
            }
            Request::ListDir { path } => {
                let r = lock(&self.guest.disk).list(&path);
                self.reply(id, r);
            }
            Request::Mkdir { path } => {
                lock(&self.guest.disk).dirs.insert(trim(&path).to_string());
                self.reply(id, Response::Ok);
            }
            Request::Remove { path, recursive } => {
                let r = lock(&self.guest.disk).remove(&path, recursive);
                self.reply(id, r);
            }
            Request::Rename { from, to } => {
                let mut disk = lock(&self.guest.disk);
                let r = match disk.files.remove(&from) {
                    Some(f) => {
                        disk.files.insert(to, f);
                        Response::Ok
                    }
                    None => not_found(&from),
                };
                drop(disk);
                self.reply(id, r);
            }
        }
    }

    /// Runs an exec: waits for its stdin (if it takes any), asks the
    /// handler what it does, lets it run its time (or its timeout, or until
    /// a signal ends it), then sends its output and its status.
    fn exec(&mut self, id: u32, req: ExecRequest) {
        let stdin = req.stdin.then(|| {
            let (tx, rx) = oneshot::channel();
            self.stdin.insert(id, (Vec::new(), tx));
            rx
        });
        let (signal_tx, signal_rx) = oneshot::channel();
        lock(&self.execs).insert(id, signal_tx);
        let (guest, out, handler, execs) = (
            self.guest.clone(),
            self.out.clone(),
            self.exec.clone(),
            self.execs.clone(),
        );
        tokio::spawn(async move {
            let input = match stdin {
                Some(rx) => rx.await.unwrap_or_default(),
                None => Vec::new(),
            };
            let reply = handler(&req, &input);
            let limit = req.timeout_ms.map(Duration::from_millis);
            let runs = limit.map_or(reply.takes, |l| l.min(reply.takes));
            let status = tokio::select! {
                () = tokio::time::sleep(runs) => match limit {
                    Some(l) if l < reply.takes => ExitStatus {
                        code: 128 + libc::SIGKILL,
                        signal: Some(libc::SIGKILL),
                        timed_out: true,
                    },
                    _ => ExitStatus {
                        code: reply.code,
                        signal: None,
                        timed_out: false,
                    },
                },
                Ok(sig) = signal_rx => ExitStatus {
                    code: 128 + sig,
                    signal: Some(sig),
                    timed_out: false,
                },
            };
            lock(&execs).remove(&id);
            answer_delay(&guest).await;
            let mut frames = Vec::new();
            for (kind, bytes) in [
                (FrameKind::Stdout, &reply.stdout),
                (FrameKind::Stderr, &reply.stderr),
            ] {
                frames.extend(
                    bytes
                        .chunks(CHUNK_SIZE)
                        .map(|c| Frame::new(kind, id, c.to_vec())),
                );
            }
            frames.push(Frame::json(
                FrameKind::Response,
                id,
                &Response::Exited(status),
            ));
            out.send(&frames).await;
        });
    }
}

/// What an answer waits for: a paused guest to run again, then the mode's
/// delay.
async fn answer_delay(guest: &Guest) {
    guest.running().await;
    let mode = *lock(&guest.mode);
    if let AgentMode::Slow(d) = mode {
        tokio::time::sleep(d).await;
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

fn not_found(path: &str) -> Response {
    error(
        ErrorKind::NotFound,
        format!("{path}: No such file or directory"),
    )
}

/// A path without its trailing slashes (`/` stays `/`).
fn trim(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    }
}

/// The prefix every path under directory `dir` starts with.
fn under(dir: &str) -> String {
    match trim(dir) {
        "/" => "/".into(),
        d => format!("{d}/"),
    }
}

impl Disk {
    fn is_dir(&self, path: &str) -> bool {
        let path = trim(path);
        let prefix = under(path);
        path == "/"
            || self.dirs.contains(path)
            || self.files.keys().any(|f| f.starts_with(&prefix))
            || self.dirs.iter().any(|d| d.starts_with(&prefix))
    }

    fn stat(&self, path: &str) -> Response {
        if let Some(f) = self.files.get(path) {
            return Response::Stat(FileStat {
                is_dir: false,
                is_symlink: false,
                file_type: FileType::File,
                size: f.data.len() as u64,
                mode: f.mode,
                mtime: 0,
            });
        }
        if self.is_dir(path) {
            return Response::Stat(FileStat {
                is_dir: true,
                is_symlink: false,
                file_type: FileType::Directory,
                size: 0,
                mode: 0o755,
                mtime: 0,
            });
        }
        not_found(path)
    }

    fn list(&self, path: &str) -> Response {
        if !self.is_dir(path) {
            return not_found(path);
        }
        let prefix = under(path);
        let mut entries: BTreeMap<String, FileEntry> = BTreeMap::new();
        let paths = self
            .files
            .iter()
            .map(|(p, f)| (p, f.data.len() as u64))
            .chain(self.dirs.iter().map(|d| (d, 0)));
        for (p, size) in paths {
            let Some(rest) = p.strip_prefix(&prefix) else {
                continue;
            };
            let (name, deeper) = match rest.split_once('/') {
                Some((name, _)) => (name, true),
                None => (rest, false),
            };
            if name.is_empty() {
                continue;
            }
            let is_dir = deeper || self.dirs.contains(p.as_str());
            entries.entry(name.to_string()).or_insert(FileEntry {
                name: name.to_string(),
                is_dir,
                size: if is_dir { 0 } else { size },
            });
        }
        Response::Entries {
            entries: entries.into_values().collect(),
        }
    }

    fn remove(&mut self, path: &str, recursive: bool) -> Response {
        if self.files.remove(path).is_some() {
            return Response::Ok;
        }
        if !self.is_dir(path) {
            return not_found(path);
        }
        let prefix = under(path);
        let has_children = self.files.keys().any(|f| f.starts_with(&prefix))
            || self.dirs.iter().any(|d| d.starts_with(&prefix));
        if has_children && !recursive {
            return error(ErrorKind::NotEmpty, format!("{path}: Directory not empty"));
        }
        self.files.retain(|f, _| !f.starts_with(&prefix));
        self.dirs
            .retain(|d| !d.starts_with(&prefix) && d.as_str() != trim(path));
        Response::Ok
    }
}
