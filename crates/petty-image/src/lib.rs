//! Petty's guest assets — the kernel (`bzImage` for QEMU, ELF `vmlinux` for
//! Firecracker) and the ext4 root file system with the guest agent as init —
//! built from host packages and cached under [`cache_dir`].
//!
//! [`ImageBuilder::locate`] is what `petty run` calls: a few `stat`s, never a
//! build. [`ImageBuilder::ensure`] builds what is missing (minutes, once; the
//! kernel needs `linux-source-6.1`, the rootfs needs root and a Debian mirror)
//! and [`ImageBuilder::status`] lists what is present and what fixes each gap,
//! for `petty doctor`.
//!
//! The calls block; async callers use `spawn_blocking`. Building needs an
//! x86-64 Debian (or derivative) host.

#![warn(missing_docs)]

mod builder;
mod cache;
mod error;
mod exec;
mod host;
mod kernel;
mod keys;
mod progress;
mod rootfs;

use std::{env, path::PathBuf};

pub use builder::{AssetStatus, Assets, ImageBuilder, StatusKind};
pub use error::{CommandError, ImageError};
pub use kernel::KERNEL_CONFIG_FRAGMENT;

/// The guest agent: a statically linked x86-64 binary, built by `build.rs`
/// from `crates/petty-agent` and installed in the rootfs as `/sbin/petty-agent`.
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/petty-agent"));

/// SHA-256 of [`AGENT_BINARY`], lowercase hex.
pub const AGENT_SHA256: &str = include_str!(concat!(env!("OUT_DIR"), "/petty-agent.sha256"));

/// Version of the build recipes; part of every cache key. Bump it when a change
/// here (not in the inputs) alters what gets built, so old caches are not reused.
pub const BUILDER_VERSION: u32 = 1;

/// Where assets are cached: `$PETTY_CACHE_DIR`, else `$XDG_CACHE_HOME/petty`,
/// else `$HOME/.cache/petty` (without `HOME`, the home the password database
/// gives; `/var/cache/petty` with no home at all).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|name| env::var_os(name))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("PETTY_CACHE_DIR") {
        return dir;
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return dir.join("petty");
    }
    // Without HOME, the user's home from the password database: never a
    // shared directory under a name another user could prepare.
    match var("HOME").or_else(passwd_home) {
        Some(home) => home.join(".cache").join("petty"),
        None => PathBuf::from("/var/cache/petty"),
    }
}

/// This user's home directory as the password database has it.
fn passwd_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 4096];
    // SAFETY: getpwuid_r writes into `pwd` and `buf` (whose length it is
    // given) and sets `result` to `pwd` or null; pw_dir points into `buf`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes();
        (!dir.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_agent_matches_its_hash() {
        use sha2::{Digest, Sha256};
        assert_eq!(keys::hex(&Sha256::digest(AGENT_BINARY)), AGENT_SHA256);
        assert_eq!(&AGENT_BINARY[..4], b"\x7fELF");
    }

    #[test]
    fn cache_dir_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            cache_dir_from(move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into()))
        };
        let all = &[
            ("PETTY_CACHE_DIR", "/p"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(env(all), PathBuf::from("/p"));
        assert_eq!(
            env(&[
                ("PETTY_CACHE_DIR", ""),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ]),
            PathBuf::from("/x/petty")
        );
        assert_eq!(
            env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]),
            PathBuf::from("/h/.cache/petty")
        );
        assert_eq!(env(&[("HOME", "/h")]), PathBuf::from("/h/.cache/petty"));
        // No HOME: the password database's home, not a shared directory.
        let no_home = env(&[]);
        assert!(!no_home.starts_with(std::env::temp_dir()), "{no_home:?}");
        assert_eq!(Some(no_home), passwd_home().map(|h| h.join(".cache/petty")));
    }
}
