//! [`ImageBuilder`]: finds the cached assets, builds missing ones under the
//! cache lock, and reports what is present for `petty doctor`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    cache::{self, CacheLock},
    error::ImageError,
    exec::BuildCtx,
    host::{self, Host},
    kernel::{self, BZIMAGE, VMLINUX},
    progress::{fmt_duration, Progress},
    rootfs::{self, RootfsPaths},
};

/// What tells the user to build.
const BUILD_HINT: &str = "run `petty image build`";
/// The command that builds everything.
const BUILD_COMMAND: &str = "petty image build";

/// Paths of a complete, current set of guest assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    /// Compressed kernel (`bzImage`), for QEMU's `-kernel`.
    pub kernel: PathBuf,
    /// Uncompressed ELF kernel, for Firecracker.
    pub vmlinux: PathBuf,
    /// The ext4 root file system (read-only to its users: overlay it).
    pub rootfs: PathBuf,
}

/// What a [`AssetStatus`] line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// A cached asset (kernel, rootfs).
    Asset,
    /// Something the host must provide to build assets (a program, the kernel
    /// source, root, a Debian mirror).
    Host,
}

/// One line of `petty doctor`'s asset section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetStatus {
    /// Asset or host requirement.
    pub kind: StatusKind,
    /// e.g. `"kernel"`, `"rootfs"`, `"debootstrap"`, `"linux-source-6.1"`.
    pub name: String,
    /// Whether it is there.
    pub present: bool,
    /// Whether it matters now: assets always do; a host requirement only
    /// while an asset that needs it is not built.
    pub needed: bool,
    /// Where it is (or would be).
    pub path: Option<PathBuf>,
    /// Extra facts, e.g. the mirror URL.
    pub detail: Option<String>,
    /// The exact command that fixes a gap (`None` when present).
    pub fix: Option<String>,
}

/// Locates and builds the guest assets in one cache directory.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    cache: PathBuf,
    progress: bool,
    host: Host,
}

