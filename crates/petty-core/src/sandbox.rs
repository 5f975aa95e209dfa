//! One sandbox: a VM, the agent connection into it, and the operations on it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use petty_agent_client::{AgentClient, ClientError, ExecStream, WatchStream};
use petty_protocol::{ExecRequest, FileEntry, FileStat, Pong};
use petty_vmm::{Vm, VmConfig, Vmm};
use tokio::sync::Mutex;

use crate::store::{now_ms, SandboxRecord};
use crate::{CoreError, SandboxConfig, SandboxState};

/// Most output [`Sandbox::exec`] keeps per stream; stream larger output with
/// [`Sandbox::exec_stream`].
pub const MAX_COLLECTED_OUTPUT: usize = 64 * 1024 * 1024;

/// A sandbox's unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(uuid::Uuid);

impl SandboxId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for SandboxId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SandboxId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Shell-style exit code (128 + n when killed by signal n).
    pub exit_code: i32,
    /// Standard output (lossily decoded as UTF-8).
    pub stdout: String,
    /// Standard error (lossily decoded as UTF-8).
    pub stderr: String,
    /// True when the timeout killed the command.
    pub timed_out: bool,
    /// True when output past [`MAX_COLLECTED_OUTPUT`] was dropped.
    pub truncated: bool,
}

impl ExecResult {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// A running sandbox. Dropping it kills its VM, unless the sandbox is
/// persistent (managed): then the VM keeps running for a later process.
/// [`destroy`](Self::destroy) kills it and reports errors.
pub struct Sandbox {
    id: SandboxId,
    name: String,
    config: SandboxConfig,
    state: std::sync::Mutex<SandboxState>,
    vm: Mutex<Option<Box<dyn Vm>>>,
    agent: AgentClient,
    /// Watches the VM for ending on its own (see [`Vm::ended`]).
    watch: Watch,
    pong: Pong,
    persistent: bool,
    created_at_ms: i64,
    last_used_ms: AtomicI64,
    /// Calls of this process's manager running in it now.
    busy: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Commands run through this connection not yet recorded in the store.
    usage: std::sync::Arc<Usage>,
}

/// Commands run and their total time, counted as they end and taken by the
/// manager into the store at the sandbox's next recorded use.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    execs: AtomicU64,
    exec_us: AtomicU64,
}

impl Usage {
    fn add(&self, took: Duration) {
        self.execs.fetch_add(1, Ordering::Relaxed);
        self.exec_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// `(execs, µs)` counted since the last take.
    pub(crate) fn take(&self) -> (u64, u64) {
        (
            self.execs.swap(0, Ordering::Relaxed),
            self.exec_us.swap(0, Ordering::Relaxed),
        )
    }

    /// `(execs, µs)` counted since the last take, left in place.
    pub(crate) fn peek(&self) -> (u64, u64) {
        (
            self.execs.load(Ordering::Relaxed),
            self.exec_us.load(Ordering::Relaxed),
        )
    }
}

/// Times a streamed command: counted into [`Usage`] when its stream goes.
struct ExecTimer {
    usage: std::sync::Arc<Usage>,
    started: std::time::Instant,
}

impl Drop for ExecTimer {
    fn drop(&mut self) {
        self.usage.add(self.started.elapsed());
    }
}

/// A call running in a sandbox, counted while it lives ([`Sandbox::busy`]).
pub(crate) struct Busy(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`Sandbox::boot`] starts.
pub(crate) struct BootPlan {
    /// The sandbox's config (validated again).
    pub(crate) config: SandboxConfig,
    /// Its id, which names its run directory.
    pub(crate) id: SandboxId,
    /// Its name (the guest's hostname).
    pub(crate) name: String,
    /// A managed sandbox: its VM is detached and outlives this process
    /// (unless `die_with_process`).
    pub(crate) persistent: bool,
    /// With `persistent`: the VM still dies with this process
    /// ([`crate::ManagerConfig::vms_die_with_process`]).
    pub(crate) die_with_process: bool,
    /// Restore this snapshot instead of booting.
    pub(crate) restore_from: Option<PathBuf>,
    /// A VM started ahead of need by [`Sandbox::standby_vm`] for this id and
    /// `restore_from`: finished rather than a VM started.
    pub(crate) standby: Option<Box<dyn petty_vmm::Vm>>,
    /// The VM's network interface, in the namespace made for it.
    pub(crate) network: Option<petty_vmm::VmNetwork>,
    /// Boot on this kept disk ([`petty_vmm::VmConfig::disk`]).
    pub(crate) disk: Option<PathBuf>,
}

impl BootPlan {
    /// A one-off sandbox booted from its config's kernel and rootfs.
    pub(crate) fn new(config: SandboxConfig, id: SandboxId, name: String) -> Self {
        Self {
            config,
            id,
            name,
            persistent: false,
            die_with_process: false,
            restore_from: None,
            standby: None,
            network: None,
            disk: None,
        }
    }
}

impl Sandbox {
    /// Boots a VM on `vmm`, waits for its agent and checks the protocol
    /// version. On any error the VM is gone and nothing is left behind.
    pub async fn create(vmm: &dyn Vmm, mut config: SandboxConfig) -> Result<Self, CoreError> {
        config.validate()?;
        if config.network.has_network() {
            // Its namespace and helper are the manager's to make and sweep.
            return Err(CoreError::InvalidConfig(format!(
                "network {} needs a SandboxManager (SandboxManager::create); \
                 Sandbox::create makes sandboxes without a network",
                config.network.mode
            )));
        }
        if let Some(t) = config
            .template
            .as_deref()
            .filter(|t| *t != crate::BASE_TEMPLATE)
        {
            // Named templates are recorded in a manager's store.
            return Err(CoreError::InvalidConfig(format!(
                "template {t} needs a SandboxManager (SandboxManager::create); \
                 Sandbox::create takes a rootfs"
            )));
        }
        let (_, rootfs) = resolve_assets(&config, vmm.wants_elf_kernel())?;
        size_new_disk(&mut config, &rootfs)?;
        let id = SandboxId::new();
        let name = config.name.clone().unwrap_or_else(|| id.to_string());
        Self::boot(vmm, BootPlan::new(config, id, name)).await
    }

