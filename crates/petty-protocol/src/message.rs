//! The JSON messages carried in `Request` and `Response` frames.

use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// A program and its arguments, run directly (looked up on `PATH`).
    Argv(Vec<String>),
    /// A string for `/bin/sh -c`.
    Shell(String),
}

/// One command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// What to run.
    pub command: Command,
    /// Variables added to (or replacing those of) the agent's default environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's default (`/root`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// When true the host sends `Stdin` frames (an empty one closes stdin);
    /// otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the command's whole process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run as this user (`name`, `uid`, `name:group`, `uid:gid`, resolved
    /// by the guest's `/etc/passwd` and `/etc/group`); root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size rather than pipes: the command
    /// is a session leader whose controlling terminal it is, stdin, stdout
    /// and stderr are the terminal, and everything it prints arrives as
    /// `Stdout` frames (a terminal has one output). Stdin frames are what
    /// is typed; [`Request::Resize`] changes the size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// Start the command detached, as `docker exec -d` does, and answer at
    /// once with [`Response::Started`] and its pid: it runs in a session of
    /// its own with stdin, stdout and stderr on `/dev/null`, is tied to no
    /// connection (the agent does not end it when its client goes or a new
    /// one says hello) and is reaped by the agent when it ends. Env, cwd,
    /// user and `timeout_ms` (which kills its session's process group if
    /// still running then) apply; `stdin` and `pty` are refused with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detach: bool,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl ExecRequest {
    /// A request to run `argv` with no stdin, default env and cwd.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    /// A request to run `script` with `/bin/sh -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(Command::Shell(script.into()))
    }

    fn new(command: Command) -> Self {
        Self {
            command,
            env: Vec::new(),
            cwd: None,
            stdin: false,
            timeout_ms: None,
            user: None,
            pty: None,
            detach: false,
        }
    }
}

