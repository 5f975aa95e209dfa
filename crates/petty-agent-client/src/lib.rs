//! Host side of the guest agent protocol.
//!
//! [`AgentClient`] owns one byte stream to a guest agent (a QEMU
//! virtio-serial socket, a Firecracker vsock connection, or a socket pair in
//! tests). A reader task splits incoming frames by request id into bounded
//! per-request channels, so many requests run at once on one stream and a
//! slow consumer slows its guest rather than growing host memory.
//!
//! The guest is untrusted: frames are size-checked before they are buffered,
//! frames for unknown ids are dropped, anything that breaks the framing or
//! the protocol ends the connection with [`ClientError::Hostile`] (naming
//! the [`Violation`]), and whole-file reads and collected output have caps.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petty_protocol::{
    ErrorKind, ExecRequest, ExitStatus, FileEntry, FileStat, Frame, FrameDecoder, FrameError,
    FrameKind, Pong, PtySize, Request, Response, WatchEvent, CHUNK_SIZE, HEADER_LEN, MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Frames buffered per request before the reader waits for its consumer.
const CHANNEL_DEPTH: usize = 32;

/// Largest file [`AgentClient::read_file`] collects in memory.
pub const MAX_READ_FILE: u64 = 512 * 1024 * 1024;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The stream to the agent is gone: the agent closed it (or said why it
    /// was closing), reading it failed, or the host ended it with
    /// [`AgentClient::abort`].
    #[error("connection to the guest agent lost: {0}")]
    Disconnected(String),
    /// The agent broke the framing or the protocol. The host ended the
    /// connection at once: every request in flight and every later call on
    /// the client fails with this same error.
    #[error("{what}; the host closed its connection to the agent, which is broken or hostile: remove this sandbox")]
    Hostile {
        /// What the agent sent.
        what: Violation,
    },
    /// The agent did not answer in time.
    #[error("guest agent did not answer {op} within {timeout:?}")]
    Timeout {
        /// What was asked.
        op: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The agent carried out the request and reports that it failed.
    #[error("{message}")]
    Remote {
        /// Broad class of the failure.
        kind: ErrorKind,
        /// The agent's description, naming the path or id.
        message: String,
    },
    /// The agent answered a request with a well-formed frame that is the
    /// wrong answer to it. Only that request fails; the connection stays up.
    #[error("guest agent broke the protocol: {0}")]
    Protocol(String),
    /// The agent speaks another protocol version.
    #[error("guest agent speaks protocol {agent}, this host speaks {host}; rebuild the guest image with `petty image build`")]
    Version {
        /// The agent's version.
        agent: u32,
        /// Ours.
        host: u32,
    },
    /// A file read exceeded the in-memory cap.
    #[error("file {path} is larger than {limit} bytes; stream it instead")]
    TooLarge {
        /// The file.
        path: String,
        /// The cap.
        limit: u64,
    },
    /// Local I/O failed (writing to the stream, or to a local sink).
    #[error("I/O error talking to the guest agent")]
    Io(#[from] std::io::Error),
}

/// How a guest agent broke the framing or the protocol. Any of these ends
/// the connection: after it the host can trust neither where the next frame
/// starts nor what it means.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Violation {
    /// A length prefix over [`MAX_FRAME_LEN`]; refused before anything of
    /// the frame is buffered.
    #[error("guest agent sent a frame of {0} bytes, over the {MAX_FRAME_LEN}-byte limit")]
    TooLong(u32),
    /// A length prefix too small to hold a kind and a request id.
    #[error("guest agent sent a frame of {0} bytes, too short for the 5 bytes of its kind and request id")]
    TooShort(u32),
    /// A kind byte that is not one of [`FrameKind`].
    #[error("guest agent sent a frame of unknown kind {0}")]
    UnknownKind(u8),
    /// The stream ended inside a frame's header.
    #[error("guest agent's stream ended inside a frame header, after {received} of its {HEADER_LEN} bytes")]
    TruncatedHeader {
        /// Bytes of the header that arrived.
        received: usize,
    },
    /// The stream ended inside a frame's payload.
    #[error("guest agent's stream ended inside a frame, after {received} of its {len} bytes")]
    TruncatedFrame {
        /// Bytes of the frame (header included) that arrived.
        received: usize,
        /// The frame's whole length, header included.
        len: usize,
    },
    /// A `Response` frame whose payload is not a [`Response`].
    #[error("guest agent sent a Response for request {id} that does not parse: {error}")]
    BadResponse {
        /// The request it was for.
        id: u32,
        /// Why it does not parse.
        error: Arc<serde_json::Error>,
    },
    /// A frame of a kind only the host sends (`Request`, `Stdin`).
    #[error("guest agent sent a {kind:?} frame (request {id}), a kind only the host sends")]
    HostOnlyKind {
        /// The kind.
        kind: FrameKind,
        /// The request id it carried.
        id: u32,
    },
    /// A frame for request id 0 that is not the agent's closing error (the
    /// only thing that id may carry).
    #[error("guest agent sent a {kind:?} frame for request 0 that is not its closing error")]
    RequestZero {
        /// The kind.
        kind: FrameKind,
    },
}

impl Violation {
    /// The violation behind a decoder error; `decoder` is the one that
    /// failed, to say how long a truncated frame should have been.
    fn from_frame_error(e: FrameError, decoder: &FrameDecoder) -> Self {
        match e {
            FrameError::TooLong(len) => Self::TooLong(len),
            FrameError::TooShort(len) => Self::TooShort(len),
            FrameError::UnknownKind(kind) => Self::UnknownKind(kind),
            FrameError::Truncated(received) if received < HEADER_LEN => {
                Self::TruncatedHeader { received }
            }
            // With a whole length prefix buffered, `want` is what the frame lacks.
            FrameError::Truncated(received) => Self::TruncatedFrame {
                received,
                len: received + decoder.want(),
            },
        }
    }
}

enum Incoming {
    Raw(FrameKind, Vec<u8>),
    Response(Response),
}

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

struct Inner {
    /// `None` once the connection has ended: the write half is dropped so
    /// the guest sees the close.
    writer: tokio::sync::Mutex<Option<BoxWrite>>,
    pending: Mutex<Pending>,
    /// Turns true when the connection ends, to wake writes stuck on a guest
    /// that stopped reading.
    closed: watch::Sender<bool>,
    next_id: AtomicU32,
    rpc_timeout: Duration,
}

struct Pending {
    map: HashMap<u32, mpsc::Sender<Incoming>>,
    /// Why the connection ended, once it has.
    dead: Option<Ended>,
}

/// Why a connection ended; every call after it fails with [`Ended::error`].
#[derive(Clone)]
enum Ended {
    /// The stream ended or broke, or the agent said why it was closing.
    Closed(String),
    /// The host ended it ([`AgentClient::abort`]): what was already
    /// received for a request is dropped too.
    Aborted(String),
    /// The agent broke the framing or the protocol.
    Hostile(Violation),
}

impl Ended {
    fn error(&self) -> ClientError {
        match self {
            Self::Closed(why) | Self::Aborted(why) => ClientError::Disconnected(why.clone()),
            Self::Hostile(what) => ClientError::Hostile { what: what.clone() },
        }
    }
}

impl Inner {
    /// Ends the connection (the first reason given stands): requests in
    /// flight fail, later calls fail, and the write half is dropped.
    fn end(&self, why: Ended) {
        {
            let mut p = lock(&self.pending);
            if p.dead.is_none() {
                p.dead = Some(why);
            }
            // Dropping the senders wakes every receiver waiting for a frame.
            p.map.clear();
        }
        self.closed.send_replace(true);
        // A write in progress holds the lock; it sees `closed` and drops the
        // writer itself.
        if let Ok(mut w) = self.writer.try_lock() {
            w.take();
        }
    }

    /// The error calls fail with now that the connection has ended.
    fn ended_error(&self) -> ClientError {
        match &lock(&self.pending).dead {
            Some(why) => why.error(),
            None => ClientError::Disconnected("request dropped".into()),
        }
    }
}

/// A connection to one guest agent. Cheap to clone; all clones share the stream.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
    reader: Arc<ReaderGuard>,
}