    /// Boots the VM `plan` describes. A persistent sandbox's VM is detached
    /// from this process (it outlives it) and is not killed on drop.
    pub(crate) async fn boot(vmm: &dyn Vmm, plan: BootPlan) -> Result<Self, CoreError> {
        let BootPlan {
            mut config,
            id,
            name,
            persistent,
            die_with_process,
            restore_from,
            standby,
            network,
            disk,
        } = plan;
        config.validate()?;
        let restored = restore_from.is_some();
        // A boot on a kept disk is the same sandbox again: its name too.
        let renamed = restored || disk.is_some();
        if persistent {
            config.die_with_parent = die_with_process;
        }
        let (kernel, rootfs) = resolve_assets(&config, vmm.wants_elf_kernel())?;
        let grows = check_disk_size(vmm, &config, &rootfs, restore_from.as_deref())?;
        // The guest is told the size only when the host grows its disk:
        // otherwise its file system fills the disk already.
        let disk_bytes = config
            .disk_size_mib
            .filter(|_| grows)
            .map(|mib| u64::from(mib) << 20);
        // A turn among every VM start on this host, held until the agent
        // answers: under load starts queue here, and the agent's deadline
        // starts once the turn does.
        let turn = vmm.boot_turns().acquire().await?;
        let standby = match standby {
            Some(vm) => match vm.finish_standby(config.disk_size_mib).await {
                Ok(()) => Some(vm),
                // It died while it waited (killed by hand, say), or is dying:
                // dropping it kills it and removes its run directory, and a
                // VMM is started instead. A cause that is not the standby's
                // (a bad snapshot) fails that start too, and is reported.
                Err(e) => {
                    tracing::debug!(sandbox = %id, "standby VMM unusable ({e}); starting one");
                    drop(vm);
                    None
                }
            },
            None => None,
        };
        let vm = match standby {
            Some(vm) => vm,
            None => {
                let mut vm_config = vm_config(vmm, &config, id, kernel, rootfs, restore_from);
                vm_config.network = network;
                vm_config.disk = disk;
                vmm.start(&vm_config).await?
            }
        };
        // Any early return below drops `vm`, which kills it and removes its files.
        // A restored guest is a copy of another guest's memory: it gets its
        // own randomness, the current time and its own name, and grows its
        // `/` onto the disk it now has. The refresh goes out right behind
        // the greeting, not a round trip later.
        let hostname: String = name.chars().take(63).collect();
        let refresh = renamed.then_some((hostname.as_str(), disk_bytes));
        let (agent, pong) = connect(vm.as_ref(), &config, config.connect_timeout, refresh).await?;
        drop(turn);
        tracing::debug!(sandbox = %id, "agent answered");
        if !restored {
            // The guest has no battery-backed clock worth trusting: give it ours.
            agent.sync_clock().await?;
        }
        tracing::debug!(sandbox = %id, pid = vm.pid(), kernel = %pong.kernel, "sandbox ready");
        let now = now_ms();
        let watch = Watch::start(vm.as_ref(), &agent, id);
        Ok(Self {
            id,
            name,
            config,
            state: std::sync::Mutex::new(SandboxState::Ready),
            vm: Mutex::new(Some(vm)),
            agent,
            watch,
            pong,
            persistent,
            created_at_ms: now,
            last_used_ms: AtomicI64::new(now),
            busy: Default::default(),
            usage: Default::default(),
        })
    }

