//! Directory watches: inotify on a directory (and, when recursive, on every
//! directory below it, those made later included), each change sent as one
//! JSON [`WatchEvent`] in a `Data` frame until the host cancels the watch or
//! the directory goes.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use petty_protocol::{ErrorKind, Frame, FrameKind, Response, WatchEvent};

use crate::files::send_io_error;
use crate::server::Writer;

/// Directories one recursive watch follows at most (each is an inotify
/// watch, which the guest kernel caps per user too).
const MAX_DIRS: usize = 8192;
/// How often a quiet watch looks at its cancel flag, in milliseconds.
const POLL_MS: i32 = 200;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

struct Watch {
    fd: OwnedFd,
    /// Each watch descriptor's directory, relative to the watched one
    /// ("" for itself).
    dirs: HashMap<i32, PathBuf>,
    root: PathBuf,
    recursive: bool,
}

impl Watch {
    fn add(&mut self, rel: PathBuf) -> std::io::Result<()> {
        if self.dirs.len() >= MAX_DIRS {
            return Ok(());
        }
        let full = self.root.join(&rel);
        let c = CString::new(full.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: fd is an inotify instance, c a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, rel.clone());
        if self.recursive {
            if let Ok(entries) = std::fs::read_dir(&full) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        // A directory that went meanwhile is no error.
                        let _ = self.add(rel.join(e.file_name()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs one watch until it is cancelled, the host is gone or the directory
/// is; the caller registered `cancel`.
pub fn watch(w: &Writer, id: u32, path: &str, recursive: bool, cancel: &AtomicBool) {
    if !Path::new(path).is_dir() {
        let (kind, what) = if Path::new(path).exists() {
            (ErrorKind::InvalidRequest, "is not a directory")
        } else {
            (ErrorKind::NotFound, "does not exist")
        };
        w.error(id, kind, format!("watch {path}: {what}"));
        return;
    }
    // SAFETY: inotify_init1 returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        send_io_error(w, id, "watch: inotify", &std::io::Error::last_os_error());
        return;
    }
    let mut watch = Watch {
        // SAFETY: a new descriptor we alone own.
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        dirs: HashMap::new(),
        root: PathBuf::from(path),
        recursive,
    };
    if let Err(e) = watch.add(PathBuf::new()) {
        send_io_error(w, id, &format!("watch {path}"), &e);
        return;
    }
    let send = |e: &WatchEvent| {
        let json = serde_json::to_vec(e).expect("events serialise");
        w.send(&Frame::new(FrameKind::Data, id, json))
    };
    if !send(&WatchEvent::Started) {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !cancel.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: watch.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } <= 0 {
            continue;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(watch.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut at = 0usize;
        let n = n as usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= n {
            // SAFETY: the kernel wrote whole events; read_unaligned copes
            // with the byte buffer's alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let name_bytes = &buf[at + header..(at + header + ev.len as usize).min(n)];
            at += header + ev.len as usize;
            let name_end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = std::ffi::OsStr::from_bytes(&name_bytes[..name_end]);
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                if !send(&WatchEvent::Overflow) {
                    return;
                }
                continue;
            }
            let Some(dir) = watch.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0
                && dir.as_os_str().is_empty()
            {
                // The watched directory itself went: the watch is over.
                w.respond(id, &Response::Ok);
                return;
            }
            if ev.mask & libc::IN_IGNORED != 0 {
                watch.dirs.remove(&ev.wd);
                continue;
            }
            if name.is_empty() {
                continue;
            }
            let rel = dir.join(name);
            let shown = rel.to_string_lossy().into_owned();
            let is_dir = ev.mask & libc::IN_ISDIR != 0;
            let event = if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                if is_dir && recursive {
                    let _ = watch.add(rel);
                }
                WatchEvent::Create { name: shown }
            } else if ev.mask & libc::IN_MODIFY != 0 {
                WatchEvent::Write { name: shown }
            } else if ev.mask & libc::IN_DELETE != 0 {
                WatchEvent::Remove { name: shown }
            } else if ev.mask & libc::IN_MOVED_FROM != 0 {
                WatchEvent::Rename { name: shown }
            } else if ev.mask & libc::IN_ATTRIB != 0 {
                WatchEvent::Chmod { name: shown }
            } else {
                continue;
            };
            if !send(&event) {
                return;
            }
        }
    }
}
