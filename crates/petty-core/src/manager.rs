//! The sandbox manager: every sandbox by id or name, limits, lifetimes, and
//! state in SQLite that outlives the process.
//!
//! Sandboxes of a manager are persistent: their VMs run detached, and any
//! later process with a manager on the same data directory finds them again
//! (attaching to live VMs, reaping dead ones). Each manager runs a reaper
//! task that destroys sandboxes past their TTL or idle timeout, and marks
//! failed the ones whose VM died or whose agent fell silent; why is recorded.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use petty_protocol::{ExecRequest, FileEntry};
use petty_vmm::{vmm_alive, BackendKind, Vmm, DETACHED_MARKER};

use crate::store::{now_ms, HistoryRecord, SandboxRecord, SnapshotRecord, Store, StoreStats};
use crate::template::Templates;
use crate::{CoreError, ExecResult, Sandbox, SandboxConfig, SandboxId, SandboxState};

/// How a manager behaves.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Most sandboxes with a VM at once, across every process sharing the
    /// data directory (default 100). One more is refused at once.
    pub max_sandboxes: usize,
    /// TTL for sandboxes whose config sets none (default: none).
    pub default_ttl: Option<Duration>,
    /// Idle timeout for sandboxes whose config sets none (default: none).
    pub default_idle_timeout: Option<Duration>,
    /// Directory of the SQLite file, snapshots and templates (required:
    /// the configuration's `paths.data_dir`; [`ManagerConfig::new`]).
    pub data_dir: PathBuf,
    /// Where guest assets are cached, for sandboxes whose config names no
    /// kernel or rootfs ([`SandboxConfig::assets_dir`]); the
    /// configuration's `paths.cache_dir`.
    pub assets_dir: Option<PathBuf>,
    /// How backends other than the manager's own are made, when a sandbox
    /// (or the snapshot it is restored from) asks for one.
    pub backends: petty_vmm::BackendOptions,
    /// How often the reaper looks at lifetimes (default 1 s).
    pub reap_interval: Duration,
    /// How often the reaper pings each sandbox it holds (default 10 s).
    pub health_interval: Duration,
    /// Wait for an agent's first answer (default 10 s).
    pub connect_timeout: Duration,
    /// Bound on any single agent request (default 30 s).
    pub rpc_timeout: Duration,
    /// Create sandboxes by restoring a template snapshot (made by the first
    /// create of each kernel, rootfs, memory size and vCPU count) rather than
    /// booting (default true).
    pub templates: bool,
    /// VMs booting at once in this process (default: the host's CPU count).
    /// Further creates wait their turn (the capacity check happens before
    /// they wait), so a burst of creates does not starve every boot of CPU.
    pub max_concurrent_boots: usize,
    /// With `templates`, on a backend that can ([`Vmm::can_standby`]): keep
    /// one VMM started ahead of need for each template in use, waiting for
    /// the template's state, so a create from a template skips the VMM's own
    /// start-up (default true). Each costs one idle VMM process and no guest
    /// CPU; it dies with the manager (or, should this process be killed,
    /// at the next sweep of any petty process).
    pub standby: bool,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            max_sandboxes: 100,
            default_ttl: None,
            default_idle_timeout: None,
            data_dir: PathBuf::new(),
            assets_dir: None,
            backends: petty_vmm::BackendOptions::default(),
            reap_interval: Duration::from_secs(1),
            health_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(30),
            max_concurrent_boots: crate::host_cpus(),
            templates: true,
            standby: true,
        }
    }
}

impl ManagerConfig {
    /// The defaults, with state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }
}

/// What a create makes: a sandbox from `config`, for the warm pool or not,
/// booted or restored from a snapshot.
pub(crate) struct CreatePlan {
    /// The sandbox's config (a restore takes its kernel, rootfs, memory and
    /// vCPUs from the snapshot).
    pub(crate) config: SandboxConfig,
    /// Held by the warm pool until handed out.
    pub(crate) pooled: bool,
    /// Restore this snapshot instead of booting.
    pub(crate) from: Option<SnapshotRecord>,
}

impl CreatePlan {
    /// A new sandbox, not pooled.
    pub(crate) fn new(config: SandboxConfig) -> Self {
        Self {
            config,
            pooled: false,
            from: None,
        }
    }

    /// A sandbox restored from `snapshot`.
    pub(crate) fn restore(config: SandboxConfig, snapshot: SnapshotRecord) -> Self {
        Self {
            from: Some(snapshot),
            ..Self::new(config)
        }
    }

    /// A warm pool sandbox.
    pub(crate) fn pooled(config: SandboxConfig) -> Self {
        Self {
            pooled: true,
            ..Self::new(config)
        }
    }
}

/// A store transition's outcome as an error: `moved` is `None` when the
/// row moved to `to`, else the state it is in (none: the row is gone).
fn refused(
    name: &str,
    to: SandboxState,
    moved: Option<Option<SandboxState>>,
) -> Result<(), CoreError> {
    match moved {
        None => Ok(()),
        Some(None) => Err(CoreError::NotFound(name.to_string())),
        Some(Some(state)) => Err(CoreError::InvalidState {
            id: name.to_string(),
            state: state.to_string(),
            hint: format!("it cannot become {to} (another process changed it)"),
        }),
    }
}

fn name_of(sb: &Sandbox) -> String {
    sb.name().to_string()
}

/// A sandbox as [`SandboxManager::list`] reports it.
pub type SandboxInfo = SandboxRecord;

