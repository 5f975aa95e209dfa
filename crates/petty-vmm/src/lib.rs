//! The VMM layer: start, supervise and kill the process that runs one VM.
//!
//! [`Vmm`] is the swappable backend (QEMU, Firecracker, or one made
//! outside this crate and handed in through [`BackendOptions::flintlock`]:
//! Flintlock's, in `petty-flintlock`), [`Vm`] one
//! running machine. A backend gives back a byte stream to the guest agent and
//! guarantees teardown: [`Vm::stop`] on the normal path, and `Drop` (kill the
//! VMM, remove its sockets and disk overlay) on every other one, panics
//! included. This crate knows nothing of sandboxes, pools or HTTP.

#![warn(missing_docs)]

mod accel;
mod error;
pub mod firecracker;
mod migration;
mod process;
pub mod qemu;
pub mod qmp;
mod runclock;
mod rundir;
mod stream;
pub mod tcp;
mod turns;
pub mod vsock;
mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub use accel::{Accel, AccelChoice};
pub use error::VmmError;
pub use process::VmmProcess;
pub use runclock::RunClock;
pub use rundir::{
    ensure_run_root, pid_alive, remove_run_dir, run_dir_owner_alive, sweep_stale_run_dirs,
    vmm_alive, DETACHED_MARKER, JAIL_FILE, OWNER_FILE, PID_FILE,
};
pub use turns::{BootTurn, BootTurns};

pub use qemu::find_on_path;

/// Where programs are looked for unless a backend is given a search path.
pub use petty_config::STANDARD_PATH;

fn standard_path() -> Vec<PathBuf> {
    STANDARD_PATH.iter().map(PathBuf::from).collect()
}

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use stream::AgentStream;

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
    /// Boot on this disk overlay, kept by [`Vm::stop_keeping_disk`], rather
    /// than a new one: it is linked into the run directory (copied when it
    /// lies on another file system) and stays where it is, whole, should
    /// the start fail. With `restore_from`, the restored state runs on this
    /// disk (the snapshot's own disk layer, as a hibernation's is) instead
    /// of a new overlay over the snapshot's.
    pub disk: Option<PathBuf>,
    /// Size of the guest's root disk in MiB; `None` keeps the size of what it
    /// is made from (the base image, or the snapshot's disk). Never smaller
    /// than that. The guest grows its file system to fill the disk; after a
    /// restore the disk is grown once the state is loaded, so the guest sees
    /// it change size.
    pub disk_size_mib: Option<u32>,
    /// With `restore_from`, on a backend whose [`Vmm::can_standby`] is true:
    /// start the VMM only, ahead of need. The state is loaded, and the disk
    /// grown, by [`Vm::finish_standby`]; until then the guest does not run.
    /// The VMM gets a session of its own (as a detached VM) so it can become
    /// one, but its run directory is marked detached only when it is
    /// finished: until then the sweep kills it once its creator is gone.
    /// Implies `die_with_parent: false` and `start_paused: false`.
    pub standby: bool,
    /// A network interface on a TAP device inside a network namespace the
    /// caller made; `None`: no network device at all (the guest has only
    /// `lo`). The VMM process is started inside that namespace.
    ///
    /// A snapshot records whether its VM had one (its device state is in
    /// the snapshot): a snapshot taken with a network restores only into a
    /// VM given a network, and one taken without only into a VM without.
    /// The restored guest keeps the addresses it had; the namespace it is
    /// restored into gives its TAP device the same ones
    /// ([`petty_protocol::net`]).
    pub network: Option<VmNetwork>,
}

/// A VM's network interface: a TAP device inside a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    /// The namespace, as a file to `setns(2)` into (e.g.
    /// `/run/netns/petty-abc`, made by `ip netns add petty-abc`). It must
    /// exist when the VM starts.
    pub netns: PathBuf,
    /// The TAP device inside it (made already, e.g. `ip tuntap add dev
    /// tap0 mode tap`, persistent, so the VMM only attaches to it):
    /// 1 to 15 characters, letters, digits, `-`, `_` or `.`.
    pub tap: String,
    /// The guest interface's MAC address, `xx:xx:xx:xx:xx:xx` (hex).
    pub mac: String,
}

