//! Running commands: fork/exec in a new process group, stream stdout and
//! stderr as they come, feed stdin, enforce the timeout by killing the whole
//! group, and report a shell-style exit status. A detached command is
//! started in a session of its own on `/dev/null`, answered with its pid
//! and left to the reaper.
//!
//! The agent spawns by hand rather than through `std::process::Command`: as
//! PID 1 it reaps every child itself, and std's own `waitpid` calls on failed
//! spawns would race that reaper.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petty_protocol::{
    Command, ErrorKind, ExecRequest, ExitStatus, Frame, FrameKind, PtySize, Response,
};

use crate::files;
use crate::reaper::reaper;
use crate::server::{Conn, Writer};

/// Where commands run when the request names no directory.
pub const DEFAULT_CWD: &str = "/root";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts `req` on a thread of its own; the thread sends the output frames and
/// the final `Exited` (or `Error`) response for `id`.
/// `stdin` carries the host's stdin chunks when the request asked for stdin.
pub fn start(conn: Arc<Conn>, id: u32, req: ExecRequest, stdin: Option<mpsc::Receiver<Vec<u8>>>) {
    let thread_conn = conn.clone();
    let spawned = crate::workers::run(move || {
        run(&thread_conn, id, req, stdin);
        forget(&thread_conn, id);
    });
    if let Err(e) = spawned {
        forget(&conn, id);
        conn.writer
            .error(id, ErrorKind::Io, format!("cannot start exec thread: {e}"));
    }
}

fn forget(conn: &Conn, id: u32) {
    conn.execs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

fn run(conn: &Arc<Conn>, id: u32, req: ExecRequest, stdin_rx: Option<mpsc::Receiver<Vec<u8>>>) {
    let w = &conn.writer;
    let io = match (req.detach, req.pty) {
        (true, None) if !req.stdin => Io::Detached,
        (true, _) => {
            w.error(
                id,
                ErrorKind::InvalidRequest,
                "a detached exec runs on /dev/null: it takes neither stdin nor a pty",
            );
            return;
        }
        (false, Some(size)) => Io::Terminal(size),
        (false, None) => Io::Pipes,
    };
    // Another user: resolved in the guest's own tables, its HOME and USER
    // the defaults the request's variables may still override.
    let creds = match req.user.as_deref().filter(|u| !u.is_empty()) {
        None => None,
        Some(spec) => match crate::user::resolve(spec) {
            Ok(c) => Some(c),
            Err(msg) => {
                w.error(id, ErrorKind::InvalidRequest, msg);
                return;
            }
        },
    };
    let mut extra = Vec::new();
    if let Some(c) = &creds {
        extra.push((
            "HOME".to_string(),
            c.home.clone().unwrap_or_else(|| "/".into()),
        ));
        extra.push((
            "USER".to_string(),
            c.name.clone().unwrap_or_else(|| c.uid.to_string()),
        ));
    }
    extra.extend(req.env.iter().cloned());
    let env = build_env(&extra);
    let cwd = req.cwd.clone().unwrap_or_else(default_cwd);
    if !Path::new(&cwd).is_dir() {
        w.error(
            id,
            ErrorKind::NotFound,
            format!("working directory {cwd} does not exist in the sandbox"),
        );
        return;
    }
    let argv: Vec<String> = match req.command {
        Command::Argv(argv) if argv.is_empty() => {
            w.error(id, ErrorKind::InvalidRequest, "empty command");
            return;
        }
        Command::Argv(argv) => argv,
        Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script],
    };
    let path_var = env
        .iter()
        .find_map(|(k, v)| (k == "PATH").then_some(v.as_str()))
        .unwrap_or(DEFAULT_PATH);
    let Some(program) = resolve(&argv[0], path_var, &cwd) else {
        if req.detach {
            // Nothing streams for a detached exec: the answer says it.
            w.error(
                id,
                ErrorKind::NotFound,
                format!("{}: command not found in the sandbox", argv[0]),
            );
            return;
        }
        let msg = format!("petty-agent: {}: command not found\n", argv[0]);
        w.send(&Frame::new(FrameKind::Stderr, id, msg.into_bytes()));
        w.respond(id, &Response::Exited(not_run(127)));
        return;
    };

    // posix_spawn cannot change credentials: the agent itself starts,
    // drops to the user and execs the program.
    let (program, argv) = match creds.filter(|c| c.uid != 0 || c.gid != 0) {
        None => (program, argv),
        Some(c) => {
            let mut wrapped = vec![
                "petty-agent".to_string(),
                "--run-as".to_string(),
                c.arg(),
                program.to_string_lossy().into_owned(),
            ];
            wrapped.extend(argv);
            (PathBuf::from("/proc/self/exe"), wrapped)
        }
    };
    let child = match spawn(&program, &argv, &env, &cwd, req.stdin, io) {
        Ok(c) => c,
        Err(e) if req.detach => {
            files::send_io_error(w, id, &format!("start {}", argv[0]), &e);
            return;
        }
        Err(e) => {
            let code = match e.raw_os_error() {
                Some(libc::ENOENT) => 127,
                _ => 126,
            };
            let msg = format!("petty-agent: {}: {e}\n", argv[0]);
            w.send(&Frame::new(FrameKind::Stderr, id, msg.into_bytes()));
            w.respond(id, &Response::Exited(not_run(code)));
            return;
        }
    };
    let pid = child.pid;
    if req.detach {
        // The pid is unsigned on the wire; a spawned child's always is.
        w.respond(id, &Response::Started { pid: pid as u32 });
        if let (Some(ms), Some(pidfd)) = (req.timeout_ms, child.pidfd) {
            end_at_deadline(pid, pidfd, Duration::from_millis(ms));
        }
        return;
    }

    if let (Some(stdin), Some(rx)) = (child.stdin, stdin_rx) {
        std::thread::spawn(move || feed_stdin(stdin, rx));
    }
    match conn
        .execs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&id)
    {
        Some(slot) => {
            slot.pgid = Some(pid);
            slot.terminal = child.terminal;
            for signal in slot.pending_signals.drain(..) {
                // SAFETY: kill only sends a signal to the command's own group.
                unsafe { libc::kill(-pid, signal) };
            }
        }
        // Its client went away (or a new one said hello) while it started.
        // SAFETY: kill only sends a signal to the command's own group.
        None => unsafe {
            libc::kill(-pid, libc::SIGKILL);
        },
    }

    let deadline = req
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let (timed_out, raw) = supervise(w, id, pid, child.output, deadline);

    let status = if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        ExitStatus {
            code: 128 + sig,
            signal: Some(sig),
            timed_out,
        }
    } else {
        ExitStatus {
            code: libc::WEXITSTATUS(raw),
            signal: None,
            timed_out,
        }
    };
    w.respond(id, &Response::Exited(status));
}

