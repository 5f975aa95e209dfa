//! Runs build commands: stdout and stderr merged into one pipe (as `2>&1`
//! would), every line appended to a log file and offered to a callback for
//! progress, and the last lines kept for the error message on failure.
//!
//! Build commands inherit the cache lock's descriptor, so if `petty` itself is
//! killed the lock stays held until its orphaned children (a `make`, a
//! `dpkg`) are gone too; the next builder waits for them instead of deleting
//! the scratch directory under their feet. They also get SIGTERM when the
//! thread that started them dies.

use std::{
    collections::VecDeque,
    fs::File,
    io::{BufRead, BufReader, Write},
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    path::Path,
    process::{Command, Stdio},
};

use crate::{
    error::{CommandError, ImageError},
    progress::Progress,
};

/// What every build step needs: scratch space, the log directory, progress
/// output, and the cache lock to hand down to child processes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuildCtx<'a> {
    /// Scratch directory inside the cache (same file system as the assets).
    pub(crate) tmp: &'a Path,
    /// Where each step's output is logged.
    pub(crate) logs: &'a Path,
    /// Progress output.
    pub(crate) progress: &'a Progress,
    /// The cache lock's descriptor, inherited by build commands.
    pub(crate) lock_fd: Option<RawFd>,
    /// Where programs are, and the mirror.
    pub(crate) host: &'a crate::host::Host,
}

impl BuildCtx<'_> {
    /// Runs `cmd` for `step`, logging to `<logs>/<log_name>.log`; `hint` ends
    /// the error message if it fails.
    pub(crate) fn run(
        &self,
        step: &'static str,
        cmd: Command,
        log_name: &str,
        hint: &'static str,
        on_line: impl FnMut(&str),
    ) -> Result<(), ImageError> {
        let log = self.logs.join(format!("{log_name}.log"));
        run_logged(step, cmd, &log, hint, self.lock_fd, on_line)
    }
}

/// Lines of output quoted in an error.
const TAIL_LINES: usize = 25;

/// Runs `cmd` to completion for `step`, logging to `log` and calling `on_line`
/// for every output line. Stdin is closed; `keep_fd` stays open in the child.
pub(crate) fn run_logged(
    step: &'static str,
    mut cmd: Command,
    log: &Path,
    hint: &'static str,
    keep_fd: Option<RawFd>,
    mut on_line: impl FnMut(&str),
) -> Result<(), ImageError> {
    let command = describe(&cmd);
    let spawn_err = |source| ImageError::Build {
        step,
        source: CommandError::Spawn {
            command: command.clone(),
            source,
        },
    };
    let mut log_file = File::create(log).map_err(ImageError::io("create log file", log))?;
    let _ = writeln!(log_file, "$ {command}");

    let (reader, writer) = pipe().map_err(spawn_err)?;
    let writer2 = writer.try_clone().map_err(spawn_err)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (fcntl, prctl), touching no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = keep_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The Command holds the pipe's write ends; drop it so the read end sees EOF
    // when the child (and its children) exit.
    drop(cmd);

    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut reader = BufReader::new(File::from(reader));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let _ = log_file.write_all(&buf);
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        on_line(line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }
    let status = child.wait().map_err(spawn_err)?;
    let _ = writeln!(log_file, "# {status}");
    if status.success() {
        return Ok(());
    }
    Err(ImageError::Build {
        step,
        source: CommandError::Exit {
            command,
            status,
            log: log.to_owned(),
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
            hint,
        },
    })
}

/// `prog arg arg` for messages and logs.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_streams_logs_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut lines = Vec::new();
        let err = run_logged("testing", cmd, &log, "fix it", None, |l| {
            lines.push(l.to_owned())
        })
        .unwrap_err();
        assert_eq!(lines, ["out", "err"]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out\nerr\n"), "{text}");
        match err {
            ImageError::Build {
                step: "testing",
                source: CommandError::Exit { tail, .. },
            } => {
                assert_eq!(tail, "out\nerr")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("/nonexistent/petty-test-program");
        let err =
            run_logged("testing", cmd, &dir.path().join("log"), "", None, |_| {}).unwrap_err();
        assert!(matches!(
            err,
            ImageError::Build {
                source: CommandError::Spawn { .. },
                ..
            }
        ));
    }
}
