//! Petty's guest assets — the kernel (`bzImage` for QEMU, ELF `vmlinux` for
//! Firecracker) and the ext4 root file system with the guest agent as init —
//! built from host packages and cached in the directory the caller gives
//! (the configuration's `paths.cache_dir`). This crate reads no environment:
//! the search path for its tools and the Debian mirror come from the caller.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_agent_matches_its_hash() {
        use sha2::{Digest, Sha256};
        assert_eq!(keys::hex(&Sha256::digest(AGENT_BINARY)), AGENT_SHA256);
        assert_eq!(&AGENT_BINARY[..4], b"\x7fELF");
    }
}
