//! File transfers through real VMs, both ways: `petty cp`, the REST routes
//! of the real `petty serve`, MCP and the library. Only regular files move;
//! every copy from a guest has a size cap; an interrupted copy leaves no
//! partial file; uploads stream, so the daemon's and the CLI's memory stay
//! bounded whatever the size. Every test ends with no VMM process, run
//! directory or row left.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use petty_core::{ClientError, CoreError, GuestErrorKind};
use serde_json::{json, Value};

use crate::serve::Daemon;
use crate::Env;

/// Liveness bound on a refusal: it comes at once, but a hang must fail the
/// test rather than stall the suite. Not a measure of speed.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Waits for `child` (killing it past `limit`); its exit code (128 + n when
/// killed by signal n), stderr, and peak RSS in KiB: its VmHWM, sampled
/// while it runs (`ru_maxrss` would count the test process it was forked
/// from, as Linux keeps the larger of the two across `exec`).
fn wait_child(mut child: Child, limit: Duration) -> (i32, String, u64) {
    use std::os::unix::process::ExitStatusExt as _;
    let deadline = Instant::now() + limit;
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = try_vm_hwm_kib(child.id()) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("petty did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    (code, stderr, peak_kib)
}

/// Runs `petty ARGS` to its end within `limit`: exit code, stderr, peak RSS (KiB).
fn petty_within(env: &Env, args: &[&str], limit: Duration) -> (i32, String, u64) {
    let child = env
        .cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_child(child, limit)
}

/// No row is left in the state database (`petty ls --all` prints its header only).
fn assert_no_rows(env: &Env) {
    let ls = env.ok(&["ls", "--all"]);
    assert_eq!(ls.lines().count(), 1, "rows left: {ls}");
}

/// A process's peak resident set (VmHWM) in KiB, while it exists.
fn try_vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A running process's peak resident set (VmHWM) in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    try_vm_hwm_kib(pid).expect("VmHWM in /proc/PID/status")
}

/// `sha256sum FILE` on the host.
fn host_sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A file of `mib` MiB of random bytes.
fn random_file(path: &Path, mib: u64) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/urandom > {}",
            mib << 20,
            path.display()
        ))
        .status()
        .unwrap();
    assert!(out.success());
}

/// The first word of a REST exec's stdout.
async fn rest_sh(d: &Daemon, sandbox: &str, command: &str) -> String {
    let r = d
        .ok(
            "POST",
            &format!("/v1/sandboxes/{sandbox}/exec"),
            Some(json!({ "command": command })),
        )
        .await;
    assert_eq!(r["exit_code"], 0, "{command}: {r}");
    r["stdout"].as_str().unwrap().to_string()
}

/// Stops the daemon as a user would (SIGTERM), so its standby VMM goes with it.
fn stop(mut d: Daemon) {
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0, "the daemon's exit on SIGTERM");
}