    /// Takes charge of a running sandbox that another process created.
    pub(crate) async fn attach(
        vmm: &dyn Vmm,
        record: &SandboxRecord,
        connect_timeout: Duration,
        rpc_timeout: Duration,
    ) -> Result<Self, CoreError> {
        let pid = record.vmm_pid.ok_or_else(|| CoreError::InvalidState {
            id: record.name.clone(),
            state: record.state.to_string(),
            hint: "it has no VM yet".into(),
        })?;
        let vm = vmm.attach(&record.id.to_string(), pid)?;
        let config = SandboxConfig {
            kernel: Some(record.kernel.clone()),
            rootfs: Some(record.rootfs.clone()),
            memory_mib: record.memory_mib,
            vcpu_count: record.vcpus,
            connect_timeout,
            rpc_timeout,
            die_with_parent: false,
            name: Some(record.name.clone()),
            ttl: record.ttl,
            idle_timeout: record.idle_timeout,
            disk_size_mib: record.disk_size_mib,
            ..SandboxConfig::default()
        };
        let attached = connect(vm.as_ref(), &config, connect_timeout, None).await;
        let (agent, pong) = match attached {
            Ok(ok) => ok,
            Err(e) => {
                // Not ours to kill on a failed attach: the caller decides.
                vm.detach();
                return Err(e);
            }
        };
        let watch = Watch::start(vm.as_ref(), &agent, record.id);
        Ok(Self {
            id: record.id,
            name: record.name.clone(),
            config,
            state: std::sync::Mutex::new(record.state),
            vm: Mutex::new(Some(vm)),
            agent,
            watch,
            pong,
            persistent: true,
            created_at_ms: record.created_at_ms,
            last_used_ms: AtomicI64::new(record.last_used_ms),
            busy: Default::default(),
            usage: Default::default(),
        })
    }

    /// The sandbox's name (its id, unless one was given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is in its life (`Failed` once its VM ended on its own).
    pub fn state(&self) -> SandboxState {
        if self.watch.cause().is_some() {
            return SandboxState::Failed;
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What ended the VM, once it ended on its own (its VMM exited, its
    /// guest halted or powered off); `None` while it runs.
    pub fn died(&self) -> Option<String> {
        self.watch.cause()
    }

    /// A receiver that sees [`Sandbox::died`]'s cause the moment it is
    /// known; its sender goes when the sandbox is dropped or stopped.
    pub fn death_signal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.watch.subscribe()
    }

    /// An agent call's error, or the VM's end when that explains it.
    fn agent_err(&self, e: ClientError) -> CoreError {
        match self.watch.cause() {
            Some(cause) => CoreError::Died {
                id: self.name.clone(),
                cause,
            },
            None => e.into(),
        }
    }

    /// Moves to `to` if that is a legal transition.
    pub fn set_state(&self, to: SandboxState) -> Result<(), CoreError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st = st.transition(to, &self.name)?;
        Ok(())
    }

    /// Counts a call running in the sandbox until the guard drops: the
    /// manager's reaper never judges a sandbox idle while one runs.
    pub(crate) fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.busy.clone())
    }

