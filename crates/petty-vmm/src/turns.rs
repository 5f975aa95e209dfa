//! Turns to start a VM, shared by every Petty process on the host.
//!
//! A VM's start (a cold boot, most of all under TCG) is CPU-bound until its
//! agent answers. Twenty processes booting at once on two cores each take
//! ten times as long, and all of them miss their deadline. Turns make load
//! slower, never failed: a start takes one of a fixed number of slots (lock
//! files under the run root, held with `flock`), and its deadlines start
//! once it has one. A process that dies releases its slot with it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::VmmError;

/// Directory under the run root holding the slot files.
const TURNS_DIR: &str = ".turns";

/// How long a start waits for a slot before giving up: far more than any
/// start holds one, so only a host overloaded for minutes (or a start that
/// hangs, which its own deadline ends) gets here.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// How often a waiting start tries the slots again.
const RETRY: Duration = Duration::from_millis(15);

/// The CPUs this process may use: the default number of slots.
pub(crate) fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The slots of one run root.
#[derive(Debug, Clone)]
pub struct BootTurns {
    root: PathBuf,
    dir: PathBuf,
    slots: usize,
}

/// A slot held: dropping it lets the next start go.
#[derive(Debug)]
pub struct BootTurn {
    _slot: File,
}

impl BootTurns {
    /// `slots` starts at once (at least one) among the processes whose run
    /// root is `root`.
    pub fn new(root: &Path, slots: usize) -> Self {
        Self {
            root: root.to_path_buf(),
            dir: root.join(TURNS_DIR),
            slots: slots.max(1),
        }
    }

    /// How many starts may run at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Waits for a free slot (up to ten minutes) and takes it.
    pub async fn acquire(&self) -> Result<BootTurn, VmmError> {
        let started = tokio::time::Instant::now();
        let mut logged = false;
        loop {
            let turns = self.clone();
            let taken = tokio::task::spawn_blocking(move || turns.try_acquire())
                .await
                .map_err(|e| self.fail(std::io::Error::other(e)))??;
            if let Some(turn) = taken {
                if logged {
                    tracing::debug!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "got a turn to start a VM"
                    );
                }
                return Ok(turn);
            }
            if !logged {
                tracing::debug!(
                    slots = self.slots,
                    "every turn to start a VM is taken; waiting"
                );
                logged = true;
            }
            if started.elapsed() >= MAX_WAIT {
                return Err(VmmError::NoTurn {
                    slots: self.slots,
                    secs: MAX_WAIT.as_secs(),
                });
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// A free slot, if there is one now.
    fn try_acquire(&self) -> Result<Option<BootTurn>, VmmError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // The slots live in the run root: it must be ours before anything
        // is made in it.
        crate::ensure_run_root(&self.root)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(self.fail(e)),
            _ => {}
        }
        for k in 0..self.slots {
            // Close-on-exec (std's default): a VMM spawned while the slot is
            // held must not inherit it and hold it for its whole life.
            let slot = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.dir.join(k.to_string()))
                .map_err(|e| self.fail(e))?;
            // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
            if unsafe { libc::flock(slot.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(BootTurn { _slot: slot }));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(self.fail(e));
            }
        }
        Ok(None)
    }

    fn fail(&self, source: std::io::Error) -> VmmError {
        VmmError::Prepare {
            dir: self.dir.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_shared_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        // A run root not made yet: taking a turn makes it (private).
        let root = tmp.path().join("run");
        let turns = BootTurns::new(&root, 2);
        let a = turns.acquire().await.unwrap();
        let b = turns.acquire().await.unwrap();
        // A second process's view of the same root: the same two slots.
        let other = BootTurns::new(&root, 2);
        assert!(
            other.try_acquire().unwrap().is_none(),
            "both slots are held"
        );
        drop(a);
        let c = other.try_acquire().unwrap().expect("a slot was freed");
        assert!(turns.try_acquire().unwrap().is_none());
        drop((b, c));
        assert!(turns.try_acquire().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_waiting_start_gets_the_slot_when_it_is_freed() {
        let tmp = tempfile::tempdir().unwrap();
        let turns = BootTurns::new(&tmp.path().join("run"), 1);
        let held = turns.acquire().await.unwrap();
        let waiter = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.acquire().await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "it waits while the slot is held");
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter gets the freed slot")
            .unwrap();
        assert!(got.is_ok());
    }

    #[test]
    fn a_slot_is_not_inherited_by_a_child_process() {
        let tmp = tempfile::tempdir().unwrap();
        let turns = BootTurns::new(&tmp.path().join("run"), 1);
        let held = turns.try_acquire().unwrap().unwrap();
        // A child started while the slot is held (as a VMM is) must not keep it.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        drop(held);
        let again = turns.try_acquire().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(again.is_some(), "the child held the slot");
    }
}