impl ImageBuilder {
    /// A builder for `cache_dir` (the configuration's `paths.cache_dir`),
    /// with progress on, programs looked for in the standard directories
    /// and the Debian mirror taken from the host's apt sources.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        ImageBuilder {
            cache: cache_dir.into(),
            progress: true,
            host: Host::default(),
        }
    }

    /// Where the build's programs (debootstrap, make, mkfs.ext4, …) are
    /// looked for, in order (the configuration's `paths.search_path`); the
    /// sbin directories are always searched after them.
    pub fn with_search_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.host.search_path = dirs;
        self
    }

    /// The Debian mirror debootstrap uses (`image.debian_mirror`); `None`:
    /// the host's own apt source for its release.
    pub fn with_debian_mirror(mut self, mirror: Option<String>) -> Self {
        self.host.mirror = mirror;
        self
    }

    /// Whether to print progress lines on stderr while building (default true).
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The current assets, without building anything: derives the cache keys
    /// from compile-time inputs, one `stat` of the kernel source and
    /// `/etc/os-release`, then checks the files exist.
    pub fn locate(&self) -> Result<Assets, ImageError> {
        let lookup = kernel::Lookup::new(&self.cache);
        let kernel_dir = lookup.usable.clone().ok_or_else(|| ImageError::Missing {
            what: "kernel",
            path: lookup.expected(&self.cache),
            hint: BUILD_HINT.into(),
        })?;
        let rootfs = RootfsPaths::new(&self.cache)?.image;
        if !rootfs.is_file() {
            return Err(ImageError::Missing {
                what: "rootfs",
                path: rootfs,
                hint: BUILD_HINT.into(),
            });
        }
        Ok(Assets {
            kernel: kernel_dir.join(BZIMAGE),
            vmlinux: kernel_dir.join(VMLINUX),
            rootfs,
        })
    }

    /// `locate`, but only if the kernel is built from the installed tarball.
    fn locate_current(&self) -> Option<Assets> {
        let assets = self.locate().ok()?;
        kernel::Lookup::new(&self.cache)
            .current_built
            .then_some(assets)
    }

    /// Returns the current assets, building whatever is missing first. Cheap
    /// when nothing is missing. Concurrent callers (threads or processes)
    /// serialize on the cache lock; the later ones find the assets built.
    pub fn ensure(&self) -> Result<Assets, ImageError> {
        if let Some(assets) = self.locate_current() {
            return Ok(assets);
        }
        let progress = Progress::new(self.progress);
        let lock = CacheLock::acquire(&self.cache, &progress)?;
        // Decide and check prerequisites before touching anything, so that a
        // user who cannot build gets the reason, not a permission error.
        let plan = Plan::new(&self.cache)?;
        if plan.is_empty() {
            // Another process built everything while we waited.
            return self.locate();
        }
        plan.preflight(&self.host)?;

        let tmp = cache::fresh_tmp(&self.cache, &progress)?;
        let logs = self.cache.join("logs");
        cache::create_dir(&logs)?;
        let ctx = BuildCtx {
            tmp: &tmp,
            logs: &logs,
            progress: &progress,
            lock_fd: Some(lock.fd()),
            host: &self.host,
        };
        let start = std::time::Instant::now();
        progress.line(format!("building guest assets in {}", self.cache.display()));
        let result = plan.run(&ctx);
        // Whatever a failed build left in tmp is useless; the logs stay.
        let cleanup = cache::remove_tree(&tmp);
        result?;
        cleanup?;
        progress.line(format!(
            "guest assets ready in {}",
            fmt_duration(start.elapsed())
        ));
        self.locate()
    }

    /// What is present and what is missing, with the command that fixes each
    /// gap. Cheap (stats and small file reads only).
    pub fn status(&self) -> Vec<AssetStatus> {
        let mut out = Vec::new();
        let build_fix = |present: bool| (!present).then(|| BUILD_COMMAND.to_owned());

        let kernel = kernel::Lookup::new(&self.cache);
        let kernel_present = kernel.usable.is_some();
        let kernel_to_build =
            kernel.usable.is_none() || (kernel.current.is_some() && !kernel.current_built);
        let mut detail = format!(
            "Linux 6.1, bzImage + vmlinux, from {}",
            kernel::SOURCE_TARBALL
        );
        if kernel_present && !kernel.current_built && kernel.current.is_some() {
            detail.push_str(&format!(
                "; built from an older {}: `{BUILD_COMMAND}` rebuilds it",
                kernel::SOURCE_PACKAGE
            ));
        }
        out.push(AssetStatus {
            kind: StatusKind::Asset,
            name: "kernel".into(),
            present: kernel_present,
            needed: true,
            path: Some(
                kernel
                    .usable
                    .clone()
                    .unwrap_or_else(|| kernel.expected(&self.cache)),
            ),
            detail: Some(detail),
            fix: build_fix(kernel_present),
        });

        let paths = RootfsPaths::new(&self.cache);
        let rootfs_present = paths.as_ref().is_ok_and(|p| p.image.is_file());
        let base_present = paths.as_ref().is_ok_and(|p| p.base.is_dir());
        out.push(AssetStatus {
            kind: StatusKind::Asset,
            name: "rootfs".into(),
            present: rootfs_present,
            needed: true,
            path: paths.as_ref().ok().map(|p| p.image.clone()),
            detail: Some(match &paths {
                Ok(p) => format!(
                    "Debian {} minbase + {}, agent {}",
                    p.codename,
                    rootfs::PACKAGES.join(" "),
                    short_sha()
                ),
                Err(e) => e.to_string(),
            }),
            fix: build_fix(rootfs_present),
        });

        let tarball = Path::new(kernel::SOURCE_TARBALL);
        let tarball_present = tarball.is_file();
        out.push(AssetStatus {
            kind: StatusKind::Host,
            name: kernel::SOURCE_PACKAGE.into(),
            present: tarball_present,
            needed: kernel_to_build,
            path: Some(tarball.to_owned()),
            detail: None,
            fix: (!tarball_present).then(|| host::install_command(kernel::SOURCE_PACKAGE)),
        });
        let tools = host::KERNEL_TOOLS
            .iter()
            .map(|t| (t, kernel_to_build))
            .chain(host::ROOTFS_TOOLS.iter().map(|t| (t, !rootfs_present)));
        for (tool, needed) in tools {
            let found = self.host.find(tool);
            out.push(AssetStatus {
                kind: StatusKind::Host,
                name: tool.name.into(),
                present: found.is_some(),
                needed,
                fix: found.is_none().then(|| tool.install_hint()),
                path: found,
                detail: Some(format!("package {}", tool.package)),
            });
        }

        let root = host::is_root();
        out.push(AssetStatus {
            kind: StatusKind::Host,
            name: "root privileges".into(),
            present: root,
            needed: !rootfs_present,
            path: None,
            detail: Some("debootstrap and mkfs.ext4 -d run as root".into()),
            fix: (!root).then(|| {
                "sudo env PETTY_PATHS_CACHE_DIR=\"$HOME/.cache/petty\" petty image build".into()
            }),
        });

        let mirror = paths
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|p| self.host.mirror(&p.codename).map_err(|e| e.to_string()));
        out.push(AssetStatus {
            kind: StatusKind::Host,
            name: "Debian mirror".into(),
            present: mirror.is_ok(),
            needed: !base_present && !rootfs_present,
            path: None,
            fix: mirror
                .is_err()
                .then(|| format!("set {} to the URL of a Debian mirror", host::MIRROR_SETTING)),
            detail: Some(match mirror {
                Ok(url) => url,
                Err(e) => e,
            }),
        });
        out
    }

    /// Makes a bootable root file system image at `image` from `tree`, an
    /// unpacked image (an OCI image's layers): the agent at
    /// `/sbin/petty-agent` (symlinks such as `/sbin -> usr/sbin` followed
    /// inside the tree), Petty's hostname and hosts files, the directories
    /// the agent mounts on, then `mkfs.ext4 -d`. `tree` is changed in
    /// place; `image` appears whole or not at all. Returns its size in MiB.
    /// Root only: the image keeps the tree's owners.
    pub fn image_from_tree(&self, tree: &Path, image: &Path) -> Result<u64, ImageError> {
        rootfs::require_root("making a root file system image from an image's layers")?;
        self.host.require(host::ROOTFS_TOOLS)?;
        let mkfs = self
            .host
            .find_program("mkfs.ext4")
            .ok_or_else(|| host::ROOTFS_TOOLS[1].missing())?;
        let progress = Progress::new(self.progress);
        let dir = image.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".image-tmp-{}", std::process::id()));
        cache::remove_tree(&tmp)?;
        cache::create_dir(&tmp)?;
        let logs = self.cache.join("logs");
        cache::create_dir(&logs)?;
        let ctx = BuildCtx {
            tmp: &tmp,
            logs: &logs,
            progress: &progress,
            lock_fd: None,
            host: &self.host,
        };
        let result = (|| {
            rootfs::customize(tree, crate::AGENT_BINARY)?;
            let staged = tmp.join("rootfs.ext4");
            let size = rootfs::make_ext4(tree, &staged, &ctx, &mkfs)?;
            cache::publish(&staged, image)?;
            Ok(size)
        })();
        let cleanup = cache::remove_tree(&tmp);
        let size = result?;
        cleanup?;
        Ok(size)
    }

    /// Deletes cached assets other than the current ones (older kernels,
    /// bases and images), under the cache lock. A running sandbox keeps its
    /// open files, but one about to start from an old `Assets` would fail, so
    /// this is for an explicit `petty image prune`, never automatic.
    pub fn prune(&self) -> Result<Vec<PathBuf>, ImageError> {
        let progress = Progress::new(self.progress);
        let _lock = CacheLock::acquire(&self.cache, &progress)?;
        let mut keep: Vec<PathBuf> = Vec::new();
        let kernel = kernel::Lookup::new(&self.cache);
        keep.extend(kernel.current);
        keep.extend(kernel.usable);
        if let Ok(paths) = RootfsPaths::new(&self.cache) {
            keep.push(paths.base);
            keep.push(paths.image);
        }
        let mut removed = Vec::new();
        let entries =
            fs::read_dir(&self.cache).map_err(ImageError::io("read directory", &self.cache))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("kernel-") || name.starts_with("rootfs-");
            if ours && !keep.contains(&entry.path()) {
                cache::remove_tree(&entry.path())?;
                removed.push(entry.path());
            }
        }
        Ok(removed)
    }
}

