//! The fake VMM backend: [`FakeVmm`] implements [`Vmm`], each VM it starts
//! is a run directory and a placeholder process, and its agent is the fake
//! one of [`crate::agent`].

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use petty_protocol::{ExecRequest, Request};
use petty_vmm::{
    vmm_alive, AgentStream, BackendKind, BootTurns, BoxFuture, MemoryBacking, SnapshotFiles, Vm,
    VmConfig, Vmm, VmmError, VmmProcess, SNAPSHOT_DISK, SNAPSHOT_STATE,
};

use crate::agent::{self, AgentMode, ExecHandler, ExecReply, Guest};

/// How long a placeholder VMM process lives if nothing kills it: a test
/// that leaks one (killed mid-run) leaves it for this long at most.
const PLACEHOLDER_SECS: u32 = 3600;

/// The name a placeholder process gives itself, before its run directory.
const PLACEHOLDER_NAME: &str = "petty-fake-vmm";

/// A VMM backend with no VMM: each VM is a run directory made as every
/// backend makes one ([`VmmProcess`]: staged, owner file, detached marker,
/// pid file) and a real process standing in for the VMM (`sleep`, named
/// `petty-fake-vmm <run dir>`, so [`petty_vmm::vmm_alive`], recovery, the
/// sweep and the watch for a VM's end ([`Vm::ended`]'s pidfd) all see a
/// VMM), with a fake agent ([`crate::agent`]) on a socket pair.
///
/// It reports itself as [`BackendKind::Qemu`] (rows and snapshots record
/// `qemu`), so a manager given it as its default backend never makes a real
/// one. Snapshots write a `state` and a `disk.qcow2` of a few bytes;
/// templates work (a VM whose RAM is a shared file creates that file,
/// sparse). No standby VMMs.
///
/// Faults can be injected ([`fail_starts`](Self::fail_starts),
/// [`fail_snapshots`](Self::fail_snapshots), an [`AgentMode`] for new VMs
/// or for one, [`VmHandle::kill`]) and what happened read back
/// ([`starts`](Self::starts), [`running`](Self::running),
/// [`VmHandle::requests`]).
///
/// Dropping it kills every placeholder process it started that still runs
/// (a detached VM's would otherwise outlive the test).
pub struct FakeVmm {
    root: PathBuf,
    turns: BootTurns,
    shared: Arc<Shared>,
}

/// What the backend and its VMs share.
struct Shared {
    /// Every VM started or attached, by id.
    vms: Mutex<HashMap<String, Arc<VmRecord>>>,
    /// The configs of the starts that succeeded, in order.
    starts: Mutex<Vec<VmConfig>>,
    attempts: AtomicUsize,
    fail_starts: AtomicUsize,
    fail_snapshots: AtomicUsize,
    agent_mode: Mutex<AgentMode>,
    exec: Mutex<ExecHandler>,
    can_restore: AtomicBool,
    unavailable: Mutex<Option<String>>,
    /// The `sleep` the placeholders run, found on the standard path (not
    /// `$PATH`, which a test may have emptied).
    sleep: Option<PathBuf>,
}

/// One VM, as the backend and the tests know it.
struct VmRecord {
    id: String,
    dir: PathBuf,
    pid: u32,
    config: Option<VmConfig>,
    guest: Arc<Guest>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes one from a countdown of injected failures; true when it was one.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
        .is_ok()
}

