//! Reaps every child (PID 1 inherits orphans) and hands exit statuses to the
//! exec threads that wait for their own children.
//!
//! One thread waits for any child. A child is registered under the same lock
//! the reaper takes before it looks at one, so a child that exits before its
//! spawner registered it is never lost; statuses of orphans nobody waits for
//! are dropped instead of piling up. An exec thread reaps its own child
//! through a pidfd (one thread wake-up less per exec, which under emulation
//! is measurable); the reaper leaves such children to it.

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
            // Peek at the next child that exited, without reaping it.
            // SAFETY: siginfo_t is plain data that waitid fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a valid siginfo_t pointer.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc == 0 {
                // SAFETY: waitid succeeded, so si_pid is set.
                let pid = unsafe { info.si_pid() };
                self.collect(pid);
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

    /// Reaps exited child `pid`, unless its spawner reaps it itself
    /// ([`reap_own`](Self::reap_own), which saves a thread hand-off per
    /// exec); a spawner that has not done so within a second is done for.
    fn collect(&self, pid: libc::pid_t) {
        let mut st = self.lock();
        let deadline = Instant::now() + Duration::from_secs(1);
        while st.watched.get(&pid) == Some(&None) && Instant::now() < deadline {
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only to `status`; WNOHANG never blocks.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid {
            if let Some(slot) = st.watched.get_mut(&pid) {
                *slot = Some(status);
                self.cv.notify_all();
            }
        }
    }

    /// Reaps the caller's own exited child through its pidfd and returns its
    /// raw wait status (falling back to the reaper's record if the reaper
    /// got there first).
    pub fn reap_own(&self, pid: libc::pid_t, pidfd: &std::os::fd::OwnedFd) -> libc::c_int {
        use std::os::fd::AsRawFd;
        // SAFETY: siginfo_t is plain data that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid siginfo_t pointer and a pidfd we own.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc != 0 {
            return self.wait(pid, None).expect("waits without deadline");
        }
        // SAFETY: waitid succeeded, so si_status is set.
        let value = unsafe { info.si_status() };
        let raw = match info.si_code {
            libc::CLD_EXITED => (value & 0xff) << 8,
            libc::CLD_DUMPED => value | 0x80,
            _ => value,
        };
        let mut st = self.lock();
        st.watched.remove(&pid);
        self.cv.notify_all();
        raw
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

    /// Runs `spawn` (which forks) under the reaper's lock, without
    /// registering the child: nobody waits for it, and the reaper reaps it
    /// whenever it ends, as it does an orphan. Until `spawn` returns the
    /// child cannot be reaped, so what it does with the pid (open a pidfd)
    /// names this child.
    pub fn spawn_unwatched<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<(libc::pid_t, T)>,
    ) -> std::io::Result<(libc::pid_t, T)> {
        let mut st = self.lock();
        let spawned = spawn()?;
        // An idle reaper (no children before) must look again.
        st.generation += 1;
        self.cv.notify_all();
        Ok(spawned)
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
