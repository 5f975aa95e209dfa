//! The guest root file system: an ext4 image holding a trimmed Debian
//! `minbase` userland (sh, coreutils, python3) with the agent at
//! `/sbin/petty-agent`, booted with `init=/sbin/petty-agent`.
//!
//! Built in two cached layers:
//! - the base tree `rootfs-base-<hash>/`: debootstrap of the host's Debian
//!   release, trimmed (apt lists and caches, docs, man pages, translations).
//!   Keyed by package list, codename and builder version. Needs root and the
//!   network (a Debian mirror), and takes a few minutes.
//! - the image `rootfs-<hash>.ext4`: a hardlinked copy of the base plus the
//!   agent and a few files, turned into ext4 with `mkfs.ext4 -d`. Keyed by the
//!   base key and the agent's SHA-256, so a new agent only costs this step.
//!
//! Files added to the hardlinked copy are always unlinked and recreated, never
//! written in place, so the base tree is never modified through a shared inode.

use std::{
    collections::HashSet,
    ffi::OsString,
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    process::Command,
};

use crate::{
    cache,
    error::ImageError,
    exec::BuildCtx,
    host,
    keys::{short, Hasher},
    AGENT_BINARY, AGENT_SHA256, BUILDER_VERSION,
};

/// debootstrap variant.
const VARIANT: &str = "minbase";
/// Packages added to the variant (`--include`).
pub(crate) const PACKAGES: &[&str] = &["python3"];
/// Free space added on top of the content.
const HEADROOM: u64 = 512 << 20;
/// Where the agent goes, relative to the root.
pub(crate) const AGENT_PATH: &str = "sbin/petty-agent";
/// The guest's host name.
const HOSTNAME: &str = "petty";
/// File-system label.
const LABEL: &str = "petty-root";

/// Hash of what defines the base tree.
pub(crate) fn base_key(codename: &str) -> String {
    Hasher::new("rootfs-base")
        .field(&BUILDER_VERSION.to_string())
        .field(VARIANT)
        .field(&PACKAGES.join(","))
        .field(codename)
        .hex()
}

/// Hash of what defines the image.
pub(crate) fn image_key(base_key: &str, agent_sha256: &str) -> String {
    Hasher::new("rootfs")
        .field(base_key)
        .field(agent_sha256)
        .hex()
}

/// Final paths of the two layers for this host and agent.
#[derive(Debug, Clone)]
pub(crate) struct RootfsPaths {
    pub(crate) codename: String,
    pub(crate) base: PathBuf,
    pub(crate) image: PathBuf,
}

impl RootfsPaths {
    /// Derives the paths; reads only `/etc/os-release`.
    pub(crate) fn new(cache: &Path) -> Result<Self, ImageError> {
        let codename = host::codename()?;
        let base = base_key(&codename);
        let image = image_key(&base, AGENT_SHA256);
        Ok(RootfsPaths {
            base: cache.join(format!("rootfs-base-{}", short(&base))),
            image: cache.join(format!("rootfs-{}.ext4", short(&image))),
            codename,
        })
    }
}

pub(crate) fn require_root(step: &'static str) -> Result<(), ImageError> {
    if host::is_root() {
        return Ok(());
    }
    Err(ImageError::NeedsRoot {
        step,
        hint: "debootstrap and mkfs.ext4 -d must see root-owned files: run \
               `sudo env PETTY_CACHE_DIR=\"$HOME/.cache/petty\" petty image build`"
            .into(),
    })
}

