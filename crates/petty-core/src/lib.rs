//! Petty sandboxes: a real VM with its own kernel, its agent, and the
//! operations a caller runs in it.
//!
//! [`Sandbox::create`] starts a VM through a [`petty_vmm::Vmm`] backend,
//! connects to the guest agent and checks its version; [`Sandbox::destroy`]
//! (or dropping the sandbox) kills the VM and removes everything it left on
//! the host. Configuration is validated before any VM starts.

#![warn(missing_docs)]

mod config;
mod error;
mod manager;
mod pool;
mod sandbox;
mod state;
pub mod store;
mod template;

pub use config::{
    host_cpus, host_memory_mib, SandboxConfig, SandboxConfigBuilder, DEFAULT_DISK_FREE_MIB,
};
pub use error::CoreError;
pub use manager::{data_dir, ManagerConfig, SandboxInfo, SandboxManager};
pub use petty_agent_client::{
    ClientError, ExecEvent, ExecOutput, ExecStream, StdinHandle, Violation,
};
pub use petty_protocol::{
    Command as ExecCommand, ErrorKind as GuestErrorKind, ExecRequest, ExitStatus, FileEntry,
    FileStat, FileType,
};
pub use pool::{PoolConfig, PoolStats, SandboxPool};
pub use sandbox::{code_argv, ExecResult, Sandbox, SandboxId};
pub use state::SandboxState;