impl VmNetwork {
    /// A network on TAP device [`petty_protocol::net::TAP_NAME`] in
    /// namespace `netns`, the guest's MAC [`petty_protocol::net::GUEST_MAC`].
    pub fn new(netns: impl Into<PathBuf>) -> Self {
        Self {
            netns: netns.into(),
            tap: petty_protocol::net::TAP_NAME.into(),
            mac: petty_protocol::net::GUEST_MAC.into(),
        }
    }

    /// An error unless the TAP device's name and the MAC are well formed
    /// (they go into the VMM's arguments).
    pub fn validate(&self) -> Result<(), VmmError> {
        let fail = |problem: String| VmmError::Network {
            netns: self.netns.clone(),
            tap: self.tap.clone(),
            problem,
        };
        let name_ok = (1..=15).contains(&self.tap.len())
            && self
                .tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(fail(
                "the TAP device's name must be 1 to 15 letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let octets: Vec<&str> = self.mac.split(':').collect();
        let mac_ok = octets.len() == 6
            && octets
                .iter()
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !mac_ok {
            return Err(fail(format!(
                "{:?} is not a MAC address (six pairs of hex digits joined by ':')",
                self.mac
            )));
        }
        let first = u8::from_str_radix(octets[0], 16).expect("hex");
        if first & 1 != 0 {
            return Err(fail(format!(
                "{} is a multicast MAC address; a guest's must be unicast",
                self.mac
            )));
        }
        Ok(())
    }
}

impl VmConfig {
    /// A VM booting `kernel` on `rootfs`, with the defaults: 256 MiB, 2
    /// vCPUs, anonymous RAM, dying with its creator, the disk the size of
    /// the image, no network. Set the other fields with struct update syntax:
    /// `VmConfig { memory_mib: 512, ..VmConfig::new(id, kernel, rootfs) }`.
    pub fn new(
        id: impl Into<String>,
        kernel: impl Into<PathBuf>,
        rootfs: impl Into<PathBuf>,
    ) -> Self {
        Self {
            id: id.into(),
            kernel: kernel.into(),
            rootfs: rootfs.into(),
            memory_mib: 256,
            vcpus: 2,
            extra_cmdline: Vec::new(),
            die_with_parent: true,
            restore_from: None,
            memory: MemoryBacking::Anonymous,
            start_paused: false,
            disk: None,
            disk_size_mib: None,
            standby: false,
            network: None,
        }
    }
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

/// The size in bytes a disk image shows the guest: a qcow2 image's virtual
/// size (from its header), else the file's length (raw).
pub fn disk_image_size(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    // qcow2 header: magic "QFI\xfb" at 0, virtual size (big-endian u64) at 24.
    let mut header = [0u8; 32];
    if len >= 32 && f.read_exact(&mut header).is_ok() && header[..4] == *b"QFI\xfb" {
        let size: [u8; 8] = header[24..32].try_into().expect("8 bytes");
        return Ok(u64::from_be_bytes(size));
    }
    Ok(len)
}

/// Checks a requested root disk size against the image the disk is made
/// from; the error names `disk_size_mib`, the image and its size.
pub fn check_disk_size(requested_mib: Option<u32>, base: &Path) -> Result<(), VmmError> {
    let Some(mib) = requested_mib else {
        return Ok(());
    };
    let base_bytes = disk_image_size(base).map_err(|source| VmmError::DiskImage {
        path: base.to_path_buf(),
        source,
    })?;
    if u64::from(mib) << 20 < base_bytes {
        return Err(VmmError::DiskTooSmall {
            requested_mib: mib,
            base_mib: base_bytes.div_ceil(1 << 20),
            base: base.to_path_buf(),
        });
    }
    Ok(())
}

/// A VMM backend.
pub trait Vmm: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Its name, e.g. `qemu`.
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }

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

    /// True when `dir` holds a whole snapshot this backend took (its
    /// state file is there: it is written last).
    fn snapshot_exists(&self, dir: &Path) -> bool {
        dir.join(SNAPSHOT_STATE).is_file()
    }

    /// The disk image of snapshot `dir`: what a restore's root disk is made
    /// from, so the smallest size it can have.
    fn snapshot_disk(&self, dir: &Path) -> PathBuf {
        dir.join(SNAPSHOT_DISK)
    }

    /// Where the RAM of a VM restored from snapshot `dir` lives: its RAM
    /// file mapped privately when it has one (every VM restored from it
    /// shares its pages until it writes them), else anonymous memory.
    fn restore_memory(&self, dir: &Path) -> MemoryBacking {
        let ram = dir.join(SNAPSHOT_RAM);
        if ram.exists() {
            MemoryBacking::File {
                path: ram,
                shared: false,
            }
        } else {
            MemoryBacking::Anonymous
        }
    }

    /// Makes snapshot `dir` (just taken by [`Vm::snapshot`] from a VM
    /// started with `base`) one whose restores share its memory pages: its
    /// RAM in a file of its own ([`SNAPSHOT_RAM`]) that restores map
    /// privately. A backend whose snapshots already are (Firecracker's
    /// memory file, QEMU's split off as they are saved) does nothing; a
    /// QEMU snapshot with RAM inside its state (an earlier release's) is
    /// loaded once into a paused VM whose RAM is that file mapped shared
    /// and saved again without RAM, taking a turn to start it.
    /// A networked VM's snapshot needs `base` to carry its network: that VM
    /// runs in the same namespace, on a TAP device of its own.
    fn share_snapshot_ram<'a>(
        &'a self,
        dir: &'a Path,
        base: &'a VmConfig,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        let _ = (dir, base);
        Box::pin(async { Ok(()) })
    }

