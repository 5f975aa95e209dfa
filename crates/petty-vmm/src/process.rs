//! The VMM process and its run directory, whatever the backend: created,
//! spawned (dying with its parent, or detached in a session of its own),
//! watched, and torn down on every path.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::rundir::{
    ensure_run_root, kill_vmm, remove_run_dir, vmm_alive, write_owner, DETACHED_MARKER, PID_FILE,
    STAGING_PREFIX,
};
use crate::{BoxFuture, VmConfig, VmNetwork, VmmError};

/// One VMM process and its run directory. Dropping it kills the process and
/// removes the directory, unless it was detached.
///
/// Every backend keeps its VMs' run directories this way (made whole under
/// the run root, owner recorded, detached marker, pid file), because the
/// sweep and the sandbox store's recovery read them; a backend outside this
/// crate (a test's stand-in) uses it too.
pub struct VmmProcess {
    /// The VM's id: the run directory's name.
    pub id: String,
    /// The run directory.
    pub dir: PathBuf,
    /// The VMM's process id; 0 until [`VmmProcess::spawn`].
    pub pid: u32,
    /// Set when this process started the VMM; `None` for an attached one.
    child: Mutex<Option<Child>>,
    /// Set by `detach`: dropping then leaves the VM running.
    detached: AtomicBool,
}

impl VmmProcess {
    /// Creates the run directory of `config` under `root` (private), records
    /// who made it, and marks it detached when the VM outlives its creator.
    /// The directory appears whole: it is made under a staging name, its
    /// owner file (and marker) written, then renamed into place, so another
    /// process's sweep never sees it without its owner. From here on,
    /// dropping the result removes the directory.
    pub fn prepare(root: &Path, config: &VmConfig) -> Result<Self, VmmError> {
        ensure_run_root(root)?;
        let dir = root.join(&config.id);
        let prepare = |source| VmmError::Prepare {
            dir: dir.clone(),
            source,
        };
        let staging = root.join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            config.id
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(prepare)?;
        let staged = (|| {
            // Who made this directory, for the sweep, should we die before
            // recording the VMM's pid.
            write_owner(&staging)?;
            if !config.die_with_parent && !config.standby {
                fs::write(staging.join(DETACHED_MARKER), b"")?;
            }
            if dir.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a run directory with this id exists",
                ));
            }
            fs::rename(&staging, &dir)
        })();
        if let Err(e) = staged {
            let _ = fs::remove_dir_all(&staging);
            return Err(prepare(e));
        }
        Ok(Self {
            id: config.id.clone(),
            dir,
            pid: 0,
            child: Mutex::new(None),
            detached: AtomicBool::new(false),
        })
    }

    /// Marks the run directory as belonging to the sandbox store (its VM
    /// outlives this process).
    pub fn mark_detached(&self) -> Result<(), VmmError> {
        fs::write(self.dir.join(DETACHED_MARKER), b"").map_err(|source| VmmError::Prepare {
            dir: self.dir.clone(),
            source,
        })
    }

    /// A VMM another process started, already checked to be alive.
    pub fn attached(id: &str, dir: PathBuf, pid: u32) -> Self {
        Self {
            id: id.into(),
            dir,
            pid,
            child: Mutex::new(None),
            detached: AtomicBool::new(false),
        }
    }

    /// Spawns `cmd` as this VM's VMM and records its pid.
    ///
    /// With `die_with_parent` it gets its own process group (a Ctrl-C aimed
    /// at the CLI reaches the CLI, which then tears the VM down in order) and
    /// `PR_SET_PDEATHSIG`, which fires when the spawning *thread* exits: we
    /// spawn from a runtime worker thread, which lives as long as the
    /// process. Otherwise it gets a session of its own, so no terminal hangup
    /// or job-control signal of ours reaches it.
    pub fn spawn(
        &mut self,
        mut cmd: Command,
        die_with_parent: bool,
        binary: &str,
    ) -> Result<(), VmmError> {
        if die_with_parent {
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        } else {
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: binary.into(),
            source,
        })?;
        self.pid = child.id();
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        fs::write(self.dir.join(PID_FILE), self.pid.to_string()).map_err(|source| {
            VmmError::Prepare {
                dir: self.dir.clone(),
                source,
            }
        })
    }

    /// `Some(status)` once the VMM has exited.
    pub fn try_wait(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("unknown ({e})")),
            None if self.pid != 0 && vmm_alive(self.pid, &self.dir) => None,
            None => Some("gone".into()),
        }
    }

    /// True while the VMM runs.
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Kills the VMM, reaps it (or, when another process started it, waits
    /// for it to vanish) and removes the run directory (and the VM's jail,
    /// if it had one). Idempotent. The VM's
    /// state is being thrown away, disk included: no graceful guest shutdown.
    fn teardown(&self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            child.wait()?;
        } else if self.pid != 0 {
            kill_vmm(self.pid, &self.dir);
        }
        // The jail too, when the VM ran in one.
        remove_run_dir(&self.dir)
    }

    /// Lets go of the VMM without stopping it.
    pub fn detach(&self) {
        self.detached.store(true, Ordering::Relaxed);
    }

    /// Ends the VMM, then keeps `file` (a name in the run directory) at
    /// `to` — hard-linked, or copied through `to`'s directory when it lies
    /// on another file system, and replaced atomically — and removes the
    /// rest, on the blocking pool. Should keeping fail, the run directory is
    /// left as it is, so nothing is lost, and the error says where.
    pub fn stop_keeping(self, file: &str, to: PathBuf) -> BoxFuture<'static, Result<(), VmmError>> {
        let file = file.to_string();
        Box::pin(async move {
            let pid = self.pid;
            let err = move |source: std::io::Error| VmmError::Stop { pid, source };
            tokio::task::spawn_blocking(move || -> Result<(), VmmError> {
                if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take()
                {
                    let _ = child.kill();
                    child.wait().map_err(err)?;
                } else if self.pid != 0 {
                    kill_vmm(self.pid, &self.dir);
                }
                keep_file(&self.dir.join(&file), &to).map_err(|e| {
                    // Not torn down when dropped either: the disk stays.
                    self.detach();
                    err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "keeping {} at {}: {e} (the run directory is left as it is)",
                            self.dir.join(&file).display(),
                            to.display()
                        ),
                    ))
                })?;
                remove_run_dir(&self.dir).map_err(err)
            })
            .await
            .map_err(|e| err(std::io::Error::other(e)))?
        })
    }

    /// Hard-links `file` (a name in the run directory) to `to` now, while
    /// the VMM runs, when both lie on one file system: the link is the same
    /// file, so whatever the VM writes until it ends is in it, even should
    /// another process remove the run directory first. Across file systems
    /// it does nothing ([`stop_keeping`](Self::stop_keeping) copies).
    pub fn link_early(&self, file: &str, to: &Path) -> std::io::Result<()> {
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = to.with_extension(format!("partial-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        match fs::hard_link(self.dir.join(file), &tmp) {
            Ok(()) => fs::rename(&tmp, to).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            }),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Tears down on the blocking pool.
    pub fn stop(self) -> BoxFuture<'static, Result<(), VmmError>> {
        Box::pin(async move {
            let pid = self.pid;
            tokio::task::spawn_blocking(move || self.teardown())
                .await
                .map_err(|e| VmmError::Stop {
                    pid,
                    source: std::io::Error::other(e),
                })?
                .map_err(|source| VmmError::Stop { pid, source })
        })
    }
}

