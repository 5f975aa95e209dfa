//! Where running VMs keep their sockets, disk overlays and logs, and the
//! sweep that removes what a killed process left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::VmmError;

/// Name of the file in a run directory that holds the VMM's pid.
pub const PID_FILE: &str = "vmm.pid";

/// Name of the file in a run directory that holds the pid of the process
/// that created it, written before the VMM starts.
pub const OWNER_FILE: &str = "owner.pid";

/// Present in the run directory of a VM that outlives its creator; such a VM
/// belongs to the sandbox store, which recovers or removes it.
pub const DETACHED_MARKER: &str = "detached";

/// File of the run directory of a VM whose VMM runs in a jail (Firecracker's
/// jailer): where the jail is, so that whoever removes the run directory
/// removes the jail too, and how to recognise the VMM's process.
pub const JAIL_FILE: &str = "jail.json";

/// What [`JAIL_FILE`] records. Written before the VMM starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JailRecord {
    /// The jail's own directory (`<chroot base>/firecracker/<id>`), removed
    /// with the run directory.
    pub dir: PathBuf,
    /// The VM's cgroup, removed (it is empty by then) once the VMM is gone.
    pub cgroup: Option<PathBuf>,
    /// A string the VMM's command line holds: the jailer execs Firecracker
    /// with arguments of its own, which do not name the run directory.
    pub cmdline_tag: String,
}

impl JailRecord {
    /// The record of run directory `run_dir`, if its VM is jailed.
    pub fn read(run_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join(JAIL_FILE)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Self {
            dir: PathBuf::from(v.get("dir")?.as_str()?),
            cgroup: v.get("cgroup").and_then(|c| c.as_str()).map(PathBuf::from),
            cmdline_tag: v.get("cmdline_tag")?.as_str()?.to_string(),
        })
    }

    /// Writes the record into `run_dir`.
    pub fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        let v = serde_json::json!({
            "dir": self.dir.to_string_lossy(),
            "cgroup": self.cgroup.as_ref().map(|c| c.to_string_lossy()),
            "cmdline_tag": self.cmdline_tag,
        });
        std::fs::write(run_dir.join(JAIL_FILE), v.to_string())
    }
}

/// Makes `root` (mode 0700, parents as needed) if it does not exist, then
/// checks that no other user can have prepared it: it must be a directory
/// (not a symlink), owned by this process's user, with no permissions for
/// group or others. Anything else is refused with what to fix, since
/// another local user could otherwise plant sockets, pid files or links
/// where Petty's VMs live.
pub fn ensure_run_root(root: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |problem: String| VmmError::RunRoot {
        path: root.to_path_buf(),
        problem,
    };
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent).map_err(|e| refuse(format!("creating its parent: {e}")))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(format!("creating it: {e}"))),
    }
    let md = std::fs::symlink_metadata(root).map_err(|e| refuse(format!("reading it: {e}")))?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if md.file_type().is_symlink() {
        return Err(refuse(
            "it is a symbolic link (someone may have planted it); remove it, or set PETTY_RUN_DIR to a private directory".into(),
        ));
    }
    if !md.is_dir() {
        return Err(refuse(
            "it is not a directory; remove it, or set PETTY_RUN_DIR to a private directory".into(),
        ));
    }
    if md.uid() != uid {
        return Err(refuse(format!(
            "it belongs to uid {}, not to this user (uid {uid}); remove it (as its owner or root), or set PETTY_RUN_DIR to a private directory",
            md.uid()
        )));
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "its mode is {mode:04o}, so other users can reach what is in it; run `chmod 700 {}`",
            root.display()
        )));
    }
    Ok(())
}