struct ReaderGuard(tokio::task::AbortHandle);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AgentClient {
    /// Takes over `stream` and starts the reader task. `rpc_timeout` bounds
    /// every request except the output of an exec.
    pub fn new<S>(stream: S, rpc_timeout: Duration) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(Some(Box::new(wr))),
            pending: Mutex::new(Pending {
                map: HashMap::new(),
                dead: None,
            }),
            closed: watch::Sender::new(false),
            // A per-connection random start: frames a previous client left
            // in flight on a shared channel cannot match this one's ids.
            next_id: AtomicU32::new(initial_id()),
            rpc_timeout,
        });
        let task = tokio::spawn(read_loop(rd, Arc::downgrade(&inner)));
        Self {
            inner,
            reader: Arc::new(ReaderGuard(task.abort_handle())),
        }
    }

    /// Why the connection ended, or `None` while it is up.
    pub fn dead_reason(&self) -> Option<String> {
        lock(&self.inner.pending)
            .dead
            .as_ref()
            .map(|why| match why {
                Ended::Closed(why) | Ended::Aborted(why) => why.clone(),
                Ended::Hostile(what) => what.to_string(),
            })
    }

    /// Ends the connection from the host's side, for when the host knows the
    /// guest is gone (its VM powered off, its VMM exited): every request in
    /// flight fails at once, and every later call fails, with
    /// [`ClientError::Disconnected`] carrying `cause`. The reader stops and
    /// the stream is dropped, so the guest sees it close. If the connection
    /// had already ended, its first reason stands.
    pub fn abort(&self, cause: impl Into<String>) {
        self.inner.end(Ended::Aborted(cause.into()));
        // Also drops the reader's sender for a request it was feeding.
        self.reader.0.abort();
    }

    /// Registers a new request id and sends `req` under it.
    async fn start(&self, req: &Request) -> Result<(u32, mpsc::Receiver<Incoming>), ClientError> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let id = loop {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        {
            let mut p = lock(&self.inner.pending);
            if let Some(why) = &p.dead {
                return Err(why.error());
            }
            p.map.insert(id, tx);
        }
        if let Err(e) = self.send(&Frame::json(FrameKind::Request, id, req)).await {
            lock(&self.inner.pending).map.remove(&id);
            return Err(e);
        }
        Ok((id, rx))
    }

    /// Writes one frame; fails with the connection's end once it has ended,
    /// even while a write waits on a guest that stopped reading.
    async fn send(&self, frame: &Frame) -> Result<(), ClientError> {
        let bytes = frame.encode();
        let mut closed = self.inner.closed.subscribe();
        let mut writer = tokio::select! {
            w = self.inner.writer.lock() => w,
            _ = closed.wait_for(|c| *c) => return Err(self.inner.ended_error()),
        };
        let Some(w) = writer.as_mut() else {
            return Err(self.inner.ended_error());
        };
        let written = tokio::select! {
            r = async {
                w.write_all(&bytes).await?;
                w.flush().await
            } => r,
            _ = closed.wait_for(|c| *c) => Ok(()),
        };
        if *closed.borrow() {
            // Ended while writing (or a write failed because it had):
            // report why, and drop the writer `end` could not take.
            writer.take();
            return Err(self.inner.ended_error());
        }
        Ok(written?)
    }

    /// The next frame for a request, or the connection's end. After an
    /// abort, frames already received are dropped rather than delivered.
    async fn recv(&self, rx: &mut mpsc::Receiver<Incoming>) -> Result<Incoming, ClientError> {
        let msg = rx.recv().await;
        let p = lock(&self.inner.pending);
        match (msg, &p.dead) {
            (Some(_), Some(why @ Ended::Aborted(_))) => Err(why.error()),
            (Some(m), _) => Ok(m),
            (None, Some(why)) => Err(why.error()),
            (None, None) => Err(ClientError::Disconnected("request dropped".into())),
        }
    }

    /// Sends `req` and waits (up to the RPC timeout) for its response.
    async fn call(&self, op: &'static str, req: &Request) -> Result<Response, ClientError> {
        let timeout = self.inner.rpc_timeout;
        let fut = async {
            let (_, mut rx) = self.start(req).await?;
            match self.recv(&mut rx).await? {
                Incoming::Response(r) => ok_or_remote(r),
                Incoming::Raw(kind, _) => Err(ClientError::Protocol(format!(
                    "{kind:?} frame in reply to {op}"
                ))),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout { op, timeout })?
    }

    /// Checks the agent is alive and speaks our protocol version.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        match self.call("ping", &Request::Ping).await? {
            Response::Pong(p) if p.protocol == PROTOCOL_VERSION => Ok(p),
            Response::Pong(p) => Err(ClientError::Version {
                agent: p.protocol,
                host: PROTOCOL_VERSION,
            }),
            other => Err(unexpected("ping", other)),
        }
    }

    /// The first call on a connection: says hello (the agent then ends
    /// execs an earlier client left behind) and checks the version, waiting
    /// up to `timeout` for the answer (a booting guest answers once its
    /// agent is up).
    pub async fn handshake(&self, timeout: Duration) -> Result<Pong, ClientError> {
        let fut = async {
            let (_, mut rx) = self.start(&Request::Hello).await?;
            match self.recv(&mut rx).await? {
                Incoming::Response(Response::Pong(p)) if p.protocol == PROTOCOL_VERSION => Ok(p),
                Incoming::Response(Response::Pong(p)) => Err(ClientError::Version {
                    agent: p.protocol,
                    host: PROTOCOL_VERSION,
                }),
                Incoming::Response(r) => Err(unexpected("ping", ok_or_remote(r)?)),
                Incoming::Raw(kind, _) => Err(ClientError::Protocol(format!(
                    "{kind:?} frame in reply to ping"
                ))),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                op: "the first ping",
                timeout,
            })?
    }

    /// Starts a command; read its output and status from the returned stream.
    /// A detached one is [`exec_detached`](Self::exec_detached)'s: here its
    /// answer would read as a protocol error.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecStream, ClientError> {
        let (id, rx) = self.start(&Request::Exec(req)).await?;
        Ok(ExecStream {
            client: self.clone(),
            id,
            rx,
            done: false,
            guard: None,
        })
    }

    /// Starts a command detached ([`ExecRequest::detach`]): it runs on
    /// `/dev/null` in a session of its own and outlives this connection.
    /// Returns its pid in the guest once it started (a command that cannot
    /// start fails with the agent's error). `stdin` and `pty` must be unset.
    pub async fn exec_detached(&self, mut req: ExecRequest) -> Result<u32, ClientError> {
        req.detach = true;
        match self.call("exec", &Request::Exec(req)).await? {
            Response::Started { pid } => Ok(pid),
            other => Err(unexpected("a detached exec", other)),
        }
    }

    /// Watches directory `path` (and the directories below it when
    /// `recursive`); returns once the watch is in place, so every change
    /// after this call is reported.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchStream, ClientError> {
        let req = Request::Watch {
            path: path.to_string(),
            recursive,
        };
        let (id, rx) = self.start(&req).await?;
        let mut stream = WatchStream {
            client: self.clone(),
            id,
            rx,
            done: false,
        };
        let timeout = self.inner.rpc_timeout;
        match tokio::time::timeout(timeout, stream.next()).await {
            Ok(Ok(Some(WatchEvent::Started))) => Ok(stream),
            Ok(Ok(Some(other))) => Err(ClientError::Protocol(format!(
                "watch began with {other:?}, not its start"
            ))),
            Ok(Ok(None)) => Err(ClientError::Protocol("watch ended before it began".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout {
                op: "watch",
                timeout,
            }),
        }
    }

    /// Runs a command to completion, feeding it `stdin` if given, and
    /// collects up to `max_output` bytes of each stream (the rest is dropped
    /// and `truncated` set).
    pub async fn exec_collect(
        &self,
        mut req: ExecRequest,
        stdin: Option<Vec<u8>>,
        max_output: usize,
    ) -> Result<ExecOutput, ClientError> {
        req.stdin = stdin.is_some();
        let mut stream = self.exec(req).await?;
        if let Some(input) = stdin {
            stream.write_stdin(&input).await?;
            stream.close_stdin().await?;
        }
        let mut out = ExecOutput::default();
        loop {
            match stream.next().await? {
                ExecEvent::Stdout(b) => {
                    append_capped(&mut out.stdout, &b, max_output, &mut out.truncated)
                }
                ExecEvent::Stderr(b) => {
                    append_capped(&mut out.stderr, &b, max_output, &mut out.truncated)
                }
                ExecEvent::Exit(status) => {
                    out.status = status;
                    return Ok(out);
                }
            }
        }
    }

    /// Reads a whole file (at most [`MAX_READ_FILE`] bytes).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut buf = Vec::new();
        self.read_file_into(path, &mut buf, MAX_READ_FILE).await?;
        Ok(buf)
    }

    /// Streams a regular file into `sink`; fails with [`ClientError::TooLarge`]
    /// past `limit` bytes, counted as the data arrives (whatever the guest
    /// claims), and with [`ErrorKind::NotARegularFile`] when the path
    /// resolves to a device, a FIFO or a socket. A read that fails or is
    /// dropped midway tells the agent to stop sending.
    pub async fn read_file_into<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        sink: &mut W,
        limit: u64,
    ) -> Result<u64, ClientError> {
        let (id, mut rx) = self.start(&Request::ReadFile { path: path.into() }).await?;
        let mut transfer = Transfer::new(self, id);
        let mut got = 0u64;
        let result = async {
            loop {
                let msg = tokio::time::timeout(self.inner.rpc_timeout, self.recv(&mut rx))
                    .await
                    .map_err(|_| ClientError::Timeout {
                        op: "a file read",
                        timeout: self.inner.rpc_timeout,
                    })??;
                match msg {
                    Incoming::Raw(FrameKind::Data, bytes) => {
                        got += bytes.len() as u64;
                        if got > limit {
                            return Err(ClientError::TooLarge {
                                path: path.into(),
                                limit,
                            });
                        }
                        sink.write_all(&bytes).await?;
                    }
                    Incoming::Raw(kind, _) => {
                        return Err(ClientError::Protocol(format!(
                            "{kind:?} frame in a file read"
                        )))
                    }
                    Incoming::Response(r) => match ok_or_remote(r)? {
                        Response::Done { size } if size == got => return Ok(got),
                        Response::Done { size } => {
                            return Err(ClientError::Protocol(format!(
                                "file read reported {size} bytes but sent {got}"
                            )))
                        }
                        other => return Err(unexpected("read_file", other)),
                    },
                }
            }
        }
        .await;
        match &result {
            Ok(_) => transfer.finished(),
            // The agent already ended this request.
            Err(ClientError::Remote { .. }) => transfer.finished(),
            // Nothing of the guest's to clean up after a read: tell it to
            // stop, without waiting on a guest that may never answer.
            Err(_) => transfer.abandon().await,
        }
        sink.flush().await?;
        result
    }

    /// Writes `data` to `path` (parents created), with permission bits `mode` (0o644 if `None`).
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<u64, ClientError> {
        self.write_file_from(path, data, mode).await
    }

    /// Streams `source` into `path` in the guest. The guest writes a
    /// temporary file and renames it over `path` once all of `source` is
    /// in: if reading `source` fails, the agent refuses, or this future is
    /// dropped midway, `path` is left as it was and nothing partial stays
    /// behind. A full guest disk fails with [`ErrorKind::NoSpace`].
    pub async fn write_file_from<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mut source: R,
        mode: Option<u32>,
    ) -> Result<u64, ClientError> {
        let (id, mut rx) = self
            .start(&Request::WriteFile {
                path: path.into(),
                mode,
            })
            .await?;
        let mut transfer = Transfer::new(self, id);
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = match source.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    transfer.cancel().await;
                    return Err(e.into());
                }
            };
            // An early error from the agent (say, a read-only path or a
            // full disk) ends the upload.
            if let Ok(Incoming::Response(r)) = rx.try_recv() {
                transfer.finished();
                // Finish the data stream so the agent's state for this id is freed.
                self.send(&Frame::new(FrameKind::Data, id, Vec::new()))
                    .await?;
                return Err(match ok_or_remote(r) {
                    Err(e) => e,
                    Ok(other) => unexpected("write_file", other),
                });
            }
            self.send(&Frame::new(FrameKind::Data, id, buf[..n].to_vec()))
                .await?;
            if n == 0 {
                break;
            }
        }
        // The last frame is out: the agent renames whatever else happens.
        transfer.finished();
        let timeout = self.inner.rpc_timeout;
        let msg = tokio::time::timeout(timeout, self.recv(&mut rx))
            .await
            .map_err(|_| ClientError::Timeout {
                op: "a file write",
                timeout,
            })??;
        match msg {
            Incoming::Response(r) => match ok_or_remote(r)? {
                Response::Done { size } => Ok(size),
                other => Err(unexpected("write_file", other)),
            },
            Incoming::Raw(kind, _) => Err(ClientError::Protocol(format!(
                "{kind:?} frame in a file write"
            ))),
        }
    }

    /// Lists a directory.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileEntry>, ClientError> {
        match self
            .call("list_dir", &Request::ListDir { path: path.into() })
            .await?
        {
            Response::Entries { entries } => Ok(entries),
            other => Err(unexpected("list_dir", other)),
        }
    }

    /// Describes a path (a final symlink itself, not what it points to).
    pub async fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        self.stat_op(path, false).await
    }

    /// Describes what a path resolves to, symlinks followed: what a read
    /// would open. A guest may lie; reads check sizes as they stream.
    pub async fn stat_target(&self, path: &str) -> Result<FileStat, ClientError> {
        self.stat_op(path, true).await
    }

    async fn stat_op(&self, path: &str, follow: bool) -> Result<FileStat, ClientError> {
        let req = Request::Stat {
            path: path.into(),
            follow,
        };
        match self.call("stat", &req).await? {
            Response::Stat(s) => Ok(s),
            other => Err(unexpected("stat", other)),
        }
    }

    /// Creates a directory and its parents.
    pub async fn mkdir(&self, path: &str) -> Result<(), ClientError> {
        self.call_ok("mkdir", Request::Mkdir { path: path.into() })
            .await
    }

    /// Removes a file or (with `recursive`, a non-empty) directory.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        self.call_ok(
            "remove",
            Request::Remove {
                path: path.into(),
                recursive,
            },
        )
        .await
    }

    /// Renames a path.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ClientError> {
        self.call_ok(
            "rename",
            Request::Rename {
                from: from.into(),
                to: to.into(),
            },
        )
        .await
    }

    /// Sets the guest clock to the host's.
    pub async fn sync_clock(&self) -> Result<(), ClientError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.call_ok(
            "set_time",
            Request::SetTime {
                unix_nanos: now.as_nanos() as u64,
            },
        )
        .await
    }

    /// Has the guest write everything to its disks (see [`Request::Sync`]).
    pub async fn sync(&self) -> Result<(), ClientError> {
        self.call_ok("sync", Request::Sync).await
    }

    /// Tells the agent a snapshot follows (see [`Request::BeforeSnapshot`]).
    pub async fn before_snapshot(&self) -> Result<(), ClientError> {
        self.call_ok("before_snapshot", Request::BeforeSnapshot)
            .await
    }

    /// Makes a restored or forked guest its own: fresh entropy for its RNG
    /// (from the host's), the host's clock, and `hostname`; and has it grow
    /// its root file system to fill its disk (`disk_bytes`: the size the host
    /// grew the disk to, if it did).
    pub async fn refresh_identity(
        &self,
        hostname: Option<&str>,
        disk_bytes: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut entropy = vec![0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.call_ok(
            "refresh",
            Request::Refresh {
                entropy,
                unix_nanos: now.as_nanos() as u64,
                hostname: hostname.map(str::to_string),
                disk_bytes,
            },
        )
        .await
    }

    /// Asks the guest to flush its disks and power off.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call_ok("shutdown", Request::Shutdown).await
    }

    async fn call_ok(&self, op: &'static str, req: Request) -> Result<(), ClientError> {
        match self.call(op, &req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(op, other)),
        }
    }
}

