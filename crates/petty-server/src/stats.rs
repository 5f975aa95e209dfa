//! Per-sandbox metrics and the daemon's totals as the API shows them
//! (`GET /v1/sandboxes/{id}/metrics`, `GET /v1/stats`, the
//! `sandbox_metrics` tool, and the opt-in per-sandbox Prometheus series).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use petty_core::{ManagerStats, SandboxMetrics};
use serde::{Deserialize, Serialize};

use crate::error::ApiResult;
use crate::service::{PoolView, Service};

/// One sandbox's figures at one moment.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct SandboxMetricsView {
    /// Unique id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Its state now.
    pub state: String,
    /// How it started: `cold` (booted), `template` (restored from its
    /// image's template), `pool` (handed out warm), `restore` (from a
    /// snapshot), `fork` (a fork or branch child) or `unknown`.
    pub start_kind: String,
    /// From the create call to ready (a pooled one: its hand-out), ms.
    pub startup_ms: Option<u64>,
    /// Since it was created (or handed out), ms.
    pub uptime_ms: u64,
    /// vCPUs.
    pub vcpu: u32,
    /// Guest memory it was given, bytes.
    pub memory_limit_bytes: u64,
    /// The VMM's process id (none without a live VMM).
    pub vmm_pid: Option<u32>,
    /// The VMM's resident host memory, bytes (shared pages in full).
    pub host_rss_bytes: Option<u64>,
    /// The VMM's proportional resident host memory, bytes: shared pages
    /// (a template's RAM) divided among the VMMs mapping them.
    pub host_pss_bytes: Option<u64>,
    /// Host CPU time the VMM used, seconds.
    pub cpu_seconds: Option<f64>,
    /// Host CPU use, percent of one core, since this server last sampled
    /// the sandbox (or since its VMM started, on the first sample).
    pub cpu_percent: Option<f64>,
    /// The guest's `MemTotal`, bytes (none unless it is ready).
    pub guest_memory_total_bytes: Option<u64>,
    /// The guest's `MemTotal - MemAvailable`, bytes.
    pub guest_memory_used_bytes: Option<u64>,
    /// The guest's `MemAvailable`, bytes.
    pub guest_memory_available_bytes: Option<u64>,
    /// Host disk its own files take (overlay, logs), bytes.
    pub disk_bytes: u64,
    /// Commands run in it.
    pub execs: u64,
    /// Their total wall time, seconds.
    pub exec_seconds: f64,
    /// Bytes from the guest out (none without a network).
    pub net_bytes_out: Option<u64>,
    /// Bytes from outside to the guest.
    pub net_bytes_in: Option<u64>,
    /// Connections let through.
    pub net_connections: Option<u64>,
    /// When these were read, ms since the Unix epoch.
    pub sampled_at_ms: i64,
}

impl From<SandboxMetrics> for SandboxMetricsView {
    fn from(m: SandboxMetrics) -> Self {
        Self {
            id: m.id.to_string(),
            name: m.name,
            state: m.state.to_string(),
            start_kind: m.start_kind.to_string(),
            startup_ms: m.startup_ms,
            uptime_ms: m.uptime_ms,
            vcpu: m.vcpus,
            memory_limit_bytes: m.memory_limit_bytes,
            vmm_pid: m.host.map(|h| h.pid),
            host_rss_bytes: m.host.map(|h| h.rss_bytes),
            host_pss_bytes: m.host.map(|h| h.pss_bytes),
            cpu_seconds: m.host.map(|h| h.cpu_seconds),
            cpu_percent: m.host.map(|h| h.cpu_percent),
            guest_memory_total_bytes: m.guest_memory.map(|g| g.total_bytes),
            guest_memory_used_bytes: m.guest_memory.map(|g| g.used_bytes),
            guest_memory_available_bytes: m.guest_memory.map(|g| g.available_bytes),
            disk_bytes: m.disk_bytes,
            execs: m.execs,
            exec_seconds: m.exec_seconds,
            net_bytes_out: m.network.map(|n| n.bytes_out),
            net_bytes_in: m.network.map(|n| n.bytes_in),
            net_connections: m.network.map(|n| n.connections),
            sampled_at_ms: m.sampled_at_ms,
        }
    }
}

/// The daemon's totals: sandboxes, creates, commands, and its pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsView {
    /// Sandboxes in each state (warm pool ones included).
    pub sandboxes_by_state: BTreeMap<String, usize>,
    /// Sandboxes by how they started (`cold`, `template`, `pool`,
    /// `restore`, `fork`, `unknown`).
    pub sandboxes_by_start: BTreeMap<String, usize>,
    /// Creates this server attempted (boots, restores, fork children, pool fills).
    pub creates: u64,
    /// Of those, the ones that failed.
    pub create_failures: u64,
    /// Share of creates that succeeded (1 before any).
    pub create_success_rate: f64,
    /// Mean time of a successful create, ms.
    pub avg_startup_ms: f64,
    /// Commands run in the sandboxes that exist now.
    pub execs: u64,
    /// Commands per second this server ran, over its life.
    pub execs_per_second: f64,
    /// Since the server started, seconds.
    pub uptime_seconds: f64,
    /// The warm pool.
    pub pool: PoolView,
}

