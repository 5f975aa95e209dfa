//! Prometheus metrics in the text exposition format, kept in atomics.
//!
//! Counters and histograms live here; gauges (sandboxes by state, warm pool
//! size) are read from the store and the pool at scrape time, so they are
//! right even for sandboxes another process created.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds: from a pool hit (sub-millisecond) to a cold
/// boot under software emulation (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A cumulative histogram.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything the daemon counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sandboxes created (any way).
    pub creates: AtomicU64,
    /// Creates that failed.
    pub create_failures: AtomicU64,
    /// Sandboxes destroyed through the API.
    pub destroys: AtomicU64,
    /// Commands run (exec and run-code, REST and MCP).
    pub execs: AtomicU64,
    /// Failures talking to a guest agent (lost connection, timeout, protocol).
    pub agent_errors: AtomicU64,
    /// Snapshots taken.
    pub snapshots: AtomicU64,
    /// Template builds that made a template.
    pub template_builds: AtomicU64,
    /// Template builds that failed or were given up on.
    pub template_build_failures: AtomicU64,
    /// Time to a ready sandbox for a new create (template restore or boot).
    pub boot_latency: Histogram,
    /// Time to a ready sandbox restored from a named snapshot (restore, each fork child).
    pub restore_latency: Histogram,
    /// Exec round trip, start to exit.
    pub exec_latency: Histogram,
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// (state, count) for every state.
    pub by_state: Vec<(&'static str, u64)>,
    /// Warm sandboxes ready now.
    pub pool_ready: u64,
    /// Acquires served warm.
    pub pool_hits: u64,
    /// Acquires that had to create.
    pub pool_misses: u64,
    /// Each `templates.warm` pool: (template, ready, hits, misses).
    pub template_pools: Vec<(String, u64, u64, u64)>,
}

impl Metrics {
    /// The text exposition of everything.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP petty_sandboxes Sandboxes by state (warm pool included).\n# TYPE petty_sandboxes gauge"
        );
        for (state, n) in &g.by_state {
            let _ = writeln!(out, "petty_sandboxes{{state=\"{state}\"}} {n}");
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "petty_sandboxes_created_total",
            "Sandboxes created.",
            load(&self.creates),
        );
        counter(
            &mut out,
            "petty_sandbox_create_failures_total",
            "Creates that failed.",
            load(&self.create_failures),
        );
        counter(
            &mut out,
            "petty_sandboxes_destroyed_total",
            "Sandboxes destroyed.",
            load(&self.destroys),
        );
        counter(
            &mut out,
            "petty_exec_total",
            "Commands run.",
            load(&self.execs),
        );
        counter(
            &mut out,
            "petty_agent_errors_total",
            "Failures talking to a guest agent.",
            load(&self.agent_errors),
        );
        counter(
            &mut out,
            "petty_snapshots_created_total",
            "Snapshots taken.",
            load(&self.snapshots),
        );
        counter(
            &mut out,
            "petty_pool_hits_total",
            "Creates served from the warm pool.",
            g.pool_hits,
        );
        counter(
            &mut out,
            "petty_pool_misses_total",
            "Pool acquires that had to create a sandbox.",
            g.pool_misses,
        );
        let _ = writeln!(
            out,
            "# HELP petty_pool_ready Warm sandboxes ready now.\n# TYPE petty_pool_ready gauge\npetty_pool_ready {}",
            g.pool_ready
        );
        counter(
            &mut out,
            "petty_template_builds_total",
            "Template builds that made a template.",
            load(&self.template_builds),
        );
        counter(
            &mut out,
            "petty_template_build_failures_total",
            "Template builds that failed or were given up on.",
            load(&self.template_build_failures),
        );
        if !g.template_pools.is_empty() {
            // Template names are letters, digits, '-', '_' and '.': no
            // escaping needed in a label.
            let _ = writeln!(
                out,
                "# HELP petty_template_pool_ready Warm sandboxes of each templates.warm template ready now.\n# TYPE petty_template_pool_ready gauge"
            );
            for (t, ready, _, _) in &g.template_pools {
                let _ = writeln!(out, "petty_template_pool_ready{{template=\"{t}\"}} {ready}");
            }
            let _ = writeln!(
                out,
                "# HELP petty_template_pool_hits_total Creates served from a template's warm pool.\n# TYPE petty_template_pool_hits_total counter"
            );
            for (t, _, hits, _) in &g.template_pools {
                let _ = writeln!(
                    out,
                    "petty_template_pool_hits_total{{template=\"{t}\"}} {hits}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP petty_template_pool_misses_total Template pool acquires that had to create.\n# TYPE petty_template_pool_misses_total counter"
            );
            for (t, _, _, misses) in &g.template_pools {
                let _ = writeln!(
                    out,
                    "petty_template_pool_misses_total{{template=\"{t}\"}} {misses}"
                );
            }
        }
        self.boot_latency.render(
            &mut out,
            "petty_sandbox_boot_seconds",
            "Time from create request to a ready sandbox.",
        );
        self.restore_latency.render(
            &mut out,
            "petty_sandbox_restore_seconds",
            "Time from restore or fork request to a ready sandbox (per sandbox).",
        );
        self.exec_latency.render(
            &mut out,
            "petty_exec_seconds",
            "Command round trip, start to exit.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(700));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.001\"} 0"));
        assert!(s.contains("x_bucket{le=\"0.005\"} 1"));
        assert!(s.contains("x_bucket{le=\"1\"} 2"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 2"));
        assert!(s.contains("x_count 2"));
    }
}
