//! The QEMU backend: `qemu-system-x86_64 -M microvm`, KVM or TCG.
//!
//! Each VM gets a run directory holding its copy-on-write disk overlay
//! (qcow2 over the read-only base image), the agent's virtio-serial socket,
//! the QMP socket, the guest console log and the VMM's pid. The guest reaches
//! the host over a virtio-serial port named `petty.agent`, backed by a unix
//! socket that QEMU listens on.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use petty_protocol::SERIAL_PORT_NAME;

use crate::migration::{self, Split};
use crate::process::{tail, VmmProcess};
use crate::qmp::Qmp;
use crate::rundir::vmm_alive;
use crate::{
    check_disk_size, disk_image_size, Accel, AccelChoice, AgentStream, BootTurns, BoxFuture,
    MemoryBacking, SnapshotFiles, Vm, VmConfig, VmNetwork, Vmm, VmmError, SNAPSHOT_DISK,
    SNAPSHOT_RAM, SNAPSHOT_STATE,
};

/// Socket the agent's virtio-serial port is bound to, inside the run directory.
pub const AGENT_SOCKET: &str = "agent.sock";
/// QMP socket, inside the run directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// A second QMP socket, for the watcher that reads the VM's events (QEMU
/// serves one client per monitor, and commands use the first).
pub const EVENTS_SOCKET: &str = "events.sock";
/// qdev id of the agent's virtio-serial port: QEMU names it in the
/// `VSERPORT_CHANGE` event it sends when the guest closes the port (as a
/// halting or powering-off guest kernel does when it resets its devices).
const AGENT_PORT_ID: &str = "agentport";
/// Guest console output, inside the run directory.
pub const CONSOLE_LOG: &str = "console.log";
const OVERLAY: &str = "overlay.qcow2";
/// An empty overlay on a snapshot's disk layer, kept in the snapshot directory.
const EMPTY_OVERLAY: &str = "empty-overlay.qcow2";
const STDERR_LOG: &str = "qemu.stderr";
/// Present in a run directory whose VM has a network device, and in a
/// snapshot directory whose state has one: a restore must then be given a
/// network, and must not be given one otherwise (QEMU refuses state for a
/// device it lacks only once started, and loads state lacking one of its
/// devices without a word).
const NETWORK_MARKER: &str = "network";
/// The socket in a VM's run directory QEMU sends a snapshot's stream to.
const MIGRATE_SOCKET: &str = "migrate.sock";
/// A snapshot's state while it is written.
const STATE_PARTIAL: &str = "state.partial";
/// The id of the memory backend that is every VM's RAM (`-object
/// memory-backend-*,id=ram`), which is its RAM block's name in the stream.
const RAM_BLOCK: &str = "ram";
/// A migration bandwidth (bytes/s) no local save reaches.
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;

/// The descriptor a restoring QEMU reads its snapshot's state from
/// (inherited, `fd:3`): no `exec:cat` child on the restore path.
const STATE_FD: i32 = 3;

/// How long QEMU may take to open its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Kernel command line shared by every Petty guest under QEMU.
///
/// `reboot=t` + `-no-reboot`: the agent powers off by rebooting, which ends
/// QEMU (microvm has no ACPI power button). `random.trust_cpu=on` with
/// `-cpu max` seeds the RNG from RDRAND at once instead of stalling the boot.
/// `no_timer_check`: the kernel's check that the IO-APIC timer ticks counts
/// ticks over a short busy wait, which a guest starved of host CPU (TCG on
/// a loaded host) fails, and then panics ("IO-APIC + timer doesn't work");
/// the virtual timer works, so the check is skipped, as for other VMs.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=t panic=-1 root=/dev/vda rw \
     rootfstype=ext4 init=/sbin/petty-agent random.trust_cpu=on tsc=reliable no_timer_check";

/// The QEMU backend.
pub struct QemuVmm {
    binary: String,
    search_path: Vec<PathBuf>,
    accel: AccelChoice,
    root: PathBuf,
    guest_aslr: bool,
    turns: BootTurns,
}

/// Reads the RAM file at `path` of a snapshot just restored into the page
/// cache, in the background at the lowest priority, once per file in this
/// process. The restored VM maps the file privately, and its own first
/// snapshot reads every page of that mapping: a page the cache does not
/// hold yet (above all a hole, a zero page) is allocated and zeroed then,
/// on that snapshot's clock — about 0.5 s for 256 MiB here, where fresh
/// host memory is slow to touch. Read while the guest works, the snapshot
/// finds them cached (docs/BENCHMARKS.md: tree search). Only restored
/// snapshots are read, so a burst of snapshots nobody restores costs
/// nothing; the pages are the kernel's to reclaim. Readahead advice would
/// not do: it leaves holes out.
fn warm_page_cache(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    static WARMED: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());
    let Ok(file) = fs::File::open(path) else {
        return;
    };
    let Ok(md) = file.metadata() else { return };
    {
        let mut warmed = WARMED.lock().unwrap_or_else(|e| e.into_inner());
        if warmed.contains(&(md.dev(), md.ino())) {
            return;
        }
        // A bound, not a cache: an inode number reused later is at worst
        // not warmed.
        if warmed.len() >= 4096 {
            warmed.clear();
        }
        warmed.push((md.dev(), md.ino()));
    }
    let spawned = std::thread::Builder::new()
        .name("petty-ram-warm".into())
        .spawn(move || {
            use std::os::unix::fs::FileExt;
            // Behind every VM's own work: the lowest priority, for this
            // thread alone.
            // SAFETY: setpriority on the calling thread's id; no memory is passed.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while let Ok(n @ 1..) = file.read_at(&mut buf, at) {
                at += n as u64;
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("not warming a snapshot's RAM file: {e}");
    }
}