/// Puts `from` at `to`: nothing to do when `to` is the same file already
/// (a disk linked in at start), else a hard link or, across file systems,
/// a copy; through a temporary name beside `to`, renamed over it when whole.
pub(crate) fn keep_file(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let src = match fs::metadata(from) {
        // Linked before the VM ended ([`VmmProcess::link_early`]), and the
        // run directory removed since (by a process watching the VM).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.is_file() => return Ok(()),
        other => other?,
    };
    if let Ok(dst) = fs::metadata(to) {
        if (dst.dev(), dst.ino()) == (src.dev(), src.ino()) {
            return Ok(());
        }
    }
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = to.with_extension(format!("partial-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let made = fs::hard_link(from, &tmp).or_else(|_| fs::copy(from, &tmp).map(|_| ()));
    if let Err(e) = made.and_then(|()| fs::rename(&tmp, to)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.detached.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.teardown() {
            tracing::warn!(vm = %self.id, "cleaning up VM: {e}");
        }
    }
}

/// Makes the child of `cmd` join `network`'s namespace before it runs
/// (`setns(2)` in `pre_exec`, [`petty_net::netns::join_in_child`]), so the
/// VMM sees that namespace's devices. A missing namespace, or a file that
/// is not one, fails here, before anything is spawned.
pub(crate) fn join_netns(cmd: &mut Command, network: &VmNetwork) -> Result<(), VmmError> {
    network.validate()?;
    petty_net::netns::join_in_child(cmd, &network.netns).map_err(|e| VmmError::Network {
        netns: network.netns.clone(),
        tap: network.tap.clone(),
        problem: match e.kind() {
            std::io::ErrorKind::NotFound => "the network namespace does not exist: make it before starting the VM (e.g. `ip netns add NAME`, which makes /run/netns/NAME)".into(),
            _ => format!("opening the network namespace: {e}"),
        },
    })
}

/// The last `max` bytes of a file, lossily decoded.
pub(crate) fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rundir::tests::{jailed_run_dir, tagged_process};
    use crate::rundir::JailRecord;

    fn config(id: &str) -> VmConfig {
        VmConfig {
            vcpus: 1,
            ..VmConfig::new(id, "/k", "/r")
        }
    }

    #[tokio::test]
    async fn stopping_a_jailed_vm_kills_it_and_removes_its_jail() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let tag = format!("tag-{}", uuid::Uuid::new_v4());
        let mut p = VmmProcess::prepare(&root, &config(&tag)).unwrap();
        let jail = tmp.path().join("jails/firecracker").join(&tag);
        fs::create_dir_all(jail.join("root/run")).unwrap();
        JailRecord {
            dir: jail.clone(),
            cgroup: None,
            cmdline_tag: tag.clone(),
        }
        .write(&p.dir)
        .unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("exec -a 'fake-firecracker --id={tag}' sleep 1000"));
        p.spawn(cmd, true, "fake-firecracker").unwrap();
        let (pid, dir) = (p.pid, p.dir.clone());
        p.stop().await.unwrap();
        assert!(!crate::pid_alive(pid) || !vmm_alive(pid, &dir));
        assert!(!dir.exists() && !jail.exists());
    }

    #[test]
    fn dropping_an_attached_jailed_vm_kills_it_and_removes_its_jail() {
        let tmp = tempfile::tempdir().unwrap();
        let tag = format!("tag-{}", uuid::Uuid::new_v4());
        let (dir, jail) = jailed_run_dir(&tmp.path().join("run"), &tmp.path().join("jails"), &tag);
        let mut vmm = tagged_process(&tag);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !vmm_alive(vmm.id(), &dir) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(VmmProcess::attached(&tag, dir.clone(), vmm.id()));
        assert!(!vmm.wait().unwrap().success());
        assert!(!dir.exists() && !jail.exists());
    }
}
