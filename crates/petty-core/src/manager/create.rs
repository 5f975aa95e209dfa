//! Creates: booting or restoring a sandbox, the standby VMMs template
//! restores take, and sandboxes made elsewhere registered here.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use petty_vmm::Vmm;

use super::lifecycle::{name_of, refused};
use super::{short_name, SandboxManager};
use crate::metrics::StartKind;
use crate::store::{now_ms, SandboxRecord, SnapshotRecord};
use crate::{CoreError, Sandbox, SandboxConfig, SandboxId, SandboxState};

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
    /// With `from`: a fork or branch child rather than a restore.
    pub(crate) fork: bool,
}

impl CreatePlan {
    /// A new sandbox, not pooled.
    pub(crate) fn new(config: SandboxConfig) -> Self {
        Self {
            config,
            pooled: false,
            from: None,
            fork: false,
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

/// How long after a create from a template its replacement standby VMM
/// starts.
const STANDBY_START_DELAY: Duration = Duration::from_millis(250);

/// What a template restore's VMM depends on: the template's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct StandbyKey {
    backend: &'static str,
    kernel: PathBuf,
    rootfs: PathBuf,
    memory_mib: u32,
    vcpus: u32,
    disk_size_mib: Option<u32>,
}

/// A VMM waiting for a template's state; its id becomes the sandbox's.
pub(super) struct StandbyVm {
    id: SandboxId,
    /// The template directory it maps (a template rebuilt since is another).
    template: PathBuf,
    vm: Box<dyn petty_vmm::Vm>,
}

impl SandboxManager {
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
        let started = std::time::Instant::now();
        self.inner.counters.creates.fetch_add(1, Ordering::Relaxed);
        let made = self.create_planned(plan, started).await;
        match &made {
            Ok(_) => {
                let us = started.elapsed().as_micros() as u64;
                self.inner
                    .counters
                    .startup_us
                    .fetch_add(us, Ordering::Relaxed);
            }
            Err(_) => {
                self.inner
                    .counters
                    .create_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        made
    }

    async fn create_planned(
        &self,
        plan: CreatePlan,
        started: std::time::Instant,
    ) -> Result<SandboxId, CoreError> {
        let CreatePlan {
            mut config,
            pooled,
            from,
            fork,
        } = plan;
        if let Some(snap) = &from {
            // A restore runs the snapshot's own kernel, memory size and vCPUs,
            // and its execs get the defaults of the template under it.
            config.kernel = Some(snap.kernel.clone());
            config.rootfs = Some(snap.rootfs.clone());
            config.memory_mib = snap.memory_mib;
            config.vcpu_count = snap.vcpus;
            config.template = None;
            config.exec_defaults = self.defaults_for(&snap.rootfs).await?;
        } else {
            self.resolve_template(&mut config).await?;
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
        // Its network, checked (and the host's ability to make one) before
        // anything exists.
        let (network, net_settings) = match self.network_for(&config, from.as_ref())? {
            Some((spec, settings)) => (Some(spec), Some(settings)),
            None => (None, None),
        };
        // A create from a template takes the standby VMM for it, if one is
        // waiting; its id (naming its run directory) becomes the sandbox's.
        // Networked creates take none: a standby has no namespace yet.
        let from_template = from.is_none() && self.inner.config.templates && vmm.can_restore();
        let standby_key =
            (from_template && network.is_none() && self.inner.config.standby && vmm.can_standby())
                .then(|| StandbyKey {
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
        let start_kind = match &from {
            Some(_) if fork => StartKind::Fork,
            Some(_) => StartKind::Restore,
            None if from_template => StartKind::Template,
            None => StartKind::Cold,
        };
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
            on_idle: config.on_idle,
            on_expiry: None,
            reason: None,
            from_snapshot: from.as_ref().map(|s| s.name.clone()),
            disk_size_mib: config.disk_size_mib,
            owner: config.owner.clone().unwrap_or_default(),
            bound_to_owner: config.bound_to_owner,
            network: network.clone(),
            start_kind,
            startup_ms: None,
            execs: 0,
            exec_us: 0,
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
        // The network's namespace, TAP device, rules and helper, before the
        // VM that attaches to them; dropped on any failure below, which
        // removes them.
        let mut net = None;
        let booted = async {
            if let (Some(spec), Some(settings)) = (&network, &net_settings) {
                let made = super::make_network(settings.clone(), id.to_string(), spec.clone());
                net = Some(made.await?);
            }
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
                            net_settings.as_ref(),
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
                die_with_process: self.inner.config.vms_die_with_process,
                restore_from: restore_from.clone(),
                standby,
                network: net.as_ref().map(super::vm_network),
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
                drop(net);
                let reason = format!("create failed: {e}");
                self.db(move |s| s.remove(id, &reason)).await?;
                return Err(e);
            }
        };
        let pid = sandbox.vmm_pid().await.unwrap_or_default();
        let run_dir = sandbox.run_dir().await.unwrap_or_default();
        // The helper follows the VMM from now on, and the ports it chose
        // are recorded.
        let network = match (net, network) {
            (Some(net), Some(spec)) => match super::keep_network(net, pid, spec).await {
                Ok(spec) => Some(spec),
                Err(e) => {
                    let _ = sandbox.stop_vm(false).await;
                    let reason = format!("create failed: {e}");
                    self.db(move |s| s.remove(id, &reason)).await?;
                    return Err(e);
                }
            },
            _ => None,
        };
        let startup_ms = started.elapsed().as_millis() as u64;
        let recorded = self
            .db(move |s| {
                s.set_vm(id, pid, &run_dir, startup_ms)?;
                if network.is_some() {
                    s.set_network(id, network.as_ref())?;
                }
                s.transition(id, SandboxState::Ready, None, false)
            })
            .await
            .and_then(|moved| refused(&name_of(&sandbox), SandboxState::Ready, moved));
        if let Err(e) = recorded {
            let _ = sandbox.stop_vm(false).await;
            self.remove_network(id).await;
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
            on_idle: cfg.on_idle,
            on_expiry: None,
            reason: None,
            from_snapshot: None,
            disk_size_mib: cfg.disk_size_mib,
            owner: cfg.owner.clone().unwrap_or_default(),
            bound_to_owner: cfg.bound_to_owner,
            network: None,
            // Started elsewhere: how, this manager did not see.
            start_kind: StartKind::Unknown,
            startup_ms: None,
            execs: 0,
            exec_us: 0,
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
    pub(super) async fn hold(&self, sb: Arc<Sandbox>) -> Arc<Sandbox> {
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
    pub(super) async fn mark_failed(&self, id: SandboxId, why: &str) {
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
        self.remove_network(id).await;
    }

    pub(crate) async fn unpool(
        &self,
        id: SandboxId,
        owner: Option<String>,
        bound_to_owner: bool,
        startup_ms: u64,
    ) -> Result<(), CoreError> {
        self.db(move |s| s.unpool(id, owner.as_deref(), bound_to_owner, startup_ms))
            .await
    }
}
