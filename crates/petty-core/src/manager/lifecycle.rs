//! Lifecycle: every state change goes through one checked transition that
//! also writes the store; pause, resume, stop, destroy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{remove_run_dir, SandboxInfo, SandboxManager};
use crate::store::{now_ms, SandboxRecord};
use crate::{CoreError, Sandbox, SandboxConfig, SandboxId, SandboxState};

/// A store transition's outcome as an error: `moved` is `None` when the
/// row moved to `to`, else the state it is in (none: the row is gone).
pub(super) fn refused(
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

pub(super) fn name_of(sb: &Sandbox) -> String {
    sb.name().to_string()
}

impl SandboxManager {
    /// Moves `sb`'s row to `to` if its state may become `to`, checked and
    /// written in one statement (`touch`: its last use is now too); else
    /// an [`CoreError::InvalidState`] naming the state it is in.
    pub(super) async fn transition(
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

    /// Sets what sandbox `key`'s TTL does when it ends: `None` (or
    /// [`IdleAction::Destroy`](crate::IdleAction::Destroy)) destroys it,
    /// as always; `Stop` and `Hibernate` put it away and clear the spent
    /// TTL, so it comes back (`start`, `resume`) with none until one is set
    /// again. E2B's `autoPause`.
    pub async fn set_on_expiry(
        &self,
        key: &str,
        action: Option<crate::IdleAction>,
    ) -> Result<SandboxInfo, CoreError> {
        let r = self.info(key).await?;
        let id = r.id;
        self.db(move |s| s.set_on_expiry(id, action)).await?;
        tracing::info!(sandbox = %id, ?action, "on expiry set");
        self.info(&id.to_string()).await
    }

    /// Freezes a sandbox's guest.
    pub async fn pause(&self, key: &str) -> Result<(), CoreError> {
        let sb = self.get(key).await?;
        sb.pause().await?;
        self.transition(&sb, SandboxState::Paused, None, false)
            .await
    }

    /// Shuts a sandbox's VM down (gracefully when `graceful`: the guest syncs
    /// and powers off; else SIGKILL) and keeps its record as `stopped`, and
    /// its disk (where the backend can) for [`start`](Self::start), until
    /// [`destroy`](Self::destroy). A stopped sandbox holds no memory, CPU
    /// or slot of `max_sandboxes`.
    pub async fn stop(&self, key: &str, graceful: bool) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        let reason = if graceful { "stopped" } else { "killed" };
        let record = if record.state == SandboxState::Hibernated {
            // Its saved disk alone is a power cut's (the guest's page cache
            // lived in the saved memory): it is woken and shut down cleanly,
            // so the disk a start boots on is whole.
            self.wake(&record).await?;
            self.info(key).await?
        } else {
            record
        };
        if record.state.has_vm() {
            self.stop_vm_as(&record, graceful, true).await?;
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

    /// Stops `record`, already claimed (`stopping`) by the reaper, keeping
    /// its disk: a clean shutdown, then `stopped` with `reason`.
    pub(super) async fn stop_claimed(
        &self,
        record: &SandboxRecord,
        reason: &str,
    ) -> Result<(), CoreError> {
        let stopped = self.stop_vm_as(record, true, true).await;
        let (id, reason) = (record.id, format!("{reason} (stopped: its disk is kept)"));
        self.db(move |s| s.transition(id, SandboxState::Stopped, Some(&reason), false))
            .await?;
        stopped
    }

    /// Where a stopped sandbox's disk is kept: `<data_dir>/disks/<id>`.
    pub(crate) fn kept_disk(&self, id: SandboxId) -> PathBuf {
        self.inner
            .config
            .data_dir
            .join("disks")
            .join(id.to_string())
    }

    /// Boots a stopped sandbox again on the disk its stop kept: every file
    /// it had, none of its processes (as `docker start` does). Its id,
    /// name, kernel, image, memory, vCPUs and lifetimes are its own; the
    /// lifetimes count from now. Refused, with what to do, when it is not
    /// stopped, its disk was not kept, its kernel or image is gone, or the
    /// host is at `max_sandboxes`. A networked one gets its network again
    /// (the same mode, rules and host ports). A failed start
    /// leaves it stopped with its disk.
    pub async fn start(&self, key: &str) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        let name = record.name.clone();
        if record.state != SandboxState::Stopped {
            return Err(CoreError::InvalidState {
                id: name,
                state: record.state.to_string(),
                hint: "only a stopped sandbox starts; stop it first".into(),
            });
        }
        let disk = self.kept_disk(record.id);
        if !disk.is_file() {
            return Err(CoreError::InvalidState {
                id: name.clone(),
                state: record.state.to_string(),
                hint: format!(
                    "its disk was not kept (its VM was gone before the stop, or its backend keeps none); remove it with `petty rm {name}`"
                ),
            });
        }
        self.boot_again(&record, None, disk, SandboxState::Stopped)
            .await?;
        tracing::info!(sandbox = %record.id, "sandbox started");
        Ok(())
    }

    /// Where a hibernated sandbox's memory, devices and disk are kept:
    /// `<data_dir>/hibernated/<id>`.
    pub(crate) fn hibernation_dir(&self, id: SandboxId) -> PathBuf {
        self.inner
            .config
            .data_dir
            .join("hibernated")
            .join(id.to_string())
    }

    /// Where `record`'s own files are on the host: its run directory while
    /// it has a VM (a kept disk is linked there), else its hibernation
    /// files or its kept disk.
    pub(crate) fn disk_path(&self, record: &SandboxRecord) -> Option<PathBuf> {
        if record.state.has_vm() {
            record.run_dir.clone()
        } else if record.state == SandboxState::Hibernated {
            Some(self.hibernation_dir(record.id))
        } else {
            Some(self.kept_disk(record.id))
        }
    }

    /// Host disk `record`'s own files take (allocated blocks, so a sparse
    /// overlay's holes cost nothing), bytes: what `petty ls` shows.
    pub fn disk_use(&self, record: &SandboxRecord) -> u64 {
        self.disk_path(record)
            .as_deref()
            .map_or(0, crate::metrics::disk_bytes)
    }

    /// Bytes that stopped and hibernated sandboxes' kept disks and
    /// hibernation files take together, but `except`'s.
    async fn kept_bytes(&self, except: SandboxId) -> Result<u64, CoreError> {
        let kept: Vec<SandboxRecord> = self
            .list()
            .await?
            .into_iter()
            .filter(|r| r.id != except && !r.state.has_vm())
            .collect();
        let m = self.clone();
        super::blocking(move || Ok(kept.iter().map(|r| m.disk_use(r)).sum())).await
    }

    /// Saves a running sandbox's memory, devices and disk to the data
    /// directory and ends its VM: it holds no memory, CPU or slot until
    /// [`resume`](Self::resume) (or any request for it) brings it back
    /// exactly — its processes, open files, the shell's state — also after
    /// this process or the host restarted. A networked one gets a network
    /// like the one it had when it wakes (its published host ports again).
    /// Refused when it is not ready, or when its files would take the
    /// kept disk past [`max_kept_bytes`](crate::ManagerConfig::max_kept_bytes)
    /// (the guest runs on, unchanged).
    pub async fn hibernate(&self, key: &str) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        let name = record.name.clone();
        if record.state == SandboxState::Paused {
            self.resume(key).await?;
        }
        let sb = self.get(key).await?;
        let id = record.id;
        let dir = self.save_hibernation(&record, &sb).await?;
        let moved = self
            .db(move |s| s.transition(id, SandboxState::Stopping, Some("hibernating"), false))
            .await?;
        if let Err(e) = refused(&name, SandboxState::Stopping, moved) {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = sb.resume().await;
            return Err(e);
        }
        self.end_hibernated(&record, &dir, "hibernated").await
    }

    /// The idle reaper's hibernation of `record`, whose row it moved to
    /// `stopping`: if it cannot be saved (past the cap, its agent silent),
    /// it is stopped with its disk kept instead, and the reason says why.
    pub(super) async fn hibernate_claimed(
        &self,
        record: &SandboxRecord,
        reason: &str,
    ) -> Result<(), CoreError> {
        let held = self.live().get(&record.id).cloned();
        let sb = match held {
            Some(sb) => Ok(sb),
            None => match self.vmm_named(&record.backend) {
                Ok(vmm) => Sandbox::attach(
                    vmm.as_ref(),
                    record,
                    self.inner.config.connect_timeout,
                    self.inner.config.rpc_timeout,
                )
                .await
                .map(Arc::new),
                Err(e) => Err(e),
            },
        };
        let saved = match sb {
            Ok(sb) => self.save_hibernation(record, &sb).await,
            Err(e) => Err(e),
        };
        match saved {
            Ok(dir) => {
                self.end_hibernated(record, &dir, &format!("{reason} (hibernated)"))
                    .await
            }
            Err(e) => {
                tracing::info!(sandbox = %record.id, "not hibernated ({e}); stopping it instead, its disk kept");
                self.stop_claimed(record, &format!("{reason}; not hibernated: {e}"))
                    .await
            }
        }
    }

    /// Saves `sb` (of `record`) into its hibernation directory and leaves
    /// its guest paused; on any failure, past the cap included, removes
    /// what it wrote and lets the guest run on.
    async fn save_hibernation(
        &self,
        record: &SandboxRecord,
        sb: &Sandbox,
    ) -> Result<PathBuf, CoreError> {
        let dir = self.hibernation_dir(record.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let saved = async {
            sb.save_to(&dir).await?;
            let Some(cap) = self.inner.config.max_kept_bytes else {
                return Ok(());
            };
            let others = self.kept_bytes(record.id).await?;
            let own = crate::metrics::disk_bytes(&dir);
            if others + own > cap {
                let mib = |b: u64| b.div_ceil(1 << 20);
                return Err(CoreError::KeptDiskFull(format!(
                    "hibernating sandbox {} takes {} MiB, and stopped and hibernated sandboxes use {} MiB of the {} MiB they may (limits.max_kept_disk_mib); remove some with `petty rm`, stop this one instead (`petty stop {}`), or raise the cap",
                    record.name,
                    mib(own),
                    mib(others),
                    mib(cap),
                    record.name
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&dir);
            // Saving stops the guest; it runs on when the save fails.
            let _ = sb.resume().await;
            return Err(e);
        }
        Ok(dir)
    }

    /// Ends the VM of `record`, saved into `dir`, and records it hibernated.
    async fn end_hibernated(
        &self,
        record: &SandboxRecord,
        dir: &std::path::Path,
        why: &str,
    ) -> Result<(), CoreError> {
        let stopped = self.stop_vm(record, false).await;
        let (id, why) = (record.id, why.to_string());
        let moved = self
            .db(move |s| s.transition(id, SandboxState::Hibernated, Some(&why), false))
            .await?;
        // Its row moved on meanwhile (its VM was seen ending on its own and
        // it was marked failed): not hibernated, whatever was saved.
        if let Err(e) = refused(&record.name, SandboxState::Hibernated, moved) {
            let _ = std::fs::remove_dir_all(dir);
            tracing::warn!(sandbox = %id, "not hibernated: {e}");
            return Err(e);
        }
        tracing::info!(sandbox = %id, bytes = crate::metrics::disk_bytes(dir), "sandbox hibernated");
        stopped
    }

    /// Brings a hibernated sandbox back as it was saved (its guest gets the
    /// refresh a restore gets: clock, entropy; its name is its own), or lets
    /// a paused one run again.
    pub async fn resume(&self, key: &str) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        if record.state == SandboxState::Hibernated {
            return self.wake(&record).await;
        }
        let sb = self.get(key).await?;
        sb.resume().await?;
        // Paused time is not idle time: the idle clock starts again now.
        self.transition(&sb, SandboxState::Ready, None, true).await
    }

    /// Restores hibernated `record` from its hibernation directory, then
    /// removes that (the VM now runs on its disk).
    pub(super) async fn wake(&self, record: &SandboxRecord) -> Result<(), CoreError> {
        let dir = self.hibernation_dir(record.id);
        let vmm = self.vmm_named(&record.backend)?;
        if !vmm.snapshot_exists(&dir) {
            return Err(CoreError::InvalidState {
                id: record.name.clone(),
                state: record.state.to_string(),
                hint: format!(
                    "its hibernation files in {} are missing or incomplete; remove it with `petty rm {}`",
                    dir.display(),
                    record.name
                ),
            });
        }
        let disk = vmm.snapshot_disk(&dir);
        self.boot_again(record, Some(dir.clone()), disk, SandboxState::Hibernated)
            .await?;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(sandbox = %record.id, "removing its hibernation files: {e}");
        }
        tracing::info!(sandbox = %record.id, "sandbox resumed from hibernation");
        Ok(())
    }

    /// Boots `record` again under its own id and name, on `disk`, restoring
    /// `restore_from` if given; on failure it goes back to `back_to`
    /// (stopped or hibernated) with its files. The shared path of
    /// [`start`](Self::start) and a wake from hibernation.
    async fn boot_again(
        &self,
        record: &SandboxRecord,
        restore_from: Option<PathBuf>,
        disk: PathBuf,
        back_to: SandboxState,
    ) -> Result<(), CoreError> {
        let name = record.name.clone();
        // Its network as it was: the same mode, rules and host ports.
        let net_settings = match &record.network {
            Some(spec) => {
                let settings = self.net_settings()?.clone();
                spec.policy(&settings.deny)
                    .map_err(|e| CoreError::InvalidConfig(e.to_string()))?;
                Some((spec.clone(), settings))
            }
            None => None,
        };
        for (what, path) in [("kernel", &record.kernel), ("image", &record.rootfs)] {
            if !path.is_file() {
                return Err(CoreError::InvalidConfig(format!(
                    "sandbox {name}'s {what} {} is gone (an update removed it), so it cannot run again; remove it with `petty rm {name}`",
                    path.display()
                )));
            }
        }
        let max = self.inner.config.max_sandboxes;
        if self.db(|s| s.count_with_vm()).await? >= max {
            return Err(CoreError::Capacity { max });
        }
        let id = record.id;
        let moved = self
            .db(move |s| s.transition(id, SandboxState::Creating, None, true))
            .await?;
        refused(&name, SandboxState::Creating, moved)?;
        let started = std::time::Instant::now();
        // Dropped on any failure below, which removes it.
        let mut net = None;
        let booted = async {
            if let Some((spec, settings)) = &net_settings {
                let made = super::make_network(settings.clone(), id.to_string(), spec.clone());
                net = Some(made.await?);
            }
            let vmm = self.vmm_named(&record.backend)?;
            let config = SandboxConfig {
                kernel: Some(record.kernel.clone()),
                rootfs: Some(record.rootfs.clone()),
                memory_mib: record.memory_mib,
                vcpu_count: record.vcpus,
                name: Some(name.clone()),
                ttl: record.ttl,
                idle_timeout: record.idle_timeout,
                owner: Some(record.owner.clone()),
                bound_to_owner: record.bound_to_owner,
                connect_timeout: self.inner.config.connect_timeout,
                rpc_timeout: self.inner.config.rpc_timeout,
                exec_defaults: self.defaults_for(&record.rootfs).await?,
                ..SandboxConfig::default()
            };
            let plan = crate::sandbox::BootPlan {
                persistent: true,
                die_with_process: self.inner.config.vms_die_with_process,
                disk: Some(disk),
                restore_from,
                network: net.as_ref().map(super::vm_network),
                ..crate::sandbox::BootPlan::new(config, id, name.clone())
            };
            let _turn = self
                .inner
                .boots
                .acquire()
                .await
                .expect("semaphore never closed");
            Sandbox::boot(vmm.as_ref(), plan).await
        }
        .await;
        let back = |why: String| async move {
            let _ = self
                .db(move |s| {
                    s.transition(id, SandboxState::Stopping, Some(&why), false)?;
                    s.transition(id, back_to, Some(&why), false)
                })
                .await;
        };
        let sandbox = match booted {
            Ok(sb) => sb,
            Err(e) => {
                drop(net);
                back(format!("could not run again: {e}")).await;
                return Err(e);
            }
        };
        let pid = sandbox.vmm_pid().await.unwrap_or_default();
        let run_dir = sandbox.run_dir().await.unwrap_or_default();
        // The helper follows the VMM from now on.
        let network = match (net, net_settings) {
            (Some(net), Some((spec, _))) => match super::keep_network(net, pid, spec).await {
                Ok(spec) => Some(spec),
                Err(e) => {
                    let _ = sandbox.stop_vm(false).await;
                    back(format!("could not run again: {e}")).await;
                    return Err(e);
                }
            },
            _ => None,
        };
        let ms = started.elapsed().as_millis() as u64;
        let recorded = self
            .db(move |s| {
                s.set_vm(id, pid, &run_dir, ms)?;
                if network.is_some() {
                    s.set_network(id, network.as_ref())?;
                }
                s.restarted(id)?;
                s.transition(id, SandboxState::Ready, None, true)
            })
            .await
            .and_then(|moved| refused(&name, SandboxState::Ready, moved));
        if let Err(e) = recorded {
            let _ = sandbox.stop_vm(false).await;
            self.remove_network(id).await;
            back(format!("could not record its run: {e}")).await;
            return Err(e);
        }
        self.hold(Arc::new(sandbox)).await;
        Ok(())
    }

    /// Stops the VM of `record`, whether this process holds it or not.
    pub(super) async fn stop_vm(
        &self,
        record: &SandboxRecord,
        graceful: bool,
    ) -> Result<(), CoreError> {
        self.stop_vm_as(record, graceful, false).await
    }

    /// [`stop_vm`](Self::stop_vm), keeping the VM's disk for a later
    /// [`start`](Self::start) when `keep_disk`.
    async fn stop_vm_as(
        &self,
        record: &SandboxRecord,
        graceful: bool,
        keep_disk: bool,
    ) -> Result<(), CoreError> {
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
        let to = self.kept_disk(record.id);
        let stopped = match (held, record.vmm_pid, &record.run_dir) {
            (Some(sb), _, _) if keep_disk => {
                sb.stop_vm_keeping_disk(graceful, to).await.map(|_| ())
            }
            (Some(sb), _, _) => sb.stop_vm(graceful).await,
            (None, Some(pid), Some(_)) => match vmm.attach(&record.id.to_string(), pid) {
                Ok(vm) if keep_disk => {
                    // Linked first: a process holding the sandbox cleans
                    // its run directory up the moment the VM ends.
                    if let Err(e) = vm.link_disk_early(&to) {
                        tracing::debug!(sandbox = %record.id, "linking its disk early: {e}");
                    }
                    match vm.stop_keeping_disk(to).await {
                        Ok(()) | Err(petty_vmm::VmmError::Unavailable { .. }) => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                }
                Ok(vm) => vm.stop().await.map_err(CoreError::from),
                Err(_) => remove_run_dir(record.run_dir.as_deref()),
            },
            _ => remove_run_dir(record.run_dir.as_deref()),
        };
        // The network goes with the VM (the helper would notice, but not
        // before this returns).
        if record.network.is_some() {
            self.remove_network(record.id).await;
        }
        stopped
    }

    /// Destroys a sandbox: kills its VM, removes its files and its record.
    pub async fn destroy(&self, key: &str) -> Result<(), CoreError> {
        let record = self.info(key).await?;
        self.reap(&record, "destroyed").await
    }

    /// Kills the VM of `record`, removes its files and moves its row to the
    /// history with `reason`.
    pub(super) async fn reap(&self, record: &SandboxRecord, reason: &str) -> Result<(), CoreError> {
        let stopped = self.stop_vm(record, false).await;
        // A kept disk and hibernation files go with their sandbox.
        let disk = self.kept_disk(record.id);
        if disk.exists() {
            if let Err(e) = std::fs::remove_file(&disk) {
                tracing::warn!(sandbox = %record.id, "removing its kept disk {}: {e}", disk.display());
            }
        }
        let saved = self.hibernation_dir(record.id);
        if saved.exists() {
            if let Err(e) = std::fs::remove_dir_all(&saved) {
                tracing::warn!(sandbox = %record.id, "removing its hibernation files {}: {e}", saved.display());
            }
        }
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

    /// Drops this process's hold on every sandbox: their VMs keep running.
    pub async fn release_all(&self) {
        self.live_mut().clear();
    }
}
