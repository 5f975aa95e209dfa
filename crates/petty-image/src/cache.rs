//! The cache directory's mechanics: the build lock, the scratch area, and
//! safe removal.
//!
//! Layout (all names derive from input hashes, see `kernel` and `rootfs`):
//!
//! ```text
//! <cache>/.lock                   flock'ed by whoever builds
//! <cache>/tmp/                    scratch for the lock holder; anything found
//!                                 here when taking the lock is a killed build's
//!                                 leftovers and is deleted
//! <cache>/logs/<step>.log         output of the last run of each build step
//! <cache>/kernel-<hash>/{bzImage,vmlinux,config,recipe}
//! <cache>/rootfs-base-<hash>/     trimmed debootstrap tree (hardlink source)
//! <cache>/rootfs-<hash>.ext4      the image
//! ```
//!
//! Assets are built under `tmp/` and `rename`d to their final name as the last
//! step, so a final name always holds a complete asset.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use crate::{error::ImageError, progress::Progress};

/// An exclusive `flock` on `<cache>/.lock`, released on drop (and by the
/// kernel if the process dies).
#[derive(Debug)]
pub(crate) struct CacheLock {
    file: File,
}

impl CacheLock {
    /// Blocks until the lock is ours; says so on stderr if that means waiting.
    pub(crate) fn acquire(cache: &Path, progress: &Progress) -> Result<Self, ImageError> {
        create_dir(cache)?;
        let path = cache.join(".lock");
        let lock_err = |source| ImageError::Lock {
            path: path.clone(),
            source,
        };
        // flock works on a read-only descriptor, so a cache built by root stays
        // lockable (and thus readable through `ensure`) for other users.
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o644)
                .open(&path)
                .map_err(lock_err)?,
            Err(e) => return Err(lock_err(e)),
        };
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            progress.line(format!(
                "waiting for another petty process building into {}",
                cache.display()
            ));
            loop {
                match flock(&file, libc::LOCK_EX) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(lock_err(e)),
                }
            }
        }
        Ok(CacheLock { file })
    }

    /// The lock's descriptor, for build commands to inherit.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`).
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `<cache>/tmp`, emptied: only the lock holder writes there, so whatever is in
/// it now was left by a build that was killed.
pub(crate) fn fresh_tmp(cache: &Path, progress: &Progress) -> Result<PathBuf, ImageError> {
    let tmp = cache.join("tmp");
    if tmp.exists() {
        if fs::read_dir(&tmp)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            progress.line(format!(
                "removing leftovers of an interrupted build in {}",
                tmp.display()
            ));
        }
        remove_tree(&tmp)?;
    }
    create_dir(&tmp)?;
    Ok(tmp)
}

/// `mkdir -p`.
pub(crate) fn create_dir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(ImageError::io("create directory", path))
}

/// `mv from to`, atomically replacing nothing (the final name must be free).
pub(crate) fn publish(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::rename(from, to).map_err(ImageError::io("move a finished asset into place at", to))
}

/// Removes a file or a directory tree, first detaching any mount left below it
/// (debootstrap mounts /proc and /sys in its target and a killed debootstrap
/// leaves them), and never crossing into another file system.
pub(crate) fn remove_tree(path: &Path) -> Result<(), ImageError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("inspect", path)(e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(ImageError::io("remove", path));
    }
    unmount_below(path);
    remove_dir_same_fs(path, meta.dev())
}

fn remove_dir_same_fs(dir: &Path, dev: u64) -> Result<(), ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io("read directory", dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(ImageError::io("inspect", &path))?;
        if meta.is_dir() {
            if meta.dev() != dev {
                return Err(ImageError::io(
                    "remove (a file system is still mounted there)",
                    &path,
                )(io::Error::from_raw_os_error(libc::EBUSY)));
            }
            remove_dir_same_fs(&path, dev)?;
        } else {
            fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
        }
    }
    fs::remove_dir(dir).map_err(ImageError::io("remove directory", dir))
}

/// Lazily unmounts every mount point at or below `dir` (deepest first). Best
/// effort: failures surface later as a refusal to cross file systems.
fn unmount_below(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn remove_tree_handles_files_dirs_symlinks_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), "x").unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("dirlink")).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        remove_tree(&root).unwrap();
    }

    #[test]
    fn fresh_tmp_empties_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join("tmp/kernel-build/linux");
        fs::create_dir_all(&left).unwrap();
        let tmp = fresh_tmp(dir.path(), &Progress::new(false)).unwrap();
        assert!(tmp.is_dir());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = CacheLock::acquire(dir.path(), &Progress::new(false)).unwrap();
        // flock locks belong to the open file description, so a second open conflicts.
        let other = File::open(dir.path().join(".lock")).unwrap();
        assert!(flock(&other, libc::LOCK_EX | libc::LOCK_NB).is_err());
        drop(held);
        flock(&other, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    }
}