/// A device (through a symlink) and a FIFO, as every way out of a sandbox
/// sees them: refused at once with an error naming the type, nothing left
/// on the host. The size caps of `petty cp` and the REST download, and the
/// REST upload's limit, checked while streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_fifos_are_refused_at_once_by_every_route() {
    let env = Env::new();
    const SETUP: &str = "ln -s /dev/zero /root/zero && mkfifo /root/fifo \
                         && head -c 2097152 /dev/urandom > /root/two";
    let cases = [
        (
            "/root/zero",
            "/root/zero is a character device, not a regular file",
        ),
        (
            "/root/fifo",
            "/root/fifo is a FIFO (named pipe), not a regular file",
        ),
    ];

    // The CLI.
    env.ok(&["create", "--name", "cli"]);
    env.ok(&["exec", "cli", "--", "sh", "-c", SETUP]);
    let host = tempfile::tempdir().unwrap();
    let dest = host.path().join("z");
    let dest = dest.to_str().unwrap();
    for (path, want) in cases {
        let (code, err, _) = petty_within(&env, &["cp", &format!("cli:{path}"), dest], PROMPTLY);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "{err}");
        assert!(names(host.path()).is_empty(), "{:?}", names(host.path()));
    }
    // The cap: by the guest's stat first; equal to the limit is allowed.
    let (code, err, _) = petty_within(
        &env,
        &["cp", "--max-size", "1M", "cli:/root/two", dest],
        PROMPTLY,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("more than petty cp's limit of 1.0 MiB") && err.contains("--no-limit"),
        "{err}"
    );
    assert!(names(host.path()).is_empty());
    env.ok(&["cp", "--max-size", "2M", "cli:/root/two", dest]);
    assert_eq!(std::fs::metadata(dest).unwrap().len(), 2 << 20);
    assert_eq!(names(host.path()), ["z"]);

    // The library (after the CLI: a VM serves one agent connection at a time).
    {
        let manager = env.manager(env.config()).await;
        for (path, want) in cases {
            let r = tokio::time::timeout(PROMPTLY, manager.read_file("cli", path))
                .await
                .expect("the library's read answers promptly");
            match r {
                Err(CoreError::Rpc(ClientError::Remote {
                    kind: GuestErrorKind::NotARegularFile,
                    message,
                })) => assert!(message.contains(want), "{message}"),
                other => panic!("{path}: expected NotARegularFile, got {other:?}"),
            }
        }
    }
    env.ok(&["rm", "-f", "cli"]);

    // REST and MCP, on a daemon whose download and upload limits are 1 MiB.
    let d = Daemon::start_with(
        &env,
        &["--pool-size", "0"],
        &[
            ("PETTY_LIMITS_MAX_DOWNLOAD_MIB", "1"),
            ("PETTY_LIMITS_MAX_UPLOAD_MIB", "1"),
        ],
    );
    d.ok("POST", "/v1/sandboxes", Some(json!({"name": "web"})))
        .await;
    rest_sh(&d, "web", SETUP).await;
    let content = |q: &str| format!("/v1/sandboxes/web/files/content?path={q}");
    let get = |q: String| {
        let r = d.req(reqwest::Method::GET, &q).timeout(PROMPTLY);
        async move { r.send().await.expect("the download answers promptly") }
    };
    for (path, want) in cases {
        let r = get(content(path)).await;
        assert_eq!(r.status().as_u16(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["kind"], "not_a_regular_file", "{e}");
        assert!(e["message"].as_str().unwrap().contains(want), "{e}");
    }
    // Over limits.max_download_mib by its size: 413 before any byte; a
    // call may ask for more or for no limit.
    let r = get(content("/root/two")).await;
    assert_eq!(r.status().as_u16(), 413);
    let e: Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("max_size"), "{e}");
    for q in ["&max_size=2097152", "&no_limit=true"] {
        let r = get(content(&format!("/root/two{q}"))).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 2 << 20);
    }
    let sha_before = rest_sh(&d, "web", "sha256sum /root/two").await;

    // Uploads: into a FIFO refused; past limits.max_upload_mib refused
    // whether the size is declared or only seen while streaming; the old
    // file stays and nothing partial is left beside it.
    let put = |path: &str, body: reqwest::Body| {
        d.req(reqwest::Method::PUT, &content(path))
            .header("content-type", "application/octet-stream")
            .timeout(PROMPTLY)
            .body(body)
            .send()
    };
    let r = put("/root/fifo", vec![1u8; 10].into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["kind"],
        "not_a_regular_file"
    );
    let declared = put("/root/two", vec![7u8; 2 << 20].into()).await.unwrap();
    assert_eq!(declared.status().as_u16(), 413);
    // A body from a file is sent chunked, with no length to check first.
    let two = host.path().join("two");
    std::fs::write(&two, vec![7u8; 2 << 20]).unwrap();
    let file = tokio::fs::File::open(&two).await.unwrap();
    let streamed = put("/root/two", file.into()).await.unwrap();
    assert_eq!(streamed.status().as_u16(), 413);
    let e: Value = streamed.json().await.unwrap();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_upload_mib"),
        "{e}"
    );
    assert_eq!(rest_sh(&d, "web", "sha256sum /root/two").await, sha_before);
    assert_eq!(
        rest_sh(&d, "web", "ls -A /root").await,
        ".bashrc\n.profile\nfifo\ntwo\nzero\n"
    );

    // MCP (streamable HTTP on the same daemon).
    {
        use rmcp::model::CallToolRequestParams;
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        use rmcp::transport::StreamableHttpClientTransport;
        use rmcp::ServiceExt as _;
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.base)),
        );
        let client = ().serve(transport).await.expect("MCP over HTTP handshake");
        for (path, want) in cases {
            let args = json!({"sandbox": "web", "path": path});
            let p = CallToolRequestParams::new("download_file")
                .with_arguments(args.as_object().unwrap().clone());
            let r = tokio::time::timeout(PROMPTLY, client.call_tool(p))
                .await
                .expect("download_file answers promptly")
                .unwrap();
            assert_eq!(r.is_error, Some(true));
            let text: String = r
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect();
            assert!(
                text.contains(want) && text.contains("not_a_regular_file"),
                "{text}"
            );
        }
        client.cancel().await.unwrap();
    }

    let (status, _) = d.call("DELETE", "/v1/sandboxes/web", None).await;
    assert_eq!(status, 204);
    stop(d);
    env.assert_clean();
    assert_no_rows(&env);
}

