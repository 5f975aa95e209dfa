//! Petty sandboxes: a real VM with its own kernel, its agent, and the
//! operations a caller runs in it.
//!
//! [`Sandbox::create`] starts a VM through a [`petty_vmm::Vmm`] backend,
//! connects to the guest agent and checks its version; [`Sandbox::destroy`]
//! (or dropping the sandbox) kills the VM and removes everything it left on
//! the host. Configuration is validated before any VM starts.

#![warn(missing_docs)]

pub mod catalog;
mod config;
mod error;
mod manager;
pub mod metrics;
mod pool;
mod sandbox;
mod state;
pub mod store;
mod template;

pub use catalog::{check_template_name, ImageDefaults, TemplateRecord, BASE_TEMPLATE};
pub use config::{
    backend_choice, host_cpus, host_memory_mib, IdleAction, SandboxConfig, SandboxConfigBuilder,
    DEFAULT_DISK_FREE_MIB,
};
pub use error::CoreError;
pub use manager::{ManagerConfig, SandboxInfo, SandboxManager};
pub use metrics::{GuestMemory, HostUsage, ManagerStats, NetUsage, SandboxMetrics, StartKind};
pub use petty_agent_client::{
    ClientError, ExecEvent, ExecOutput, ExecStream, StdinHandle, Violation, WatchStream,
};
pub use petty_protocol::{
    Command as ExecCommand, ErrorKind as GuestErrorKind, ExecRequest, ExitStatus, FileEntry,
    FileStat, FileType, PtySize, WatchEvent, PROTOCOL_VERSION,
};
pub use petty_vmm::BackendKind;
pub use pool::{PoolConfig, PoolStats, SandboxPool, DEFAULT_WARMUP};
pub use sandbox::{code_argv, ExecResult, Sandbox, SandboxId};
pub use state::SandboxState;

#[cfg(test)]
mod readme {
    /// The README's "From Rust" block is `examples/quickstart.rs`'s body, so
    /// what the README shows compiles (the example is built with the tests).
    #[test]
    fn the_readme_shows_the_quickstart_example() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let example = std::fs::read_to_string(root.join("examples/quickstart.rs")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let (_, rest) = example.split_once("    // README begin\n").unwrap();
        let (body, _) = rest.split_once("    // README end").unwrap();
        let body: String = body
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let (_, rest) = readme.split_once("### From Rust\n\n```rust\n").unwrap();
        let (shown, _) = rest.split_once("```\n").unwrap();
        assert_eq!(
            shown, body,
            "README's From Rust block differs from examples/quickstart.rs"
        );
    }
}
