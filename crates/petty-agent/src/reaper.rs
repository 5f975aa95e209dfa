//! Reaps every child (PID 1 inherits orphans) and hands exit statuses to the
//! exec threads that wait for their own children.
//!
//! One thread calls `waitpid(-1)`. A child is registered under the same lock
//! the reaper takes before recording a status, so a child that exits before
//! its spawner registered it is never lost, and statuses of orphans nobody
//! waits for are dropped instead of piling up.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

struct State {
    /// Children someone waits for, with their raw wait status once reaped.
    watched: HashMap<libc::pid_t, Option<libc::c_int>>,
    /// Bumped on every registration, so an idle reaper knows to call waitpid again.
    generation: u64,
}

/// The process-wide reaper.
pub struct Reaper {
    state: Mutex<State>,
    cv: Condvar,
}

static REAPER: OnceLock<&'static Reaper> = OnceLock::new();

/// The reaper, started on first use.
pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        let r: &'static Reaper = Box::leak(Box::new(Reaper {
            state: Mutex::new(State {
                watched: HashMap::new(),
                generation: 0,
            }),
            cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())
            .expect("spawn reaper thread");
        r
    })
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            let gen_before = self.lock().generation;
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes only to `status`, a valid c_int.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                let mut st = self.lock();
                if let Some(slot) = st.watched.get_mut(&pid) {
                    *slot = Some(status);
                    self.cv.notify_all();
                }
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => {
                    // No children: sleep until someone spawns one.
                    let mut st = self.lock();
                    while st.generation == gen_before {
                        st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }

    /// Runs `spawn` (which forks) under the reaper's lock and registers the
    /// child it returns, so its status cannot be reaped unseen.
    pub fn spawn_watched<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<(libc::pid_t, T)>,
    ) -> std::io::Result<(libc::pid_t, T)> {
        let mut st = self.lock();
        let (pid, v) = spawn()?;
        st.watched.insert(pid, None);
        st.generation += 1;
        self.cv.notify_all();
        Ok((pid, v))
    }

    /// Waits for `pid`'s raw wait status until `deadline`; `None` on timeout
    /// (the child stays registered).
    pub fn wait(&self, pid: libc::pid_t, deadline: Option<Instant>) -> Option<libc::c_int> {
        let mut st = self.lock();
        loop {
            if let Some(Some(status)) = st.watched.get(&pid) {
                let status = *status;
                st.watched.remove(&pid);
                return Some(status);
            }
            match deadline {
                None => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    let wait = (d - now).min(Duration::from_secs(3600));
                    st = self
                        .cv
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}
