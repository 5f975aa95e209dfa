//! Layer application: each layer's tar stream, in order, onto one directory, with OCI
//! whiteouts, and nothing ever created, changed or opened outside that directory.
//!
//! Every parent directory is opened with `openat2(RESOLVE_IN_ROOT)` from the destination, so
//! a symlink a layer planted (`a -> /etc`) resolves inside it (`dest/etc`), never on the host;
//! the final component is always made or removed with `*at` calls that do not follow it.
//! Refused as [`OciError::Hostile`]: `..` climbing out of the root, symlinks whose target
//! (relative from the link's directory, absolute from the root) climbs above it, device nodes,
//! hardlinks to outside or to what is not unpacked yet. Extended attributes are not applied
//! (xattrs and file capabilities are skipped). Needs Linux 5.6 or later (`openat2`).

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use tar::EntryType;

use crate::digest::Digest;
use crate::error::OciError;
use crate::{keys, Image, Limits, Progress, Store};

/// What an unpack wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries written (files, directories, links, FIFOs), over all layers.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Layers applied.
    pub layers: usize,
}

/// How a layer blob is compressed (found by its first bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Checks that `media_type` is a layer type Petty applies; the compression itself is
    /// found from the blob's magic bytes.
    pub(crate) fn for_media_type(media_type: &str) -> Result<(), OciError> {
        const PREFIXES: [&str; 3] = [
            "application/vnd.oci.image.layer.",
            "application/vnd.docker.image.rootfs.",
            "application/vnd.docker.image.layer.",
        ];
        const SUFFIXES: [&str; 5] = [".tar", ".tar+gzip", ".tar+zstd", ".tar.gzip", ".tar.zstd"];
        let known = media_type.is_empty()
            || (PREFIXES.iter().any(|p| media_type.starts_with(p))
                && SUFFIXES.iter().any(|s| media_type.ends_with(s)));
        if known && !media_type.contains("encrypted") {
            Ok(())
        } else {
            Err(OciError::Unsupported {
                what: format!("layer media type {media_type:?} (Petty applies tar, tar+gzip and tar+zstd layers)"),
            })
        }
    }

    fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// The uncompressed tar stream of a layer blob.
pub(crate) fn layer_reader(file: File) -> io::Result<Box<dyn Read>> {
    let mut buf = BufReader::with_capacity(256 * 1024, file);
    let magic = buf.fill_buf()?;
    Ok(match Compression::detect(magic) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buf)),
        Compression::Zstd => Box::new(ZstdReader::new(buf)?),
        Compression::None => Box::new(buf),
    })
}

/// A zstd stream of one or more frames.
struct ZstdReader<R: BufRead> {
    decoder: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(source: R) -> io::Result<Self> {
        let decoder = ruzstd::decoding::StreamingDecoder::new(source).map_err(io::Error::other)?;
        Ok(ZstdReader {
            decoder: Some(decoder),
        })
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(decoder) = self.decoder.take() else {
                return Ok(0);
            };
            let mut source = decoder.into_inner();
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.decoder =
                Some(ruzstd::decoding::StreamingDecoder::new(source).map_err(io::Error::other)?);
        }
    }
}

pub(crate) fn unpack(
    image: &Image,
    store: &Store,
    dest: &Path,
    limits: &Limits,
    progress: Progress<'_>,
) -> Result<UnpackStats, OciError> {
    if image.layers.len() > limits.max_layers {
        return Err(OciError::TooLarge {
            what: format!("the image has {} layers", image.layers.len()),
            limit: limits.max_layers as u64,
            key: keys::MAX_LAYERS,
        });
    }
    let mut unpacker = Unpacker::open(dest, limits)?;
    let total = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        Compression::for_media_type(&layer.media_type)?;
        let path = store.blob_path(&layer.digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OciError::NotFound {
                what: format!("layer {} in the store", layer.digest),
                hint: "pull the image again".into(),
            },
            _ => OciError::io_at(format!("opening {}", path.display()))(e),
        })?;
        let (files, bytes) = (unpacker.stats.files, unpacker.stats.bytes);
        let reader = layer_reader(file)
            .map_err(OciError::io_at(format!("reading layer {}", layer.digest)))?;
        unpacker.apply(&layer.digest, reader)?;
        unpacker.stats.layers += 1;
        progress(&format!(
            "unpacked layer {}/{total} {}…: {} entries, {}",
            i + 1,
            layer.digest.short(),
            unpacker.stats.files - files,
            crate::human_bytes(unpacker.stats.bytes - bytes)
        ));
    }
    unpacker.finish()?;
    Ok(unpacker.stats)
}