    /// The VMM binary this backend runs, when it can be found: a snapshot's
    /// state is only good for the VMM build that wrote it, so template keys
    /// include the binary's identity.
    fn binary_path(&self) -> Option<PathBuf> {
        None
    }

    /// What else shapes a guest this backend boots (its accelerator, boot
    /// options such as ASLR), beyond the kernel, rootfs and binary: a
    /// template saved under another profile is not reused.
    fn guest_profile(&self) -> String {
        String::new()
    }

    /// The turns VM starts take on this backend's run root, shared with
    /// every Petty process using that root: the caller holds one from
    /// [`Vmm::start`] until the guest's agent answers.
    fn boot_turns(&self) -> &BootTurns;

    /// True when this backend can start a restore's VMM ahead of need
    /// ([`VmConfig::standby`]), so that a later restore skips the VMM's own
    /// start-up (for QEMU, mostly its dynamic loader: ~15 ms).
    fn can_standby(&self) -> bool {
        false
    }
}

/// A VMM backend, as rows and snapshots record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `qemu-system-x86_64 -M microvm`, KVM or TCG.
    Qemu,
    /// Firecracker (KVM only).
    Firecracker,
    /// MicroVMs on a remote host, made and deleted through Flintlock's
    /// gRPC API (`petty-flintlock`); no snapshots. Never chosen by `auto`.
    Flintlock,
}

impl BackendKind {
    /// Its name: `qemu`, `firecracker` or `flintlock`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Firecracker => "firecracker",
            Self::Flintlock => "flintlock",
        }
    }

    /// Every backend, in the order `petty doctor` reports them.
    pub const ALL: [BackendKind; 3] = [Self::Qemu, Self::Firecracker, Self::Flintlock];
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = VmmError;

    fn from_str(s: &str) -> Result<Self, VmmError> {
        match s {
            "qemu" => Ok(Self::Qemu),
            "firecracker" => Ok(Self::Firecracker),
            "flintlock" => Ok(Self::Flintlock),
            other => Err(VmmError::Unavailable {
                backend: other.into(),
                reason: "no such backend; use qemu, firecracker, flintlock or auto".into(),
            }),
        }
    }
}

/// How the backends [`choose_backend`] makes are set up; the defaults are
/// each backend's own.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Where binaries given by name are looked for (default
    /// [`STANDARD_PATH`]).
    pub search_path: Option<Vec<PathBuf>>,
    /// VMs starting at once on this host (default: the CPU count); see
    /// [`BootTurns`].
    pub boot_slots: Option<usize>,
    /// QEMU's accelerator (default: probe the host, [`AccelChoice::detect`]).
    pub accel: Option<AccelChoice>,
    /// `qemu-system-x86_64`, or a path to it.
    pub qemu_binary: Option<String>,
    /// ASLR inside QEMU guests (default: on under KVM, off under TCG).
    pub guest_aslr: Option<bool>,
    /// `firecracker`, or a path to it.
    pub firecracker_binary: Option<String>,
    /// A host TAP device for Firecracker VMs' network interface.
    pub firecracker_tap: Option<String>,
    /// Firecracker Diff snapshots.
    pub firecracker_diff_snapshots: bool,
    /// Run Firecracker under the jailer; `Err`: its settings are wrong
    /// (every Firecracker start then says so).
    pub jailer: Result<Option<firecracker::JailerConfig>, String>,
    /// Makes the Flintlock backend (`petty-flintlock` implements it; this
    /// crate cannot name it, since that crate implements this one's
    /// traits); `None`: not configured (`backend.flintlock.endpoint`).
    pub flintlock: Option<BackendMaker>,
}

