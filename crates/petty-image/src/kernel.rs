//! The guest kernel: Debian's `linux-source-6.1` tarball configured with
//! `make allnoconfig` plus the fragment in `images/kernel/petty.config`
//! (embedded at compile time, so an installed `petty` needs no checkout), built
//! into a `bzImage` (QEMU) and an ELF `vmlinux` (Firecracker).
//!
//! The cache key hashes the fragment, [`BUILDER_VERSION`](crate::BUILDER_VERSION)
//! and the tarball's file name and size, so it can be derived with one `stat`.
//! If that kernel is not built but one from the same fragment and another
//! tarball is (the package was updated or removed since), [`Lookup`] offers it
//! for booting while `ensure` builds the current one; kernels are matched to
//! the fragment through their `recipe` file.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    cache,
    error::ImageError,
    exec::BuildCtx,
    host,
    keys::{short, Hasher},
    BUILDER_VERSION,
};

/// The kernel config fragment, applied with `make allnoconfig KCONFIG_ALLCONFIG=`.
pub const KERNEL_CONFIG_FRAGMENT: &str = include_str!("../../../images/kernel/petty.config");

/// Where Debian's `linux-source-6.1` package puts the source.
pub(crate) const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The package that provides [`SOURCE_TARBALL`].
pub(crate) const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Kernel version, for messages.
const VERSION: &str = "6.1";
/// Core-minutes a build takes (≈ 3.5 minutes on 2 cores, plus extraction).
const CORE_MINUTES: usize = 8;
/// Roughly how many `CC`/`AS` lines the build prints, for the progress counter.
const APPROX_UNITS: usize = 1000;

/// File names inside a kernel asset directory.
pub(crate) const BZIMAGE: &str = "bzImage";
pub(crate) const VMLINUX: &str = "vmlinux";
const RECIPE: &str = "recipe";

/// Hash of everything that defines the kernel except the source tarball.
pub(crate) fn recipe_key(fragment: &str) -> String {
    Hasher::new("kernel-recipe")
        .field(&BUILDER_VERSION.to_string())
        .field(fragment)
        .hex()
}

/// The cache key of the kernel built by `recipe` from a tarball of this name and size.
pub(crate) fn key(recipe: &str, tarball_name: &str, tarball_size: u64) -> String {
    Hasher::new("kernel")
        .field(recipe)
        .field(tarball_name)
        .field(&tarball_size.to_string())
        .hex()
}

/// Where the kernel is, or would be, in a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lookup {
    /// The directory for this fragment and the installed tarball (`None` when
    /// the tarball is absent, so its key is unknown).
    pub(crate) current: Option<PathBuf>,
    /// Whether `current` is built.
    pub(crate) current_built: bool,
    /// What to boot: `current` when built, else the newest kernel built from
    /// this fragment with another (older, or since removed) tarball, so that a
    /// `linux-source` update does not break `petty run` until the next
    /// `petty image build`.
    pub(crate) usable: Option<PathBuf>,
}

impl Lookup {
    /// One `stat` of the tarball and two of the asset files; a directory
    /// listing of the cache only when the current kernel is not built.
    pub(crate) fn new(cache: &Path) -> Self {
        let recipe = recipe_key(KERNEL_CONFIG_FRAGMENT);
        let current = fs::metadata(SOURCE_TARBALL).ok().map(|meta| {
            cache.join(format!(
                "kernel-{}",
                short(&key(&recipe, tarball_name(), meta.len()))
            ))
        });
        let current_built = current.as_deref().is_some_and(is_complete);
        let usable = if current_built {
            current.clone()
        } else {
            find_by_recipe(cache, &recipe)
        };
        Lookup {
            current,
            current_built,
            usable,
        }
    }

    /// The path to name in messages about a missing kernel.
    pub(crate) fn expected(&self, cache: &Path) -> PathBuf {
        self.current
            .clone()
            .unwrap_or_else(|| cache.join("kernel-*"))
    }
}

fn tarball_name() -> &'static str {
    SOURCE_TARBALL.rsplit('/').next().unwrap_or(SOURCE_TARBALL)
}

fn is_complete(dir: &Path) -> bool {
    dir.join(BZIMAGE).is_file() && dir.join(VMLINUX).is_file()
}

fn find_by_recipe(cache: &Path, recipe: &str) -> Option<PathBuf> {
    fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kernel-"))
        .map(|e| e.path())
        .filter(|d| {
            fs::read_to_string(d.join(RECIPE)).is_ok_and(|r| r.trim() == recipe) && is_complete(d)
        })
        .max_by_key(|d| fs::metadata(d).and_then(|m| m.modified()).ok())
}