/// A file read or write in progress under request `id`. Unless marked
/// finished, it is cancelled: awaited on an error path (so the guest has
/// stopped, and removed a half-written file, when the error is returned),
/// or from a task when the transfer's future is dropped.
struct Transfer<'a> {
    client: &'a AgentClient,
    id: u32,
    open: bool,
}

impl<'a> Transfer<'a> {
    fn new(client: &'a AgentClient, id: u32) -> Self {
        Self {
            client,
            id,
            open: true,
        }
    }

    /// The agent has ended this request itself: nothing to cancel.
    fn finished(&mut self) {
        self.open = false;
    }

    /// Stops routing the request's frames to us and sends the agent a
    /// `cancel`, without waiting for its answer (dropped when it comes).
    async fn abandon(&mut self) {
        self.open = false;
        lock(&self.client.inner.pending).map.remove(&self.id);
        let req = Request::Cancel {
            request_id: self.id,
        };
        match self.client.start(&req).await {
            // Its answer, if one comes, goes to an id nobody waits for.
            Ok((cancel, _)) => {
                lock(&self.client.inner.pending).map.remove(&cancel);
            }
            Err(e) => tracing::debug!("cancelling file transfer {}: {e}", self.id),
        }
    }

    /// Stops routing the request's frames to us and tells the agent to
    /// abandon it, waiting (up to the RPC timeout) for its answer.
    async fn cancel(&mut self) {
        self.open = false;
        lock(&self.client.inner.pending).map.remove(&self.id);
        let req = Request::Cancel {
            request_id: self.id,
        };
        if let Err(e) = self.client.call_ok("cancel", req).await {
            tracing::debug!("cancelling file transfer {}: {e}", self.id);
        }
    }
}

impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        if self.open {
            cancel_soon(self.client, self.id);
        }
    }
}

fn initial_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mixed = nanos.wrapping_mul(2_654_435_761) ^ std::process::id().rotate_left(16);
    mixed.max(1)
}

fn append_capped(buf: &mut Vec<u8>, bytes: &[u8], max: usize, truncated: &mut bool) {
    let room = max.saturating_sub(buf.len());
    if bytes.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn ok_or_remote(r: Response) -> Result<Response, ClientError> {
    match r {
        Response::Error { kind, message } => Err(ClientError::Remote { kind, message }),
        other => Ok(other),
    }
}

fn unexpected(op: &str, r: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer to {op}: {r:?}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, inner: std::sync::Weak<Inner>) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 256 * 1024];
    let hostile =
        |e, decoder: &FrameDecoder| Ended::Hostile(Violation::from_frame_error(e, decoder));
    let why = 'conn: loop {
        let want = decoder.want().min(buf.len());
        let n = match rd.read(&mut buf[..want]).await {
            Ok(0) => match decoder.finish() {
                Ok(()) => break Ended::Closed("the agent closed the stream".into()),
                Err(e) => break hostile(e, &decoder),
            },
            Ok(n) => n,
            Err(e) => break Ended::Closed(format!("read failed: {e}")),
        };
        decoder.push(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn hostile(e, &decoder),
            };
            let Some(inner) = inner.upgrade() else { return };
            let (kind, id) = (frame.kind, frame.id);
            let incoming = match kind {
                FrameKind::Request | FrameKind::Stdin => {
                    break 'conn Ended::Hostile(Violation::HostOnlyKind { kind, id })
                }
                // Connection-level message from the agent: it is closing on us.
                FrameKind::Response if id == 0 => match frame.parse::<Response>() {
                    Ok(Response::Error { message, .. }) => {
                        break 'conn Ended::Closed(format!("the agent ended it: {message}"))
                    }
                    _ => break 'conn Ended::Hostile(Violation::RequestZero { kind }),
                },
                _ if id == 0 => break 'conn Ended::Hostile(Violation::RequestZero { kind }),
                FrameKind::Response => match frame.parse::<Response>() {
                    Ok(r) => Incoming::Response(r),
                    Err(e) => {
                        break 'conn Ended::Hostile(Violation::BadResponse {
                            id,
                            error: Arc::new(e),
                        })
                    }
                },
                FrameKind::Stdout | FrameKind::Stderr | FrameKind::Data => {
                    Incoming::Raw(kind, frame.payload)
                }
            };
            let is_final = matches!(incoming, Incoming::Response(_));
            let tx = {
                let mut p = lock(&inner.pending);
                if is_final {
                    p.map.remove(&id)
                } else {
                    p.map.get(&id).cloned()
                }
            };
            drop(inner);
            // No sender: an id we never issued or that has finished. Dropped.
            if let Some(tx) = tx {
                // Waits while the consumer is behind: backpressure, not buffering.
                let _ = tx.send(incoming).await;
            }
        }
    };
    if let Some(inner) = inner.upgrade() {
        match &why {
            Ended::Hostile(what) => tracing::warn!(%what, "agent connection ended"),
            Ended::Closed(why) | Ended::Aborted(why) => {
                tracing::debug!(%why, "agent connection ended")
            }
        }
        inner.end(why);
    }
}