/// What an owner file records: the process, and when it started (clock
/// ticks since boot, `/proc/<pid>/stat` field 22), so a pid reused by
/// another process is not taken for the owner.
fn owner_record() -> String {
    let pid = std::process::id();
    match process_start_ticks(pid) {
        Some(t) => format!("{pid} {t}"),
        None => pid.to_string(),
    }
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time.
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Writes the owner file of a run directory being made.
pub(crate) fn write_owner(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(OWNER_FILE), owner_record())
}

/// `Some(alive)` for the process an owner file of `dir` names (its start
/// time checked when recorded); `None` when there is no readable owner file.
pub(crate) fn owner_alive(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let started: Option<u64> = words.next().and_then(|w| w.parse().ok());
    Some(match started {
        Some(t) => pid_alive(pid) && process_start_ticks(pid) == Some(t),
        None => pid_alive(pid),
    })
}

/// True when the run directory `dir` was made by a process that still
/// runs: it is that process's to finish or clean up, and no sweep or
/// recovery of another process may touch it.
pub fn run_dir_owner_alive(dir: &Path) -> bool {
    owner_alive(dir).unwrap_or(false)
}

/// Prefix of a run directory being made (`.new-<pid>-<id>`): it is renamed
/// to its id once its owner file (and detached marker) are written, so a
/// run directory never exists without them.
pub(crate) const STAGING_PREFIX: &str = ".new-";

/// True when `pid` names a live process.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// True when `pid` is alive and is the VMM of `dir` (its command line names
/// the directory, or holds the tag its jail record gives), so a recycled pid
/// is not mistaken for the VMM.
pub fn vmm_alive(pid: u32, dir: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let tag = JailRecord::read(dir).map(|j| j.cmdline_tag);
    let needle = match &tag {
        Some(tag) if !tag.is_empty() => tag.as_bytes(),
        _ => dir.as_os_str().as_encoded_bytes(),
    };
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// The processes whose command line names `dir` (what [`vmm_alive`]
/// checks), found by scanning `/proc`.
fn vmms_naming(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && vmm_alive(pid, dir))
        .collect()
}

