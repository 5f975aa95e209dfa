//! Sandbox networks through the daemon (issue 14), on real VMs: REST's
//! create with a mode, rules and published ports, the refusals counted,
//! a port published on a running sandbox, bad specs refused, nothing left
//! after delete; a sandbox's network across a restart of the daemon; and
//! MCP's create_sandbox, publish_port and network_status through the real
//! rmcp client.
//!
//! As in `egress.rs` (whose test hosts, turns and host checks these share),
//! the guests are aimed only at servers this test runs on the host and at
//! test hosts in namespaces it makes. Without root they say why and check
//! nothing.

// Each test holds its turn (a std mutex shared with `egress.rs`'s blocking
// tests) for its whole run, across awaits on its own runtime: it is a turn
// between tests, never a lock a task of the test waits on.
#![allow(clippy::await_holding_lock)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rmcp::ServiceExt as _;
use serde_json::{json, Value};

use super::{structured, text_of, Daemon};
use crate::egress::{
    assert_back_to, can_run, connect, greeter, host_state, serve_script, test_host, turn,
};
use crate::Env;

/// The longest any one request here may take: a create under TCG (a
/// template build included), with room.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Sends a request, bounded by [`REQUEST_TIMEOUT`]; status and JSON body
/// (Null when empty).
async fn call(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = d
        .req(method.parse().unwrap(), path)
        .timeout(REQUEST_TIMEOUT);
    match body {
        Some(b) => r = r.json(&b),
        None if method == "POST" => r = r.header("content-type", "application/json"),
        None => {}
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ok(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(d, method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// Runs Python `code` in sandbox `sb` through REST; its stdout, trimmed.
async fn py(d: &Daemon, sb: &str, code: &str) -> String {
    let r = ok(
        d,
        "POST",
        &format!("/v1/sandboxes/{sb}/exec"),
        Some(json!({"argv": ["python3", "-c", code], "timeout_secs": 60})),
    )
    .await;
    r["stdout"].as_str().unwrap().trim().to_string()
}

/// Starts `python3 -m http.server PORT` in sandbox `sb` through REST,
/// returning once it listens.
async fn serve_in(d: &Daemon, sb: &str, port: u16) {
    let r = ok(
        d,
        "POST",
        &format!("/v1/sandboxes/{sb}/exec"),
        Some(json!({"command": serve_script(port), "timeout_secs": 60})),
    )
    .await;
    assert_eq!(r["exit_code"], 0, "the guest's server did not start: {r}");
}

/// GET / on 127.0.0.1:`port` (a published port); the status, bounded.
async fn get_published(port: u16) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET through published port {port}: {e}"))
        .status()
        .as_u16()
}

/// The published ports of a sandbox view, as (guest, host).
fn published(view: &Value) -> Vec<(u16, u16)> {
    view["network"]["published"]
        .as_array()
        .unwrap_or_else(|| panic!("no network.published in {view}"))
        .iter()
        .map(|p| {
            (
                p["guest_port"].as_u64().unwrap() as u16,
                p["host_port"].as_u64().unwrap() as u16,
            )
        })
        .collect()
}

/// Pids of the network helpers serving sandbox `id` (`petty __net-helper
/// <run_dir>/.net/<id>/net.json`).
fn helpers_of(id: &str) -> Vec<u32> {
    crate::processes_mentioning("__net-helper")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(id))
        })
        .collect()
}