/// Owns every sandbox. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct SandboxManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// The default backend.
    vmm: Arc<dyn Vmm>,
    /// Other backends sandboxes asked for (or their snapshots were taken
    /// with), made on first use.
    backends: std::sync::Mutex<HashMap<BackendKind, Arc<dyn Vmm>>>,
    store: Arc<Store>,
    config: ManagerConfig,
    /// Sandboxes this process holds a connection to. A blocking lock, held
    /// for a lookup or an insert and never across an await (a guard held
    /// there would make the daemon's futures not `Send`, so it would not
    /// build): no request waits on another sandbox's attach or exec here.
    live: RwLock<HashMap<SandboxId, Arc<Sandbox>>>,
    /// Turns to boot.
    boots: tokio::sync::Semaphore,
    templates: Templates,
    reaper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// VMMs started ahead of template restores, one per template in use.
    standbys: std::sync::Mutex<HashMap<StandbyKey, StandbyVm>>,
    /// Templates whose standby VMM is being started.
    standbys_starting: std::sync::Mutex<HashSet<StandbyKey>>,
}

/// How long after a create from a template its replacement standby VMM
/// starts.
const STANDBY_START_DELAY: Duration = Duration::from_millis(250);

/// What a template restore's VMM depends on: the template's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StandbyKey {
    backend: &'static str,
    kernel: PathBuf,
    rootfs: PathBuf,
    memory_mib: u32,
    vcpus: u32,
    disk_size_mib: Option<u32>,
}

