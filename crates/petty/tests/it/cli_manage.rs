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