/// A directory's metadata, set once every layer is in (writing children changes mtimes, and
/// a read-only directory could not take them).
#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: u64,
}

pub(crate) struct Unpacker {
    root: OwnedFd,
    is_root: bool,
    max_bytes: u64,
    stats: UnpackStats,
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    /// Paths written by the current layer, and their ancestors.
    touched: HashSet<Vec<u8>>,
}

/// Why an entry is refused; becomes [`OciError::Hostile`] with the layer and path.
struct Refusal(String);

enum EntryError {
    Refused(Refusal),
    Oci(OciError),
}

impl From<OciError> for EntryError {
    fn from(e: OciError) -> Self {
        EntryError::Oci(e)
    }
}

impl From<Refusal> for EntryError {
    fn from(r: Refusal) -> Self {
        EntryError::Refused(r)
    }
}

fn refuse(reason: impl Into<String>) -> Refusal {
    Refusal(reason.into())
}

/// Splits `path` into normal components, resolving `.` and `..` lexically; `None` when it
/// climbs above the root. `base` is where a relative path starts.
fn clean(base: &[Vec<u8>], path: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = if path.starts_with(b"/") {
        Vec::new()
    } else {
        base.to_vec()
    };
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn errno(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens `path` (relative to `root`) with every symlink resolved as if `root` were `/`.
fn open_in_root(root: BorrowedFd<'_>, path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = cstring(if path.is_empty() { b"." } else { path })?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    for _ in 0..16 {
        // SAFETY: `path` is a NUL-terminated string and `how` a live `open_how` of the size
        // passed; the kernel reads both and returns a new descriptor or an error.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match errno(rc) {
            // SAFETY: a non-negative return of openat2 is a new descriptor we own.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no openat2 (Linux 5.6 or later is needed to unpack images safely)",
            )),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("openat2 kept racing with renames"))
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` points to writable memory of a `stat`.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: fstatat succeeded, so it filled in `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// The names in the directory `dir` (without `.` and `..`).
fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let fd = openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: `fd` is an open directory descriptor; fdopendir takes it over (released with
    // closedir below, so `into_raw_fd` keeps it from being closed twice).
    let dirp = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `dirp` is a live DIR stream; readdir returns null at the end.
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: `d_name` of a returned dirent is a NUL-terminated name.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `dirp` came from fdopendir and is closed once.
    unsafe { libc::closedir(dirp) };
    Ok(names)
}

fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::c_uint,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; a non-negative result is a new descriptor we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: see above.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Removes `name` in `dir`, whatever it is, without following symlinks.
fn remove_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        for child in list_dir(sub.as_fd())? {
            remove_at(sub.as_fd(), &child)?;
        }
        // SAFETY: plain syscall on a NUL-terminated name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
    } else {
        // SAFETY: as above.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
    }
}

impl Unpacker {
    pub(crate) fn open(dest: &Path, limits: &Limits) -> Result<Unpacker, OciError> {
        let what = || format!("opening the unpack destination {}", dest.display());
        let root = File::open(dest).map_err(OciError::io_at(what()))?;
        let root: OwnedFd = root.into();
        if !list_dir(root.as_fd())
            .map_err(OciError::io_at(what()))?
            .is_empty()
        {
            return Err(OciError::io_at(what())(io::Error::other(
                "the directory is not empty",
            )));
        }
        Ok(Unpacker {
            root,
            // SAFETY: geteuid has no preconditions.
            is_root: unsafe { libc::geteuid() } == 0,
            max_bytes: limits.max_unpacked_bytes,
            stats: UnpackStats::default(),
            dirs: BTreeMap::new(),
            touched: HashSet::new(),
        })
    }

