//! File requests: streamed reads and writes, listing, stat, mkdir, remove,
//! rename. Relative paths are taken from the default working directory.
//!
//! Transfers move regular files only. A read follows symlinks, refuses
//! whatever else the path resolves to (a device, a FIFO, a socket) before
//! opening it, and opens without blocking, then checks the opened file
//! again (the path may have changed in between). A write lands in a
//! temporary file beside its target and is renamed over it only once the
//! host's last frame arrived, so a failed, cancelled or abandoned write
//! leaves the target as it was and no partial file behind.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use petty_protocol::{ErrorKind, FileEntry, FileStat, FileType, Frame, FrameKind, Response};

use crate::exec::DEFAULT_CWD;
use crate::server::Writer;

fn full(path: &str) -> PathBuf {
    Path::new(DEFAULT_CWD).join(path)
}

/// Maps an I/O error to the protocol's error kinds.
pub fn kind_of(e: &std::io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EACCES) | Some(libc::EPERM) => ErrorKind::PermissionDenied,
        Some(libc::EEXIST) => ErrorKind::AlreadyExists,
        Some(libc::ENOTDIR) => ErrorKind::NotADirectory,
        Some(libc::EISDIR) => ErrorKind::IsADirectory,
        Some(libc::ENOTEMPTY) => ErrorKind::NotEmpty,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
        _ => ErrorKind::Io,
    }
}

/// Sends an `Error` response describing `e` during `what`.
pub fn send_io_error(w: &Writer, id: u32, what: &str, e: &std::io::Error) -> bool {
    w.error(id, kind_of(e), format!("{what}: {e}"))
}

/// A refused or failed file request: the kind and the message for the host.
pub struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn io(what: &str, e: &std::io::Error) -> Self {
        Self {
            kind: kind_of(e),
            message: format!("{what}: {e}"),
        }
    }

    fn not_regular(path: &str, ft: FileType, hint: &str) -> Self {
        Self {
            kind: ErrorKind::NotARegularFile,
            message: format!("{path} is {}, not a regular file; {hint}", ft.describe()),
        }
    }

    fn is_dir(what: &str) -> Self {
        Self {
            kind: ErrorKind::IsADirectory,
            message: format!("{what}: is a directory"),
        }
    }

    /// Sends it as the request's answer.
    pub fn send(&self, w: &Writer, id: u32) -> bool {
        w.error(id, self.kind, self.message.clone())
    }
}

/// The protocol's name for a kind of file.
pub fn file_type_of(ft: fs::FileType) -> FileType {
    if ft.is_file() {
        FileType::File
    } else if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else if ft.is_fifo() {
        FileType::Fifo
    } else if ft.is_socket() {
        FileType::Socket
    } else {
        FileType::Unknown
    }
}

const READ_HINT: &str = "only regular files can be copied; read part of it with a command instead \
                         (e.g. head -c 1048576 PATH)";

/// Opens `path` for reading if it resolves to a regular file.
fn open_for_read(path: &str) -> Result<File, Failure> {
    let p = full(path);
    let what = format!("read {path}");
    let refuse = |ft: FileType| match ft {
        FileType::Directory => Failure::is_dir(&what),
        ft => Failure::not_regular(path, ft, &READ_HINT.replace("PATH", path)),
    };
    // Checked before opening: opening some devices does something
    // (a watchdog starts counting, a tape rewinds).
    let md = fs::metadata(&p).map_err(|e| Failure::io(&what, &e))?;
    if !md.is_file() {
        return Err(refuse(file_type_of(md.file_type())));
    }
    // Non-blocking, so that a FIFO swapped in since the check cannot hang
    // the open; no controlling terminal from a tty.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&p)
        .map_err(|e| Failure::io(&what, &e))?;
    let md = f.metadata().map_err(|e| Failure::io(&what, &e))?;
    if !md.is_file() {
        return Err(refuse(file_type_of(md.file_type())));
    }
    clear_nonblocking(&f).map_err(|e| Failure::io(&what, &e))?;
    Ok(f)
}

fn clear_nonblocking(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor `f` owns; F_GETFL/F_SETFL take no pointers.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Streams a regular file as `Data` frames, then `Done`. Stops without a
/// `Done` once `cancel` is set ([`petty_protocol::Request::Cancel`]).
pub fn read_file(w: &Writer, id: u32, path: &str, cancel: &AtomicBool) {
    let mut f = match open_for_read(path) {
        Ok(f) => f,
        Err(e) => {
            e.send(w, id);
            return;
        }
    };
    let mut buf = vec![0u8; crate::server::SEND_CHUNK];
    let mut size = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !w.send(&Frame::new(FrameKind::Data, id, buf[..n].to_vec())) {
                    return;
                }
                size += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                send_io_error(w, id, &format!("read {path}"), &e);
                return;
            }
        }
    }
    w.respond(id, &Response::Done { size });
}