impl QemuVmm {
    /// A backend using `accel`, keeping run directories under `root`,
    /// running `qemu-system-x86_64` from the standard directories; guest
    /// ASLR on under KVM and off under TCG (see [`QemuVmm::with_guest_aslr`]).
    pub fn new(accel: AccelChoice, root: PathBuf) -> Self {
        Self {
            binary: "qemu-system-x86_64".into(),
            search_path: crate::standard_path(),
            guest_aslr: accel.accel == Accel::Kvm,
            accel,
            turns: BootTurns::new(&root, crate::turns::host_cpus()),
            root,
        }
    }

    /// Looks for a binary given by name in these directories instead of
    /// the standard ones.
    pub fn with_search_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.search_path = dirs;
        self
    }

    /// Lets `slots` VMs start at once on this host (see [`BootTurns`]).
    pub fn with_boot_slots(mut self, slots: usize) -> Self {
        self.turns = BootTurns::new(&self.root, slots);
        self
    }

    /// Whether guest processes get randomised addresses (ASLR). The default
    /// is on under KVM and off under TCG: QEMU 7.2's translated code is
    /// tied to the virtual address it was translated at, so with ASLR every
    /// new guest process (each exec) translates its program, the dynamic
    /// loader and libc afresh, and spawning `sh -c true` costs ~27 ms
    /// instead of ~6 ms. Off means the kernel's `norandmaps`. The VM, not
    /// ASLR inside it, is the sandbox's boundary.
    pub fn with_guest_aslr(mut self, on: bool) -> Self {
        self.guest_aslr = on;
        self
    }

    /// Whether guest processes get randomised addresses (see
    /// [`QemuVmm::with_guest_aslr`]).
    pub fn guest_aslr(&self) -> bool {
        self.guest_aslr
    }

    /// Uses `binary` (a name on `PATH` or a path) instead of the default.
    pub fn with_binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = binary.into();
        self
    }

    /// The accelerator in use.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// The QEMU binary, if it can be found on `PATH`.
    pub fn find_binary(&self) -> Result<PathBuf, VmmError> {
        find_on_path(&self.binary, &self.search_path).ok_or_else(|| VmmError::BinaryMissing {
            binary: self.binary.clone(),
        })
    }

    /// The full QEMU argument list for `config`, with files in `dir`.
    pub fn args(&self, config: &VmConfig, dir: &Path, disk: &Path) -> Vec<String> {
        self.args_with(config, dir, disk, TapUse::Named)
    }

    fn args_with(&self, config: &VmConfig, dir: &Path, disk: &Path, tap: TapUse) -> Vec<String> {
        let mut cmdline = BASE_CMDLINE.to_string();
        if self.accel.accel == Accel::Tcg {
            // Under TCG the guest's TSC runs at the host's rate, but the
            // kernel's calibration against the emulated PIT fails whenever the
            // host is busy, leaving it on a jiffies clock with a periodic tick
            // (costly when idle, 4 ms resolution). Tell it the rate instead.
            if let Some(khz) = host_tsc_khz(&self.root) {
                cmdline.push_str(&format!(" tsc_early_khz={khz}"));
            }
        }
        if !self.guest_aslr {
            cmdline.push_str(" norandmaps");
        }
        for w in &config.extra_cmdline {
            cmdline.push(' ');
            cmdline.push_str(w);
        }
        let p = |name: &str| dir.join(name).display().to_string();
        let (accel, cpu) = match self.accel.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        let disk_format = if disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        // Guest RAM is always a named memory backend (`ram`), so its
        // migration block has the same name however it is backed and any
        // snapshot restores into any VM of the same size.
        let mem = config.memory_mib;
        let backend = match &config.memory {
            MemoryBacking::Anonymous => format!("memory-backend-ram,id={RAM_BLOCK},size={mem}M"),
            MemoryBacking::File { path, shared } => format!(
                "memory-backend-file,id={RAM_BLOCK},size={mem}M,mem-path={},share={}",
                path.display(),
                if *shared { "on" } else { "off" }
            ),
        };
        [
            "-M",
            &format!("microvm,acpi=off,x-option-roms=off,rtc=on,memory-backend={RAM_BLOCK}"),
            "-object",
            &backend,
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-m",
            &format!("{mem}M"),
            "-smp",
            &config.vcpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            &config.kernel.display().to_string(),
            "-append",
            &cmdline,
            "-drive",
            &format!(
                "id=root,file={},format={disk_format},if=none,cache=unsafe",
                disk.display()
            ),
            "-device",
            "virtio-blk-device,drive=root",
            "-device",
            "virtio-rng-device",
            "-device",
            "virtio-serial-device,max_ports=2",
            "-chardev",
            &format!(
                "socket,id=agent,path={},server=on,wait=off",
                p(AGENT_SOCKET)
            ),
            "-device",
            &format!("virtserialport,chardev=agent,name={SERIAL_PORT_NAME},id={AGENT_PORT_ID}"),
            "-chardev",
            &format!("file,id=console,path={}", p(CONSOLE_LOG)),
            "-serial",
            "chardev:console",
            "-qmp",
            &format!("unix:{},server=on,wait=off", p(QMP_SOCKET)),
            "-qmp",
            &format!("unix:{},server=on,wait=off", p(EVENTS_SOCKET)),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            config
                .network
                .as_ref()
                .map(|n| net_args(n, tap))
                .into_iter()
                .flatten(),
        )
        .collect()
    }
}

/// Which TAP device a VM's network interface is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TapUse {
    /// The one [`VmNetwork::tap`] names (made by the caller, persistent).
    Named,
    /// One QEMU makes and removes itself, with a name the kernel picks: for
    /// a VM whose guest never runs (the RAM re-save of a snapshot), while
    /// the named one is held by the VM the snapshot was taken from.
    Throwaway,
}

