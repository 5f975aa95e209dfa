//! Lifecycle: every state change goes through one checked transition that
//! also writes the store; pause, resume, stop, destroy.

use std::sync::Arc;
use std::time::Duration;

use super::{remove_run_dir, SandboxInfo, SandboxManager};
use crate::store::{now_ms, SandboxRecord};
use crate::{CoreError, Sandbox, SandboxState};

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
    pub(super) async fn stop_vm(
        &self,
        record: &SandboxRecord,
        graceful: bool,
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
        let stopped = match (held, record.vmm_pid, &record.run_dir) {
            (Some(sb), _, _) => sb.stop_vm(graceful).await,
            (None, Some(pid), Some(_)) => match vmm.attach(&record.id.to_string(), pid) {
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