/// Kills the placeholder `pid` of run directory `dir` (checked to be it)
/// and returns once it is gone.
fn kill_placeholder(pid: u32, dir: &Path) {
    if !vmm_alive(pid, dir) {
        return;
    }
    // SAFETY: kill only sends a signal; the pid was just checked to be this
    // directory's placeholder (a child of ours, so not recycled until reaped).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    // A killed process is gone (a zombie, whose command line is empty) a
    // moment later, on the kernel's time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vmm_alive(pid, dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Its command line empties before it is a zombie: wait for that too,
    // as a killed VMM's `waitpid` would see it, without reaping it.
    while std::time::Instant::now() < deadline {
        // SAFETY: waitid fills the zeroed siginfo it is given; WNOWAIT
        // leaves the child to be reaped by its owner.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set by a waitid that reported a child.
        if r != 0 || unsafe { info.si_pid() } == pid as libc::pid_t {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl FakeVmm {
    /// A fake backend keeping its run directories under `root` (made
    /// private on first start, as for any backend).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let standard: Vec<PathBuf> = petty_vmm::STANDARD_PATH.iter().map(PathBuf::from).collect();
        Self {
            turns: BootTurns::new(&root, 16),
            root,
            shared: Arc::new(Shared {
                vms: Mutex::new(HashMap::new()),
                starts: Mutex::new(Vec::new()),
                attempts: AtomicUsize::new(0),
                fail_starts: AtomicUsize::new(0),
                fail_snapshots: AtomicUsize::new(0),
                agent_mode: Mutex::new(AgentMode::Answer),
                exec: Mutex::new(Arc::new(agent::default_exec)),
                can_restore: AtomicBool::new(true),
                unavailable: Mutex::new(None),
                sleep: petty_vmm::find_on_path("sleep", &standard),
            }),
        }
    }

    /// The next `n` starts fail (nothing is made), as a VMM that cannot be
    /// spawned.
    pub fn fail_starts(&self, n: usize) {
        self.shared.fail_starts.store(n, Ordering::SeqCst);
    }

    /// The next `n` snapshots fail.
    pub fn fail_snapshots(&self, n: usize) {
        self.shared.fail_snapshots.store(n, Ordering::SeqCst);
    }

    /// How the agents of VMs started from now on behave.
    pub fn set_agent(&self, mode: AgentMode) {
        *lock(&self.shared.agent_mode) = mode;
    }

    /// What execs do from now on (every VM's, on its next connection);
    /// [`agent::default_exec`] until set.
    pub fn on_exec(&self, f: impl Fn(&ExecRequest, &[u8]) -> ExecReply + Send + Sync + 'static) {
        *lock(&self.shared.exec) = Arc::new(f);
    }

    /// Whether snapshots can be restored ([`Vmm::can_restore`]; true until
    /// set): false makes a manager boot every sandbox, templates or not.
    pub fn set_can_restore(&self, yes: bool) {
        self.shared.can_restore.store(yes, Ordering::SeqCst);
    }

    /// Makes [`Vmm::check`] fail saying `why` (`None`: succeed again).
    pub fn set_unavailable(&self, why: Option<&str>) {
        *lock(&self.shared.unavailable) = why.map(str::to_string);
    }

    /// Starts asked for, failed ones included.
    pub fn start_attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// The configs of the starts that succeeded, oldest first (template
    /// VMs included).
    pub fn starts(&self) -> Vec<VmConfig> {
        lock(&self.shared.starts).clone()
    }

    /// The VM with this id (started or attached by this backend).
    pub fn vm(&self, id: &str) -> Option<VmHandle> {
        lock(&self.shared.vms).get(id).cloned().map(VmHandle)
    }

    /// The VMs whose placeholder process still runs.
    pub fn running(&self) -> Vec<VmHandle> {
        let mut vms: Vec<VmHandle> = lock(&self.shared.vms)
            .values()
            .filter(|v| vmm_alive(v.pid, &v.dir))
            .cloned()
            .map(VmHandle)
            .collect();
        vms.sort_by(|a, b| a.id().cmp(b.id()));
        vms
    }

    fn register(&self, record: VmRecord) -> Arc<VmRecord> {
        let record = Arc::new(record);
        lock(&self.shared.vms).insert(record.id.clone(), record.clone());
        record
    }

    fn guest(&self, pid: u32, dir: &Path) -> Arc<Guest> {
        let dir = dir.to_path_buf();
        let mode = *lock(&self.shared.agent_mode);
        // A guest that powers off ends its VMM, as under QEMU's -no-reboot.
        Arc::new(Guest::new(
            mode,
            Box::new(move || kill_placeholder(pid, &dir)),
        ))
    }

    async fn start_vm(&self, config: &VmConfig) -> Result<FakeVm, VmmError> {
        self.shared.attempts.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.shared.fail_starts) {
            return Err(VmmError::Spawn {
                binary: PLACEHOLDER_NAME.into(),
                source: std::io::Error::other("a start failure the test injected"),
            });
        }
        let sleep = self
            .shared
            .sleep
            .clone()
            .ok_or_else(|| VmmError::BinaryMissing {
                binary: "sleep".into(),
            })?;
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
        if let Some(snap) = &config.restore_from {
            if !self.snapshot_exists(snap) {
                return Err(VmmError::Snapshot {
                    op: "restoring",
                    dir: snap.clone(),
                    message: format!("{SNAPSHOT_STATE} is missing"),
                });
            }
        }
        if config.standby {
            return Err(VmmError::Snapshot {
                op: "starting a standby VM",
                dir: self.root.join(&config.id),
                message: "the fake backend keeps no standby VMMs".into(),
            });
        }
        // From here on, dropping `proc` kills the placeholder and removes
        // the run directory.
        let mut proc = VmmProcess::prepare(&self.root, config)?;
        let prepare = |source| VmmError::Prepare {
            dir: proc.dir.clone(),
            source,
        };
        match &config.memory {
            MemoryBacking::File { path, shared: true } => {
                // The VMM makes the RAM file a template is saved with.
                std::fs::File::create(path)
                    .and_then(|f| f.set_len(u64::from(config.memory_mib) << 20))
                    .map_err(prepare)?;
            }
            MemoryBacking::File {
                path,
                shared: false,
            } if !path.is_file() => {
                return Err(prepare(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("RAM file {} is missing", path.display()),
                )));
            }
            _ => {}
        }
        let mut cmd = std::process::Command::new(sleep);
        cmd.arg0(format!("{PLACEHOLDER_NAME} {}", proc.dir.display()))
            .arg(PLACEHOLDER_SECS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Spawned from this (runtime) thread, as QEMU is: a VM that dies with
        // its parent gets the parent-death signal when this thread ends.
        proc.spawn(
            cmd,
            config.die_with_parent && !config.standby,
            PLACEHOLDER_NAME,
        )?;
        let record = self.register(VmRecord {
            id: config.id.clone(),
            dir: proc.dir.clone(),
            pid: proc.pid,
            config: Some(config.clone()),
            guest: self.guest(proc.pid, &proc.dir),
        });
        lock(&self.shared.starts).push(config.clone());
        Ok(FakeVm {
            proc,
            vm: record,
            shared: self.shared.clone(),
        })
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        for vm in lock(&self.shared.vms).values() {
            if vmm_alive(vm.pid, &vm.dir) {
                // SAFETY: the pid was just checked to be the placeholder.
                unsafe { libc::kill(vm.pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

impl Vmm for FakeVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<Box<dyn Vm>, VmmError>> {
        Box::pin(async move { Ok(Box::new(self.start_vm(config).await?) as Box<dyn Vm>) })
    }

    fn attach(&self, id: &str, pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        let dir = self.root.join(id);
        if !vmm_alive(pid, &dir) {
            return Err(VmmError::Gone { id: id.into(), pid });
        }
        // Started by this backend (another "process" of the same test), or
        // by another backend on the same root: then a guest of its own.
        let known = lock(&self.shared.vms)
            .get(id)
            .filter(|v| v.pid == pid)
            .cloned();
        let vm = match known {
            Some(vm) => vm,
            None => self.register(VmRecord {
                id: id.into(),
                dir: dir.clone(),
                pid,
                config: None,
                guest: self.guest(pid, &dir),
            }),
        };
        Ok(Box::new(FakeVm {
            proc: VmmProcess::attached(id, dir, pid),
            vm,
            shared: self.shared.clone(),
        }))
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn check(&self) -> Result<(), VmmError> {
        match lock(&self.shared.unavailable).clone() {
            Some(reason) => Err(VmmError::Unavailable {
                backend: "fake".into(),
                reason,
            }),
            None => Ok(()),
        }
    }

    fn can_restore(&self) -> bool {
        self.shared.can_restore.load(Ordering::SeqCst)
    }

    fn guest_profile(&self) -> String {
        "fake".into()
    }

    fn boot_turns(&self) -> &BootTurns {
        &self.turns
    }
}

/// A VM of the fake backend.
struct FakeVm {
    proc: VmmProcess,
    vm: Arc<VmRecord>,
    shared: Arc<Shared>,
}

impl Vm for FakeVm {
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
            let refused = |source| VmmError::AgentConnect {
                path: self.proc.dir.join("agent"),
                source,
            };
            let guest = &self.vm.guest;
            if *lock(&guest.mode) == AgentMode::Refuse
                || *guest.gone.borrow()
                || !self.proc.is_running()
            {
                return Err(refused(std::io::ErrorKind::ConnectionRefused.into()));
            }
            let (host, theirs) = tokio::net::UnixStream::pair().map_err(refused)?;
            let exec = lock(&self.shared.exec).clone();
            tokio::spawn(agent::serve(theirs, guest.clone(), exec));
            Ok(AgentStream::from(host))
        })
    }

    fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    fn console_tail(&self) -> String {
        format!("[fake console of VM {}]", self.proc.id)
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<(), VmmError>> {
        let this = *self;
        // Its agent's connections close, as a VMM's socket does.
        this.vm.guest.gone.send_replace(true);
        this.proc.stop()
    }

    fn detach(self: Box<Self>) {
        self.proc.detach();
    }

    fn snapshot<'a>(
        &'a self,
        dir: &'a Path,
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotFiles, VmmError>> {
        Box::pin(async move {
            let fail = |message: String| VmmError::Snapshot {
                op: "saving",
                dir: dir.to_path_buf(),
                message,
            };
            if !self.proc.is_running() {
                return Err(fail("the VM is not running".into()));
            }
            if take_one(&self.shared.fail_snapshots) {
                return Err(fail("a snapshot failure the test injected".into()));
            }
            let disk = format!("fake disk layer of VM {}\n", self.proc.id);
            let state = format!("fake state of VM {}\n", self.proc.id);
            // The state last: a snapshot exists once it does.
            for (name, bytes) in [(SNAPSHOT_DISK, &disk), (SNAPSHOT_STATE, &state)] {
                std::fs::write(dir.join(name), bytes)
                    .map_err(|e| fail(format!("writing {name}: {e}")))?;
            }
            if !resume {
                self.vm.guest.paused.send_replace(true);
            }
            Ok(SnapshotFiles {
                dir: dir.to_path_buf(),
                state_bytes: state.len() as u64,
                disk_bytes: disk.len() as u64,
            })
        })
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        self.vm.guest.paused.send_replace(true);
        Box::pin(async { Ok(()) })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        self.vm.guest.paused.send_replace(false);
        Box::pin(async { Ok(()) })
    }
}

/// A test's view of one fake VM.
#[derive(Clone)]
pub struct VmHandle(Arc<VmRecord>);

impl VmHandle {
    /// Its id (the sandbox's, for a managed sandbox).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Its placeholder process.
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// Its run directory.
    pub fn run_dir(&self) -> &Path {
        &self.0.dir
    }

    /// What it was started with (`None` when it was only attached to).
    pub fn config(&self) -> Option<&VmConfig> {
        self.0.config.as_ref()
    }

    /// True while its placeholder process runs.
    pub fn is_alive(&self) -> bool {
        vmm_alive(self.0.pid, &self.0.dir)
    }

    /// Its VMM dies (SIGKILL), as a crashed or killed QEMU does: returns
    /// once the process is gone, and its agent's connections close.
    pub fn kill(&self) {
        kill_placeholder(self.0.pid, &self.0.dir);
        self.0.guest.gone.send_replace(true);
    }

    /// How its agent behaves from now on.
    pub fn set_agent(&self, mode: AgentMode) {
        *lock(&self.0.guest.mode) = mode;
    }

    /// Every request its agent received, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.0.guest.requests).clone()
    }

    /// True while its guest is paused.
    pub fn is_paused(&self) -> bool {
        *self.0.guest.paused.borrow()
    }

    /// The contents of a file of its guest's disk.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.0.guest.file(path)
    }
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("id", &self.0.id)
            .field("pid", &self.0.pid)
            .field("dir", &self.0.dir)
            .finish()
    }
}
