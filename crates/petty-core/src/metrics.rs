//! What each sandbox costs and does: how it started, the host memory and
//! CPU its VMM uses, the guest's own view of its memory, its disk, its
//! execs and its network traffic ([`SandboxManager::metrics`]), and the
//! manager's totals ([`SandboxManager::stats`]).
//!
//! Host figures come from `/proc` (the VMM's `smaps_rollup` and `stat`) and
//! the sandbox's run directory, so any process on the data directory can
//! read them; the guest's from its `/proc/meminfo`, read through the agent.
//!
//! [`SandboxManager::metrics`]: crate::SandboxManager::metrics
//! [`SandboxManager::stats`]: crate::SandboxManager::stats

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{SandboxId, SandboxState};

/// How a sandbox came to be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartKind {
    /// Booted its kernel (templates off, or a backend that cannot restore).
    Cold,
    /// Restored from the template snapshot of its image.
    Template,
    /// Handed out ready by a warm pool.
    Pool,
    /// Restored from a snapshot a user took.
    Restore,
    /// Forked or branched from a sandbox or snapshot.
    Fork,
    /// Attached to a VM another process started, or a row older than this
    /// record.
    Unknown,
}

impl StartKind {
    /// Every kind, in the order tables show them.
    pub const ALL: [StartKind; 6] = [
        StartKind::Cold,
        StartKind::Template,
        StartKind::Pool,
        StartKind::Restore,
        StartKind::Fork,
        StartKind::Unknown,
    ];

    /// Its name as stored and shown (`cold`, `template`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Template => "template",
            StartKind::Pool => "pool",
            StartKind::Restore => "restore",
            StartKind::Fork => "fork",
            StartKind::Unknown => "unknown",
        }
    }

    /// The kind named `s`; anything else is [`StartKind::Unknown`].
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(StartKind::Unknown)
    }
}

impl std::fmt::Display for StartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sandbox's figures at one moment ([`crate::SandboxManager::metrics`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxMetrics {
    /// The sandbox.
    pub id: SandboxId,
    /// Its name.
    pub name: String,
    /// Its state now.
    pub state: SandboxState,
    /// How it started.
    pub start_kind: StartKind,
    /// From the create call to ready (for a pooled one: the hand-out), ms.
    pub startup_ms: Option<u64>,
    /// Since it was created (or handed out), ms.
    pub uptime_ms: u64,
    /// Guest memory it was given, bytes.
    pub memory_limit_bytes: u64,
    /// Its vCPUs.
    pub vcpus: u32,
    /// The VMM process's figures (`None` when it has no live VMM).
    pub host: Option<HostUsage>,
    /// The guest kernel's view of its memory (`None` unless it is ready and
    /// answered).
    pub guest_memory: Option<GuestMemory>,
    /// Host disk its own files take (overlay, logs): what it adds to the
    /// snapshot or template it starts from, bytes.
    pub disk_bytes: u64,
    /// Commands run in it (execs and code runs, streamed or not).
    pub execs: u64,
    /// Their total wall time, seconds.
    pub exec_seconds: f64,
    /// Its network's traffic (`None` without a network).
    pub network: Option<NetUsage>,
    /// When these were read, ms since the epoch.
    pub sampled_at_ms: i64,
}

/// What a VMM process uses on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostUsage {
    /// Its process id.
    pub pid: u32,
    /// Resident memory, bytes (pages shared with other VMMs, such as a
    /// template's RAM file, count in full).
    pub rss_bytes: u64,
    /// Proportional resident memory, bytes: shared pages divided among the
    /// processes that map them, so the PSS of all sandboxes adds up to what
    /// they use together.
    pub pss_bytes: u64,
    /// CPU time used since it started (user + system), seconds.
    pub cpu_seconds: f64,
    /// CPU use, percent of one host core: over the time since this process
    /// last sampled this sandbox, or since the VMM started on the first
    /// sample.
    pub cpu_percent: f64,
}

/// The guest's memory as its `/proc/meminfo` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMemory {
    /// `MemTotal`, bytes.
    pub total_bytes: u64,
    /// `MemAvailable`, bytes.
    pub available_bytes: u64,
    /// `total - available`, bytes.
    pub used_bytes: u64,
}

/// A sandbox network's traffic so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetUsage {
    /// Bytes from the guest out.
    pub bytes_out: u64,
    /// Bytes from outside to the guest.
    pub bytes_in: u64,
    /// Connections let through.
    pub connections: u64,
    /// Connections refused.
    pub refused_connections: u64,
}

/// The manager's totals ([`crate::SandboxManager::stats`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerStats {
    /// Sandboxes in each state now (every state listed, zeros included).
    pub by_state: Vec<(SandboxState, usize)>,
    /// Sandboxes now, by how they started.
    pub by_start: Vec<(StartKind, usize)>,
    /// Creates this manager attempted (every kind: boots, restores, forks).
    pub creates: u64,
    /// Of those, the ones that failed.
    pub create_failures: u64,
    /// `(creates - failures) / creates`, 1 before any.
    pub create_success_rate: f64,
    /// Mean create time of the successful ones, ms.
    pub avg_startup_ms: f64,
    /// Commands run in sandboxes that exist now (from the store: every
    /// process's).
    pub execs: u64,
    /// Commands per second over this manager's life.
    pub execs_per_second: f64,
    /// Since this manager opened, seconds.
    pub uptime_seconds: f64,
}

