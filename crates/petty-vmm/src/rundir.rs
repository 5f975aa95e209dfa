//! Where running VMs keep their sockets, disk overlays and logs, and the
//! sweep that removes what a killed process left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Name of the file in a run directory that holds the VMM's pid.
pub const PID_FILE: &str = "vmm.pid";

/// Name of the file in a run directory that holds the pid of the process
/// that created it, written before the VMM starts.
pub const OWNER_FILE: &str = "owner.pid";

/// Present in the run directory of a VM that outlives its creator; such a VM
/// belongs to the sandbox store, which recovers or removes it.
pub const DETACHED_MARKER: &str = "detached";

/// Root of the run directories: `$PETTY_RUN_DIR`, else
/// `$XDG_RUNTIME_DIR/petty`, else `/tmp/petty-<uid>`. Kept short because unix
/// socket paths are limited to 107 bytes.
pub fn runtime_root() -> PathBuf {
    if let Some(d) = std::env::var_os("PETTY_RUN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("petty");
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/petty-{uid}"))
}

/// True when `pid` names a live process.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// True when `pid` is alive and is the VMM of `dir` (its command line names
/// the directory), so a recycled pid is not mistaken for the VMM.
pub fn vmm_alive(pid: u32, dir: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Removes run directories whose VMM is gone (its owner was killed before it
/// could clean up). Directories without a pid file are left alone for a
/// minute, since their VM may be starting right now. Returns what was removed.
pub fn sweep_stale_run_dirs(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return removed;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let pid = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if dir.join(DETACHED_MARKER).exists() {
            // Owned by the sandbox store: its recovery decides.
            continue;
        }
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let stale = match (pid, owner) {
            (Some(pid), _) => !vmm_alive(pid, &dir),
            // The creating process died before it could record the VMM:
            // stale once that process is gone (the VMM dies with it).
            (None, Some(owner)) => !pid_alive(owner),
            // No record of anyone: stale after a minute.
            (None, None) => entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| {
                    SystemTime::now().duration_since(t).unwrap_or_default()
                        > Duration::from_secs(60)
                })
                .unwrap_or(false),
        };
        if stale && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}
