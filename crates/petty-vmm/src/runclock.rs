//! A clock of how long a VMM could run: wall time less the longest any of
//! its threads waited for a CPU (the kernel's per-thread run delay,
//! `/proc/<pid>/task/*/schedstat`). On a quiet host it keeps pace with the
//! wall clock; on one where twenty VMs boot on two cores it runs slower, so
//! a deadline on it measures the guest's progress, not the host's queue.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// See the module docs. Where schedstats are missing it is the wall clock.
#[derive(Debug)]
pub struct RunClock {
    pid: u32,
    started: Instant,
    base: HashMap<u32, u64>,
}

impl RunClock {
    /// Starts the clock for the VMM process `pid`.
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            started: Instant::now(),
            base: run_delays(pid),
        }
    }

    /// The time since the start that the VMM was not kept waiting.
    pub fn elapsed(&self) -> Duration {
        let waited = run_delays(self.pid)
            .into_iter()
            .map(|(tid, ns)| ns.saturating_sub(self.base.get(&tid).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_nanos(waited))
    }

    /// Wall time since the start.
    pub fn wall(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Each thread of `pid` and the nanoseconds it has spent runnable but not
/// running.
fn run_delays(pid: u32) -> HashMap<u32, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((tid, stat.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_process_s_clock_keeps_pace_with_the_wall() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let clock = RunClock::start(child.id());
        std::thread::sleep(Duration::from_millis(200));
        let (ran, wall) = (clock.elapsed(), clock.wall());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ran <= wall);
        // A sleeping process waits for no CPU.
        assert!(
            wall - ran < Duration::from_millis(100),
            "{ran:?} of {wall:?}"
        );
    }

    #[test]
    fn a_starved_process_s_clock_falls_behind() {
        // Two busy threads pinned to one CPU: each waits about half the time.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec taskset -c 0 sh -c 'while :; do :; done & while :; do :; done'")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The inner shell (the child itself after exec) and its busy child
        // are separate processes: watch the parent's waits.
        let clock = RunClock::start(child.id());
        std::thread::sleep(Duration::from_millis(600));
        let (ran, wall) = (clock.elapsed(), clock.wall());
        let _ = std::process::Command::new("pkill")
            .args(["-P", &child.id().to_string()])
            .status();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            ran < wall - Duration::from_millis(150),
            "{ran:?} of {wall:?}"
        );
    }
}