/// Counters of one manager process ([`ManagerStats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) creates: std::sync::atomic::AtomicU64,
    pub(crate) create_failures: std::sync::atomic::AtomicU64,
    pub(crate) startup_us: std::sync::atomic::AtomicU64,
    pub(crate) execs: std::sync::atomic::AtomicU64,
}

/// What process `pid` uses on the host now (its CPU percent over its
/// whole life); `None` when it is gone.
pub fn host_usage(pid: u32) -> Option<HostUsage> {
    let s = read_process(pid)?;
    Some(HostUsage {
        pid,
        rss_bytes: s.rss_bytes,
        pss_bytes: s.pss_bytes,
        cpu_seconds: s.cpu_seconds,
        cpu_percent: s.cpu_percent(None),
    })
}

/// A VMM's `/proc` figures. `None` when the process is gone.
pub(crate) fn read_process(pid: u32) -> Option<ProcessSample> {
    let proc = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
    let (cpu_ticks, start_ticks) = parse_stat(&stat)?;
    // Absent before Linux 4.14: RSS from `status` then, no PSS.
    let (rss, pss) = match std::fs::read_to_string(proc.join("smaps_rollup")) {
        Ok(s) => (kib_field(&s, "Rss:"), kib_field(&s, "Pss:")),
        Err(_) => {
            let s = std::fs::read_to_string(proc.join("status")).ok()?;
            (kib_field(&s, "VmRSS:"), None)
        }
    };
    let tick = clock_tick();
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())?;
    let rss = rss.unwrap_or(0);
    Some(ProcessSample {
        at: Instant::now(),
        cpu_seconds: cpu_ticks as f64 / tick,
        age_seconds: (uptime - start_ticks as f64 / tick).max(0.0),
        rss_bytes: rss,
        pss_bytes: pss.unwrap_or(rss),
    })
}

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessSample {
    pub(crate) at: Instant,
    pub(crate) cpu_seconds: f64,
    /// Since the process started, seconds.
    pub(crate) age_seconds: f64,
    pub(crate) rss_bytes: u64,
    pub(crate) pss_bytes: u64,
}

impl ProcessSample {
    /// CPU percent since `before` (a sample of the same process taken at
    /// least a few ms earlier), else since the process started.
    pub(crate) fn cpu_percent(&self, before: Option<&ProcessSample>) -> f64 {
        let (cpu, secs) = match before {
            Some(b) if self.at.duration_since(b.at) >= Duration::from_millis(50) => (
                self.cpu_seconds - b.cpu_seconds,
                self.at.duration_since(b.at).as_secs_f64(),
            ),
            _ => (self.cpu_seconds, self.age_seconds),
        };
        if secs <= 0.0 {
            0.0
        } else {
            (cpu.max(0.0) / secs * 100.0).max(0.0)
        }
    }
}

fn clock_tick() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(utime + stime, starttime)` in clock ticks from a `/proc/PID/stat`
/// line. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15,
    // starttime 22.
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// A `NAME:   123 kB` line's value in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The guest's memory from the text of its `/proc/meminfo`.
pub(crate) fn parse_meminfo(text: &str) -> Option<GuestMemory> {
    let total = kib_field(text, "MemTotal:")?;
    let available = kib_field(text, "MemAvailable:")?;
    Some(GuestMemory {
        total_bytes: total,
        available_bytes: available,
        used_bytes: total.saturating_sub(available),
    })
}

/// Bytes the regular files under `dir` (or the file `dir` itself) take on
/// disk (allocated blocks, so holes in a sparse overlay cost nothing), not
/// following links.
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    if let Ok(md) = dir.symlink_metadata() {
        if md.is_file() {
            return md.blocks() * 512;
        }
    }
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                dirs.push(e.path());
            } else if md.is_file() {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as QEMU's is not
        // but a renamed one could be.
        let line = "4242 (qemu sys) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 12345 1000000 300 18446744073709551615";
        assert_eq!(parse_stat(line), Some((300, 12345)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn meminfo_gives_used_as_total_less_available() {
        let text = "MemTotal:         249876 kB\nMemFree:          200000 kB\n\
                    MemAvailable:     210000 kB\nBuffers:            1000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(GuestMemory {
                total_bytes: 249876 * 1024,
                available_bytes: 210000 * 1024,
                used_bytes: 39876 * 1024,
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cpu_percent_is_over_the_interval_or_the_whole_life() {
        let at = Instant::now();
        let first = ProcessSample {
            at,
            cpu_seconds: 2.0,
            age_seconds: 4.0,
            rss_bytes: 0,
            pss_bytes: 0,
        };
        assert_eq!(first.cpu_percent(None), 50.0);
        let later = ProcessSample {
            at: at + Duration::from_secs(2),
            cpu_seconds: 4.0,
            age_seconds: 6.0,
            ..first
        };
        assert_eq!(later.cpu_percent(Some(&first)), 100.0);
        // Too soon after the last one to say: the whole life.
        let soon = ProcessSample {
            at: at + Duration::from_millis(1),
            ..later
        };
        assert!((soon.cpu_percent(Some(&first)) - 4.0 / 6.0 * 100.0).abs() < 1e-9);
    }

    #[test]
    fn start_kinds_round_trip_and_unknown_names_are_unknown() {
        for k in StartKind::ALL {
            assert_eq!(StartKind::parse(k.as_str()), k);
        }
        assert_eq!(StartKind::parse("warp"), StartKind::Unknown);
    }

    #[test]
    fn a_sparse_file_costs_only_its_written_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), vec![1u8; 8192]).unwrap();
        let n = disk_bytes(dir.path());
        assert!((8192..1 << 20).contains(&n), "{n}");
    }
}
