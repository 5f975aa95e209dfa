use std::path::{Path, PathBuf};

use super::*;
use crate::env::Env;

/// An environment with a home and nothing else of the machine's.
fn env(extra: &[(&str, &str)]) -> Env {
    let mut vars = vec![
        ("HOME", "/home/u"),
        ("PATH", "/usr/bin:/bin"),
        ("PETTY_NO_CONFIG", "1"),
    ];
    vars.extend_from_slice(extra);
    Env::from_pairs(vars)
}

fn load_with(env: Env, file: Option<&Path>, flags: Vec<Override>) -> Result<Loaded, ConfigError> {
    let mut s = Sources::with_env(env);
    s.file = file.map(Path::to_path_buf);
    s.flags = flags;
    load(&s)
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../petty.example.toml")
}

#[test]
fn the_example_file_is_the_defaults_and_names_every_key() {
    let defaults = load_with(env(&[]), None, vec![]).unwrap().settings;
    let from_file = load_with(env(&[]), Some(&example()), vec![]).unwrap();
    assert_eq!(from_file.settings, defaults);
    assert!(from_file.notices.is_empty(), "{:?}", from_file.notices);
    // Every key appears in it, set or commented out, under its section.
    let text = std::fs::read_to_string(example()).unwrap();
    let mut section = String::new();
    let mut named = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some((k, _)) = line.split_once(" = ") {
            if !k.contains(' ') {
                named.push(format!("{section}.{k}"));
            }
        }
    }
    for k in KEYS {
        assert!(
            named.iter().any(|n| n == k),
            "{k} is missing from petty.example.toml"
        );
    }
    for n in &named {
        assert!(
            KEYS.contains(&n.as_str()),
            "petty.example.toml names {n}, which is no key"
        );
    }
}

#[test]
fn every_key_with_a_default_is_listed_and_each_variable_name_is_unique() {
    let table = toml::Table::try_from(Settings::default()).unwrap();
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                _ => out.push(key),
            }
        }
    }
    let mut leaves = Vec::new();
    walk("", &table, &mut leaves);
    for k in &leaves {
        assert!(KEYS.contains(&k.as_str()), "{k} is missing from KEYS");
    }
    let mut names: Vec<String> = KEYS.iter().map(|k| env::var_name(k)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), KEYS.len(), "two keys share a variable name");
    for (old, new) in env::DEPRECATED.iter().chain(env::DEPRECATED_KEYS) {
        assert!(KEYS.contains(new), "{old} maps to {new}, which is no key");
    }
}

#[test]
fn each_source_overrides_the_ones_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: u64| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("[server]\nshutdown_grace_secs = {value}\n")).unwrap();
        p
    };
    let system = write("system.toml", 2);
    let user_home = dir.path().join("home");
    std::fs::create_dir_all(user_home.join(".config/petty")).unwrap();
    std::fs::write(
        user_home.join(".config/petty/config.toml"),
        "[server]\nshutdown_grace_secs = 3\n",
    )
    .unwrap();
    let named = write("named.toml", 4);
    let home = user_home.display().to_string();
    let run = |file: bool, var: bool, flag: bool, system_file: &Path| {
        let mut vars = vec![("HOME", home.as_str()), ("PATH", "/bin")];
        if var {
            vars.push(("PETTY_SERVER_SHUTDOWN_GRACE_SECS", "5"));
        }
        let mut s = Sources::with_env(Env::from_pairs(vars));
        s.system_file = system_file.to_path_buf();
        s.file = file.then(|| named.clone());
        if flag {
            s.flags.push(Override::parse(
                "server.shutdown_grace_secs",
                "6",
                "--grace",
            ));
        }
        let loaded = load(&s).unwrap();
        let source = loaded.sources["server.shutdown_grace_secs"].to_string();
        (loaded.settings.server.shutdown_grace_secs, source)
    };
    let none = dir.path().join("absent.toml");
    assert_eq!(
        run(false, false, false, &none).0,
        3,
        "the user file over the default"
    );
    std::fs::remove_file(user_home.join(".config/petty/config.toml")).unwrap();
    assert_eq!(run(false, false, false, &none), (30, "default".into()));
    assert_eq!(
        run(false, false, false, &system),
        (2, format!("file {}", system.display()))
    );
    std::fs::write(
        user_home.join(".config/petty/config.toml"),
        "[server]\nshutdown_grace_secs = 3\n",
    )
    .unwrap();
    assert_eq!(run(false, false, false, &system).0, 3);
    assert_eq!(
        run(true, false, false, &system),
        (4, format!("file {}", named.display()))
    );
    assert_eq!(
        run(true, true, false, &system),
        (5, "env PETTY_SERVER_SHUTDOWN_GRACE_SECS".into())
    );
    assert_eq!(run(true, true, true, &system), (6, "flag --grace".into()));
}

