//! The daemon end to end: the real `petty serve` on 127.0.0.1:0 with real
//! VMs behind it, driven by a real HTTP client (reqwest) and a real MCP
//! client (rmcp) over stdio (`petty mcp`) and streamable HTTP.

use std::io::BufRead as _;
use std::process::{Child, Stdio};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::ServiceExt as _;
use serde_json::{json, Value};

use crate::Env;

mod guard;
mod network;
mod processes;
mod sessions;
mod templates;

const KEY: &str = "test-key-0123456789abcdef";

/// A running `petty serve`; killed on drop (its VMs die with the `Env`).
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    key: Option<String>,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(env: &Env, args: &[&str]) -> Self {
        Self::start_with(env, args, &[])
    }

    /// Starts `petty serve` with `args` and environment `vars`; its log
    /// (stderr) goes to a file in the data directory.
    pub(crate) fn start_with(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = env.data.path().join(format!("daemon-{n}.log"));
        let mut cmd = env.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("spawn petty serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("daemon's first line");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        let key = args
            .windows(2)
            .find(|w| w[0] == "--api-key")
            .map(|w| w[1].to_string());
        Self {
            child,
            base,
            http: reqwest::Client::new(),
            key,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends and returns status and JSON body (Null when empty or not JSON).
    /// A POST without a body still says it is JSON, as the daemon requires.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method.parse().unwrap(), path);
        match body {
            Some(b) => r = r.json(&b),
            None if method == "POST" => r = r.header("content-type", "application/json"),
            None => {}
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .req(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: signalling the daemon this test spawned.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (at most 60 s) for the daemon to exit; its exit code.
    pub(crate) fn wait(&mut self) -> i32 {
        for _ in 0..600 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon did not exit within 60 s");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_drives_every_route_with_real_vms() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--pool-size", "1"]);

    assert_eq!(d.ok("GET", "/readyz", None).await["status"], "ok");
    let doc = d.ok("GET", "/openapi.json", None).await;
    assert!(doc["paths"]["/v1/sandboxes/{id}/exec"]["post"].is_object());

    // A create asking for nothing special is served by the warm pool once it is warm.
    for _ in 0..600 {
        if d.ok("GET", "/v1/pool", None).await["ready"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pooled = d.ok("POST", "/v1/sandboxes", None).await;
    assert_eq!(pooled["state"], "ready");
    let pool = d.ok("GET", "/v1/pool", None).await;
    assert_eq!(pool["hits"], 1, "{pool}");
    assert_eq!(d.metric("petty_pool_hits_total").await, 1.0);

    let (status, sb) = d
        .call(
            "POST",
            "/v1/sandboxes",
            Some(json!({"name": "web", "memory_mb": 256, "vcpu": 1, "ttl_secs": 3600, "disk_size_mb": 1024})),
        )
        .await;
    assert_eq!(status, 201, "{sb}");
    assert_eq!(
        (sb["name"].clone(), sb["vcpu"].clone()),
        (json!("web"), json!(1))
    );
    assert_eq!(d.ok("GET", "/v1/sandboxes/web", None).await["id"], sb["id"]);
    let names: Vec<String> = d
        .ok("GET", "/v1/sandboxes", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"web".to_string()) && names.len() == 2,
        "{names:?}"
    );
    let ready_before = d.metric("petty_sandboxes{state=\"ready\"}").await;
    let execs_before = d.metric("petty_exec_total").await;

    // exec: env, cwd, stdin, exit code, timeout.
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/web/exec",
            Some(
                json!({"command": "cat; echo $FOO; pwd; exit 7", "env": {"FOO": "bar"},
                        "cwd": "/tmp", "stdin": "in\n"}),
            ),
        )
        .await;
    assert_eq!(
        (r["exit_code"].clone(), r["stdout"].clone()),
        (json!(7), json!("in\nbar\n/tmp\n"))
    );
    // Each log line of a call names its sandbox.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("exit_code=7"))
        .unwrap_or_else(|| panic!("no exec line in the log:\n{log}"));
    assert!(line.contains("sandbox=\"web\""), "{line}");
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/web/exec",
            Some(json!({"argv": ["sleep", "30"], "timeout_secs": 0.5})),
        )
        .await;
    assert_eq!(r["timed_out"], true);
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/web/code",
            Some(json!({"language": "python", "code": "print(6*7)"})),
        )
        .await;
    assert_eq!(r["stdout"], "42\n");
    assert!(d.metric("petty_exec_total").await >= execs_before + 3.0);
    // The root disk is the size asked for (the image alone is about 640 MiB).
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/web/exec",
            Some(json!({"command": "df -m --output=size / | tail -1"})),
        )
        .await;
    let size: u64 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!((950..=1024).contains(&size), "root is {size} MiB");

    // Streaming exec: lines arrive as NDJSON, the last one is the exit.
    let resp = d
        .req(reqwest::Method::POST, "/v1/sandboxes/web/exec/stream")
        .json(&json!({"command": "echo one; echo two >&2; echo three; exit 3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let lines: Vec<Value> = resp
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out: String = lines
        .iter()
        .filter(|l| l["type"] == "stdout")
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "one\nthree\n");
    assert!(lines
        .iter()
        .any(|l| l["type"] == "stderr" && l["data"] == "two\n"));
    assert_eq!(lines.last().unwrap()["type"], "exit");
    assert_eq!(lines.last().unwrap()["exit_code"], 3);

    // Files: binary upload without base64, download, list, mkdir, delete.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let resp = d
        .req(
            reqwest::Method::PUT,
            "/v1/sandboxes/web/files/content?path=/root/data/blob.bin",
        )
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let got = d
        .req(
            reqwest::Method::GET,
            "/v1/sandboxes/web/files/content?path=/root/data/blob.bin",
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), bytes.as_slice());
    let (status, _) = d
        .call(
            "POST",
            "/v1/sandboxes/web/directories?path=/root/data/sub/deep",
            None,
        )
        .await;
    assert_eq!(status, 201);
    let list = d
        .ok("GET", "/v1/sandboxes/web/files?path=/root/data", None)
        .await;
    let entries = list.as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["name"] == "blob.bin" && e["size"] == 300_000 && e["is_dir"] == false));
    assert!(entries
        .iter()
        .any(|e| e["name"] == "sub" && e["is_dir"] == true));
    let (status, _) = d
        .call(
            "DELETE",
            "/v1/sandboxes/web/files?path=/root/data&recursive=true",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, e) = d
        .call(
            "GET",
            "/v1/sandboxes/web/files/content?path=/root/data/blob.bin",
            None,
        )
        .await;
    assert_eq!((status, e["kind"].clone()), (404, json!("not_found")));

    // A large download streams from the guest, bytes intact; a directory is a 400.
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/web/exec",
            Some(json!({"command": "head -c 40000000 /dev/urandom > /root/big && sha256sum /root/big"})),
        )
        .await;
    let want = r["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let got = d
        .req(
            reqwest::Method::GET,
            "/v1/sandboxes/web/files/content?path=/root/big",
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), 40_000_000);
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(&got)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, want);
    let (status, e) = d
        .call("GET", "/v1/sandboxes/web/files/content?path=/root", None)
        .await;
    assert_eq!(status, 400, "{e}");

    // Snapshots: take, list, get, restore, fork both ways, delete refused then allowed.
    d.ok(
        "POST",
        "/v1/sandboxes/web/exec",
        Some(json!({"command": "echo kept > /root/mark"})),
    )
    .await;
    let (status, snap) = d
        .call(
            "POST",
            "/v1/sandboxes/web/snapshots",
            Some(json!({"name": "snap1"})),
        )
        .await;
    assert_eq!(status, 201, "{snap}");
    assert_eq!(snap["source_sandbox"], "web");
    assert_eq!(d.ok("GET", "/v1/snapshots", None).await[0]["name"], "snap1");
    assert!(
        d.ok("GET", "/v1/snapshots/snap1", None).await["size_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let (status, restored) = d
        .call(
            "POST",
            "/v1/snapshots/snap1/restore",
            Some(json!({"name": "back"})),
        )
        .await;
    assert_eq!(status, 201, "{restored}");
    assert_eq!(restored["from_snapshot"], "snap1");
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/back/exec",
            Some(json!({"command": "cat /root/mark"})),
        )
        .await;
    assert_eq!(r["stdout"], "kept\n");
    let kids = d
        .ok(
            "POST",
            "/v1/snapshots/snap1/fork",
            Some(json!({"count": 2})),
        )
        .await;
    assert_eq!(kids.as_array().unwrap().len(), 2);
    let kids2 = d
        .ok("POST", "/v1/sandboxes/web/fork", Some(json!({"count": 1})))
        .await;
    assert_eq!(kids2.as_array().unwrap().len(), 1);
    assert!(d.metric("petty_sandbox_restore_seconds_count").await >= 4.0);
    // A branch: one snapshot and its children in one call.
    let (status, br) = d
        .call(
            "POST",
            "/v1/sandboxes/web/branch",
            Some(json!({"name": "br1", "count": 2})),
        )
        .await;
    assert_eq!(status, 201, "{br}");
    assert_eq!(br["snapshot"]["name"], "br1", "{br}");
    let branched = br["sandboxes"].as_array().unwrap().clone();
    assert_eq!(branched.len(), 2, "{br}");
    for k in &branched {
        let r = d
            .ok(
                "POST",
                &format!("/v1/sandboxes/{}/exec", k["id"].as_str().unwrap()),
                Some(json!({"command": "cat /root/mark"})),
            )
            .await;
        assert_eq!(
            r["stdout"], "kept\n",
            "a branch child starts at the snapshot"
        );
        let (status, _) = d
            .call(
                "DELETE",
                &format!("/v1/sandboxes/{}", k["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, 204);
    }
    let (status, _) = d.call("DELETE", "/v1/snapshots/br1", None).await;
    assert_eq!(status, 204);
    let (status, e) = d
        .call(
            "POST",
            "/v1/sandboxes/web/branch",
            Some(json!({"name": "br2", "count": 0})),
        )
        .await;
    assert_eq!(status, 400, "a branch of no children is refused: {e}");
    let (status, e) = d.call("DELETE", "/v1/snapshots/snap1", None).await;
    assert_eq!((status, e["kind"].clone()), (409, json!("conflict")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("back"), "{e}");
    for k in kids.as_array().unwrap().iter().chain([&restored]) {
        let (status, _) = d
            .call(
                "DELETE",
                &format!("/v1/sandboxes/{}", k["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, 204);
    }
    let (status, _) = d.call("DELETE", "/v1/snapshots/snap1", None).await;
    assert_eq!(status, 204);
    let (status, _) = d.call("GET", "/v1/snapshots/snap1", None).await;
    assert_eq!(status, 404);

    // Metrics move as sandboxes go.
    let ready = d.metric("petty_sandboxes{state=\"ready\"}").await;
    let destroyed = d.metric("petty_sandboxes_destroyed_total").await;
    let (status, _) = d.call("DELETE", "/v1/sandboxes/web", None).await;
    assert_eq!(status, 204);
    assert_eq!(
        d.metric("petty_sandboxes{state=\"ready\"}").await,
        ready - 1.0
    );
    assert_eq!(
        d.metric("petty_sandboxes_destroyed_total").await,
        destroyed + 1.0
    );
    assert!(ready_before >= 2.0);
    assert!(d.metric("petty_sandbox_boot_seconds_count").await >= 2.0);
    let (status, e) = d.call("GET", "/v1/sandboxes/web", None).await;
    assert_eq!((status, e["kind"].clone()), (404, json!("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_auth_limits_and_bad_config() {
    let env = Env::new();
    let d = Daemon::start(
        &env,
        &["--api-key", KEY, "--pool-size", "0", "--max-sandboxes", "2"],
    );
    let url = |p: &str| format!("{}{p}", d.base);
    // 401 without a key, 403 with a wrong one; health stays open.
    let r = d.http.get(url("/v1/sandboxes")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "unauthorized");
    let r = d
        .http
        .get(url("/v1/sandboxes"))
        .bearer_auth("wrong-key-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = d
        .http
        .post(url("/mcp"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "MCP over HTTP needs the key too");
    assert_eq!(
        d.http.get(url("/healthz")).send().await.unwrap().status(),
        200
    );

    // 400: malformed JSON, unknown field, wrong type, relative path, nothing to run.
    let r = d
        .req(reqwest::Method::POST, "/v1/sandboxes")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "bad_request");
    let (status, e) = d
        .call("POST", "/v1/sandboxes", Some(json!({"memory": 512})))
        .await;
    assert_eq!(status, 400);
    assert!(e["message"].as_str().unwrap().contains("memory"), "{e}");
    let (status, e) = d
        .call("POST", "/v1/sandboxes", Some(json!({"vcpu": 99})))
        .await;
    assert_eq!(status, 400);
    assert!(e["message"].as_str().unwrap().contains("vcpu"), "{e}");
    // A backend this host cannot run: 503, saying why (here: no firecracker).
    if petty_vmm::firecracker::FirecrackerVmm::new(env.root.path().to_path_buf())
        .availability()
        .is_err()
    {
        let (status, e) = d
            .call(
                "POST",
                "/v1/sandboxes",
                Some(json!({"backend": "firecracker"})),
            )
            .await;
        assert_eq!(
            (status, e["kind"].clone()),
            (503, json!("unavailable")),
            "{e}"
        );
        assert!(
            e["message"].as_str().unwrap().contains("firecracker"),
            "{e}"
        );
    }
    // 404: unknown sandbox and route.
    let (status, e) = d
        .call(
            "POST",
            "/v1/sandboxes/nosuch/exec",
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!((status, e["kind"].clone()), (404, json!("not_found")));
    assert!(e["message"].as_str().unwrap().contains("nosuch"));
    let (status, _) = d.call("GET", "/v1/nothing", None).await;
    assert_eq!(status, 404);

    // 409 on a taken name; 429 past the limit, answered at once.
    let failures = d.metric("petty_sandbox_create_failures_total").await;
    d.ok("POST", "/v1/sandboxes", Some(json!({"name": "a"})))
        .await;
    let (status, e) = d
        .call("POST", "/v1/sandboxes", Some(json!({"name": "a"})))
        .await;
    assert_eq!((status, e["kind"].clone()), (409, json!("conflict")), "{e}");
    d.ok("POST", "/v1/sandboxes", Some(json!({"name": "b"})))
        .await;
    let (status, e) = d
        .call("POST", "/v1/sandboxes", Some(json!({"name": "c"})))
        .await;
    assert_eq!((status, e["kind"].clone()), (429, json!("capacity")), "{e}");
    // The taken name and the capacity refusal: two failed creates.
    assert_eq!(
        d.metric("petty_sandbox_create_failures_total").await,
        failures + 2.0
    );
    let (status, _) = d
        .call("POST", "/v1/sandboxes/a/exec", Some(json!({})))
        .await;
    assert_eq!(status, 400, "an exec with nothing to run");
    let (status, _) = d
        .call("GET", "/v1/sandboxes/a/files?path=relative", None)
        .await;
    assert_eq!(status, 400);

    // 409 on the wrong state: a stopped sandbox takes no exec.
    let out = env.run(&["stop", "b"]);
    assert!(out.status.success(), "{out:?}");
    let (status, e) = d
        .call(
            "POST",
            "/v1/sandboxes/b/exec",
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!((status, e["kind"].clone()), (409, json!("conflict")), "{e}");

    // 413: a body past server.max_body_mib (100 MiB by default; this daemon keeps the default,
    // so send 101 MiB). File uploads stream and have limits of their own (transfers.rs).
    let big = vec![b' '; 101 * 1024 * 1024];
    let r = d
        .req(reqwest::Method::POST, "/v1/sandboxes/a/exec")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "too_large");
    drop(d);

    // Bad configs are refused at start, naming the key; so is listening
    // beyond loopback without a key.
    let out = env.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("API key"),
        "{err}"
    );
    let cfg = env.data.path().join("bad.toml");
    std::fs::write(&cfg, "[limits]\nmax_concurrent_sandboxs = 3\n").unwrap();
    let out = env.run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_concurrent_sandboxs"), "{err}");
    let out = env
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PETTY_DEFAULTS_VCPU", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("defaults.vcpu"));
}

fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

fn structured(r: &CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "tool failed: {}", text_of(r));
    r.structured_content.clone().expect("structured content")
}

fn args(v: Value) -> CallToolRequestParams {
    CallToolRequestParams::new("x").with_arguments(v.as_object().unwrap().clone())
}

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tool: &'static str,
    arguments: Value,
) -> CallToolResult {
    let mut p = args(arguments);
    p.name = tool.into();
    client.call_tool(p).await.expect("tool call transport")
}

const TOOLS: &[&str] = &[
    "create_sandbox",
    "execute_command",
    "execute_code",
    "upload_file",
    "download_file",
    "list_files",
    "destroy_sandbox",
    "list_sandboxes",
    "snapshot_sandbox",
    "restore_snapshot",
    "fork_sandbox",
    "set_sandbox_lifetime",
    "publish_port",
    "network_status",
    "list_templates",
    "build_template",
    "delete_template",
    "branch_sandbox",
    "sandbox_metrics",
    "release_sandbox",
    "stop_sandbox",
    "start_sandbox",
    "hibernate_sandbox",
    "resume_sandbox",
    "start_process",
    "list_processes",
    "read_process_output",
    "send_process_input",
    "kill_process",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_stdio_runs_every_tool() {
    let env = Env::new();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_petty"));
    cmd.arg("mcp")
        .env("PETTY_PATHS_RUN_DIR", env.root.path())
        .env("PETTY_PATHS_DATA_DIR", env.data.path())
        .stderr(Stdio::inherit());
    crate::assets();
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let client = ().serve(transport).await.expect("MCP handshake with petty mcp");

    // Every tool is listed, and every argument is described.
    let tools = client.list_all_tools().await.unwrap();
    for name in TOOLS {
        let t = tools
            .iter()
            .find(|t| t.name == *name)
            .unwrap_or_else(|| panic!("{name} not listed"));
        assert!(
            t.description.as_ref().is_some_and(|d| d.len() > 20),
            "{name}"
        );
        let props = t.input_schema.get("properties").and_then(|p| p.as_object());
        for (arg, schema) in props.into_iter().flatten() {
            assert!(
                schema.get("description").is_some(),
                "{name}.{arg} has no description"
            );
        }
    }

    let sb = structured(&call(&client, "create_sandbox", json!({"name": "m1"})).await);
    assert_eq!(sb["name"], "m1");
    let r = structured(
        &call(
            &client,
            "execute_command",
            json!({"sandbox": "m1", "command": "echo $X; cat", "env": {"X": "y"}, "stdin": "z"}),
        )
        .await,
    );
    assert_eq!(r["stdout"], "y\nz");
    let r = structured(
        &call(
            &client,
            "execute_code",
            json!({"sandbox": "m1", "language": "python", "code": "import sys; print(sys.version_info[0]); sys.exit(4)"}),
        )
        .await,
    );
    assert_eq!(
        (r["stdout"].clone(), r["exit_code"].clone()),
        (json!("3\n"), json!(4))
    );
    structured(
        &call(
            &client,
            "upload_file",
            json!({"sandbox": "m1", "path": "/root/a/b.txt", "content": "hello"}),
        )
        .await,
    );
    structured(
        &call(
            &client,
            "upload_file",
            json!({"sandbox": "m1", "path": "/root/a/bin", "content": "AAEC/w==", "encoding": "base64"}),
        )
        .await,
    );
    let f = structured(
        &call(
            &client,
            "download_file",
            json!({"sandbox": "m1", "path": "/root/a/b.txt"}),
        )
        .await,
    );
    assert_eq!(f["content"], "hello");
    let f = structured(
        &call(
            &client,
            "download_file",
            json!({"sandbox": "m1", "path": "/root/a/bin", "encoding": "base64"}),
        )
        .await,
    );
    assert_eq!(
        (f["content"].clone(), f["bytes"].clone()),
        (json!("AAEC/w=="), json!(4))
    );
    let l = structured(
        &call(
            &client,
            "list_files",
            json!({"sandbox": "m1", "path": "/root/a"}),
        )
        .await,
    );
    let names: Vec<&str> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"b.txt") && names.contains(&"bin"),
        "{names:?}"
    );
    let s = structured(&call(&client, "list_sandboxes", json!({})).await);
    assert_eq!(s["sandboxes"][0]["name"], "m1");
    let e = call(&client, "release_sandbox", json!({"sandbox": "m1"})).await;
    assert_eq!(e.is_error, Some(true), "petty mcp keeps no pool");
    assert!(text_of(&e).contains("destroy"), "{}", text_of(&e));
    // Hibernated, the next tool call resumes it; stopped, start brings its files back.
    let h = structured(&call(&client, "hibernate_sandbox", json!({"sandbox": "m1"})).await);
    assert_eq!(h["state"], "hibernated", "{h}");
    let f = structured(
        &call(
            &client,
            "download_file",
            json!({"sandbox": "m1", "path": "/root/a/b.txt"}),
        )
        .await,
    );
    assert_eq!(f["content"], "hello", "a call resumes a hibernated sandbox");
    let st = structured(&call(&client, "stop_sandbox", json!({"sandbox": "m1"})).await);
    assert_eq!(st["state"], "stopped", "{st}");
    let st = structured(&call(&client, "start_sandbox", json!({"sandbox": "m1"})).await);
    assert_eq!(st["state"], "ready", "{st}");
    let st = structured(&call(&client, "hibernate_sandbox", json!({"sandbox": "m1"})).await);
    assert_eq!(st["state"], "hibernated", "{st}");
    let r = structured(
        &call(
            &client,
            "execute_command",
            json!({"sandbox": "m1", "command": "cat /root/a/b.txt"}),
        )
        .await,
    );
    assert_eq!(
        r["stdout"], "hello",
        "an exec resumes a hibernated sandbox: {r}"
    );
    let st = structured(&call(&client, "hibernate_sandbox", json!({"sandbox": "m1"})).await);
    assert_eq!(st["state"], "hibernated", "{st}");
    let st = structured(&call(&client, "resume_sandbox", json!({"sandbox": "m1"})).await);
    assert_eq!(st["state"], "ready", "{st}");
    let mm = structured(&call(&client, "sandbox_metrics", json!({"sandbox": "m1"})).await);
    assert_eq!(mm["execs"], 3, "two commands and the code: {mm}");
    assert!(mm["host_pss_bytes"].as_u64().is_some_and(|b| b > 0), "{mm}");
    structured(
        &call(
            &client,
            "snapshot_sandbox",
            json!({"sandbox": "m1", "snapshot": "ms"}),
        )
        .await,
    );
    let r = structured(
        &call(
            &client,
            "restore_snapshot",
            json!({"snapshot": "ms", "name": "m2"}),
        )
        .await,
    );
    assert_eq!(r["from_snapshot"], "ms");
    let f = structured(&call(&client, "fork_sandbox", json!({"source": "ms", "count": 2})).await);
    assert_eq!(f["sandboxes"].as_array().unwrap().len(), 2);
    let f2 = structured(
        &call(
            &client,
            "download_file",
            json!({"sandbox": f["sandboxes"][1]["name"], "path": "/root/a/b.txt"}),
        )
        .await,
    );
    assert_eq!(f2["content"], "hello", "a fork has its source's files");
    // A branch: one snapshot, two children that start where m2 was.
    structured(
        &call(
            &client,
            "execute_command",
            json!({"sandbox": "m2", "command": "echo branched > /root/a/b.txt"}),
        )
        .await,
    );
    let b = structured(
        &call(
            &client,
            "branch_sandbox",
            json!({"sandbox": "m2", "snapshot": "mb", "count": 2}),
        )
        .await,
    );
    assert_eq!(b["snapshot"]["name"], "mb", "{b}");
    let children = b["sandboxes"].as_array().unwrap().clone();
    assert_eq!(children.len(), 2, "{b}");
    for k in &children {
        let f = structured(
            &call(
                &client,
                "download_file",
                json!({"sandbox": k["name"], "path": "/root/a/b.txt"}),
            )
            .await,
        );
        assert_eq!(
            f["content"], "branched\n",
            "a branch child starts at the snapshot"
        );
    }

    // Failures are tool errors the model can read; the session goes on.
    let e = call(
        &client,
        "execute_command",
        json!({"sandbox": "ghost", "command": "true"}),
    )
    .await;
    assert_eq!(e.is_error, Some(true));
    let msg = text_of(&e);
    assert!(msg.contains("ghost") && msg.contains("not_found"), "{msg}");
    let e = call(
        &client,
        "execute_code",
        json!({"sandbox": "m1", "language": "cobol", "code": "x"}),
    )
    .await;
    assert_eq!(e.is_error, Some(true));
    assert!(text_of(&e).contains("python"), "{}", text_of(&e));
    let e = call(
        &client,
        "download_file",
        json!({"sandbox": "m1", "path": "/nope"}),
    )
    .await;
    assert_eq!(e.is_error, Some(true));
    // A file too big for a tool result says how to get it instead.
    structured(
        &call(
            &client,
            "execute_command",
            json!({"sandbox": "m1", "command": "head -c 9000000 /dev/zero > /root/nine"}),
        )
        .await,
    );
    let e = call(
        &client,
        "download_file",
        json!({"sandbox": "m1", "path": "/root/nine"}),
    )
    .await;
    assert_eq!(e.is_error, Some(true));
    assert!(
        text_of(&e).contains("too_large") && text_of(&e).contains("REST"),
        "{}",
        text_of(&e)
    );
    let e = call(&client, "execute_command", json!({"sandbox": "m1"})).await;
    assert_eq!(e.is_error, Some(true), "a missing argument is a tool error");
    assert!(text_of(&e).contains("command"), "{}", text_of(&e));

    for name in ["m1", "m2"] {
        structured(&call(&client, "destroy_sandbox", json!({"sandbox": name})).await);
    }
    for k in f["sandboxes"].as_array().unwrap().iter().chain(&children) {
        structured(&call(&client, "destroy_sandbox", json!({"sandbox": k["name"]})).await);
    }
    let s = structured(&call(&client, "list_sandboxes", json!({})).await);
    assert_eq!(s["sandboxes"], json!([]));
    client.cancel().await.unwrap();
    // Give the server its exit, then nothing may be left.
    for _ in 0..100 {
        if crate::leftovers(env.root.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_with_a_key() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    let env = Env::new();
    let d = Daemon::start(&env, &["--api-key", KEY, "--pool-size", "0"]);
    let mcp_url = format!("{}/mcp", d.base);

    // Without the key the handshake is refused.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(mcp_url.clone()),
    );
    assert!(().serve(transport).await.is_err());

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(mcp_url).auth_header(KEY),
    );
    let client = ().serve(transport).await.expect("MCP over HTTP handshake");
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), TOOLS.len());
    let sb = structured(&call(&client, "create_sandbox", json!({})).await);
    let id = sb["id"].as_str().unwrap().to_string();
    let r = structured(
        &call(
            &client,
            "execute_code",
            json!({"sandbox": id, "language": "sh", "code": "echo via-http"}),
        )
        .await,
    );
    assert_eq!(r["stdout"], "via-http\n");
    // The REST side sees what MCP did.
    assert_eq!(
        d.ok("GET", &format!("/v1/sandboxes/{id}"), None).await["state"],
        "ready"
    );
    assert_eq!(d.metric("petty_exec_total").await, 1.0);
    let e = call(&client, "destroy_sandbox", json!({"sandbox": "nope"})).await;
    assert_eq!(e.is_error, Some(true));
    structured(&call(&client, "destroy_sandbox", json!({"sandbox": id})).await);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_sandbox_metrics_on_rest_prometheus_and_the_cli() {
    let env = Env::new();
    let d = Daemon::start_with(
        &env,
        &["--pool-size", "0"],
        &[("PETTY_SERVER_PER_SANDBOX_METRICS", "true")],
    );
    let sb = d
        .ok("POST", "/v1/sandboxes", Some(json!({"name": "met"})))
        .await;
    assert_eq!(sb["start_kind"], "template", "{sb}");
    for cmd in ["true", "echo two"] {
        d.ok(
            "POST",
            "/v1/sandboxes/met/exec",
            Some(json!({"command": cmd})),
        )
        .await;
    }
    let m = d.ok("GET", "/v1/sandboxes/met/metrics", None).await;
    assert_eq!(
        (m["name"].clone(), m["execs"].clone()),
        (json!("met"), json!(2)),
        "{m}"
    );
    assert_eq!(m["start_kind"], "template", "{m}");
    for field in [
        "host_rss_bytes",
        "host_pss_bytes",
        "guest_memory_used_bytes",
        "guest_memory_total_bytes",
        "disk_bytes",
        "startup_ms",
    ] {
        assert!(m[field].as_u64().is_some_and(|v| v > 0), "{field}: {m}");
    }
    assert!(m["cpu_seconds"].as_f64().is_some_and(|v| v > 0.0), "{m}");
    assert!(m["net_bytes_in"].is_null(), "no network, no traffic: {m}");
    let (status, e) = d.call("GET", "/v1/sandboxes/ghost/metrics", None).await;
    assert_eq!(status, 404, "{e}");

    let st = d.ok("GET", "/v1/stats", None).await;
    assert_eq!(st["sandboxes_by_state"]["ready"], 1, "{st}");
    assert_eq!(st["sandboxes_by_start"]["template"], 1, "{st}");
    assert_eq!(
        (st["creates"].clone(), st["execs"].clone()),
        (json!(1), json!(2)),
        "{st}"
    );
    assert_eq!(st["create_success_rate"], 1.0, "{st}");

    // The opt-in series name the sandbox.
    assert_eq!(
        d.metric("petty_sandbox_execs_total{sandbox=\"met\"}").await,
        2.0
    );
    assert!(
        d.metric("petty_sandbox_host_pss_bytes{sandbox=\"met\"}")
            .await
            > 0.0
    );

    // The CLI reads the same store: JSON lines of the REST shapes.
    let out = env.ok(&["stats", "--json", "met"]);
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (line["name"].clone(), line["execs"].clone()),
        (json!("met"), json!(2)),
        "{out}"
    );
    let table = env.ok(&["stats", "--no-stream"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("met "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().nth(2), Some("template"), "{table}");
    let ls: Value = serde_json::from_str(env.ok(&["ls", "--json"]).trim()).unwrap();
    assert_eq!(
        (ls["name"].clone(), ls["state"].clone()),
        (json!("met"), json!("ready"))
    );
    d.ok(
        "POST",
        "/v1/sandboxes/met/snapshots",
        Some(json!({"name": "met-snap"})),
    )
    .await;
    let snaps: Value = serde_json::from_str(env.ok(&["snapshots", "--json"]).trim()).unwrap();
    assert_eq!(snaps["name"], "met-snap", "{snaps}");
    // Stop keeps the disk; start boots it again with the files.
    d.ok(
        "POST",
        "/v1/sandboxes/met/exec",
        Some(json!({"command": "echo kept > /root/kept && sync"})),
    )
    .await;
    let st = d.ok("POST", "/v1/sandboxes/met/stop", None).await;
    assert_eq!(st["state"], "stopped", "{st}");
    let m = d.ok("GET", "/v1/sandboxes/met/metrics", None).await;
    assert!(
        m["host_rss_bytes"].is_null() && m["disk_bytes"].as_u64().unwrap() > 0,
        "{m}"
    );
    let st = d.ok("POST", "/v1/sandboxes/met/start", None).await;
    assert_eq!(st["state"], "ready", "{st}");
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/met/exec",
            Some(json!({"command": "cat /root/kept"})),
        )
        .await;
    assert_eq!(r["stdout"], "kept\n", "{r}");
    let (status, e) = d.call("POST", "/v1/sandboxes/met/start", None).await;
    assert_eq!(status, 409, "a running sandbox does not start: {e}");
    // Hibernated, an exec resumes it first and answers.
    let st = d.ok("POST", "/v1/sandboxes/met/hibernate", None).await;
    assert_eq!(st["state"], "hibernated", "{st}");
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/met/exec",
            Some(json!({"command": "cat /root/kept"})),
        )
        .await;
    assert_eq!(r["stdout"], "kept\n", "{r}");
    assert_eq!(
        d.ok("GET", "/v1/sandboxes/met", None).await["state"],
        "ready"
    );
    // No pool here: a release is refused, saying what to do, and changes nothing.
    let (status, e) = d.call("POST", "/v1/sandboxes/met/release", None).await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("destroy it instead"),
        "{e}"
    );
    let (status, _) = d.call("DELETE", "/v1/sandboxes/met", None).await;
    assert_eq!(status, 204);
    let (status, _) = d.call("DELETE", "/v1/snapshots/met-snap", None).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_sandbox_is_gone_and_the_pool_serves_a_fresh_one() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--pool-size", "1"]);
    let ready = || async { d.ok("GET", "/v1/pool", None).await["ready"] == 1 };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ready().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never filled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = d.ok("POST", "/v1/sandboxes", Some(json!({}))).await;
    assert_eq!(a["start_kind"], "pool", "{a}");
    let a_id = a["id"].as_str().unwrap().to_string();
    d.ok(
        "POST",
        &format!("/v1/sandboxes/{a_id}/exec"),
        Some(json!({"command": "echo mine > /root/user-file"})),
    )
    .await;
    let r = d
        .ok("POST", &format!("/v1/sandboxes/{a_id}/release"), None)
        .await;
    assert_eq!(r["pool"], "base", "{r}");
    let (status, _) = d.call("GET", &format!("/v1/sandboxes/{a_id}"), None).await;
    assert_eq!(status, 404, "a released sandbox is gone");
    // The replacement is ready at once and served to the next create.
    assert!(
        d.ok("GET", "/v1/pool", None).await["ready"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let b = d.ok("POST", "/v1/sandboxes", Some(json!({}))).await;
    assert_eq!(b["start_kind"], "pool", "{b}");
    assert_ne!(b["id"], a["id"]);
    let r = d
        .ok(
            "POST",
            &format!("/v1/sandboxes/{}/exec", b["id"].as_str().unwrap()),
            Some(json!({"command": "cat /root/user-file 2>&1 || true"})),
        )
        .await;
    assert!(
        r["stdout"].as_str().unwrap().contains("No such file"),
        "{r}"
    );
    assert!(
        d.ok("GET", "/v1/pool", None).await["avg_acquire_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_tree_search_example_runs_through_rest_and_cleans_up() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--pool-size", "0"]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tree_search.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("PETTY_URL", &d.base)
        .env("PETTY_ITERATIONS", "4")
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("iteration "))
            .count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("iterations/s"), "{stdout}");
    assert!(stdout.contains("snapshot  p50"), "{stdout}");
    // The example leaves no sandbox and no snapshot.
    assert_eq!(d.ok("GET", "/v1/sandboxes", None).await, json!([]));
    assert_eq!(d.ok("GET", "/v1/snapshots", None).await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_or_destroys_sandboxes_as_configured() {
    let env = Env::new();
    let mut d = Daemon::start(&env, &["--pool-size", "0", "--on-shutdown", "keep"]);
    d.ok("POST", "/v1/sandboxes", Some(json!({"name": "survivor"})))
        .await;
    d.ok(
        "POST",
        "/v1/sandboxes/survivor/exec",
        Some(json!({"command": "echo before > /root/state"})),
    )
    .await;
    // A call in flight when SIGTERM lands still gets its answer.
    let slow = {
        let r = d
            .req(reqwest::Method::POST, "/v1/sandboxes/survivor/exec")
            .json(&json!({"command": "sleep 1; echo finished"}));
        tokio::spawn(async move { r.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.signal(libc::SIGTERM);
    let answer = slow.await.unwrap();
    assert_eq!(answer["stdout"], "finished\n", "{answer}");
    assert_eq!(d.wait(), 0);
    drop(d);

    // The next start finds it, running, with its state.
    let mut d = Daemon::start_with(
        &env,
        &["--pool-size", "0", "--on-shutdown", "destroy"],
        &[("PETTY_SERVER_LOG_FORMAT", "json")],
    );
    let sb = d.ok("GET", "/v1/sandboxes/survivor", None).await;
    assert_eq!(sb["state"], "ready");
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/survivor/exec",
            Some(json!({"command": "cat /root/state"})),
        )
        .await;
    assert_eq!(r["stdout"], "before\n");
    // JSON logs: one object per line, the sandbox in the span.
    let log = d.log();
    let exec_line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "exec")
        .unwrap_or_else(|| panic!("no JSON exec line in:\n{log}"));
    assert_eq!(exec_line["span"]["sandbox"], "survivor", "{exec_line}");
    // With on_shutdown = destroy, SIGTERM takes it down and leaves nothing.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    drop(d);
    env.assert_clean();
    let out = env.ok(&["ls", "--all"]);
    assert!(!out.contains("survivor"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_standby_vmm_is_swept_by_the_next_petty() {
    let env = Env::new();
    let mut d = Daemon::start(&env, &["--pool-size", "0"]);
    d.ok("POST", "/v1/sandboxes", Some(json!({"name": "kept"})))
        .await;
    // The daemon starts a standby VMM for the template shortly after.
    let root = env.root.path().display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while crate::processes_mentioning(&root).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no standby VMM started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL: no shutdown runs. The sandbox (detached) lives on; the
    // standby outlives the daemon only until any petty looks.
    d.signal(libc::SIGKILL);
    d.wait();
    drop(d);
    assert_eq!(crate::processes_mentioning(&root).len(), 2);
    let out = env.ok(&["ls"]);
    assert!(out.contains("kept"), "{out}");
    assert_eq!(
        crate::processes_mentioning(&root).len(),
        1,
        "the standby VMM was not swept"
    );
    assert_eq!(crate::leftovers(env.root.path()).len(), 1);
    assert_eq!(env.ok(&["exec", "kept", "--", "echo", "hi"]), "hi\n");
    env.ok(&["rm", "-f", "kept"]);
    env.assert_clean();
}

/// What a request costs in SQLite round trips, as the store counts them: an
/// exec or a file operation, through REST, MCP or the library, reads the
/// sandbox's row once and writes once (its use), whether this process holds
/// the sandbox or attaches to it; a refused one writes nothing. The daemon
/// runs in this process (the router `petty serve` mounts) to see its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_reads_the_store_once_and_writes_once() {
    use petty_core::store::StoreStats;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    let env = Env::new();
    // No reaper pass meanwhile: it reads the store on its own.
    let m = env
        .manager(petty_core::ManagerConfig {
            reap_interval: Duration::from_secs(86_400),
            ..env.config()
        })
        .await;
    let mut config = petty_config::Settings::default();
    config.server.listen = "127.0.0.1:0".into();
    let service = petty_server::Service::new(
        m.clone(),
        None,
        std::sync::Arc::new(petty_server::metrics::Metrics::default()),
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = petty_server::app(
        service,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        petty_server::CancellationToken::new(),
    );
    let server = tokio::spawn(petty_server::serve_router(listener, app));
    let http = reqwest::Client::new();
    let send = |method: &str, path: &str, body: Option<Value>| {
        let r = http.request(method.parse().unwrap(), format!("{base}{path}"));
        let r = match body {
            Some(b) => r.json(&b),
            // The daemon takes a POST's body as JSON, even an empty one.
            None if method == "POST" => r.header("content-type", "application/json"),
            None => r,
        };
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            // The whole body: a streamed exec has ended by then.
            let text = resp.text().await.unwrap();
            (status, text)
        }
    };
    let made = send("POST", "/v1/sandboxes", Some(json!({"name": "counted"}))).await;
    assert_eq!(made.0, 201, "{}", made.1);
    let id = serde_json::from_str::<Value>(&made.1).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let since = |before: StoreStats| {
        let now = m.store_stats();
        (now.reads - before.reads, now.writes - before.writes)
    };

    let exec = json!({"argv": ["true"]});
    let calls: Vec<(&str, String, Option<Value>, u16)> = vec![
        (
            "POST",
            "/v1/sandboxes/counted/exec".into(),
            Some(exec.clone()),
            200,
        ),
        (
            "POST",
            format!("/v1/sandboxes/{id}/exec"),
            Some(exec.clone()),
            200,
        ),
        (
            "POST",
            "/v1/sandboxes/counted/exec/stream".into(),
            Some(exec.clone()),
            200,
        ),
        (
            "POST",
            "/v1/sandboxes/counted/code".into(),
            Some(json!({"language": "sh", "code": "true"})),
            200,
        ),
        (
            "POST",
            "/v1/sandboxes/counted/directories?path=/root/d".into(),
            None,
            201,
        ),
        (
            "GET",
            "/v1/sandboxes/counted/files?path=/root".into(),
            None,
            200,
        ),
        (
            "GET",
            "/v1/sandboxes/counted/files/content?path=/etc/hostname".into(),
            None,
            200,
        ),
        (
            "DELETE",
            "/v1/sandboxes/counted/files?path=/root/d".into(),
            None,
            204,
        ),
    ];
    for (method, path, body, want) in calls {
        let before = m.store_stats();
        let (status, text) = send(method, &path, body).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        assert_eq!(since(before), (1, 1), "{method} {path}: (reads, writes)");
    }
    // An upload (its body is not JSON).
    let before = m.store_stats();
    let resp = http
        .put(format!(
            "{base}/v1/sandboxes/counted/files/content?path=/root/f"
        ))
        .header("content-type", "application/octet-stream")
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(since(before), (1, 1), "upload: (reads, writes)");

    // MCP's execute_command takes the same path.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")),
    );
    let client = ().serve(transport).await.expect("MCP over HTTP handshake");
    let before = m.store_stats();
    let r = structured(
        &call(
            &client,
            "execute_command",
            json!({"sandbox": "counted", "command": "true"}),
        )
        .await,
    );
    assert_eq!(r["exit_code"], 0);
    assert_eq!(
        since(before),
        (1, 1),
        "MCP execute_command: (reads, writes)"
    );
    client.cancel().await.unwrap();

    // The library, on a sandbox held and on one it attaches to.
    let before = m.store_stats();
    m.execute("counted", "true").await.unwrap();
    assert_eq!(since(before), (1, 1), "library exec: (reads, writes)");
    m.release_all().await;
    let before = m.store_stats();
    let (status, text) = send("POST", "/v1/sandboxes/counted/exec", Some(exec.clone())).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(since(before), (1, 1), "exec that attaches: (reads, writes)");

    // Refused: no sandbox, or one another process stopped.
    let before = m.store_stats();
    let (status, _) = send("POST", "/v1/sandboxes/nope/exec", Some(exec.clone())).await;
    assert_eq!((status, since(before)), (404, (1, 0)));
    // Released first: a held sandbox's VM watch would record its end (a
    // write of its own) while this counts.
    m.release_all().await;
    env.ok(&["kill", "counted"]);
    let before = m.store_stats();
    let (status, text) = send("POST", "/v1/sandboxes/counted/exec", Some(exec)).await;
    assert_eq!(status, 409, "{text}");
    assert_eq!(since(before), (1, 0), "refused exec: (reads, writes)");

    server.abort();
    m.destroy_all().await.unwrap();
    env.assert_clean();
}

async fn exec(d: &Daemon, name: &str, command: &str) -> Value {
    let body = json!({ "command": command });
    d.ok("POST", &format!("/v1/sandboxes/{name}/exec"), Some(body))
        .await
}

async fn count(d: &Daemon) -> u64 {
    let r = exec(d, "ws", "cat /root/count").await;
    r["stdout"].as_str().unwrap().trim().parse::<u64>().unwrap()
}

async fn state(d: &Daemon, name: &str) -> Value {
    d.ok("GET", &format!("/v1/sandboxes/{name}"), None).await
}

/// The counter a hibernation must keep counting: `/root/count` goes up
/// every 0.1 s.
const COUNTER: &str = "echo note > /root/file; (setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done' >/dev/null 2>&1 &); sleep 0.5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernation_outlives_daemon_and_host_restarts_idle_sandboxes_hibernate_within_the_cap() {
    let env = Env::new();
    let hibernating = [("PETTY_LIMITS_ON_IDLE", "hibernate")];
    let mut d = Daemon::start_with(&env, &["--pool-size", "0"], &hibernating);
    d.ok(
        "POST",
        "/v1/sandboxes",
        Some(json!({"name": "ws", "idle_timeout_secs": 0})),
    )
    .await;
    exec(&d, "ws", COUNTER).await;
    let before = count(&d).await;
    let h = d.ok("POST", "/v1/sandboxes/ws/hibernate", None).await;
    assert_eq!(h["state"], "hibernated", "{h}");
    assert!(h["disk_bytes"].as_u64().unwrap() > 1 << 20, "{h}");
    let ls = env.ok(&["ls"]);
    let row = ls.lines().find(|l| l.starts_with("ws ")).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("hibernated"), "{ls}");
    assert!(
        row.split_whitespace().nth(5).unwrap().ends_with('M'),
        "{ls}"
    );

    // The daemon restarts: an exec resumes it, the file is there and the
    // counter counts on from where it was.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    let mut d = Daemon::start_with(&env, &["--pool-size", "0"], &hibernating);
    assert_eq!(exec(&d, "ws", "cat /root/file").await["stdout"], "note\n");
    let after = count(&d).await;
    assert!(after >= before, "{before} -> {after}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = count(&d).await;
    assert!(later > after, "the counter runs on: {after} -> {later}");
    assert!(d.log().contains("resumes it"), "the log says so");

    // Hibernated again, the daemon stopped, every VMM killed and the run
    // directory cleared (as a host reboot would): resumed all the same.
    d.ok("POST", "/v1/sandboxes/ws/hibernate", None).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    crate::kill_vms_under(env.root.path());
    for e in std::fs::read_dir(env.root.path()).unwrap().flatten() {
        let _ = std::fs::remove_dir_all(e.path());
    }
    let mut d = Daemon::start_with(&env, &["--pool-size", "0"], &hibernating);
    let r = d.ok("POST", "/v1/sandboxes/ws/resume", None).await;
    assert_eq!(r["state"], "ready", "{r}");
    assert!(count(&d).await >= later);

    // limits.on_idle = "hibernate": idle for 2 s, it hibernates; the next
    // exec resumes it. A create's own on_idle wins.
    for (name, on_idle) in [("nap", None), ("halt", Some("stop"))] {
        let mut spec = json!({"name": name, "idle_timeout_secs": 2});
        if let Some(a) = on_idle {
            spec["on_idle"] = json!(a);
        }
        let v = d.ok("POST", "/v1/sandboxes", Some(spec)).await;
        assert_eq!(v["on_idle"].as_str(), on_idle, "{v}");
        exec(&d, name, "echo zz > /root/z && sync").await;
    }
    for (name, to) in [("nap", "hibernated"), ("halt", "stopped")] {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while state(&d, name).await["state"] != to {
            assert!(std::time::Instant::now() < deadline, "{name} never {to}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let v = state(&d, name).await;
        assert!(v["reason"].as_str().unwrap().contains("idle"), "{v}");
    }
    assert_eq!(exec(&d, "nap", "cat /root/z").await["stdout"], "zz\n");
    assert_eq!(state(&d, "nap").await["state"], "ready");
    d.ok(
        "POST",
        "/v1/sandboxes/nap/lifetime",
        Some(json!({"idle_timeout_secs": 0})),
    )
    .await;

    // With a cap on what stopped and hibernated sandboxes keep (1 MiB,
    // which "halt"'s kept disk passes already), a hibernation is refused,
    // saying what to do, and the sandbox runs on unchanged; an idle one is
    // stopped instead.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    let capped = [
        ("PETTY_LIMITS_ON_IDLE", "hibernate"),
        ("PETTY_LIMITS_MAX_KEPT_DISK_MIB", "1"),
    ];
    let mut d = Daemon::start_with(&env, &["--pool-size", "0"], &capped);
    let (status, e) = d.call("POST", "/v1/sandboxes/ws/hibernate", None).await;
    assert_eq!(status, 507, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("limits.max_kept_disk_mib") && msg.contains("petty rm"),
        "{msg}"
    );
    assert_eq!(state(&d, "ws").await["state"], "ready");
    assert!(count(&d).await > later, "it ran on");
    assert!(
        !env.data
            .path()
            .join("hibernated")
            .join(state(&d, "ws").await["id"].as_str().unwrap())
            .exists(),
        "nothing of the refused hibernation is left"
    );
    d.ok(
        "POST",
        "/v1/sandboxes/nap/lifetime",
        Some(json!({"idle_timeout_secs": 2})),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while state(&d, "nap").await["state"] != "stopped" {
        assert!(std::time::Instant::now() < deadline, "nap never stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = state(&d, "nap").await;
    assert!(
        v["reason"].as_str().unwrap().contains("not hibernated"),
        "{v}"
    );

    // Removing them frees their disks: nothing is left in the data directory.
    for name in ["ws", "nap", "halt"] {
        let (status, _) = d
            .call("DELETE", &format!("/v1/sandboxes/{name}"), None)
            .await;
        assert_eq!(status, 204, "{name}");
    }
    for dir in ["disks", "hibernated"] {
        let left: Vec<_> = std::fs::read_dir(env.data.path().join(dir))
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    env.assert_clean();
}