/// Makes a backend defined outside this crate, given the run root (see
/// [`BackendOptions::flintlock`]). `Err` says why it cannot be made.
#[derive(Clone)]
pub struct BackendMaker(pub std::sync::Arc<MakeBackend>);

/// What a [`BackendMaker`] calls.
pub type MakeBackend = dyn Fn(PathBuf) -> Result<Box<dyn Vmm>, VmmError> + Send + Sync;

impl std::fmt::Debug for BackendMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendMaker(..)")
    }
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            search_path: None,
            boot_slots: None,
            accel: None,
            qemu_binary: None,
            guest_aslr: None,
            firecracker_binary: None,
            firecracker_tap: None,
            firecracker_diff_snapshots: false,
            jailer: Ok(None),
            flintlock: None,
        }
    }
}

impl BackendOptions {
    /// The QEMU backend these options describe, and the line saying which
    /// accelerator it uses and why.
    pub fn qemu(&self, root: PathBuf) -> (qemu::QemuVmm, String) {
        let accel = self.accel.clone().unwrap_or_else(AccelChoice::detect);
        let notice = accel.notice();
        let mut q = qemu::QemuVmm::new(accel, root);
        if let Some(dirs) = &self.search_path {
            q = q.with_search_path(dirs.clone());
        }
        if let Some(b) = &self.qemu_binary {
            q = q.with_binary(b.clone());
        }
        if let Some(on) = self.guest_aslr {
            q = q.with_guest_aslr(on);
        }
        if let Some(n) = self.boot_slots {
            q = q.with_boot_slots(n);
        }
        (q, notice)
    }

    /// The Firecracker backend these options describe (whether it can run
    /// here: [`firecracker::FirecrackerVmm::availability`]).
    pub fn firecracker(&self, root: PathBuf) -> firecracker::FirecrackerVmm {
        let mut fc = firecracker::FirecrackerVmm::new(root)
            .with_tap(self.firecracker_tap.clone())
            .with_diff_snapshots(self.firecracker_diff_snapshots);
        if let Some(dirs) = &self.search_path {
            fc = fc.with_search_path(dirs.clone());
        }
        if let Some(b) = &self.firecracker_binary {
            fc = fc.with_binary(b.clone());
        }
        if let Some(n) = self.boot_slots {
            fc = fc.with_boot_slots(n);
        }
        match &self.jailer {
            Ok(j) => fc.with_jailer(j.clone()),
            Err(why) => fc.with_settings_error(Some(why.clone())),
        }
    }
}