#[test]
fn paths_follow_the_xdg_directories_and_say_so() {
    let l = load_with(
        env(&[
            ("XDG_DATA_HOME", "/x/data"),
            ("XDG_RUNTIME_DIR", "relative"),
        ]),
        None,
        vec![],
    )
    .unwrap();
    assert_eq!(l.settings.paths.data_dir, Path::new("/x/data/petty"));
    assert_eq!(
        l.settings.paths.cache_dir,
        Path::new("/home/u/.cache/petty")
    );
    assert_eq!(
        l.settings.paths.search_path,
        [PathBuf::from("/usr/bin"), PathBuf::from("/bin")]
    );
    // A relative XDG value is ignored, as the specification says.
    assert!(!l.settings.paths.run_dir.starts_with("relative"));
    let rows = l.rows();
    let data = rows.iter().find(|r| r.key == "paths.data_dir").unwrap();
    assert_eq!(data.source, "default ($XDG_DATA_HOME/petty)");
    assert!(rows
        .iter()
        .any(|r| r.key == "limits.max_concurrent_boots" && r.value_text() == "(none)"));
    assert_eq!(rows.len(), KEYS.len());
}

#[test]
fn earlier_names_still_work_with_a_notice_and_lose_to_the_new_ones() {
    let l = load_with(
        env(&[
            ("PETTY_DATA_DIR", "/old"),
            ("PETTY_ACCEL", "tcg"),
            ("PETTY_BACKEND", "qemu"),
        ]),
        None,
        vec![],
    )
    .unwrap();
    assert_eq!(l.settings.paths.data_dir, Path::new("/old"));
    assert_eq!(l.settings.backend.qemu.accel, AccelSetting::Tcg);
    assert_eq!(l.settings.backend.kind, BackendKind::Qemu);
    assert_eq!(l.notices.len(), 3, "{:?}", l.notices);
    assert!(l
        .notices
        .iter()
        .any(|n| n.contains("PETTY_DATA_DIR is deprecated; use PETTY_PATHS_DATA_DIR")));
    assert_eq!(
        l.sources["paths.data_dir"].to_string(),
        "env PETTY_DATA_DIR (deprecated)"
    );
    let l = load_with(
        env(&[("PETTY_DATA_DIR", "/old"), ("PETTY_PATHS_DATA_DIR", "/new")]),
        None,
        vec![],
    )
    .unwrap();
    assert_eq!(l.settings.paths.data_dir, Path::new("/new"));
    // An old file's keys too.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("old.toml");
    std::fs::write(
        &f,
        "[backend]\nqemu_binary = \"/opt/qemu\"\nrun_dir = \"/r\"\n",
    )
    .unwrap();
    let l = load_with(env(&[]), Some(&f), vec![]).unwrap();
    assert_eq!(l.settings.backend.qemu.binary, "/opt/qemu");
    assert_eq!(l.settings.paths.run_dir, Path::new("/r"));
    assert_eq!(l.notices.len(), 2, "{:?}", l.notices);
    // A variable that is no setting is said, not silently dropped.
    let l = load_with(env(&[("PETTY_LIMTIS_MAX_VCPU", "4")]), None, vec![]).unwrap();
    assert!(
        l.notices[0].contains("PETTY_LIMTIS_MAX_VCPU is not a setting"),
        "{:?}",
        l.notices
    );
}

