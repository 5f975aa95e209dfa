//! One connection to the host: read frames, dispatch requests, write replies.
//!
//! The reading thread handles quick requests inline and hands long ones (exec,
//! file reads) to threads of their own; every thread writes whole frames
//! through the connection's [`Writer`]. A frame that cannot be decoded ends
//! the connection: the stream cannot be resynchronised after it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petty_protocol::{
    ErrorKind, Frame, FrameDecoder, FrameError, FrameKind, Pong, Request, Response,
    PROTOCOL_VERSION,
};

use crate::{exec, files};

/// Largest payload of a data frame the agent sends (file data, output): a
/// whole frame then fits one write to the virtio-serial port, which takes
/// at most 32 KiB per call and hands each call to the host as one buffer.
/// A frame is thus delivered whole or dropped whole when a host goes away,
/// and never split between one host and the next (which would leave the
/// next one mid-frame).
pub const SEND_CHUNK: usize = 32 * 1024 - petty_protocol::HEADER_LEN;

/// Writes whole frames to the host from any thread. Once the connection is
/// over, writes are dropped, so threads of a finished connection cannot
/// interleave stale frames into the next one.
pub struct Writer {
    out: Mutex<Box<dyn Write + Send>>,
    closed: AtomicBool,
}

impl Writer {
    pub fn new(out: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            out: Mutex::new(out),
            closed: AtomicBool::new(false),
        })
    }

    /// Sends one frame; false when the connection is gone.
    pub fn send(&self, frame: &Frame) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let bytes = frame.encode();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.write_all(&bytes).and_then(|_| out.flush()).is_err() {
            self.closed.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn respond(&self, id: u32, response: &Response) -> bool {
        self.send(&Frame::json(FrameKind::Response, id, response))
    }

    pub fn error(&self, id: u32, kind: ErrorKind, message: impl Into<String>) -> bool {
        self.respond(
            id,
            &Response::Error {
                kind,
                message: message.into(),
            },
        )
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// A running exec, as the reading thread sees it. Registered by the reading
/// thread before the exec starts, so stdin that follows the request at once
/// is never dropped.
pub struct ExecSlot {
    /// The command's process group, once it is spawned.
    pub pgid: Option<libc::pid_t>,
    /// Feeds the command's stdin; `None` once the host closed it.
    pub stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// The controlling side of its terminal, when it runs on one.
    pub terminal: Option<Arc<std::os::fd::OwnedFd>>,
    /// Signals the host sent before it was spawned: delivered as soon as
    /// its group exists (a kill right after the start is not lost).
    pub pending_signals: Vec<i32>,
}

/// State shared by the threads of one connection.
pub struct Conn {
    pub writer: Arc<Writer>,
    pub execs: Mutex<HashMap<u32, ExecSlot>>,
    /// File reads and directory watches in progress, by request id: set
    /// the flag to stop one.
    pub reads: Mutex<HashMap<u32, Arc<AtomicBool>>>,
}

/// A file being written from `Data` frames.
enum Upload {
    Open(files::Upload),
    /// Opening failed and the error was sent; swallow the data that follows.
    Discard,
}

/// How a connection ended.
pub enum End {
    /// The host closed the stream.
    Eof,
    /// The stream broke the framing rules.
    Protocol(FrameError),
    /// Reading failed.
    Io(std::io::Error),
    /// The host asked for power-off.
    Shutdown,
}

/// Serves one connection until it ends.
pub fn serve(mut input: impl Read, writer: Arc<Writer>) -> End {
    let conn = Arc::new(Conn {
        writer,
        execs: Mutex::new(HashMap::new()),
        reads: Mutex::new(HashMap::new()),
    });
    let mut uploads: HashMap<u32, Upload> = HashMap::new();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 128 * 1024];
    let end = 'conn: loop {
        let want = decoder.want().min(buf.len());
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => match decoder.finish() {
                Ok(()) => break End::Eof,
                Err(e) => break End::Protocol(e),
            },
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break End::Io(e),
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if handle_frame(&conn, &mut uploads, frame) {
                        break 'conn End::Shutdown;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    conn.writer
                        .error(0, ErrorKind::InvalidRequest, format!("protocol error: {e}"));
                    break 'conn End::Protocol(e);
                }
            }
        }
    };
    // Whatever this connection started is orphaned now: stop it.
    conn.writer.close();
    kill_execs(&conn);
    end
}