    /// True while a call counted by [`Sandbox::busy`] runs.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Creation time, ms since the epoch.
    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }

    /// Last exec or file operation, ms since the epoch.
    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// An error unless the sandbox accepts commands; records the use.
    fn ready(&self) -> Result<(), CoreError> {
        if let Some(cause) = self.watch.cause() {
            return Err(CoreError::Died {
                id: self.name.clone(),
                cause,
            });
        }
        match self.state() {
            SandboxState::Ready => {
                self.last_used_ms.store(now_ms(), Ordering::Relaxed);
                Ok(())
            }
            state => Err(CoreError::InvalidState {
                id: self.name.clone(),
                state: state.to_string(),
                hint: match state {
                    SandboxState::Paused => "resume it first".into(),
                    SandboxState::Creating => "wait until it is ready".into(),
                    _ => "create a new sandbox".into(),
                },
            }),
        }
    }

    /// The sandbox's id.
    pub fn id(&self) -> SandboxId {
        self.id
    }

    /// Gives every later exec these defaults (a sandbox attached to learns
    /// its template's from its manager).
    pub(crate) fn set_exec_defaults(&mut self, defaults: crate::ImageDefaults) {
        self.config.exec_defaults = defaults;
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The guest kernel release, as the agent reported it.
    pub fn guest_kernel(&self) -> &str {
        &self.pong.kernel
    }

    /// The VMM's process id, while the VM runs.
    pub async fn vmm_pid(&self) -> Option<u32> {
        self.vm.lock().await.as_ref().map(|vm| vm.pid())
    }

    /// The VM's run directory (sockets, overlay, logs), while it runs.
    pub async fn run_dir(&self) -> Option<PathBuf> {
        self.vm
            .lock()
            .await
            .as_ref()
            .map(|vm| vm.run_dir().to_path_buf())
    }

    /// Runs `script` with `/bin/sh -c` and collects its output.
    pub async fn execute(&self, script: &str) -> Result<ExecResult, CoreError> {
        self.exec(ExecRequest::shell(script), None).await
    }

    /// Runs `code` in `language` (`python`, `bash` or `sh`).
    pub async fn execute_code(&self, language: &str, code: &str) -> Result<ExecResult, CoreError> {
        let argv = code_argv(language, code)?;
        self.exec(ExecRequest::argv(argv), None).await
    }

    /// Runs a command to completion, feeding it `stdin` if given.
    pub async fn exec(
        &self,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, CoreError> {
        self.ready()?;
        let req = self.config.exec_defaults.apply(req);
        let started = std::time::Instant::now();
        let out = self
            .agent
            .exec_collect(req, stdin, MAX_COLLECTED_OUTPUT)
            .await;
        self.usage.add(started.elapsed());
        let out = out.map_err(|e| self.agent_err(e))?;
        Ok(ExecResult {
            exit_code: out.status.code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            timed_out: out.status.timed_out,
            truncated: out.truncated,
        })
    }

    /// Starts a command and streams its output as it comes.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream, CoreError> {
        self.ready()?;
        let req = self.config.exec_defaults.apply(req);
        let started = std::time::Instant::now();
        let stream = self.agent.exec(req).await.map_err(|e| self.agent_err(e))?;
        Ok(stream.with_guard(ExecTimer {
            usage: self.usage.clone(),
            started,
        }))
    }

    /// Starts a command detached (`docker exec -d`): on `/dev/null`, in a
    /// session of its own, outliving this connection and every later one.
    /// Returns its pid in the guest once it started; counted as a command
    /// that took as long as its start.
    pub async fn exec_detached(&self, req: ExecRequest) -> Result<u32, CoreError> {
        self.ready()?;
        let req = self.config.exec_defaults.apply(req);
        let started = std::time::Instant::now();
        let pid = self.agent.exec_detached(req).await;
        self.usage.add(started.elapsed());
        pid.map_err(|e| self.agent_err(e))
    }

    /// Commands this connection ran that the store has not counted yet.
    pub(crate) fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Reads a whole regular file from the guest (devices, FIFOs and
    /// sockets are refused with [`crate::GuestErrorKind::NotARegularFile`]).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, CoreError> {
        self.ready()?;
        self.agent
            .read_file(path)
            .await
            .map_err(|e| self.agent_err(e))
    }

    /// Streams a regular file from the guest into `sink`, failing with
    /// [`ClientError::TooLarge`](crate::ClientError::TooLarge) once more
    /// than `limit` bytes have arrived; the number of bytes copied.
    pub async fn read_file_into<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        path: &str,
        sink: &mut W,
        limit: u64,
    ) -> Result<u64, CoreError> {
        self.ready()?;
        Ok(self.agent.read_file_into(path, sink, limit).await?)
    }

    /// Streams `source` into a file in the guest (parents created; `mode`
    /// 0o644 when `None`). The file appears whole or not at all: a failure
    /// midway leaves whatever was at `path` as it was.
    pub async fn write_file_from<R: tokio::io::AsyncRead + Unpin>(
        &self,
        path: &str,
        source: R,
        mode: Option<u32>,
    ) -> Result<u64, CoreError> {
        self.ready()?;
        Ok(self.agent.write_file_from(path, source, mode).await?)
    }

    /// Writes a file in the guest, creating parent directories.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), CoreError> {
        self.ready()?;
        self.agent
            .write_file(path, data, None)
            .await
            .map_err(|e| self.agent_err(e))?;
        Ok(())
    }

    /// Writes a file with the given permission bits.
    pub async fn write_file_mode(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), CoreError> {
        self.ready()?;
        self.agent
            .write_file(path, data, Some(mode))
            .await
            .map_err(|e| self.agent_err(e))?;
        Ok(())
    }

    /// Lists a directory in the guest.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileEntry>, CoreError> {
        self.ready()?;
        self.agent
            .list_dir(path)
            .await
            .map_err(|e| self.agent_err(e))
    }

    /// Describes a path in the guest.
    pub async fn stat(&self, path: &str) -> Result<FileStat, CoreError> {
        self.ready()?;
        self.agent.stat(path).await.map_err(|e| self.agent_err(e))
    }

    /// Describes what a path in the guest resolves to (symlinks followed).
    pub async fn stat_target(&self, path: &str) -> Result<FileStat, CoreError> {
        self.ready()?;
        Ok(self.agent.stat_target(path).await?)
    }

    /// Creates a directory (and parents) in the guest.
    pub async fn mkdir(&self, path: &str) -> Result<(), CoreError> {
        self.ready()?;
        self.agent.mkdir(path).await.map_err(|e| self.agent_err(e))
    }

    /// Has the guest write everything to its disk.
    pub async fn sync(&self) -> Result<(), CoreError> {
        self.ready()?;
        self.agent.sync().await.map_err(|e| self.agent_err(e))
    }

    /// Removes a file or directory in the guest.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), CoreError> {
        self.ready()?;
        self.agent
            .remove(path, recursive)
            .await
            .map_err(|e| self.agent_err(e))
    }

    /// Renames a path in the guest.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), CoreError> {
        self.ready()?;
        self.agent
            .rename(from, to)
            .await
            .map_err(|e| self.agent_err(e))
    }

    /// Watches a directory in the guest (and those below it when
    /// `recursive`); changes after this returns are reported.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchStream, CoreError> {
        self.ready()?;
        self.agent
            .watch(path, recursive)
            .await
            .map_err(|e| self.agent_err(e))
    }

    /// The agent connection, for operations not wrapped here.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// True when the VM runs and its agent answers a ping.
    pub async fn is_healthy(&self) -> bool {
        self.health().await.is_ok()
    }

    async fn vm_running(&self) -> bool {
        self.vm
            .lock()
            .await
            .as_ref()
            .is_some_and(|vm| vm.is_running())
    }

    /// `Err(why)` when the VM is gone or the agent does not answer.
    pub async fn health(&self) -> Result<(), String> {
        if !self.vm_running().await {
            return Err("its VMM process is gone".into());
        }
        if self.state() == SandboxState::Paused {
            return Ok(());
        }
        self.agent
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| format!("its agent does not answer: {e}"))
    }

    /// Writes a snapshot of this sandbox (memory, devices, disk) into `dir`;
    /// the guest pauses for it and then runs on.
    pub async fn snapshot_to(
        &self,
        dir: &std::path::Path,
    ) -> Result<petty_vmm::SnapshotFiles, CoreError> {
        self.snapshot_vm(dir, true).await
    }

    /// Saves memory, devices and disk into `dir` and leaves the guest
    /// paused (its VM is to be stopped next: a hibernation).
    pub(crate) async fn save_to(&self, dir: &std::path::Path) -> Result<(), CoreError> {
        self.snapshot_vm(dir, false).await.map(|_| ())
    }

    /// The snapshot both take; the guest runs on after it when `resume`.
    async fn snapshot_vm(
        &self,
        dir: &std::path::Path,
        resume: bool,
    ) -> Result<petty_vmm::SnapshotFiles, CoreError> {
        self.ready()?;
        let vm = self.vm.lock().await;
        let vm = vm.as_ref().ok_or_else(|| CoreError::InvalidState {
            id: self.name.clone(),
            state: self.state().to_string(),
            hint: "it has no VM".into(),
        })?;
        // Only a speed-up for the snapshot's restores: not worth failing for.
        if let Err(e) = self.agent.before_snapshot().await {
            tracing::debug!(sandbox = %self.id, "before_snapshot: {e}");
        }
        Ok(vm.snapshot(dir, resume).await?)
    }

    /// Freezes the guest.
    pub async fn pause(&self) -> Result<(), CoreError> {
        self.set_state(SandboxState::Paused)?;
        if let Some(vm) = self.vm.lock().await.as_ref() {
            vm.pause().await?;
        }
        Ok(())
    }

    /// Lets a paused guest run again.
    pub async fn resume(&self) -> Result<(), CoreError> {
        if let Some(vm) = self.vm.lock().await.as_ref() {
            vm.resume().await?;
        }
        self.set_state(SandboxState::Ready)
    }

    /// Stops the VM (gracefully first when `graceful`: the guest syncs its
    /// disks and powers off) and removes its files; the sandbox is then
    /// `Stopped`.
    pub async fn stop_vm(&self, graceful: bool) -> Result<(), CoreError> {
        self.end_vm(graceful, None).await.map(|_| ())
    }

    /// [`stop_vm`](Self::stop_vm), keeping the VM's disk at `to` for a
    /// later boot ([`petty_vmm::Vm::stop_keeping_disk`]). False when the
    /// backend cannot keep one (the VM is stopped all the same).
    pub(crate) async fn stop_vm_keeping_disk(
        &self,
        graceful: bool,
        to: PathBuf,
    ) -> Result<bool, CoreError> {
        self.end_vm(graceful, Some(to)).await
    }

    /// The one path of both stops: whether the disk was kept at `keep`.
    async fn end_vm(&self, graceful: bool, keep: Option<PathBuf>) -> Result<bool, CoreError> {
        // Its end is ours now, not news.
        self.watch.stop();
        let _ = self.set_state(SandboxState::Stopping);
        if let (Some(to), Some(vm)) = (&keep, self.vm.lock().await.as_ref()) {
            // Before the guest powers off: another process watching this VM
            // may clean its run directory up the moment it ends.
            if let Err(e) = vm.link_disk_early(to) {
                tracing::debug!(sandbox = %self.id, "linking its disk early: {e}");
            }
        }
        if graceful && self.agent.shutdown().await.is_ok() {
            // The guest reboots into -no-reboot: QEMU exits by itself.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                if !self.vm_running().await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let vm = self.vm.lock().await.take();
        let kept = match (vm, keep) {
            (Some(vm), Some(to)) => match vm.stop_keeping_disk(to).await {
                Ok(()) => true,
                Err(petty_vmm::VmmError::Unavailable { .. }) => false,
                Err(e) => return Err(e.into()),
            },
            (Some(vm), None) => {
                vm.stop().await?;
                false
            }
            (None, _) => false,
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = SandboxState::Stopped;
        Ok(kept)
    }

    /// Marks the sandbox failed and kills its VM.
    pub(crate) async fn fail(&self) {
        self.watch.stop();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = SandboxState::Failed;
        let vm = self.vm.lock().await.take();
        if let Some(vm) = vm {
            let _ = vm.stop().await;
        }
    }

    /// Kills the VM and removes its files.
    pub async fn destroy(self) -> Result<(), CoreError> {
        self.stop_vm(false).await?;
        tracing::debug!(sandbox = %self.id, "sandbox destroyed");
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.watch.stop();
        if self.persistent {
            // Managed sandboxes outlive this process: leave the VM running.
            if let Some(vm) = self.vm.get_mut().take() {
                vm.detach();
            }
        }
        // Otherwise dropping the VM kills it and removes its files.
    }
}

/// The task that waits for a sandbox's VM to end on its own ([`Vm::ended`]):
/// it then ends the agent connection with the cause, so every call in
/// flight returns at once naming it, and publishes the cause.
struct Watch {
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    cause: tokio::sync::watch::Receiver<Option<String>>,
}

impl Watch {
    fn start(vm: &dyn Vm, agent: &AgentClient, id: SandboxId) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let ended = vm.ended();
        let agent = agent.clone();
        let task = tokio::spawn(async move {
            let cause = ended.await;
            tracing::warn!(sandbox = %id, %cause, "sandbox VM ended");
            // Published before the calls in flight fail, so their errors
            // can name it.
            let _ = tx.send(Some(cause.clone()));
            agent.abort(cause);
            // Keep the sender: the cause stays readable until stopped.
            std::future::pending::<()>().await;
        });
        Self {
            task: std::sync::Mutex::new(Some(task.abort_handle())),
            cause: rx,
        }
    }

    fn cause(&self) -> Option<String> {
        self.cause.borrow().clone()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.cause.clone()
    }

    /// Stops watching (the VM is being stopped on purpose, or let go).
    fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// The VM of sandbox `id`, booted or restored from `restore_from`.
fn vm_config(
    vmm: &dyn Vmm,
    config: &SandboxConfig,
    id: SandboxId,
    kernel: PathBuf,
    rootfs: PathBuf,
    restore_from: Option<PathBuf>,
) -> VmConfig {
    VmConfig {
        memory_mib: config.memory_mib,
        vcpus: config.vcpu_count,
        die_with_parent: config.die_with_parent,
        memory: restore_from
            .as_deref()
            .map(|dir| vmm.restore_memory(dir))
            .unwrap_or_default(),
        restore_from,
        disk_size_mib: config.disk_size_mib,
        ..VmConfig::new(id.to_string(), kernel, rootfs)
    }
}

impl Sandbox {
    /// Starts, ahead of need, the VMM of a persistent sandbox `id` to be
    /// restored from `snapshot` with `config`'s kernel, rootfs, memory and
    /// vCPUs (resolved already): see [`petty_vmm::VmConfig::standby`].
    /// [`Sandbox::boot`] finishes it.
    pub(crate) async fn standby_vm(
        vmm: &dyn Vmm,
        config: &SandboxConfig,
        id: SandboxId,
        snapshot: PathBuf,
    ) -> Result<Box<dyn petty_vmm::Vm>, CoreError> {
        let (kernel, rootfs) = resolve_assets(config, vmm.wants_elf_kernel())?;
        let mut vm_config = vm_config(vmm, config, id, kernel, rootfs, Some(snapshot));
        vm_config.die_with_parent = false;
        vm_config.disk_size_mib = None;
        vm_config.standby = true;
        Ok(vmm.start(&vm_config).await?)
    }
}

/// Connects to a VM's agent and checks its version, waiting up to `timeout`
/// for the first answer; the error carries the guest console on failure.
async fn connect(
    vm: &dyn Vm,
    config: &SandboxConfig,
    timeout: Duration,
    refresh: Option<(&str, Option<u64>)>,
) -> Result<(AgentClient, Pong), CoreError> {
    let clock = petty_vmm::RunClock::start(vm.pid());
    // The socket can be briefly missing or refusing (a VMM still starting):
    // retry every 100 ms within the timeout.
    let stream = loop {
        match vm.connect_agent().await {
            Ok(s) => break s,
            Err(e) if clock.elapsed() + Duration::from_millis(100) >= timeout => {
                return Err(e.into())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let agent = AgentClient::new(stream, config.rpc_timeout);
    let greeting = async {
        // The handshake's own bound is the wall-clock cap; the guest's
        // deadline is kept below, on its run clock.
        let cap = wall_cap(timeout);
        match refresh {
            None => agent.handshake(cap).await,
            Some((hostname, disk_bytes)) => {
                let (pong, refreshed) = tokio::join!(
                    agent.handshake(cap),
                    agent.refresh_identity(Some(hostname), disk_bytes)
                );
                // A version mismatch explains a failed refresh: report it first.
                pong.and_then(|p| refreshed.map(|()| p))
            }
        }
    };
    let greeted = within_progress(&clock, timeout, greeting).await;
    match greeted {
        Some(Ok(p)) => Ok((agent, p)),
        None | Some(Err(ClientError::Timeout { .. })) => Err(CoreError::AgentTimeout {
            secs: timeout.as_secs(),
            console: vm.console_tail(),
        }),
        Some(Err(source)) => Err(CoreError::Connection {
            console: vm.console_tail(),
            source,
        }),
    }
}

/// However slow the host, a guest gets at most this much wall time to
/// answer: twelve times its own deadline.
fn wall_cap(timeout: Duration) -> Duration {
    timeout.saturating_mul(12)
}

/// Runs `fut` until it ends, or until the VMM of `clock` has had `timeout`
/// of time to run without it ending (`None`): time its threads spent
/// waiting for a CPU does not count, so a host under load makes a boot
/// slower, not failed. The wall clock is capped at [`wall_cap`].
pub(crate) async fn within_progress<T>(
    clock: &petty_vmm::RunClock,
    timeout: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if clock.elapsed() >= timeout || clock.wall() >= wall_cap(timeout) {
                    return None;
                }
            }
        }
    }
}

/// The argv that runs `code` in `language`.
pub fn code_argv(language: &str, code: &str) -> Result<Vec<String>, CoreError> {
    let interpreter: &[&str] = match language.to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => &["python3", "-c"],
        "bash" => &["bash", "-c"],
        "sh" | "shell" => &["sh", "-c"],
        other => {
            return Err(CoreError::InvalidConfig(format!(
                "language {other:?} is not supported; use python, bash or sh"
            )))
        }
    };
    let mut argv: Vec<String> = interpreter.iter().map(|s| s.to_string()).collect();
    argv.push(code.to_string());
    Ok(argv)
}