#[test]
fn variables_give_lists_and_typed_values() {
    let l = load_with(
        env(&[
            ("PETTY_API_KEYS", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
            (
                "PETTY_SERVER_ALLOWED_ORIGINS",
                "https://a.example,http://localhost:3000",
            ),
            ("PETTY_LIMITS_MAX_CONCURRENT_SANDBOXES", "7"),
            ("PETTY_BACKEND_QEMU_GUEST_ASLR", "on"),
            ("PETTY_BACKEND_FIRECRACKER_DIFF_SNAPSHOTS", "true"),
            ("PETTY_PATHS_SEARCH_PATH", "/opt/bin:/usr/bin"),
            ("PETTY_DEFAULTS_DISK_SIZE_MB", "4096"),
        ]),
        None,
        vec![],
    )
    .unwrap();
    let s = &l.settings;
    assert_eq!(s.server.api_keys.len(), 2);
    assert_eq!(s.server.allowed_origins.len(), 2);
    assert_eq!(s.limits.max_concurrent_sandboxes, 7);
    assert_eq!(s.backend.qemu.guest_aslr, Switch::On);
    assert!(s.backend.firecracker.diff_snapshots);
    assert_eq!(s.paths.search_path[0], Path::new("/opt/bin"));
    assert_eq!(s.defaults.disk_size_mb, Some(4096));
}

/// A config file's text, variables, and what the error must name.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn errors_name_the_key_and_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[Case] = &[
        ("[server]\nlisen = \"x\"\n", &[], "lisen"),
        ("[limitz]\n", &[], "limitz"),
        ("[defaults]\nvcpu = \"two\"\n", &[], "vcpu"),
        ("[defaults]\nvcpu = 0\n", &[], "defaults.vcpu"),
        ("[defaults]\nmemory_mb = 10\n", &[], "defaults.memory_mb"),
        ("[server]\non_shutdown = \"explode\"\n", &[], "explode"),
        (
            "[server]\nlisten = \"0.0.0.0:80\"\n",
            &[],
            "beyond loopback",
        ),
        ("[server]\nlisten = \"nope\"\n", &[], "server.listen"),
        ("[backend]\nkernel = \"/no/such\"\n", &[], "backend.kernel"),
        ("[backend.qemu]\naccel = \"hvf\"\n", &[], "hvf"),
        (
            "[limits]\nmax_download_mib = 0\n",
            &[],
            "limits.max_download_mib",
        ),
        ("[paths]\ndata_dir = \"rel\"\n", &[], "paths.data_dir"),
        (
            "",
            &[("PETTY_LIMITS_MAX_VCPU", "many")],
            "PETTY_LIMITS_MAX_VCPU",
        ),
        (
            "",
            &[("PETTY_BACKEND_FIRECRACKER_JAILER", "jailer")],
            "jailer_uid",
        ),
    ];
    for (text, vars, want) in cases {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        let e = load_with(env(vars), Some(&f), vec![])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want),
            "{text:?} {vars:?}: {e:?} should name {want:?}"
        );
    }
    let e = load_with(env(&[]), Some(&dir.path().join("none.toml")), vec![]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[test]
fn without_home_the_cache_is_the_password_database_home_never_a_shared_directory() {
    let l = load_with(
        Env::from_pairs([
            ("PATH", "/bin"),
            ("PETTY_NO_CONFIG", "1"),
            ("XDG_CACHE_HOME", "rel"),
        ]),
        None,
        vec![],
    )
    .unwrap();
    let cache = &l.settings.paths.cache_dir;
    assert!(!cache.starts_with(std::env::temp_dir()), "{cache:?}");
    match crate::paths::home(&Env::default()) {
        Some(home) => assert_eq!(*cache, home.join(".cache/petty")),
        None => assert_eq!(*cache, Path::new("/var/cache/petty")),
    }
}

#[test]
fn e2b_domain_comes_from_its_variable_and_must_be_a_dns_name() {
    let l = load_with(
        env(&[("PETTY_E2B_DOMAIN", "sandbox.example.com")]),
        None,
        vec![],
    )
    .unwrap();
    assert_eq!(l.settings.e2b.domain, "sandbox.example.com");
    for bad in [
        "https://sandbox.example.com",
        "sandbox.example.com:443",
        "*.example.com",
        "localhost",
        "Sandbox.Example.com",
        "127.0.0.1",
    ] {
        let mut s = l.settings.clone();
        s.e2b.domain = bad.into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("e2b.domain"), "{bad}: {e}");
    }
}