/// Largest first frame a connection that must authenticate may send: an
/// auth request is a few dozen bytes, and nothing bigger is read from a
/// peer not known yet.
const MAX_AUTH_FRAME: usize = 4096;

/// Reads exactly one frame from `input` (nothing after it, so the
/// connection's next frame is [`serve`]'s first) and answers it: true when
/// it is [`Request::Auth`] carrying `token` (compared in constant time).
/// Anything else, a frame over [`MAX_AUTH_FRAME`] or a read error, is a
/// refusal, which says no more than that whatever was wrong.
pub fn authenticate(input: &mut impl Read, w: &Writer, token: &str) -> bool {
    let mut len = [0u8; 4];
    if input.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u32::from_be_bytes(len) as usize;
    if !(5..=MAX_AUTH_FRAME).contains(&n) {
        w.error(0, ErrorKind::PermissionDenied, "authenticate first");
        return false;
    }
    let mut bytes = len.to_vec();
    bytes.resize(4 + n, 0);
    if input.read_exact(&mut bytes[4..]).is_err() {
        return false;
    }
    let mut decoder = FrameDecoder::new();
    decoder.push(&bytes);
    let Ok(Some(frame)) = decoder.next_frame() else {
        return false;
    };
    let given = match (frame.kind, frame.parse::<Request>()) {
        (FrameKind::Request, Ok(Request::Auth { token })) => Some(token),
        _ => None,
    };
    let ok = given.is_some_and(|g| petty_protocol::tcp::token_matches(token, &g));
    if ok {
        w.respond(frame.id, &Response::Ok);
    } else {
        w.error(
            frame.id,
            ErrorKind::PermissionDenied,
            "this channel needs the VM's token first (an auth request)",
        );
    }
    ok
}

