//! Firecracker, driven over its API socket (`firecracker --api-sock PATH`).
//!
//! This module holds the requests Petty sends (built here, checked against
//! Firecracker's published API spec by the tests) and a minimal HTTP/1.1
//! client for the unix socket that surfaces Firecracker's error bodies
//! verbatim. The `Vmm` implementation that spawns and supervises the process
//! builds on these.

mod api;

pub use api::{
    boot_sequence, pause, resume, snapshot_create, snapshot_load, ApiClient, ApiError, BootSpec,
    Request,
};
