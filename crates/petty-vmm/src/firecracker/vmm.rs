//! The Firecracker backend: one `firecracker --api-sock` process per VM,
//! configured over its API, the agent reached over hybrid vsock port 52.
//!
//! Each VM's run directory holds the API socket, the vsock socket, its own
//! copy of the root filesystem (reflinked where the file system can, sparse
//! otherwise) and Firecracker's log. Under the jailer the disk, sockets and
//! kernel live in the jail's root instead, and the run directory records the
//! jail.
//!
//! **Snapshots and clones.** Firecracker records in a snapshot the paths of
//! the VM's drive and vsock socket, and a restore reopens them: clones of one
//! snapshot would all open the same disk. Its documentation asks for those
//! resources to be "accessible at the same relative paths" to the new
//! process, and that is what Petty gives: Firecracker runs with its working
//! directory in the VM's own run directory (the jail's root, under the
//! jailer), and is only ever given *relative* paths for them
//! (`rootfs.ext4`, `vsock.sock`). A snapshot therefore names no particular
//! VM's files, and each clone, started in its own directory holding its own
//! disk copy, reopens its own. No chroot or mount namespace is needed, the
//! snapshot's disk is never opened by a clone, and the same snapshot
//! restores jailed or not. The load leaves the clone paused, its drive is
//! then re-pointed at its own disk (`PATCH /drives/rootfs`, which also tells
//! the guest of a disk grown by `disk_size_mib`), and only then does it run.
//!
//! A snapshot directory holds `state`, `memory` (always the full memory: a
//! Diff is merged onto its base when taken), `disk.ext4` and
//! `firecracker.json` (format, an id for the memory file, whether the VM had
//! a network interface). Clones map `memory` privately, so all of them share
//! its page-cache pages.
//!
//! **Diff snapshots** (opt-in, [`FirecrackerVmm::with_diff_snapshots`]): VMs
//! track dirty pages, and a snapshot of a VM whose memory base is known (the
//! snapshot it was restored from, or its own last snapshot, checked by id)
//! is a Diff: only the dirtied pages are written while the guest is paused;
//! they are merged onto a copy of the base after it runs on.
//!
//! The `memory` setting of [`VmConfig`] is not used: Firecracker boots with
//! anonymous memory, and its snapshots always keep memory in a file of
//! their own, so [`Vmm::share_snapshot_ram`] has nothing to do.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use petty_protocol::VSOCK_PORT;
use serde_json::json;

use super::api::{
    boot_sequence, patch_drive, pause, resume, snapshot_create, snapshot_load, ApiClient, BootSpec,
    LoadSpec, Network, Request, ROOT_DRIVE,
};
use super::jail::JailerConfig;
use super::memfile::{holes_are_page_granular, merge_diff};
use crate::process::{tail, VmmProcess};
use crate::qemu::find_on_path;
use crate::rundir::{vmm_alive, JailRecord};
use crate::{
    check_disk_size, Accel, AccelChoice, AgentStream, BootTurns, BoxFuture, SnapshotFiles, Vm,
    VmConfig, Vmm, VmmError, SNAPSHOT_STATE,
};

/// API socket, inside the run directory (unjailed VMs).
pub const API_SOCKET: &str = "api.sock";
/// Hybrid vsock socket, in Firecracker's working directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The VM's own root disk, in Firecracker's working directory.
const ROOTFS: &str = "rootfs.ext4";
/// Firecracker's stdout and stderr (guest console included).
const LOG: &str = "firecracker.log";
/// What the run directory remembers of the VM ([`VmFacts`]).
const VM_FACTS: &str = "vm.json";
/// A Firecracker snapshot's memory file (always full memory).
pub const SNAPSHOT_MEMORY: &str = "memory";
/// A Firecracker snapshot's disk copy.
pub const SNAPSHOT_ROOTFS: &str = "disk.ext4";
/// A Firecracker snapshot's description: format, an id for its memory
/// file, whether the VM had a network interface.
pub const SNAPSHOT_META: &str = "firecracker.json";
/// Bump when what a snapshot directory holds changes.
const SNAPSHOT_FORMAT: u64 = 1;
/// Names in a jail's root. What a restore loads and what a snapshot writes
/// never share a name: Firecracker truncates an existing output file, and a
/// loaded memory file is a hard link to the snapshot's own.
const JAILED_KERNEL: &str = "vmlinux";
const JAILED_LOADED_STATE: &str = "loaded.state";
const JAILED_LOADED_MEMORY: &str = "loaded.memory";
const JAILED_SAVED_STATE: &str = "saved.state";
const JAILED_SAVED_MEMORY: &str = "saved.memory";
/// A Diff's memory, in Firecracker's working directory until merged.
const DIFF_MEMORY: &str = "saved.memory.diff";

