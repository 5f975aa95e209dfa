//! `petty-bench` through its binary, with no VM: its subcommands and
//! flags, and the settings it loads as `petty` does. (That `petty bench`
//! reaches it is tested in `petty`'s `tests/it/bench.rs`; the benchmarks
//! themselves are run by hand, docs/BENCHMARKS.md.)

use std::process::{Command, Output};

/// `petty-bench ARGS` with no config file of this machine's.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_petty-bench"))
        .env("PETTY_NO_CONFIG", "1")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_benchmark() {
    let out = bench(&["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for cmd in [
        "boot", "pool", "snapshot", "serve", "halt", "network", "density",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} not in:\n{stdout}"
        );
    }
    assert!(stdout.contains("--config <FILE>"), "{stdout}");
    let out = bench(&["serve", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for flag in ["--runs", "--clients", "--per-client"] {
        assert!(stdout.contains(flag), "{flag} not in:\n{stdout}");
    }
    let out = bench(&["network", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--iterations",
        "--downloads",
        "--megabytes",
        "--round-trips",
    ] {
        assert!(stdout.contains(flag), "{flag} not in:\n{stdout}");
    }
}

#[test]
fn an_unknown_benchmark_is_a_usage_error() {
    let out = bench(&["nosuch"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");
}

#[test]
fn a_bad_config_file_stops_it_before_any_vm_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[limits]\nmax_concurrent_sandboxes = \"many\"\n").unwrap();
    let out = bench(&["boot", "--config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("petty-bench: error:"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn a_zero_count_is_refused_after_the_settings_load() {
    let out = bench(&["-c", "/dev/null", "pool", "--runs", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--runs must be at least 1"), "{stderr}");
}

#[test]
fn the_network_benchmark_refuses_a_zero_count_before_looking_at_the_host() {
    let out = bench(&["-c", "/dev/null", "network", "--round-trips", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("must be at least 1"), "{stderr}");
}
