//! Recovery and the reaper: what earlier processes left is attached to or
//! reaped, and sandboxes past their lifetime or whose VM died are removed.

use std::sync::Weak;
use std::time::Duration;

use petty_vmm::{vmm_alive, DETACHED_MARKER};

use super::{blocking, Inner, SandboxManager};
use crate::store::now_ms;
use crate::{CoreError, IdleAction, SandboxState};

impl SandboxManager {
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
        // And networks whose helper is gone.
        self.sweep_networks().await;
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
            let (reason, idled) = match (r.ttl, r.idle_timeout) {
                (Some(ttl), _) if age >= ttl => {
                    (format!("ttl expired ({} s)", ttl.as_secs_f64()), false)
                }
                (_, Some(limit))
                    if idle >= limit
                        && r.state == SandboxState::Ready
                        && !self.live().get(&r.id).is_some_and(|sb| sb.is_busy()) =>
                {
                    (format!("idle for {} s", limit.as_secs_f64()), true)
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
            let action = if idled {
                r.on_idle.unwrap_or(self.inner.config.on_idle)
            } else {
                r.on_expiry.unwrap_or(IdleAction::Destroy)
            };
            if !idled && action != IdleAction::Destroy {
                // Put away, not ended: its TTL is spent, so what brings it
                // back does not find it expired at once.
                let (id, idle) = (r.id, r.idle_timeout);
                self.db(move |s| s.set_limits(id, None, idle)).await?;
            }
            match action {
                IdleAction::Hibernate => {
                    tracing::info!(sandbox = %r.id, %reason, "reaper hibernates sandbox");
                    if let Err(e) = self.hibernate_claimed(&r, &reason).await {
                        tracing::warn!(sandbox = %r.id, "hibernating it failed: {e}");
                    }
                    continue;
                }
                IdleAction::Stop => {
                    tracing::info!(sandbox = %r.id, %reason, "reaper stops sandbox (its disk is kept)");
                    if let Err(e) = self.stop_claimed(&r, &reason).await {
                        tracing::warn!(sandbox = %r.id, "stopping it failed: {e}");
                    }
                    continue;
                }
                IdleAction::Destroy => {}
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

    /// Runs one reaper pass now (the background task does this every
    /// `reap_interval`); useful before listing.
    pub async fn reap_now(&self) -> Result<(), CoreError> {
        self.reap_once(true).await
    }
}

pub(super) async fn reaper(inner: Weak<Inner>) {
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