/// Makes the backend `choice` asks for (`None`: auto: Firecracker when its
/// binary and a KVM that boots its guests are present, else QEMU with KVM,
/// else QEMU with TCG; never Flintlock, which puts sandboxes on another
/// host and only when asked for), with its run directories under `root`.
/// The string says which was chosen and why.
pub fn choose_backend(
    choice: Option<BackendKind>,
    root: PathBuf,
    options: &BackendOptions,
) -> Result<(Box<dyn Vmm>, String), VmmError> {
    match choice {
        Some(BackendKind::Qemu) => {
            let (q, notice) = options.qemu(root);
            Ok((Box::new(q), notice))
        }
        Some(BackendKind::Firecracker) => {
            let fc = options.firecracker(root);
            match fc.availability() {
                Ok(_) => Ok((Box::new(fc), "petty: using Firecracker".into())),
                Err(reason) => Err(VmmError::Unavailable {
                    backend: "firecracker".into(),
                    reason,
                }),
            }
        }
        Some(BackendKind::Flintlock) => match &options.flintlock {
            Some(make) => {
                let vmm = (make.0)(root)?;
                Ok((vmm, "petty: using Flintlock".into()))
            }
            None => Err(VmmError::Unavailable {
                backend: "flintlock".into(),
                reason: "it is not configured: set backend.flintlock.endpoint (and its \
                         kernel_image, root_image and guest_cidr)"
                    .into(),
            }),
        },
        None => {
            let fc = options.firecracker(root.clone());
            match fc.availability() {
                Ok(_) => Ok((Box::new(fc), "petty: using Firecracker".into())),
                Err(why) => {
                    let (q, notice) = options.qemu(root);
                    Ok((
                        Box::new(q),
                        format!("{notice}; Firecracker not used: {why}"),
                    ))
                }
            }
        }
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

    /// Links the VM's disk at `to` now, before a stop that keeps it
    /// ([`stop_keeping_disk`](Self::stop_keeping_disk)): a clean shutdown
    /// ends the VMM by itself, and a process watching the VM may remove its
    /// run directory before the stop gets to the disk. Nothing to do for a
    /// backend that keeps no disk, or across file systems.
    fn link_disk_early(&self, to: &Path) -> Result<(), VmmError> {
        let _ = to;
        Ok(())
    }

    /// Stops the VM (its process ended first, so the disk is whole) and
    /// keeps its disk overlay at `to`, to boot on again later
    /// ([`VmConfig::disk`]); everything else it left is removed. A backend
    /// that cannot keep a disk says so and stops nothing.
    fn stop_keeping_disk(self: Box<Self>, to: PathBuf) -> BoxFuture<'static, Result<(), VmmError>> {
        let _ = to;
        Box::pin(async {
            Err(VmmError::Unavailable {
                backend: "this".into(),
                reason: "it cannot keep a stopped VM's disk; destroy the sandbox instead".into(),
            })
        })
    }

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

    /// Finishes a VM started with [`VmConfig::standby`]: loads its
    /// snapshot's state and lets the guest run, grows its root disk to
    /// `disk_size_mib` (see [`VmConfig::disk_size_mib`]) and marks its run
    /// directory detached. An error for any other VM.
    fn finish_standby(&self, disk_size_mib: Option<u32>) -> BoxFuture<'_, Result<(), VmmError>> {
        let _ = disk_size_mib;
        Box::pin(async {
            Err(VmmError::Snapshot {
                op: "finishing a standby VM",
                dir: self.run_dir().to_path_buf(),
                message: "this VM was not started as a standby".into(),
            })
        })
    }

    /// Resolves, with what happened, once the VM has ended for good on its
    /// own: its VMM process exited (the guest rebooted or crashed, or the
    /// VMM was killed), or, where the backend can tell, its guest halted or
    /// powered off with the VMM still up. Never resolves while the VM runs.
    /// The caller stops watching before it stops the VM itself.
    fn ended(&self) -> BoxFuture<'static, String> {
        let (pid, dir) = (self.pid(), self.run_dir().to_path_buf());
        Box::pin(async move {
            watch::process_exit(pid, &dir).await;
            format!("its VMM process (pid {pid}) exited")
        })
    }

    /// Freezes the guest's vCPUs.
    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>>;

    /// Lets a paused guest run again.
    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes_of_raw_and_qcow2_images() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("rootfs.ext4");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();
        assert_eq!(disk_image_size(&raw).unwrap(), 100 << 20);
        // A qcow2 header: its virtual size, not the file's length, counts.
        let mut header = vec![0u8; 512];
        header[..4].copy_from_slice(b"QFI\xfb");
        header[24..32].copy_from_slice(&(300u64 << 20).to_be_bytes());
        let qcow2 = dir.path().join("disk.qcow2");
        std::fs::write(&qcow2, &header).unwrap();
        assert_eq!(disk_image_size(&qcow2).unwrap(), 300 << 20);

        check_disk_size(None, &raw).unwrap();
        check_disk_size(Some(100), &raw).unwrap();
        check_disk_size(Some(300), &qcow2).unwrap();
        let e = check_disk_size(Some(299), &qcow2).unwrap_err().to_string();
        assert!(
            e.contains("disk_size_mib 299") && e.contains("300 MiB"),
            "{e}"
        );
        let e = check_disk_size(Some(1), &dir.path().join("none")).unwrap_err();
        assert!(matches!(e, VmmError::DiskImage { .. }), "{e}");
    }
}