/// Builds the base tree into `dest`.
pub(crate) fn build_base(paths: &RootfsPaths, ctx: &BuildCtx<'_>) -> Result<(), ImageError> {
    let (tmp, progress) = (ctx.tmp, ctx.progress);
    require_root("bootstrapping the Debian base (debootstrap)")?;
    ctx.host.require(host::ROOTFS_TOOLS)?;
    let debootstrap = ctx
        .host
        .find_program("debootstrap")
        .ok_or_else(|| host::ROOTFS_TOOLS[0].missing())?;
    let mirror = ctx.host.mirror(&paths.codename)?;
    let target = tmp.join("rootfs-base");

    let stage = progress.stage(format!(
        "bootstrapping Debian {} ({VARIANT} + {}) from {mirror} (a few minutes)",
        paths.codename,
        PACKAGES.join(" ")
    ));
    let mut cmd = Command::new(debootstrap);
    cmd.arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(&paths.codename)
        .arg(&target)
        .arg(&mirror)
        .env("PATH", ctx.host.path_with_sbin())
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    let mut counts = DebootstrapCounts::default();
    let mut ticker = stage.ticker();
    ctx.run(
        "bootstrapping the Debian base (debootstrap)",
        cmd,
        "debootstrap",
        "check that the mirror is reachable from this host, or set PETTY_DEBIAN_MIRROR \
         to another Debian mirror; details are in <target>/debootstrap/debootstrap.log when \
         the failure came from dpkg",
        |line| {
            if counts.observe(line) {
                ticker.tick(|| counts.summary());
            }
        },
    )?;
    ticker.finish();
    stage.done(format!(
        "Debian base bootstrapped: {} packages",
        counts.packages()
    ));

    let stage =
        progress.stage("trimming the base (apt lists and caches, docs, man pages, translations)");
    let freed = trim(&target)?;
    stage.done(format!("trimmed {} MiB", freed >> 20));
    cache::publish(&target, &paths.base)
}

/// Counts debootstrap's per-package lines (`I: Retrieving adduser 3.134`,
/// `I: Extracting adduser...`, `I: Unpacking libc6:amd64...`,
/// `I: Configuring login...`) and remembers its latest phase line
/// (`I: Configuring the base system...`).
#[derive(Debug, Default)]
pub(crate) struct DebootstrapCounts {
    counts: [usize; 5],
    phase: String,
}

impl DebootstrapCounts {
    /// Verb, past tense, words in a per-package line (with the verb).
    const VERBS: [(&'static str, &'static str, usize); 5] = [
        ("Retrieving", "retrieved", 3),
        ("Validating", "validated", 3),
        ("Extracting", "extracted", 2),
        ("Unpacking", "unpacked", 2),
        ("Configuring", "configured", 2),
    ];

    /// Takes one output line; true if it was a progress line.
    pub(crate) fn observe(&mut self, line: &str) -> bool {
        let Some(msg) = line.strip_prefix("I: ") else {
            return false;
        };
        let words: Vec<&str> = msg.split_whitespace().collect();
        // Package names are lower case (`Retrieving InRelease` is no package);
        // phase lines have more words (`Unpacking required packages...`).
        let per_package = |n: usize| {
            words.len() == n
                && words[1].starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        match Self::VERBS
            .iter()
            .position(|(v, _, n)| *v == words[0] && per_package(*n))
        {
            Some(i) => self.counts[i] += 1,
            None if msg.ends_with("...") || msg.contains("successfully") => {
                self.phase = msg.trim_end_matches('.').to_lowercase()
            }
            None => {}
        }
        true
    }

    /// Packages retrieved.
    pub(crate) fn packages(&self) -> usize {
        self.counts[0]
    }

    /// `debootstrap: retrieved 91, validated 91 packages; installing core packages`.
    pub(crate) fn summary(&self) -> String {
        let parts: Vec<String> = Self::VERBS
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|((_, done, _), n)| format!("{done} {n}"))
            .collect();
        let mut s = String::from("debootstrap:");
        if !parts.is_empty() {
            s.push_str(&format!(" {} packages", parts.join(", ")));
        }
        if !self.phase.is_empty() {
            s.push_str(if parts.is_empty() { " " } else { "; " });
            s.push_str(&self.phase);
        }
        s
    }
}

