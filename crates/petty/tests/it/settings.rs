//! `petty config show` and the sources of settings, through the binary:
//! the user's file, `--config`, a variable, an earlier release's variable,
//! each over the one below it (the flags of `petty serve` over all of them
//! are tested in `serve.rs`; every source, the system file included, in
//! `petty-config`'s unit tests).

use std::process::Command;

/// `petty config show --json` with `HOME` and `XDG_CONFIG_HOME` in a
/// scratch directory and `vars` set; the value and source of `key`, and
/// stderr.
fn show(
    home: &std::path::Path,
    args: &[&str],
    vars: &[(&str, &str)],
    key: &str,
) -> (String, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_petty"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args(args)
        .args(["config", "show", "--json"]);
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("{key} not listed"));
    (
        row["value"].to_string(),
        row["source"].as_str().unwrap().to_string(),
        stderr,
    )
}

#[test]
fn each_source_wins_over_the_ones_below_and_show_says_which() {
    let home = tempfile::tempdir().unwrap();
    let user = home.path().join("config/petty/config.toml");
    std::fs::create_dir_all(user.parent().unwrap()).unwrap();
    std::fs::write(&user, "[limits]\nmax_vcpu = 3\n").unwrap();
    let named = home.path().join("named.toml");
    std::fs::write(&named, "[limits]\nmax_vcpu = 4\n").unwrap();
    let named_arg = named.to_str().unwrap();
    let key = "limits.max_vcpu";

    let (v, src, _) = show(home.path(), &[], &[], key);
    assert_eq!((v.as_str(), src), ("3", format!("file {}", user.display())));
    let (v, src, _) = show(home.path(), &["--config", named_arg], &[], key);
    assert_eq!(
        (v.as_str(), src),
        ("4", format!("file {}", named.display()))
    );
    // $PETTY_CONFIG names the same file as --config.
    let (v, _, _) = show(home.path(), &[], &[("PETTY_CONFIG", named_arg)], key);
    assert_eq!(v, "4");
    let (v, src, _) = show(
        home.path(),
        &["--config", named_arg],
        &[("PETTY_LIMITS_MAX_VCPU", "5")],
        key,
    );
    assert_eq!(
        (v.as_str(), src.as_str()),
        ("5", "env PETTY_LIMITS_MAX_VCPU")
    );
    // PETTY_NO_CONFIG skips the system's and the user's files.
    let (v, src, _) = show(home.path(), &[], &[("PETTY_NO_CONFIG", "1")], key);
    assert_eq!((v.as_str(), src.as_str()), ("8", "default"));
}

#[test]
fn an_earlier_release_s_variable_works_with_a_notice_and_the_new_name_wins() {
    let home = tempfile::tempdir().unwrap();
    let key = "backend.qemu.binary";
    let (v, src, err) = show(home.path(), &[], &[("PETTY_QEMU", "/opt/qemu")], key);
    assert_eq!(
        (v.as_str(), src.as_str()),
        ("\"/opt/qemu\"", "env PETTY_QEMU (deprecated)")
    );
    assert_eq!(
        err.trim(),
        "petty: PETTY_QEMU is deprecated; use PETTY_BACKEND_QEMU_BINARY (backend.qemu.binary)"
    );
    let (v, _, _) = show(
        home.path(),
        &[],
        &[
            ("PETTY_QEMU", "/opt/qemu"),
            ("PETTY_BACKEND_QEMU_BINARY", "/new/qemu"),
        ],
        key,
    );
    assert_eq!(v, "\"/new/qemu\"");
    // A variable that is no setting is said, not silently ignored.
    let (_, _, err) = show(home.path(), &[], &[("PETTY_LIMITS_MAX_VCPUS", "4")], key);
    assert!(
        err.contains("PETTY_LIMITS_MAX_VCPUS is not a setting"),
        "{err}"
    );
}

#[test]
fn show_lists_every_key_and_hides_api_keys() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_petty"))
        .env("HOME", home.path())
        .env("PETTY_NO_CONFIG", "1")
        .env("PETTY_API_KEYS", "0123456789abcdef0123")
        .args(["config", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(text.lines().count(), petty_config::KEYS.len() + 1, "{text}");
    assert!(!text.contains("0123456789abcdef0123"), "{text}");
    assert!(text.contains("(1 hidden)"), "{text}");
    // A bad value stops any command before it does anything, naming the key.
    let out = Command::new(env!("CARGO_BIN_EXE_petty"))
        .env("PETTY_NO_CONFIG", "1")
        .env("PETTY_DEFAULTS_VCPU", "many")
        .args(["ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PETTY_DEFAULTS_VCPU"));
}