    /// Applies one layer's tar stream.
    pub(crate) fn apply(&mut self, layer: &Digest, reader: impl Read) -> Result<(), OciError> {
        self.touched.clear();
        let mut archive = tar::Archive::new(reader);
        let read_err = || OciError::io_at(format!("reading layer {layer}"));
        for entry in archive.entries().map_err(read_err())? {
            let mut entry = entry.map_err(read_err())?;
            let path = entry.path_bytes().into_owned();
            match self.entry(&mut entry, &path) {
                Ok(()) => {}
                Err(EntryError::Refused(Refusal(reason))) => {
                    return Err(OciError::Hostile {
                        layer: layer.clone(),
                        path: String::from_utf8_lossy(&path).into_owned(),
                        reason,
                    })
                }
                Err(EntryError::Oci(OciError::IoAt { what, source })) => {
                    return Err(OciError::IoAt {
                        what: format!("layer {layer}: {what}"),
                        source,
                    })
                }
                Err(EntryError::Oci(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn io(what: &str, path: &[u8]) -> impl FnOnce(io::Error) -> EntryError {
        let what = format!("{what} {:?}", String::from_utf8_lossy(path));
        move |source| EntryError::Oci(OciError::IoAt { what, source })
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), EntryError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = clean(&[], path)
            .ok_or_else(|| refuse("has '..' components that climb out of the root"))?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): its metadata is the destination's.
            return Ok(());
        };
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.whiteout(parent, hidden, path);
        }
        match kind {
            EntryType::Char | EntryType::Block => return Err(refuse("is a device node").into()),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            other => {
                tracing::warn!(?other, path = %String::from_utf8_lossy(path), "skipping a tar entry of an unknown type");
                return Ok(());
            }
        }
        let header = entry.header();
        let bad_header = |_| refuse("has a malformed header");
        let mode = header.mode().map_err(bad_header)? & 0o7777;
        let uid = header.uid().map_err(bad_header)?;
        let gid = header.gid().map_err(bad_header)?;
        let mtime = header.mtime().map_err(bad_header)?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let cname = cstring(name).map_err(|_| refuse("has a NUL byte"))?;

        // Checks that need nothing on disk come first.
        let link_target = match kind {
            EntryType::Symlink => {
                let target = link.as_deref().unwrap_or_default();
                if target.is_empty() {
                    return Err(refuse("is a symlink with an empty target").into());
                }
                if clean(parent, target).is_none() {
                    return Err(refuse(format!(
                        "is a symlink to {:?}, which points outside the image",
                        String::from_utf8_lossy(target)
                    ))
                    .into());
                }
                Some(cstring(target).map_err(|_| refuse("has a NUL byte in its target"))?)
            }
            EntryType::Link => {
                let target = link.as_deref().unwrap_or_default();
                let Some(t) = clean(&[], target).filter(|t| !t.is_empty()) else {
                    return Err(refuse(format!(
                        "is a hardlink to {:?}, outside the image",
                        String::from_utf8_lossy(target)
                    ))
                    .into());
                };
                Some(cstring(&join(&t)).map_err(|_| refuse("has a NUL byte in its target"))?)
            }
            _ => None,
        };
        let size = entry.size();
        if matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) && self.stats.bytes.saturating_add(size) > self.max_bytes
        {
            return Err(OciError::TooLarge {
                what: format!(
                    "the unpacked image is more than {} (at {:?})",
                    crate::human_bytes(self.max_bytes),
                    String::from_utf8_lossy(path)
                ),
                limit: self.max_bytes,
                key: keys::MAX_UNPACKED,
            }
            .into());
        }

        let parent_fd = self.dir_fd(parent, path)?;
        let pfd = parent_fd.as_fd();
        let existing = lstat_at(pfd, &cname).map_err(Self::io("looking at", path))?;
        let key = join(&comps);

        if kind == EntryType::Directory {
            match existing {
                Some(st) if is_dir(&st) => {}
                Some(_) => {
                    remove_at(pfd, &cname).map_err(Self::io("replacing", path))?;
                    self.mkdir(pfd, &cname, path)?;
                }
                None => self.mkdir(pfd, &cname, path)?,
            }
            if self.is_root {
                self.chown(pfd, &cname, uid, gid, path)?;
            }
            self.dirs.insert(key.clone(), DirMeta { mode, mtime });
        } else {
            if let Some(st) = existing {
                if is_dir(&st) {
                    self.forget_dirs(&key);
                }
                if kind == EntryType::Link
                    && link_target
                        .as_deref()
                        .is_some_and(|t| t.to_bytes() == key.as_slice())
                {
                    // A hardlink to itself: nothing to do.
                    return Ok(());
                }
                remove_at(pfd, &cname).map_err(Self::io("replacing", path))?;
            }
            match kind {
                EntryType::Symlink => {
                    let target = link_target.unwrap_or_default();
                    // SAFETY: both strings are NUL-terminated; symlinkat never follows `cname`.
                    check(unsafe {
                        libc::symlinkat(target.as_ptr(), pfd.as_raw_fd(), cname.as_ptr())
                    })
                    .map_err(Self::io("making the symlink", path))?;
                }
                EntryType::Link => {
                    let target = link_target.unwrap_or_default();
                    self.hardlink(&target, pfd, &cname)?;
                }
                EntryType::Fifo => {
                    // SAFETY: NUL-terminated name; mknodat makes a FIFO, never follows `cname`.
                    check(unsafe {
                        libc::mknodat(pfd.as_raw_fd(), cname.as_ptr(), libc::S_IFIFO | 0o600, 0)
                    })
                    .map_err(Self::io("making the FIFO", path))?;
                }
                _ => {
                    let fd = openat(
                        pfd,
                        &cname,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                        0o600,
                    )
                    .map_err(Self::io("creating", path))?;
                    let mut file = File::from(fd);
                    let copied = io::copy(&mut entry.take(size), &mut file)
                        .map_err(Self::io("writing", path))?;
                    if copied != size {
                        return Err(OciError::io_at(format!(
                            "reading {:?}",
                            String::from_utf8_lossy(path)
                        ))(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the layer ends inside the file",
                        ))
                        .into());
                    }
                    self.stats.bytes += size;
                }
            }
            // A hardlink shares its target's inode, owner and mode included.
            if self.is_root && kind != EntryType::Link {
                self.chown(pfd, &cname, uid, gid, path)?;
            }
            if kind != EntryType::Symlink && kind != EntryType::Link {
                // After chown, which clears setuid and setgid.
                // SAFETY: NUL-terminated name of what was just made (not a symlink).
                check(unsafe { libc::fchmodat(pfd.as_raw_fd(), cname.as_ptr(), mode, 0) })
                    .map_err(Self::io("setting the mode of", path))?;
            }
            if kind != EntryType::Link {
                set_mtime(pfd, &cname, mtime).map_err(Self::io("setting the time of", path))?;
            }
        }
        self.stats.files += 1;
        self.touch(&comps);
        Ok(())
    }

    fn mkdir(&self, dir: BorrowedFd<'_>, name: &CStr, path: &[u8]) -> Result<(), EntryError> {
        // SAFETY: NUL-terminated name; mkdirat never follows `name`.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) })
            .map_err(Self::io("making the directory", path))
    }

    fn chown(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        uid: u64,
        gid: u64,
        path: &[u8],
    ) -> Result<(), EntryError> {
        let (Ok(uid), Ok(gid)) = (libc::uid_t::try_from(uid), libc::gid_t::try_from(gid)) else {
            return Err(refuse("has a uid or gid out of range").into());
        };
        // SAFETY: NUL-terminated name; AT_SYMLINK_NOFOLLOW changes a symlink itself.
        check(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map_err(Self::io("changing the owner of", path))
    }

    fn hardlink(&self, target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), EntryError> {
        let tbytes = target.to_bytes();
        let (tparent, tname) = match tbytes.iter().rposition(|&b| b == b'/') {
            Some(i) => (&tbytes[..i], &tbytes[i + 1..]),
            None => (&b""[..], tbytes),
        };
        let not_there = || {
            refuse(format!(
                "is a hardlink to {:?}, which is not unpacked (yet)",
                String::from_utf8_lossy(tbytes)
            ))
        };
        let tdir = match open_in_root(self.root.as_fd(), tparent, libc::O_PATH | libc::O_DIRECTORY)
        {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(not_there().into())
            }
            Err(e) => return Err(Self::io("opening the directory of", tbytes)(e)),
        };
        let tname = cstring(tname).map_err(|_| refuse("has a NUL byte"))?;
        match lstat_at(tdir.as_fd(), &tname).map_err(Self::io("looking at", tbytes))? {
            None => return Err(not_there().into()),
            Some(st) if is_dir(&st) => return Err(refuse("is a hardlink to a directory").into()),
            Some(_) => {}
        }
        // SAFETY: NUL-terminated names; flags 0 links a symlink itself, never its target.
        check(unsafe {
            libc::linkat(
                tdir.as_raw_fd(),
                tname.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                0,
            )
        })
        .map_err(Self::io("making the hardlink", tbytes))
    }

    /// Opens (making what is missing) the directory `comps`, resolved inside the root.
    fn dir_fd(&self, comps: &[Vec<u8>], path: &[u8]) -> Result<OwnedFd, EntryError> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match open_in_root(self.root.as_fd(), &join(comps), flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
            Err(e) => return Err(Self::io("opening the directory of", path)(e)),
        }
        let mut fd = open_in_root(self.root.as_fd(), b"", flags)
            .map_err(Self::io("opening the root for", path))?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            match open_in_root(self.root.as_fd(), &prefix, flags) {
                Ok(next) => {
                    fd = next;
                    continue;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
                Err(e) => return Err(Self::io("opening", &prefix)(e)),
            }
            let name = cstring(&comps[i]).map_err(|_| refuse("has a NUL byte"))?;
            if let Some(st) =
                lstat_at(fd.as_fd(), &name).map_err(Self::io("looking at", &prefix))?
            {
                // A file, or a symlink to nothing or to a non-directory, stands where a
                // directory must be: replace it (the symlink itself, never its target).
                if !is_dir(&st) || is_symlink(&st) {
                    remove_at(fd.as_fd(), &name).map_err(Self::io("replacing", &prefix))?;
                }
            }
            self.mkdir(fd.as_fd(), &name, &prefix)?;
            fd = open_in_root(self.root.as_fd(), &prefix, flags)
                .map_err(Self::io("opening", &prefix))?;
        }
        Ok(fd)
    }

    fn whiteout(
        &mut self,
        parent: &[Vec<u8>],
        hidden: &[u8],
        path: &[u8],
    ) -> Result<(), EntryError> {
        let dir = match open_in_root(
            self.root.as_fd(),
            &join(parent),
            libc::O_PATH | libc::O_DIRECTORY,
        ) {
            Ok(fd) => fd,
            // Nothing below to hide.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(())
            }
            Err(e) => return Err(Self::io("opening the directory of", path)(e)),
        };
        if hidden == b".wh..opq" {
            let prefix = join(parent);
            return self
                .clear_lower(dir.as_fd(), &prefix)
                .map_err(Self::io("clearing the opaque directory", &prefix));
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.starts_with(b".wh.") {
            return Err(refuse("is a whiteout of no valid name").into());
        }
        let mut target = parent.to_vec();
        target.push(hidden.to_vec());
        let key = join(&target);
        if self.touched.contains(&key) {
            return Ok(());
        }
        let name = cstring(hidden).map_err(|_| refuse("has a NUL byte"))?;
        self.forget_dirs(&key);
        remove_at(dir.as_fd(), &name).map_err(Self::io("removing what is whited out by", path))
    }

    /// Removes from `dir` (at `prefix`) all that the current layer did not write.
    fn clear_lower(&mut self, dir: BorrowedFd<'_>, prefix: &[u8]) -> io::Result<()> {
        for name in list_dir(dir)? {
            let mut key = prefix.to_vec();
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(name.to_bytes());
            if self.touched.contains(&key) {
                if let Some(st) = lstat_at(dir, &name)? {
                    if is_dir(&st) {
                        let sub = openat(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                        self.clear_lower(sub.as_fd(), &key)?;
                    }
                }
            } else {
                self.forget_dirs(&key);
                remove_at(dir, &name)?;
            }
        }
        Ok(())
    }

    fn touch(&mut self, comps: &[Vec<u8>]) {
        for i in 1..=comps.len() {
            self.touched.insert(join(&comps[..i]));
        }
    }

    /// Drops the deferred metadata of `key` and everything under it.
    fn forget_dirs(&mut self, key: &[u8]) {
        let mut under = key.to_vec();
        under.push(b'/');
        self.dirs
            .retain(|k, _| k.as_slice() != key && !k.starts_with(&under));
    }

    /// Sets the directories' modes and times, now that nothing more is written into them.
    pub(crate) fn finish(&mut self) -> Result<(), OciError> {
        for (key, meta) in std::mem::take(&mut self.dirs) {
            let fd = match open_in_root(
                self.root.as_fd(),
                &key,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(OciError::io_at(format!(
                        "opening {:?}",
                        String::from_utf8_lossy(&key)
                    ))(e))
                }
            };
            let what = || {
                format!(
                    "setting the mode and time of {:?}",
                    String::from_utf8_lossy(&key)
                )
            };
            // SAFETY: fchmod on a descriptor we own.
            check(unsafe { libc::fchmod(fd.as_raw_fd(), meta.mode) })
                .map_err(OciError::io_at(what()))?;
            let t = timespec(meta.mtime);
            // SAFETY: futimens on a descriptor we own, with two timespecs.
            check(unsafe { libc::futimens(fd.as_raw_fd(), [t, t].as_ptr()) })
                .map_err(OciError::io_at(what()))?;
        }
        Ok(())
    }
}

