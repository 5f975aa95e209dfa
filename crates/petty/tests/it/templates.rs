//! Templates (issue 15) through the `petty` CLI on real VMs: Dockerfile
//! builds (a package installed from the host's own Debian registry, COPY,
//! ENV, WORKDIR, USER, ARG, CMD, .dockerignore), their step cache, and
//! OCI images made by Debian's `umoci` and `skopeo` from `busybox-static`:
//! an `oci-archive`, a `docker-archive`, and a real registry on loopback
//! (Debian's `docker-registry`), with whiteouts, digests checked and
//! hostile layers refused. `scripts/install-deps` installs the tools.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::Env;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `petty ARGS` that must succeed; (stdout, stderr).
fn ok(env: &Env, args: &[&str]) -> (String, String) {
    let out = env.run(args);
    assert!(
        out.status.success(),
        "petty {args:?} failed: {}",
        stderr(&out)
    );
    (stdout(&out), stderr(&out))
}

/// `petty ARGS` that must fail; its stderr.
fn fails(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert!(
        !out.status.success(),
        "petty {args:?} succeeded: {}",
        stdout(&out)
    );
    stderr(&out)
}

/// The `step N/M (line L): TEXT [cached]` lines of a build's stderr, as
/// (N, cached).
fn steps(log: &str) -> Vec<(usize, bool)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            let n = rest.split('/').next()?.parse().ok()?;
            Some((n, l.ends_with(" [cached]")))
        })
        .collect()
}

/// `petty template build NAME --from-image SOURCE`, which must succeed;
/// (stdout, stderr).
fn from_image(env: &Env, name: &str, source: &str) -> (String, String) {
    ok(env, &["template", "build", name, "--from-image", source])
}