fn not_run(code: i32) -> ExitStatus {
    ExitStatus {
        code,
        signal: None,
        timed_out: false,
    }
}

/// `/root`, or `/` in an image that has none.
fn default_cwd() -> String {
    if Path::new(DEFAULT_CWD).is_dir() {
        DEFAULT_CWD.to_string()
    } else {
        "/".to_string()
    }
}

/// The default environment with the request's variables laid over it.
fn build_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LANG", "C.UTF-8"),
        ("TERM", "xterm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// Finds `name` the way a shell would: as given when it holds a slash,
/// otherwise in the first `PATH` directory with an executable of that name.
fn resolve(name: &str, path_var: &str, cwd: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = Path::new(cwd).join(name);
        return p.exists().then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    let ok = unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 };
    ok && !p.is_dir()
}

struct Child {
    pid: libc::pid_t,
    /// A detached command's pidfd, opened before anything could reap it.
    pidfd: Option<OwnedFd>,
    stdin: Option<File>,
    /// What the command prints: stdout and stderr, or a terminal's one
    /// output.
    output: Vec<(File, FrameKind)>,
    /// A terminal's controlling side, for resizes.
    terminal: Option<Arc<OwnedFd>>,
}

/// Where a command's stdin, stdout and stderr are.
#[derive(Clone, Copy)]
enum Io {
    /// Pipes to the agent (stdin one only when the host sends stdin, else
    /// `/dev/null`), in a process group of its own.
    Pipes,
    /// A new pseudo-terminal of this size, in a session of its own.
    Terminal(PtySize),
    /// `/dev/null` for all three, in a session of its own, unwatched.
    Detached,
}

/// A pseudo-terminal: the controlling side, and the path of the
/// command's side (opened by the command itself, after `setsid`, so that it
/// becomes its controlling terminal).
struct Pty {
    master: OwnedFd,
    /// Held open until the command has its own, so no read of the master
    /// sees a terminal nobody holds.
    slave: OwnedFd,
    path: CString,
}