/// A VMM waiting for a template's state; its id becomes the sandbox's.
struct StandbyVm {
    id: SandboxId,
    /// The template directory it maps (a template rebuilt since is another).
    template: PathBuf,
    vm: Box<dyn petty_vmm::Vm>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl SandboxManager {
    /// Opens the store, recovers what earlier processes left (live VMs are
    /// kept, dead ones reaped, orphaned files removed) and starts the reaper.
    pub async fn new(config: ManagerConfig, vmm: Arc<dyn Vmm>) -> Result<Self, CoreError> {
        if config.data_dir.as_os_str().is_empty() {
            return Err(CoreError::InvalidConfig(
                "ManagerConfig::data_dir is not set; give the configuration's paths.data_dir (ManagerConfig::new)".into(),
            ));
        }
        let path = config.data_dir.join("petty.db");
        let store = Arc::new(blocking(move || Store::open(&path)).await?);
        let inner = Arc::new(Inner {
            vmm,
            backends: std::sync::Mutex::new(HashMap::new()),
            store,
            config: config.clone(),
            live: RwLock::new(HashMap::new()),
            boots: tokio::sync::Semaphore::new(config.max_concurrent_boots.max(1)),
            templates: Templates::new(&config.data_dir),
            reaper: std::sync::Mutex::new(None),
            standbys: std::sync::Mutex::new(HashMap::new()),
            standbys_starting: std::sync::Mutex::new(HashSet::new()),
        });
        let manager = Self { inner };
        manager.recover().await?;
        let task = tokio::spawn(reaper(Arc::downgrade(&manager.inner)));
        *manager
            .inner
            .reaper
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(manager)
    }

    /// The manager's configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// The SQLite file.
    pub fn store_path(&self) -> &Path {
        self.inner.store.path()
    }

    /// The store's reads and writes since this manager opened it: what a
    /// request costs in SQLite round trips (tests and benchmarks count them).
    pub fn store_stats(&self) -> StoreStats {
        self.inner.store.stats()
    }

    /// The backend called `name` (`None` or `auto`: the default), made on
    /// first use with its run directories beside the default's. An error
    /// says why the backend cannot run here.
    fn vmm_for(&self, kind: Option<BackendKind>) -> Result<Arc<dyn Vmm>, CoreError> {
        let default = &self.inner.vmm;
        let kind = match kind {
            None => return Ok(default.clone()),
            Some(k) if k == default.kind() => return Ok(default.clone()),
            Some(k) => k,
        };
        let mut made = self
            .inner
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(v) = made.get(&kind) {
            return Ok(v.clone());
        }
        let (vmm, _) = petty_vmm::choose_backend(
            Some(kind),
            default.root().to_path_buf(),
            &self.inner.config.backends,
        )?;
        let vmm: Arc<dyn Vmm> = Arc::from(vmm);
        made.insert(kind, vmm.clone());
        Ok(vmm)
    }

    /// The backend a row or snapshot records (by name).
    fn vmm_named(&self, name: &str) -> Result<Arc<dyn Vmm>, CoreError> {
        self.vmm_for(Some(name.parse::<BackendKind>()?))
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let store = self.inner.store.clone();
        blocking(move || f(&store)).await
    }

    fn live(&self) -> RwLockReadGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.inner.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn live_mut(&self) -> RwLockWriteGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.inner.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a sandbox with the defaults.
    pub async fn create_default(&self) -> Result<SandboxId, CoreError> {
        self.create(SandboxConfig::default()).await
    }

    /// Boots a sandbox, records it, and returns its id. At the limit this
    /// fails at once with [`CoreError::Capacity`]; a taken name with
    /// [`CoreError::NameTaken`]. A failed create leaves nothing behind.
    pub async fn create(&self, config: SandboxConfig) -> Result<SandboxId, CoreError> {
        self.create_inner(CreatePlan::new(config)).await
    }

    pub(crate) async fn create_inner(&self, plan: CreatePlan) -> Result<SandboxId, CoreError> {
        let CreatePlan {
            mut config,
            pooled,
            from,
        } = plan;
        if let Some(snap) = &from {
            // A restore runs the snapshot's own kernel, memory size and vCPUs.
            config.kernel = Some(snap.kernel.clone());
            config.rootfs = Some(snap.rootfs.clone());
            config.memory_mib = snap.memory_mib;
            config.vcpu_count = snap.vcpus;
        }
        config.validate()?;
        if config.assets_dir.is_none() {
            config.assets_dir = self.inner.config.assets_dir.clone();
        }
        config.ttl = config.ttl.or(self.inner.config.default_ttl);
        config.idle_timeout = config
            .idle_timeout
            .or(self.inner.config.default_idle_timeout);
        config.connect_timeout = self
            .inner
            .config
            .connect_timeout
            .min(config.connect_timeout);
        // A restore runs on the backend its snapshot was taken with.
        let vmm = match &from {
            Some(snap) => self.vmm_named(&snap.backend)?,
            None => self.vmm_for(config.backend)?,
        };
        let (kernel, rootfs) = crate::sandbox::resolve_assets(&config, vmm.wants_elf_kernel())?;
        if from.is_none() {
            // Room to work, unless a size was asked for; a restore keeps
            // its snapshot's disk.
            crate::sandbox::size_new_disk(&mut config, &rootfs)?;
        }
        // Before a row, a template or a VM: a template's disk is made from
        // the base image, so the rootfs stands for it.
        crate::sandbox::check_disk_size(
            vmm.as_ref(),
            &config,
            &rootfs,
            from.as_ref().map(|s| s.dir.as_path()),
        )?;
        // A create from a template takes the standby VMM for it, if one is
        // waiting; its id (naming its run directory) becomes the sandbox's.
        let from_template = from.is_none() && self.inner.config.templates && vmm.can_restore();
        let standby_key =
            (from_template && self.inner.config.standby && vmm.can_standby()).then(|| StandbyKey {
                backend: vmm.name(),
                kernel: kernel.clone(),
                rootfs: rootfs.clone(),
                memory_mib: config.memory_mib,
                vcpus: config.vcpu_count,
                disk_size_mib: config.disk_size_mib,
            });
        let standby = standby_key.as_ref().and_then(|k| self.take_standby(k));
        let id = standby.as_ref().map_or_else(SandboxId::new, |s| s.id);
        let name = config.name.clone().unwrap_or_else(|| short_name(id));
        let now = now_ms();
        let record = SandboxRecord {
            id,
            name: name.clone(),
            state: SandboxState::Creating,
            memory_mib: config.memory_mib,
            vcpus: config.vcpu_count,
            kernel: kernel.clone(),
            rootfs: rootfs.clone(),
            backend: vmm.name().into(),
            vmm_pid: None,
            run_dir: None,
            owner_pid: std::process::id(),
            pooled,
            created_at_ms: now,
            updated_at_ms: now,
            last_used_ms: now,
            ttl: config.ttl,
            idle_timeout: config.idle_timeout,
            reason: None,
            from_snapshot: from.as_ref().map(|s| s.name.clone()),
            disk_size_mib: config.disk_size_mib,
            owner: config.owner.clone().unwrap_or_default(),
            bound_to_owner: config.bound_to_owner,
        };
        // The row comes first: it takes a slot under the limit (refused at
        // once past it) and the name, and a crash from here on leaves a
        // `creating` row that recovery cleans up.
        let max = self.inner.config.max_sandboxes;
        if let Err(e) = self.db(move |s| s.insert(&record, Some(max))).await {
            if let (Some(key), Some(standby)) = (standby_key, standby) {
                // Unused: its id has no row. Keep it for the next create.
                self.put_standby(key, standby);
            }
            return Err(e);
        }
        config.kernel = Some(kernel);
        config.rootfs = Some(rootfs);
        let standby_config = standby_key.is_some().then(|| config.clone());
        let booted = async {
            let restore_from = match &from {
                Some(snap) => Some(snap.dir.clone()),
                None if from_template => Some(
                    self.inner
                        .templates
                        .ensure(
                            vmm.as_ref(),
                            config.kernel.as_deref().expect("resolved above"),
                            config.rootfs.as_deref().expect("resolved above"),
                            config.memory_mib,
                            config.vcpu_count,
                            config.disk_size_mib,
                            config.connect_timeout,
                        )
                        .await?,
                ),
                None => None,
            };
            let _turn = self
                .inner
                .boots
                .acquire()
                .await
                .expect("semaphore never closed");
            // A standby made for a template since rebuilt is dropped (killed)
            // here; its id stays the sandbox's.
            let standby = standby
                .filter(|s| restore_from.as_ref() == Some(&s.template))
                .map(|s| s.vm);
            let plan = crate::sandbox::BootPlan {
                persistent: true,
                restore_from: restore_from.clone(),
                standby,
                ..crate::sandbox::BootPlan::new(config, id, name)
            };
            let sandbox = Sandbox::boot(vmm.as_ref(), plan).await?;
            if let (Some(key), Some(config), Some(template)) =
                (standby_key, standby_config, restore_from)
            {
                self.start_standby(key, config, template, vmm.clone());
            }
            Ok(sandbox)
        }
        .await;
        let sandbox = match booted {
            Ok(sb) => sb,
            Err(e) => {
                let reason = format!("create failed: {e}");
                self.db(move |s| s.remove(id, &reason)).await?;
                return Err(e);
            }
        };
        let pid = sandbox.vmm_pid().await.unwrap_or_default();
        let run_dir = sandbox.run_dir().await.unwrap_or_default();
        let recorded = self
            .db(move |s| {
                s.set_vm(id, pid, &run_dir)?;
                s.transition(id, SandboxState::Ready, None, false)
            })
            .await
            .and_then(|moved| refused(&name_of(&sandbox), SandboxState::Ready, moved));
        if let Err(e) = recorded {
            let _ = sandbox.stop_vm(false).await;
            return Err(e);
        }
        self.hold(Arc::new(sandbox)).await;
        tracing::info!(sandbox = %id, "sandbox created");
        Ok(id)
    }

    fn take_standby(&self, key: &StandbyKey) -> Option<StandbyVm> {
        let standby = self
            .inner
            .standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)?;
        // One that died (killed by hand, say) is no use: dropped, cleaned up.
        standby.vm.is_running().then_some(standby)
    }

