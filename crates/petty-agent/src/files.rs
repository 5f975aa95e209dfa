//! File requests: streamed reads and writes, listing, stat, mkdir, remove,
//! rename. Relative paths are taken from the default working directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use petty_protocol::{ErrorKind, FileEntry, FileStat, Frame, FrameKind, Response, CHUNK_SIZE};

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
        _ => ErrorKind::Io,
    }
}

/// Sends an `Error` response describing `e` during `what`.
pub fn send_io_error(w: &Writer, id: u32, what: &str, e: &std::io::Error) -> bool {
    w.error(id, kind_of(e), format!("{what}: {e}"))
}

/// Streams a file as `Data` frames, then `Done`.
pub fn read_file(w: &Writer, id: u32, path: &str) {
    let p = full(path);
    let mut f = match File::open(&p) {
        Ok(f) => f,
        Err(e) => {
            send_io_error(w, id, &format!("read {path}"), &e);
            return;
        }
    };
    if p.is_dir() {
        w.error(
            id,
            ErrorKind::IsADirectory,
            format!("read {path}: is a directory"),
        );
        return;
    }
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut size = 0u64;
    loop {
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

/// A file being written from `Data` frames.
pub struct Upload {
    file: File,
    size: u64,
}

impl Upload {
    /// Creates (or truncates) the file, and any missing parent directories.
    pub fn open(path: &str, mode: Option<u32>) -> std::io::Result<Self> {
        let p = full(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        let mode = mode.unwrap_or(0o644);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&p)?;
        // The umask may have narrowed the mode: set exactly what was asked.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        Ok(Self { file, size: 0 })
    }

    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Closes the file; the number of bytes written.
    pub fn finish(self) -> std::io::Result<u64> {
        self.file.sync_data()?;
        Ok(self.size)
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

/// Describes a path without following a final symlink.
pub fn stat(w: &Writer, id: u32, path: &str) {
    match fs::symlink_metadata(full(path)) {
        Ok(md) => w.respond(
            id,
            &Response::Stat(FileStat {
                is_dir: md.is_dir(),
                is_symlink: md.file_type().is_symlink(),
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
