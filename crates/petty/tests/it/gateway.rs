//! `petty gateway` over three real `petty serve` nodes on one host (each
//! its own data and run directories and port), with real VMs behind them,
//! driven by reqwest and the rmcp client: placement spreads creates,
//! every request for a sandbox reaches its node, a snapshot's routes reach
//! the node holding it, a drained node takes no creates, a SIGKILLed
//! node's sandboxes are `lost` (fast 503s) while creates go elsewhere, and
//! once it is back they answer again.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rmcp::ServiceExt as _;
use serde_json::{json, Value};

use crate::{processes_mentioning, run_root};

/// A free loopback port (a node keeps its port across a restart, as the
/// gateway's static list names it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `petty ARGS` and reads its first stdout line (its address).
fn spawn(args: &[&str], log: &std::path::Path) -> (Child, String) {
    crate::assets();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_petty"))
        .env("PETTY_NO_CONFIG", "1")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| {
            panic!(
                "no address in {line:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string();
    (child, url)
}

struct Node {
    child: Child,
    port: u16,
    run: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Node {
    fn start(port: u16, data: &std::path::Path, run: &std::path::Path) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data.join(format!("node-{n}.log"));
        let (child, _) = spawn(
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &data.display().to_string(),
                "--run-dir",
                &run.display().to_string(),
                "--pool-size",
                "0",
            ],
            &log,
        );
        Self {
            child,
            port,
            run: run.to_path_buf(),
            log,
        }
    }

    fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the daemon, leaving its VMs running (as a crash does).
    fn crash(mut self) {
        // SAFETY: killing the daemon this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        crate::kill_vms_under(&self.run);
        if std::thread::panicking() {
            eprintln!(
                "--- node {} log ---\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

struct Gw {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Gw {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .timeout(Duration::from_secs(120));
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

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Waits (at most 60 s) until node `name` is in `state`.
    async fn node_state(&self, name: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let nodes = self.ok("GET", "/v1/gateway/nodes", None).await;
            if nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == name && n["state"] == state)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("node {name} never became {state}");
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_places_routes_and_survives_a_lost_node() {
    let logs = tempfile::tempdir().unwrap();
    let datas: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<tempfile::TempDir> = (0..3).map(|_| run_root()).collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(free_port(), datas[i].path(), runs[i].path()))
        .collect();
    let mut args = vec![
        "gateway".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    for n in &nodes {
        args.push("--node".into());
        args.push(format!("http://{}", n.name()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, base) = spawn(&args, &logs.path().join("gateway.log"));
    let gw = Gw {
        child,
        base,
        http: reqwest::Client::new(),
    };
    for n in &nodes {
        gw.node_state(&n.name(), "up").await;
    }

    // Placement: six creates over three nodes, none above half.
    let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..6 {
        let v = gw
            .ok(
                "POST",
                "/v1/sandboxes",
                Some(json!({"name": format!("g{i}")})),
            )
            .await;
        on.entry(v["node"].as_str().unwrap().to_string())
            .or_default()
            .push(v["id"].as_str().unwrap().to_string());
    }
    assert!(on.values().all(|s| s.len() <= 3), "unbalanced: {on:?}");
    let (status, v) = gw
        .call("POST", "/v1/sandboxes", Some(json!({"name": "g0"})))
        .await;
    assert_eq!(status, 409, "a name taken on any node is taken: {v}");

    // Every request for a sandbox reaches its node: exec, a streamed exec,
    // files both ways, background processes.
    for i in 0..6 {
        let v = gw
            .ok(
                "POST",
                &format!("/v1/sandboxes/g{i}/exec"),
                Some(json!({"command": format!("echo hello-{i}")})),
            )
            .await;
        assert_eq!(v["stdout"], format!("hello-{i}\n"));
    }
    let text = gw
        .http
        .post(format!("{}/v1/sandboxes/g1/exec/stream", gw.base))
        .json(&json!({"command": "for i in 1 2 3; do echo $i; done"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#""type":"exit""#) && text.contains(r#""data":"1\n""#),
        "{text}"
    );
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let resp = gw
        .http
        .put(format!(
            "{}/v1/sandboxes/g2/files/content?path=/root/blob",
            gw.base
        ))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let back = gw
        .http
        .get(format!(
            "{}/v1/sandboxes/g2/files/content?path=/root/blob",
            gw.base
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(back[..] == data[..], "the file came back different");

    // A listing has every node's, each naming its node.
    let all = gw.ok("GET", "/v1/sandboxes", None).await;
    assert_eq!(all.as_array().unwrap().len(), 6, "{all}");
    let node_of = |name: &str| -> String {
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["node"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // A snapshot's routes reach the node that holds it.
    let g0_node = node_of("g0");
    gw.ok(
        "POST",
        "/v1/sandboxes/g0/exec",
        Some(json!({"command": "echo kept > /root/state"})),
    )
    .await;
    gw.ok(
        "POST",
        "/v1/sandboxes/g0/snapshots",
        Some(json!({"name": "gs"})),
    )
    .await;
    let forks = gw
        .ok("POST", "/v1/snapshots/gs/fork", Some(json!({"count": 2})))
        .await;
    let forks: Vec<String> = forks
        .as_array()
        .unwrap_or_else(|| forks["sandboxes"].as_array().unwrap())
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forks.len(), 2);
    for f in &forks {
        let v = gw
            .ok(
                "POST",
                &format!("/v1/sandboxes/{f}/exec"),
                Some(json!({"command": "cat /root/state"})),
            )
            .await;
        assert_eq!(v["stdout"], "kept\n");
    }
    let snaps = gw.ok("GET", "/v1/snapshots", None).await;
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "gs" && s["node"] == g0_node.as_str()),
        "{snaps}"
    );

    // MCP through the gateway: a real client, its session kept on one node.
    {
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        use rmcp::transport::StreamableHttpClientTransport;
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", gw.base)),
        );
        let client = ().serve(transport).await.expect("MCP handshake through the gateway");
        let mut p = rmcp::model::CallToolRequestParams::new("create_sandbox");
        p.arguments = Some(json!({"name": "via-mcp"}).as_object().unwrap().clone());
        let r = client.call_tool(p).await.unwrap();
        assert_ne!(r.is_error, Some(true), "{r:?}");
        let mut p = rmcp::model::CallToolRequestParams::new("execute_command");
        p.arguments = Some(
            json!({"sandbox": "via-mcp", "command": "echo through-mcp"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let r = client.call_tool(p).await.unwrap();
        let out = r.structured_content.clone().unwrap();
        assert_eq!(out["stdout"], "through-mcp\n", "{r:?}");
        let mut p = rmcp::model::CallToolRequestParams::new("destroy_sandbox");
        p.arguments = Some(json!({"sandbox": "via-mcp"}).as_object().unwrap().clone());
        client.call_tool(p).await.unwrap();
        client.cancel().await.unwrap();
    }

    // A drained node takes no creates; `petty gateway nodes` shows it.
    let drained = nodes[0].name();
    let cli = |args: &[&str]| {
        let gw_listen = gw.base.trim_start_matches("http://").to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_petty"))
            .env("PETTY_NO_CONFIG", "1")
            .args(["gateway"])
            .args(args)
            .args(["--listen", &gw_listen])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "petty gateway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["drain", &drained]);
    let table = cli(&["nodes"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&drained))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("up") && row.contains("true"), "{table}");
    for i in 0..3 {
        let v = gw
            .ok(
                "POST",
                "/v1/sandboxes",
                Some(json!({"name": format!("d{i}")})),
            )
            .await;
        assert_ne!(
            v["node"],
            drained.as_str(),
            "a create was placed on the drained node"
        );
    }
    cli(&["drain", &drained, "--undo"]);

    // SIGKILL a node (not the one holding the snapshot): its sandboxes fail
    // fast and list as lost; creates go elsewhere.
    let lost_i = nodes.iter().position(|n| n.name() != g0_node).unwrap();
    let lost = nodes[lost_i].name();
    let victim = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == lost.as_str())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .expect("the node has a sandbox");
    let port = nodes[lost_i].port;
    nodes.remove(lost_i).crash();
    let (status, v) = gw
        .call(
            "POST",
            &format!("/v1/sandboxes/{victim}/exec"),
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert!(v["message"].as_str().unwrap().contains(&lost), "{v}");
    gw.node_state(&lost, "down").await;
    let listed = gw.ok("GET", "/v1/sandboxes", None).await;
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == victim.as_str())
        .unwrap();
    assert_eq!(row["state"], "lost", "{row}");
    for i in 0..2 {
        let v = gw
            .ok(
                "POST",
                "/v1/sandboxes",
                Some(json!({"name": format!("after{i}")})),
            )
            .await;
        assert_ne!(v["node"], lost.as_str());
    }

    // Back on its port and directories, it recovers its VMs and the
    // gateway routes to them again.
    let back = Node::start(port, datas[lost_i].path(), runs[lost_i].path());
    gw.node_state(&back.name(), "up").await;
    let v = gw
        .ok(
            "POST",
            &format!("/v1/sandboxes/{victim}/exec"),
            Some(json!({"command": "echo back"})),
        )
        .await;
    assert_eq!(v["stdout"], "back\n");
    nodes.push(back);

    // Everything goes through the gateway too; nothing is left.
    let listed = gw.ok("GET", "/v1/sandboxes", None).await;
    for s in listed.as_array().unwrap() {
        let (status, v) = gw
            .call(
                "DELETE",
                &format!("/v1/sandboxes/{}", s["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert!(status == 204 || status == 200, "{status} {v}");
    }
    gw.ok("DELETE", "/v1/snapshots/gs", None).await;
    assert_eq!(gw.ok("GET", "/v1/sandboxes", None).await, json!([]));
    drop(nodes);
    for r in &runs {
        let r = r.path().display().to_string();
        assert!(processes_mentioning(&r).is_empty(), "a VMM of {r} is left");
    }
}