/// A request from the host. Each has its own frame id; the guest answers with
/// zero or more raw frames and then exactly one [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version check; answered with [`Response::Pong`].
    Ping,
    /// The host's credential, sent first on a channel anyone on a network
    /// could open (the agent listening on TCP, [`crate::tcp`]): the
    /// per-VM token the guest was given at create. An agent serving such a
    /// channel answers [`Response::Ok`] to the right token and closes the
    /// connection on anything else, before reading another frame; on
    /// virtio-serial and vsock (only the host reaches those) it is never
    /// sent.
    Auth {
        /// The token, as the guest was given it.
        token: String,
    },
    /// The first request of every host connection; answered with
    /// [`Response::Pong`]. On a channel that outlives its clients (a
    /// virtio-serial port), the agent ends whatever execs an earlier client
    /// left running: their client is gone, even if the guest never saw it
    /// disconnect.
    Hello,
    /// Run a command; `Stdout`/`Stderr` frames stream, then [`Response::Exited`].
    /// A detached one ([`ExecRequest::detach`]) is answered with
    /// [`Response::Started`] alone.
    Exec(ExecRequest),
    /// Send a signal to the process group of the exec with frame id `exec_id`.
    Signal {
        /// Frame id of the running exec.
        exec_id: u32,
        /// Signal number (e.g. 15 for SIGTERM).
        signal: i32,
    },
    /// Resize the terminal of the exec with frame id `exec_id` (one started
    /// with a `pty`); its foreground process group gets `SIGWINCH`.
    Resize {
        /// Frame id of the running exec.
        exec_id: u32,
        /// The new size.
        size: PtySize,
    },
    /// Watch a directory (and, when `recursive`, every directory below it,
    /// those made later included) for changes: `Data` frames follow, each
    /// one JSON [`WatchEvent`], the first [`WatchEvent::Started`] once the
    /// watch is in place. It runs until [`Request::Cancel`] names it (then
    /// nothing more is sent) or the directory itself goes, which ends it
    /// with [`Response::Ok`]. A path that is not a directory is refused
    /// with an error before anything else.
    Watch {
        /// Absolute path in the guest.
        path: String,
        /// Also watch the directories below it.
        #[serde(default)]
        recursive: bool,
    },
    /// Read a regular file: `Data` frames stream, then [`Response::Done`]
    /// with its size. Symlinks are followed; anything else the path
    /// resolves to (a device, a FIFO, a socket) is refused with
    /// [`ErrorKind::NotARegularFile`] before any data, and opening it never
    /// blocks (a FIFO without a writer).
    ReadFile {
        /// Absolute path in the guest.
        path: String,
    },
    /// Write a file from the `Data` frames that follow (an empty one ends it);
    /// missing parent directories are created. The data goes to a temporary
    /// file beside the target, renamed over it when the empty frame arrives,
    /// so the target is either as it was or complete: a failed, cancelled
    /// ([`Request::Cancel`]) or abandoned write removes the temporary file.
    /// A target that exists and is not a regular file (after symlinks) is
    /// refused with [`ErrorKind::NotARegularFile`]. Answered with
    /// [`Response::Done`].
    WriteFile {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits; 0o644 when absent.
        #[serde(default)]
        mode: Option<u32>,
    },
    /// List a directory; answered with [`Response::Entries`].
    ListDir {
        /// Absolute path in the guest.
        path: String,
    },
    /// Describe a path; answered with [`Response::Stat`].
    Stat {
        /// Absolute path in the guest.
        path: String,
        /// Describe what the path resolves to (symlinks followed, as a read
        /// opens it) rather than a final symlink itself.
        #[serde(default)]
        follow: bool,
    },
    /// Create a directory and any missing parents.
    Mkdir {
        /// Absolute path in the guest.
        path: String,
    },
    /// Remove a file, or a directory (with everything in it when `recursive`).
    Remove {
        /// Absolute path in the guest.
        path: String,
        /// Remove a non-empty directory and its contents.
        #[serde(default)]
        recursive: bool,
    },
    /// Rename (move) a path.
    Rename {
        /// Existing path.
        from: String,
        /// New path.
        to: String,
    },
    /// Abandon the file read or write running under frame id `request_id`:
    /// a read stops sending data, a write removes its temporary file and
    /// leaves the target as it was. The abandoned request gets no `Done`
    /// (frames already in flight may still arrive). Answered with
    /// [`Response::Ok`], also when no such transfer runs (it may have just
    /// ended).
    Cancel {
        /// Frame id of the read or write.
        request_id: u32,
    },
    /// Set the guest's wall clock.
    SetTime {
        /// Nanoseconds since the Unix epoch.
        unix_nanos: u64,
    },
    /// Make a restored or forked guest its own: mix `entropy` into the
    /// kernel RNG and force a reseed (so two forks of one snapshot never hand
    /// out the same random numbers), set the clock, and set the hostname.
    /// Then grow the root file system if its disk is larger than it.
    Refresh {
        /// Fresh random bytes from the host (at least 32).
        entropy: Vec<u8>,
        /// Nanoseconds since the Unix epoch.
        unix_nanos: u64,
        /// New hostname, if any.
        #[serde(default)]
        hostname: Option<String>,
        /// The size the host made the root disk, when it grew it after the
        /// restore: the agent waits (briefly) for the guest kernel to see
        /// that size before growing the file system.
        #[serde(default)]
        disk_bytes: Option<u64>,
    },
    /// The host is about to snapshot this guest. A restored copy finds its
    /// host gone the moment it runs (the channel it was saved on is not
    /// there); the agent then warms its exec path at once, rather than when
    /// the [`Request::Refresh`] arrives, so the first command after a
    /// restore finds more of it ready. Answered with [`Response::Ok`].
    BeforeSnapshot,
    /// Write every dirty page and file system buffer to the disks
    /// (`sync(2)`), so the disk alone holds what the guest wrote (a
    /// template build turns a disk into an image). Answered with
    /// [`Response::Ok`].
    Sync,
    /// Flush disks and power the guest off.
    Shutdown,
}

/// What changed in a watched directory (after [`Request::Watch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The watch is in place: changes from now on are reported.
    Started,
    /// `name` appeared: made, or renamed to this name.
    Create {
        /// Path relative to the watched directory.
        name: String,
    },
    /// `name` was written to.
    Write {
        /// Path relative to the watched directory.
        name: String,
    },
    /// `name` was removed.
    Remove {
        /// Path relative to the watched directory.
        name: String,
    },
    /// `name` was renamed away (its new name, if inside, comes as a
    /// `Create`).
    Rename {
        /// Path relative to the watched directory.
        name: String,
    },
    /// `name`'s permissions, owner or times changed.
    Chmod {
        /// Path relative to the watched directory.
        name: String,
    },
    /// Events were lost: the guest kernel's queue overflowed.
    Overflow,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Shell-style exit code: the process's own code, 128 + n when killed by
    /// signal n, 127 when the program was not found, 126 when it could not run.
    pub code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// True when the agent killed the process group because the timeout passed.
    pub timed_out: bool,
}

impl ExitStatus {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name (not the full path).
    pub name: String,
    /// True for a directory.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
}

