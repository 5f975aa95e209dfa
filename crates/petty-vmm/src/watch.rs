//! Noticing that a VM has ended, from the VMM's own signals: its process
//! exiting (a pidfd becomes readable the moment it does), and, for QEMU,
//! the events its second monitor sends (the guest closing its agent port,
//! as a halting or powering-off kernel does when it resets its devices).
//! A guest that halts leaves its VMM running with nothing to say: without
//! these, only a ping deadline would tell.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::qmp::Qmp;
use crate::rundir::vmm_alive;

/// Resolves once the process `pid`, the VMM of run directory `dir`, is gone.
pub(crate) async fn process_exit(pid: u32, dir: &Path) {
    // SAFETY: pidfd_open takes a pid and flags; the result is a new
    // descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let pidfd = (fd >= 0).then(|| {
        // SAFETY: `fd` was just returned to us by pidfd_open.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    });
    let registered = pidfd.map(|fd| {
        // SAFETY: an OwnedFd's descriptor stays open and the same until the
        // AsyncFd holding it is dropped.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
    });
    // Opened before this check, so a pid recycled after it is not watched.
    if !vmm_alive(pid, dir) {
        // Exiting already: its command line empties before it is a zombie,
        // and a caller that sees it ended may ask `waitpid` next. The pidfd
        // is readable once it exited; bounded, as it may name a process
        // that took the pid since.
        if let Some(Ok(afd)) = &registered {
            let _ = tokio::time::timeout(Duration::from_secs(1), afd.readable()).await;
        }
        return;
    }
    match registered {
        // Readable when the process exits.
        Some(Ok(afd)) => {
            let _ = afd.readable().await;
        }
        // No pidfds (an old kernel): look every 100 ms.
        _ => {
            while vmm_alive(pid, dir) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What QEMU's events say ended the guest, once one does: the guest closed
/// the virtio-serial port `port_id` (its kernel reset the device on halt,
/// power-off or reboot), or shut down, or its kernel panicked. Connects to
/// the events monitor `events` and keeps trying while another process holds
/// it (QEMU serves one client per monitor) or QEMU is not there; never
/// resolves if no such event comes.
pub(crate) async fn qemu_guest_end(events: PathBuf, port_id: &'static str) -> String {
    loop {
        if let Ok(mut qmp) = Qmp::connect(&events, Duration::from_secs(2)).await {
            while let Ok(event) = qmp.next_event().await {
                let name = event.get("event").and_then(|e| e.as_str()).unwrap_or("");
                let data = event.get("data");
                let field = |k: &str| data.and_then(|d| d.get(k));
                match name {
                    "VSERPORT_CHANGE"
                        if field("id").and_then(|v| v.as_str()) == Some(port_id)
                            && field("open").and_then(|v| v.as_bool()) == Some(false) =>
                    {
                        return "the guest halted or powered itself off (its kernel closed the agent's port)".into();
                    }
                    "SHUTDOWN" => return "the guest shut down".into(),
                    "GUEST_PANICKED" => return "the guest kernel panicked".into(),
                    _ => {}
                }
            }
        }
        // Busy (another process watches it), or QEMU went away (its exit is
        // seen by the process watch): look again later.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The last non-empty line of a console tail, to say what the guest said last.
pub(crate) fn last_line(tail: &str) -> Option<&str> {
    tail.lines().map(str::trim).rfind(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_exit_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let tag = dir.path().display().to_string();
        // A stand-in VMM whose command line names its run directory.
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec -a 'fake-vmm {tag}' sleep 1000"))
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !vmm_alive(pid, dir.path()) {
            assert!(std::time::Instant::now() < deadline, "stand-in never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let watch = tokio::spawn({
            let dir = dir.path().to_path_buf();
            async move { process_exit(pid, &dir).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watch.is_finished(), "it waits while the process runs");
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("the exit is seen")
            .unwrap();
        // A process that is not (or no longer) the VMM: resolved at once.
        tokio::time::timeout(Duration::from_secs(10), process_exit(pid, dir.path()))
            .await
            .unwrap();
    }

    #[test]
    fn the_last_console_line_is_found() {
        assert_eq!(
            last_line("a\nreboot: System halted\n\n"),
            Some("reboot: System halted")
        );
        assert_eq!(last_line("  \n"), None);
    }
}
