//! `petty gateway` over three real `petty serve` nodes, each in a network
//! namespace of its own (a veth pair, its own address, data and run
//! directories, a node key), with real VMs behind them, driven by reqwest
//! and the rmcp client through the gateway's key: placement spreads creates,
//! every request for a sandbox reaches its node, a snapshot's routes reach
//! the node holding it, a drained node takes no creates, a SIGKILLed
//! node's sandboxes are `lost` (fast 503s) while creates go elsewhere, and
//! once it is back they answer again. Discovery reads SRV and A records
//! from a real DNS server (dnsmasq) on loopback, and re-reads them.

// The namespace tests take turns across awaits (as serve/network.rs does):
// a std mutex, held by one test at a time on purpose.
#![allow(clippy::await_holding_lock)]

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rmcp::ServiceExt as _;
use serde_json::{json, Value};

use petty_net::netns::Netns;

use crate::{processes_mentioning, run_root};

/// Creates the placement check makes.
const CREATES: usize = 30;
const NODE_KEY: &str = "node-key-0123456789abcdef";
const GW_KEY: &str = "gateway-key-0123456789ab";

/// Starts `cmd` (a `petty` command) and reads its first stdout line (its
/// address); its stderr goes to `log`.
fn spawn(mut cmd: std::process::Command, log: &std::path::Path) -> (Child, String) {
    crate::assets();
    let mut child = cmd
        .env("PETTY_NO_CONFIG", "1")
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

/// A namespace with a veth pair: the node's address is 10.210.N.2, the
/// host's side 10.210.N.1.
fn node_ns(n: u8) -> (Netns, std::net::Ipv4Addr) {
    let ip = crate::egress::ip_tool();
    let name = format!("petty-t-gw{}-{n}", std::process::id());
    let mut ns = Netns::create(&ip, &name).unwrap();
    let host_if = format!("pg{}h{n}", std::process::id() % 100_000);
    let addr = std::net::Ipv4Addr::new(10, 210, n, 2);
    ns.veth(
        &host_if,
        "eth0",
        std::net::Ipv4Addr::new(10, 210, n, 1),
        addr,
    )
    .unwrap();
    (ns, addr)
}

struct Node {
    child: Child,
    addr: std::net::Ipv4Addr,
    run: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Node {
    /// `petty serve` inside `ns`, on its address, with the node key.
    fn start(
        ns: &Netns,
        addr: std::net::Ipv4Addr,
        data: &std::path::Path,
        run: &std::path::Path,
    ) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data.join(format!("node-{n}.log"));
        let mut cmd = ns
            .command_inside(std::path::Path::new(env!("CARGO_BIN_EXE_petty")))
            .unwrap();
        cmd.args([
            "serve",
            "--listen",
            &format!("{addr}:8080"),
            "--api-key",
            NODE_KEY,
            "--data-dir",
            &data.display().to_string(),
            "--run-dir",
            &run.display().to_string(),
            "--pool-size",
            "0",
        ])
        .env("PETTY_TEMPLATES_BUILD_NETWORK", "false");
        let (child, _) = spawn(cmd, &log);
        Self {
            child,
            addr,
            run: run.to_path_buf(),
            log,
        }
    }

    fn name(&self) -> String {
        format!("{}:8080", self.addr)
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
                self.addr,
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
            .bearer_auth(GW_KEY)
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

/// `petty gateway` over `nodes` (and `args`), with the keys.
fn start_gateway(
    nodes: &[String],
    args: &[&str],
    vars: &[(&str, &str)],
    log: &std::path::Path,
) -> Gw {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_petty"));
    cmd.args([
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        GW_KEY,
        "--node-key",
        NODE_KEY,
    ])
    .args(args)
    .envs(vars.iter().copied());
    for n in nodes {
        cmd.args(["--node", &format!("http://{n}")]);
    }
    let (child, base) = spawn(cmd, log);
    Gw {
        child,
        base,
        http: reqwest::Client::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_places_routes_and_survives_a_lost_node() {
    if !crate::egress::can_run() {
        return;
    }
    let _turn = crate::egress::turn();
    let logs = tempfile::tempdir().unwrap();
    let nss: Vec<(Netns, std::net::Ipv4Addr)> = (1..=3).map(node_ns).collect();
    let datas: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<tempfile::TempDir> = (0..3).map(|_| run_root()).collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&nss[i].0, nss[i].1, datas[i].path(), runs[i].path()))
        .collect();
    let names: Vec<String> = nodes.iter().map(Node::name).collect();
    let gw = start_gateway(&names, &[], &[], &logs.path().join("gateway.log"));
    // Without the gateway's key nothing is served.
    let status = gw
        .http
        .get(format!("{}/v1/sandboxes", gw.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    for n in &nodes {
        gw.node_state(&n.name(), "up").await;
    }

    // Placement: thirty creates over three nodes, none above half.
    let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..CREATES {
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
    let counts: Vec<usize> = on.values().map(Vec::len).collect();
    assert!(
        on.len() == 3 && counts.iter().all(|&n| n <= CREATES / 2),
        "unbalanced: {counts:?}"
    );
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
        .bearer_auth(GW_KEY)
        .json(&json!({"command": "for i in 1 2 3; do echo $i; done"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out: String = lines
        .iter()
        .filter(|l| l["type"] == "stdout")
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "1\n2\n3\n", "{text}");
    assert_eq!(lines.last().unwrap()["type"], "exit", "{text}");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let resp = gw
        .http
        .put(format!(
            "{}/v1/sandboxes/g2/files/content?path=/root/blob",
            gw.base
        ))
        .bearer_auth(GW_KEY)
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
        .bearer_auth(GW_KEY)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(back[..] == data[..], "the file came back different");

    // A listing has every node's, each naming its node.
    let all = gw.ok("GET", "/v1/sandboxes", None).await;
    assert_eq!(all.as_array().unwrap().len(), CREATES, "{all}");
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
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", gw.base))
                .auth_header(GW_KEY),
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

    // A template built through the gateway, on one node, serves a create
    // placed on another: the gateway copies it there first.
    let text = gw
        .http
        .post(format!("{}/v1/templates", gw.base))
        .bearer_auth(GW_KEY)
        .json(&json!({"name": "gwt", "dockerfile": "FROM base\nRUN echo from-template > /etc/gw-marker\nENV GWT=yes"}))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .last()
            .unwrap_or("")
            .contains(r#""type":"done""#),
        "{text}"
    );
    let builder = gw.ok("GET", "/v1/templates", None).await;
    let builder: Vec<String> = builder
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "gwt")
        .map(|t| t["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(builder.len(), 1, "built on one node: {builder:?}");
    let builder = builder[0].clone();
    gw.ok(
        "POST",
        &format!("/v1/gateway/nodes/{builder}/drain"),
        Some(json!({"draining": true})),
    )
    .await;
    let v = gw
        .ok(
            "POST",
            "/v1/sandboxes",
            Some(json!({"name": "from-gwt", "template": "gwt"})),
        )
        .await;
    assert_ne!(v["node"], builder.as_str(), "{v}");
    let out = gw
        .ok(
            "POST",
            "/v1/sandboxes/from-gwt/exec",
            Some(json!({"command": "cat /etc/gw-marker; echo $GWT"})),
        )
        .await;
    assert_eq!(out["stdout"], "from-template\nyes\n", "{out}");
    gw.ok(
        "POST",
        &format!("/v1/gateway/nodes/{builder}/drain"),
        Some(json!({"draining": false})),
    )
    .await;
    let holders = gw.ok("GET", "/v1/templates", None).await;
    let holders = holders
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "gwt")
        .count();
    assert_eq!(holders, 2, "the copy is a template of its own there");
    // A node refuses an image that is not what its headers say, or whose
    // agent speaks another protocol, and keeps nothing of it.
    let node_url = format!("http://{}", v["node"].as_str().unwrap());
    let image = reqwest::Client::new()
        .get(format!("{node_url}/v1/templates/gwt/image"))
        .bearer_auth(NODE_KEY)
        .send()
        .await
        .unwrap();
    let headers = image.headers().clone();
    let stream = image.bytes().await.unwrap().to_vec();
    let put = |protocol: String, body: Vec<u8>| {
        let (url, headers) = (node_url.clone(), headers.clone());
        async move {
            reqwest::Client::new()
                .put(format!("{url}/v1/templates/bad/image"))
                .bearer_auth(NODE_KEY)
                .header("content-type", "application/vnd.petty.sparse")
                .header("x-petty-template", headers["x-petty-template"].clone())
                .header("x-petty-protocol", protocol)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let protocol = headers["x-petty-protocol"].to_str().unwrap().to_string();
    let mut damaged = stream.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x40;
    for (protocol, body, status) in [
        (protocol.clone(), damaged, 400),
        (protocol.clone(), stream[..stream.len() / 3].to_vec(), 400),
        ("1".to_string(), stream.clone(), 409),
    ] {
        let resp = put(protocol, body).await;
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{}",
            resp.text().await.unwrap()
        );
    }
    let names: Vec<String> = gw
        .ok("GET", "/v1/templates", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"bad".to_string()), "{names:?}");
    for d in &datas {
        let images = d.path().join("images");
        let partial = std::fs::read_dir(&images)
            .map(|r| {
                r.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("partial"))
            })
            .unwrap_or(false);
        assert!(
            !partial,
            "an import left a partial file in {}",
            images.display()
        );
    }
    gw.ok("DELETE", "/v1/sandboxes/from-gwt", None).await;

    // A drained node takes no creates; `petty gateway nodes` shows it.
    let drained = nodes[0].name();
    let cli = |args: &[&str]| {
        let gw_listen = gw.base.trim_start_matches("http://").to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_petty"))
            .env("PETTY_NO_CONFIG", "1")
            .args(["gateway"])
            .args(args)
            .args(["--listen", &gw_listen, "--api-key", GW_KEY])
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
    // Traffic runs on while it dies: creates (some placed on it before the
    // gateway knows) and execs on the other nodes' sandboxes all succeed.
    let survivor = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] != lost.as_str())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (base, stop, survivor) = (gw.base.clone(), stop.clone(), survivor.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut failures = Vec::new();
            let mut made = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 40 {
                let r = http
                    .post(format!("{base}/v1/sandboxes"))
                    .bearer_auth(GW_KEY)
                    .json(&json!({"name": format!("mid{i}")}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status == 201 {
                    made.push(v["node"].as_str().unwrap_or("").to_string());
                } else {
                    failures.push(format!("create: {status} {v}"));
                }
                let r = http
                    .post(format!("{base}/v1/sandboxes/{survivor}/exec"))
                    .bearer_auth(GW_KEY)
                    .json(&json!({"command": "true"}))
                    .send()
                    .await
                    .unwrap();
                if !r.status().is_success() {
                    failures.push(format!("exec: {}", r.status()));
                }
                i += 1;
            }
            (made, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (made, failures) = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "traffic failed while a node died: {failures:?}"
    );
    assert!(!made.is_empty());
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
    let back = Node::start(
        &nss[lost_i].0,
        nss[lost_i].1,
        datas[lost_i].path(),
        runs[lost_i].path(),
    );
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

/// The nodes the gateway has up, sorted.
async fn up_nodes(gw: &Gw) -> Vec<String> {
    let mut v: Vec<String> = gw
        .ok("GET", "/v1/gateway/nodes", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "up")
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Waits (at most 60 s) until the gateway has exactly `want` up.
async fn until_up(gw: &Gw, want: Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = up_nodes(gw).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes up {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A dnsmasq this test started: killed when dropped, a failed test's too.
struct Dns(Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq on 127.0.0.1:`port` answering only from its own records.
fn dnsmasq(port: u16, records: &[String], log: &std::path::Path) -> Dns {
    let mut cmd = std::process::Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--user=root",
        "--pid-file=",
        &format!("--port={port}"),
        "--log-queries",
        &format!("--log-facility={}", log.display()),
    ])
    .args(records)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    let mut child = cmd
        .spawn()
        .expect("run dnsmasq (scripts/install-deps installs dnsmasq-base)");
    // Answering within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers_dns(port) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dnsmasq did not answer");
        }
    }
    Dns(child)
}

/// Whether a DNS server on 127.0.0.1:`port` answers a question (200 ms).
fn answers_dns(port: u16) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let q = petty_net::dns::build_query(1, "probe.nodes.petty.test", petty_net::dns::TYPE_A);
    let mut buf = [0u8; 512];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .is_ok()
        && sock.send_to(&q, ("127.0.0.1", port)).is_ok()
        && sock.recv(&mut buf).is_ok()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_discovers_nodes_by_srv_and_a_records_and_follows_their_changes() {
    if !crate::egress::can_run() {
        return;
    }
    let _turn = crate::egress::turn();
    let logs = tempfile::tempdir().unwrap();
    let nss: Vec<(Netns, std::net::Ipv4Addr)> = (4..=6).map(node_ns).collect();
    let datas: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<tempfile::TempDir> = (0..3).map(|_| run_root()).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&nss[i].0, nss[i].1, datas[i].path(), runs[i].path()))
        .collect();
    let names: Vec<String> = nodes.iter().map(Node::name).collect();
    let port = free_udp_port();
    // SRV names two of the three nodes at first, then all three.
    let records = |n: usize| -> Vec<String> {
        let mut r = Vec::new();
        for (i, node) in nodes.iter().enumerate().take(n) {
            r.push(format!(
                "--host-record=node{i}.nodes.petty.test,{}",
                node.addr
            ));
            r.push(format!(
                "--srv-host=_petty._tcp.nodes.petty.test,node{i}.nodes.petty.test,8080"
            ));
            r.push(format!("--address=/all.nodes.petty.test/{}", node.addr));
        }
        r
    };
    let dns = dnsmasq(port, &records(2), &logs.path().join("dnsmasq.log"));
    let server = format!("127.0.0.1:{port}");
    let vars = [
        ("PETTY_GATEWAY_DNS_SERVER", server.as_str()),
        ("PETTY_GATEWAY_HEALTH_INTERVAL_SECS", "1"),
    ];
    let gw = start_gateway(
        &[],
        &["--discover", "srv:_petty._tcp.nodes.petty.test"],
        &vars,
        &logs.path().join("gw-srv.log"),
    );
    let want = |n: usize| {
        let mut v: Vec<String> = names[..n].to_vec();
        v.sort();
        v
    };
    until_up(&gw, want(2)).await;
    // A create through it lands on a discovered node.
    let v = gw
        .ok("POST", "/v1/sandboxes", Some(json!({"name": "found"})))
        .await;
    assert!(
        names[..2].contains(&v["node"].as_str().unwrap().to_string()),
        "{v}"
    );
    // The records change: the gateway reads them again and follows.
    drop(dns);
    let dns = dnsmasq(port, &records(3), &logs.path().join("dnsmasq2.log"));
    until_up(&gw, want(3)).await;
    drop(gw);

    // `dns:NAME`: every A record of the name, at gateway.discover_port.
    let gw = start_gateway(
        &[],
        &["--discover", "dns:all.nodes.petty.test"],
        &vars,
        &logs.path().join("gw-a.log"),
    );
    until_up(&gw, want(3)).await;
    gw.ok("DELETE", "/v1/sandboxes/found", None).await;
    drop(gw);

    // A discovery that is no discovery is refused, naming the key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_petty"))
        .env("PETTY_NO_CONFIG", "1")
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--discover",
            "consul:nodes",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.discover") && err.contains("srv:NAME"),
        "{err}"
    );
    drop(dns);
    drop(nodes);
    for r in &runs {
        let r = r.path().display().to_string();
        assert!(processes_mentioning(&r).is_empty(), "a VMM of {r} is left");
    }
}

/// Waits (at most 60 s) until `url` answers 200.
async fn answers(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_gateway_example_runs_as_written() {
    crate::assets();
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in crate::readme_section("### Many hosts: the gateway").lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => lines.push(l.to_string()),
            _ => {}
        }
    }
    assert!(lines.len() >= 7, "{lines:?}");
    // As written, but on free ports and in this test's directories.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (p1, p2, pg) = (free(), free(), free());
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<tempfile::TempDir> = (0..2).map(|_| run_root()).collect();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_petty"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut background = Vec::new();
    for line in &lines {
        let cmd = match line.find("  #") {
            Some(i) => line[..i].trim_end(),
            None => line.as_str(),
        }
        .replace(
            "/tmp/petty-node1-run",
            &runs[0].path().display().to_string(),
        )
        .replace(
            "/tmp/petty-node2-run",
            &runs[1].path().display().to_string(),
        )
        .replace("/tmp/petty-node1", &dirs[0].path().display().to_string())
        .replace("/tmp/petty-node2", &dirs[1].path().display().to_string())
        .replace(":8081", &format!(":{p1}"))
        .replace(":8082", &format!(":{p2}"))
        .replace(":8090", &format!(":{pg}"));
        let mut c = std::process::Command::new("sh");
        c.env("PETTY_NO_CONFIG", "1")
            .env("PATH", &path)
            .stdin(Stdio::null());
        if let Some(daemon) = cmd.strip_suffix('&') {
            let port = [p1, p2, pg]
                .into_iter()
                .find(|p| daemon.contains(&format!("--listen 127.0.0.1:{p}")))
                .expect("a daemon line listens on one of the ports");
            let child = c
                .arg("-c")
                .arg(format!("exec {daemon}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            background.push(child);
            let ready = if port == pg { "/readyz" } else { "/healthz" };
            answers(&format!("http://127.0.0.1:{port}{ready}")).await;
            continue;
        }
        // Every node must be up before the first create is placed.
        if cmd.starts_with("curl") {
            for p in [p1, p2] {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let nodes: Value =
                        reqwest::get(format!("http://127.0.0.1:{pg}/v1/gateway/nodes"))
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                    let up = nodes.as_array().unwrap().iter().any(|n| {
                        n["name"] == format!("127.0.0.1:{p}").as_str() && n["state"] == "up"
                    });
                    if up {
                        break;
                    }
                    assert!(Instant::now() < deadline, "node {p} never came up: {nodes}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // curl reports a 4xx/5xx as a failure, as in the daemon's README test.
        let script = format!("curl() {{ command curl --fail-with-body -sS \"$@\"; }}\n{cmd}\n");
        let out = c.arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "README line failed: {line}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for mut child in background.into_iter().rev() {
        // SAFETY: signalling a daemon this test spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    for r in &runs {
        let r = r.path().display().to_string();
        assert!(processes_mentioning(&r).is_empty(), "a VMM of {r} is left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2bs_sdk_works_through_the_gateway_over_two_nodes() {
    use std::io::BufRead as _;
    crate::assets();
    let logs = tempfile::tempdir().unwrap();
    let datas: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<tempfile::TempDir> = (0..2).map(|_| run_root()).collect();
    let mut nodes = Vec::new();
    let mut urls = Vec::new();
    for i in 0..2 {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_petty"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--e2b-listen",
            "127.0.0.1:0",
            "--pool-size",
            "0",
        ])
        .arg("--data-dir")
        .arg(datas[i].path())
        .arg("--run-dir")
        .arg(runs[i].path());
        let (child, url) = spawn(cmd, &logs.path().join(format!("node-{i}.log")));
        nodes.push(child);
        urls.push(url);
    }
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_petty"));
    cmd.args([
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--e2b-listen",
        "127.0.0.1:0",
    ]);
    for u in &urls {
        cmd.args(["--node", u]);
    }
    let mut child = cmd
        .env("PETTY_NO_CONFIG", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(logs.path().join("gateway.log")).unwrap())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut addr = || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .map(|a| format!("http://{}", a.trim_end_matches(':')))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    };
    let (base, e2b) = (addr(), addr());
    let gw = Gw {
        child,
        base: base.clone(),
        http: reqwest::Client::new(),
    };
    // Each node's E2B port is known once it is read.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = gw.ok("GET", "/v1/gateway/nodes", None).await;
        let ready = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "up" && n["info"]["e2b_port"].as_u64().is_some())
            .count();
        if ready == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "nodes not up with E2B: {nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let python = crate::e2b::sdk_python();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/gateway.py");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("E2B_API_URL", &e2b)
            .env("E2B_SANDBOX_URL", &e2b)
            .env("E2B_API_KEY", "any-key-on-loopback")
            .env("PETTY_API_URL", &base)
            .env_remove("E2B_DOMAIN")
            .env_remove("E2B_DEBUG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let gw_log = std::fs::read_to_string(logs.path().join("gateway.log")).unwrap_or_default();
    assert!(
        run.status.success() && stdout.trim_end().ends_with("ok"),
        "gateway.py: {stdout}\n{}\n--- gateway log ---\n{gw_log}",
        String::from_utf8_lossy(&run.stderr)
    );
    drop(gw);
    for mut n in nodes {
        // SAFETY: signalling the daemon this test spawned.
        unsafe { libc::kill(n.id() as i32, libc::SIGTERM) };
        let _ = n.wait();
    }
    for r in &runs {
        let r = r.path().display().to_string();
        assert!(processes_mentioning(&r).is_empty(), "a VMM of {r} is left");
    }
}