fn open_pty(size: PtySize) -> std::io::Result<Pty> {
    let err = std::io::Error::last_os_error;
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(err());
    }
    // SAFETY: fd is a new descriptor we alone own.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: master is a terminal master; name has room for len bytes.
    unsafe {
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(err());
        }
        let rc = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into name.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    resize(&master, size)?;
    // SAFETY: path is NUL-terminated; the result is a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err());
    }
    // SAFETY: as above.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Pty {
        master,
        slave,
        path,
    })
}

/// Sets a terminal's size; its foreground process group gets `SIGWINCH`.
pub fn resize(master: &OwnedFd, size: PtySize) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    match unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(s: impl AsRef<[u8]>) -> std::io::Result<CString> {
    CString::new(s.as_ref()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "argument contains a NUL byte",
        )
    })
}

/// Starts `program` in a new process group with piped output (or on a
/// terminal, or detached: see [`Io`]), through
/// glibc's `posix_spawn` (a `CLONE_VFORK` child: no copy of the agent's page
/// tables, which under software emulation is most of the cost of a fork).
/// Errors from `chdir` or `execve` in the child come back as the return
/// value, so a failed exec is reported here, not as an exit status.
fn spawn(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
    stdin_piped: bool,
    io: Io,
) -> std::io::Result<Child> {
    let c_prog = cstring(program.as_os_str().as_bytes())?;
    let c_argv: Vec<CString> = argv.iter().map(cstring).collect::<Result<_, _>>()?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let c_cwd = cstring(cwd)?;
    let mut argv_ptrs: Vec<*mut libc::c_char> =
        c_argv.iter().map(|c| c.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> =
        c_env.iter().map(|c| c.as_ptr().cast_mut()).collect();
    env_ptrs.push(std::ptr::null_mut());

    if let Io::Detached = io {
        let null = OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?,
        );
        let attrs = SpawnAttrs::new(Stdio::Detached(&null), &c_cwd)?;
        let (pid, pidfd) = spawn_detached(&c_prog, &attrs, &argv_ptrs, &env_ptrs)?;
        return Ok(Child {
            pid,
            pidfd,
            stdin: None,
            output: Vec::new(),
            terminal: None,
        });
    }
    if let Io::Terminal(size) = io {
        let pty = open_pty(size)?;
        let attrs = SpawnAttrs::new(Stdio::Terminal(&pty.path), &c_cwd)?;
        let pid = posix_spawn(&c_prog, &attrs, &argv_ptrs, &env_ptrs)?;
        drop(attrs);
        // The command holds its side now.
        drop(pty.slave);
        let master = pty.master;
        return Ok(Child {
            pid,
            pidfd: None,
            stdin: stdin_piped
                .then(|| master.try_clone().map(File::from))
                .transpose()?,
            output: vec![(File::from(master.try_clone()?), FrameKind::Stdout)],
            terminal: Some(Arc::new(master)),
        });
    }
    let (in_r, in_w) = if stdin_piped {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (OwnedFd::from(File::open("/dev/null")?), None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    let attrs = SpawnAttrs::new(Stdio::Pipes(&in_r, &out_w, &err_w), &c_cwd)?;
    let pid = posix_spawn(&c_prog, &attrs, &argv_ptrs, &env_ptrs)?;
    drop(attrs);
    drop(in_r);
    drop(out_w);
    drop(err_w);
    Ok(Child {
        pid,
        pidfd: None,
        stdin: in_w.map(File::from),
        output: vec![
            (File::from(out_r), FrameKind::Stdout),
            (File::from(err_r), FrameKind::Stderr),
        ],
        terminal: None,
    })
}

/// Starts the program (watched by the reaper from the moment it exists).
fn posix_spawn(
    c_prog: &CString,
    attrs: &SpawnAttrs,
    argv_ptrs: &[*mut libc::c_char],
    env_ptrs: &[*mut libc::c_char],
) -> std::io::Result<libc::pid_t> {
    let (pid, ()) = reaper()
        .spawn_watched(|| raw_spawn(c_prog, attrs, argv_ptrs, env_ptrs).map(|p| (p, ())))?;
    Ok(pid)
}

/// Starts a detached program: nobody waits for it, so the reaper reaps it
/// whenever it ends. Its pidfd (for a timeout) is opened while the reaper
/// is held off, so it names this process even if it ended at once.
fn spawn_detached(
    c_prog: &CString,
    attrs: &SpawnAttrs,
    argv_ptrs: &[*mut libc::c_char],
    env_ptrs: &[*mut libc::c_char],
) -> std::io::Result<(libc::pid_t, Option<OwnedFd>)> {
    reaper().spawn_unwatched(|| {
        let pid = raw_spawn(c_prog, attrs, argv_ptrs, env_ptrs)?;
        Ok((pid, pidfd_open(pid)))
    })
}

/// `posix_spawn(3)`: the new process's pid.
fn raw_spawn(
    c_prog: &CString,
    attrs: &SpawnAttrs,
    argv_ptrs: &[*mut libc::c_char],
    env_ptrs: &[*mut libc::c_char],
) -> std::io::Result<libc::pid_t> {
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: NUL-terminated strings
    // and NULL-terminated arrays that outlive it, initialised attributes.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            c_prog.as_ptr(),
            &attrs.actions,
            &attrs.attr,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        )
    };
    match rc {
        0 => Ok(pid),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// A pidfd for `pid`, if the kernel has them.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    // SAFETY: a non-negative result is an fd we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A detached command's timeout: if it still runs after `after`, its
/// session's process group (whose id is its pid) is killed. Watched on a
/// thread of its own through the pidfd, which turns readable when it ends.
fn end_at_deadline(pid: libc::pid_t, pidfd: OwnedFd, after: Duration) {
    let watch = move || {
        let deadline = Instant::now() + after;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut fd, 1, ms) } {
                // Ended before its deadline.
                n if n > 0 => return,
                0 if Instant::now() >= deadline => {
                    // SAFETY: kill only sends a signal to the command's group.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    return;
                }
                // Woken early (EINTR, or a poll cut short): wait again.
                _ => {}
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name(format!("detached-{pid}"))
        .spawn(watch)
    {
        eprintln!("petty-agent: no thread for detached exec {pid}'s timeout: {e}");
    }
}

/// Where a command's stdin, stdout and stderr go.
enum Stdio<'a> {
    /// Three descriptors, dup'd onto 0, 1 and 2.
    Pipes(&'a OwnedFd, &'a OwnedFd, &'a OwnedFd),
    /// A terminal's path, opened by the command after `setsid` (which
    /// makes it the controlling terminal) as 0, then dup'd onto 1 and 2.
    Terminal(&'a CString),
    /// `/dev/null`, dup'd onto 0, 1 and 2, in a session of its own (so no
    /// terminal's hang-up and no signal to the agent's group reaches it).
    Detached(&'a OwnedFd),
}

/// `posix_spawn` attributes and file actions, destroyed on drop.
struct SpawnAttrs {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl SpawnAttrs {
    fn new(stdio: Stdio<'_>, cwd: &CString) -> std::io::Result<Self> {
        let check = |rc: libc::c_int| match rc {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        };
        // SAFETY: both structs are initialised by their *_init calls before
        // any other use, and destroyed exactly once in Drop.
        unsafe {
            let mut me = Self {
                attr: std::mem::zeroed(),
                actions: std::mem::zeroed(),
            };
            check(libc::posix_spawnattr_init(&mut me.attr))?;
            check(libc::posix_spawn_file_actions_init(&mut me.actions))?;
            // The agent (like every Rust program) ignores SIGPIPE; commands
            // must not inherit that, or `yes | head` never ends cleanly.
            let mut defaults: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut defaults);
            libc::sigaddset(&mut defaults, libc::SIGPIPE);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigdefault(&mut me.attr, &defaults))?;
            check(libc::posix_spawnattr_setsigmask(&mut me.attr, &empty))?;
            // Its own process group; on a terminal, its own session (whose
            // group has the same id), so the terminal becomes its
            // controlling one.
            let mut flags = libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK;
            match stdio {
                Stdio::Pipes(stdin, stdout, stderr) => {
                    check(libc::posix_spawnattr_setpgroup(&mut me.attr, 0))?;
                    flags |= libc::POSIX_SPAWN_SETPGROUP;
                    for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                        check(libc::posix_spawn_file_actions_adddup2(
                            &mut me.actions,
                            fd.as_raw_fd(),
                            target,
                        ))?;
                    }
                }
                Stdio::Detached(null) => {
                    flags |= libc::POSIX_SPAWN_SETSID as libc::c_int;
                    for target in [0, 1, 2] {
                        check(libc::posix_spawn_file_actions_adddup2(
                            &mut me.actions,
                            null.as_raw_fd(),
                            target,
                        ))?;
                    }
                }
                Stdio::Terminal(path) => {
                    flags |= libc::POSIX_SPAWN_SETSID as libc::c_int;
                    check(libc::posix_spawn_file_actions_addopen(
                        &mut me.actions,
                        0,
                        path.as_ptr(),
                        libc::O_RDWR,
                        0,
                    ))?;
                    for target in [1, 2] {
                        check(libc::posix_spawn_file_actions_adddup2(
                            &mut me.actions,
                            0,
                            target,
                        ))?;
                    }
                }
            }
            check(libc::posix_spawnattr_setflags(
                &mut me.attr,
                flags as libc::c_short,
            ))?;
            check(libc::posix_spawn_file_actions_addchdir_np(
                &mut me.actions,
                cwd.as_ptr(),
            ))?;
            Ok(me)
        }
    }
}

impl Drop for SpawnAttrs {
    fn drop(&mut self) {
        // SAFETY: both were initialised in `new`.
        unsafe {
            libc::posix_spawnattr_destroy(&mut self.attr);
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
        }
    }
}

/// Streams the command's output and waits for it, in this one thread: a
/// `poll` over both pipes and a pidfd. The status is returned only after
/// both pipes reach end-of-file, so the host sees every byte ahead of
/// `Exited`; a background process that still holds a pipe keeps the exec
/// open (as with ssh or `docker exec`) until the deadline, if any, kills the
/// whole group. Returns (timed out, raw wait status).
fn supervise(
    w: &Writer,
    id: u32,
    pid: libc::pid_t,
    output: Vec<(File, FrameKind)>,
    mut deadline: Option<Instant>,
) -> (bool, libc::c_int) {
    let kill_group = || {
        // SAFETY: kill only sends a signal to the command's own group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    };
    let pidfd = pidfd_open(pid);
    // A terminal's reads fail (EIO) once nobody holds its other side:
    // that is its end-of-file.
    let mut pipes: Vec<(Option<File>, FrameKind)> =
        output.into_iter().map(|(f, k)| (Some(f), k)).collect();
    let mut exited = pidfd.is_none();
    let mut timed_out = false;
    let mut buf = vec![0u8; crate::server::SEND_CHUNK];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        for (pipe, _) in &pipes {
            if let Some(p) = pipe {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        if fds.is_empty() && exited {
            break;
        }
        if let (Some(fd), false) = (&pidfd, exited) {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout_ms = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as libc::c_int,
            None => -1,
        };
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if n == 0 {
            // Deadline passed: kill the group; its pipes then close.
            timed_out = true;
            deadline = None;
            kill_group();
            continue;
        }
        for fd in &fds {
            if fd.revents == 0 {
                continue;
            }
            if pidfd.as_ref().is_some_and(|p| p.as_raw_fd() == fd.fd) {
                exited = true;
                continue;
            }
            let Some(slot) = pipes
                .iter_mut()
                .find(|(p, _)| p.as_ref().is_some_and(|p| p.as_raw_fd() == fd.fd))
            else {
                continue;
            };
            let kind = slot.1;
            match slot.0.as_mut().map(|p| p.read(&mut buf)) {
                Some(Ok(0)) | Some(Err(_)) => slot.0 = None,
                Some(Ok(n)) => {
                    // Keep draining even when the host is gone, so the
                    // command never blocks on a full pipe.
                    w.send(&Frame::new(kind, id, buf[..n].to_vec()));
                }
                None => {}
            }
        }
    }
    let raw = match &pidfd {
        // The poll saw it exit: reap it here, no hand-off needed.
        Some(fd) if exited => reaper().reap_own(pid, fd),
        _ => match reaper().wait(pid, deadline) {
            Some(raw) => raw,
            None => {
                timed_out = true;
                kill_group();
                reaper().wait(pid, None).expect("waits without deadline")
            }
        },
    };
    if timed_out {
        // Stragglers of the group may have forked after the first kill.
        kill_group();
    }
    (timed_out, raw)
}

fn feed_stdin(mut stdin: File, rx: mpsc::Receiver<Vec<u8>>) {
    for chunk in rx {
        if stdin.write_all(&chunk).is_err() {
            break;
        }
    }
    // Dropping `stdin` closes the pipe: the command sees EOF.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults_and_appends() {
        let env = build_env(&[("HOME".into(), "/x".into()), ("A".into(), "1".into())]);
        assert!(env.contains(&("HOME".into(), "/x".into())));
        assert!(env.contains(&("A".into(), "1".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }

    #[test]
    fn resolve_searches_path() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin", "/"),
            Some("/bin/sh".into())
        );
        assert_eq!(resolve("no-such-program-xyz", "/bin:/usr/bin", "/"), None);
    }
}