/// `petty run --template TEMPLATE -- sh -c SCRIPT`, which must succeed;
/// its stdout.
fn sh_in(env: &Env, template: &str, script: &str) -> String {
    ok(
        env,
        &["run", "--template", template, "--", "sh", "-c", script],
    )
    .0
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// The templates `petty templates --json` lists, as JSON.
fn templates(env: &Env) -> Vec<serde_json::Value> {
    ok(env, &["templates", "--json"])
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_dockerfile_installs_a_package_from_the_hosts_registry_and_a_rebuild_runs_only_the_changed_step(
) {
    // The build sandbox's network: root and nft, as every network test.
    if !crate::egress::can_run() {
        return;
    }
    let _turn = crate::egress::turn();
    let env = Env::new();
    let ctx = tempfile::tempdir().unwrap();
    // The host's own registry, as its apt sources name it.
    let (uri, suite) = crate::egress::apt_source();
    write(
        ctx.path(),
        "sources.list",
        &format!("deb {uri} {suite} main\n"),
    );
    write(ctx.path(), "app/app.py", "print('app ok')\n");
    let dockerfile = |last: &str| {
        format!(
            "FROM base\n\
             COPY sources.list /etc/apt/sources.list\n\
             RUN rm -f /etc/apt/sources.list.d/*; apt-get update -q && \\\n    \
             apt-get install -y -q --no-install-recommends python3-six && rm -rf /var/lib/apt/lists/*\n\
             COPY app/ /srv/app/\n\
             ENV APP_MODE=test\n\
             WORKDIR /srv/app\n\
             {last}\n"
        )
    };
    write(
        ctx.path(),
        "Dockerfile",
        &dockerfile("RUN echo one > last.txt"),
    );
    let dir = ctx.path().to_str().unwrap();

    let t0 = Instant::now();
    let (name, log) = ok(&env, &["template", "build", "pyapp", dir]);
    let first = t0.elapsed();
    assert_eq!(name.trim(), "pyapp");
    assert_eq!(
        steps(&log),
        (1..=6).map(|n| (n, false)).collect::<Vec<_>>(),
        "{log}"
    );
    // The step's own output streamed.
    assert!(log.contains("Setting up python3-six"), "{log}");

    let out = sh_in(
        &env,
        "pyapp",
        "python3 -c 'import six; print(six.__name__)'; python3 app.py; \
         echo $APP_MODE; pwd; cat last.txt",
    );
    assert_eq!(out, "six\napp ok\ntest\n/srv/app\none\n");

    // Only the last line changes: only its step runs again.
    write(
        ctx.path(),
        "Dockerfile",
        &dockerfile("RUN echo two > last.txt"),
    );
    let t0 = Instant::now();
    let (_, log) = ok(&env, &["template", "build", "pyapp", dir]);
    let rebuild = t0.elapsed();
    let mut want: Vec<(usize, bool)> = (1..=5).map(|n| (n, true)).collect();
    want.push((6, false));
    assert_eq!(steps(&log), want, "{log}");
    assert!(
        !log.contains("Setting up python3-six"),
        "a cached step ran: {log}"
    );
    eprintln!(
        "build: first {:.1} s, rebuild after a change to the last line {:.1} s",
        first.as_secs_f64(),
        rebuild.as_secs_f64()
    );
    let out = sh_in(&env, "pyapp", "cat last.txt; python3 -c 'import six'");
    assert_eq!(out, "two\n");
    assert_eq!(templates(&env).len(), 1);
    env.assert_clean();
}

#[test]
fn dockerfile_defaults_users_ignores_errors_and_template_management() {
    let env = Env::new();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "kept.txt", "kept\n");
    write(ctx.path(), "secret.txt", "secret\n");
    write(ctx.path(), ".dockerignore", "secret.txt\n");
    write(
        ctx.path(),
        "Dockerfile",
        "FROM base\n\
         ARG WHO=nobody\n\
         LABEL org.example.team=agents\n\
         COPY . /ctx/\n\
         RUN useradd -m -u 1234 worker && chown -R worker /ctx\n\
         USER worker\n\
         WORKDIR /home/worker\n\
         ENV GREETING=\"hi ${WHO}\"\n\
         ENTRYPOINT [\"sh\", \"-c\"]\n\
         CMD [\"echo $GREETING from $(id -un) in $(pwd)\"]\n",
    );
    let dir = ctx.path().to_str().unwrap();
    let (out, _) = ok(
        &env,
        &[
            "template",
            "build",
            "tools",
            dir,
            "--build-arg",
            "WHO=tester",
            "--json",
        ],
    );
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["name"], "tools");
    assert_eq!(record["defaults"]["user"], "worker");
    assert_eq!(record["defaults"]["labels"][0][1], "agents");

    // No command: the template's CMD, as its USER, in its WORKDIR.
    let (out, _) = ok(&env, &["run", "--template", "tools"]);
    assert_eq!(out, "hi tester from worker in /home/worker\n");
    // The context went in without what .dockerignore names.
    let (out, _) = ok(
        &env,
        &["run", "--template", "tools", "--", "ls", "-A", "/ctx"],
    );
    let names: Vec<&str> = out.lines().collect();
    assert!(
        names.contains(&"kept.txt") && !names.contains(&"secret.txt"),
        "{out}"
    );

    // A sandbox from it: the request's user and cwd win over the defaults.
    let (name, _) = ok(&env, &["create", "--template", "tools"]);
    let name = name.trim();
    let (out, _) = ok(&env, &["exec", name, "--", "sh", "-c", "id -u; pwd"]);
    assert_eq!(out, "1234\n/home/worker\n");
    let (out, _) = ok(
        &env,
        &[
            "exec",
            "--user",
            "root",
            "--cwd",
            "/",
            name,
            "--",
            "sh",
            "-c",
            "id -u; pwd",
        ],
    );
    assert_eq!(out, "0\n/\n");
    let err = fails(&env, &["templates", "rm", "tools"]);
    assert!(err.contains("tools") && err.contains("in use"), "{err}");
    ok(&env, &["rm", "-f", name]);

    // A failing step and an unsupported instruction name their line; the
    // build sandbox goes.
    write(
        ctx.path(),
        "Dockerfile",
        "FROM base\nRUN true\nRUN exit 3\n",
    );
    let err = fails(&env, &["template", "build", "broken", dir]);
    assert!(
        err.contains("line 3") && err.contains("exit code 3"),
        "{err}"
    );
    write(ctx.path(), "Dockerfile", "FROM base\nRUN true\nFROM base\n");
    let err = fails(&env, &["template", "build", "broken", dir]);
    assert!(
        err.contains("line 3") && err.contains("not supported"),
        "{err}"
    );
    let err = fails(&env, &["run", "--template", "broken", "--", "true"]);
    assert!(err.contains("broken"), "{err}");

    // A template whose steps change no file has an image of its own: its
    // defaults reach execs from another process, and `base`'s execs stay
    // without them.
    write(ctx.path(), "Dockerfile", "FROM base\nENV ONLY_META=1\n");
    ok(&env, &["template", "build", "meta", dir]);
    let (meta, _) = ok(&env, &["create", "--template", "meta"]);
    let (plain, _) = ok(&env, &["create"]);
    let (out, _) = ok(
        &env,
        &[
            "exec",
            meta.trim(),
            "--",
            "sh",
            "-c",
            "echo ${ONLY_META:-unset}",
        ],
    );
    assert_eq!(out, "1\n");
    let (out, _) = ok(
        &env,
        &[
            "exec",
            plain.trim(),
            "--",
            "sh",
            "-c",
            "echo ${ONLY_META:-unset}",
        ],
    );
    assert_eq!(out, "unset\n");
    ok(&env, &["rm", "-f", meta.trim(), plain.trim()]);
    ok(&env, &["templates", "rm", "meta"]);

    // Removed when unused; prune takes the step caches.
    ok(&env, &["templates", "rm", "tools"]);
    assert!(templates(&env).is_empty());
    let (out, _) = ok(&env, &["templates", "prune", "--json"]);
    let pruned: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(pruned["step_caches"].as_u64().unwrap() >= 3, "{out}");
    assert_eq!(ok(&env, &["snapshots"]).0.lines().count(), 1);
    let images = env.data.path().join("images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    env.assert_clean();
}

fn tool(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-deps installs it)", args[0]));
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

/// An OCI layout at `dir/layout`, tag `bb`, made with umoci: busybox and two
/// files in a first layer, one of them deleted in a second (a whiteout),
/// with `Env`, `WorkingDir` and `Cmd` set.
fn busybox_layout(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let layout = dir.join("layout");
    let l = layout.to_str().unwrap();
    let image = format!("{l}:bb");
    let b1 = dir.join("b1");
    let b2 = dir.join("b2");
    tool(&["umoci", "init", "--layout", l]);
    tool(&["umoci", "new", "--image", &image]);
    tool(&["umoci", "unpack", "--image", &image, b1.to_str().unwrap()]);
    let root = b1.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("etc/gone.txt"), "doomed\n").unwrap();
    std::fs::write(root.join("etc/kept.txt"), "kept\n").unwrap();
    tool(&["umoci", "repack", "--image", &image, b1.to_str().unwrap()]);
    tool(&["umoci", "unpack", "--image", &image, b2.to_str().unwrap()]);
    std::fs::remove_file(b2.join("rootfs/etc/gone.txt")).unwrap();
    tool(&["umoci", "repack", "--image", &image, b2.to_str().unwrap()]);
    tool(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.env",
        "GREETING=from-the-image",
        "--config.workingdir",
        "/etc",
        "--config.cmd",
        "/bin/busybox",
        "--config.cmd",
        "echo",
        "--config.cmd",
        "the-cmd",
    ]);
    layout
}

