//! Every `petty` command line of the README's "Using it" section, run as a
//! newcomer would paste it (through `sh`, with the built `petty` on `PATH`),
//! against real VMs. The daemon's curl lines have their own test
//! (`serve::guard`); the benchmarks are run by hand (docs/BENCHMARKS.md), so
//! their lines are only checked to reach `petty-bench`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::Env;

/// The shell blocks of README.md's "Using it" section.
fn using_it_lines() -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in crate::readme_section("## Using it").lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => lines.push(l.to_string()),
            _ => {}
        }
    }
    lines
}

/// The Dockerfile of the "Using it" section (its one `dockerfile` block).
fn readme_dockerfile() -> String {
    let section = crate::readme_section("## Using it");
    let start = section
        .find("```dockerfile\n")
        .expect("a dockerfile block in Using it")
        + "```dockerfile\n".len();
    let len = section[start..].find("```").unwrap();
    section[start..start + len].to_string()
}

/// The command of a README line, without its trailing `# comment`.
fn command_of(line: &str) -> &str {
    // No README command has a `#` inside quotes followed by a space.
    match line.find("  #") {
        Some(i) => line[..i].trim_end(),
        None => line,
    }
}

/// The exit code a README line says its command ends with.
fn expected_exit(cmd: &str) -> i32 {
    if cmd.contains("exit 3'") {
        3
    } else if cmd.contains("--timeout 5") {
        124
    } else {
        0
    }
}

fn sh(env: &Env, cwd: &Path, cmd: &str) -> std::process::Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_petty")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .env("PATH", path)
        .stdin(Stdio::null());
    for (k, v) in env.cmd().get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.output().unwrap()
}

#[test]
fn every_command_of_the_readmes_using_it_section_runs_as_written() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    // The template lines' inputs: the README's own Dockerfile, and an OCI
    // archive of busybox as `skopeo` writes one.
    std::fs::write(work.path().join("Dockerfile"), readme_dockerfile()).unwrap();
    crate::templates::busybox_archive(work.path(), &work.path().join("bb.tar"));
    let lines = using_it_lines();
    assert!(lines.len() > 20, "too few README lines found: {lines:?}");
    let mut ran = 0;
    for line in &lines {
        let cmd = command_of(line);
        assert!(
            cmd.starts_with("petty ") || cmd.contains("| petty "),
            "a README line that is not a petty command: {line}"
        );
        if cmd.starts_with("petty bench") {
            // Minutes each: only that the command line reaches petty-bench.
            let help = format!(
                "{} --help",
                cmd.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            );
            let out = sh(&env, work.path(), &help);
            if String::from_utf8_lossy(&out.stderr).contains("cargo build --release -p petty-bench")
            {
                eprintln!("readme: petty-bench is not built beside petty; `{help}` not checked");
                continue;
            }
            assert!(
                out.status.success(),
                "{help}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        // SAFETY: geteuid cannot fail.
        if cmd.contains("network") && unsafe { libc::geteuid() } != 0 {
            eprintln!("readme: sandbox networks need root; `{cmd}` not run");
            continue;
        }
        let out = sh(&env, work.path(), cmd);
        assert_eq!(
            out.status.code(),
            Some(expected_exit(cmd)),
            "README line: {line}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if cmd == "petty run --template mytools" {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "agent in /work: 2 rows\n"
            );
        }
        ran += 1;
    }
    assert!(ran > 20);
    // The copies made what they say.
    assert_eq!(
        std::fs::read(work.path().join("copy.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    // What the section made and did not remove: the snapshot section's
    // sandboxes and snapshots. Removed here, then nothing is left.
    let store = petty_core::store::Store::open(&env.data.path().join("petty.db")).unwrap();
    let names: Vec<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    if !names.is_empty() {
        env.ok(&rm);
    }
    let mut snaps: Vec<_> = store.list_snapshots().unwrap();
    // Children before parents: a snapshot in use by another is refused.
    snaps.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
    for s in snaps {
        env.ok(&["snapshots", "rm", &s.name]);
    }
    drop(store);
    env.assert_clean();
}
