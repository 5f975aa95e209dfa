//! Errors of the VMM layer, named after the operation that failed.

use std::path::PathBuf;

/// Why a VMM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary is not installed.
    #[error("{binary} not found on PATH\nhint: run `scripts/install-deps` (or `apt-get install qemu-system-x86 qemu-utils`)")]
    BinaryMissing {
        /// The missing program.
        binary: String,
    },
    /// The chosen backend cannot run on this host.
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable {
        /// The backend.
        backend: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A file the VM needs does not exist.
    #[error("{what} not found at {}\nhint: run `petty image build`", path.display())]
    AssetMissing {
        /// Which asset.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The run root (where VMs keep sockets and disks) is not private to
    /// this user, so it is not used.
    #[error("the run directory root {} is refused: {problem}", path.display())]
    RunRoot {
        /// The run root.
        path: PathBuf,
        /// What is wrong with it and what to do.
        problem: String,
    },
    /// No turn to start a VM came free in time (see [`crate::BootTurns`]).
    #[error("waited {secs} s for a turn to start a VM ({slots} start at once on this host, limits.max_concurrent_boots) without getting one; the host is overloaded, or a start is stuck: try again, or raise the limit")]
    NoTurn {
        /// Starts allowed at once.
        slots: usize,
        /// How long it waited.
        secs: u64,
    },
    /// Creating the run directory or the disk overlay failed.
    #[error("preparing the VM's files in {}", dir.display())]
    Prepare {
        /// The run directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The requested root disk is smaller than the image it is made from.
    #[error("disk_size_mib {requested_mib} is smaller than the disk it is made from ({} is {base_mib} MiB); ask for at least {base_mib} MiB or leave disk_size_mib unset", base.display())]
    DiskTooSmall {
        /// What was asked for, in MiB.
        requested_mib: u32,
        /// Size of the base image or snapshot disk, in MiB (rounded up).
        base_mib: u64,
        /// The base image or snapshot disk.
        base: PathBuf,
    },
    /// The size of a disk image could not be read.
    #[error("reading the size of disk image {}", path.display())]
    DiskImage {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VM's network namespace or TAP device settings cannot be used.
    #[error("the VM's network (namespace {}, TAP device {tap:?}): {problem}", netns.display())]
    Network {
        /// The network namespace file.
        netns: PathBuf,
        /// The TAP device.
        tap: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// `qemu-img create` failed.
    #[error("creating the copy-on-write disk overlay failed: {0}")]
    Overlay(String),
    /// The VMM process could not be started.
    #[error("starting {binary}")]
    Spawn {
        /// The program.
        binary: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM process exited during start-up.
    #[error("{binary} exited during start-up ({status}): {stderr}")]
    EarlyExit {
        /// The program.
        binary: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The VMM did not create its sockets in time.
    #[error("{binary} did not open its control sockets within {secs} s")]
    StartTimeout {
        /// The program.
        binary: String,
        /// How long we waited.
        secs: u64,
    },
    /// The VM to attach to is no longer running.
    #[error("the VM {id} is not running any more (VMM pid {pid} is gone)")]
    Gone {
        /// The VM's id.
        id: String,
        /// Its last known VMM pid.
        pid: u32,
    },
    /// Saving or loading a snapshot failed.
    #[error("{op} snapshot {}: {message}", dir.display())]
    Snapshot {
        /// `saving` or `restoring`.
        op: &'static str,
        /// The snapshot directory.
        dir: PathBuf,
        /// What went wrong (QEMU's words where it gave some).
        message: String,
    },
    /// Connecting to the guest agent's socket failed.
    #[error("connecting to the agent socket {}", path.display())]
    AgentConnect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A QMP command failed.
    #[error("QMP {command} failed: {message}")]
    Qmp {
        /// The command.
        command: String,
        /// QEMU's error text, verbatim.
        message: String,
    },
    /// A Firecracker API call failed; Firecracker's own words are kept.
    #[error(transparent)]
    Firecracker(#[from] crate::firecracker::ApiError),
    /// A remote backend's host (Flintlock's API) refused or failed a call;
    /// its own words are kept.
    #[error("the {backend} host ({endpoint}): {op}: {message}")]
    Remote {
        /// The backend.
        backend: &'static str,
        /// Where its API is.
        endpoint: String,
        /// What was asked, e.g. `CreateMicroVM petty/abc`.
        op: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// What this backend cannot do at all (no snapshots on Flintlock):
    /// the message says which backend can.
    #[error("the {backend} backend {message}")]
    NotSupported {
        /// The backend.
        backend: &'static str,
        /// What it lacks, and what to use instead.
        message: String,
    },
    /// Talking to QMP failed at the I/O level.
    #[error("QMP connection")]
    QmpIo(#[source] std::io::Error),
    /// Stopping the VM failed.
    #[error("stopping the VM (pid {pid})")]
    Stop {
        /// The VMM process.
        pid: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