/// Builds the kernel into `dest` (a final asset name).
pub(crate) fn build(dest: &Path, ctx: &BuildCtx<'_>) -> Result<(), ImageError> {
    let (tmp, progress) = (ctx.tmp, ctx.progress);
    let tarball = Path::new(SOURCE_TARBALL);
    if !tarball.is_file() {
        return Err(ImageError::HostTool {
            tool: format!("the kernel source {SOURCE_TARBALL}"),
            hint: host::install_command(SOURCE_PACKAGE),
        });
    }
    ctx.host.require(host::KERNEL_TOOLS)?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = progress.stage(format!(
        "building kernel {VERSION} (about {} minutes on {jobs} cores)",
        CORE_MINUTES.div_ceil(jobs).max(2)
    ));

    let work = tmp.join("kernel-build");
    cache::create_dir(&work)?;

    let stage = progress.stage(format!("extracting {SOURCE_TARBALL}"));
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(tarball).arg("-C").arg(&work);
    ctx.run(
        "extracting the kernel source",
        tar,
        "kernel-extract",
        "check that the linux-source-6.1 package is intact: apt-get install --reinstall linux-source-6.1",
        |_| {},
    )?;
    let src = single_subdir(&work)?;
    stage.done("extracted the kernel source");

    let fragment = work.join("petty.config");
    fs::write(&fragment, KERNEL_CONFIG_FRAGMENT).map_err(ImageError::io("write", &fragment))?;
    let mut make = make_cmd(&src);
    make.arg("allnoconfig")
        .arg(format!("KCONFIG_ALLCONFIG={}", fragment.display()));
    ctx.run(
        "configuring the kernel",
        make,
        "kernel-config",
        "the log names the failing step; a missing host tool shows up as `command not found`",
        |_| {},
    )?;
    let config_path = src.join(".config");
    let config = fs::read_to_string(&config_path).map_err(ImageError::io("read", &config_path))?;
    check_config(KERNEL_CONFIG_FRAGMENT, &config)?;

    let stage = progress.stage(format!("compiling with make -j{jobs}"));
    let mut ticker = stage.ticker();
    let mut units = 0usize;
    let mut make = make_cmd(&src);
    make.arg(format!("-j{jobs}")).arg("bzImage");
    ctx.run(
        "building the kernel",
        make,
        "kernel-build",
        "search the log for the first `error:`; if an option in images/kernel/petty.config \
         causes it, change the fragment",
        |line| {
            if is_compile_line(line) {
                units += 1;
                ticker.tick(|| format!("kernel: {units} of about {APPROX_UNITS} files compiled"));
            }
        },
    )?;
    ticker.finish();
    stage.done(format!("compiled {units} files"));

    let out = tmp.join("kernel-out");
    cache::create_dir(&out)?;
    for (from, to) in [
        (src.join("arch/x86/boot/bzImage"), BZIMAGE),
        (src.join("vmlinux"), VMLINUX),
    ] {
        fs::copy(&from, out.join(to)).map_err(ImageError::io("copy", &from))?;
    }
    fs::write(out.join("config"), &config).map_err(ImageError::io("write", out.join("config")))?;
    let recipe = recipe_key(KERNEL_CONFIG_FRAGMENT);
    fs::write(out.join(RECIPE), format!("{recipe}\n"))
        .map_err(ImageError::io("write", out.join(RECIPE)))?;
    cache::publish(&out, dest)?;
    cache::remove_tree(&work)?;
    total.done(format!("kernel ready: {}", dest.display()));
    Ok(())
}

/// `make -C src` with a clean environment for kbuild.
fn make_cmd(src: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .arg("ARCH=x86")
        // Keep the build host's name and user out of the guest's `uname -v`.
        .arg("KBUILD_BUILD_USER=petty")
        .arg("KBUILD_BUILD_HOST=petty")
        .env("LC_ALL", "C")
        // A jobserver inherited from cargo (tests) would override -j.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("CARGO_MAKEFLAGS");
    cmd
}

/// kbuild's quiet output for one compiled unit: `  CC      init/main.o`.
fn is_compile_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    line.starts_with("  ") && matches!(words.next(), Some("CC" | "AS")) && words.next().is_some()
}

fn single_subdir(dir: &Path) -> Result<PathBuf, ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io("read directory", dir))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.join("Makefile").is_file())
        .ok_or_else(|| {
            ImageError::io("find the extracted kernel source in", dir)(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            ))
        })
}