/// Kernel command line for Petty guests under Firecracker: `reboot=k` (the
/// i8042 reset ends Firecracker), and the agent told to use vsock.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=1 pci=off root=/dev/vda rw \
     rootfstype=ext4 init=/sbin/petty-agent random.trust_cpu=on petty.transport=vsock";

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The Firecracker backend.
pub struct FirecrackerVmm {
    binary: String,
    search_path: Vec<PathBuf>,
    root: PathBuf,
    jailer: Option<JailerConfig>,
    tap: Option<String>,
    diff_snapshots: bool,
    /// A jailer setting that is wrong: every start fails with it rather
    /// than silently running unjailed.
    settings_error: Option<String>,
    turns: BootTurns,
}

impl FirecrackerVmm {
    /// A backend keeping run directories under `root`, running
    /// `firecracker` from the standard directories, unjailed, without a
    /// network interface, with Full snapshots; the `with_*` methods change
    /// each.
    pub fn new(root: PathBuf) -> Self {
        Self {
            binary: "firecracker".into(),
            search_path: crate::standard_path(),
            jailer: None,
            tap: None,
            diff_snapshots: false,
            settings_error: None,
            turns: BootTurns::new(&root, crate::turns::host_cpus()),
            root,
        }
    }

    /// Looks for binaries given by name in these directories instead of
    /// the standard ones.
    pub fn with_search_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.search_path = dirs;
        self
    }

    /// Refuses every start with `why` (a setting that could not be read).
    pub fn with_settings_error(mut self, why: Option<String>) -> Self {
        self.settings_error = why;
        self
    }

    /// Lets `slots` VMs start at once on this host (see [`BootTurns`]).
    pub fn with_boot_slots(mut self, slots: usize) -> Self {
        self.turns = BootTurns::new(&self.root, slots);
        self
    }

    /// Uses `binary` (a name on `PATH` or a path) instead of the default.
    pub fn with_binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Runs every VM under the jailer (`None`: unjailed).
    pub fn with_jailer(mut self, jailer: Option<JailerConfig>) -> Self {
        self.settings_error = jailer.as_ref().and_then(|j| j.validate().err());
        self.jailer = jailer;
        self
    }

    /// Gives every VM a network interface on host TAP device `tap`
    /// (`None`: no network). One TAP device serves one VM at a time. A VM
    /// given its own ([`VmConfig::network`]) uses that instead.
    pub fn with_tap(mut self, tap: Option<String>) -> Self {
        self.tap = tap;
        self
    }

    /// Makes VMs track dirty pages, so that snapshots of VMs whose memory
    /// base is known are Diffs.
    pub fn with_diff_snapshots(mut self, on: bool) -> Self {
        self.diff_snapshots = on;
        self
    }

    /// The jailer settings, when VMs run jailed.
    pub fn jailer(&self) -> Option<&JailerConfig> {
        self.jailer.as_ref()
    }

    /// The host TAP device of VMs' network interface, if any.
    pub fn tap(&self) -> Option<&str> {
        self.tap.as_deref()
    }

    /// Whether snapshots may be Diffs.
    pub fn diff_snapshots(&self) -> bool {
        self.diff_snapshots
    }

    /// A setting that could not be read (every start then fails with it).
    pub fn settings_error(&self) -> Option<&str> {
        self.settings_error.as_deref()
    }

    /// The binary, if this host can run Firecracker VMs with these
    /// settings; else why not.
    pub fn availability(&self) -> Result<PathBuf, String> {
        if let Some(e) = &self.settings_error {
            return Err(e.clone());
        }
        let binary = find_on_path(&self.binary, &self.search_path)
            .ok_or_else(|| format!("no `{}` on the search path", self.binary))?;
        if let Some(j) = &self.jailer {
            find_on_path(&j.binary, &self.search_path).ok_or_else(|| {
                format!(
                    "backend.firecracker.jailer is set but there is no `{}` on the search path",
                    j.binary
                )
            })?;
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                return Err(
                    "the jailer must run as root (backend.firecracker.jailer is set)".into(),
                );
            }
            jailed_exec_file(&binary)?;
        }
        let accel = AccelChoice::detect();
        if accel.accel != Accel::Kvm {
            return Err(format!("Firecracker needs a working KVM: {}", accel.reason));
        }
        Ok(binary)
    }

    async fn start_vm(&self, config: &VmConfig) -> Result<FcVm, VmmError> {
        if let Some(reason) = &self.settings_error {
            return Err(VmmError::Unavailable {
                backend: "firecracker".into(),
                reason: reason.clone(),
            });
        }
        let binary = find_on_path(&self.binary, &self.search_path).ok_or_else(|| {
            VmmError::BinaryMissing {
                binary: self.binary.clone(),
            }
        })?;
        let jailer = match &self.jailer {
            Some(j) => {
                let program = find_on_path(&j.binary, &self.search_path).ok_or_else(|| {
                    VmmError::BinaryMissing {
                        binary: j.binary.clone(),
                    }
                })?;
                let exec_file =
                    jailed_exec_file(&binary).map_err(|reason| VmmError::Unavailable {
                        backend: "firecracker".into(),
                        reason,
                    })?;
                Some((j, program, exec_file))
            }
            None => None,
        };
        let snapshot = match &config.restore_from {
            Some(dir) => Some(SnapshotDir::open(dir)?),
            None => None,
        };
        if snapshot.is_none() {
            for (what, path) in [
                ("guest kernel (ELF vmlinux)", &config.kernel),
                ("guest rootfs", &config.rootfs),
            ] {
                if !path.is_file() {
                    return Err(VmmError::AssetMissing {
                        what,
                        path: path.clone(),
                    });
                }
            }
        }
        let disk_base = match &snapshot {
            Some(s) => s.dir.join(SNAPSHOT_ROOTFS),
            None => config.rootfs.clone(),
        };
        check_disk_size(config.disk_size_mib, &disk_base)?;
        let fc_id = fc_id(&config.id);
        let network = interface(config, self.tap.as_deref(), &fc_id, snapshot.as_ref())?;
        let tap = network.as_ref().map(|n| n.tap.clone());

        // From here on, dropping `vm` kills Firecracker and removes the
        // directory (and the jail).
        let proc = VmmProcess::prepare(&self.root, config)?;
        let dir = proc.dir.clone();
        let prepare = |source| VmmError::Prepare {
            dir: dir.clone(),
            source,
        };
        let jail = jailer
            .as_ref()
            .map(|(j, _, exec_file)| j.jail(&fc_id, exec_file));
        let mut vm = FcVm::new(proc, jail.as_ref().map(|j| j.record.clone()));
        if let Some(jail) = &jail {
            jail.prepare(&dir).map_err(prepare)?;
        }
        let cwd = vm.cwd.clone();

        // The VM's own disk: a copy of the base image or of the snapshot's
        // disk, extended with a hole to a larger size.
        let disk = cwd.join(ROOTFS);
        copy_sparse(&disk_base, &disk).await?;
        // (`cp` gave the copy the cached image's read-only mode.)
        fs::set_permissions(&disk, fs::Permissions::from_mode(0o600)).map_err(prepare)?;
        if let Some(mib) = config.disk_size_mib {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&disk)
                .map_err(prepare)?;
            if f.metadata().map_err(prepare)?.len() < u64::from(mib) << 20 {
                f.set_len(u64::from(mib) << 20).map_err(prepare)?;
            }
        }
        if let Some(jail) = &jail {
            jail.give(&disk).map_err(prepare)?;
        }
        // The files Firecracker opens by absolute path: in the jail's root
        // under the jailer, where they are.
        let place = |src: &Path, name: &str| -> Result<PathBuf, VmmError> {
            match &jail {
                Some(jail) => jail.link_in(src, name).map_err(prepare),
                None => std::path::absolute(src).map_err(prepare),
            }
        };
        let kernel = match &snapshot {
            None => Some(place(&config.kernel, JAILED_KERNEL)?),
            Some(_) => None,
        };
        let loaded = match &snapshot {
            Some(s) => Some((
                place(&s.dir.join(SNAPSHOT_STATE), JAILED_LOADED_STATE)?,
                place(&s.dir.join(SNAPSHOT_MEMORY), JAILED_LOADED_MEMORY)?,
            )),
            None => None,
        };
        let facts = VmFacts {
            tap: tap.clone(),
            dirty_pages: self.diff_snapshots,
            // A clone's dirty-page log starts at the load: the snapshot's
            // memory is its base.
            base: snapshot
                .as_ref()
                .filter(|_| self.diff_snapshots)
                .map(|s| MemoryBase {
                    path: s.dir.join(SNAPSHOT_MEMORY),
                    id: s.meta.memory_id.clone(),
                }),
        };
        facts.write(&dir).map_err(prepare)?;

        let log = fs::File::create(dir.join(LOG)).map_err(prepare)?;
        let log2 = log.try_clone().map_err(prepare)?;
        let (mut cmd, program) = match &jailer {
            Some((j, program, exec_file)) => {
                let mut cmd = std::process::Command::new(program);
                cmd.args(j.args(&fc_id, exec_file));
                (cmd, j.binary.clone())
            }
            None => {
                let mut cmd = std::process::Command::new(&binary);
                cmd.arg("--api-sock")
                    .arg(dir.join(API_SOCKET))
                    .arg("--id")
                    .arg(&fc_id)
                    // Relative paths in requests resolve here.
                    .current_dir(&dir);
                (cmd, self.binary.clone())
            }
        };
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        // The VM's own network: Firecracker (the jailer, which stays in it)
        // runs inside its namespace, where its TAP device is.
        if let Some(network) = &config.network {
            crate::process::join_netns(&mut cmd, network)?;
        }
        // Under the jailer the parent-death signal does not survive its
        // change of user: a VM meant to die with us is killed by the next
        // sweep instead (`sweep_stale_run_dirs`).
        vm.proc.spawn(cmd, config.die_with_parent, &program)?;

        let deadline = Instant::now() + START_TIMEOUT;
        while !vm.api_socket.exists() {
            if let Some(status) = vm.proc.try_wait() {
                return Err(VmmError::EarlyExit {
                    binary: program,
                    status,
                    stderr: vm.console_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmmError::StartTimeout {
                    binary: program,
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        match (kernel, loaded) {
            (Some(kernel), _) => {
                let mut boot_args = BASE_CMDLINE.to_string();
                for w in &config.extra_cmdline {
                    boot_args.push(' ');
                    boot_args.push_str(w);
                }
                let spec = BootSpec {
                    kernel,
                    boot_args,
                    rootfs: ROOTFS.into(),
                    memory_mib: config.memory_mib,
                    vcpus: config.vcpus,
                    // Each VM has its own vsock device behind its own socket.
                    vsock_cid: 3,
                    vsock_uds: VSOCK_SOCKET.into(),
                    network,
                    track_dirty_pages: self.diff_snapshots,
                };
                for req in boot_sequence(&spec) {
                    vm.call(req).await?;
                }
            }
            (None, Some((state, memory))) => {
                let snap = snapshot.as_ref().expect("a restore");
                let load = LoadSpec {
                    state,
                    memory,
                    vsock_uds: VSOCK_SOCKET.into(),
                    track_dirty_pages: self.diff_snapshots,
                    tap,
                };
                vm.call(snapshot_load(&load)).await.map_err(|e| {
                    snap.fail(format!("{e}; Firecracker's log: {}", vm.console_tail()))
                })?;
                vm.call(patch_drive(ROOT_DRIVE, Path::new(ROOTFS))).await?;
                if jail.is_some() {
                    // Loaded and released by Firecracker.
                    let _ = fs::remove_file(cwd.join(JAILED_LOADED_STATE));
                }
                if !config.start_paused {
                    vm.call(resume()).await?;
                }
                tracing::debug!(vm = %config.id, snapshot = %snap.dir.display(), "snapshot loaded");
            }
            (None, None) => unreachable!("a boot or a restore"),
        }
        Ok(vm)
    }
}

/// The `--exec-file` the jailer is given: the binary's real path, whose name
/// must contain `firecracker` (the jailer refuses others).
fn jailed_exec_file(binary: &Path) -> Result<PathBuf, String> {
    let real =
        fs::canonicalize(binary).map_err(|e| format!("resolving {}: {e}", binary.display()))?;
    let named = real
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("firecracker"));
    if named {
        Ok(real)
    } else {
        Err(format!(
            "the jailer runs only a binary whose name contains `firecracker`, not {}",
            real.display()
        ))
    }
}

/// The network interface of VM `config` (Firecracker id `fc_id`): its own
/// ([`VmConfig::network`]: its TAP device and MAC) when it has one, else
/// the backend's TAP device (`backend_tap`) with a MAC derived from its id.
/// A clone's interface is the snapshot's (its device state, MAC included,
/// is in the snapshot), moved to that TAP device; none can be added after a
/// load, nor left out.
fn interface(
    config: &VmConfig,
    backend_tap: Option<&str>,
    fc_id: &str,
    snapshot: Option<&SnapshotDir>,
) -> Result<Option<Network>, VmmError> {
    if let Some(n) = &config.network {
        n.validate()?;
    }
    let chosen = match &config.network {
        Some(n) => Some(Network {
            tap: n.tap.clone(),
            guest_mac: n.mac.clone(),
        }),
        None => backend_tap.map(|tap| Network {
            tap: tap.to_string(),
            guest_mac: guest_mac(fc_id),
        }),
    };
    match snapshot {
        None => Ok(chosen),
        Some(s) if s.meta.network => chosen.map(Some).ok_or_else(|| {
            s.fail("it was taken with a network interface; give the restore a network, or set PETTY_FIRECRACKER_TAP to a TAP device for its clones (a template under data/templates can instead be deleted, to be made again)".into())
        }),
        Some(s) if config.network.is_some() => Err(s.fail(
            "it was taken without a network interface, and a restore cannot add one: restore it without a network, or snapshot a VM that has one".into(),
        )),
        Some(_) => Ok(None),
    }
}

/// Firecracker's `--id` allows alphanumerics and dashes, 64 at most.
fn fc_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

/// A locally administered unicast MAC address derived from the VM's id.
fn guest_mac(id: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    format!("06:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// Copies a disk image (or a full memory file), sharing blocks where the
/// file system can (reflink) and skipping holes and zeros otherwise. Never
/// for a Diff memory file, whose zero pages are data.
async fn copy_sparse(from: &Path, to: &Path) -> Result<(), VmmError> {
    let out = tokio::process::Command::new("cp")
        .kill_on_drop(true)
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(|e| VmmError::Overlay(format!("running cp: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmmError::Overlay(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Moves a file written in the jail out of it: a rename, or a copy across
/// file systems.
async fn move_out(from: &Path, to: &Path) -> Result<(), VmmError> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_sparse(from, to).await?;
            let _ = fs::remove_file(from);
            Ok(())
        }
        Err(e) => Err(VmmError::Overlay(format!(
            "moving {} to {}: {e}",
            from.display(),
            to.display()
        ))),
    }
}

/// A fresh id for a memory file.
fn new_memory_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What `firecracker.json` of a snapshot directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotMeta {
    /// Identifies this directory's `memory` file, so that a VM whose Diff
    /// base it is can tell it from another file put at the same path.
    memory_id: String,
    /// The VM had a network interface.
    network: bool,
}

impl SnapshotMeta {
    fn read(dir: &Path) -> Result<Self, String> {
        let text = fs::read_to_string(dir.join(SNAPSHOT_META)).map_err(|e| {
            format!("{SNAPSHOT_META} is missing ({e}): it was not made by this version of Petty's Firecracker backend; take a new snapshot")
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{SNAPSHOT_META}: {e}"))?;
        match v.get("format").and_then(|f| f.as_u64()) {
            Some(SNAPSHOT_FORMAT) => {}
            other => {
                return Err(format!(
                    "{SNAPSHOT_META} has format {other:?}, this Petty reads {SNAPSHOT_FORMAT}; take a new snapshot"
                ))
            }
        }
        Ok(Self {
            memory_id: v
                .get("memory_id")
                .and_then(|m| m.as_str())
                .ok_or_else(|| format!("{SNAPSHOT_META} has no memory_id"))?
                .to_string(),
            network: v.get("network").and_then(|n| n.as_bool()).unwrap_or(false),
        })
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        let v = json!({
            "format": SNAPSHOT_FORMAT,
            "memory_id": self.memory_id,
            "network": self.network,
        });
        fs::write(dir.join(SNAPSHOT_META), v.to_string())
    }
}

/// A snapshot directory about to be restored, checked.
struct SnapshotDir {
    dir: PathBuf,
    meta: SnapshotMeta,
}

impl SnapshotDir {
    fn open(dir: &Path) -> Result<Self, VmmError> {
        let dir = std::path::absolute(dir).map_err(|e| VmmError::Snapshot {
            op: "restoring",
            dir: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let fail = |message: String| VmmError::Snapshot {
            op: "restoring",
            dir: dir.clone(),
            message,
        };
        for f in [SNAPSHOT_STATE, SNAPSHOT_MEMORY, SNAPSHOT_ROOTFS] {
            if !dir.join(f).is_file() {
                return Err(fail(format!("{f} is missing")));
            }
        }
        let meta = SnapshotMeta::read(&dir).map_err(fail)?;
        Ok(Self { dir, meta })
    }

    fn fail(&self, message: String) -> VmmError {
        VmmError::Snapshot {
            op: "restoring",
            dir: self.dir.clone(),
            message,
        }
    }
}

/// The full memory file a VM's dirty-page log started from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemoryBase {
    path: PathBuf,
    /// The `memory_id` its snapshot directory gave it.
    id: String,
}

impl MemoryBase {
    /// True while `path` is still the file that was recorded.
    fn still_there(&self) -> bool {
        self.path.is_file()
            && self
                .path
                .parent()
                .and_then(|d| SnapshotMeta::read(d).ok())
                .is_some_and(|m| m.memory_id == self.id)
    }
}

/// What a VM's run directory remembers of it, for whichever process
/// snapshots it later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct VmFacts {
    /// The host TAP device of its network interface.
    tap: Option<String>,
    /// It tracks dirty pages.
    dirty_pages: bool,
    /// The memory its dirty-page log is relative to, when known.
    base: Option<MemoryBase>,
}

impl VmFacts {
    fn read(run_dir: &Path) -> Self {
        let Ok(text) = fs::read_to_string(run_dir.join(VM_FACTS)) else {
            return Self::default();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Self::default();
        };
        let s =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Self {
            tap: s(&v, "tap"),
            dirty_pages: v
                .get("dirty_pages")
                .and_then(|d| d.as_bool())
                .unwrap_or(false),
            base: v.get("base").and_then(|b| {
                Some(MemoryBase {
                    path: PathBuf::from(s(b, "path")?),
                    id: s(b, "id")?,
                })
            }),
        }
    }

    /// Replaces the file in one step.
    fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        let v = json!({
            "tap": self.tap,
            "dirty_pages": self.dirty_pages,
            "base": self.base.as_ref().map(|b| json!({
                "path": b.path.to_string_lossy(),
                "id": b.id,
            })),
        });
        let tmp = run_dir.join(format!("{VM_FACTS}.tmp"));
        fs::write(&tmp, v.to_string())?;
        fs::rename(tmp, run_dir.join(VM_FACTS))
    }
}

impl Vmm for FirecrackerVmm {
    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Firecracker
    }

    fn boot_turns(&self) -> &BootTurns {
        &self.turns
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn wants_elf_kernel(&self) -> bool {
        true
    }

    fn snapshot_disk(&self, dir: &Path) -> PathBuf {
        dir.join(SNAPSHOT_ROOTFS)
    }

    fn binary_path(&self) -> Option<PathBuf> {
        find_on_path(&self.binary, &self.search_path)
    }

    fn check(&self) -> Result<(), VmmError> {
        self.availability()
            .map(|_| ())
            .map_err(|reason| VmmError::Unavailable {
                backend: "firecracker".into(),
                reason,
            })
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<Box<dyn Vm>, VmmError>> {
        Box::pin(async move {
            if config.standby {
                // `can_standby` is false: callers do not ask.
                return Err(VmmError::Snapshot {
                    op: "starting a standby VM",
                    dir: self.root.join(&config.id),
                    message: "the Firecracker backend keeps no standby VMMs".into(),
                });
            }
            Ok(Box::new(self.start_vm(config).await?) as Box<dyn Vm>)
        })
    }

    fn attach(&self, id: &str, pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        let dir = self.root.join(id);
        if !vmm_alive(pid, &dir) {
            return Err(VmmError::Gone { id: id.into(), pid });
        }
        let jail = JailRecord::read(&dir);
        Ok(Box::new(FcVm::new(
            VmmProcess::attached(id, dir, pid),
            jail,
        )))
    }
}

/// A running Firecracker VM.
pub struct FcVm {
    proc: VmmProcess,
    /// Where Firecracker's relative paths resolve: the run directory, or
    /// the jail's root.
    cwd: PathBuf,
    /// The API socket, seen from the host.
    api_socket: PathBuf,
    jailed: bool,
}

impl FcVm {
    fn new(proc: VmmProcess, jail: Option<JailRecord>) -> Self {
        let (cwd, api_socket) = match &jail {
            Some(j) => {
                let root = j.dir.join("root");
                let api = root.join(super::jail::JAILED_API_SOCKET.trim_start_matches('/'));
                (root, api)
            }
            None => (proc.dir.clone(), proc.dir.join(API_SOCKET)),
        };
        Self {
            proc,
            cwd,
            api_socket,
            jailed: jail.is_some(),
        }
    }

    fn api(&self) -> ApiClient {
        ApiClient::new(&self.api_socket, Duration::from_secs(30))
    }

    async fn call(&self, req: Request) -> Result<(), VmmError> {
        self.api().send(&req).await.map(|_| ()).map_err(Into::into)
    }

    async fn save(&self, out: &Path, resume_after: bool) -> Result<SnapshotFiles, VmmError> {
        let fail = |message: String| VmmError::Snapshot {
            op: "saving",
            dir: out.to_path_buf(),
            message,
        };
        let out = std::path::absolute(out).map_err(|e| fail(e.to_string()))?;
        if out.join(SNAPSHOT_MEMORY).exists() {
            // Firecracker would truncate it, and it may be the very file
            // some VM's memory is mapped from.
            return Err(fail(
                "it already holds a snapshot; snapshot into an empty directory".into(),
            ));
        }
        let run_dir = &self.proc.dir;
        let mut facts = VmFacts::read(run_dir);
        // A Diff on top of the memory this VM's dirty-page log started
        // from, when that file is still the one recorded and holes can be
        // trusted where Firecracker writes the Diff.
        let diff_base = facts
            .base
            .clone()
            .filter(|b| facts.dirty_pages && b.still_there())
            .filter(|_| holes_are_page_granular(&self.cwd));
        if facts.base.is_some() {
            // Any snapshot resets the dirty-page log: until this one is
            // saved whole, no base is known (the next one is then Full).
            facts.base = None;
            facts
                .write(run_dir)
                .map_err(|e| fail(format!("updating {VM_FACTS}: {e}")))?;
        }
        let diff = diff_base.is_some();
        self.call(pause()).await?;
        let saved = async {
            // Jailed, Firecracker writes in its jail; the files move out.
            let state = match self.jailed {
                true => PathBuf::from(JAILED_SAVED_STATE),
                false => out.join(SNAPSHOT_STATE),
            };
            let memory = match (diff, self.jailed) {
                (true, _) => PathBuf::from(DIFF_MEMORY),
                (false, true) => PathBuf::from(JAILED_SAVED_MEMORY),
                (false, false) => out.join(SNAPSHOT_MEMORY),
            };
            self.call(snapshot_create(&state, &memory, diff)).await?;
            if self.jailed {
                move_out(
                    &self.cwd.join(JAILED_SAVED_STATE),
                    &out.join(SNAPSHOT_STATE),
                )
                .await?;
                if !diff {
                    move_out(
                        &self.cwd.join(JAILED_SAVED_MEMORY),
                        &out.join(SNAPSHOT_MEMORY),
                    )
                    .await?;
                }
            }
            // Paused, the disk matches the memory just saved.
            copy_sparse(&self.cwd.join(ROOTFS), &out.join(SNAPSHOT_ROOTFS)).await
        }
        .await;
        if resume_after {
            // Runs on even if saving failed: a failed snapshot must not stop the sandbox.
            self.call(resume()).await?;
        }
        saved?;
        if let Some(base) = diff_base {
            let diff_file = self.cwd.join(DIFF_MEMORY);
            let merged_to = out.join(SNAPSHOT_MEMORY);
            let merged = tokio::task::spawn_blocking(move || {
                let r = merge_diff(&base.path, &diff_file, &merged_to);
                let _ = fs::remove_file(&diff_file);
                r
            })
            .await
            .map_err(|e| fail(e.to_string()))?;
            merged.map_err(|e| fail(format!("merging the Diff's memory onto its base: {e}")))?;
            tracing::debug!(vm = %self.proc.id, "Diff snapshot merged");
        }
        let meta = SnapshotMeta {
            memory_id: new_memory_id(),
            network: facts.tap.is_some(),
        };
        meta.write(&out)
            .map_err(|e| fail(format!("writing {SNAPSHOT_META}: {e}")))?;
        if facts.dirty_pages {
            facts.base = Some(MemoryBase {
                path: out.join(SNAPSHOT_MEMORY),
                id: meta.memory_id,
            });
            facts
                .write(run_dir)
                .map_err(|e| fail(format!("updating {VM_FACTS}: {e}")))?;
        }
        let size = |f: &str| fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        Ok(SnapshotFiles {
            dir: out.clone(),
            state_bytes: size(SNAPSHOT_STATE) + size(SNAPSHOT_MEMORY),
            disk_bytes: size(SNAPSHOT_ROOTFS),
        })
    }
}

impl Vm for FcVm {
    fn id(&self) -> &str {
        &self.proc.id
    }

    fn pid(&self) -> u32 {
        self.proc.pid
    }

    fn run_dir(&self) -> &Path {
        &self.proc.dir
    }

    fn connect_agent(&self) -> BoxFuture<'_, Result<AgentStream, VmmError>> {
        Box::pin(async move {
            let path = self.cwd.join(VSOCK_SOCKET);
            crate::vsock::connect(&path, VSOCK_PORT, Duration::from_secs(10))
                .await
                .map(AgentStream::from)
                .map_err(|e| VmmError::AgentConnect {
                    path,
                    source: std::io::Error::other(e),
                })
        })
    }

    fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    fn console_tail(&self) -> String {
        tail(&self.proc.dir.join(LOG), 2048)
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<(), VmmError>> {
        self.proc.stop()
    }

    fn detach(self: Box<Self>) {
        self.proc.detach();
    }

    fn snapshot<'a>(
        &'a self,
        dir: &'a Path,
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotFiles, VmmError>> {
        Box::pin(self.save(dir, resume))
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(self.call(pause()))
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(self.call(resume()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_macs_are_what_firecracker_accepts() {
        assert_eq!(fc_id("template-1a2b_c3/4"), "template-1a2bc34");
        assert_eq!(fc_id(&"x".repeat(80)).len(), 64);
        let mac = guest_mac("0b6f7c1e-3f7a-4c47-9b53-2d2a0f7c9e11");
        assert_eq!(mac.len(), 17);
        assert!(
            mac.starts_with("06:00:"),
            "locally administered unicast: {mac}"
        );
        assert_ne!(mac, guest_mac("another"));
    }

    #[test]
    fn a_vms_own_network_comes_before_the_backends_tap() {
        let plain = VmConfig::new("vm-1", "/k", "/r");
        let own = VmConfig {
            network: Some(crate::VmNetwork {
                netns: "/run/netns/petty-1".into(),
                tap: "tap0".into(),
                mac: "02:50:54:00:00:15".into(),
            }),
            ..plain.clone()
        };
        let snapshot = |network| SnapshotDir {
            dir: "/snap".into(),
            meta: SnapshotMeta {
                memory_id: "m".into(),
                network,
            },
        };
        let net = |tap: &str, mac: &str| {
            Some(Network {
                tap: tap.into(),
                guest_mac: mac.into(),
            })
        };
        // Booting.
        assert_eq!(interface(&plain, None, "vm-1", None).unwrap(), None);
        assert_eq!(
            interface(&plain, Some("tap-g"), "vm-1", None).unwrap(),
            net("tap-g", &guest_mac("vm-1"))
        );
        for global in [None, Some("tap-g")] {
            assert_eq!(
                interface(&own, global, "vm-1", None).unwrap(),
                net("tap0", "02:50:54:00:00:15")
            );
        }
        // Restoring a snapshot taken with a network.
        let with = snapshot(true);
        assert_eq!(
            interface(&own, Some("tap-g"), "vm-1", Some(&with))
                .unwrap()
                .map(|n| n.tap),
            Some("tap0".into())
        );
        assert_eq!(
            interface(&plain, Some("tap-g"), "vm-1", Some(&with))
                .unwrap()
                .map(|n| n.tap),
            Some("tap-g".into())
        );
        let e = interface(&plain, None, "vm-1", Some(&with)).unwrap_err();
        assert!(e.to_string().contains("give the restore a network"), "{e}");
        // Restoring one taken without: no interface can be added.
        let without = snapshot(false);
        assert_eq!(
            interface(&plain, Some("tap-g"), "vm-1", Some(&without)).unwrap(),
            None
        );
        let e = interface(&own, None, "vm-1", Some(&without)).unwrap_err();
        assert!(e.to_string().contains("cannot add one"), "{e}");
        // A malformed one is refused.
        let bad = VmConfig {
            network: Some(crate::VmNetwork {
                tap: "tap0,x".into(),
                ..own.network.clone().unwrap()
            }),
            ..plain
        };
        assert!(matches!(
            interface(&bad, None, "vm-1", None),
            Err(VmmError::Network { .. })
        ));
    }

    #[test]
    fn facts_and_snapshot_descriptions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(VmFacts::read(dir.path()), VmFacts::default());
        let facts = VmFacts {
            tap: Some("tap0".into()),
            dirty_pages: true,
            base: Some(MemoryBase {
                path: dir.path().join(SNAPSHOT_MEMORY),
                id: "m1".into(),
            }),
        };
        facts.write(dir.path()).unwrap();
        assert_eq!(VmFacts::read(dir.path()), facts);

        let e = SnapshotMeta::read(dir.path()).unwrap_err();
        assert!(e.contains("take a new snapshot"), "{e}");
        let meta = SnapshotMeta {
            memory_id: "m1".into(),
            network: true,
        };
        meta.write(dir.path()).unwrap();
        assert_eq!(SnapshotMeta::read(dir.path()).unwrap(), meta);
        // The base counts only while its file is there under the same id.
        let base = facts.base.unwrap();
        assert!(!base.still_there());
        fs::write(dir.path().join(SNAPSHOT_MEMORY), b"m").unwrap();
        assert!(base.still_there());
        SnapshotMeta {
            memory_id: "m2".into(),
            network: false,
        }
        .write(dir.path())
        .unwrap();
        assert!(!base.still_there(), "another snapshot at the same path");
    }
}