/// The arguments giving the guest its network interface: last of all, on
/// cold boots and restores alike, so the devices before it sit where they
/// sit in a VM without one and migration state matches between the two
/// starts of one networked VM. (A TAP device is what QEMU's migrated
/// virtio-net state expects of its peer: its offloads need the vnet
/// header a TAP device has.)
fn net_args(network: &VmNetwork, tap: TapUse) -> [String; 4] {
    let netdev = match tap {
        TapUse::Named => format!("tap,id=net0,ifname={},script=no,downscript=no", network.tap),
        TapUse::Throwaway => "tap,id=net0,script=no,downscript=no".to_string(),
    };
    [
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={}", network.mac),
    ]
}

/// Name of the file under the run root that keeps the measured TSC rate.
const TSC_CACHE: &str = ".tsc-khz";

/// TSC rates believed: 100 MHz to 20 GHz. A cached value outside is
/// remeasured, never passed to a guest.
const TSC_KHZ_PLAUSIBLE: std::ops::RangeInclusive<u64> = 100_000..=20_000_000;

/// The host's TSC rate in kHz, measured against the monotonic clock (20 ms)
/// once per boot of the host: the result is kept in `.tsc-khz` under the
/// run root `cache_dir` (private to this user: [`crate::ensure_run_root`]),
/// keyed by the host's boot id, so a CLI command does not pay for it again.
/// The file is read and written without following links, written
/// atomically, and a value outside a plausible range is measured again.
pub fn host_tsc_khz(cache_dir: &Path) -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let boot_id = boot_id.trim();
        let cache = cache_dir.join(TSC_CACHE);
        if let Some(khz) = read_tsc_cache(&cache, boot_id) {
            return Some(khz);
        }
        let khz = measure_tsc_khz().filter(|k| TSC_KHZ_PLAUSIBLE.contains(k))?;
        if let Err(e) = write_tsc_cache(&cache, boot_id, khz) {
            tracing::debug!(path = %cache.display(), "keeping the TSC rate: {e}");
        }
        Some(khz)
    })
}

fn read_tsc_cache(path: &Path, boot_id: &str) -> Option<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let (id, khz) = text.split_once(' ')?;
    let khz: u64 = khz.trim().parse().ok()?;
    (id == boot_id && TSC_KHZ_PLAUSIBLE.contains(&khz)).then_some(khz)
}

fn write_tsc_cache(path: &Path, boot_id: &str, khz: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| writeln!(f, "{boot_id} {khz}"))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn measure_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (Instant::now(), tsc());
        let ns = (t1 - t0).as_nanos() as u64;
        (ns > 0 && c1 > c0).then(|| (c1 - c0) * 1_000_000 / ns)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Finds `name` in `dirs` (or checks it when it holds a slash).
pub fn find_on_path(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

impl QemuVmm {
    /// [`Vmm::share_snapshot_ram`]: loads snapshot `dir` (RAM inside its
    /// state) into a paused VM whose RAM is a new file mapped shared, saves
    /// it again without RAM, and puts the new state and the RAM file in
    /// place. The disk layer is unchanged (the guest never ran).
    async fn resave_with_ram_file(&self, dir: &Path, base: &VmConfig) -> Result<(), VmmError> {
        let ram = dir.join(format!("{SNAPSHOT_RAM}.partial"));
        let resave = dir.join("resave");
        let prepare = |source| VmmError::Prepare {
            dir: dir.to_path_buf(),
            source,
        };
        let _ = fs::remove_dir_all(&resave);
        fs::create_dir_all(&resave).map_err(prepare)?;
        let result = async {
            let config = VmConfig {
                id: format!("resave-{}-{}", std::process::id(), unique_suffix()),
                extra_cmdline: Vec::new(),
                die_with_parent: true,
                restore_from: Some(dir.to_path_buf()),
                memory: MemoryBacking::File {
                    path: ram.clone(),
                    shared: true,
                },
                start_paused: true,
                disk_size_mib: None,
                standby: false,
                ..base.clone()
            };
            let _turn = self.turns.acquire().await?;
            // A snapshot of a networked VM has its network device: so does
            // this VM, on a TAP device of its own (the VM snapshotted may
            // still hold the named one; this guest never runs).
            let vm = self.start_qemu(&config, TapUse::Throwaway).await?;
            vm.snapshot(&resave, false).await?;
            Box::new(vm).stop().await?;
            fs::rename(resave.join(SNAPSHOT_STATE), dir.join(SNAPSHOT_STATE)).map_err(prepare)?;
            fs::rename(&ram, dir.join(SNAPSHOT_RAM)).map_err(prepare)?;
            Ok(())
        }
        .await;
        let _ = fs::remove_dir_all(&resave);
        let _ = fs::remove_file(&ram);
        result
    }
}

/// A suffix no other resave of this process has.
fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Vmm for QemuVmm {
    fn kind(&self) -> crate::BackendKind {
        crate::BackendKind::Qemu
    }

    fn boot_turns(&self) -> &BootTurns {
        &self.turns
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn check(&self) -> Result<(), VmmError> {
        self.find_binary().map(|_| ())
    }

    fn can_standby(&self) -> bool {
        true
    }

    fn binary_path(&self) -> Option<PathBuf> {
        self.find_binary().ok()
    }

    fn guest_profile(&self) -> String {
        format!("{}:aslr={}", self.accel.accel, self.guest_aslr)
    }

    fn share_snapshot_ram<'a>(
        &'a self,
        dir: &'a Path,
        base: &'a VmConfig,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move {
            // Snapshots are taken with their RAM file already (the stream
            // split as it is saved); one without (an earlier release's)
            // is re-saved.
            if dir.join(SNAPSHOT_RAM).is_file() {
                return Ok(());
            }
            self.resave_with_ram_file(dir, base).await
        })
    }

    fn attach(&self, id: &str, pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        let dir = self.root.join(id);
        if !vmm_alive(pid, &dir) {
            return Err(VmmError::Gone { id: id.into(), pid });
        }
        Ok(Box::new(QemuVm {
            proc: VmmProcess::attached(id, dir, pid),
            shared_ram: false,
            standby: std::sync::Mutex::new(None),
        }))
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<Box<dyn Vm>, VmmError>> {
        Box::pin(async move {
            let vm = self.start_qemu(config, TapUse::Named).await?;
            Ok(Box::new(vm) as Box<dyn Vm>)
        })
    }
}