#[cfg(test)]
mod tests;

/// One piece of a running command's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes the command wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The command ended; nothing follows.
    Exit(ExitStatus),
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Collected stdout.
    pub stdout: Vec<u8>,
    /// Collected stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
    /// True when output past the cap was dropped.
    pub truncated: bool,
}

/// A running command.
pub struct ExecStream {
    client: AgentClient,
    id: u32,
    rx: mpsc::Receiver<Incoming>,
    done: bool,
    /// Dropped with the stream ([`ExecStream::with_guard`]).
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl ExecStream {
    /// Keeps `guard` until the stream is dropped: whatever its `Drop` does
    /// (timing the command, say) happens when the caller is done with it.
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// The next event; after [`ExecEvent::Exit`] there are no more.
    pub async fn next(&mut self) -> Result<ExecEvent, ClientError> {
        if self.done {
            return Err(ClientError::Protocol("exec already finished".into()));
        }
        match self.client.recv(&mut self.rx).await? {
            Incoming::Raw(FrameKind::Stdout, b) => Ok(ExecEvent::Stdout(b)),
            Incoming::Raw(FrameKind::Stderr, b) => Ok(ExecEvent::Stderr(b)),
            Incoming::Raw(kind, _) => {
                Err(ClientError::Protocol(format!("{kind:?} frame in an exec")))
            }
            Incoming::Response(r) => match ok_or_remote(r) {
                Ok(Response::Exited(status)) => {
                    self.done = true;
                    Ok(ExecEvent::Exit(status))
                }
                Ok(other) => Err(unexpected("exec", other)),
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            },
        }
    }

    /// Sends bytes to the command's stdin (the request must have set `stdin`).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.stdin().write(data).await
    }