/// Checks that every `CONFIG_X=v` line of `fragment` holds in `config` (a
/// `.config`); `CONFIG_X=n` holds when the option is off or absent.
pub(crate) fn check_config(fragment: &str, config: &str) -> Result<(), ImageError> {
    let mut actual: HashMap<&str, &str> = HashMap::new();
    for line in config.lines() {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            actual.insert(name, "n");
        } else if let Some((name, value)) = line
            .split_once('=')
            .filter(|(n, _)| n.starts_with("CONFIG_"))
        {
            actual.insert(name, value);
        }
    }
    let dropped: Vec<String> = fragment
        .lines()
        .filter_map(|l| {
            l.trim()
                .split_once('=')
                .filter(|(n, _)| n.starts_with("CONFIG_"))
        })
        .filter_map(|(name, want)| {
            let got = actual.get(name).copied();
            let ok = match want {
                "n" => matches!(got, None | Some("n")),
                _ => got == Some(want),
            };
            (!ok).then(|| {
                format!(
                    "{name} (want {want}, got {})",
                    got.map_or("not set", |g| if g == "n" { "not set" } else { g })
                )
            })
        })
        .collect();
    if dropped.is_empty() {
        Ok(())
    } else {
        Err(ImageError::KernelConfig { dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_is_well_formed() {
        for line in KERNEL_CONFIG_FRAGMENT.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not CONFIG_X=v: {line}"));
            assert!(
                name.starts_with("CONFIG_") && !value.is_empty(),
                "not CONFIG_X=v: {line}"
            );
        }
        assert!(KERNEL_CONFIG_FRAGMENT.contains("CONFIG_VIRTIO_BLK=y"));
        assert!(KERNEL_CONFIG_FRAGMENT.contains("CONFIG_BLK_DEV=y"));
    }

    #[test]
    fn config_check_accepts_a_matching_config() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_N=8\nCONFIG_OFF=n\nCONFIG_GONE=n\n";
        let config = "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_OFF is not set\nCONFIG_OTHER=y\n";
        check_config(fragment, config).unwrap();
    }

    #[test]
    fn config_check_names_every_dropped_option() {
        let fragment =
            "CONFIG_BLK_DEV=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO=y\nCONFIG_N=8\nCONFIG_OFF=n\n";
        let config = "# CONFIG_BLK_DEV is not set\nCONFIG_VIRTIO=y\nCONFIG_N=4\nCONFIG_OFF=y\n";
        let Err(ImageError::KernelConfig { dropped }) = check_config(fragment, config) else {
            panic!("expected KernelConfig")
        };
        assert_eq!(
            dropped,
            [
                "CONFIG_BLK_DEV (want y, got not set)",
                "CONFIG_VIRTIO_BLK (want y, got not set)",
                "CONFIG_N (want 8, got 4)",
                "CONFIG_OFF (want n, got y)",
            ]
        );
        let msg = ImageError::KernelConfig { dropped }.to_string();
        assert!(
            msg.contains("CONFIG_VIRTIO_BLK") && msg.contains("hint:"),
            "{msg}"
        );
    }

    #[test]
    fn keys_depend_on_every_input() {
        let r = recipe_key("CONFIG_A=y\n");
        assert_eq!(r, recipe_key("CONFIG_A=y\n"), "deterministic");
        assert_ne!(r, recipe_key("CONFIG_A=y\nCONFIG_B=y\n"));
        let k = key(&r, "linux-source-6.1.tar.xz", 100);
        assert_eq!(k, key(&r, "linux-source-6.1.tar.xz", 100));
        assert_ne!(k, key(&r, "linux-source-6.1.tar.xz", 101));
        assert_ne!(k, key(&r, "linux-source-6.2.tar.xz", 100));
        assert_ne!(
            k,
            key(&recipe_key("CONFIG_A=n\n"), "linux-source-6.1.tar.xz", 100)
        );
    }

    #[test]
    fn compile_lines_are_counted() {
        assert!(is_compile_line("  CC      init/main.o"));
        assert!(is_compile_line("  AS      arch/x86/entry/entry_64.o"));
        assert!(!is_compile_line("  AR      lib/built-in.a"));
        assert!(!is_compile_line("CC init/main.o"));
        assert!(!is_compile_line("make[1]: Entering directory"));
    }

    #[test]
    fn a_kernel_is_found_by_recipe_when_the_tarball_is_gone() {
        let cache = tempfile::tempdir().unwrap();
        let recipe = recipe_key("CONFIG_A=y\n");
        let dir = cache.path().join("kernel-0123456789abcdef");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(RECIPE), format!("{recipe}\n")).unwrap();
        assert_eq!(
            find_by_recipe(cache.path(), &recipe),
            None,
            "incomplete dirs are ignored"
        );
        fs::write(dir.join(BZIMAGE), "").unwrap();
        fs::write(dir.join(VMLINUX), "").unwrap();
        assert_eq!(find_by_recipe(cache.path(), &recipe), Some(dir));
        assert_eq!(find_by_recipe(cache.path(), &recipe_key("other")), None);
    }
}
