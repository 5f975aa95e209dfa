//! Sandboxes that outlive the command that created them, driven by separate
//! `petty` processes sharing one data directory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{leftovers, processes_mentioning, Env};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn row<'a>(ls: &'a str, name: &str) -> Option<&'a str> {
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn create_exec_cp_ls_stop_rm_across_processes() {
    let env = Env::new();
    assert_eq!(env.ok(&["create", "--name", "box1"]).trim(), "box1");
    let ls = env.ok(&["ls"]);
    assert!(row(&ls, "box1").unwrap().contains("ready"), "{ls}");

    // A process holding the sandbox is SIGKILLed mid-exec...
    let mut holder = env
        .cmd()
        .args(["exec", "box1", "--", "sh", "-c", "echo started; sleep 1000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // ...and a new process finds the sandbox and uses it.
    assert!(row(&env.ok(&["ls"]), "box1").unwrap().contains("ready"));
    assert_eq!(
        env.ok(&["exec", "box1", "--", "echo", "still here"]),
        "still here\n"
    );
    // The killed holder's command did not survive its connection.
    let sleeps = env.ok(&[
        "exec",
        "box1",
        "--",
        "sh",
        "-c",
        "cat /proc/[0-9]*/comm | grep -c '^sleep$' || true",
    ]);
    assert_eq!(sleeps.trim(), "0");

    let host = env.data.path().join("in.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&host, &data).unwrap();
    env.ok(&["cp", host.to_str().unwrap(), "box1:/root/in.bin"]);
    let back = env.data.path().join("out.bin");
    env.ok(&["cp", "box1:/root/in.bin", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let dup = env.run(&["create", "--name", "box1"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("a sandbox named box1 already exists"));
    let unknown = env.run(&["exec", "nobox", "--", "true"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no sandbox named nobox"));

    env.ok(&["stop", "box1"]);
    assert!(row(&env.ok(&["ls"]), "box1").unwrap().contains("stopped"));
    let stopped = env.run(&["exec", "box1", "--", "true"]);
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("box1 is stopped"));
    // `petty start` boots it again, from another process, with its files.
    env.ok(&["start", "box1"]);
    assert!(row(&env.ok(&["ls"]), "box1").unwrap().contains("ready"));
    assert_eq!(
        std::fs::read(env.data.path().join("out.bin")).unwrap(),
        data
    );
    let again = env.data.path().join("again.bin");
    env.ok(&["cp", "box1:/root/in.bin", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        data,
        "the file survived stop and start"
    );
    env.ok(&["stop", "box1"]);
    env.ok(&["rm", "box1"]);
    assert!(row(&env.ok(&["ls"]), "box1").is_none());
    assert!(leftovers(env.root.path()).is_empty());
}

#[test]
fn a_vm_killed_behind_petty_s_back_is_reaped_by_the_next_command() {
    let env = Env::new();
    env.ok(&["create", "--name", "victim"]);
    env.ok(&["create", "--name", "survivor"]);
    let ls = env.ok(&["ls"]);
    // NAME ID STATE MEM VCPUS DISK AGE EXPIRES OWNER PID NETWORK PORTS
    let pid: i32 = row(&ls, "victim")
        .unwrap()
        .split_whitespace()
        .nth(9)
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: signalling a QEMU this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let dir = format!("/proc/{pid}/cmdline");
    wait_until("QEMU to die", || {
        std::fs::read(&dir).map_or(true, |c| c.is_empty())
    });
    let ls = env.ok(&["ls"]);
    assert!(row(&ls, "victim").is_none(), "{ls}");
    assert!(row(&ls, "survivor").unwrap().contains("ready"));
    assert_eq!(leftovers(env.root.path()).len(), 1);
    env.ok(&["rm", "-f", "survivor"]);
    assert!(leftovers(env.root.path()).is_empty());
    let root = env.root.path().display().to_string();
    assert!(processes_mentioning(&root).is_empty());
}

#[test]
fn ttl_set_from_the_cli_is_enforced_by_a_later_command() {
    let env = Env::new();
    env.ok(&["create", "--name", "brief", "--ttl", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    // Any later petty command runs a reaper pass first.
    assert!(row(&env.ok(&["ls"]), "brief").is_none());
    assert!(leftovers(env.root.path()).is_empty());
}

#[test]
fn kill_stops_at_once_and_rm_refuses_running_sandboxes() {
    let env = Env::new();
    env.ok(&["create", "--name", "k"]);
    let refused = env.run(&["rm", "k"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));
    env.ok(&["kill", "k"]);
    assert!(row(&env.ok(&["ls"]), "k").unwrap().contains("stopped"));
    let root = env.root.path().display().to_string();
    assert!(
        processes_mentioning(&root).is_empty(),
        "VMM still running after kill"
    );
    env.ok(&["rm", "k"]);
    assert!(leftovers(env.root.path()).is_empty());
}

#[test]
fn on_idle_hibernate_puts_an_idle_sandbox_away_and_its_next_command_brings_it_back() {
    let env = Env::new();
    let bad = env.run(&["create", "--on-idle", "nap"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("destroy, stop or hibernate"), "{err}");
    env.ok(&[
        "create",
        "--name",
        "nap",
        "--idle-timeout",
        "1",
        "--on-idle",
        "hibernate",
    ]);
    env.ok(&["exec", "nap", "--", "sh", "-c", "echo kept > /root/f"]);
    // Whichever petty process runs next enforces it: this `ls`, after a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let ls = env.ok(&["ls"]);
    let line = row(&ls, "nap").unwrap();
    assert_eq!(line.split_whitespace().nth(2), Some("hibernated"), "{ls}");
    assert!(processes_mentioning(&env.root.path().display().to_string()).is_empty());
    let json: serde_json::Value = serde_json::from_str(env.ok(&["ls", "--json"]).trim()).unwrap();
    assert_eq!(json["on_idle"], "hibernate", "{json}");
    assert!(json["disk_bytes"].as_u64().unwrap() > 1 << 20, "{json}");
    assert_eq!(env.ok(&["exec", "nap", "--", "cat", "/root/f"]), "kept\n");
    assert!(row(&env.ok(&["ls"]), "nap").unwrap().contains("ready"));
    env.ok(&["rm", "-f", "nap"]);
    env.assert_clean();
}

#[test]
fn exec_d_starts_a_command_that_outlives_the_cli_and_prints_its_pid() {
    let env = Env::new();
    env.ok(&["create", "--name", "bg"]);
    let out = env.ok(&[
        "exec",
        "-d",
        "bg",
        "--",
        "sh",
        "-c",
        "sleep 1; echo done > /tmp/d",
    ]);
    let pid: u32 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("petty exec -d printed {out:?}, not a pid"));
    assert!(pid > 1, "{pid}");
    // It finishes on its own, after this CLI and its connection are gone
    // (and after later ones said hello to the agent).
    let mut seen = String::new();
    for _ in 0..30 {
        let r = env.run(&["exec", "bg", "--", "cat", "/tmp/d"]);
        seen = String::from_utf8_lossy(&r.stdout).into_owned();
        if r.status.success() && seen == "done\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(seen, "done\n", "the detached command never wrote /tmp/d");

    let json = env.ok(&["exec", "-d", "--json", "bg", "--", "sleep", "60"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let pid = v["pid"].as_u64().unwrap_or_else(|| panic!("{json}"));
    let alive = env.ok(&["exec", "bg", "--", "cat", &format!("/proc/{pid}/comm")]);
    assert_eq!(alive, "sleep\n");

    for flags in [&["-d", "-i"][..], &["-d", "-t"], &["-dit"]] {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["bg", "--", "true"]);
        let refused = env.run(&args);
        assert!(!refused.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("takes neither -i nor -t"), "{flags:?}: {err}");
    }
    env.ok(&["rm", "-f", "bg"]);
    env.assert_clean();
}

/// A local pseudo-terminal: the test holds the controlling side and
/// `petty` runs on the other, as if typed into.
struct LocalPty {
    master: std::fs::File,
    /// The terminal's own side, kept to read its settings.
    slave: std::os::fd::OwnedFd,
    /// What the terminal showed, read by a thread as it comes.
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl LocalPty {
    /// A terminal of `rows` by `cols`, and `cmd` started on it as the
    /// leader of a new session whose controlling terminal it is (so it gets
    /// SIGWINCH when the size changes).
    fn spawn(mut cmd: std::process::Command, rows: u16, cols: u16) -> (Self, std::process::Child) {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two new descriptors; the rest are inputs.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both are new descriptors this test alone owns.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::os::fd::OwnedFd::from_raw_fd(slave),
            )
        };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap());
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let (tx, output) = std::sync::mpsc::channel();
        let mut reader = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let pty = Self {
            master,
            slave,
            output,
            seen: String::new(),
        };
        (pty, child)
    }

    fn type_in(&mut self, keys: &str) {
        std::io::Write::write_all(&mut self.master, keys.as_bytes()).unwrap();
    }

    /// Reads until `want` shows (failing after `secs` seconds, or if the
    /// terminal ends first); what showed since the last call.
    fn read_until(&mut self, want: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = self.seen.len();
        while !self.seen[start..].contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => panic!(
                    "no {want:?} on the terminal ({e}); it showed {:?}",
                    &self.seen[start..]
                ),
            }
        }
        self.seen[start..].to_string()
    }

    /// Whether the terminal echoes and edits lines (cooked, as a shell
    /// leaves it) rather than being raw.
    fn cooked(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: termios is plain data that tcgetattr fills in.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid termios pointer and an open terminal.
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t.c_lflag & (libc::ECHO | libc::ICANON) == libc::ECHO | libc::ICANON
    }

    fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize; the kernel then signals the
        // terminal's foreground process group (petty) with SIGWINCH.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
}

/// How `child` ended, waiting at most a minute (then it is killed and the
/// test fails, showing the terminal).
fn wait_with_deadline(child: &mut std::process::Child, pty: &LocalPty) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "petty exec -it did not exit; the terminal showed {:?}",
                pty.seen
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exec_it_is_a_guest_terminal_of_the_local_one_s_size_that_follows_its_resizes() {
    let env = Env::new();
    env.ok(&["create", "--name", "term"]);
    let mut cmd = env.cmd();
    cmd.args(["exec", "-it", "term", "--", "sh"]);
    let (mut pty, mut child) = LocalPty::spawn(cmd, 30, 100);
    assert!(pty.cooked());
    // Enter sends a carriage return, as on a real terminal. The marker is
    // computed by the shell, so its echo of the typed line does not match.
    pty.type_in("stty size; tty; echo E$((40+2))\r");
    let shown = pty.read_until("E42", 120);
    assert!(shown.contains("30 100"), "{shown:?}");
    assert!(shown.contains("/dev/pts/"), "{shown:?}");

    // The local terminal is resized; petty hears SIGWINCH and resizes the
    // guest's. The resize and the typing travel apart, so ask until the
    // guest terminal has the new size (a bounded number of times).
    pty.resize(40, 120);
    let mut resized = false;
    for i in 0..20 {
        let typed = format!("stty size; echo R$(({i}+1000))");
        pty.type_in(&format!("{typed}\r"));
        let shown = pty.read_until(&format!("R{}", i + 1000), 60);
        // Echoed once, by the guest's terminal: the local one is raw.
        assert_eq!(shown.matches(&typed).count(), 1, "{shown:?}");
        if shown.contains("40 120") {
            resized = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        resized,
        "the guest terminal never took the new size: {:?}",
        pty.seen
    );

    pty.type_in("exit 3\r");
    let status = wait_with_deadline(&mut child, &pty);
    assert_eq!(status.code(), Some(3), "{:?}", pty.seen);
    assert!(pty.cooked(), "petty left the local terminal raw");
    drop(pty);

    // Ended by a signal, it gives the terminal back as it found it too.
    let mut cmd = env.cmd();
    cmd.args(["exec", "-it", "term", "--", "sh"]);
    let (mut pty, mut child) = LocalPty::spawn(cmd, 30, 100);
    pty.type_in("echo S$((1+1))\r");
    pty.read_until("S2", 120);
    assert!(!pty.cooked(), "raw while the guest shell runs");
    // SAFETY: signalling the petty this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_with_deadline(&mut child, &pty);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{:?}", pty.seen);
    assert!(
        pty.cooked(),
        "petty left the local terminal raw after SIGTERM"
    );
    drop(pty);

    // -t without a terminal still gives the command one (of the classic
    // size), as docker exec -t does; -it then needs a terminal to type on.
    let out = env.run(&["exec", "-t", "term", "--", "sh", "-c", "tty; stty size"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/dev/pts/") && text.contains("24 80"),
        "{text:?}"
    );
    let refused = env.run(&["exec", "-it", "term", "--", "sh"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("the input device is not a TTY"), "{err}");
    env.ok(&["rm", "-f", "term"]);
    env.assert_clean();
}