/// Gives a new sandbox that asks for no disk size its default: the base
/// image's size plus `disk_free_mib` (see [`SandboxConfig::disk_free_mib`]).
pub(crate) fn size_new_disk(config: &mut SandboxConfig, rootfs: &Path) -> Result<(), CoreError> {
    // A missing image is the VMM's to report, naming it.
    if config.disk_size_mib.is_some() || config.disk_free_mib == 0 || !rootfs.is_file() {
        return Ok(());
    }
    let image = petty_vmm::disk_image_size(rootfs).map_err(|source| {
        CoreError::Vm(petty_vmm::VmmError::DiskImage {
            path: rootfs.to_path_buf(),
            source,
        })
    })?;
    let image_mib = u32::try_from(image.div_ceil(1 << 20)).unwrap_or(u32::MAX);
    config.disk_size_mib = Some(image_mib.saturating_add(config.disk_free_mib));
    Ok(())
}

/// Refuses, before anything starts, a root disk smaller than what it would
/// be made from: the base image, or the disk of the snapshot restored.
/// True when the disk will be larger than what it is made from.
pub(crate) fn check_disk_size(
    vmm: &dyn Vmm,
    config: &SandboxConfig,
    rootfs: &std::path::Path,
    restore_from: Option<&std::path::Path>,
) -> Result<bool, CoreError> {
    let base = match restore_from {
        Some(dir) => vmm.snapshot_disk(dir),
        None => rootfs.to_path_buf(),
    };
    if !base.is_file() {
        // Not there (yet): the VMM says what is missing when it starts.
        return Ok(config.disk_size_mib.is_some());
    }
    match petty_vmm::check_disk_size(config.disk_size_mib, &base) {
        Err(e @ petty_vmm::VmmError::DiskTooSmall { .. }) => {
            Err(CoreError::InvalidConfig(e.to_string()))
        }
        Err(e) => Err(e.into()),
        Ok(()) => Ok(match config.disk_size_mib {
            Some(mib) => petty_vmm::disk_image_size(&base)? < u64::from(mib) << 20,
            None => false,
        }),
    }
}

pub(crate) fn resolve_assets(
    config: &SandboxConfig,
    elf_kernel: bool,
) -> Result<(PathBuf, PathBuf), CoreError> {
    if let (Some(k), Some(r)) = (&config.kernel, &config.rootfs) {
        return Ok((k.clone(), r.clone()));
    }
    let Some(dir) = &config.assets_dir else {
        return Err(CoreError::InvalidConfig(
            "no kernel and rootfs given and no assets_dir to find the built ones in; set SandboxConfig::kernel and rootfs, or assets_dir (the configuration's paths.cache_dir)".into(),
        ));
    };
    let assets = petty_image::ImageBuilder::new(dir.clone()).locate()?;
    Ok((
        config.kernel.clone().unwrap_or(if elf_kernel {
            assets.vmlinux
        } else {
            assets.kernel
        }),
        config.rootfs.clone().unwrap_or(assets.rootfs),
    ))
}