/// Paths (relative to the root) whose contents are removed from the base.
const TRIM_CONTENTS: &[&str] = &[
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "var/log",
];
/// Single files removed: debootstrap copies the host's resolv.conf and hostname.
const TRIM_FILES: &[&str] = &["etc/resolv.conf", "etc/hostname"];

/// Removes what a sandbox never needs; returns the bytes freed (apparent).
pub(crate) fn trim(root: &Path) -> Result<u64, ImageError> {
    let before = content_bytes(root)?;
    for rel in TRIM_CONTENTS {
        remove_contents(&root.join(rel), |_| true)?;
    }
    // Translations: everything but plain files such as locale.alias.
    remove_contents(&root.join("usr/share/locale"), |p| p.is_dir())?;
    // Compiled locales: only C.UTF-8 (libc's C.utf8) stays.
    remove_contents(&root.join("usr/lib/locale"), |p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case("c.utf8"))
    })?;
    if let Ok(entries) = fs::read_dir(root.join("var/cache/debconf")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with("-old") {
                cache::remove_tree(&e.path())?;
            }
        }
    }
    for rel in TRIM_FILES {
        cache::remove_tree(&root.join(rel))?;
    }
    // apt wants these directories to exist.
    for rel in [
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
    ] {
        cache::create_dir(&root.join(rel))?;
    }
    Ok(before.saturating_sub(content_bytes(root)?))
}

fn remove_contents(dir: &Path, pick: impl Fn(&Path) -> bool) -> Result<(), ImageError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if pick(&p) {
            cache::remove_tree(&p)?;
        }
    }
    Ok(())
}

/// Builds the image for `paths` from the cached base.
pub(crate) fn build_image(paths: &RootfsPaths, ctx: &BuildCtx<'_>) -> Result<(), ImageError> {
    let (tmp, progress) = (ctx.tmp, ctx.progress);
    require_root("creating the rootfs image")?;
    ctx.host.require(host::ROOTFS_TOOLS)?;
    let mkfs = ctx
        .host
        .find_program("mkfs.ext4")
        .ok_or_else(|| host::ROOTFS_TOOLS[1].missing())?;
    let stage =
        progress.stage("creating the rootfs image (hardlinked copy of the base, agent, mkfs.ext4)");

    let staging = tmp.join("rootfs-stage");
    let mut cp = Command::new("cp");
    cp.arg("-al").arg(&paths.base).arg(&staging);
    ctx.run(
        "copying the Debian base",
        cp,
        "rootfs-copy",
        "the cache's file system must support hard links",
        |_| {},
    )?;
    customize(&staging, AGENT_BINARY)?;
    let image = tmp.join("rootfs.ext4");
    let size = make_ext4(&staging, &image, ctx, &mkfs)?;
    cache::publish(&image, &paths.image)?;
    cache::remove_tree(&staging)?;
    stage.done(format!(
        "rootfs image ready: {} ({size} MiB, sparse)",
        paths.image.display()
    ));
    Ok(())
}

/// Turns `tree` into a read-only ext4 image at `image` (which must not
/// exist) sized to its content plus headroom; returns the size in MiB.
pub(crate) fn make_ext4(
    staging: &Path,
    image: &Path,
    ctx: &BuildCtx<'_>,
    mkfs: &Path,
) -> Result<u64, ImageError> {
    let size = (content_bytes(staging)? + HEADROOM).div_ceil(1 << 20);
    // Sparse: set_len allocates nothing; mkfs writes only metadata and content.
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o644)
        .open(image)
        .map_err(ImageError::io("create", image))?;
    file.set_len(size << 20)
        .map_err(ImageError::io("size", image))?;
    drop(file);
    let mut cmd = Command::new(mkfs);
    cmd.args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(staging)
        .args(["-L", LABEL])
        .arg(image)
        .arg(format!("{size}M"))
        .env("LC_ALL", "C");
    ctx.run(
        "creating the ext4 image (mkfs.ext4)",
        cmd,
        "mkfs",
        "mkfs.ext4 -d needs e2fsprogs 1.43 or later and free space in the cache directory",
        |_| {},
    )?;
    // Owners read it through copy-on-write layers only.
    fs::set_permissions(image, fs::Permissions::from_mode(0o444))
        .map_err(ImageError::io("chmod", image))?;
    Ok(size)
}

