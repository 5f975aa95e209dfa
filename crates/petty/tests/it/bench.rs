//! `petty bench` runs the `petty-bench` binary, found beside `petty` or on
//! PATH, with its arguments and `--config`, and its exit status is
//! petty's; missing, it says how to build it. No VM: the benchmarks
//! themselves are run by hand (docs/BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A copy of the built `petty` alone in a fresh directory (a hard link
/// where it can be: `petty` looks beside its own path, which a symbolic
/// link would resolve back to the target directory).
fn lone_petty() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("petty-bench-it-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let petty = dir.path().join("petty");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_petty"), &petty).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_petty"), &petty).unwrap();
    }
    (dir, petty)
}

/// A stand-in `petty-bench` in `dir` that prints its arguments, one a
/// line, and exits with 7.
fn stand_in(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("petty-bench");
    std::fs::write(&path, "#!/bin/sh\nprintf '%s\\n' \"$@\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `petty ARGS` with only `path` on PATH.
fn run(petty: &Path, path: &Path, args: &[&str]) -> Output {
    Command::new(petty)
        .env("PATH", path)
        .env("PETTY_NO_CONFIG", "1")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bench_without_petty_bench_says_how_to_build_it() {
    let (dir, petty) = lone_petty();
    let empty = tempfile::tempdir().unwrap();
    let out = run(&petty, empty.path(), &["bench", "boot"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`petty bench` runs the `petty-bench` binary")
            && stderr.contains(&dir.path().display().to_string())
            && stderr.contains("cargo build --release -p petty-bench"),
        "{stderr}"
    );
}

#[test]
fn bench_runs_petty_bench_beside_petty_else_on_path_with_its_status() {
    let (dir, petty) = lone_petty();
    let empty = tempfile::tempdir().unwrap();
    // On PATH only.
    let on_path = tempfile::tempdir().unwrap();
    stand_in(on_path.path());
    let out = run(&petty, on_path.path(), &["bench", "pool", "--runs", "3"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pool\n--runs\n3\n");
    // Beside petty, PATH empty; the global --config goes first, and what
    // follows `bench` goes as it is, --help included.
    stand_in(dir.path());
    let out = run(
        &petty,
        empty.path(),
        &[
            "-c",
            "/x/petty.toml",
            "bench",
            "--help",
            "-c",
            "y",
            "--version",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "--config\n/x/petty.toml\n--help\n-c\ny\n--version\n"
    );
}

/// The real `petty-bench`, when it is built beside `petty` (`cargo test
/// --workspace` builds it, for its own tests; `cargo test -p petty` alone
/// may not, and this test then says so and checks nothing).
fn built_petty_bench() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_petty")).with_file_name("petty-bench");
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipped: no {} (cargo build -p petty-bench, or cargo test --workspace)",
            path.display()
        );
        None
    }
}

#[test]
fn bench_help_and_an_unknown_benchmark_reach_the_built_petty_bench() {
    if built_petty_bench().is_none() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let petty = Path::new(env!("CARGO_BIN_EXE_petty"));
    let out = run(petty, empty.path(), &["bench", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("Usage: petty bench"), "{stdout}");
    for cmd in ["boot", "pool", "snapshot", "serve", "halt", "density"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} not in:\n{stdout}"
        );
    }
    let out = run(petty, empty.path(), &["bench", "nosuch"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unrecognized subcommand 'nosuch'"),
        "{stderr}"
    );
    // A settings error is petty-bench's, reported once.
    let out = run(
        petty,
        empty.path(),
        &["-c", "/nonexistent/petty.toml", "bench", "boot"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("petty-bench: error:"), "{stderr}");
    assert!(stderr.contains("/nonexistent/petty.toml"), "{stderr}");
}
