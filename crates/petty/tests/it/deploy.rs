//! deploy/: the Kubernetes manifests checked offline against Kubernetes'
//! schemas (and a broken copy of them refused), the systemd units through
//! `systemd-analyze verify` after `scripts/install-service` put them in a
//! scratch root, and the container image built with buildah and run with
//! podman: `petty --version`, `petty doctor`, and `petty serve` with the
//! DaemonSet's capabilities and nothing more, creating a networked sandbox.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache_dir() -> PathBuf {
    super::settings().paths.cache_dir.clone()
}

/// The Python with kubernetes-validate that scripts/install-deps makes.
fn validator_python() -> PathBuf {
    let py = cache_dir().join("kubernetes-validate/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/install-deps (it installs kubernetes-validate there)",
        py.display()
    );
    py
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every document of a YAML file, as JSON (PyYAML of the validator's venv).
fn yaml(path: &Path) -> Vec<Value> {
    let out = run(Command::new(validator_python()).args([
        "-c",
        "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ]).arg(path));
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check_kubernetes(dir: &Path) -> Output {
    run(Command::new(validator_python())
        .arg(repo().join("scripts/check-kubernetes"))
        .arg(dir))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let dir = repo().join("deploy/kubernetes");
    let out = check_kubernetes(&dir);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let resources = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "kustomization.yaml")
        .map(|e| yaml(&e.path()).len())
        .sum::<usize>();
    assert!(resources >= 7, "{stdout}");
    assert!(
        stdout.contains(&format!("{resources} resources valid")),
        "not every resource was checked: {stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        resources,
        "{stdout}"
    );

    // Each ConfigMap's config.toml is settings petty takes.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["node-config.yaml", "gateway-config.yaml"] {
        let cm = &yaml(&dir.join(f))[0];
        let toml = cm["data"]["config.toml"]
            .as_str()
            .expect("a config.toml key");
        let path = tmp.path().join(f).with_extension("toml");
        std::fs::write(&path, toml).unwrap();
        let out = run(Command::new(env!("CARGO_BIN_EXE_petty"))
            .env("PETTY_NO_CONFIG", "1")
            // As the pods have them, from their Secrets.
            .env("PETTY_SERVER_API_KEYS", "node-key-0123456789abcdef")
            .env("PETTY_GATEWAY_API_KEYS", "gateway-key-0123456789abcdef")
            .env("PETTY_GATEWAY_NODE_KEY", "node-key-0123456789abcdef")
            .arg("--config")
            .arg(&path)
            .args(["config", "show"]));
        assert!(
            out.status.success(),
            "{f}'s config.toml: {}",
            text(&out.stderr)
        );
    }
}

/// The checker refuses what is wrong: each breakage alone in a copy.
#[test]
fn kubernetes_checker_refuses_broken_manifests() {
    let dir = repo().join("deploy/kubernetes");
    let cases: &[(&str, &str, &str, &str)] = &[
        // An unknown field (strict schema).
        (
            "node-daemonset.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "readOnlyRootFileSystem",
        ),
        // A wrong type.
        (
            "node-daemonset.yaml",
            "containerPort: 8080",
            "containerPort: \"eighty\"",
            "is not of type 'integer'",
        ),
        // A kind with no schema.
        (
            "gateway-service.yaml",
            "kind: Service",
            "kind: Servce",
            "Couldn't find schema",
        ),
        // A Service selecting nothing.
        (
            "node-service.yaml",
            "    app.kubernetes.io/name: petty-node\n  ports",
            "    app.kubernetes.io/name: petty-nod\n  ports",
            "matches no workload",
        ),
        // What the API server refuses beyond the schema.
        (
            "node-daemonset.yaml",
            "            privileged: false\n",
            "            privileged: false\n            allowPrivilegeEscalation: false\n",
            "allowPrivilegeEscalation: false beside SYS_ADMIN",
        ),
        (
            "gateway-deployment.yaml",
            "privileged: false",
            "privileged: true",
            "privileged: true",
        ),
    ];
    for (file, from, to, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&dir, tmp.path());
        let path = tmp.path().join(file);
        let body = std::fs::read_to_string(&path).unwrap();
        assert!(body.contains(from), "{file} has no {from:?} to break");
        std::fs::write(&path, body.replacen(from, to, 1)).unwrap();
        let out = check_kubernetes(tmp.path());
        let stdout = text(&out.stdout);
        assert!(!out.status.success(), "{file} with {to:?} passed: {stdout}");
        assert!(
            stdout.contains(want),
            "{file} with {to:?}: wanted {want:?} in {stdout}"
        );
    }
    // A manifest the kustomization does not list.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir, tmp.path());
    std::fs::copy(dir.join("node-service.yaml"), tmp.path().join("extra.yaml")).unwrap();
    let out = check_kubernetes(tmp.path());
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("extra.yaml is in the directory but not in resources"));
}

/// `systemd-analyze verify` over a unit whose ExecStart names `bin`: its
/// complaints about the unit (it prints them and still exits 0 for many).
fn verify_unit(unit: &Path, bin: &Path, dir: &Path) -> Result<(), String> {
    let body = std::fs::read_to_string(unit).unwrap();
    let name = unit.file_name().unwrap();
    let copy = dir.join(name);
    std::fs::write(
        &copy,
        body.replace("/usr/local/bin/petty", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let stderr = text(&out.stderr);
    let name = name.to_string_lossy();
    let about: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&*name) || l.contains(copy.to_str().unwrap()))
        .collect();
    if out.status.success() && about.is_empty() {
        Ok(())
    } else {
        Err(format!("{} ({}): {stderr}", name, out.status))
    }
}

#[test]
fn systemd_units_install_and_verify() {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "no systemd-analyze: run scripts/install-deps (package systemd)"
    );
    let root = tempfile::tempdir().unwrap();
    let install = || {
        run(Command::new(repo().join("scripts/install-service"))
            .arg("--petty")
            .arg(env!("CARGO_BIN_EXE_petty"))
            .arg("--gateway")
            .arg("--root")
            .arg(root.path()))
    };
    let out = install();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    for f in [
        "usr/local/bin/petty",
        "etc/systemd/system/petty.service",
        "etc/systemd/system/petty-gateway.service",
        "etc/petty/config.toml",
        "etc/petty/petty.env",
        "etc/petty/gateway.env",
    ] {
        assert!(root.path().join(f).is_file(), "{f} not installed: {said}");
        assert!(
            said.contains(&root.path().join(f).display().to_string()),
            "it did not say it installed {f}: {said}"
        );
    }
    assert!(said.contains("systemd was not told"), "{said}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(root.path().join("etc/petty/petty.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key file is readable by others");
    // The config it wrote is settings petty takes.
    let out = run(Command::new(root.path().join("usr/local/bin/petty"))
        .env("PETTY_NO_CONFIG", "1")
        .arg("--config")
        .arg(root.path().join("etc/petty/config.toml"))
        .args(["config", "show"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Again: the binary and units replaced, the config and keys kept.
    std::fs::write(
        root.path().join("etc/petty/petty.env"),
        "PETTY_SERVER_API_KEYS=kept-key-0123456789\n",
    )
    .unwrap();
    let out = install();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("kept"), "{}", text(&out.stdout));
    assert!(
        std::fs::read_to_string(root.path().join("etc/petty/petty.env"))
            .unwrap()
            .contains("kept-key")
    );

    let bin = root.path().join("usr/local/bin/petty");
    let scratch = tempfile::tempdir().unwrap();
    for unit in ["petty.service", "petty-gateway.service"] {
        let path = root.path().join("etc/systemd/system").join(unit);
        verify_unit(&path, &bin, scratch.path()).unwrap();
    }

    // The same check refuses a broken unit: a misspelt key, a bad value.
    let unit = root.path().join("etc/systemd/system/petty.service");
    let body = std::fs::read_to_string(&unit).unwrap();
    for (from, to) in [
        ("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
        ("KillMode=process", "KillMode=proces"),
    ] {
        let broken = scratch.path().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        let path = broken.join("petty.service");
        std::fs::write(&path, body.replace(from, to)).unwrap();
        assert!(
            verify_unit(&path, &bin, &broken).is_err(),
            "a unit with {to} passed"
        );
    }

    // The unit's capabilities are the DaemonSet's.
    let caps_line = body
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=");
    let mut unit_caps: Vec<String> = caps_line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    unit_caps.sort();
    let mut pod_caps = node_capabilities();
    pod_caps.sort();
    assert_eq!(
        unit_caps, pod_caps,
        "petty.service and the DaemonSet differ"
    );
}

/// The capabilities the DaemonSet adds to `petty serve`.
fn node_capabilities() -> Vec<String> {
    let ds = &yaml(&repo().join("deploy/kubernetes/node-daemonset.yaml"))[0];
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// podman and buildah on a storage of this test's own (vfs: works
/// everywhere, overlay or not), removed at the end.
struct Containers {
    storage: tempfile::TempDir,
    /// Options `podman run` needs on this host (runtime, limits).
    run_opts: Vec<String>,
    tag: String,
    names: Vec<String>,
}

impl Containers {
    fn global(&self) -> Vec<String> {
        let s = self.storage.path();
        vec![
            "--storage-driver".into(),
            "vfs".into(),
            "--root".into(),
            s.join("root").display().to_string(),
            "--runroot".into(),
            s.join("run").display().to_string(),
        ]
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(self.global());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.podman();
        c.arg("run").arg("--rm").args(&self.run_opts).args(args);
        run(&mut c)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.podman().args(["rm", "-f", "-t", "5", n]).output();
        }
        let _ = self.podman().args(["rmi", "-f", &self.tag]).output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        .args(["-s", "-m", "300", "-w", "\n%{http_code}"])
        .args(args));
    let body = text(&out.stdout);
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

#[test]
fn container_image_builds_and_serves() {
    for tool in ["buildah", "podman"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "no {tool}: run scripts/install-deps"
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "deploy: SKIPPED the container image: building its Debian tree (debootstrap) \
             and running QEMU and sandbox networks in it need root, and this test runs as uid {}",
            unsafe { libc::geteuid() }
        );
        return;
    }
    let petty = env!("CARGO_BIN_EXE_petty");
    let mut c = Containers {
        storage: tempfile::Builder::new()
            .prefix("petty-containers-")
            .tempdir_in(cache_dir())
            .unwrap(),
        run_opts: Vec::new(),
        tag: format!("localhost/petty:it-{}", std::process::id()),
        names: Vec::new(),
    };
    super::assets();
    let out = run(Command::new(repo().join("deploy/container/build"))
        .env("PETTY_NO_CONFIG", "1")
        .env("BUILDAH_OPTS", c.global().join(" "))
        .args(["--petty", petty, "--tag", &c.tag]));
    assert!(
        out.status.success(),
        "deploy/container/build: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), c.tag);

    // A runtime that can start containers here: the default (crun), else
    // runc (crun refuses hybrid cgroups). Limits no higher than this
    // process's, which a runtime without CAP_SYS_RESOURCE cannot raise.
    let version = text(&run(Command::new(petty).arg("--version")).stdout);
    let mut why = String::new();
    let limits = [
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ];
    let mut ran = false;
    for runtime in [None, Some("runc")] {
        c.run_opts = limits.iter().map(|s| s.to_string()).collect();
        if let Some(r) = runtime {
            c.run_opts
                .splice(0..0, ["--runtime".to_string(), r.to_string()]);
        }
        let out = c.run(&["--network", "none", &c.tag, "--version"]);
        if out.status.success() {
            assert_eq!(text(&out.stdout), version);
            ran = true;
            break;
        }
        why.push_str(&format!(
            "{}: {}",
            runtime.unwrap_or("the default runtime"),
            text(&out.stderr)
        ));
    }
    if !ran {
        eprintln!(
            "deploy: built {} but SKIPPED running it: podman cannot start a container on this host: {why}",
            c.tag
        );
        return;
    }

    // The DaemonSet's init container seeds a node's cache from the image;
    // then `petty serve` runs as the DaemonSet runs it: root, read-only
    // root file system, its capabilities and no other, the devices, the
    // node ConfigMap as /etc/petty/config.toml.
    let ds = &yaml(&repo().join("deploy/kubernetes/node-daemonset.yaml"))[0];
    let seed: Vec<String> = ds["spec"]["template"]["spec"]["initContainers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().replace("/host-cache/", "/seed/"))
        .collect();
    let state = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let cm = &yaml(&repo().join("deploy/kubernetes/node-config.yaml"))[0];
    std::fs::write(
        etc.path().join("config.toml"),
        cm["data"]["config.toml"].as_str().unwrap(),
    )
    .unwrap();
    let seed_mount = format!("{}:/seed", cache.path().display());
    let mut args = vec![
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "all",
        "-v",
        &seed_mount,
        "--entrypoint",
        &seed[0],
        &c.tag,
    ];
    args.extend(seed[1..].iter().map(String::as_str));
    let out = c.run(&args);
    assert!(
        out.status.success(),
        "seeding the cache: {}",
        text(&out.stderr)
    );
    let doctor_cache = format!("{}:/var/cache/petty", cache.path().display());
    let out = c.run(&["--network", "none", "-v", &doctor_cache, &c.tag, "doctor"]);
    let report = text(&out.stdout) + &text(&out.stderr);
    assert!(
        report.contains("ok   asset: kernel") && report.contains("ok   asset: rootfs"),
        "petty doctor in the image: {report}"
    );

    let port = free_port();
    let key = "deploy-test-key-0123456789";
    let name = format!("petty-it-serve-{}", std::process::id());
    c.names.push(name.clone());
    let caps = node_capabilities().join(",");
    let mut cmd = c.podman();
    cmd.args(["run", "-d", "--name", &name])
        .args(&c.run_opts)
        .args([
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/tmp",
        ])
        .args(["--cap-drop", "all", "--cap-add", &caps])
        .args(["--device", "/dev/net/tun"]);
    if Path::new("/dev/kvm").exists() {
        cmd.args(["--device", "/dev/kvm"]);
    }
    cmd.arg("-v")
        .arg(format!("{}:/var/lib/petty", state.path().display()))
        .arg("-v")
        .arg(&doctor_cache)
        .arg("-v")
        .arg(format!("{}:/etc/petty:ro", etc.path().display()))
        .args([
            "-e",
            &format!("PETTY_SERVER_API_KEYS={key}"),
            "-e",
            "PETTY_POOL_SIZE=0",
        ])
        .arg(&c.tag)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "podman run serve: {}",
        text(&out.stderr)
    );
    let logs = || {
        let o = run(c.podman().args(["logs", &name]));
        text(&o.stdout) + &text(&o.stderr)
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..600 {
        if curl(&[&format!("{base}/healthz")]).0 == 200 {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        up,
        "petty serve in the container never answered /healthz: {}",
        logs()
    );
    assert_eq!(curl(&[&format!("{base}/readyz")]).0, 200, "{}", logs());
    let auth = format!("Authorization: Bearer {key}");
    let json = "Content-Type: application/json";
    assert_eq!(
        curl(&[&format!("{base}/v1/sandboxes")]).0,
        401,
        "no key, no answer"
    );

    // A sandbox with a network: namespaces, TAP, nftables, the helper's
    // resolver on port 53 and its drop to nobody, all with those
    // capabilities; removing it kills the helper.
    let (code, body) = curl(&[
        "-XPOST",
        &format!("{base}/v1/sandboxes"),
        "-H",
        &auth,
        "-H",
        json,
        "-d",
        r#"{"name": "box", "network": "public"}"#,
    ]);
    assert!(
        (200..300).contains(&code),
        "create: {code} {body}\n{}",
        logs()
    );
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = curl(&[
        "-XPOST",
        &format!("{base}/v1/sandboxes/box/exec"),
        "-H",
        &auth,
        "-H",
        json,
        "-d",
        r#"{"command": "grep -c nameserver /etc/resolv.conf; echo hello"}"#,
    ]);
    assert_eq!(code, 200, "exec: {body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["stdout"], "1\nhello\n", "{body}");
    let (code, body) = curl(&[&format!("{base}/v1/sandboxes/box/network"), "-H", &auth]);
    assert_eq!(code, 200, "network status: {body}");
    assert!(
        !super::processes_mentioning(&format!(".net/{id}/")).is_empty(),
        "no network helper for {id}"
    );
    let (code, body) = curl(&["-XDELETE", &format!("{base}/v1/sandboxes/box"), "-H", &auth]);
    assert!((200..300).contains(&code), "delete: {code} {body}");
    let helper_gone = (0..300).any(|_| {
        let gone = super::processes_mentioning(&format!(".net/{id}/")).is_empty();
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        gone
    });
    assert!(
        helper_gone,
        "the network helper outlived its sandbox: {}",
        logs()
    );

    // SIGTERM: the ConfigMap's on_shutdown = "destroy".
    let out = run(c.podman().args(["stop", "-t", "60", &name]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = logs();
    assert!(said.contains("petty: stopped"), "{said}");
}
