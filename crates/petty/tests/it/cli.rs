//! `petty run` as a user types it.

use std::io::{Read, Write};
use std::process::Stdio;

use crate::{leftovers, petty, run_root};

fn run(args: &[&str]) -> (i32, String, String) {
    let root = run_root();
    let out = petty(root.path()).arg("run").args(args).output().unwrap();
    assert!(leftovers(root.path()).is_empty(), "run dir left behind");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn python_code_runs_and_prints() {
    let (code, out, err) = run(&["--python", "print(6*7)"]);
    assert_eq!((code, out.as_str()), (0, "42\n"), "stderr: {err}");
    assert!(
        err.contains("petty: using"),
        "accelerator notice missing: {err}"
    );
}

#[test]
fn stdout_and_stderr_stay_apart_and_in_order() {
    let (code, out, err) = run(&[
        "--sh",
        "echo o1; echo e1 >&2; echo o2; echo e2 >&2; echo o3",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, "o1\no2\no3\n");
    assert!(err.ends_with("e1\ne2\n"), "stderr: {err:?}");
}

#[test]
fn exit_codes_pass_through() {
    assert_eq!(run(&["--", "true"]).0, 0);
    assert_eq!(run(&["--", "false"]).0, 1);
    let (code, _, err) = run(&["--", "no-such-command"]);
    assert_eq!(code, 127);
    assert!(err.contains("no-such-command: command not found"), "{err}");
    assert_eq!(run(&["--sh", "kill -KILL $$"]).0, 128 + 9);
}

#[test]
fn env_cwd_and_stdin() {
    let root = run_root();
    let mut child = petty(root.path())
        .args([
            "run",
            "-i",
            "-e",
            "GREETING=hi there",
            "--cwd",
            "/etc",
            "--",
        ])
        .args(["sh", "-c", "echo \"$GREETING\"; pwd; tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi there\n/etc\nPIPED IN\n"
    );
    assert!(leftovers(root.path()).is_empty());
}

#[test]
fn timeout_exits_124() {
    let (code, _, err) = run(&["--timeout", "1", "--sh", "sleep 1000 & sleep 1000"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn guest_kernel_is_petty_built_not_the_hosts() {
    let (code, out, _) = run(&["--", "uname", "-r"]);
    assert_eq!(code, 0);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(out.trim(), host.trim());
    assert!(out.starts_with("6.1."), "guest kernel {out}");
    // The banner carries the build's user, host and timestamp: the exact
    // string is in the vmlinux Petty built, and in no other kernel.
    let (_, banner, _) = run(&["--", "cat", "/proc/version"]);
    let vmlinux = std::fs::read(&crate::assets().vmlinux).unwrap();
    let banner = banner.trim().as_bytes();
    assert!(banner.len() > 40 && vmlinux.windows(banner.len()).any(|w| w == banner));
}

/// 50 MiB through the CLI's stdout: the petty process's own peak memory
/// (VmHWM, read while the output still flows; QEMU is a separate process)
/// stays far below the data size, so output is streamed, not accumulated.
#[test]
fn fifty_mib_of_output_streams_in_bounded_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let root = run_root();
    let mut child = petty(root.path())
        .args([
            "run",
            "--",
            "sh",
            "-c",
            &format!("yes petty | head -c {SIZE}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut total = 0u64;
    let mut peak_kib = None;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| b"petty\n".contains(b)));
        total += n as u64;
        if peak_kib.is_none() && total >= SIZE - (1 << 20) {
            peak_kib = Some(vm_hwm_kib(child.id()));
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, SIZE);
    let peak_mib = peak_kib.expect("sampled before the end") / 1024;
    assert!(
        peak_mib < 40,
        "petty peaked at {peak_mib} MiB for 50 MiB of output"
    );
    assert!(leftovers(root.path()).is_empty());
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

mod bad_input {
    use super::*;

    /// Fails before any VM starts: nonzero exit, a short error with a hint,
    /// nothing in the run directory.
    fn refused(args: &[&str], env: &[(&str, &str)], want: &str) {
        let root = run_root();
        let out = petty(root.path())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} lacks {want:?}"
        );
        assert!(
            !err.contains("petty: using"),
            "{args:?} started a VM: {err}"
        );
        assert!(leftovers(root.path()).is_empty());
    }

    #[test]
    fn zero_or_too_much_memory() {
        refused(
            &["run", "--memory-mib", "0", "--", "true"],
            &[],
            "memory_mib 0",
        );
        refused(
            &["run", "--memory-mib", "99999999", "--", "true"],
            &[],
            "more than this host",
        );
    }

    #[test]
    fn zero_vcpus() {
        refused(&["run", "--vcpus", "0", "--", "true"], &[], "vcpu_count 0");
    }

    #[test]
    fn unknown_flag() {
        refused(
            &["run", "--no-such-flag", "--", "true"],
            &[],
            "unexpected argument '--no-such-flag'",
        );
    }

    #[test]
    fn nothing_to_run() {
        refused(&["run"], &[], "hint: petty run -- CMD");
    }

    #[test]
    fn missing_kernel() {
        refused(
            &["run", "--kernel", "/no/such/bzImage", "--", "true"],
            &[],
            "kernel /no/such/bzImage does not exist",
        );
    }

    #[test]
    fn missing_qemu() {
        refused(
            &["run", "--", "true"],
            &[("PETTY_BACKEND_QEMU_BINARY", "/no/such/qemu")],
            "hint: run `scripts/install-deps`",
        );
    }
}

#[test]
fn doctor_reports_what_the_host_has_and_how_to_fix_gaps() {
    let root = run_root();
    let out = petty(root.path()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok   qemu-system-x86_64"), "{text}");
    assert!(text.contains("accelerator:"), "{text}");
    assert!(text.contains("asset: kernel"), "{text}");
    assert!(text.contains("ready:"), "{text}");

    let out = petty(root.path())
        .arg("doctor")
        .env("PETTY_BACKEND_QEMU_BINARY", "/no/such/qemu")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("MISS qemu-system-x86_64"), "{text}");
    assert!(
        text.contains("fix: apt-get install qemu-system-x86"),
        "{text}"
    );
}

/// `petty run` restores its image's template snapshot (`--cold` boots):
/// either way the guest is Petty's kernel, each run draws its own
/// randomness (a restore refreshes the guest's entropy), and nothing is
/// left: no run directory, no sandbox in the store (a data directory of
/// its own, so the listing is this test's).
#[test]
fn a_restored_run_is_petty_s_kernel_with_fresh_randomness_and_leaves_nothing() {
    let root = run_root();
    let data = tempfile::tempdir().unwrap();
    let petty = || {
        let mut c = petty(root.path());
        c.env("PETTY_PATHS_DATA_DIR", data.path());
        c
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let script = "uname -r; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let mut draws = Vec::new();
    for cold in [false, false, true] {
        let mut c = petty();
        c.arg("run");
        if cold {
            c.arg("--cold");
        }
        let out = c.args(["--sh", script]).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "cold={cold}: {stderr}");
        assert!(leftovers(root.path()).is_empty(), "run dir left behind");
        let mut lines = stdout.lines();
        let kernel = lines.next().unwrap_or_default();
        assert!(
            kernel.starts_with("6.1.") && kernel != host.trim(),
            "cold={cold}: kernel {kernel}"
        );
        draws.push(lines.next().unwrap_or_default().to_string());
    }
    assert_eq!(draws[0].len(), 32, "{draws:?}");
    assert_ne!(draws[0], draws[1], "two restores drew the same bytes");
    assert_ne!(draws[1], draws[2]);
    // The restores came from a template the first run saved.
    assert!(
        std::fs::read_dir(data.path().join("templates"))
            .map(|d| d.count())
            .unwrap_or(0)
            > 0,
        "no template saved"
    );
    let out = petty().args(["ls", "--all"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.lines().count() <= 1, "sandboxes left: {listed}");
    let out = petty()
        .args(["run", "--cold", "--template", "nope", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cold"));
}
