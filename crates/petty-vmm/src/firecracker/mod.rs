//! Firecracker, driven over its API socket (`firecracker --api-sock PATH`).
//!
//! This module holds the requests Petty sends (built here, checked against
//! Firecracker's published API spec by the tests) and a minimal HTTP/1.1
//! client for the unix socket that surfaces Firecracker's error bodies
//! verbatim, and the `Vmm` implementation built on them.

mod api;
mod vmm;

pub use vmm::{FcVm, FirecrackerVmm, API_SOCKET, BASE_CMDLINE, VSOCK_SOCKET};

pub use api::{
    boot_sequence, pause, resume, snapshot_create, snapshot_load, ApiClient, ApiError, BootSpec,
    Request,
};