/// What `ensure` has to build, decided under the lock.
struct Plan {
    /// The kernel's final directory, if it must be built.
    kernel: Option<PathBuf>,
    rootfs: RootfsPaths,
    need_base: bool,
    need_image: bool,
}

impl Plan {
    fn new(cache: &Path) -> Result<Self, ImageError> {
        let rootfs = RootfsPaths::new(cache)?;
        let need_image = !rootfs.image.is_file();
        Ok(Plan {
            kernel: {
                let lookup = kernel::Lookup::new(cache);
                // Without the tarball, an older kernel will do; with it, build the current one.
                match (lookup.current, lookup.usable) {
                    (Some(current), _) if !lookup.current_built => Some(current),
                    (None, None) => Some(cache.join("kernel-*")),
                    _ => None,
                }
            },
            need_base: need_image && !rootfs.base.is_dir(),
            need_image,
            rootfs,
        })
    }

    fn is_empty(&self) -> bool {
        self.kernel.is_none() && !self.need_image
    }

    /// Checks every prerequisite before minutes are spent on the first step.
    fn preflight(&self, host: &Host) -> Result<(), ImageError> {
        if self.kernel.is_some() {
            if !Path::new(kernel::SOURCE_TARBALL).is_file() {
                return Err(ImageError::HostTool {
                    tool: format!("the kernel source {}", kernel::SOURCE_TARBALL),
                    hint: host::install_command(kernel::SOURCE_PACKAGE),
                });
            }
            host.require(host::KERNEL_TOOLS)?;
        }
        if self.need_image {
            rootfs::require_root("creating the rootfs")?;
            host.require(host::ROOTFS_TOOLS)?;
        }
        if self.need_base {
            host.mirror(&self.rootfs.codename)?;
        }
        Ok(())
    }

