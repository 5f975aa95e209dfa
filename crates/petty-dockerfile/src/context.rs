//! A build context: the directory a template is built from, filtered by its
//! `.dockerignore`; which entries a COPY takes and where they land.
//!
//! Sources are relative to the context (a leading `/` too, as in Docker);
//! one that climbs out with `..` is refused. Symlinks are copied as links
//! and never followed, and a source path may not pass through one. A
//! directory source copies its contents. Entries come sorted by
//! destination, so a directory comes before what it holds; the builder
//! creates missing parents (and the destination itself) as `mkdir -p`
//! would. Sockets, FIFOs and devices are skipped.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ignore::{DockerIgnore, IgnoreError};
use crate::pattern::{has_meta, Pattern};
use crate::plan::CopySpec;

/// Why a build context cannot be read or a COPY not resolved.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory cannot be opened.
    #[error("cannot open the build context {}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory in the context cannot be read.
    #[error("cannot read {} in the build context", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The `.dockerignore` is malformed.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// A source matches nothing.
    #[error("COPY source `{source_path}` {}", if *.ignored {
        "is excluded by .dockerignore; hint: add a `!` exception for it to .dockerignore"
    } else {
        "matches nothing in the build context; hint: sources are relative to the context directory"
    })]
    NotFound {
        /// The source as written.
        source_path: String,
        /// It exists but `.dockerignore` excludes it.
        ignored: bool,
    },
    /// A source climbs out of the context.
    #[error("COPY source `{source_path}` is outside the build context; hint: move the file into the context directory")]
    Escapes {
        /// The source as written.
        source_path: String,
    },
    /// A source path passes through a symlink.
    #[error("COPY source `{source_path}` goes through the symlink `{link}`; hint: name the path the link points to")]
    ThroughSymlink {
        /// The source as written.
        source_path: String,
        /// The link, relative to the context.
        link: String,
    },
    /// A source's glob is malformed.
    #[error("COPY source `{source_path}`: {message}; hint: escape `[` `*` `?` with `\\` for a literal name")]
    BadPattern {
        /// The source as written.
        source_path: String,
        /// What is wrong.
        message: String,
    },
    /// ADD of a local archive, which Docker would extract.
    #[error("ADD of the archive `{source_path}` is not supported (Docker extracts it); hint: COPY it and extract it in a RUN step (`RUN tar -xf ...`)")]
    Archive {
        /// The archive, relative to the context.
        source_path: String,
    },
}

/// A build context directory and its `.dockerignore`.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    ignore: DockerIgnore,
}

/// One thing a COPY puts in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Absolute path on the host.
    pub src: PathBuf,
    /// Absolute path in the image.
    pub dest: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits in the image (`--chmod` applied; 0o777 for links).
    pub mode: u32,
}

/// What a [`ContextEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Size in bytes when resolved.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symlink and its target, copied as is.
    Symlink(PathBuf),
}