    /// Closes the command's stdin.
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.stdin().close().await
    }

    /// A handle that feeds stdin from another task while this one reads output.
    pub fn stdin(&self) -> StdinHandle {
        StdinHandle {
            client: self.client.clone(),
            id: self.id,
        }
    }

    /// Sends `signal` to the command's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.stdin().signal(signal).await
    }
}

/// Feeds a running command's stdin.
#[derive(Clone)]
pub struct StdinHandle {
    client: AgentClient,
    id: u32,
}

impl StdinHandle {
    /// Sends bytes to the command's stdin.
    pub async fn write(&self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(CHUNK_SIZE) {
            self.client
                .send(&Frame::new(FrameKind::Stdin, self.id, chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Closes the command's stdin: it reads end-of-file.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.client
            .send(&Frame::new(FrameKind::Stdin, self.id, Vec::new()))
            .await
    }

    /// Sends `signal` to the command's process group (from a task other
    /// than the one reading its output).
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.client
            .call_ok(
                "signal",
                Request::Signal {
                    exec_id: self.id,
                    signal,
                },
            )
            .await
    }

    /// Resizes the command's terminal (it must have been started with a
    /// `pty`).
    pub async fn resize(&self, size: PtySize) -> Result<(), ClientError> {
        self.client
            .call_ok(
                "resize",
                Request::Resize {
                    exec_id: self.id,
                    size,
                },
            )
            .await
    }
}

/// A directory watch ([`AgentClient::watch`]); dropped unfinished, it is
/// cancelled in the guest.
pub struct WatchStream {
    client: AgentClient,
    id: u32,
    rx: mpsc::Receiver<Incoming>,
    done: bool,
}

impl WatchStream {
    /// The next change, or `None` once the watch ended (the directory went).
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        match self.client.recv(&mut self.rx).await? {
            Incoming::Raw(FrameKind::Data, b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("bad watch event: {e}"))),
            Incoming::Raw(kind, _) => {
                Err(ClientError::Protocol(format!("{kind:?} frame in a watch")))
            }
            Incoming::Response(r) => {
                self.done = true;
                match ok_or_remote(r)? {
                    Response::Ok => Ok(None),
                    other => Err(unexpected("watch", other)),
                }
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if !self.done {
            cancel_soon(&self.client, self.id);
        }
    }
}

/// Stops routing request `request_id`'s frames and, from a task, tells
/// the agent to abandon it (its answer is dropped).
fn cancel_soon(client: &AgentClient, request_id: u32) {
    lock(&client.inner.pending).map.remove(&request_id);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let client = client.clone();
        rt.spawn(async move {
            let _ = client
                .call_ok("cancel", Request::Cancel { request_id })
                .await;
        });
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Abandoned before it ended: kill it rather than leave it running.
        lock(&self.client.inner.pending).map.remove(&self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let exec_id = self.id;
            rt.spawn(async move {
                let _ = client
                    .call_ok("signal", Request::Signal { exec_id, signal: 9 })
                    .await;
            });
        }
    }
}

/// Transfers against an agent that lies about what it sends.
#[cfg(test)]
mod transfer_tests {
    use super::*;