    fn run(&self, ctx: &BuildCtx<'_>) -> Result<(), ImageError> {
        if let Some(dest) = &self.kernel {
            kernel::build(dest, ctx)?;
        }
        if self.need_base {
            rootfs::build_base(&self.rootfs, ctx)?;
        }
        if self.need_image {
            rootfs::build_image(&self.rootfs, ctx)?;
        }
        Ok(())
    }
}

fn short_sha() -> &'static str {
    &crate::AGENT_SHA256[..12]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_in_an_empty_cache_says_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let err = ImageBuilder::new(dir.path()).locate().unwrap_err();
        match &err {
            ImageError::Missing { what, .. } => assert!(["kernel", "rootfs"].contains(what)),
            ImageError::HostConfig { .. } => return, // not a Debian host
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("hint: run `petty image build`"),
            "{err}"
        );
    }

    #[test]
    fn status_lists_assets_and_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let status = ImageBuilder::new(dir.path()).status();
        let kernel = status.iter().find(|s| s.name == "kernel").unwrap();
        assert!(!kernel.present && kernel.needed);
        assert_eq!(kernel.fix.as_deref(), Some("petty image build"));
        assert!(status
            .iter()
            .any(|s| s.name == "rootfs" && s.kind == StatusKind::Asset));
        assert!(status
            .iter()
            .any(|s| s.name == "debootstrap" && s.kind == StatusKind::Host));
        for s in &status {
            assert_eq!(s.present, s.fix.is_none(), "{s:?}");
        }
    }

    #[test]
    fn prune_keeps_current_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        fs::create_dir(cache.join("kernel-0000000000000000")).unwrap();
        fs::write(cache.join("rootfs-0000000000000000.ext4"), "").unwrap();
        fs::write(cache.join("notes.txt"), "").unwrap();
        let removed = ImageBuilder::new(cache)
            .with_progress(false)
            .prune()
            .unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(cache.join("notes.txt").exists());
    }
}