fn timespec(mtime: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX),
        tv_nsec: 0,
    }
}

/// Sets the access and modification times of `name` in `dir`, without following a symlink.
fn set_mtime(dir: BorrowedFd<'_>, name: &CStr, mtime: u64) -> io::Result<()> {
    let t = timespec(mtime);
    // SAFETY: two timespecs, and `name` is NUL-terminated.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use tar::{Builder, Header};

    use super::*;

    /// A tar built entry by entry.
    struct Tar(Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, mode: u32, size: u64) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h
        }

        /// Sets the name raw, so `..` and absolute names get through.
        fn raw(&mut self, mut h: Header, path: &str, data: &[u8]) -> &mut Tar {
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(&mut self, path: &str, data: &[u8]) -> &mut Tar {
            self.file_mode(path, data, 0o644)
        }

        fn file_mode(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Tar {
            self.raw(
                Tar::header(EntryType::Regular, mode, data.len() as u64),
                path,
                data,
            )
        }

        fn dir(&mut self, path: &str) -> &mut Tar {
            self.raw(Tar::header(EntryType::Directory, 0o755, 0), path, b"")
        }

        fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Tar {
            let mut h = Tar::header(kind, 0o777, 0);
            let l = &mut h.as_old_mut().linkname;
            l.fill(0);
            l[..target.len()].copy_from_slice(target.as_bytes());
            self.raw(h, path, b"")
        }

        fn node(&mut self, kind: EntryType, path: &str) -> &mut Tar {
            self.raw(Tar::header(kind, 0o644, 0), path, b"")
        }

        fn done(&mut self) -> Vec<u8> {
            std::mem::replace(&mut self.0, Builder::new(Vec::new()))
                .into_inner()
                .unwrap()
        }
    }

    /// A destination inside a scratch directory that also holds an "outside" tree.
    struct Scratch {
        _dir: tempfile::TempDir,
        dest: std::path::PathBuf,
        outside: std::path::PathBuf,
    }

    fn scratch() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let outside = dir.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
        Scratch {
            _dir: dir,
            dest,
            outside,
        }
    }

    fn apply(dest: &Path, layers: &[Vec<u8>]) -> Result<UnpackStats, OciError> {
        apply_limited(dest, layers, u64::MAX)
    }

    fn apply_limited(dest: &Path, layers: &[Vec<u8>], max: u64) -> Result<UnpackStats, OciError> {
        let limits = Limits {
            max_unpacked_bytes: max,
            ..Limits::default()
        };
        let mut u = Unpacker::open(dest, &limits)?;
        for (i, l) in layers.iter().enumerate() {
            u.apply(&Digest::of_bytes(&[i as u8]), &l[..])?;
        }
        u.finish()?;
        Ok(u.stats)
    }

    fn listing(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut entries: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for p in entries {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &p, out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out
    }

    fn outside_unchanged(s: &Scratch) {
        assert_eq!(listing(&s.outside), ["passwd"]);
        assert_eq!(fs::read(s.outside.join("passwd")).unwrap(), b"root:x:0:0");
    }

    fn hostile(err: OciError, path_part: &str) {
        match err {
            OciError::Hostile { path, reason, .. } => {
                assert!(path.contains(path_part), "{path} / {reason}")
            }
            other => panic!("expected Hostile, got {other}"),
        }
    }

    #[test]
    fn applies_files_dirs_links_and_modes() {
        let s = scratch();
        let layer = Tar::new()
            .dir("bin/")
            .file_mode("bin/tool", b"#!/bin/sh\n", 0o4755)
            .link(EntryType::Symlink, "bin/sh", "tool")
            .link(EntryType::Symlink, "abs", "/bin/tool")
            .link(EntryType::Link, "bin/hard", "bin/tool")
            .node(EntryType::Fifo, "run/fifo")
            .file("deep/er/file", b"x")
            .done();
        let stats = apply(&s.dest, &[layer]).unwrap();
        assert_eq!(stats.bytes, 11);
        assert_eq!(stats.files, 7);
        let tool = fs::metadata(s.dest.join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755, "setuid is kept");
        assert_eq!(tool.mtime(), 1_600_000_000);
        assert_eq!(
            fs::read_link(s.dest.join("bin/sh")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::read_link(s.dest.join("abs")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            fs::metadata(s.dest.join("bin/hard")).unwrap().ino(),
            tool.ino()
        );
        assert!(fs::symlink_metadata(s.dest.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like());
        assert_eq!(fs::read(s.dest.join("deep/er/file")).unwrap(), b"x");
        assert_eq!(
            fs::metadata(s.dest.join("bin")).unwrap().mtime(),
            1_600_000_000,
            "dir times are set last"
        );
    }

    trait FifoLike {
        fn is_fifo_like(&self) -> bool;
    }

    impl FifoLike for fs::FileType {
        fn is_fifo_like(&self) -> bool {
            std::os::unix::fs::FileTypeExt::is_fifo(self)
        }
    }

    #[test]
    fn later_layers_replace_and_whiteouts_remove() {
        let s = scratch();
        let lower = Tar::new()
            .file("etc/gone", b"1")
            .file("etc/kept", b"1")
            .file("was_file", b"f")
            .file("was_dir/inner", b"d")
            .file("dir/x", b"x")
            .done();
        let upper = Tar::new()
            .file("etc/.wh.gone", b"")
            .dir("was_file/")
            .file("was_file/now", b"n")
            .file("was_dir", b"now a file")
            .file("dir/.wh.x", b"")
            .file("etc/.wh.never-existed", b"")
            .file("nodir/.wh.x", b"")
            .done();
        apply(&s.dest, &[lower, upper]).unwrap();
        assert_eq!(
            listing(&s.dest),
            [
                "dir/",
                "etc/",
                "etc/kept",
                "was_dir",
                "was_file/",
                "was_file/now"
            ]
        );
        assert_eq!(fs::read(s.dest.join("was_dir")).unwrap(), b"now a file");
    }

    #[test]
    fn opaque_dirs_keep_only_this_layers_entries() {
        let s = scratch();
        let lower = Tar::new()
            .file("d/old1", b"1")
            .file("d/sub/old2", b"2")
            .file("d/keep-dir/old3", b"3")
            .file("other/stay", b"4")
            .done();
        let upper = Tar::new()
            .file("d/before", b"b")
            .file("d/keep-dir/new", b"n")
            .file("d/.wh..wh..opq", b"")
            .file("d/after", b"a")
            .done();
        apply(&s.dest, &[lower, upper]).unwrap();
        assert_eq!(
            listing(&s.dest),
            [
                "d/",
                "d/after",
                "d/before",
                "d/keep-dir/",
                "d/keep-dir/new",
                "other/",
                "other/stay"
            ]
        );
    }

    #[test]
    fn refuses_dotdot_entries() {
        for path in ["../escape", "a/../../escape", "./../../outside/passwd"] {
            let s = scratch();
            let layer = Tar::new().file(path, b"pwned").done();
            hostile(apply(&s.dest, &[layer]).unwrap_err(), "..");
            outside_unchanged(&s);
            assert!(!s.dest.parent().unwrap().join("escape").exists());
        }
        // `..` that stays inside is fine.
        let s = scratch();
        apply(&s.dest, &[Tar::new().file("a/../b", b"ok").done()]).unwrap();
        assert_eq!(fs::read(s.dest.join("b")).unwrap(), b"ok");
    }

    #[test]
    fn refuses_escaping_symlinks() {
        for (path, target) in [
            ("link", "../outside"),
            ("a/b/link", "../../../x"),
            ("abs", "/../outside"),
            ("deep", "x/../../.."),
        ] {
            let s = scratch();
            let layer = Tar::new().link(EntryType::Symlink, path, target).done();
            hostile(apply(&s.dest, &[layer]).unwrap_err(), path);
            outside_unchanged(&s);
        }
        let s = scratch();
        let ok = Tar::new()
            .link(EntryType::Symlink, "a/b/up", "../../c")
            .link(EntryType::Symlink, "etc", "/outside")
            .done();
        apply(&s.dest, &[ok]).unwrap();
    }

    #[test]
    fn refuses_device_nodes() {
        for kind in [EntryType::Char, EntryType::Block] {
            let s = scratch();
            hostile(
                apply(&s.dest, &[Tar::new().node(kind, "dev/sda").done()]).unwrap_err(),
                "dev/sda",
            );
            assert!(!s.dest.join("dev/sda").exists());
        }
    }

    #[test]
    fn refuses_hardlinks_outside_or_to_nothing() {
        for target in [
            "../outside/passwd",
            "../../etc/passwd",
            "missing",
            "a/../../x",
        ] {
            let s = scratch();
            hostile(
                apply(
                    &s.dest,
                    &[Tar::new().link(EntryType::Link, "h", target).done()],
                )
                .unwrap_err(),
                "h",
            );
            outside_unchanged(&s);
        }
        // An absolute hardlink name is relative to the image root.
        let s = scratch();
        let layer = Tar::new()
            .file("etc/passwd", b"image")
            .link(EntryType::Link, "h", "/etc/passwd")
            .done();
        apply(&s.dest, &[layer]).unwrap();
        assert_eq!(fs::read(s.dest.join("h")).unwrap(), b"image");
    }

    #[test]
    fn writes_through_planted_symlinks_stay_inside() {
        let s = scratch();
        let outside = s.outside.display().to_string();
        // The absolute target `/<outside>` resolves inside dest, so it is allowed; writing
        // through it must land in dest, not in the real outside directory.
        let lower = Tar::new()
            .link(EntryType::Symlink, "a", &outside)
            .link(EntryType::Symlink, "rel", "a")
            .done();
        let upper = Tar::new()
            .file("a/passwd", b"pwned")
            .file("rel/other", b"pwned")
            .link(EntryType::Link, "hl", "a/passwd")
            .file("a/.wh.passwd2", b"")
            .done();
        apply(&s.dest, &[lower, upper]).unwrap();
        outside_unchanged(&s);
        // The link pointed at nothing inside dest, so it was replaced by a directory.
        assert_eq!(fs::read(s.dest.join("a/passwd")).unwrap(), b"pwned");
        assert_eq!(fs::read(s.dest.join("a/other")).unwrap(), b"pwned");

        // A link to a directory that exists inside: followed, inside.
        let s = scratch();
        let lower = Tar::new()
            .dir("real/")
            .link(EntryType::Symlink, "a", "/real")
            .link(EntryType::Symlink, "b", "real")
            .done();
        let upper = Tar::new()
            .file("a/passwd", b"pwned")
            .file("b/x", b"y")
            .done();
        apply(&s.dest, &[lower, upper]).unwrap();
        outside_unchanged(&s);
        assert_eq!(fs::read(s.dest.join("real/passwd")).unwrap(), b"pwned");
        assert_eq!(fs::read(s.dest.join("real/x")).unwrap(), b"y");
        assert!(fs::symlink_metadata(s.dest.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());

        // An absolute link naming the host's own directory resolves inside dest.
        let s = scratch();
        let real_outside = format!("{}/", s.outside.display());
        let lower = Tar::new()
            .dir(&real_outside[1..])
            .link(EntryType::Symlink, "a", &real_outside)
            .done();
        let upper = Tar::new().file("a/passwd", b"pwned").done();
        apply(&s.dest, &[lower, upper]).unwrap();
        outside_unchanged(&s);
        assert_eq!(
            fs::read(s.dest.join(&real_outside[1..]).join("passwd")).unwrap(),
            b"pwned"
        );

        // Replacing a symlink to a host file writes a new file, never through the link.
        let s = scratch();
        let outside_file = s.outside.join("passwd").display().to_string();
        let layer = Tar::new()
            .link(EntryType::Symlink, "f", &outside_file)
            .file("f", b"pwned")
            .done();
        apply(&s.dest, &[layer]).unwrap();
        outside_unchanged(&s);
        assert_eq!(fs::read(s.dest.join("f")).unwrap(), b"pwned");

        // A whiteout through a planted symlink removes nothing outside.
        let s = scratch();
        let layer1 = Tar::new().link(EntryType::Symlink, "w", &outside).done();
        let layer2 = Tar::new()
            .file("w/.wh.passwd", b"")
            .file("w/.wh..wh..opq", b"")
            .done();
        apply(&s.dest, &[layer1, layer2]).unwrap();
        outside_unchanged(&s);
    }

    #[test]
    fn stops_over_the_unpacked_limit() {
        let s = scratch();
        let layer = Tar::new()
            .file("a", &[0u8; 600])
            .file("b", &[0u8; 600])
            .done();
        match apply_limited(&s.dest, &[layer], 1000).unwrap_err() {
            OciError::TooLarge { key, limit, .. } => {
                assert_eq!((key, limit), (keys::MAX_UNPACKED, 1000))
            }
            other => panic!("{other}"),
        }
        assert!(!s.dest.join("b").exists());
    }

    #[test]
    fn refuses_a_destination_that_is_not_empty() {
        let s = scratch();
        fs::write(s.dest.join("x"), b"").unwrap();
        assert!(Unpacker::open(&s.dest, &Limits::default()).is_err());
    }

    #[test]
    fn reads_gzip_and_zstd_layers() {
        let layer = Tar::new().file("hello", b"world").done();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &layer).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &layer[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // Two frames, as parallel compressors write them.
        let (first, second) = layer.split_at(1024);
        let mut two =
            ruzstd::encoding::compress_to_vec(first, ruzstd::encoding::CompressionLevel::Fastest);
        two.extend(ruzstd::encoding::compress_to_vec(
            second,
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        for blob in [layer.clone(), gz, zst, two] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("blob");
            fs::write(&path, &blob).unwrap();
            let mut out = Vec::new();
            layer_reader(File::open(&path).unwrap())
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, layer);
        }
    }

    #[test]
    fn garbage_layers_fail_without_panicking() {
        let s = scratch();
        let mut junk = Tar::new().file("a", b"1234").done();
        junk.truncate(700);
        assert!(apply(&s.dest, &[junk]).is_err());
        let s = scratch();
        assert!(apply(&s.dest, &[vec![0xffu8; 2048]]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        fs::write(&path, [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]).unwrap();
        let r = layer_reader(File::open(&path).unwrap())
            .and_then(|mut r| r.read_to_end(&mut Vec::new()));
        assert!(r.is_err());
    }

    #[test]
    fn media_types() {
        for ok in [
            "",
            crate::manifest::OCI_LAYER_TAR,
            crate::manifest::OCI_LAYER_GZIP,
            crate::manifest::OCI_LAYER_ZSTD,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ] {
            Compression::for_media_type(ok).unwrap();
        }
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "text/plain",
            "application/vnd.oci.image.layer.v1.squashfs",
        ] {
            assert!(Compression::for_media_type(bad).is_err(), "{bad}");
        }
    }
}
