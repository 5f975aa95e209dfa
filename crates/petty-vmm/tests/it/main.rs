//! petty-vmm integration tests that need no VM.

mod firecracker_api;
mod firecracker_vmm;