impl QemuVmm {
    async fn start_qemu(&self, config: &VmConfig, tap: TapUse) -> Result<QemuVm, VmmError> {
        let binary = self.find_binary()?;
        if let Some(network) = &config.network {
            network.validate()?;
        }
        for (what, path) in [
            ("guest kernel", &config.kernel),
            ("guest rootfs", &config.rootfs),
        ] {
            if !path.is_file() {
                return Err(VmmError::AssetMissing {
                    what,
                    path: path.clone(),
                });
            }
        }
        // The overlay sits on the base image, or on the snapshot's disk layer.
        let (backing, backing_format) = match &config.restore_from {
            Some(snap) => (snap.join(SNAPSHOT_DISK), "qcow2"),
            None => (config.rootfs.clone(), "raw"),
        };
        if let Some(snap) = &config.restore_from {
            for f in [SNAPSHOT_STATE, SNAPSHOT_DISK] {
                if !snap.join(f).is_file() {
                    return Err(VmmError::Snapshot {
                        op: "restoring",
                        dir: snap.clone(),
                        message: format!("{f} is missing"),
                    });
                }
            }
        }
        if config.standby && (config.restore_from.is_none() || config.start_paused) {
            return Err(VmmError::Snapshot {
                op: "starting a standby VM",
                dir: self.root.join(&config.id),
                message: "a standby VM is a restore that runs once finished".into(),
            });
        }
        if let Some(snap) = &config.restore_from {
            let message = match (snap.join(NETWORK_MARKER).exists(), &config.network) {
                (true, None) => Some(
                    "it was taken with a network interface: restore it with a network (VmConfig::network)",
                ),
                (false, Some(_)) => Some(
                    "it was taken without a network interface, and a restore cannot add one: restore it without a network",
                ),
                _ => None,
            };
            if let Some(message) = message {
                return Err(VmmError::Snapshot {
                    op: "restoring",
                    dir: snap.clone(),
                    message: message.into(),
                });
            }
        }
        check_disk_size(config.disk_size_mib, &backing)?;
        // From here on, dropping `vm` removes the directory and kills QEMU.
        let vm = QemuVm {
            proc: VmmProcess::prepare(&self.root, config)?,
            shared_ram: matches!(config.memory, MemoryBacking::File { shared: true, .. }),
            standby: std::sync::Mutex::new(None),
        };
        let dir = vm.proc.dir.clone();
        if config.network.is_some() {
            // For whichever process snapshots it.
            fs::write(dir.join(NETWORK_MARKER), b"").map_err(|source| VmmError::Prepare {
                dir: dir.clone(),
                source,
            })?;
        }
        let overlay = dir.join(OVERLAY);
        if let Some(kept) = &config.disk {
            // With `restore_from` too: the saved state runs on this disk
            // (a hibernated VM's own overlay), not on a new layer over the
            // snapshot's. Linked, so the kept file stays whole whatever happens to the
            // run directory; copied only across file systems.
            fs::hard_link(kept, &overlay)
                .or_else(|_| fs::copy(kept, &overlay).map(|_| ()))
                .map_err(|e| {
                    VmmError::Overlay(format!("using the kept disk {}: {e}", kept.display()))
                })?;
            return self
                .launch(vm, config, &binary, &overlay, &backing, tap)
                .await;
        }
        // An empty overlay on a given backing file is the same bytes every
        // time: a snapshot keeps one beside its disk layer, and restores copy
        // it rather than run `qemu-img` (a process, ~15 ms, on every create).
        let cached = config
            .restore_from
            .as_ref()
            .map(|snap| snap.join(EMPTY_OVERLAY));
        if let Some(cached) = cached.as_ref().filter(|c| c.is_file()) {
            if fs::copy(cached, &overlay).is_ok() {
                return self
                    .launch(vm, config, &binary, &overlay, &backing, tap)
                    .await;
            }
        }
        let mut qemu_img = tokio::process::Command::new("qemu-img");
        // A create given up on (Ctrl-C on `petty run`) takes qemu-img with it.
        qemu_img
            .kill_on_drop(true)
            .args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
            .arg(&backing)
            .arg(&overlay);
        // A booting guest sees the disk's size when it probes it. A restored
        // one already knows its disk: it is grown after the state is loaded
        // (below), so the guest is told of the change.
        if let (Some(mib), None) = (config.disk_size_mib, &config.restore_from) {
            qemu_img.arg(format!("{mib}M"));
        }
        let out = qemu_img.stdin(Stdio::null()).output().await.map_err(|e| {
            VmmError::Overlay(format!("running qemu-img: {e} (install qemu-utils)"))
        })?;
        if !out.status.success() {
            return Err(VmmError::Overlay(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        if let Some(cached) = &cached {
            // Best effort, atomically: a snapshot directory we cannot write
            // to just means the next restore runs qemu-img again.
            let tmp = cached.with_extension(format!("tmp-{}", std::process::id()));
            if fs::copy(&overlay, &tmp).is_ok() && fs::rename(&tmp, cached).is_err() {
                let _ = fs::remove_file(&tmp);
            }
        }
        self.launch(vm, config, &binary, &overlay, &backing, tap)
            .await
    }

    /// Starts QEMU on a prepared run directory and overlay; for a restore,
    /// loads the snapshot's state.
    async fn launch(
        &self,
        mut vm: QemuVm,
        config: &VmConfig,
        binary: &Path,
        overlay: &Path,
        backing: &Path,
        tap: TapUse,
    ) -> Result<QemuVm, VmmError> {
        let dir = vm.proc.dir.clone();
        let prepare = |source| VmmError::Prepare {
            dir: dir.clone(),
            source,
        };
        tracing::debug!(vm = %config.id, "overlay created");
        let stderr = fs::File::create(dir.join(STDERR_LOG)).map_err(prepare)?;
        let mut cmd = std::process::Command::new(binary);
        cmd.args(self.args_with(config, &dir, overlay, tap));
        // QEMU runs inside the VM's network namespace, where its TAP device is.
        if let Some(network) = &config.network {
            crate::process::join_netns(&mut cmd, network)?;
        }
        // A restore reads its state from a descriptor QEMU inherits, opened
        // here so a missing or unreadable file fails before QEMU starts.
        let state = match &config.restore_from {
            Some(snap) => {
                cmd.args(["-incoming", "defer"]);
                let state =
                    fs::File::open(snap.join(SNAPSHOT_STATE)).map_err(|e| VmmError::Snapshot {
                        op: "restoring",
                        dir: snap.clone(),
                        message: format!("opening {SNAPSHOT_STATE}: {e}"),
                    })?;
                inherit_as(&mut cmd, &state, STATE_FD);
                Some(state)
            }
            None => None,
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        vm.proc
            .spawn(cmd, config.die_with_parent && !config.standby, &self.binary)?;
        drop(state);

        // QEMU opens both sockets before the guest runs its first instruction.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = vm.try_wait() {
                let mut stderr = String::new();
                let _ = fs::File::open(dir.join(STDERR_LOG))
                    .and_then(|mut f| f.read_to_string(&mut stderr));
                return Err(VmmError::EarlyExit {
                    binary: self.binary.clone(),
                    status,
                    stderr: stderr.trim().to_string(),
                });
            }
            if dir.join(AGENT_SOCKET).exists() && dir.join(QMP_SOCKET).exists() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(VmmError::StartTimeout {
                    binary: self.binary.clone(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::debug!(vm = %config.id, pid = vm.proc.pid, "QEMU sockets ready");
        if let Some(snap) = &config.restore_from {
            // Negotiated now, so a standby's finish is one command and a wait.
            let mut qmp = vm.qmp().await?;
            set_ignore_shared(&mut qmp, snap.join(SNAPSHOT_RAM).exists()).await?;
            let pending = PendingRestore {
                snap: snap.clone(),
                backing: backing.to_path_buf(),
                qmp,
            };
            if config.standby {
                *vm.standby.lock().unwrap_or_else(|e| e.into_inner()) = Some(pending);
                tracing::debug!(vm = %config.id, "standby VMM waiting for its state");
                return Ok(vm);
            }
            vm.finish_restore(pending, config.start_paused, config.disk_size_mib)
                .await?;
        }
        Ok(vm)
    }
}

/// Lets the child of `cmd` inherit `file` as descriptor `fd`.
fn inherit_as(cmd: &mut std::process::Command, file: &fs::File, fd: i32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let src = file.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; `file` outlives the
    // spawn (the caller drops it after `spawn` returns).
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let rc = if src == fd {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(src, fd)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A restore whose QEMU runs (`-incoming defer`, capabilities set) and
/// waits for its state.
struct PendingRestore {
    snap: PathBuf,
    /// What the VM's overlay was made on, for growing the disk.
    backing: PathBuf,
    qmp: Qmp,
}

/// `exec:` migration URI that runs `cmd` on a single-quoted path.
fn exec_uri(cmd: &str, path: &Path) -> String {
    let quoted = path.display().to_string().replace('\'', "'\\''");
    format!("exec:{cmd} '{quoted}'")
}

async fn set_ignore_shared(qmp: &mut Qmp, on: bool) -> Result<(), VmmError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": on }]
        })),
    )
    .await
    .map(|_| ())
}

/// Polls `query-migrate` until the migration ends; `Err(message)` on failure.
async fn wait_migration(qmp: &mut Qmp, vm: &QemuVm, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = qmp
            .execute("query-migrate", None)
            .await
            .map_err(|e| e.to_string())?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = info
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("migration failed");
                return Err(why.to_string());
            }
            _ => {}
        }
        if !vm.is_running() {
            return Err(format!("QEMU exited: {}", vm.stderr_tail()));
        }
        if Instant::now() >= deadline {
            return Err(format!("did not finish within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A running QEMU VM.
pub struct QemuVm {
    proc: VmmProcess,
    /// Guest RAM is a file mapped shared (a template being made).
    shared_ram: bool,
    /// A standby VM's restore, until it is finished.
    standby: std::sync::Mutex<Option<PendingRestore>>,
}

impl QemuVm {
    fn try_wait(&self) -> Option<String> {
        self.proc.try_wait()
    }

    /// Opens a QMP session to this VM.
    pub async fn qmp(&self) -> Result<Qmp, VmmError> {
        Qmp::connect(&self.proc.dir.join(QMP_SOCKET), Duration::from_secs(5)).await
    }

    async fn qmp_command(&self, command: &str) -> Result<(), VmmError> {
        self.qmp().await?.execute(command, None).await.map(|_| ())
    }

    fn stderr_tail(&self) -> String {
        tail(&self.proc.dir.join(STDERR_LOG), 1024)
    }

    /// Loads the pending restore's state, lets the guest run (unless
    /// `stay_paused`) and grows its disk to `disk_size_mib`.
    async fn finish_restore(
        &self,
        pending: PendingRestore,
        stay_paused: bool,
        disk_size_mib: Option<u32>,
    ) -> Result<(), VmmError> {
        let PendingRestore {
            snap,
            backing,
            mut qmp,
        } = pending;
        self.load_state(&mut qmp, &snap, stay_paused).await?;
        tracing::debug!(vm = %self.proc.id, "snapshot state loaded");
        if let Some(mib) = disk_size_mib {
            self.grow_disk(&mut qmp, &backing, u64::from(mib) << 20)
                .await?;
        }
        // A restore maps its snapshot's RAM file privately (see
        // `Vmm::restore_memory`): its first snapshot will read all of it.
        let ram = snap.join(SNAPSHOT_RAM);
        if ram.exists() {
            warm_page_cache(&ram);
        }
        Ok(())
    }

    /// Loads a snapshot's state (from the descriptor QEMU inherited) into
    /// this `-incoming defer` QEMU and lets the guest run.
    async fn load_state(
        &self,
        qmp: &mut Qmp,
        snap: &Path,
        stay_paused: bool,
    ) -> Result<(), VmmError> {
        let fail = |message: String| VmmError::Snapshot {
            op: "restoring",
            dir: snap.to_path_buf(),
            message,
        };
        let uri = format!("fd:{STATE_FD}");
        qmp.execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
            .await
            .map_err(|e| match self.is_running() {
                true => fail(e.to_string()),
                false => fail(format!("QEMU exited: {}", self.stderr_tail())),
            })?;
        // The incoming side reports through its run state: `inmigrate` until
        // loaded, then running (QEMU starts the guest by itself).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if !self.is_running() {
                return Err(fail(format!(
                    "the state file could not be loaded (corrupt or truncated?): {}",
                    self.stderr_tail()
                )));
            }
            let status = qmp.execute("query-status", None).await;
            match status
                .as_ref()
                .ok()
                .and_then(|v| v.get("status"))
                .and_then(|s| s.as_str())
            {
                Some("running") => return Ok(()),
                Some("paused") if stay_paused => return Ok(()),
                Some("paused") | Some("postmigrate") | Some("prelaunch") => {
                    // QEMU can report `paused` a moment before the incoming
                    // migration is complete; `cont` then refuses ("Migration
                    // is not finalized yet") and is asked again.
                    if let Err(e) = qmp.execute("cont", None).await {
                        if !e.to_string().contains("not finalized") {
                            return Err(e);
                        }
                    }
                }
                Some("inmigrate") | None => {}
                Some(other) => return Err(fail(format!("VM is {other} after loading"))),
            }
            if Instant::now() >= deadline {
                return Err(fail("loading took more than 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Grows the root disk of a running (restored) guest to `bytes`, unless
    /// `backing` (what its overlay was made on) is that large already. QEMU
    /// raises a config-change interrupt and the guest kernel reads the new
    /// size; the agent then grows the file system.
    async fn grow_disk(&self, qmp: &mut Qmp, backing: &Path, bytes: u64) -> Result<(), VmmError> {
        let current = disk_image_size(backing).map_err(|source| VmmError::DiskImage {
            path: backing.to_path_buf(),
            source,
        })?;
        if bytes <= current {
            return Ok(());
        }
        qmp.execute(
            "block_resize",
            Some(serde_json::json!({ "device": "root", "size": bytes })),
        )
        .await?;
        tracing::debug!(vm = %self.proc.id, bytes, "root disk grown");
        Ok(())
    }

    /// Migrates this (stopped) VM into snapshot `dir` through a socket,
    /// its RAM block split off into the snapshot's RAM file as it arrives
    /// (`migration::split`), the rest into [`STATE_PARTIAL`]: a snapshot
    /// whose restores share its pages, in one pass and one QEMU.
    async fn save_split(&self, qmp: &mut Qmp, dir: &Path) -> Result<Split, VmmError> {
        let fail = |message: String| VmmError::Snapshot {
            op: "saving",
            dir: dir.to_path_buf(),
            message,
        };
        let socket = self.proc.dir.join(MIGRATE_SOCKET);
        let _ = fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| fail(format!("listening on {}: {e}", socket.display())))?;
        let ram_path = dir.join(format!("{SNAPSHOT_RAM}.partial"));
        let state_path = dir.join(STATE_PARTIAL);
        let result = async {
            let uri = format!("unix:{}", socket.display());
            qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let (conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .map_err(|_| fail("QEMU did not connect to the migration socket".into()))?
                .map_err(|e| fail(format!("accepting QEMU's migration stream: {e}")))?;
            let conn = conn
                .into_std()
                .and_then(|c| c.set_nonblocking(false).map(|()| c))
                .map_err(|e| fail(format!("QEMU's migration stream: {e}")))?;
            let (rp, sp) = (ram_path.clone(), state_path.clone());
            let reader = tokio::task::spawn_blocking(move || -> std::io::Result<Split> {
                let ram = fs::File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&rp)?;
                let state = fs::File::create(&sp)?;
                migration::split(conn, &state, &ram, RAM_BLOCK)
            });
            // QEMU's side ends first (or fails): then the reader sees the end.
            let waited = wait_migration(qmp, self, Duration::from_secs(120)).await;
            let split = reader
                .await
                .map_err(|e| fail(format!("the stream's reader: {e}")))?;
            waited.map_err(fail)?;
            let split = split.map_err(|e| fail(format!("reading QEMU's migration stream: {e}")))?;
            fs::rename(&ram_path, dir.join(SNAPSHOT_RAM))
                .map_err(|e| fail(format!("renaming the RAM file into place: {e}")))?;
            Ok(split)
        }
        .await;
        let _ = fs::remove_file(&socket);
        if result.is_err() {
            let _ = fs::remove_file(&ram_path);
            let _ = fs::remove_file(&state_path);
        }
        result
    }

    async fn save_snapshot(&self, dir: &Path, resume: bool) -> Result<SnapshotFiles, VmmError> {
        let fail = |message: String| VmmError::Snapshot {
            op: "saving",
            dir: dir.to_path_buf(),
            message,
        };
        // Before the state, which is written last (and before the guest
        // is paused, so failing here leaves it running).
        if self.proc.dir.join(NETWORK_MARKER).exists() {
            fs::write(dir.join(NETWORK_MARKER), b"")
                .map_err(|e| fail(format!("writing {NETWORK_MARKER}: {e}")))?;
        }
        let mut qmp = self.qmp().await?;
        let started = Instant::now();
        qmp.execute("stop", None).await?;
        // Always on: RAM that is a shared file already needs no copy in the
        // state, and with it on the stream lists every block's address, as
        // a state without RAM must (see `migration`).
        set_ignore_shared(&mut qmp, true).await?;
        // QEMU limits a migration to 128 MiB/s by default (to spare the
        // network of a live migration): a snapshot of a stopped VM into a
        // local file or socket goes as fast as memory does.
        qmp.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": UNLIMITED_BANDWIDTH })),
        )
        .await?;
        let saved = async {
            let split = if self.shared_ram {
                let uri = exec_uri("cat >", &dir.join(SNAPSHOT_STATE));
                qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                wait_migration(&mut qmp, self, Duration::from_secs(120))
                    .await
                    .map_err(fail)?;
                None
            } else {
                Some(self.save_split(&mut qmp, dir).await?)
            };
            let migrated = started.elapsed();
            // The migration flushed and released the disk images: the overlay
            // on disk now matches the saved memory exactly.
            let disk = dir.join(SNAPSHOT_DISK);
            fs::copy(self.proc.dir.join(OVERLAY), &disk)
                .map_err(|e| fail(format!("copying the disk layer: {e}")))?;
            if split.is_some() {
                // Written last: a snapshot is whole once its state is there.
                fs::rename(dir.join(STATE_PARTIAL), dir.join(SNAPSHOT_STATE))
                    .map_err(|e| fail(format!("renaming the state into place: {e}")))?;
            }
            tracing::debug!(
                vm = %self.proc.id,
                migrated_ms = migrated.as_secs_f64() * 1e3,
                disk_copied_ms = (started.elapsed() - migrated).as_secs_f64() * 1e3,
                pages = split.map(|s| s.pages),
                "snapshot saved"
            );
            Ok::<_, VmmError>(())
        }
        .await;
        if resume {
            // Runs on even if saving failed: a failed snapshot must not stop the sandbox.
            qmp.execute("cont", None).await?;
        }
        saved?;
        let size = |f: &str| fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            state_bytes: size(SNAPSHOT_STATE),
            disk_bytes: size(SNAPSHOT_DISK),
        })
    }
}

impl Vm for QemuVm {
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
            let path = self.proc.dir.join(AGENT_SOCKET);
            AgentStream::connect(&path)
                .await
                .map_err(|source| VmmError::AgentConnect { path, source })
        })
    }

    fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    fn console_tail(&self) -> String {
        tail(&self.proc.dir.join(CONSOLE_LOG), 2048)
    }

    fn detach(self: Box<Self>) {
        self.proc.detach();
    }

    fn snapshot<'a>(
        &'a self,
        dir: &'a Path,
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotFiles, VmmError>> {
        Box::pin(self.save_snapshot(dir, resume))
    }

    fn finish_standby(&self, disk_size_mib: Option<u32>) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(async move {
            let pending = self
                .standby
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let Some(pending) = pending else {
                return Err(VmmError::Snapshot {
                    op: "finishing a standby VM",
                    dir: self.proc.dir.clone(),
                    message: "this VM is not a standby waiting for its state".into(),
                });
            };
            if !self.is_running() {
                return Err(VmmError::Snapshot {
                    op: "finishing a standby VM",
                    dir: pending.snap,
                    message: format!("its QEMU exited: {}", self.stderr_tail()),
                });
            }
            check_disk_size(disk_size_mib, &pending.backing)?;
            self.finish_restore(pending, false, disk_size_mib).await?;
            self.proc.mark_detached()
        })
    }