/// Removes a run directory and, when its VM was jailed, the jail (its
/// directory, and its cgroup once empty). The VMM must be gone already.
/// A directory that does not exist is not an error.
pub fn remove_run_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(jail) = JailRecord::read(dir) {
        match std::fs::remove_dir_all(&jail.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(cgroup) = &jail.cgroup {
            // Only an empty cgroup can go; one still populated is left (and
            // said) rather than failing the teardown.
            if let Err(e) = std::fs::remove_dir(cgroup) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cgroup = %cgroup.display(), "removing the VM's cgroup: {e}");
                }
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Kills `pid` (checked to be the VMM of `dir`) and waits, bounded, until it
/// is gone.
pub(crate) fn kill_vmm(pid: u32, dir: &Path) {
    if !vmm_alive(pid, dir) {
        return;
    }
    // SAFETY: the pid was just checked to be this directory's VMM.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vmm_alive(pid, dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes run directories left by processes that are gone, and kills the
/// VMM first when it outlived an owner it was meant to die with (a jailed
/// Firecracker: the jailer's change of user clears the parent-death
/// signal). Jails go with their run directories. Never touched: a directory
/// whose owner still runs (it is that process's, whatever state it is in:
/// starting, a standby, a template being made) and a detached one (the
/// sandbox store's recovery decides). A directory without an owner file
/// (made by an older Petty) is judged by its VMM, or left alone for a
/// minute. Returns what was removed.
pub fn sweep_stale_run_dirs(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return removed;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && !name.starts_with(STAGING_PREFIX) {
            // Petty's own files under the root (boot turns, caches).
            continue;
        }
        let owner = owner_alive(&dir);
        if owner == Some(true) {
            continue;
        }
        if !name.starts_with(STAGING_PREFIX) && dir.join(DETACHED_MARKER).exists() {
            // Owned by the sandbox store: its recovery decides.
            continue;
        }
        let pid = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let stale = match (pid, owner) {
            (Some(pid), Some(false)) => {
                // Not detached, so it was to die with its owner, who is gone.
                kill_vmm(pid, &dir);
                !vmm_alive(pid, &dir)
            }
            (None, Some(false)) => {
                // Its owner died between spawning the VMM and recording its
                // pid: find the VMM by the directory its command line names.
                for pid in vmms_naming(&dir) {
                    kill_vmm(pid, &dir);
                }
                vmms_naming(&dir).is_empty()
            }
            (Some(pid), None) => !vmm_alive(pid, &dir),
            // No record of anyone: stale after a minute.
            (None, None) => entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| {
                    SystemTime::now().duration_since(t).unwrap_or_default()
                        > Duration::from_secs(60)
                })
                .unwrap_or(false),
            (_, Some(true)) => unreachable!("skipped above"),
        };
        if stale && remove_run_dir(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Child, Command};

    /// A process standing in for a jailed VMM: its command line holds `tag`
    /// (as a jailed Firecracker's holds its id), not any run directory.
    pub(crate) fn tagged_process(tag: &str) -> Child {
        Command::new("bash")
            .arg("-c")
            .arg(format!("exec -a 'fake-firecracker --id={tag}' sleep 1000"))
            .spawn()
            .expect("bash")
    }

    /// A pid that no process has (one that just exited).
    fn dead_pid() -> u32 {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    /// A run directory under `root` with a jail under `jails`, recorded.
    pub(crate) fn jailed_run_dir(root: &Path, jails: &Path, tag: &str) -> (PathBuf, PathBuf) {
        let dir = root.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let jail = jails.join("firecracker").join(tag);
        std::fs::create_dir_all(jail.join("root/run")).unwrap();
        std::fs::write(jail.join("root/rootfs.ext4"), b"disk").unwrap();
        JailRecord {
            dir: jail.clone(),
            cgroup: None,
            cmdline_tag: tag.into(),
        }
        .write(&dir)
        .unwrap();
        (dir, jail)
    }

    fn wait_alive(pid: u32, dir: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !vmm_alive(pid, dir) {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_jailed_vmm_is_recognised_by_its_tag_not_its_run_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let tag = format!("tag-{}", uuid::Uuid::new_v4());
        let (dir, _) = jailed_run_dir(&tmp.path().join("run"), &tmp.path().join("jails"), &tag);
        let mut vmm = tagged_process(&tag);
        wait_alive(vmm.id(), &dir);
        let other = tmp.path().join("run/other");
        std::fs::create_dir_all(&other).unwrap();
        assert!(!vmm_alive(vmm.id(), &other), "no tag, no run dir named");
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        assert!(!vmm_alive(vmm.id(), &dir));
    }

    #[test]
    fn the_sweep_kills_a_jailed_vmm_that_outlived_its_owner_and_removes_its_jail() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let tag = format!("tag-{}", uuid::Uuid::new_v4());
        let (dir, jail) = jailed_run_dir(&root, &tmp.path().join("jails"), &tag);
        let mut vmm = tagged_process(&tag);
        wait_alive(vmm.id(), &dir);
        std::fs::write(dir.join(PID_FILE), vmm.id().to_string()).unwrap();

        // Its owner is alive: the sweep leaves it.
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string()).unwrap();
        assert!(sweep_stale_run_dirs(&root).is_empty());
        assert!(vmm_alive(vmm.id(), &dir) && jail.is_dir());

        // Its owner was SIGKILLed (the jailer's change of user had cleared
        // the parent-death signal): the sweep kills it and removes both.
        std::fs::write(dir.join(OWNER_FILE), dead_pid().to_string()).unwrap();
        assert_eq!(sweep_stale_run_dirs(&root), std::slice::from_ref(&dir));
        let status = vmm.wait().unwrap();
        assert!(!status.success(), "killed: {status}");
        assert!(!dir.exists() && !jail.exists(), "run dir and jail removed");
        assert!(tmp.path().join("jails/firecracker").is_dir());
    }

    #[test]
    fn a_run_root_is_made_private_and_one_others_could_prepare_is_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        // Made afresh: 0700, ours.
        let fresh = tmp.path().join("a/b/run");
        ensure_run_root(&fresh).unwrap();
        let md = std::fs::symlink_metadata(&fresh).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        ensure_run_root(&fresh).unwrap();
        // Open to others: refused, saying how to fix it.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_run_root(&open).unwrap_err().to_string();
        assert!(e.contains("0777") && e.contains("chmod 700"), "{e}");
        // A symlink to a private directory: refused all the same.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = ensure_run_root(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // A file: refused.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure_run_root(&file).is_err());
        // Another user's (only root can make one here).
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = tmp.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
            let e = ensure_run_root(&theirs).unwrap_err().to_string();
            assert!(e.contains("uid 65534"), "{e}");
        } else {
            eprintln!("not root: the other-owner case needs chown, skipped");
        }
    }

    #[test]
    fn an_owner_file_names_its_process_and_when_it_started() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(owner_alive(tmp.path()), None, "no owner file");
        write_owner(tmp.path()).unwrap();
        assert_eq!(owner_alive(tmp.path()), Some(true));
        // The same pid with another start time: a recycled pid, not the owner.
        std::fs::write(
            tmp.path().join(OWNER_FILE),
            format!("{} 1", std::process::id()),
        )
        .unwrap();
        assert_eq!(owner_alive(tmp.path()), Some(false));
        // An older Petty's file: the pid alone.
        std::fs::write(tmp.path().join(OWNER_FILE), std::process::id().to_string()).unwrap();
        assert_eq!(owner_alive(tmp.path()), Some(true));
        std::fs::write(tmp.path().join(OWNER_FILE), dead_pid().to_string()).unwrap();
        assert_eq!(owner_alive(tmp.path()), Some(false));
    }

    #[test]
    fn the_sweep_leaves_what_a_live_process_is_making_and_removes_what_a_dead_one_left() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = |name: &str| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        // A VM starting in a live process: its owner file is there, no pid
        // file yet, or a pid whose command line does not name it yet.
        let starting = dir("starting");
        write_owner(&starting).unwrap();
        let spawning = dir("spawning");
        write_owner(&spawning).unwrap();
        std::fs::write(spawning.join(PID_FILE), std::process::id().to_string()).unwrap();
        // Staged by this process, and by a dead one.
        let staged_live = dir(&format!("{STAGING_PREFIX}{}-x", std::process::id()));
        write_owner(&staged_live).unwrap();
        let staged_dead = dir(&format!("{STAGING_PREFIX}{}-y", dead_pid()));
        std::fs::write(staged_dead.join(OWNER_FILE), dead_pid().to_string()).unwrap();
        // Left by a dead process.
        let left = dir("left");
        std::fs::write(left.join(OWNER_FILE), dead_pid().to_string()).unwrap();
        // The root's own files are not run directories.
        let turns = dir(".turns");
        let mut removed = sweep_stale_run_dirs(root);
        removed.sort();
        let mut want = vec![left.clone(), staged_dead.clone()];
        want.sort();
        assert_eq!(removed, want);
        for kept in [&starting, &spawning, &staged_live, &turns] {
            assert!(kept.is_dir(), "{} was removed", kept.display());
        }
    }

    #[test]
    fn the_sweep_removes_the_jail_of_a_vm_that_never_started() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let (dir, jail) = jailed_run_dir(&root, &tmp.path().join("jails"), "vm-2");
        // Killed before the VMM's pid was recorded.
        std::fs::write(dir.join(OWNER_FILE), dead_pid().to_string()).unwrap();
        assert_eq!(sweep_stale_run_dirs(&root), std::slice::from_ref(&dir));
        assert!(!dir.exists() && !jail.exists());
    }
}