impl StatsView {
    fn new(s: ManagerStats, pool: PoolView) -> Self {
        Self {
            sandboxes_by_state: s
                .by_state
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            sandboxes_by_start: s
                .by_start
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            creates: s.creates,
            create_failures: s.create_failures,
            create_success_rate: s.create_success_rate,
            avg_startup_ms: s.avg_startup_ms,
            execs: s.execs,
            execs_per_second: s.execs_per_second,
            uptime_seconds: s.uptime_seconds,
            pool,
        }
    }
}

/// A release: the sandbox given back and the pool that took it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct ReleaseView {
    /// The sandbox given back (gone now; its id is not used again).
    pub released: String,
    /// The pool that restored a fresh sandbox in its place: `base` (the
    /// `pool.size` pool) or a `templates.warm` template's name.
    pub pool: String,
}

impl Service {
    /// Gives sandbox `key` back to the warm pool its kind comes from (the
    /// base pool, or its template's `templates.warm` pool): it is destroyed
    /// and the pool restores a fresh one from the template in its place
    /// ([`petty_core::SandboxPool::release`]). Without such a pool: a 409
    /// that says to destroy it.
    #[tracing::instrument(skip(self))]
    pub async fn release(&self, key: &str) -> ApiResult<ReleaseView> {
        let view = self.get(key).await?;
        let record = self
            .inner()
            .manager
            .info(&view.id)
            .await
            .map_err(|e| self.fail(e))?;
        let pools = self
            .base_pool()
            .map(|p| ("base".to_string(), p))
            .into_iter()
            .chain(self.template_pools());
        for (name, pool) in pools {
            if pool.fits(&record) {
                pool.release(&view.id).await.map_err(|e| self.fail(e))?;
                self.inner()
                    .metrics
                    .destroys
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(pool = %name, "released");
                return Ok(ReleaseView {
                    released: view.name,
                    pool: name,
                });
            }
        }
        Err(crate::error::ApiError::new(
            crate::error::ErrorKind::Conflict,
            format!(
                "no warm pool makes sandboxes like {} (pool.size is 0, or its image, memory or vCPUs are another pool's or none's); destroy it instead",
                view.name
            ),
        ))
    }

    /// What sandbox `key` costs and does now (see
    /// [`petty_core::SandboxManager::metrics`]). Reading it is not a use.
    #[tracing::instrument(skip(self))]
    pub async fn sandbox_metrics(&self, key: &str) -> ApiResult<SandboxMetricsView> {
        // Through the service's lookup: a warm pool's sandbox is not found.
        let id = self.get(key).await?.id;
        let m = self
            .inner()
            .manager
            .metrics(&id)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(m.into())
    }

    /// The daemon's totals and its pool's figures.
    pub async fn stats(&self) -> ApiResult<StatsView> {
        let s = self
            .inner()
            .manager
            .stats()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(StatsView::new(s, self.pool_stats()))
    }

    /// The per-sandbox Prometheus series (`server.per_sandbox_metrics`):
    /// one series per sandbox and figure, labelled with its name.
    pub(crate) async fn render_sandbox_metrics(&self, out: &mut String) -> ApiResult<()> {
        let all = self
            .inner()
            .manager
            .metrics_all()
            .await
            .map_err(|e| self.fail(e))?;
        type Figure = fn(&SandboxMetrics) -> Option<f64>;
        let figures: [(&str, &str, &str, Figure); 8] = [
            (
                "petty_sandbox_host_rss_bytes",
                "gauge",
                "Resident host memory of the sandbox's VMM.",
                |m| m.host.map(|h| h.rss_bytes as f64),
            ),
            (
                "petty_sandbox_host_pss_bytes",
                "gauge",
                "Proportional resident host memory of the sandbox's VMM.",
                |m| m.host.map(|h| h.pss_bytes as f64),
            ),
            (
                "petty_sandbox_cpu_seconds_total",
                "counter",
                "Host CPU time of the sandbox's VMM.",
                |m| m.host.map(|h| h.cpu_seconds),
            ),
            (
                "petty_sandbox_guest_memory_used_bytes",
                "gauge",
                "Guest memory in use (MemTotal - MemAvailable).",
                |m| m.guest_memory.map(|g| g.used_bytes as f64),
            ),
            (
                "petty_sandbox_disk_bytes",
                "gauge",
                "Host disk the sandbox's own files take.",
                |m| Some(m.disk_bytes as f64),
            ),
            (
                "petty_sandbox_execs_total",
                "counter",
                "Commands run in the sandbox.",
                |m| Some(m.execs as f64),
            ),
            (
                "petty_sandbox_exec_seconds_total",
                "counter",
                "Wall time of the commands run in the sandbox.",
                |m| Some(m.exec_seconds),
            ),
            (
                "petty_sandbox_startup_seconds",
                "gauge",
                "Time the sandbox took to start, by how it started.",
                |m| m.startup_ms.map(|ms| ms as f64 / 1000.0),
            ),
        ];
        for (name, kind, help, figure) in figures {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in &all {
                let Some(v) = figure(m) else { continue };
                let label = escape_label(&m.name);
                if name == "petty_sandbox_startup_seconds" {
                    let _ = writeln!(
                        out,
                        "{name}{{sandbox=\"{label}\",start=\"{}\"}} {v}",
                        m.start_kind
                    );
                } else {
                    let _ = writeln!(out, "{name}{{sandbox=\"{label}\"}} {v}");
                }
            }
        }
        Ok(())
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