/// [`busybox_layout`] under `dir` as an `oci-archive` at `archive`.
pub(crate) fn busybox_archive(dir: &Path, archive: &Path) {
    let layout = busybox_layout(&dir.join("oci"));
    tool(&[
        "skopeo",
        "copy",
        "-q",
        &format!("oci:{}:bb", layout.display()),
        &format!("oci-archive:{}", archive.display()),
    ]);
}

/// Debian's `docker-registry` serving from `dir` on a free loopback port,
/// until dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, None, None)
    }

    /// With `tls`, (certificate, key) PEM files: it serves HTTPS only; with
    /// `htpasswd`, it wants those logins (Basic).
    fn start_with(dir: &Path, tls: Option<(&Path, &Path)>, htpasswd: Option<&Path>) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        let mut f = std::fs::File::create(&config).unwrap();
        write!(
            f,
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n",
            dir.join("storage").display()
        )
        .unwrap();
        if let Some(file) = htpasswd {
            write!(
                f,
                "auth:\n  htpasswd:\n    realm: petty-test\n    path: {}\n",
                file.display()
            )
            .unwrap();
        }
        writeln!(f, "http:\n  addr: 127.0.0.1:{port}").unwrap();
        if let Some((cert, key)) = tls {
            write!(
                f,
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
            .unwrap();
        }
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/install-deps installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, port }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn oci_archives_and_a_loopback_registry_make_the_same_template_with_whiteouts_applied() {
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let l = layout.to_str().unwrap();
    let archive = work.path().join("bb.tar");
    tool(&[
        "skopeo",
        "copy",
        "-q",
        &format!("oci:{l}:bb"),
        &format!("oci-archive:{}", archive.display()),
    ]);
    let env = Env::new();
    let (_, log) = from_image(&env, "bb", &format!("oci-archive:{}", archive.display()));
    assert!(log.contains("layer 2/2"), "{log}");
    let check =
        |env: &Env, name: &str| {
            // No shell in the image: execs still run, with its defaults.
            let (out, _) = ok(env, &["run", "--template", name]);
            assert_eq!(out, "the-cmd\n");
            let (out, _) = ok(
            env,
            &["run", "--template", name, "--", "/bin/busybox", "sh", "-c",
              "echo $GREETING; pwd; ls /etc; test -e /etc/gone.txt && echo GONE-IS-THERE; true"],
        );
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(&lines[..2], ["from-the-image", "/etc"], "{out}");
            assert!(lines.contains(&"kept.txt"), "{out}");
            assert!(
                !out.contains("gone.txt") && !out.contains("GONE-IS-THERE"),
                "{out}"
            );
        };
    check(&env, "bb");
    let digest = templates(&env)[0]["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // Forks of a sandbox from it: each child has the parent's files and
    // its own writes.
    let (parent, _) = ok(&env, &["create", "--template", "bb"]);
    let parent = parent.trim();
    ok(
        &env,
        &[
            "exec",
            parent,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "echo parent > /mark",
        ],
    );
    let (children, _) = ok(&env, &["fork", parent, "--count", "2"]);
    let children: Vec<&str> = children.lines().collect();
    assert_eq!(children.len(), 2);
    for (i, c) in children.iter().enumerate() {
        let script = format!("cat /mark; echo {i} > /mine; cat /mine; echo $GREETING");
        let (out, _) = ok(
            &env,
            &["exec", c, "--", "/bin/busybox", "sh", "-c", &script],
        );
        assert_eq!(out, format!("parent\n{i}\nfrom-the-image\n"));
    }
    let mut rm = vec!["rm", "-f", parent];
    rm.extend(&children);
    ok(&env, &rm);
    for s in ok(&env, &["snapshots"]).0.lines().skip(1) {
        ok(
            &env,
            &["snapshots", "rm", s.split_whitespace().next().unwrap()],
        );
    }

    // A Dockerfile FROM the archive: its steps run in the image (exec form:
    // it has no /bin/sh), over the image's defaults.
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!(
            "FROM oci-archive:{}\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /built\"]\n\
             ENV SECOND=yes\n",
            archive.display()
        ),
    );
    ok(
        &env,
        &["template", "build", "bbplus", ctx.path().to_str().unwrap()],
    );
    let (out, _) = ok(
        &env,
        &[
            "run",
            "--template",
            "bbplus",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "cat /built; echo $GREETING $SECOND; pwd",
        ],
    );
    assert_eq!(out, "built\nfrom-the-image yes\n/etc\n");

    // The configured caps hold: a two-layer image past `image.max_layers`.
    let out = env
        .cmd()
        .env("PETTY_IMAGE_MAX_LAYERS", "1")
        .args(["template", "build", "capped", "--from-image"])
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("image.max_layers"), "{err}");

    // The same image as `docker save`/`skopeo` write a docker-archive.
    let docker = work.path().join("bb-docker.tar");
    tool(&[
        "skopeo",
        "copy",
        "-q",
        &format!("oci:{l}:bb"),
        &format!("docker-archive:{}:bb:1", docker.display()),
    ]);
    from_image(&env, "bbd", &format!("docker-archive:{}", docker.display()));
    check(&env, "bbd");

    // A registry on loopback holding it, pushed with skopeo: a fresh data
    // directory pulls every blob over HTTP and gets the same image.
    let registry = Registry::start(work.path());
    let repo = format!("127.0.0.1:{}/petty-test/bb", registry.port);
    tool(&[
        "skopeo",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{l}:bb"),
        &format!("docker://{repo}:1"),
    ]);
    let fresh = Env::new();
    let (_, log) = from_image(&fresh, "bbr", &format!("{repo}:1"));
    assert!(log.contains("downloading"), "{log}");
    assert_eq!(templates(&fresh)[0]["digest"], digest.as_str());
    check(&fresh, "bbr");
    // By digest: the right one builds, a wrong one is refused.
    from_image(&fresh, "bbr2", &format!("{repo}@{digest}"));
    let wrong = format!("{repo}@sha256:{}", "0".repeat(64));
    let err = fails(
        &fresh,
        &["template", "build", "bbx", "--from-image", &wrong],
    );
    assert!(err.contains("not found"), "{err}");
    // A blob the registry serves altered is refused by its digest.
    let blobs = work.path().join("storage/docker/registry/v2/blobs/sha256");
    let biggest = walk_files(&blobs)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    let tampered = Env::new();
    let err = fails(
        &tampered,
        &[
            "template",
            "build",
            "bbt",
            "--from-image",
            &format!("{repo}:1"),
        ],
    );
    assert!(err.contains("tampered"), "{err}");
    assert!(templates(&tampered).is_empty());
    for e in [&env, &fresh, &tampered] {
        e.assert_clean();
    }
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// One ustar entry: `kind` b'0' file, b'2' symlink, b'3' char device.
fn tar_entry(path: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// An OCI layout directory holding one image of one uncompressed layer.
fn layout_with_layer(dir: &Path, layer: &[u8]) {
    use sha2::{Digest, Sha256};
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    })
    .to_string();
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": layer_digest, "size": layer_size }],
    })
    .to_string();
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest, "size": manifest_size }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn hostile_layers_are_refused_with_a_clear_error_and_leave_nothing() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "traversal",
            [
                tar_entry("bin/busybox", b'0', "", &busybox),
                tar_entry("../../escaped", b'0', "", b"x"),
            ]
            .concat(),
            "../../escaped",
        ),
        (
            "symlink",
            tar_entry("etc/up", b'2', "../../../../tmp", b""),
            "etc/up",
        ),
        ("device", tar_entry("dev/sda", b'3', "", b""), "dev/sda"),
    ];
    for (name, entries, path) in cases {
        let dir = work.path().join(name);
        let mut layer = entries;
        layer.extend_from_slice(&[0u8; 1024]);
        layout_with_layer(&dir, &layer);
        let err = fails(
            &env,
            &[
                "template",
                "build",
                name,
                "--from-image",
                &format!("oci:{}", dir.display()),
            ],
        );
        assert!(
            err.contains("refusing layer") && err.contains(path) && err.contains("hostile"),
            "{name}: {err}"
        );
    }
    assert!(!work.path().parent().unwrap().join("escaped").exists());
    assert!(templates(&env).is_empty());
    // No unpacked tree or half-made image left behind.
    let images = env.data.path().join("images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    env.assert_clean();
}