    /// A fake agent on the other end of `stream`: answers every
    /// `ReadFile` with data that never ends (as a lying or hostile guest
    /// might), drops `WriteFile` data, and reports each request it saw.
    async fn lying_agent(stream: tokio::io::DuplexStream, seen: mpsc::UnboundedSender<Request>) {
        let (mut rd, wr) = tokio::io::split(stream);
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            while let Ok(Some(frame)) = dec.next_frame() {
                if frame.kind != FrameKind::Request {
                    continue;
                }
                let req: Request = frame.parse().unwrap();
                let _ = seen.send(req.clone());
                let id = frame.id;
                match req {
                    Request::ReadFile { .. } => {
                        let wr = wr.clone();
                        tokio::spawn(async move {
                            let chunk = Frame::new(FrameKind::Data, id, vec![0; CHUNK_SIZE]);
                            while wr.lock().await.write_all(&chunk.encode()).await.is_ok() {}
                        });
                    }
                    Request::Cancel { .. } => {
                        let ok = Frame::json(FrameKind::Response, id, &Response::Ok);
                        let _ = wr.lock().await.write_all(&ok.encode()).await;
                    }
                    _ => {}
                }
            }
        }
    }

    fn client() -> (AgentClient, mpsc::UnboundedReceiver<Request>) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(lying_agent(theirs, tx));
        (AgentClient::new(ours, Duration::from_secs(10)), rx)
    }

    #[tokio::test]
    async fn a_read_stops_at_its_limit_whatever_the_guest_sends_and_cancels_it() {
        let (c, mut seen) = client();
        let mut sink = Vec::new();
        let limit = 1_000_000;
        match c.read_file_into("/root/zero", &mut sink, limit).await {
            Err(ClientError::TooLarge { limit: l, .. }) => assert_eq!(l, limit),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(sink.len() as u64 <= limit, "{} bytes kept", sink.len());
        match seen.recv().await.unwrap() {
            Request::ReadFile { path } => assert_eq!(path, "/root/zero"),
            other => panic!("{other:?}"),
        }
        let routed = lock(&c.inner.pending).map.len();
        assert_eq!(routed, 0, "the read's frames are no longer routed");
        assert!(matches!(seen.recv().await.unwrap(), Request::Cancel { .. }));
    }

    #[tokio::test]
    async fn a_write_whose_source_fails_is_cancelled_before_the_error_returns() {
        let (c, mut seen) = client();
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::Error::other("over the limit")))
            }
        }
        let e = c
            .write_file_from("/root/f", Broken, None)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Io(_)), "{e:?}");
        match seen.recv().await.unwrap() {
            Request::WriteFile { path, .. } => assert_eq!(path, "/root/f"),
            other => panic!("{other:?}"),
        }
        // Already seen by the agent (and answered) when the error came back.
        assert!(matches!(seen.try_recv().unwrap(), Request::Cancel { .. }));
    }
}