/// Whether the host has sandbox `id`'s namespace (`ip netns list`).
fn has_netns(id: &str) -> bool {
    let ip = petty::settings::net_settings(crate::settings()).ip;
    let out = std::process::Command::new(ip)
        .args(["netns", "list"])
        .output()
        .unwrap();
    let want = format!("petty-sb-{id}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(want.as_str()))
}

/// Whether 127.0.0.1:`port` takes a connection.
fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// Sandbox `id`'s network is gone: no namespace, no helper, and none of
/// `ports` still taking connections. Waited for (bounded): the helper is
/// SIGKILLed, and its listening sockets close when it has died.
async fn assert_network_gone(id: &str, ports: &[u16]) {
    let gone = || !has_netns(id) && helpers_of(id).is_empty() && !ports.iter().any(|p| accepts(*p));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gone() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!has_netns(id), "namespace petty-sb-{id} left");
    assert_eq!(helpers_of(id), Vec::<u32>::new(), "helper of {id} left");
    for p in ports {
        assert!(!accepts(*p), "published host port {p} still accepts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_networks_connect_refuse_count_publish_and_leave_nothing() {
    if !can_run() {
        return;
    }
    let _turn = turn();
    let before = host_state();
    let env = Env::new();
    let testhost = test_host(2);
    // The host itself, listening on every address: a refusal is the
    // helper's, not an empty port.
    let host_server = greeter(Ipv4Addr::UNSPECIFIED.into(), "host");
    let d = Daemon::start(&env, &["--pool-size", "0"]);

    // Specs that do not hold together are refused before anything starts.
    let (status, e) = call(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(json!({"network": "open"})),
    )
    .await;
    assert_eq!(
        (status, e["kind"].clone()),
        (400, json!("bad_request")),
        "{e}"
    );
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("none") && msg.contains("public") && msg.contains("allow"),
        "{msg}"
    );
    let (status, e) = call(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(json!({"network": "none", "publish": ["80"]})),
    )
    .await;
    assert_eq!(status, 400, "publish without a network: {e}");
    assert!(e["message"].as_str().unwrap().contains("network"), "{e}");
    let (status, e) = call(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(json!({"network": "public", "allow_hosts": ["svc.test"]})),
    )
    .await;
    assert_eq!(status, 400, "allow_hosts in public mode: {e}");
    assert!(e["message"].as_str().unwrap().contains("allow"), "{e}");
    let (status, e) = call(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(json!({"network": "public", "publish": ["0"]})),
    )
    .await;
    assert_eq!(status, 400, "guest port 0: {e}");
    let listed = ok(&d, "GET", "/v1/sandboxes", None).await;
    assert_eq!(listed, json!([]), "a refused create left a sandbox");
    assert_eq!(
        host_state().0,
        before.0,
        "a refused create left a namespace"
    );

    // Allow mode: the test host's block, and one published port.
    let (status, sb) = call(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(json!({"name": "netbox", "network": "allow",
                    "allow_cidrs": [testhost.cidr], "publish": ["8000"]})),
    )
    .await;
    assert_eq!(status, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["network"]["mode"], "allow", "{sb}");
    assert_eq!(sb["network"]["allow_cidrs"], json!([testhost.cidr]), "{sb}");
    assert_eq!(sb["network"]["allow_hosts"], json!([]), "{sb}");
    let ports = published(&sb);
    assert_eq!(ports.len(), 1, "{sb}");
    assert_eq!(ports[0].0, 8000);
    assert_ne!(ports[0].1, 0, "no host port chosen: {sb}");
    assert!(has_netns(&id));
    assert_eq!(helpers_of(&id).len(), 1, "one helper for {id}");
    // The view reads the same later.
    let got = ok(&d, "GET", "/v1/sandboxes/netbox", None).await;
    assert_eq!(got["network"], sb["network"]);

    // The test host answers; the host, by its side of the test host's
    // veth (inside the allowed block), does not.
    let th = testhost.addr.to_string();
    assert_eq!(py(&d, "netbox", &connect(&th, 8080)).await, "test host");
    let host_ip = "10.209.2.1";
    assert_eq!(
        py(&d, "netbox", &connect(host_ip, host_server.port)).await,
        "ConnectionResetError",
        "the host at {host_ip}"
    );
    let status = ok(&d, "GET", "/v1/sandboxes/netbox/network", None).await;
    assert!(status["connections"].as_u64().unwrap() >= 1, "{status}");
    assert!(
        status["refused_connections"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let refused = format!("{host_ip}:{}", host_server.port);
    let refusals = status["recent_refusals"].as_array().unwrap();
    let r = refusals
        .iter()
        .find(|r| r["destination"] == refused.as_str())
        .unwrap_or_else(|| panic!("{refused} not in {status}"));
    assert!(r["at_ms"].as_u64().unwrap() > 0, "{r}");
    assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    for key in [
        "names",
        "refused_names",
        "bytes_out",
        "bytes_in",
        "refused_packets",
    ] {
        assert!(status[key].is_u64(), "{key} in {status}");
    }
    // By id too.
    let by_id = ok(&d, "GET", &format!("/v1/sandboxes/{id}/network"), None).await;
    assert!(by_id["refused_connections"].as_u64().unwrap() >= 1);

    // The published port reaches the guest's server.
    serve_in(&d, "netbox", 8000).await;
    assert_eq!(get_published(ports[0].1).await, 200);

    // Published on the running sandbox: a second port, listed in the view.
    let (status, v) = call(
        &d,
        "POST",
        "/v1/sandboxes/netbox/ports",
        Some(json!({"guest_port": 8001})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let both = published(&v);
    assert_eq!(both.len(), 2, "{v}");
    let second = both.iter().find(|p| p.0 == 8001).expect("8001 published");
    assert!(second.1 != 0 && second.1 != ports[0].1, "{v}");
    assert_eq!(
        published(&ok(&d, "GET", "/v1/sandboxes/netbox", None).await).len(),
        2
    );
    serve_in(&d, "netbox", 8001).await;
    assert_eq!(get_published(second.1).await, 200);
    // Not a port: refused.
    let (status, e) = call(
        &d,
        "POST",
        "/v1/sandboxes/netbox/ports",
        Some(json!({"guest_port": 0})),
    )
    .await;
    assert_eq!(status, 400, "{e}");

    // Delete: the namespace, the helper and the host ports go with it.
    let (status, _) = call(&d, "DELETE", "/v1/sandboxes/netbox", None).await;
    assert_eq!(status, 204);
    assert_network_gone(&id, &[ports[0].1, second.1]).await;
    let (status, _) = call(&d, "GET", &format!("/v1/sandboxes/{id}/network"), None).await;
    assert_eq!(status, 404);

    drop(d);
    env.assert_clean();
    drop(testhost);
    assert_back_to(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxs_network_outlives_a_restart_of_the_daemon() {
    if !can_run() {
        return;
    }
    let _turn = turn();
    let before = host_state();
    let env = Env::new();
    let testhost = test_host(3);
    let mut d = Daemon::start(&env, &["--pool-size", "0", "--on-shutdown", "keep"]);
    let sb = ok(
        &d,
        "POST",
        "/v1/sandboxes",
        Some(json!({"name": "lasting", "network": "allow",
                    "allow_cidrs": [testhost.cidr], "publish": ["8000"]})),
    )
    .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let port = published(&sb)[0].1;
    serve_in(&d, "lasting", 8000).await;
    assert_eq!(get_published(port).await, 200);

    // No daemon: the guest's server is still reachable on its host port
    // (the helper is the sandbox's, not the daemon's).
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    drop(d);
    assert!(has_netns(&id));
    assert_eq!(
        helpers_of(&id).len(),
        1,
        "the helper did not outlive the daemon"
    );
    assert_eq!(get_published(port).await, 200, "with no daemon running");

    // The next daemon finds it with its network, which still works.
    let mut d = Daemon::start(&env, &["--pool-size", "0", "--on-shutdown", "destroy"]);
    let got = ok(&d, "GET", "/v1/sandboxes/lasting", None).await;
    assert_eq!(got["state"], "ready", "{got}");
    assert_eq!(got["network"], sb["network"]);
    assert_eq!(
        py(&d, "lasting", &connect(&testhost.addr.to_string(), 8080)).await,
        "test host"
    );
    assert_eq!(get_published(port).await, 200);
    let status = ok(&d, "GET", "/v1/sandboxes/lasting/network", None).await;
    assert!(status["connections"].as_u64().unwrap() >= 1, "{status}");
    // The new daemon reaches the helper the old one started.
    let v = ok(
        &d,
        "POST",
        "/v1/sandboxes/lasting/ports",
        Some(json!({"guest_port": 8001})),
    )
    .await;
    let ports = published(&v);
    assert_eq!(ports.len(), 2, "{v}");
    serve_in(&d, "lasting", 8001).await;
    let second = ports.iter().find(|p| p.0 == 8001).unwrap().1;
    assert_eq!(get_published(second).await, 200);

    let (status, _) = call(&d, "DELETE", "/v1/sandboxes/lasting", None).await;
    assert_eq!(status, 204);
    assert_network_gone(&id, &[port, second]).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    drop(d);
    env.assert_clean();
    drop(testhost);
    assert_back_to(&before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_creates_a_networked_sandbox_publishes_and_reports() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    if !can_run() {
        return;
    }
    let _turn = turn();
    let before = host_state();
    let env = Env::new();
    let testhost = test_host(4);
    let d = Daemon::start(&env, &["--pool-size", "0"]);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.base)),
    );
    let client = tokio::time::timeout(REQUEST_TIMEOUT, ().serve(transport))
        .await
        .expect("MCP handshake in time")
        .expect("MCP over HTTP handshake");
    let tool = |name: &'static str, arguments: Value| {
        let client = &client;
        async move {
            tokio::time::timeout(REQUEST_TIMEOUT, super::call(client, name, arguments))
                .await
                .unwrap_or_else(|_| panic!("{name} took longer than {REQUEST_TIMEOUT:?}"))
        }
    };

    let sb = structured(
        &tool(
            "create_sandbox",
            json!({"network": "public", "publish": ["8000"]}),
        )
        .await,
    );
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["network"]["mode"], "public", "{sb}");
    let ports = published(&sb);
    assert_eq!(ports.len(), 1, "{sb}");
    assert_eq!(ports[0].0, 8000);
    assert_ne!(ports[0].1, 0, "{sb}");
    let r = structured(
        &tool(
            "execute_command",
            json!({"sandbox": id, "command": serve_script(8000), "timeout_secs": 60}),
        )
        .await,
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(get_published(ports[0].1).await, 200);

    // A private network's test host is not the internet: refused, and
    // reported.
    let th = testhost.addr.to_string();
    let r = structured(
        &tool(
            "execute_code",
            json!({"sandbox": id, "language": "python", "code": connect(&th, 8080)}),
        )
        .await,
    );
    assert_eq!(
        r["stdout"].as_str().unwrap().trim(),
        "ConnectionResetError",
        "{r}"
    );
    let status = structured(&tool("network_status", json!({"sandbox": id})).await);
    assert!(
        status["refused_connections"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["recent_refusals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["destination"] == format!("{th}:8080").as_str()),
        "{status}"
    );

    let v = structured(&tool("publish_port", json!({"sandbox": id, "guest_port": 8001})).await);
    let both = published(&v);
    assert_eq!(both.len(), 2, "{v}");
    assert!(both.iter().any(|p| p.0 == 8001 && p.1 != 0), "{v}");
    // A bad port is a tool error the model can read.
    let e = tool("publish_port", json!({"sandbox": id, "guest_port": 0})).await;
    assert_eq!(e.is_error, Some(true));
    assert!(text_of(&e).contains("guest_port"), "{}", text_of(&e));

    structured(&tool("destroy_sandbox", json!({"sandbox": id})).await);
    let host_ports: Vec<u16> = both.iter().map(|p| p.1).collect();
    assert_network_gone(&id, &host_ports).await;
    client.cancel().await.unwrap();
    drop(d);
    env.assert_clean();
    drop(testhost);
    assert_back_to(&before);
}