/// What kind of file a path is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (only when not followed).
    Symlink,
    /// A character device (`/dev/zero`, a terminal).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// Not reported (an older agent), or a kind this side does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl FileType {
    /// The kind in words, with its article: "a character device".
    pub fn describe(self) -> &'static str {
        match self {
            Self::File => "a regular file",
            Self::Directory => "a directory",
            Self::Symlink => "a symbolic link",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
            Self::Fifo => "a FIFO (named pipe)",
            Self::Socket => "a socket",
            Self::Unknown => "not a file of a known kind",
        }
    }
}

/// What [`Request::Stat`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// True for a directory.
    pub is_dir: bool,
    /// True for a symbolic link (not followed).
    pub is_symlink: bool,
    /// What kind of file it is.
    #[serde(default)]
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// The agent's answer to [`Request::Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// [`crate::PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// The guest kernel release (`uname -r`).
    pub kernel: String,
}

/// Broad class of a failed request, so the host can map it to its own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The path does not exist.
    NotFound,
    /// Permission denied.
    PermissionDenied,
    /// The path already exists.
    AlreadyExists,
    /// A path component is not a directory, or a directory was expected.
    NotADirectory,
    /// A directory where a file was expected.
    IsADirectory,
    /// The directory is not empty.
    NotEmpty,
    /// The request itself is malformed or names an unknown id.
    InvalidRequest,
    /// A file transfer met something that is not a regular file (a device,
    /// a FIFO, a socket); the message names what it is.
    NotARegularFile,
    /// The guest's file system is full (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// Any other I/O failure; also what a kind this side does not know reads as.
    #[serde(other)]
    Io,
}

/// The last frame for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong(Pong),
    /// The command ended.
    Exited(ExitStatus),
    /// A detached command ([`ExecRequest::detach`]) is running; nothing
    /// more is sent about it.
    Started {
        /// Its process id in the guest (also its session's and process
        /// group's id).
        pid: u32,
    },
    /// A file read or write finished; `size` bytes moved.
    Done {
        /// Bytes read or written.
        size: u64,
    },
    /// A directory listing.
    Entries {
        /// The entries, sorted by name.
        entries: Vec<FileEntry>,
    },
    /// A path's metadata.
    Stat(FileStat),
    /// The request succeeded and has nothing to report.
    Ok,
    /// The request failed.
    Error {
        /// Broad class of the failure.
        kind: ErrorKind,
        /// What failed, with the path or id involved.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let reqs = vec![
            Request::Ping,
            Request::Exec(ExecRequest::argv(["echo", "hi"])),
            Request::Exec(ExecRequest::shell("echo $X")),
            Request::WriteFile {
                path: "/tmp/a".into(),
                mode: Some(0o755),
            },
            Request::SetTime {
                unix_nanos: 1 << 62,
            },
            Request::BeforeSnapshot,
            Request::Sync,
            Request::Stat {
                path: "/root/z".into(),
                follow: true,
            },
            Request::Cancel { request_id: 7 },
            Request::Exec(ExecRequest {
                detach: true,
                ..ExecRequest::argv(["sleep", "30"])
            }),
        ];
        for r in reqs {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r, "{json}");
        }
    }

    #[test]
    fn unknown_error_and_file_kinds_read_as_the_catch_alls() {
        let r: Response =
            serde_json::from_str(r#"{"result":"error","kind":"quantum_flux","message":"m"}"#)
                .unwrap();
        assert_eq!(
            r,
            Response::Error {
                kind: ErrorKind::Io,
                message: "m".into()
            }
        );
        let old = r#"{"is_dir":false,"is_symlink":false,"size":1,"mode":420,"mtime":0}"#;
        let st: FileStat = serde_json::from_str(old).unwrap();
        assert_eq!(st.file_type, FileType::Unknown);
        let st: FileStat =
            serde_json::from_str(&old.replace('}', r#","file_type":"door"}"#)).unwrap();
        assert_eq!(st.file_type, FileType::Unknown);
        let json = serde_json::to_string(&ErrorKind::NotARegularFile).unwrap();
        assert_eq!(json, r#""not_a_regular_file""#);
    }

    #[test]
    fn an_attached_exec_says_nothing_of_detach_and_an_older_one_still_parses() {
        let json = serde_json::to_string(&Request::Exec(ExecRequest::argv(["true"]))).unwrap();
        assert!(!json.contains("detach"), "{json}");
        let old = r#"{"op":"exec","command":{"argv":["true"]}}"#;
        match serde_json::from_str::<Request>(old).unwrap() {
            Request::Exec(req) => assert!(!req.detach),
            other => panic!("{other:?}"),
        }
        let started = Response::Started { pid: 42 };
        let json = serde_json::to_string(&started).unwrap();
        assert_eq!(json, r#"{"result":"started","pid":42}"#);
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), started);
    }

    #[test]
    fn unknown_op_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