/// Adds the agent and Petty's files to a hardlinked copy of the base.
pub(crate) fn customize(root: &Path, agent: &[u8]) -> Result<(), ImageError> {
    replace_file(root, AGENT_PATH, agent, 0o755)?;
    replace_file(
        root,
        "etc/hostname",
        format!("{HOSTNAME}\n").as_bytes(),
        0o644,
    )?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    replace_file(root, "etc/hosts", hosts.as_bytes(), 0o644)?;
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("root", 0o700),
        ("mnt", 0o755),
    ] {
        let path = resolve_in_root(root, Path::new(dir))
            .map_err(ImageError::io("resolve", root.join(dir)))?;
        if !path.is_dir() {
            fs::create_dir_all(&path).map_err(ImageError::io("create directory", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(ImageError::io("chmod", &path))?;
        }
    }
    Ok(())
}

/// Writes a new file at `rel` under `root` (following symlinks as if `root`
/// were `/`), unlinking whatever was there first.
fn replace_file(root: &Path, rel: &str, contents: &[u8], mode: u32) -> Result<(), ImageError> {
    let rel = Path::new(rel);
    let parent = resolve_in_root(root, rel.parent().unwrap_or(Path::new("")))
        .map_err(ImageError::io("resolve", root.join(rel)))?;
    fs::create_dir_all(&parent).map_err(ImageError::io("create directory", &parent))?;
    let path = parent.join(rel.file_name().unwrap_or_default());
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(ImageError::io("remove", &path)(e))
        }
        _ => {}
    }
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&path)
        .map_err(ImageError::io("create", &path))?;
    f.write_all(contents)
        .map_err(ImageError::io("write", &path))?;
    // The umask may have narrowed the mode.
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("chmod", &path))
}

/// Resolves `rel` inside `root` the way the guest would see it: symlinks are
/// followed, absolute ones relative to `root`, and `..` stops at `root`. The
/// result never points outside `root` (Debian's `/sbin -> usr/sbin` is the
/// case that matters here).
pub(crate) fn resolve_in_root(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = rel.components().rev().filter_map(component_name).collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str().to_owned())
            .chain(resolved.iter().cloned())
            .chain([name.clone()])
            .collect();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(target.components().rev().filter_map(component_name));
            }
            _ => resolved.push(name),
        }
    }
    Ok(std::iter::once(root.as_os_str().to_owned())
        .chain(resolved)
        .collect())
}

fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