/// A file being written from `Data` frames: a temporary file beside the
/// target, renamed over it by [`Upload::finish`], removed when dropped
/// unfinished.
pub struct Upload {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    size: u64,
    done: bool,
}

/// Makes temporary names unique within this agent.
static UPLOADS: AtomicU64 = AtomicU64::new(0);

impl Upload {
    /// Starts a write of `path`, creating missing parent directories. A
    /// symlink is followed (the file it points to is replaced); an existing
    /// target that is not a regular file is refused.
    pub fn open(path: &str, mode: Option<u32>) -> Result<Self, Failure> {
        let what = format!("open {path} for writing");
        let fail = |e: std::io::Error| Failure::io(&what, &e);
        let mut target = full(path);
        let existing =
            match fs::metadata(&target) {
                Ok(md) if md.is_dir() => return Err(Failure::is_dir(&what)),
                Ok(md) if !md.is_file() => return Err(Failure::not_regular(
                    path,
                    file_type_of(md.file_type()),
                    "uploads replace regular files only: remove it first or write to another path",
                )),
                Ok(md) => {
                    target = fs::canonicalize(&target).map_err(fail)?;
                    Some(md)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(fail(e)),
            };
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(Failure::is_dir(&what));
        };
        fs::create_dir_all(parent).map_err(fail)?;
        let mode = mode.unwrap_or(0o644);
        let (file, tmp) = loop {
            let n = UPLOADS.fetch_add(1, Ordering::Relaxed);
            let tmp = parent.join(format!(".{}.petty-upload.{n}", name.to_string_lossy()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
            {
                Ok(f) => break (f, tmp),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(e)),
            }
        };
        let up = Self {
            file,
            tmp,
            target,
            size: 0,
            done: false,
        };
        // The umask may have narrowed the mode: set exactly what was asked.
        up.file
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(fail)?;
        if let Some(md) = existing {
            // A replaced file keeps its owner, as one written in place would.
            std::os::unix::fs::fchown(&up.file, Some(md.uid()), Some(md.gid())).map_err(fail)?;
        }
        Ok(up)
    }

    /// The file it replaces.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Flushes the file and renames it over the target; the number of bytes written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.file.sync_data()?;
        fs::rename(&self.tmp, &self.target)?;
        self.done = true;
        Ok(self.size)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Lists a directory, sorted by name.
pub fn list_dir(w: &Writer, id: u32, path: &str) {
    let result = (|| -> std::io::Result<Vec<FileEntry>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(full(path))? {
            let entry = entry?;
            // Follow links for size and kind, as `ls -L` would; a dangling
            // link is listed by its own metadata.
            let md = match fs::metadata(entry.path()) {
                Ok(md) => md,
                Err(_) => entry.metadata()?,
            };
            entries.push(FileEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: md.is_dir(),
                size: md.len(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    })();
    match result {
        Ok(entries) => w.respond(id, &Response::Entries { entries }),
        Err(e) => send_io_error(w, id, &format!("list {path}"), &e),
    };
}

/// Describes a path, following a final symlink only with `follow`.
pub fn stat(w: &Writer, id: u32, path: &str, follow: bool) {
    let md = if follow {
        fs::metadata(full(path))
    } else {
        fs::symlink_metadata(full(path))
    };
    match md {
        Ok(md) => w.respond(
            id,
            &Response::Stat(FileStat {
                is_dir: md.is_dir(),
                is_symlink: md.file_type().is_symlink(),
                file_type: file_type_of(md.file_type()),
                size: md.len(),
                mode: md.mode() & 0o7777,
                mtime: md.mtime(),
            }),
        ),
        Err(e) => send_io_error(w, id, &format!("stat {path}"), &e),
    };
}

/// Creates a directory and its missing parents.
pub fn mkdir(w: &Writer, id: u32, path: &str) {
    match fs::create_dir_all(full(path)) {
        Ok(()) => w.respond(id, &Response::Ok),
        Err(e) => send_io_error(w, id, &format!("mkdir {path}"), &e),
    };
}

/// Removes a file or directory.
pub fn remove(w: &Writer, id: u32, path: &str, recursive: bool) {
    let p = full(path);
    let result = match fs::symlink_metadata(&p) {
        Ok(md) if md.is_dir() && recursive => fs::remove_dir_all(&p),
        Ok(md) if md.is_dir() => fs::remove_dir(&p),
        Ok(_) => fs::remove_file(&p),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => w.respond(id, &Response::Ok),
        Err(e) => send_io_error(w, id, &format!("remove {path}"), &e),
    };
}

/// Renames a path.
pub fn rename(w: &Writer, id: u32, from: &str, to: &str) {
    match fs::rename(full(from), full(to)) {
        Ok(()) => w.respond(id, &Response::Ok),
        Err(e) => send_io_error(w, id, &format!("rename {from} to {to}"), &e),
    };
}
