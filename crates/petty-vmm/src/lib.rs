//! The VMM layer: start, supervise and kill the process that runs one VM.
//!
//! [`Vmm`] is the swappable backend (QEMU here; Firecracker later), [`Vm`] one
//! running machine. A backend gives back a byte stream to the guest agent and
//! guarantees teardown: [`Vm::stop`] on the normal path, and `Drop` (kill the
//! VMM, remove its sockets and disk overlay) on every other one, panics
//! included. This crate knows nothing of sandboxes, pools or HTTP.

#![warn(missing_docs)]

mod accel;
mod error;
pub mod firecracker;
mod process;
pub mod qemu;
pub mod qmp;
mod rundir;
pub mod vsock;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub use accel::{Accel, AccelChoice};
pub use error::VmmError;
pub use rundir::{
    pid_alive, runtime_root, sweep_stale_run_dirs, vmm_alive, DETACHED_MARKER, PID_FILE,
};

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The stream to the guest agent.
pub type AgentStream = tokio::net::UnixStream;

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Unique id; names the run directory.
    pub id: String,
    /// Guest kernel (bzImage for QEMU, ELF vmlinux for Firecracker).
    pub kernel: PathBuf,
    /// Base root filesystem image (ext4); never written.
    pub rootfs: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Extra kernel command line words.
    pub extra_cmdline: Vec<String>,
    /// Kill the VM when the process that started it dies, even by SIGKILL.
    /// When false the VM is detached (its own session) and outlives its
    /// creator; a marker in its run directory says so, for recovery.
    pub die_with_parent: bool,
    /// Start from this snapshot (made by [`Vm::snapshot`]) instead of booting:
    /// its disk becomes the backing file of the VM's overlay and its state is
    /// loaded before the guest runs. Memory, vCPUs and kernel must match it.
    pub restore_from: Option<PathBuf>,
    /// Where guest RAM lives.
    pub memory: MemoryBacking,
    /// With `restore_from`: leave the guest paused once its state is loaded.
    pub start_paused: bool,
}

/// Where a VM's RAM lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Anonymous memory of the VMM process.
    #[default]
    Anonymous,
    /// A file mapped as guest RAM: `shared` writes go to the file (a template
    /// being made); otherwise the mapping is private, so many VMs read the
    /// file's pages from the page cache and copy only the pages they write.
    File {
        /// The file.
        path: PathBuf,
        /// Map it shared (writes reach the file) or private (copy on write).
        shared: bool,
    },
}

/// What [`Vm::snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The directory holding them.
    pub dir: PathBuf,
    /// Bytes of device and memory state.
    pub state_bytes: u64,
    /// Bytes of the disk layer.
    pub disk_bytes: u64,
}

/// File of a snapshot directory holding the device and memory state.
pub const SNAPSHOT_STATE: &str = "state";
/// File of a snapshot directory holding the disk layer (qcow2).
pub const SNAPSHOT_DISK: &str = "disk.qcow2";
/// File of a snapshot directory holding guest RAM, when the snapshot was
/// taken from a VM whose RAM was that file (shared): its state file then
/// holds no RAM, and restores map this file privately.
pub const SNAPSHOT_RAM: &str = "ram";

/// A VMM backend.
pub trait Vmm: Send + Sync {
    /// Short name, e.g. `qemu`.
    fn name(&self) -> &'static str;

    /// Starts a VM. On error nothing is left behind: no process, socket or file.
    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<Box<dyn Vm>, VmmError>>;

    /// Takes charge of a VM that another process started (its VMM runs as
    /// `pid`, with run directory `id` under this backend's root).
    fn attach(&self, id: &str, pid: u32) -> Result<Box<dyn Vm>, VmmError>;

    /// Directory under which this backend keeps run directories.
    fn root(&self) -> &Path;

    /// True when the backend boots an ELF `vmlinux` rather than a `bzImage`.
    fn wants_elf_kernel(&self) -> bool {
        false
    }

    /// An error saying what is missing when this backend cannot start VMs here.
    fn check(&self) -> Result<(), VmmError>;

    /// True when snapshots taken by this backend can be restored
    /// ([`VmConfig::restore_from`]), which template-based creation needs.
    fn can_restore(&self) -> bool {
        true
    }
}

/// Picks a backend: `qemu`, `firecracker`, or `auto` (Firecracker when its
/// binary and a KVM that boots its guests are present, else QEMU with KVM,
/// else QEMU with TCG). `None` means `$PETTY_BACKEND`, else `auto`. The
/// string says which was chosen and why.
pub fn choose_backend(
    choice: Option<&str>,
    root: PathBuf,
) -> Result<(Box<dyn Vmm>, String), VmmError> {
    let from_env = std::env::var("PETTY_BACKEND").ok();
    let choice = choice.or(from_env.as_deref()).unwrap_or("auto");
    let fc = firecracker::FirecrackerVmm::new(root.clone());
    match choice {
        "qemu" => {
            let accel = AccelChoice::detect();
            let why = accel.notice();
            Ok((Box::new(qemu::QemuVmm::new(accel, root)), why))
        }
        "firecracker" => match fc.availability() {
            Ok(_) => Ok((Box::new(fc), "petty: using Firecracker".into())),
            Err(reason) => Err(VmmError::Unavailable {
                backend: "firecracker".into(),
                reason,
            }),
        },
        "auto" => match fc.availability() {
            Ok(_) => Ok((Box::new(fc), "petty: using Firecracker".into())),
            Err(why) => {
                let accel = AccelChoice::detect();
                let notice = format!("{}; Firecracker not used: {why}", accel.notice());
                Ok((Box::new(qemu::QemuVmm::new(accel, root)), notice))
            }
        },
        other => Err(VmmError::Unavailable {
            backend: other.into(),
            reason: "no such backend; use qemu, firecracker or auto".into(),
        }),
    }
}

/// One running VM.
pub trait Vm: Send + Sync {
    /// The VM's id.
    fn id(&self) -> &str;

    /// The VMM process id.
    fn pid(&self) -> u32;

    /// Directory holding the VM's sockets, overlay and logs.
    fn run_dir(&self) -> &Path;

    /// Opens a new stream to the guest agent.
    fn connect_agent(&self) -> BoxFuture<'_, Result<AgentStream, VmmError>>;

    /// True while the VMM process runs.
    fn is_running(&self) -> bool;

    /// The last lines the guest printed on its console, for error messages.
    fn console_tail(&self) -> String;

    /// Stops the VM and removes everything it left on disk.
    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<(), VmmError>>;

    /// Lets go of the VM without stopping it: it keeps running for another
    /// process to [`Vmm::attach`] to.
    fn detach(self: Box<Self>);

    /// Writes a snapshot of the running VM into `dir` (which must exist):
    /// the guest is paused, its memory and device state saved and its disk
    /// layer copied, consistent with each other; then it runs on if `resume`.
    fn snapshot<'a>(
        &'a self,
        dir: &'a Path,
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotFiles, VmmError>>;

    /// Freezes the guest's vCPUs.
    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>>;

    /// Lets a paused guest run again.
    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>>;
}