impl Context {
    /// Opens `dir`. `dockerignore` is the text of a `.dockerignore`; `None`
    /// reads `dir/.dockerignore` when there is one.
    pub fn open(dir: &Path, dockerignore: Option<&str>) -> Result<Context, ContextError> {
        let root = dir.canonicalize().map_err(|source| ContextError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(ContextError::Open {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let ignore = match dockerignore {
            Some(text) => DockerIgnore::parse(text)?,
            None => {
                let path = root.join(".dockerignore");
                match fs::read_to_string(&path) {
                    Ok(text) => DockerIgnore::parse(&text)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
                    Err(source) => return Err(ContextError::Read { path, source }),
                }
            }
        };
        Ok(Context { root, ignore })
    }

    /// The context directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `.dockerignore` excludes `path` (relative to the context).
    pub fn is_ignored(&self, path: &str) -> bool {
        self.ignore.is_ignored(path)
    }

    /// The entries `spec` copies, sorted by destination.
    pub fn resolve(&self, spec: &CopySpec) -> Result<Vec<ContextEntry>, ContextError> {
        let mut out = Vec::new();
        for source in &spec.sources {
            let comps = relative(source).ok_or_else(|| ContextError::Escapes {
                source_path: source.clone(),
            })?;
            let mut found = Vec::new();
            let mut ignored_hit = false;
            let start = out.len();
            self.expand(
                source,
                &self.root.clone(),
                &mut Vec::new(),
                &comps,
                &mut found,
            )?;
            for rel in found {
                let rel_str = rel.join("/");
                let abs = rel.iter().fold(self.root.clone(), |p, c| p.join(c));
                let meta = fs::symlink_metadata(&abs).map_err(|e| read(&abs, e))?;
                let ignored = self.ignore.is_ignored(&rel_str);
                if meta.is_dir() {
                    if ignored && !self.ignore.has_exceptions() {
                        ignored_hit = true;
                        continue;
                    }
                    let before = out.len();
                    self.walk(&abs, &rel, &spec.dest, &mut out)?;
                    // An ignored directory counts as found only if an exception kept something.
                    ignored_hit |= ignored && out.len() == before;
                    continue;
                }
                if ignored {
                    ignored_hit = true;
                    continue;
                }
                let name = rel.last().cloned().unwrap_or_default();
                let dest = if spec.dest_is_dir {
                    join(&spec.dest, &name)
                } else {
                    spec.dest.trim_end_matches('/').to_string()
                };
                let Some(entry) = entry(&abs, dest, &meta)? else {
                    continue;
                };
                if spec.add && matches!(entry.kind, EntryKind::File { .. }) && is_archive(&abs)? {
                    return Err(ContextError::Archive {
                        source_path: rel_str,
                    });
                }
                out.push(entry);
            }
            // Nothing copied from this source at all: say so rather than copy nothing.
            if out.len() == start {
                if self.source_is_empty_dir(&comps) {
                    continue;
                }
                return Err(ContextError::NotFound {
                    source_path: source.clone(),
                    ignored: ignored_hit,
                });
            }
        }
        if let Some(mode) = spec.chmod {
            for e in &mut out {
                if !matches!(e.kind, EntryKind::Symlink(_)) {
                    e.mode = mode;
                }
            }
        }
        // A later source wins a destination, as it would overwrite it.
        let mut dedup: Vec<ContextEntry> = Vec::with_capacity(out.len());
        for e in out.into_iter().rev() {
            if !dedup.iter().any(|d| d.dest == e.dest) {
                dedup.push(e);
            }
        }
        dedup.sort_by(|a, b| a.dest.cmp(&b.dest));
        Ok(dedup)
    }

    /// A source naming an existing, empty (or wholly ignored) directory copies nothing, without error.
    fn source_is_empty_dir(&self, comps: &[String]) -> bool {
        if comps.iter().any(|c| has_meta(c)) {
            return false;
        }
        let rel = comps.join("/");
        let abs = comps.iter().fold(self.root.clone(), |p, c| p.join(c));
        !self.ignore.is_ignored(&rel) && fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir())
    }

    /// Expands `comps` below `dir` (at `rel`), pushing each existing match.
    fn expand(
        &self,
        source: &str,
        dir: &Path,
        rel: &mut Vec<String>,
        comps: &[String],
        found: &mut Vec<Vec<String>>,
    ) -> Result<(), ContextError> {
        let Some((first, rest)) = comps.split_first() else {
            found.push(rel.clone());
            return Ok(());
        };
        if has_meta(first) {
            let pattern = Pattern::glob(first).map_err(|message| ContextError::BadPattern {
                source_path: source.to_string(),
                message,
            })?;
            for (name, meta) in list(dir)? {
                if !pattern.matches(&name) || (!rest.is_empty() && !meta.is_dir()) {
                    continue;
                }
                rel.push(name.clone());
                self.expand(source, &dir.join(&name), rel, rest, found)?;
                rel.pop();
            }
            return Ok(());
        }
        let path = dir.join(first);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Ok(());
        };
        rel.push(first.clone());
        if !rest.is_empty() {
            if meta.file_type().is_symlink() {
                return Err(ContextError::ThroughSymlink {
                    source_path: source.to_string(),
                    link: rel.join("/"),
                });
            }
            if !meta.is_dir() {
                rel.pop();
                return Ok(());
            }
        }
        self.expand(source, &path, rel, rest, found)?;
        rel.pop();
        Ok(())
    }

    /// Pushes the contents of the directory `abs` (at `rel`) under `dest`.
    fn walk(
        &self,
        abs: &Path,
        rel: &[String],
        dest: &str,
        out: &mut Vec<ContextEntry>,
    ) -> Result<(), ContextError> {
        for (name, meta) in list(abs)? {
            let mut child_rel = rel.to_vec();
            child_rel.push(name.clone());
            let ignored = self.ignore.is_ignored(&child_rel.join("/"));
            let child_abs = abs.join(&name);
            let child_dest = join(dest, &name);
            if meta.is_dir() {
                if !ignored {
                    out.extend(entry(&child_abs, child_dest.clone(), &meta)?);
                }
                if !ignored || self.ignore.has_exceptions() {
                    self.walk(&child_abs, &child_rel, &child_dest, out)?;
                }
            } else if !ignored {
                out.extend(entry(&child_abs, child_dest, &meta)?);
            }
        }
        Ok(())
    }

    /// Hashes `entries`: the COPY step's cache input. Sorted by destination,
    /// each entry's destination, kind, mode and content (or link target). A
    /// file that cannot be read hashes as unreadable, so it never matches a
    /// digest of readable content.
    pub fn digest(entries: &[ContextEntry]) -> String {
        let mut sorted: Vec<&ContextEntry> = entries.iter().collect();
        sorted.sort_by(|a, b| a.dest.cmp(&b.dest));
        let mut h = Sha256::new();
        for e in sorted {
            field(&mut h, e.dest.as_bytes());
            h.update(e.mode.to_le_bytes());
            match &e.kind {
                EntryKind::Dir => h.update(b"d"),
                EntryKind::Symlink(target) => {
                    h.update(b"l");
                    field(&mut h, target.as_os_str().as_encoded_bytes());
                }
                EntryKind::File { .. } => {
                    h.update(b"f");
                    match hash_file(&e.src) {
                        Ok(d) => h.update(d),
                        Err(_) => h.update(b"unreadable"),
                    }
                }
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    h.update(total.to_le_bytes());
    Ok(h.finalize().into())
}

fn read(path: &Path, source: std::io::Error) -> ContextError {
    ContextError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory's entries, sorted by name, not following symlinks.
fn list(dir: &Path) -> Result<Vec<(String, fs::Metadata)>, ContextError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| read(dir, e))? {
        let e = e.map_err(|e| read(dir, e))?;
        let meta = fs::symlink_metadata(e.path()).map_err(|err| read(&e.path(), err))?;
        out.push((e.file_name().to_string_lossy().into_owned(), meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn entry(
    abs: &Path,
    dest: String,
    meta: &fs::Metadata,
) -> Result<Option<ContextEntry>, ContextError> {
    let ft = meta.file_type();
    let mode = meta.permissions().mode() & 0o7777;
    let kind = if ft.is_symlink() {
        EntryKind::Symlink(fs::read_link(abs).map_err(|e| read(abs, e))?)
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File { size: meta.len() }
    } else {
        return Ok(None);
    };
    let mode = if ft.is_symlink() { 0o777 } else { mode };
    Ok(Some(ContextEntry {
        src: abs.to_path_buf(),
        dest,
        kind,
        mode,
    }))
}

/// `source` as components relative to the context; `None` when `..` climbs out.
fn relative(source: &str) -> Option<Vec<String>> {
    let mut comps: Vec<String> = Vec::new();
    for c in source.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop()?;
            }
            c => comps.push(c.to_string()),
        }
    }
    Some(comps)
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Whether the file starts like an archive ADD would extract (tar, gzip,
/// bzip2, xz, zstd).
fn is_archive(path: &Path) -> Result<bool, ContextError> {
    let mut head = Vec::with_capacity(512);
    fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| read(path, e))?;
    let starts = |m: &[u8]| head.starts_with(m);
    Ok(starts(&[0x1f, 0x8b])
        || starts(b"BZh")
        || starts(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || starts(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.get(257..262) == Some(b"ustar"))
}

#[cfg(test)]
mod tests;