/// Waits (bounded) until `child`'s stderr has a line containing `what`;
/// everything it read.
fn wait_for_line(child: &mut Child, what: &str) -> String {
    use std::io::BufRead as _;
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(what) {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {what:?} within 120 s: {seen}"),
        }
    }
}

#[test]
fn an_interrupted_build_leaves_only_whole_cache_entries() {
    let env = Env::new();
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().to_str().unwrap();
    let dockerfile = |second: &str| format!("FROM base\nRUN echo first > /first\n{second}\n");
    for signal in [libc::SIGINT, libc::SIGKILL] {
        write(
            ctx.path(),
            "Dockerfile",
            &dockerfile("RUN echo started; sleep 600"),
        );
        let mut child = env
            .cmd()
            .args(["template", "build", "slow", dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_line(&mut child, "started");
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(!status.success());
        // Ctrl-C removes the build sandbox itself; after a SIGKILL the next
        // petty process does (it was bound to the build's process).
        ok(&env, &["ls"]);
        env.assert_clean();
        assert!(templates(&env).is_empty());
    }
    // The step that finished is a valid cache entry: the rebuild takes it.
    // With the cache capped below what it holds, the build's step caches go
    // once it is done, oldest first.
    write(ctx.path(), "Dockerfile", &dockerfile("RUN cat /first"));
    let out = env
        .cmd()
        .env("PETTY_TEMPLATES_CACHE_MAX_MIB", "1")
        .args(["template", "build", "slow", dir])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(steps(&log), [(1, true), (2, false)], "{log}");
    assert!(log.contains("over its cap"), "{log}");
    assert_eq!(ok(&env, &["snapshots"]).0.lines().count(), 1);
    let (out, _) = ok(&env, &["run", "--template", "slow", "--", "cat", "/first"]);
    assert_eq!(out, "first\n");
    // --no-cache runs every step again.
    let (_, log) = ok(&env, &["template", "build", "slow", dir, "--no-cache"]);
    assert_eq!(steps(&log), [(1, false), (2, false)], "{log}");
    env.assert_clean();
}

#[test]
fn a_registry_over_https_with_a_login_is_pulled_from_with_its_authority_and_auth_json() {
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(&work.path().join("oci"));
    // A certificate for 127.0.0.1, its own authority.
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    tool(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    // It wants a login: one user, its password hashed with bcrypt.
    let htpasswd = work.path().join("htpasswd");
    let hash = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "{}", stderr(&hash));
    std::fs::write(&htpasswd, format!("petty:{}", stdout(&hash))).unwrap();
    let registry = Registry::start_with(work.path(), Some((&cert, &key)), Some(&htpasswd));
    let repo = format!("127.0.0.1:{}/petty-test/bb", registry.port);
    tool(&[
        "skopeo",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--dest-creds",
        "petty:s3cret",
        &format!("oci:{}:bb", layout.display()),
        &format!("docker://{repo}:1"),
    ]);
    let env = Env::new();
    // Without the authority HTTPS fails (and the registry speaks nothing else).
    let err = fails(
        &env,
        &[
            "template",
            "build",
            "bbs",
            "--from-image",
            &format!("{repo}:1"),
        ],
    );
    assert!(!err.is_empty());
    let pull = |auth: &Path| {
        env.cmd()
            .env("PETTY_IMAGE_CA_FILE", &cert)
            .env("PETTY_IMAGE_AUTH_FILE", auth)
            .args([
                "template",
                "build",
                "bbs",
                "--from-image",
                &format!("{repo}:1"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Trusted, but not logged in: refused, saying how to log in.
    let none = work.path().join("no-logins.json");
    std::fs::write(&none, r#"{"auths": {}}"#).unwrap();
    let out = pull(&none);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused access") && err.contains("skopeo login"),
        "{err}"
    );
    // Logged in as `skopeo login` records it.
    let logins = work.path().join("auth.json");
    let auth = base64_of(b"petty:s3cret");
    std::fs::write(
        &logins,
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{auth}"}}}}}}"#,
            registry.port
        ),
    )
    .unwrap();
    let out = pull(&logins);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!("(https://127.0.0.1:{})", registry.port)),
        "{log}"
    );
    let (out, _) = ok(
        &env,
        &[
            "run",
            "--template",
            "bbs",
            "--",
            "/bin/busybox",
            "echo",
            "over tls",
        ],
    );
    assert_eq!(out, "over tls\n");
    env.assert_clean();
}

/// Standard base64 of `bytes` (what an auth.json's `auth` holds).
fn base64_of(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
