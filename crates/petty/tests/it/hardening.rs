//! What other local users, hostile guests and load can do to Petty, with
//! real VMs and real `petty` processes: a run root another user could have
//! prepared is refused; a guest that powers itself off ends the calls in
//! flight at once, naming why; twenty creates or runs at once all succeed.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use petty_core::{CoreError, Sandbox, SandboxState};

use crate::{leftovers, processes_mentioning, Env};

/// A shell line that powers the guest off from an ordinary process (not
/// PID 1) one second from now, then waits: the exec is in flight when the
/// guest goes. Debian's minbase has no `poweroff`; this is its syscall.
const POWER_OFF_SOON: &str = "(sleep 1; python3 -c 'import ctypes; \
    ctypes.CDLL(None).syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)') & sleep 100";

#[test]
fn a_run_root_another_user_could_prepare_is_refused() {
    let env = Env::new();
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = env
        .cmd()
        .env("PETTY_PATHS_RUN_DIR", open.path())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran in a world-writable run root");
    assert!(err.contains("chmod 700"), "{err}");
    assert!(leftovers(open.path()).is_empty(), "wrote into it");

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = tempfile::tempdir().unwrap();
        std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
        let out = env
            .cmd()
            .env("PETTY_PATHS_RUN_DIR", theirs.path())
            .args(["create", "--name", "x"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ran in another user's run root");
        assert!(err.contains("belongs to uid 65534"), "{err}");
        assert!(leftovers(theirs.path()).is_empty(), "wrote into it");
    } else {
        eprintln!("not root: the other-owner case needs chown, skipped");
    }
    env.assert_clean();
}

#[test]
fn nothing_is_written_through_a_link_at_the_old_shared_tsc_path() {
    // Earlier Petty kept the TSC rate at this predictable name in /tmp.
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let old = std::env::temp_dir().join(format!("petty-{uid}-tsc-khz"));
    let victim = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim.path(), "precious").unwrap();
    let _ = std::fs::remove_file(&old);
    std::os::unix::fs::symlink(victim.path(), &old).unwrap();
    let env = Env::new();
    let out = env.run(&["run", "--", "true"]);
    let _ = std::fs::remove_file(&old);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "precious");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_powers_off_ends_the_exec_in_flight_with_the_cause() {
    let env = Env::new();
    let m = env.manager(env.config()).await;
    m.create(crate::config_builder().name("off").build().unwrap())
        .await
        .unwrap();
    let pid = m.info("off").await.unwrap().vmm_pid.unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), m.execute("off", POWER_OFF_SOON))
        .await
        .expect("the exec outlived the guest by 10 s");
    let took = started.elapsed();
    match r {
        Err(CoreError::Died { id, cause }) => {
            assert_eq!(id, "off");
            assert!(cause.contains("halted or powered itself off"), "{cause}");
        }
        other => panic!("expected the sandbox's end, got {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(1),
        "it returned before the power-off"
    );
    let info = m.info("off").await.unwrap();
    assert_eq!(info.state, SandboxState::Failed);
    assert!(
        info.reason
            .as_deref()
            .is_some_and(|r| r.contains("powered itself off")),
        "{info:?}"
    );
    // The halted guest's QEMU does not run on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while petty_vmm::pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!petty_vmm::pid_alive(pid), "its VMM still runs");
    // A later call is refused with the same cause.
    let e = m.execute("off", "true").await.unwrap_err().to_string();
    assert!(
        e.contains("powered itself off") || e.contains("failed"),
        "{e}"
    );
    m.destroy("off").await.unwrap();
    env.assert_clean();

    // How soon after the power-off a streamed exec hears of it: the guest
    // prints its clock (set from the host's) just before the syscall.
    m.create(crate::config_builder().name("off2").build().unwrap())
        .await
        .unwrap();
    let sb = m.get("off2").await.unwrap();
    let mut stream = sb
        .exec_stream(petty_core::ExecRequest::shell(
            "(sleep 1; python3 -c 'import time, ctypes; print(time.time() + 0.25, flush=True); \
             time.sleep(0.25); ctypes.CDLL(None).syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0)') \
             & sleep 100",
        ))
        .await
        .unwrap();
    let mut said = String::new();
    // Bounded well inside the health check's 30 s ping deadline, which is
    // what would notice it otherwise; a loaded host's TCG guest can take
    // seconds to get to its last word.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Ok(petty_core::ExecEvent::Stdout(b)) => said.push_str(&String::from_utf8_lossy(&b)),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stream outlived the guest by 20 s");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(ended.to_string().contains("powered itself off"), "{ended}");
    // When the guest said it would power off.
    let off_at: f64 = said.trim().parse().unwrap_or_else(|_| panic!("{said:?}"));
    // Not a speed claim (docs/BENCHMARKS.md has the figures): a liveness
    // check that it was noticed, well inside the 30 s ping deadline.
    eprintln!(
        "power-off noticed {:.0} ms after the guest's last word",
        (now - off_at) * 1000.0
    );
    drop(stream);
    drop(sb);
    m.destroy("off2").await.unwrap();
    env.assert_clean();

    // An unmanaged sandbox (`petty run`'s) too.
    let vmm = crate::vmm(env.root.path());
    let sb = Sandbox::create(&vmm, crate::sandbox_config())
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), sb.execute(POWER_OFF_SOON))
        .await
        .expect("the exec outlived the guest by 10 s");
    assert!(matches!(r, Err(CoreError::Died { .. })), "{r:?}");
    assert_eq!(sb.state(), SandboxState::Failed);
    sb.destroy().await.unwrap();
    env.assert_clean();
}