    fn put_standby(&self, key: StandbyKey, standby: StandbyVm) {
        // Replacing one drops (kills) the one replaced.
        self.inner
            .standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, standby);
    }

    /// Starts, in the background, the standby VMM for `template` unless one
    /// is waiting or starting. `config` has its kernel and rootfs resolved.
    fn start_standby(
        &self,
        key: StandbyKey,
        config: SandboxConfig,
        template: PathBuf,
        vmm: Arc<dyn Vmm>,
    ) {
        {
            let waiting = self
                .inner
                .standbys
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut starting = self
                .inner
                .standbys_starting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if waiting.contains_key(&key) || !starting.insert(key.clone()) {
                return;
            }
        }
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            // Not at once: the sandbox just created is about to run its first
            // command, and a VMM's start-up (~20 ms of a core for QEMU) would
            // compete with it for the host's CPUs.
            tokio::time::sleep(STANDBY_START_DELAY).await;
            let id = SandboxId::new();
            let started = Sandbox::standby_vm(vmm.as_ref(), &config, id, template.clone()).await;
            // A manager dropped meanwhile takes no standby: dropping it here
            // kills it.
            let Some(inner) = inner.upgrade() else {
                return;
            };
            inner
                .standbys_starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            match started {
                Ok(vm) => {
                    tracing::debug!(vm = %id, "standby VMM ready");
                    SandboxManager { inner }.put_standby(key, StandbyVm { id, template, vm });
                }
                Err(e) => tracing::warn!("starting a standby VMM: {e}"),
            }
        });
    }

    /// Stops the standby VMMs (see [`ManagerConfig::standby`]); later
    /// creates start new ones. Dropping the manager does this too.
    pub fn stop_standbys(&self) {
        let standbys: Vec<_> = self
            .inner
            .standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        // Each drop kills its VMM and removes its run directory.
        drop(standbys);
    }

    /// How many standby VMMs are waiting.
    pub fn standby_count(&self) -> usize {
        self.inner
            .standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Adds a sandbox created elsewhere (with [`Sandbox::create`]) to the
    /// manager. On failure the sandbox comes back with the error, so the
    /// caller can destroy it.
    pub async fn register(&self, sandbox: Sandbox) -> Result<SandboxId, (CoreError, Sandbox)> {
        let id = sandbox.id();
        let now = now_ms();
        let cfg = sandbox.config();
        let record = SandboxRecord {
            id,
            name: sandbox.name().to_string(),
            state: sandbox.state(),
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpu_count,
            kernel: cfg.kernel.clone().unwrap_or_default(),
            rootfs: cfg.rootfs.clone().unwrap_or_default(),
            backend: self.inner.vmm.name().into(),
            vmm_pid: sandbox.vmm_pid().await,
            run_dir: sandbox.run_dir().await,
            owner_pid: std::process::id(),
            pooled: false,
            created_at_ms: sandbox.created_at_ms(),
            updated_at_ms: now,
            last_used_ms: now,
            ttl: cfg.ttl.or(self.inner.config.default_ttl),
            idle_timeout: cfg.idle_timeout.or(self.inner.config.default_idle_timeout),
            reason: None,
            from_snapshot: None,
            disk_size_mib: cfg.disk_size_mib,
            owner: cfg.owner.clone().unwrap_or_default(),
            bound_to_owner: cfg.bound_to_owner,
        };
        let max = self.inner.config.max_sandboxes;
        if let Err(e) = self.db(move |s| s.insert(&record, Some(max))).await {
            return Err((e, sandbox));
        }
        self.hold(Arc::new(sandbox)).await;
        Ok(id)
    }

    /// Keeps `sb` as this process's connection to its sandbox, and marks the
    /// sandbox failed (VM killed, reason recorded) the moment its VM ends on
    /// its own.
    async fn hold(&self, sb: Arc<Sandbox>) -> Arc<Sandbox> {
        let held = {
            let mut live = self.live_mut();
            let held = live.entry(sb.id()).or_insert(sb.clone()).clone();
            if !Arc::ptr_eq(&held, &sb) {
                // Another task attached first: use its connection.
                return held;
            }
            held
        };
        let mut died = held.death_signal();
        let (id, inner) = (held.id(), Arc::downgrade(&self.inner));
        tokio::spawn(async move {
            // Ends when the sandbox is stopped or dropped (sender gone).
            let Ok(cause) = died.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                return;
            };
            let Some(inner) = inner.upgrade() else { return };
            SandboxManager { inner }
                .mark_failed(id, &cause.unwrap_or_default())
                .await;
        });
        held
    }

    /// Marks a sandbox this process holds failed: its VM is killed (a halted
    /// guest's VMM would run on, useless) and the store records why.
    async fn mark_failed(&self, id: SandboxId, why: &str) {
        // The row first: a lookup racing with this sees `failed` (and is
        // refused) rather than a VM that vanished (and reaps the row).
        let reason = why.to_string();
        if let Err(e) = self
            .db(move |s| s.transition(id, SandboxState::Failed, Some(&reason), false))
            .await
        {
            tracing::warn!(sandbox = %id, "recording the failure: {e}");
        }
        let held = self.live_mut().remove(&id);
        if let Some(sb) = held {
            sb.fail().await;
        }
    }

    /// The record of the sandbox with this id or name.
    pub async fn info(&self, key: &str) -> Result<SandboxInfo, CoreError> {
        let k = key.to_string();
        self.db(move |s| s.get(&k))
            .await?
            .ok_or_else(|| CoreError::NotFound(key.to_string()))
    }

    /// Why a removed sandbox went (most recent first).
    pub async fn history(&self, key: &str) -> Result<Vec<HistoryRecord>, CoreError> {
        let k = key.to_string();
        self.db(move |s| s.history(&k)).await
    }

    /// The live sandbox with this id or name, attaching to it if another
    /// process created it.
    pub async fn get(&self, key: &str) -> Result<Arc<Sandbox>, CoreError> {
        let record = self.info(key).await?;
        self.get_by_record(key, &record).await
    }

    /// [`get`](Self::get) given the record just read for `key` with
    /// [`info`](Self::info): a caller that looks at the record first (the
    /// daemon hides warm pool sandboxes) needs no second store read.
    pub async fn get_by_record(
        &self,
        key: &str,
        record: &SandboxRecord,
    ) -> Result<Arc<Sandbox>, CoreError> {
        if matches!(record.state, SandboxState::Ready | SandboxState::Paused) {
            if let Some(sb) = self.live().get(&record.id) {
                return Ok(sb.clone());
            }
        } else {
            // Another process may have stopped it: the store is the truth,
            // and a connection this process still holds is stale.
            self.live_mut().remove(&record.id);
            return Err(CoreError::InvalidState {
                id: record.name.clone(),
                state: record.state.to_string(),
                hint: match &record.reason {
                    Some(r) if r != record.state.as_str() => {
                        format!("{r}; remove it with `petty rm {}`", record.name)
                    }
                    _ => format!("remove it with `petty rm {}`", record.name),
                },
            });
        }
        let vmm = self.vmm_named(&record.backend)?;
        let attached = Sandbox::attach(
            vmm.as_ref(),
            record,
            self.inner.config.connect_timeout,
            self.inner.config.rpc_timeout,
        )
        .await;
        let sandbox = match attached {
            Ok(sb) => Arc::new(sb),
            Err(CoreError::Vm(petty_vmm::VmmError::Gone { .. })) => {
                // Its VM died while no process watched: reap it now.
                self.reap(record, "its VMM process is gone").await?;
                return Err(CoreError::NotFound(format!(
                    "{key} (its VM had died; it was removed)"
                )));
            }
            Err(e) => return Err(e),
        };
        Ok(self.hold(sandbox).await)
    }

    /// Runs `f` with the sandbox `key` (attaching if needed) and records the use.
    ///
    /// One store read and one write: the row is read even when this process
    /// holds a connection, since the store is the truth across processes
    /// (another may have stopped or removed the sandbox, and a held
    /// connection does not know); the write is the use (`last_used`).
    pub async fn with_sandbox_async<F, Fut, T>(&self, key: &str, f: F) -> Result<T, CoreError>
    where
        F: FnOnce(Arc<Sandbox>) -> Fut,
        Fut: Future<Output = Result<T, CoreError>>,
    {
        let record = self.info(key).await?;
        self.with_record_async(key, &record, f).await
    }

    /// [`with_sandbox_async`](Self::with_sandbox_async) given the record
    /// just read for `key` with [`info`](Self::info): one store write.
    pub async fn with_record_async<F, Fut, T>(
        &self,
        key: &str,
        record: &SandboxRecord,
        f: F,
    ) -> Result<T, CoreError>
    where
        F: FnOnce(Arc<Sandbox>) -> Fut,
        Fut: Future<Output = Result<T, CoreError>>,
    {
        let sb = self.get_by_record(key, record).await?;
        let id = sb.id();
        let out = {
            // Not idle while it runs, however long (the store's last use
            // moves when it ends).
            let _busy = sb.busy();
            f(sb.clone()).await
        };
        if let Some(cause) = sb.died() {
            // Recorded now, not only by the watcher's task: a CLI process
            // may end before that task runs.
            self.mark_failed(id, &cause).await;
            return out;
        }
        // Idle timeouts are judged from the store, by any process.
        let _ = self.db(move |s| s.touch(id)).await;
        out
    }

    /// Runs a shell command in `key`.
    pub async fn execute(&self, key: &str, script: &str) -> Result<ExecResult, CoreError> {
        let script = script.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.execute(&script).await })
            .await
    }

    /// Runs an exec request (argv or shell, env, cwd, timeout) in `key`.
    pub async fn exec(
        &self,
        key: &str,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, CoreError> {
        self.with_sandbox_async(key, |sb| async move { sb.exec(req, stdin).await })
            .await
    }

    /// Runs `code` in `language` in `key`.
    pub async fn execute_code(
        &self,
        key: &str,
        language: &str,
        code: &str,
    ) -> Result<ExecResult, CoreError> {
        let (language, code) = (language.to_string(), code.to_string());
        self.with_sandbox_async(
            key,
            |sb| async move { sb.execute_code(&language, &code).await },
        )
        .await
    }

    /// Reads a whole regular file from `key` (devices, FIFOs and sockets
    /// are refused with [`crate::GuestErrorKind::NotARegularFile`]).
    pub async fn read_file(&self, key: &str, path: &str) -> Result<Vec<u8>, CoreError> {
        let path = path.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.read_file(&path).await })
            .await
    }

    /// Writes a file in `key`.
    pub async fn write_file(&self, key: &str, path: &str, data: &[u8]) -> Result<(), CoreError> {
        let path = path.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.write_file(&path, data).await })
            .await
    }

    /// Lists a directory in `key`.
    pub async fn list_dir(&self, key: &str, path: &str) -> Result<Vec<FileEntry>, CoreError> {
        let path = path.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.list_dir(&path).await })
            .await
    }

    /// Every sandbox in the store, oldest first (pooled ones included).
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, CoreError> {
        self.db(|s| s.list()).await
    }

    /// How many sandboxes hold a VM, across processes.
    pub async fn count(&self) -> Result<usize, CoreError> {
        self.db(|s| s.count_with_vm()).await
    }

    /// True when a sandbox with this id or name exists (in any state).
    pub async fn exists(&self, key: &str) -> Result<bool, CoreError> {
        let k = key.to_string();
        Ok(self.db(move |s| s.get(&k)).await?.is_some())
    }

    /// Sets how much longer sandbox `key` may live: `ends_in` its TTL so that
    /// it ends that long from now (`Some(None)`: no TTL), `idle_timeout` its
    /// idle timeout (`Some(None)`: none); `None` leaves one as it is. As
    /// E2B's `set_timeout` does, this both extends and shortens.
    pub async fn set_lifetime(
        &self,
        key: &str,
        ends_in: Option<Option<Duration>>,
        idle_timeout: Option<Option<Duration>>,
    ) -> Result<SandboxInfo, CoreError> {
        let r = self.info(key).await?;
        if !r.state.has_vm() {
            return Err(CoreError::InvalidState {
                id: r.name.clone(),
                state: r.state.to_string(),
                hint: "only a sandbox with a VM has a lifetime to set".into(),
            });
        }
        let age = Duration::from_millis((now_ms() - r.created_at_ms).max(0) as u64);
        let ttl = match ends_in {
            None => r.ttl,
            Some(None) => None,
            Some(Some(d)) => Some(age + d),
        };
        let idle = idle_timeout.unwrap_or(r.idle_timeout);
        let id = r.id;
        self.db(move |s| s.set_limits(id, ttl, idle)).await?;
        tracing::info!(sandbox = %id, ?ttl, ?idle, "lifetime set");
        self.info(&id.to_string()).await
    }

    /// Moves `sb`'s row to `to` if its state may become `to`, checked and
    /// written in one statement (`touch`: its last use is now too); else
    /// an [`CoreError::InvalidState`] naming the state it is in.
    async fn transition(
        &self,
        sb: &Sandbox,
        to: SandboxState,
        reason: Option<&'static str>,
        touch: bool,
    ) -> Result<(), CoreError> {
        let id = sb.id();
        let moved = self
            .db(move |s| s.transition(id, to, reason, touch))
            .await?;
        refused(sb.name(), to, moved)
    }

    /// Freezes a sandbox's guest.
    pub async fn pause(&self, key: &str) -> Result<(), CoreError> {
        let sb = self.get(key).await?;
        sb.pause().await?;
        self.transition(&sb, SandboxState::Paused, None, false)
            .await
    }

    /// Resumes a paused sandbox.
    pub async fn resume(&self, key: &str) -> Result<(), CoreError> {
        let sb = self.get(key).await?;
        sb.resume().await?;
        // Paused time is not idle time: the idle clock starts again now.
        self.transition(&sb, SandboxState::Ready, None, true).await
    }

    /// Shuts a sandbox's VM down (gracefully when `graceful`: the guest syncs
    /// and powers off; else SIGKILL) and keeps its record as `stopped` until
    /// [`destroy`](Self::destroy).
    pub async fn stop(&self, key: &str, graceful: bool) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        let reason = if graceful { "stopped" } else { "killed" };
        if record.state.has_vm() {
            self.stop_vm(&record, graceful).await?;
        }
        let id = record.id;
        for to in [SandboxState::Stopping, SandboxState::Stopped] {
            let moved = self
                .db(move |s| s.transition(id, to, Some(reason), false))
                .await?;
            // Already stopping (or stopped) is no refusal of a stop.
            if let Some(Some(now)) = moved {
                if now != SandboxState::Stopping && now != SandboxState::Stopped {
                    refused(&record.name, to, moved)?;
                }
            }
        }
        Ok(())
    }

    /// Stops the VM of `record`, whether this process holds it or not.
    async fn stop_vm(&self, record: &SandboxRecord, graceful: bool) -> Result<(), CoreError> {
        let mut held = self.live_mut().remove(&record.id);
        // A backend that cannot be made here any more: its VMM process is
        // still killed and its files removed through the default's.
        let vmm = self
            .vmm_named(&record.backend)
            .unwrap_or_else(|_| self.inner.vmm.clone());
        if held.is_none() && graceful && record.state == SandboxState::Ready {
            // A clean shutdown needs the agent: attach (it may be another
            // process's sandbox); if that fails, fall back to killing.
            held = Sandbox::attach(
                vmm.as_ref(),
                record,
                self.inner.config.connect_timeout,
                self.inner.config.rpc_timeout,
            )
            .await
            .ok()
            .map(Arc::new);
        }
        if let Some(sb) = held {
            return sb.stop_vm(graceful).await;
        }
        match (record.vmm_pid, &record.run_dir) {
            (Some(pid), Some(_)) => match vmm.attach(&record.id.to_string(), pid) {
                Ok(vm) => vm.stop().await.map_err(CoreError::from),
                Err(_) => remove_run_dir(record.run_dir.as_deref()),
            },
            _ => remove_run_dir(record.run_dir.as_deref()),
        }
    }

    /// Destroys a sandbox: kills its VM, removes its files and its record.
    pub async fn destroy(&self, key: &str) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        self.reap(&record, "destroyed").await
    }

    /// Kills the VM of `record`, removes its files and moves its row to the
    /// history with `reason`.
    async fn reap(&self, record: &SandboxRecord, reason: &str) -> Result<(), CoreError> {
        let stopped = self.stop_vm(record, false).await;
        let id = record.id;
        let reason = reason.to_string();
        self.db(move |s| s.remove(id, &reason)).await?;
        tracing::info!(sandbox = %record.id, name = %record.name, "sandbox removed");
        stopped
    }

    /// Destroys every sandbox (pooled ones included) and stops this
    /// manager's standby VMMs.
    pub async fn destroy_all(&self) -> Result<(), CoreError> {
        self.stop_standbys();
        let mut first_err = None;
        for r in self.list().await? {
            if let Err(e) = self.reap(&r, "destroyed (destroy_all)").await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Reconciles the store with what runs: keeps live VMs, reaps the rows
    /// of dead ones and of creates whose process died, and removes run
    /// directories that belong to no row.
    pub async fn recover(&self) -> Result<(), CoreError> {
        let records = self.list().await?;
        for r in &records {
            let vm_alive = match (r.vmm_pid, &r.run_dir) {
                (Some(pid), Some(dir)) => vmm_alive(pid, dir),
                _ => false,
            };
            let owner_gone = !petty_vmm::pid_alive(r.owner_pid);
            let reason = match r.state {
                SandboxState::Creating if owner_gone => Some("its create was interrupted"),
                _ if r.pooled && owner_gone => Some("its warm pool's process ended"),
                _ if r.bound_to_owner && owner_gone => {
                    Some("the process (MCP session) it belonged to ended")
                }
                s if s.has_vm() && s != SandboxState::Creating && !vm_alive => {
                    Some("its VMM process is gone")
                }
                _ => None,
            };
            if let Some(reason) = reason {
                tracing::info!(sandbox = %r.id, %reason, "recovery removes sandbox");
                // One row that cannot be reaped (a VM that will not die)
                // does not stop the rest of recovery, or the manager.
                if let Err(e) = self.reap(r, reason).await {
                    tracing::warn!(sandbox = %r.id, %reason, "recovery could not reap it: {e}");
                }
            }
        }
        // Run directories of detached VMs that no row claims.
        let known: std::collections::HashSet<String> =
            records.iter().map(|r| r.id.to_string()).collect();
        let root = self.inner.vmm.root().to_path_buf();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let dir = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if known.contains(&name) || !dir.join(DETACHED_MARKER).exists() {
                    continue;
                }
                // Its maker still runs: a create under way in another
                // process (whose row this list, read earlier, may not hold).
                if petty_vmm::run_dir_owner_alive(&dir) {
                    continue;
                }
                // A create writes its row before its run directory, so a
                // directory whose maker is gone and that no row claims now
                // is an orphan.
                let id = name.clone();
                if self.db(move |s| s.get(&id)).await?.is_some() {
                    continue;
                }
                if let Ok(pid) = std::fs::read_to_string(dir.join(petty_vmm::PID_FILE)) {
                    if let Ok(pid) = pid.trim().parse::<u32>() {
                        if let Ok(vm) = self.inner.vmm.attach(&name, pid) {
                            let _ = vm.stop().await;
                        }
                    }
                }
                let _ = petty_vmm::remove_run_dir(&dir);
            }
        }
        // And VMs that were to die with a process that is gone: a standby
        // VMM of a manager that was killed, a template being made.
        let swept = blocking(move || Ok(petty_vmm::sweep_stale_run_dirs(&root))).await?;
        for dir in swept {
            tracing::info!(dir = %dir.display(), "removed the run directory of a dead process");
        }
        Ok(())
    }

    /// One pass of the reaper: lifetimes from the store (any process's
    /// sandboxes), health of the sandboxes this process holds.
    async fn reap_once(&self, check_health: bool) -> Result<(), CoreError> {
        let now = now_ms();
        for r in self.list().await? {
            if r.pooled || !matches!(r.state, SandboxState::Ready | SandboxState::Paused) {
                continue;
            }
            let age = Duration::from_millis((now - r.created_at_ms).max(0) as u64);
            let idle = Duration::from_millis((now - r.last_used_ms).max(0) as u64);
            let reason = match (r.ttl, r.idle_timeout) {
                (Some(ttl), _) if age >= ttl => format!("ttl expired ({} s)", ttl.as_secs_f64()),
                (_, Some(limit))
                    if idle >= limit
                        && r.state == SandboxState::Ready
                        && !self.live().get(&r.id).is_some_and(|sb| sb.is_busy()) =>
                {
                    format!("idle for {} s", limit.as_secs_f64())
                }
                _ => continue,
            };
            // Claimed in the store first: a sandbox paused, used or stopped
            // (by any process) since the list was read is not reaped.
            let (seen, why) = (r.clone(), reason.clone());
            if !self
                .db(move |s| s.claim(&seen, SandboxState::Stopping, &why))
                .await?
            {
                continue;
            }
            tracing::info!(sandbox = %r.id, %reason, "reaper destroys sandbox");
            if let Err(e) = self.reap(&r, &reason).await {
                tracing::warn!(sandbox = %r.id, "reaping it failed: {e}");
            }
        }
        if check_health {
            let held: Vec<_> = self.live().values().cloned().collect();
            // All at once: a silent agent's ping timeout delays no other
            // sandbox's check (and no lifetime is judged late for it).
            let mut checks = tokio::task::JoinSet::new();
            for sb in held {
                if !matches!(sb.state(), SandboxState::Ready | SandboxState::Paused) {
                    continue;
                }
                let manager = self.clone();
                checks.spawn(async move {
                    if let Err(why) = sb.health().await {
                        tracing::warn!(sandbox = %sb.id(), %why, "sandbox failed its health check");
                        manager
                            .mark_failed(sb.id(), &format!("health check: {why}"))
                            .await;
                    }
                });
            }
            while checks.join_next().await.is_some() {}
        }
        Ok(())
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.inner.config.data_dir.join("snapshots")
    }

    /// Snapshots sandbox `key` as `name`: memory, device state and disk,
    /// consistent with each other. The sandbox pauses for it and runs on.
    pub async fn snapshot(&self, key: &str, name: &str) -> Result<SnapshotRecord, CoreError> {
        SandboxConfig::builder().name(name).build().map_err(|_| {
            CoreError::InvalidConfig(format!(
                "snapshot name {name:?} is not allowed; use 1 to 64 letters, digits, '-', '_' or '.'"
            ))
        })?;
        let n = name.to_string();
        if self.db(move |s| s.get_snapshot(&n)).await?.is_some() {
            return Err(CoreError::NameTaken(name.to_string()));
        }
        let sb = self.get(key).await?;
        let source = self.info(key).await?;
        let vmm = self.vmm_named(&source.backend)?;
        let dir = self.snapshots_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let saved = async {
            sb.snapshot_to(&dir).await?;
            // The sandbox runs on already; now make the snapshot one whose
            // children share its memory pages.
            let base = petty_vmm::VmConfig {
                memory_mib: source.memory_mib,
                vcpus: source.vcpus,
                ..petty_vmm::VmConfig::new(
                    format!("resave-{}", uuid::Uuid::new_v4()),
                    &source.kernel,
                    &source.rootfs,
                )
            };
            vmm.share_snapshot_ram(&dir, &base).await?;
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let record = SnapshotRecord {
            name: name.to_string(),
            parent: source.from_snapshot.clone(),
            source_sandbox: source.name.clone(),
            dir: dir.clone(),
            size_bytes: disk_usage(&dir),
            memory_mib: source.memory_mib,
            vcpus: source.vcpus,
            kernel: source.kernel.clone(),
            rootfs: source.rootfs.clone(),
            created_at_ms: now_ms(),
            backend: source.backend.clone(),
        };
        let r = record.clone();
        if let Err(e) = self.db(move |s| s.insert_snapshot(&r)).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(snapshot = %name, source = %source.name, bytes = record.size_bytes, "snapshot taken");
        Ok(record)
    }

    /// The snapshot named `name`.
    pub async fn snapshot_info(&self, name: &str) -> Result<SnapshotRecord, CoreError> {
        let n = name.to_string();
        self.db(move |s| s.get_snapshot(&n))
            .await?
            .ok_or_else(|| CoreError::SnapshotNotFound(name.to_string()))
    }

    /// Every snapshot, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, CoreError> {
        self.db(|s| s.list_snapshots()).await
    }

    /// Starts a new sandbox from snapshot `snapshot`, named `name` (or after its id).
    pub async fn restore(
        &self,
        snapshot: &str,
        name: Option<&str>,
    ) -> Result<SandboxId, CoreError> {
        let mut b = SandboxConfig::builder();
        if let Some(n) = name {
            b = b.name(n);
        }
        self.restore_with(snapshot, b.build()?).await
    }

    /// Starts a new sandbox from snapshot `snapshot` with `config`'s name,
    /// lifetimes and disk size (`disk_size_mib`, at least the snapshot's);
    /// kernel, memory and vCPUs are the snapshot's.
    pub async fn restore_with(
        &self,
        snapshot: &str,
        config: SandboxConfig,
    ) -> Result<SandboxId, CoreError> {
        let snap = self.snapshot_info(snapshot).await?;
        self.create_inner(CreatePlan::restore(config, snap)).await
    }

    /// `n` new sandboxes from `source`: a snapshot's name, or a running
    /// sandbox (snapshotted first, as `<sandbox>-fork-<n>`). Children share
    /// the snapshot's disk layers copy-on-write; each one's writes are its own.
    pub async fn fork(&self, source: &str, n: usize) -> Result<Vec<SandboxId>, CoreError> {
        self.fork_with(source, n, SandboxConfig::default()).await
    }

    /// [`fork`](Self::fork) with every child given `config`'s lifetimes,
    /// disk size and owner (its name, if any, is not used: each child is
    /// named after its id).
    pub async fn fork_with(
        &self,
        source: &str,
        n: usize,
        mut config: SandboxConfig,
    ) -> Result<Vec<SandboxId>, CoreError> {
        config.name = None;
        if n == 0 {
            return Err(CoreError::InvalidConfig(
                "fork needs a count of at least 1".into(),
            ));
        }
        let s = source.to_string();
        let snap = match self.db(move |st| st.get_snapshot(&s)).await? {
            Some(snap) => snap,
            None => {
                let info = self.info(source).await?;
                let name = format!("{}-fork-{}", info.name, now_ms());
                self.snapshot(source, &name).await?
            }
        };
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            children.push(
                self.create_inner(CreatePlan::restore(config.clone(), snap.clone()))
                    .await?,
            );
        }
        Ok(children)
    }

    /// Deletes snapshot `name`, refusing while a snapshot layered on it or a
    /// sandbox restored from it still exists (their disks read its files).
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), CoreError> {
        let snap = self.snapshot_info(name).await?;
        let n = name.to_string();
        let dependents = self.db(move |s| s.snapshot_dependents(&n)).await?;
        if !dependents.is_empty() {
            return Err(CoreError::SnapshotInUse {
                name: name.to_string(),
                dependents,
            });
        }
        remove_run_dir(Some(&snap.dir))?;
        let n = name.to_string();
        self.db(move |s| s.remove_snapshot(&n)).await
    }

    /// Runs one reaper pass now (the background task does this every
    /// `reap_interval`); useful before listing.
    pub async fn reap_now(&self) -> Result<(), CoreError> {
        self.reap_once(true).await
    }

    /// Drops this process's hold on every sandbox: their VMs keep running.
    pub async fn release_all(&self) {
        self.live_mut().clear();
    }

    pub(crate) async fn unpool(
        &self,
        id: SandboxId,
        owner: Option<String>,
        bound_to_owner: bool,
    ) -> Result<(), CoreError> {
        self.db(move |s| s.unpool(id, owner.as_deref(), bound_to_owner))
            .await
    }
}

async fn reaper(inner: Weak<Inner>) {
    let mut last_health = tokio::time::Instant::now();
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.config.reap_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let check_health = last_health.elapsed() >= inner.config.health_interval;
        if check_health {
            last_health = tokio::time::Instant::now();
        }
        let manager = SandboxManager { inner };
        if let Err(e) = manager.reap_once(check_health).await {
            tracing::warn!("reaper pass failed: {e}");
        }
    }
}

/// Bytes a directory's files take on disk (sparse files count what they use).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn short_name(id: SandboxId) -> String {
    format!("sb-{}", &id.to_string()[..8])
}

/// Removes a run (or snapshot) directory, and the VM's jail if it had one.
fn remove_run_dir(dir: Option<&Path>) -> Result<(), CoreError> {
    match dir {
        Some(dir) => Ok(petty_vmm::remove_run_dir(dir)?),
        None => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Io(std::io::Error::other(e)))?
}