/// Disk usage of a tree, counting each inode once (hardlinks share blocks).
pub(crate) fn content_bytes(root: &Path) -> Result<u64, ImageError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).map_err(ImageError::io("inspect", &p))?;
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(ImageError::io("read directory", &p))? {
                stack.push(e.map_err(ImageError::io("read directory", &p))?.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn keys_depend_on_codename_and_agent() {
        let b = base_key("bookworm");
        assert_eq!(b, base_key("bookworm"));
        assert_ne!(b, base_key("trixie"));
        assert_ne!(image_key(&b, "aa"), image_key(&b, "ab"));
        assert_ne!(image_key(&b, "aa"), image_key(&base_key("trixie"), "aa"));
    }

    #[test]
    fn resolve_follows_links_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        symlink("usr/sbin", root.join("sbin")).unwrap();
        symlink("/usr/sbin", root.join("abs")).unwrap();
        symlink("../../..", root.join("usr/sbin/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("sbin")).unwrap(),
            root.join("usr/sbin")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("abs/x")).unwrap(),
            root.join("usr/sbin/x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("sbin/up/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("../../etc")).unwrap(),
            root.join("etc")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("loop")).is_err());
    }

    #[test]
    fn customize_never_writes_through_to_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        fs::create_dir_all(base.join("usr/sbin")).unwrap();
        fs::create_dir_all(base.join("etc")).unwrap();
        symlink("usr/sbin", base.join("sbin")).unwrap();
        fs::write(base.join("etc/hostname"), "buildhost\n").unwrap();
        fs::write(base.join("etc/hosts"), "host file\n").unwrap();

        let stage = dir.path().join("stage");
        let status = Command::new("cp")
            .arg("-al")
            .arg(&base)
            .arg(&stage)
            .status()
            .unwrap();
        assert!(status.success());
        customize(&stage, b"\x7fELF agent").unwrap();

        assert_eq!(
            fs::read_to_string(base.join("etc/hostname")).unwrap(),
            "buildhost\n"
        );
        assert_eq!(
            fs::read_to_string(base.join("etc/hosts")).unwrap(),
            "host file\n"
        );
        assert!(!base.join("usr/sbin/petty-agent").exists());
        assert_eq!(
            fs::read_to_string(stage.join("etc/hostname")).unwrap(),
            "petty\n"
        );
        let agent = stage.join("usr/sbin/petty-agent");
        assert_eq!(fs::read(&agent).unwrap(), b"\x7fELF agent");
        assert_eq!(
            fs::metadata(&agent).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::metadata(stage.join("tmp"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o1777
        );
    }

    #[test]
    fn trim_keeps_c_locale_and_apt_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "usr/share/doc/bash",
            "usr/share/locale/de/LC_MESSAGES",
            "usr/lib/locale/C.utf8",
            "var/lib/apt/lists",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("usr/share/doc/bash/copyright"),
            vec![b'x'; 10_000],
        )
        .unwrap();
        fs::write(root.join("usr/share/locale/locale.alias"), "alias").unwrap();
        fs::write(root.join("var/lib/apt/lists/deb_dists_Packages"), "x").unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/resolv.conf"), "nameserver 10.0.0.1").unwrap();
        trim(root).unwrap();
        assert!(!root.join("usr/share/doc/bash").exists());
        assert!(!root.join("usr/share/locale/de").exists());
        assert!(root.join("usr/share/locale/locale.alias").exists());
        assert!(root.join("usr/lib/locale/C.utf8").is_dir());
        assert!(!root.join("var/lib/apt/lists/deb_dists_Packages").exists());
        assert!(root.join("var/lib/apt/lists/partial").is_dir());
        assert!(!root.join("etc/resolv.conf").exists());
    }

    #[test]
    fn debootstrap_lines_are_counted() {
        let mut c = DebootstrapCounts::default();
        for line in [
            "I: Retrieving InRelease ",
            "I: Checking Release signature",
            "I: Retrieving adduser 3.134",
            "I: Validating adduser 3.134",
            "I: Retrieving apt 2.6.1",
            "I: Chosen extractor for .deb packages: dpkg-deb",
            "I: Extracting adduser...",
            "I: Installing core packages...",
            "I: Unpacking required packages...",
            "I: Unpacking libc6:amd64...",
            "I: Configuring required packages...",
            "I: Configuring login...",
        ] {
            assert!(c.observe(line));
        }
        assert!(!c.observe("W: something"));
        assert_eq!(c.packages(), 2);
        assert_eq!(
            c.summary(),
            "debootstrap: retrieved 2, validated 1, extracted 1, unpacked 1, configured 1 packages; \
             configuring required packages"
        );
        c.observe("I: Base system installed successfully.");
        assert!(c
            .summary()
            .ends_with("; base system installed successfully"));
    }

    #[test]
    fn content_size_counts_hardlinks_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        let one = content_bytes(dir.path()).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(content_bytes(dir.path()).unwrap(), one);
        assert!(one >= 1 << 20);
    }
}
