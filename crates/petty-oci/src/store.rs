//! The blob store: `ROOT/blobs/sha256/<hex>`, each file's content matching its name.
//!
//! A blob is written to a temporary file in the same directory, hashed while it streams,
//! checked against the digest and size it was asked for, fsync'd and only then renamed into
//! place (and the directory fsync'd), so an interrupted pull leaves only complete, verified
//! blobs behind. Temporary files start with `.tmp-`; [`Store::prune`] removes stale ones.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::digest::{Digest, Hasher};
use crate::error::OciError;

/// Temporary files older than this are taken to be left by a dead pull.
const STALE_TMP: Duration = Duration::from_secs(3600);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory of digest-named, verified blobs.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where the blob `digest` is (or would be).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir().join(digest.hex())
    }

    /// Whether the blob `digest` is in the store.
    pub fn has(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// The bytes the store's blobs (and temporary files) take.
    pub fn disk_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for entry in read_dir_or_empty(&self.dir())? {
            let meta = entry?.metadata()?;
            if meta.is_file() {
                total += meta.len();
            }
        }
        Ok(total)
    }

    /// Removes every blob not in `keep`, and temporary files older than an hour;
    /// returns the bytes freed.
    pub fn prune(&self, keep: &HashSet<Digest>) -> io::Result<u64> {
        let keep_hex: HashSet<&str> = keep.iter().map(Digest::hex).collect();
        let mut freed = 0;
        for entry in read_dir_or_empty(&self.dir())? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let meta = entry.metadata()?;
            let remove = if name.starts_with(".tmp-") {
                meta.modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_some_and(|age| age > STALE_TMP)
            } else {
                !keep_hex.contains(name.as_ref())
            };
            if remove {
                let removed = if meta.is_dir() {
                    fs::remove_dir_all(entry.path())
                } else {
                    fs::remove_file(entry.path())
                };
                match removed {
                    Ok(()) => freed += meta.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(freed)
    }

    /// A new temporary file in the blob directory.
    pub(crate) fn temp(&self) -> Result<TempBlob, OciError> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(OciError::io_at(format!("creating {}", dir.display())))?;
        loop {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = dir.join(format!(".tmp-{}-{nanos}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempBlob {
                        path,
                        file: Some(file),
                        dir,
                        hasher: Hasher::default(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(OciError::io_at(format!("creating {}", path.display()))(e)),
            }
        }
    }

    /// Copies `reader` into the store, refusing more than `max` bytes, and checks it against
    /// `expected` (digest and size) when given. Returns the blob's digest and size.
    pub(crate) fn put_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<(&Digest, u64)>,
        max: u64,
        what: &str,
        key: &'static str,
    ) -> Result<(Digest, u64), OciError> {
        let mut tmp = self.temp()?;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OciError::io_at(format!("reading {what}"))(e)),
            };
            if tmp.len() + n as u64 > max {
                return Err(OciError::TooLarge {
                    what: format!("{what} is more than {}", crate::human_bytes(max)),
                    limit: max,
                    key,
                });
            }
            if let Some((_, size)) = expected {
                if tmp.len() + n as u64 > size {
                    return Err(OciError::SizeMismatch {
                        what: what.to_owned(),
                        expected: size,
                        actual: tmp.len() + n as u64,
                    });
                }
            }
            tmp.write(&buf[..n])?;
        }
        tmp.commit(self, expected, what)
    }
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<fs::DirEntry>>>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

/// A blob being written; removed on drop unless committed.
pub(crate) struct TempBlob {
    path: PathBuf,
    file: Option<File>,
    dir: PathBuf,
    hasher: Hasher,
}

impl TempBlob {
    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Appends `bytes`.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), OciError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob already committed"))?;
        file.write_all(bytes)
            .map_err(OciError::io_at(format!("writing {}", self.path.display())))?;
        self.hasher.update(bytes);
        Ok(())
    }

    /// Checks the content against `expected`, syncs it and renames it to its digest.
    pub(crate) fn commit(
        mut self,
        store: &Store,
        expected: Option<(&Digest, u64)>,
        what: &str,
    ) -> Result<(Digest, u64), OciError> {
        let size = self.hasher.len();
        let digest = std::mem::take(&mut self.hasher).finish();
        if let Some((want, want_size)) = expected {
            if size != want_size {
                return Err(OciError::SizeMismatch {
                    what: what.to_owned(),
                    expected: want_size,
                    actual: size,
                });
            }
            if &digest != want {
                return Err(OciError::DigestMismatch {
                    what: what.to_owned(),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        if let Some(file) = self.file.take() {
            file.sync_all()
                .map_err(OciError::io_at(format!("syncing {}", self.path.display())))?;
        }
        let dest = store.blob_path(&digest);
        fs::rename(&self.path, &dest)
            .map_err(OciError::io_at(format!("renaming into {}", dest.display())))?;
        self.path = PathBuf::new();
        if let Ok(d) = File::open(&self.dir) {
            // A failed directory sync only weakens durability; the blob is complete either way.
            let _ = d.sync_all();
        }
        Ok((digest, size))
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_names_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let d = Digest::of_bytes(b"hello");
        assert!(!store.has(&d));
        let (got, size) = store
            .put_reader(
                &mut &b"hello"[..],
                Some((&d, 5)),
                100,
                "blob",
                "image.max_image_mib",
            )
            .unwrap();
        assert_eq!((got.clone(), size), (d.clone(), 5));
        assert!(store.has(&d));
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), b"hello");
        assert_eq!(store.disk_bytes().unwrap(), 5);

        // Unknown digest: computed.
        let (other, _) = store
            .put_reader(&mut &b"world"[..], None, 100, "blob", "k")
            .unwrap();
        assert_eq!(other, Digest::of_bytes(b"world"));

        let keep: HashSet<Digest> = [d.clone()].into();
        assert_eq!(store.prune(&keep).unwrap(), 5);
        assert!(store.has(&d) && !store.has(&other));
    }

    #[test]
    fn wrong_content_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let d = Digest::of_bytes(b"hello");
        let err = store
            .put_reader(&mut &b"jello"[..], Some((&d, 5)), 100, "blob", "k")
            .unwrap_err();
        assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
        let err = store
            .put_reader(&mut &b"hello!"[..], Some((&d, 5)), 100, "blob", "k")
            .unwrap_err();
        assert!(matches!(err, OciError::SizeMismatch { .. }), "{err}");
        let err = store
            .put_reader(&mut &b"hello"[..], None, 3, "blob", "k")
            .unwrap_err();
        assert!(matches!(err, OciError::TooLarge { key: "k", .. }), "{err}");
        assert!(!store.has(&d));
        assert_eq!(
            fs::read_dir(store.dir()).unwrap().count(),
            0,
            "temporary files were left"
        );
        assert_eq!(store.disk_bytes().unwrap(), 0);
    }
}
