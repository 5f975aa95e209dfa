//! Firecracker, driven over its API socket (`firecracker --api-sock PATH`).
//!
//! This module holds the requests Petty sends (built here, checked against
//! Firecracker's published API spec by the tests), a minimal HTTP/1.1
//! client for the unix socket that surfaces Firecracker's error bodies
//! verbatim, the optional jailer, the merge of Diff snapshots' memory, and
//! the `Vmm` implementation built on them.

mod api;
mod jail;
mod memfile;
mod vmm;

pub use vmm::{
    FcVm, FirecrackerVmm, API_SOCKET, BASE_CMDLINE, SNAPSHOT_MEMORY, SNAPSHOT_META,
    SNAPSHOT_ROOTFS, VSOCK_SOCKET,
};

pub use api::{
    boot_sequence, patch_drive, pause, resume, snapshot_create, snapshot_load, ApiClient, ApiError,
    BootSpec, LoadSpec, Network, Request, NET_IFACE, ROOT_DRIVE,
};
pub use jail::{Jail, JailerConfig, DEFAULT_CHROOT_BASE, JAILED_API_SOCKET};
pub use memfile::{holes_are_page_granular, merge_diff};