#[test]
fn the_cli_s_exec_ends_when_its_guest_powers_off() {
    let env = Env::new();
    env.ok(&["create", "--name", "off"]);
    let started = Instant::now();
    let out = env.run(&["exec", "off", "--", "sh", "-c", POWER_OFF_SOON]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(
        err.contains("has failed") && err.contains("powered itself off"),
        "{err}"
    );
    let ls = env.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("off ") && l.contains("failed")),
        "{ls}"
    );
    env.ok(&["rm", "off"]);
    env.assert_clean();
}

/// Starts `n` `petty ARGS(i)` processes at once and waits for all; each
/// one's exit status and stderr.
fn at_once(env: &Env, n: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<(bool, String)> {
    let children: Vec<_> = (0..n)
        .map(|i| {
            env.cmd()
                .args(args(i))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

#[test]
fn twenty_creates_at_once_for_five_rounds_and_twenty_runs_at_once_all_succeed() {
    let env = Env::new();
    for round in 0..5 {
        let names: Vec<String> = (0..20).map(|i| format!("r{round}-{i}")).collect();
        let results = at_once(&env, 20, |i| {
            vec!["create".into(), "--name".into(), names[i].clone()]
        });
        for (name, (ok, err)) in names.iter().zip(&results) {
            assert!(
                *ok || err.contains("at capacity"),
                "round {round}: create {name} failed: {err}"
            );
        }
        let mut rm = vec!["rm".to_string(), "-f".into()];
        rm.extend(names.iter().cloned());
        let out = env.cmd().args(&rm).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            leftovers(env.root.path()).is_empty(),
            "round {round} left {:?}",
            leftovers(env.root.path())
        );
    }
    let results = at_once(&env, 20, |_| {
        ["run", "--", "true"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for (i, (ok, err)) in results.iter().enumerate() {
        assert!(*ok, "run {i} failed: {err}");
    }
    env.assert_clean();
    assert!(processes_mentioning(&env.root.path().display().to_string()).is_empty());
}

#[test]
fn rm_f_removes_every_name_given_and_reports_the_missing() {
    let env = Env::new();
    env.ok(&["create", "--name", "b"]);
    env.ok(&["create", "--name", "c"]);
    let out = env.run(&["rm", "-f", "a", "b", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("a: no sandbox named a"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b\nc\n");
    // Without -f a missing name fails the command, after the others.
    env.ok(&["create", "--name", "d"]);
    let out = env.run(&["kill", "nope", "d"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "d\n");
    env.ok(&["rm", "d"]);
    env.assert_clean();
}