/// `petty cp` of a large guest file, interrupted by SIGTERM and by SIGINT:
/// the shell's exit code and no partial file. A partial a killed copy left
/// is removed by the next copy to the same destination.
#[test]
fn an_interrupted_cp_leaves_no_partial_and_the_next_sweeps_stale_ones() {
    let env = Env::new();
    env.ok(&["create", "--name", "big"]);
    // A large regular file that costs the guest no disk (sparse): its
    // copy streams 3 GiB, far longer than the test waits.
    env.ok(&[
        "exec",
        "big",
        "--",
        "sh",
        "-c",
        "truncate -s 3G /root/big && echo hi > /root/small",
    ]);
    let host = tempfile::tempdir().unwrap();
    let dest = host.path().join("big");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut child = env
            .cmd()
            .args(["cp", "big:/root/big", dest.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let partial = host
            .path()
            .join(format!(".big.petty-partial.{}", child.id()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(&partial).map_or(0, |m| m.len()) < (1 << 20) {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("petty cp ended ({status}) before it was interrupted: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "no partial file grew at {}",
                partial.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling the petty this test spawned.
        unsafe { libc::kill(child.id() as i32, sig) };
        let (code, err, _) = wait_child(child, Duration::from_secs(30));
        assert_eq!(code, 128 + sig, "{err}");
        assert!(
            names(host.path()).is_empty(),
            "{:?} after signal {sig}",
            names(host.path())
        );
    }

    // Stale partials: this destination's (its process is gone) goes,
    // another destination's stays.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = host.path().join(format!(".big.petty-partial.{dead}"));
    let other = host.path().join(format!(".other.petty-partial.{dead}"));
    std::fs::write(&stale, b"left by a killed copy").unwrap();
    std::fs::write(&other, b"not this destination's").unwrap();
    let (code, err, _) = petty_within(
        &env,
        &["cp", "big:/root/small", dest.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("removed") && err.contains(".big.petty-partial"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"hi\n");
    assert_eq!(
        names(host.path()),
        [format!(".other.petty-partial.{dead}"), "big".into()]
    );
    // Into a directory, the file keeps its name.
    env.ok(&["cp", "big:/root/small", host.path().to_str().unwrap()]);
    assert_eq!(std::fs::read(host.path().join("small")).unwrap(), b"hi\n");

    env.ok(&["rm", "-f", "big"]);
    env.assert_clean();
    assert_no_rows(&env);
}

/// 1 GiB through REST (the real `petty serve`) and through `petty cp`, at
/// the same time into two sandboxes: both arrive intact (SHA-256 in the
/// guest), with the daemon's and the CLI's peak RSS under 64 MiB. A full
/// guest disk is a 507 that leaves nothing behind. Then eight uploads at
/// once, with the daemon under 128 MiB: 64 MiB each rather than 1 GiB, as
/// the bound does not depend on the size once it is far past the buffers
/// (well under 1 MiB per upload), and 8 GiB through software emulation
/// (~30 MB/s per guest on this 2-core host) would take minutes of the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_in_bounded_memory() {
    const MIB: u64 = 1 << 20;
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let gib = host.path().join("gib");
    random_file(&gib, 1024);
    let want = host_sha256(&gib);

    let d = Daemon::start_with(&env, &["--pool-size", "0"], &[]);
    let disk = json!({"name": "rest", "disk_size_mb": 2048});
    d.ok("POST", "/v1/sandboxes", Some(disk)).await;
    env.ok(&["create", "--name", "cli", "--disk-mib", "2048"]);

    let cli = {
        let env_cmd = env
            .cmd()
            .args(["cp", gib.to_str().unwrap(), "cli:/root/up.bin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::task::spawn_blocking(move || wait_child(env_cmd, Duration::from_secs(600)))
    };
    let file = tokio::fs::File::open(&gib).await.unwrap();
    let r = d
        .req(
            reqwest::Method::PUT,
            "/v1/sandboxes/rest/files/content?path=/root/up.bin",
        )
        .header("content-type", "application/octet-stream")
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{:?}", r.text().await);
    let (code, err, cli_rss_kib) = cli.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let daemon_kib = vm_hwm_kib(d.child.id());
    eprintln!(
        "1 GiB uploads: daemon peak RSS {daemon_kib} KiB, petty cp peak RSS {cli_rss_kib} KiB"
    );
    assert!(daemon_kib < 64 * 1024, "daemon peak RSS {daemon_kib} KiB");
    assert!(
        cli_rss_kib < 64 * 1024,
        "petty cp peak RSS {cli_rss_kib} KiB"
    );

    // Hash both at once (each in its own guest).
    let mut sum = env.cmd();
    sum.args(["exec", "cli", "--", "sha256sum", "/root/up.bin"]);
    let cli_sum = tokio::task::spawn_blocking(move || sum.output());
    let rest_sum = rest_sh(&d, "rest", "sha256sum /root/up.bin").await;
    assert_eq!(&rest_sum[..64], want, "the REST upload arrived changed");
    let out = cli_sum.await.unwrap().unwrap();
    assert!(out.status.success());
    assert_eq!(
        &String::from_utf8_lossy(&out.stdout)[..64],
        want,
        "the cp upload arrived changed"
    );
    env.ok(&["rm", "-f", "cli"]);

    // A full guest disk: 507, and neither the file nor a partial one stays.
    rest_sh(
        &d,
        "rest",
        "fallocate -l $(( $(stat -f -c '%f * %S' /) - 24 * 1048576 )) /root/fill",
    )
    .await;
    let part = host.path().join("part");
    random_file(&part, 64);
    let file = tokio::fs::File::open(&part).await.unwrap();
    let r = d
        .req(
            reqwest::Method::PUT,
            "/v1/sandboxes/rest/files/content?path=/root/more.bin",
        )
        .header("content-type", "application/octet-stream")
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 507);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["kind"], "insufficient_storage", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("disk_size_mb"),
        "{e}"
    );
    assert_eq!(
        rest_sh(&d, "rest", "ls -A /root").await,
        ".bashrc\n.profile\nfill\nup.bin\n"
    );
    let (status, _) = d.call("DELETE", "/v1/sandboxes/rest", None).await;
    assert_eq!(status, 204);

    // Eight at once.
    let names: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    for n in &names {
        d.ok("POST", "/v1/sandboxes", Some(json!({ "name": n })))
            .await;
    }
    let part_sha = host_sha256(&part);
    let mut uploads = Vec::new();
    for n in &names {
        let file = tokio::fs::File::open(&part).await.unwrap();
        let req = d
            .req(
                reqwest::Method::PUT,
                &format!("/v1/sandboxes/{n}/files/content?path=/root/up.bin"),
            )
            .header("content-type", "application/octet-stream")
            .body(file);
        uploads.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    for u in uploads {
        assert_eq!(u.await.unwrap().as_u16(), 204);
    }
    let daemon_kib = vm_hwm_kib(d.child.id());
    eprintln!("8 x 64 MiB uploads at once: daemon peak RSS {daemon_kib} KiB");
    assert!(daemon_kib < 128 * 1024, "daemon peak RSS {daemon_kib} KiB");
    for n in &names {
        let list = d
            .ok("GET", &format!("/v1/sandboxes/{n}/files?path=/root"), None)
            .await;
        let size = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "up.bin")
            .map(|e| e["size"].as_u64().unwrap());
        assert_eq!(size, Some(64 * MIB), "{n}: {list}");
    }
    assert_eq!(
        &rest_sh(&d, "u0", "sha256sum /root/up.bin").await[..64],
        part_sha
    );
    for n in &names {
        let (status, _) = d.call("DELETE", &format!("/v1/sandboxes/{n}"), None).await;
        assert_eq!(status, 204);
    }
    stop(d);
    env.assert_clean();
    assert_no_rows(&env);
}