/// Kills every exec the connection still runs.
fn kill_execs(conn: &Conn) {
    for (_, slot) in conn.execs.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        if let Some(pgid) = slot.pgid {
            // SAFETY: kill only sends a signal; a stale pgid at worst hits nothing.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pong() -> Response {
    Response::Pong(Pong {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel_release(),
    })
}

/// Handles one frame; true when the host asked for shutdown.
fn handle_frame(conn: &Arc<Conn>, uploads: &mut HashMap<u32, Upload>, frame: Frame) -> bool {
    let w = &conn.writer;
    match frame.kind {
        FrameKind::Request => {
            let req: Request = match frame.parse() {
                Ok(r) => r,
                Err(e) => {
                    w.error(
                        frame.id,
                        ErrorKind::InvalidRequest,
                        format!("bad request: {e}"),
                    );
                    return false;
                }
            };
            return handle_request(conn, uploads, frame.id, req);
        }
        FrameKind::Stdin => {
            let mut execs = conn.execs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = execs.get_mut(&frame.id) {
                if frame.payload.is_empty() {
                    slot.stdin = None;
                } else if let Some(tx) = &slot.stdin {
                    let _ = tx.send(frame.payload);
                }
            }
            // Stdin for an exec that already ended is dropped, as a pipe would.
        }
        FrameKind::Data => match uploads.get_mut(&frame.id) {
            Some(Upload::Open(up)) => {
                if frame.payload.is_empty() {
                    if let Some(Upload::Open(up)) = uploads.remove(&frame.id) {
                        let what = format!("write {}", up.target().display());
                        match up.finish() {
                            Ok(size) => w.respond(frame.id, &Response::Done { size }),
                            Err(e) => files::send_io_error(w, frame.id, &what, &e),
                        };
                    }
                } else if let Err(e) = up.write(&frame.payload) {
                    let what = format!("write {}", up.target().display());
                    files::send_io_error(w, frame.id, &what, &e);
                    // Dropping the upload removes its temporary file.
                    uploads.insert(frame.id, Upload::Discard);
                }
            }
            Some(Upload::Discard) => {
                if frame.payload.is_empty() {
                    uploads.remove(&frame.id);
                }
            }
            None => {
                w.error(
                    frame.id,
                    ErrorKind::InvalidRequest,
                    format!("data for request {} which is not a file write", frame.id),
                );
            }
        },
        FrameKind::Response | FrameKind::Stdout | FrameKind::Stderr => {
            w.error(
                frame.id,
                ErrorKind::InvalidRequest,
                format!("{:?} frames go from guest to host, not back", frame.kind),
            );
        }
    }
    false
}

fn handle_request(
    conn: &Arc<Conn>,
    uploads: &mut HashMap<u32, Upload>,
    id: u32,
    req: Request,
) -> bool {
    let w = &conn.writer;
    match req {
        Request::Hello => {
            // A new client: what earlier clients left running is orphaned.
            kill_execs(conn);
            // Their file reads would flood the new client's stream, and
            // their half-written uploads are removed.
            for flag in lock(&conn.reads).values() {
                flag.store(true, Ordering::Relaxed);
            }
            uploads.clear();
            static BOOTED: AtomicBool = AtomicBool::new(false);
            if !BOOTED.swap(true, Ordering::SeqCst) {
                warm_exec_path();
            } else {
                // A restored copy whose new host connected before the old
                // one was seen gone (the usual order: QEMU connects its
                // socket right after loading).
                warm_if_restored();
            }
            w.respond(id, &pong());
        }
        Request::Ping => {
            w.respond(id, &pong());
        }
        // Checked before anything else (see `serve`); again later, or on a
        // channel that needs none, it is a no-op.
        Request::Auth { .. } => {
            w.respond(id, &Response::Ok);
        }
        Request::Exec(req) if req.detach => {
            // Tied to no connection: no slot, so neither this connection's
            // end nor a new client's hello ends it; nor can stdin or a
            // signal reach it through the protocol.
            exec::start(conn.clone(), id, req, None);
        }
        Request::Exec(req) => {
            let (tx, rx) = if req.stdin {
                let (tx, rx) = mpsc::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            conn.execs.lock().unwrap_or_else(|e| e.into_inner()).insert(
                id,
                ExecSlot {
                    pgid: None,
                    stdin: tx,
                    terminal: None,
                    pending_signals: Vec::new(),
                },
            );
            exec::start(conn.clone(), id, req, rx);
        }
        Request::Signal { exec_id, signal } => {
            let mut execs = conn.execs.lock().unwrap_or_else(|e| e.into_inner());
            match execs.get_mut(&exec_id) {
                // SAFETY: kill only sends a signal.
                Some(ExecSlot {
                    pgid: Some(pgid), ..
                }) => match unsafe { libc::kill(-*pgid, signal) } {
                    0 => w.respond(id, &Response::Ok),
                    _ => files::send_io_error(w, id, "signal", &std::io::Error::last_os_error()),
                },
                // Still being spawned: it gets the signal once it exists.
                Some(slot) => {
                    slot.pending_signals.push(signal);
                    w.respond(id, &Response::Ok)
                }
                None => w.error(
                    id,
                    ErrorKind::InvalidRequest,
                    format!("no running exec with id {exec_id}"),
                ),
            };
        }
        Request::Resize { exec_id, size } => {
            let terminal = conn
                .execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&exec_id)
                .map(|s| s.terminal.clone());
            match terminal {
                Some(Some(t)) => match exec::resize(&t, size) {
                    Ok(()) => w.respond(id, &Response::Ok),
                    Err(e) => files::send_io_error(w, id, "resize", &e),
                },
                Some(None) => w.error(
                    id,
                    ErrorKind::InvalidRequest,
                    format!("exec {exec_id} has no terminal; start it with a pty to resize it"),
                ),
                None => w.error(
                    id,
                    ErrorKind::InvalidRequest,
                    format!("no running exec with id {exec_id}"),
                ),
            };
        }
        Request::Watch { path, recursive } => {
            let cancel = Arc::new(AtomicBool::new(false));
            lock(&conn.reads).insert(id, cancel.clone());
            let c = conn.clone();
            let started = crate::workers::run(move || {
                crate::watch::watch(&c.writer, id, &path, recursive, &cancel);
                lock(&c.reads).remove(&id);
            });
            if let Err(e) = started {
                lock(&conn.reads).remove(&id);
                files::send_io_error(w, id, "start a watch", &e);
            }
        }
        Request::ReadFile { path } => {
            let cancel = Arc::new(AtomicBool::new(false));
            lock(&conn.reads).insert(id, cancel.clone());
            let c = conn.clone();
            let started = crate::workers::run(move || {
                files::read_file(&c.writer, id, &path, &cancel);
                lock(&c.reads).remove(&id);
            });
            if let Err(e) = started {
                lock(&conn.reads).remove(&id);
                files::send_io_error(w, id, "start a file read", &e);
            }
        }
        Request::WriteFile { path, mode } => match files::Upload::open(&path, mode) {
            Ok(up) => {
                uploads.insert(id, Upload::Open(up));
            }
            Err(e) => {
                e.send(w, id);
                uploads.insert(id, Upload::Discard);
            }
        },
        Request::Cancel { request_id } => {
            // Dropping an unfinished upload removes its temporary file.
            uploads.remove(&request_id);
            if let Some(flag) = lock(&conn.reads).get(&request_id) {
                flag.store(true, Ordering::Relaxed);
            }
            w.respond(id, &Response::Ok);
        }
        Request::ListDir { path } => files::list_dir(w, id, &path),
        Request::Stat { path, follow } => files::stat(w, id, &path, follow),
        Request::Mkdir { path } => files::mkdir(w, id, &path),
        Request::Remove { path, recursive } => files::remove(w, id, &path, recursive),
        Request::Rename { from, to } => files::rename(w, id, &from, &to),
        Request::SetTime { unix_nanos } => {
            match crate::init::set_clock(unix_nanos) {
                Ok(()) => w.respond(id, &Response::Ok),
                Err(e) => files::send_io_error(w, id, "set clock", &e),
            };
        }
        Request::Refresh {
            entropy,
            unix_nanos,
            hostname,
            disk_bytes,
        } => {
            // Sent once after every restore or fork: the user's first
            // command comes right after it. Warmed already when the guest
            // woke to find its host gone (see `warm_if_restored`).
            if !WARMED_AT_WAKE.swap(false, Ordering::SeqCst) {
                warm_exec_path();
            }
            match crate::init::refresh(&entropy, unix_nanos, hostname.as_deref()) {
                Ok(()) => {
                    // Answered after the file system has grown, so the
                    // sandbox is ready with all of its disk.
                    // Only when the host grew the disk: otherwise the file
                    // system fits its disk already (reading the superblock
                    // is a first-use disk path, slow under emulation).
                    if disk_bytes.is_some() {
                        crate::disk::grow_root(disk_bytes, Duration::from_secs(5));
                    }
                    w.respond(id, &Response::Ok)
                }
                Err(e) => files::send_io_error(w, id, "refresh identity", &e),
            };
        }
        Request::BeforeSnapshot => {
            WARM_AT_WAKE.store(true, Ordering::SeqCst);
            // The host pauses the guest right after the answer, so a timer
            // armed before it fires in each restored copy a moment after it
            // wakes (guest time stands still while it is paused and saved).
            let (armed_tx, armed) = mpsc::channel();
            let timer = std::thread::Builder::new()
                .name("warm-at-wake".into())
                .spawn(move || {
                    let _ = armed_tx.send(());
                    std::thread::sleep(WAKE_TIMER);
                    warm_if_restored();
                });
            if timer.is_ok() {
                let _ = armed.recv();
            }
            w.respond(id, &Response::Ok);
        }
        Request::Sync => {
            // SAFETY: sync takes no arguments and cannot fail.
            unsafe { libc::sync() };
            w.respond(id, &Response::Ok);
        }
        Request::Shutdown => {
            w.respond(id, &Response::Ok);
            return true;
        }
    }
    false
}

/// How long after [`Request::BeforeSnapshot`] the agent warms its exec path:
/// in guest time, which stands still from the host's pause until a restored
/// copy runs, so the timer fires in every copy early in its wake (measured:
/// ~9 ms before the new host's greeting is read), and in the snapshotted
/// guest itself once it resumes, where it costs one spawn.
const WAKE_TIMER: Duration = Duration::from_millis(5);

/// Set by [`Request::BeforeSnapshot`]: the next [`warm_if_restored`] (its
/// timer, a host seen gone or a new host's hello) may be a restored copy
/// waking up.
static WARM_AT_WAKE: AtomicBool = AtomicBool::new(false);
/// Set when [`warm_if_restored`] warmed the exec path, so the refresh that
/// follows a restore does not do it again.
static WARMED_AT_WAKE: AtomicBool = AtomicBool::new(false);

/// Called by the timer [`Request::BeforeSnapshot`] arms ([`WAKE_TIMER`]),
/// when the host's connection ends and when a host says hello: whichever
/// comes first in a guest restored from a snapshot the host announced warms
/// the exec path, before the host's refresh is served. In the snapshotted
/// guest itself this costs one spawn, once.
pub fn warm_if_restored() {
    if WARM_AT_WAKE.swap(false, Ordering::SeqCst) {
        WARMED_AT_WAKE.store(true, Ordering::SeqCst);
        warm_exec_path();
    }
}

/// Runs `sh -c true` once through the exec path in the background, output
/// discarded. A VMM process that just booted or restored a guest has run
/// little of its code; under software emulation it translates each guest
/// code path (spawn, the dynamic loader, libc start-up, exit, wait) on first
/// use, so the host's first command would pay for that. Started when a guest
/// is first greeted after boot and at each refresh after a restore, it
/// overlaps with the host's remaining set-up; on the guest it costs one spawn.
fn warm_exec_path() {
    let conn = Arc::new(Conn {
        writer: Writer::new(Box::new(std::io::sink())),
        execs: Mutex::new(HashMap::from([(
            0,
            ExecSlot {
                pgid: None,
                stdin: None,
                terminal: None,
                pending_signals: Vec::new(),
            },
        )])),
        reads: Mutex::new(HashMap::new()),
    });
    // The shell: most commands come through it (`ExecRequest::shell`).
    let mut req = petty_protocol::ExecRequest::shell("true");
    req.timeout_ms = Some(10_000);
    exec::start(conn, 0, req, None);
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `petty-agent --stdio`: one connection on stdin/stdout, for host-side tests.
/// Exit 0 on a clean end of input, 2 when the input broke the protocol.
pub fn serve_stdio() -> ExitCode {
    // SAFETY: fds 0 and 1 are ours for the life of the process.
    let (input, output) = unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) };
    let writer = Writer::new(Box::new(output));
    match serve(input, writer) {
        End::Eof | End::Shutdown => ExitCode::SUCCESS,
        End::Protocol(e) => {
            eprintln!("petty-agent: closing connection: {e}");
            ExitCode::from(2)
        }
        End::Io(e) => {
            eprintln!("petty-agent: closing connection: read failed: {e}");
            ExitCode::from(2)
        }
    }
}
