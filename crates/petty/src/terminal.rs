//! `petty exec -t`: a command on a pseudo-terminal in the guest, driven from
//! this process's terminal as `docker exec -it` drives one.
//!
//! The guest's terminal does the line editing, echo and signals (Ctrl-C is a
//! byte it turns into `SIGINT` for its foreground job), so with `-i` the
//! local terminal is put in raw mode and every byte typed goes to it as it
//! is; its one output comes back as stdout. The local terminal's size is the
//! guest terminal's, and follows it on `SIGWINCH`.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use petty_core::{ExecEvent, ExecRequest, ExitStatus, PtySize, Sandbox};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

/// The size a guest terminal gets when neither stdin nor stdout is a
/// terminal (`petty exec -t` in a pipeline): the classic 24 by 80.
const FALLBACK_SIZE: PtySize = PtySize { rows: 24, cols: 80 };

/// Refuses `-it` when stdin is not a terminal, as Docker does: raw mode and
/// typing need one. (`-t` alone is fine: the guest still gets a terminal,
/// and nothing is read from stdin.)
pub fn check(interactive: bool) -> anyhow::Result<()> {
    if interactive && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "the input device is not a TTY: petty exec -it forwards typing from a terminal, and stdin is a pipe or a file\n\
             hint: drop -t to pipe stdin to the command (petty exec -i), or run petty from a terminal"
        );
    }
    Ok(())
}

/// The local terminal's size: stdout's (where the output goes), else
/// stdin's, else [`FALLBACK_SIZE`].
pub fn local_size() -> PtySize {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO]
        .into_iter()
        .find_map(window_size)
        .unwrap_or(FALLBACK_SIZE)
}

/// `TIOCGWINSZ` on `fd`; `None` when it is no terminal or reports no size.
fn window_size(fd: RawFd) -> Option<PtySize> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(PtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The local terminal in raw mode (no echo, no line editing, no signals
/// from keys, no output processing) until dropped, which restores the
/// settings it had: on the command's end, on an error, on a panic, and on
/// the SIGINT, SIGTERM or SIGHUP `petty exec` turns into an exit.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` (stdin) in raw mode.
    pub fn enable(fd: BorrowedFd<'_>) -> std::io::Result<Self> {
        let fd = fd.as_raw_fd();
        // SAFETY: termios is plain data that tcgetattr fills in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid termios pointer; fd is open.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios; fd is open.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same fd,
        // which stdin keeps open for the life of the process.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Runs `req` on a guest terminal of the local terminal's size, its output
/// to stdout; with `interactive`, what is typed goes to it (the local
/// terminal raw meanwhile). Returns how the command ended; the local
/// terminal is as it was by then.
pub async fn run(
    sandbox: &Sandbox,
    mut req: ExecRequest,
    interactive: bool,
) -> anyhow::Result<ExitStatus> {
    req.pty = Some(local_size());
    req.stdin = interactive;
    let mut exec = sandbox.exec_stream(req).await?;
    let raw = if interactive {
        let stdin = std::io::stdin();
        Some(RawMode::enable(stdin.as_fd())?)
    } else {
        None
    };
    if interactive {
        forward_typing(exec.stdin());
    }
    // The guest terminal follows the local one's size.
    if std::io::stdout().is_terminal() || std::io::stdin().is_terminal() {
        let mut winch = signal(SignalKind::window_change())?;
        let handle = exec.stdin();
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                // Fails only once the command has ended.
                if handle.resize(local_size()).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut out = tokio::io::stdout();
    let status = loop {
        match exec.next().await? {
            // A terminal has one output; stderr would only come from an
            // agent that ignored the pty.
            ExecEvent::Stdout(b) | ExecEvent::Stderr(b) => {
                out.write_all(&b).await?;
                out.flush().await?;
            }
            ExecEvent::Exit(status) => break status,
        }
    };
    drop(raw);
    Ok(status)
}

/// Copies what is typed to the command, from a thread of its own: a read
/// of a terminal cannot be cancelled, and one in tokio's blocking pool
/// would hold the runtime's shutdown (and so `petty`'s exit) until the next
/// key. This thread simply ends with the process.
fn forward_typing(stdin: petty_core::StdinHandle) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let reader = std::thread::Builder::new()
        .name("typing".into())
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                // SAFETY: reads into a buffer of the given length.
                let n =
                    unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                // End of input (the terminal hung up) or an error.
                if n <= 0 || tx.blocking_send(buf[..n as usize].to_vec()).is_err() {
                    return;
                }
            }
        });
    if reader.is_err() {
        return;
    }
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if stdin.write(&bytes).await.is_err() {
                return;
            }
        }
        let _ = stdin.close().await;
    });
}
