//! Per-sandbox metrics and the manager's totals (see [`crate::metrics`]).

use std::sync::atomic::Ordering;

use super::{blocking, SandboxManager};
use crate::metrics::{
    self, GuestMemory, HostUsage, ManagerStats, NetUsage, SandboxMetrics, StartKind,
};
use crate::store::{now_ms, SandboxRecord};
use crate::{CoreError, SandboxState};

impl SandboxManager {
    /// What sandbox `key` costs and does now: how it started and how long
    /// that took, its VMM's host memory (RSS, PSS) and CPU, the guest's own
    /// memory figures, the disk its files take, the commands run in it and
    /// its network traffic. Reading them is not a use: idle timeouts go on
    /// counting. Figures a sandbox cannot give in its state (a paused guest
    /// does not answer) are `None`.
    pub async fn metrics(&self, key: &str) -> Result<SandboxMetrics, CoreError> {
        let record = self.info(key).await?;
        Ok(self.metrics_of(key, record).await)
    }

    /// [`metrics`](Self::metrics) of every sandbox (warm pool ones left
    /// out), read side by side.
    pub async fn metrics_all(&self) -> Result<Vec<SandboxMetrics>, CoreError> {
        let records: Vec<_> = self
            .list()
            .await?
            .into_iter()
            .filter(|r| !r.pooled)
            .collect();
        let ids: std::collections::HashSet<_> = records.iter().map(|r| r.id).collect();
        self.inner
            .cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| ids.contains(id));
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in records.into_iter().enumerate() {
            let m = self.clone();
            set.spawn(async move { (i, m.metrics_of(&r.id.to_string(), r).await) });
        }
        let mut all = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(one) = joined {
                all.push(one);
            }
        }
        all.sort_by_key(|(i, _)| *i);
        Ok(all.into_iter().map(|(_, m)| m).collect())
    }

    async fn metrics_of(&self, key: &str, record: SandboxRecord) -> SandboxMetrics {
        let held = self.live().get(&record.id).cloned();
        let (pending, pending_us) = held.as_ref().map_or((0, 0), |sb| sb.usage().peek());
        let pid = record.vmm_pid.filter(|_| record.state.has_vm());
        let disk_at = self.disk_path(&record);
        let (sample, disk_bytes) = blocking(move || {
            Ok((
                pid.and_then(metrics::read_process),
                disk_at.as_deref().map_or(0, metrics::disk_bytes),
            ))
        })
        .await
        .unwrap_or((None, 0));
        let host = match (pid, sample) {
            (Some(pid), Some(now)) => {
                let before = self
                    .inner
                    .cpu_samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(record.id, now);
                Some(HostUsage {
                    pid,
                    rss_bytes: now.rss_bytes,
                    pss_bytes: now.pss_bytes,
                    cpu_seconds: now.cpu_seconds,
                    cpu_percent: now.cpu_percent(before.as_ref()),
                })
            }
            _ => None,
        };
        let guest_memory = if record.state == SandboxState::Ready && host.is_some() {
            self.guest_memory(key, &record).await
        } else {
            None
        };
        let network = match &record.network {
            Some(_) => self.network_status(key).await.ok().map(|(s, _)| NetUsage {
                bytes_out: s.bytes_out,
                bytes_in: s.bytes_in,
                connections: s.connections,
                refused_connections: s.refused_connections,
            }),
            None => None,
        };
        let now = now_ms();
        SandboxMetrics {
            id: record.id,
            name: record.name.clone(),
            state: record.state,
            start_kind: record.start_kind,
            startup_ms: record.startup_ms,
            uptime_ms: (now - record.created_at_ms).max(0) as u64,
            memory_limit_bytes: u64::from(record.memory_mib) << 20,
            vcpus: record.vcpus,
            host,
            guest_memory,
            disk_bytes,
            execs: record.execs + pending,
            exec_seconds: (record.exec_us + pending_us) as f64 / 1e6,
            network,
            sampled_at_ms: now,
        }
    }

    /// The guest's `/proc/meminfo`, read through its agent (attaching if
    /// another process holds the sandbox); `None` if it does not answer.
    async fn guest_memory(&self, key: &str, record: &SandboxRecord) -> Option<GuestMemory> {
        let sb = self.get_by_record(key, record).await.ok()?;
        let text = sb.read_file("/proc/meminfo").await.ok()?;
        metrics::parse_meminfo(&String::from_utf8_lossy(&text))
    }

    /// The manager's totals: sandboxes by state and by how they started
    /// (from the store, so every process's), and this manager's creates,
    /// their success rate and mean time, and the commands run.
    pub async fn stats(&self) -> Result<ManagerStats, CoreError> {
        let records = self.list().await?;
        let by_state = SandboxState::ALL
            .into_iter()
            .map(|s| (s, records.iter().filter(|r| r.state == s).count()))
            .collect();
        let by_start = StartKind::ALL
            .into_iter()
            .map(|k| (k, records.iter().filter(|r| r.start_kind == k).count()))
            .collect();
        let pending: u64 = self.live().values().map(|sb| sb.usage().peek().0).sum();
        let execs = records.iter().map(|r| r.execs).sum::<u64>() + pending;
        let c = &self.inner.counters;
        let creates = c.creates.load(Ordering::Relaxed);
        let failures = c.create_failures.load(Ordering::Relaxed);
        let ok = creates.saturating_sub(failures);
        let uptime = self.inner.opened.elapsed().as_secs_f64();
        let mine = c.execs.load(Ordering::Relaxed) + pending;
        Ok(ManagerStats {
            by_state,
            by_start,
            creates,
            create_failures: failures,
            create_success_rate: if creates == 0 {
                1.0
            } else {
                ok as f64 / creates as f64
            },
            avg_startup_ms: if ok == 0 {
                0.0
            } else {
                c.startup_us.load(Ordering::Relaxed) as f64 / ok as f64 / 1000.0
            },
            execs,
            execs_per_second: if uptime > 0.0 {
                mine as f64 / uptime
            } else {
                0.0
            },
            uptime_seconds: uptime,
        })
    }
}
