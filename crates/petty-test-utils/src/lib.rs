//! Fixtures for Petty's tests: a fake VMM backend ([`FakeVmm`]) and a fake
//! guest agent ([`agent`]), so that what sits above the [`petty_vmm::Vmm`]
//! trait (the sandbox manager, its pool, reaper and recovery) is tested
//! without QEMU, a guest kernel or a root file system, in seconds, under
//! `tokio::time::pause()`.
//!
//! What is real: the run directories (made by [`petty_vmm::VmmProcess`],
//! as every backend makes them), one process per VM standing in for its
//! VMM (so liveness checks, recovery, the sweep of stale run directories
//! and the pidfd that tells a VM ended all see a process), the protocol's
//! frames on a socket pair, and whatever the code under test does with
//! them (SQLite included). What is fake: the guest. Its agent answers from
//! memory and runs nothing; its execs do what an
//! [`ExecHandler`](agent::ExecHandler) says, on tokio's clock.
//!
//! The real agent (`petty-agent --stdio`, as its own tests run it) is not
//! used here: on the host it would serve the manager's `set_time` (sent at
//! every boot) and `refresh` (every restore) by setting the host's clock
//! and hostname when the tests run as root, its execs would be the host's,
//! and its time is the real one, which a paused tokio clock does not stop.
//!
//! The placeholder processes are `sleep`, found in
//! [`petty_vmm::STANDARD_PATH`] rather than on `$PATH`, so the tests run
//! with a `$PATH` that holds nothing (no QEMU on it, to prove none is used).

#![warn(missing_docs)]

pub mod agent;
mod vmm;

use std::path::{Path, PathBuf};

pub use agent::{AgentMode, ExecReply};
pub use vmm::{FakeVmm, VmHandle};

/// Writes a stand-in kernel and root file system (sparse, 64 MiB) into
/// `dir`, for configs that must name existing files: `(kernel, rootfs)`.
pub fn fake_assets(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("assets directory");
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").expect("fake kernel");
    let rootfs = dir.join("rootfs.ext4");
    std::fs::File::create(&rootfs)
        .and_then(|f| f.set_len(64 << 20))
        .expect("fake rootfs");
    (kernel, rootfs)
}

/// A pid no process has: one that just exited (the kernel does not reuse
/// it at once).
pub fn dead_pid() -> u32 {
    let standard: Vec<PathBuf> = petty_vmm::STANDARD_PATH.iter().map(PathBuf::from).collect();
    let t = petty_vmm::find_on_path("true", &standard).expect("`true` in the standard path");
    let mut child = std::process::Command::new(t).spawn().expect("run true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
}

#[cfg(test)]
mod tests;