    fn ended(&self) -> BoxFuture<'static, String> {
        let (pid, dir) = (self.proc.pid, self.proc.dir.clone());
        Box::pin(async move {
            let events = crate::watch::qemu_guest_end(dir.join(EVENTS_SOCKET), AGENT_PORT_ID);
            let cause = tokio::select! {
                () = crate::watch::process_exit(pid, &dir) => {
                    format!("its VMM process (QEMU, pid {pid}) exited")
                }
                cause = events => cause,
            };
            match crate::watch::last_line(&tail(&dir.join(CONSOLE_LOG), 512)) {
                Some(line) => format!("{cause}; its console's last line: {line}"),
                None => cause,
            }
        })
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(self.qmp_command("stop"))
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(self.qmp_command("cont"))
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<(), VmmError>> {
        self.proc.stop()
    }

    fn link_disk_early(&self, to: &Path) -> Result<(), VmmError> {
        self.proc
            .link_early(OVERLAY, to)
            .map_err(|source| VmmError::Prepare {
                dir: self.proc.dir.clone(),
                source,
            })
    }

    fn stop_keeping_disk(self: Box<Self>, to: PathBuf) -> BoxFuture<'static, Result<(), VmmError>> {
        self.proc.stop_keeping(OVERLAY, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(vmm: &QemuVmm) -> String {
        let config = VmConfig {
            die_with_parent: false,
            ..VmConfig::new("t", "/k", "/r")
        };
        let args = vmm.args(&config, Path::new("/run"), Path::new("/d.qcow2"));
        let at = args.iter().position(|a| a == "-append").expect("-append");
        args[at + 1].clone()
    }

    #[test]
    fn the_tsc_cache_is_validated_and_never_written_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join(TSC_CACHE);
        write_tsc_cache(&cache, "boot-1", 2_600_000).unwrap();
        assert_eq!(read_tsc_cache(&cache, "boot-1"), Some(2_600_000));
        assert_eq!(read_tsc_cache(&cache, "boot-2"), None, "another boot");
        // A value no CPU has is not believed.
        for bad in [
            "boot-1 0\n",
            "boot-1 99999999999\n",
            "boot-1 -5\n",
            "garbage",
        ] {
            std::fs::write(&cache, bad).unwrap();
            assert_eq!(read_tsc_cache(&cache, "boot-1"), None, "{bad:?}");
        }
        // A link planted where the cache goes: not read, and writing
        // replaces the link instead of writing through it.
        std::fs::remove_file(&cache).unwrap();
        let target = tmp.path().join("victim");
        std::fs::write(&target, "boot-1 2600000\n").unwrap();
        std::os::unix::fs::symlink(&target, &cache).unwrap();
        assert_eq!(
            read_tsc_cache(&cache, "boot-1"),
            None,
            "read through a link"
        );
        write_tsc_cache(&cache, "boot-1", 3_000_000).unwrap();
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "boot-1 2600000\n"
        );
        assert!(!std::fs::symlink_metadata(&cache)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read_tsc_cache(&cache, "boot-1"), Some(3_000_000));
    }

    #[test]
    fn a_network_is_a_virtio_net_device_on_its_tap_last_of_all() {
        let vmm = QemuVmm::new(
            AccelChoice {
                accel: Accel::Tcg,
                reason: "test".into(),
            },
            "/run".into(),
        );
        let args = |network: Option<VmNetwork>, tap: TapUse| {
            let config = VmConfig {
                network,
                ..VmConfig::new("t", "/k", "/r")
            };
            vmm.args_with(&config, Path::new("/run"), Path::new("/d.qcow2"), tap)
        };
        let without = args(None, TapUse::Named);
        assert!(!without.iter().any(|a| a.contains("net")), "{without:?}");
        let net = VmNetwork {
            netns: "/run/netns/petty-x".into(),
            tap: "tap0".into(),
            mac: "02:50:54:00:00:15".into(),
        };
        let with = args(Some(net.clone()), TapUse::Named);
        // The same devices first, then the network's.
        assert_eq!(with[..without.len()], without[..]);
        assert_eq!(
            with[without.len()..],
            [
                "-netdev",
                "tap,id=net0,ifname=tap0,script=no,downscript=no",
                "-device",
                "virtio-net-device,netdev=net0,mac=02:50:54:00:00:15",
            ]
        );
        // The re-save's VM: the same device, on a TAP device QEMU makes.
        let throwaway = args(Some(net), TapUse::Throwaway);
        assert_eq!(
            throwaway[without.len() + 1],
            "tap,id=net0,script=no,downscript=no"
        );
        assert_eq!(throwaway[without.len() + 3], with[without.len() + 3]);
    }

    #[test]
    fn network_settings_that_would_change_qemus_arguments_are_refused() {
        let ok = VmNetwork::new("/run/netns/petty-x");
        assert_eq!(ok.tap, "tap0");
        ok.validate().unwrap();
        for (tap, mac) in [
            ("tap0,script=/bin/evil", "02:50:54:00:00:15"),
            ("", "02:50:54:00:00:15"),
            ("a-very-long-tap-name", "02:50:54:00:00:15"),
            ("tap0", "02:50:54:00:00:15,romfile=x"),
            ("tap0", "02:50:54:00:15"),
            ("tap0", "03:50:54:00:00:15"),
        ] {
            let bad = VmNetwork {
                tap: tap.into(),
                mac: mac.into(),
                ..ok.clone()
            };
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, VmmError::Network { .. }), "{tap} {mac}: {e}");
        }
    }

    #[tokio::test]
    async fn a_missing_network_namespace_fails_before_qemu_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        for f in ["k", "r"] {
            std::fs::write(tmp.path().join(f), b"x").unwrap();
        }
        // A stand-in QEMU that would show it ran.
        let ran = tmp.path().join("ran");
        let qemu = tmp.path().join("qemu");
        std::fs::write(
            &qemu,
            format!("#!/bin/sh\ntouch {}\nsleep 100\n", ran.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        let vmm = QemuVmm::new(
            AccelChoice {
                accel: Accel::Tcg,
                reason: "test".into(),
            },
            root.clone(),
        )
        .with_binary(qemu.display().to_string());
        let config = VmConfig {
            network: Some(VmNetwork::new(tmp.path().join("no-such-netns"))),
            ..VmConfig::new("t", tmp.path().join("k"), tmp.path().join("r"))
        };
        let e = vmm.start(&config).await.err().expect("refused");
        assert!(
            matches!(e, VmmError::Network { .. }) && e.to_string().contains("does not exist"),
            "{e}"
        );
        // Not a namespace at all.
        let config = VmConfig {
            network: Some(VmNetwork::new(tmp.path().join("k"))),
            ..config
        };
        let e = vmm.start(&config).await.err().expect("refused");
        assert!(e.to_string().contains("not a namespace"), "{e}");
        assert!(!ran.exists(), "QEMU was started");
        assert_eq!(
            std::fs::read_dir(&root)
                .unwrap()
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count(),
            0
        );
    }

    #[test]
    fn guest_aslr_defaults_off_under_tcg_only_and_is_part_of_the_profile() {
        let with = |accel| {
            QemuVmm::new(
                AccelChoice {
                    accel,
                    reason: "test".into(),
                },
                "/run".into(),
            )
        };
        let off = with(Accel::Tcg).with_guest_aslr(false);
        assert!(cmdline(&off).split(' ').any(|w| w == "norandmaps"));
        let on = with(Accel::Tcg).with_guest_aslr(true);
        assert!(!cmdline(&on).contains("norandmaps"));
        assert_ne!(off.guest_profile(), on.guest_profile());
        assert!(cmdline(&with(Accel::Tcg)).contains("norandmaps"));
        assert!(!cmdline(&with(Accel::Kvm)).contains("norandmaps"));
    }
}
