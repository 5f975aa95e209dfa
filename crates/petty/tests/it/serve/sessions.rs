//! Sandboxes belong to whoever made them, and nothing lives forever by
//! accident: an MCP session's sandboxes go with the session (stdin closed,
//! `petty mcp` killed, an HTTP session deleted or idle), unless kept; REST
//! sandboxes get finite default lifetimes that a route extends. Real
//! `petty mcp` / `petty serve` processes, real VMs, the rmcp client and
//! reqwest.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::ServiceExt as _;
use serde_json::{json, Value};

use super::{call, structured, Daemon};
use crate::{processes_mentioning, Env};

/// Waits (at most `secs`) for `done`; false if it never came.
async fn within(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// True while a VMM process runs for sandbox `id` (its run directory is
/// named after the id).
fn vmm_runs(env: &Env, id: &str) -> bool {
    let dir = env.root.path().join(id);
    !processes_mentioning(&dir.display().to_string()).is_empty()
}

/// `petty mcp` on `env`, its stdin and stdout piped to the returned
/// client (so dropping the client closes its stdin, as a client that dies
/// does), and the child.
async fn stdio_session(
    env: &Env,
) -> (
    rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tokio::process::Child,
) {
    crate::assets();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_petty"))
        .arg("mcp")
        .env("PETTY_RUN_DIR", env.root.path())
        .env("PETTY_DATA_DIR", env.data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client = ().serve(transport).await.expect("MCP handshake");
    (client, child)
}

/// True once sandbox `id` is no longer in the daemon's list (looked at for
/// at most `secs`).
async fn unlisted_within(d: &Daemon, id: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let all = d.ok("GET", "/v1/sandboxes", None).await;
        if !all.as_array().unwrap().iter().any(|v| v["id"] == id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Stops the daemon as SIGTERM does (its standby VMM goes with it).
fn stop(mut d: Daemon) {
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0, "{}", d.log());
}

/// The `petty ls` row of `name`.
fn ls_row(env: &Env, name: &str) -> Option<String> {
    env.ok(&["ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_sessions_sandboxes_go_when_its_client_does_unless_kept() {
    let env = Env::new();
    let (client, mut child) = stdio_session(&env).await;
    let bound = structured(&call(&client, "create_sandbox", json!({"name": "bound"})).await);
    let kept = structured(
        &call(
            &client,
            "create_sandbox",
            json!({"name": "kept", "keep": true}),
        )
        .await,
    );
    assert_eq!(
        (&bound["owner"], &bound["session_bound"]),
        (&json!("mcp-stdio"), &json!(true))
    );
    assert_eq!(kept["session_bound"], json!(false));
    // Finite lifetimes out of the box, shown by `petty ls` with the owner.
    assert!(bound["expires_at_ms"].as_i64().is_some(), "{bound}");
    let row = ls_row(&env, "bound").expect("listed");
    assert!(row.contains("mcp-stdio(session)"), "{row}");
    let (bound_id, kept_id) = (
        bound["id"].as_str().unwrap().to_string(),
        kept["id"].as_str().unwrap().to_string(),
    );
    assert!(vmm_runs(&env, &bound_id) && vmm_runs(&env, &kept_id));

    // The client dies: `petty mcp` reads end-of-file on its stdin.
    drop(client);
    assert!(
        within(10, || !vmm_runs(&env, &bound_id)).await,
        "the session's sandbox outlived its client"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("petty mcp exits after its client")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(ls_row(&env, "bound").is_none());
    assert!(vmm_runs(&env, &kept_id), "the kept sandbox went too");
    assert!(ls_row(&env, "kept").unwrap().contains("ready"));
    env.ok(&["rm", "-f", "kept"]);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_petty_mcp_s_sandboxes_are_removed_by_the_next_petty() {
    let env = Env::new();
    let (client, mut child) = stdio_session(&env).await;
    let bound = structured(&call(&client, "create_sandbox", json!({"name": "orphan"})).await);
    let id = bound["id"].as_str().unwrap().to_string();
    // SIGKILL: nothing of petty mcp runs; its VM is detached and lives on.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop(client);
    assert!(vmm_runs(&env, &id), "its VM outlives the SIGKILL");
    // Any later petty process's recovery removes it, with the reason.
    assert!(ls_row(&env, "orphan").is_none(), "still listed");
    assert!(
        within(10, || !vmm_runs(&env, &id)).await,
        "the orphan's VM still runs"
    );
    let m = env.manager(env.config()).await;
    let history = m.history("orphan").await.unwrap();
    assert!(
        history[0].reason.contains("MCP session"),
        "{:?}",
        history[0].reason
    );
    drop(m);
    env.assert_clean();
}

/// One MCP session over HTTP driven by hand (reqwest), so that it can be
/// left idle: initialize, then tool calls carrying its session id.
struct RawSession<'a> {
    d: &'a Daemon,
    id: String,
    next: u64,
}

impl<'a> RawSession<'a> {
    async fn open(d: &'a Daemon) -> Self {
        let resp = d
            .req(reqwest::Method::POST, "/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-03-26", "capabilities": {},
                    "clientInfo": {"name": "sessions-test", "version": "0"}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let id = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        drop(resp);
        let s = Self { d, id, next: 2 };
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        s
    }

    async fn post(&self, msg: Value) -> String {
        let resp = self
            .d
            .req(reqwest::Method::POST, "/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .body(msg.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.text().await.unwrap()
    }

    /// Calls `tool`; the result's structured content.
    async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.next += 1;
        let text = self
            .post(
                json!({"jsonrpc": "2.0", "id": self.next, "method": "tools/call",
                "params": {"name": tool, "arguments": arguments}}),
            )
            .await;
        // An event stream: the answer is the JSON of a `data:` line.
        let answer: Value = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .find(|v: &Value| v.get("id").is_some())
            .unwrap_or_else(|| panic!("no answer in {text:?}"));
        answer["result"]["structuredContent"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sessions_take_their_sandboxes_when_deleted_or_idle() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    let env = Env::new();
    let d = Daemon::start_with(
        &env,
        &["--pool-size", "0"],
        &[("PETTY_MCP_SESSION_IDLE_SECS", "3")],
    );

    // A session that ends with a DELETE (the rmcp client's cancel).
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.base)),
    );
    let client = ().serve(transport).await.expect("MCP over HTTP");
    let sb = structured(&call(&client, "create_sandbox", json!({})).await);
    let deleted = sb["id"].as_str().unwrap().to_string();
    assert!(
        sb["owner"].as_str().unwrap().starts_with("mcp-http:"),
        "{sb}"
    );
    assert_eq!(sb["session_bound"], json!(true));
    client.cancel().await.unwrap();
    assert!(
        unlisted_within(&d, &deleted, 10).await,
        "a deleted session's sandbox is still listed"
    );
    assert!(!vmm_runs(&env, &deleted));

    // A session left idle past mcp.session_idle_secs: its own sandbox goes,
    // the one it kept stays.
    let mut s = RawSession::open(&d).await;
    let idle = s.call("create_sandbox", json!({})).await;
    let kept = s.call("create_sandbox", json!({"keep": true})).await;
    let (idle, kept) = (
        idle["id"].as_str().unwrap().to_string(),
        kept["id"].as_str().unwrap().to_string(),
    );
    assert!(
        unlisted_within(&d, &idle, 20).await,
        "an idle session's sandbox is still listed"
    );
    let all = d.ok("GET", "/v1/sandboxes", None).await;
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["id"] == kept.as_str()));
    d.ok("DELETE", &format!("/v1/sandboxes/{kept}"), None).await;
    stop(d);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_sandboxes_have_finite_lifetimes_that_a_route_sets() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--pool-size", "0"]);
    let sb = d
        .ok("POST", "/v1/sandboxes", Some(json!({"name": "r1"})))
        .await;
    assert_eq!(sb["owner"], json!("rest"));
    assert_eq!(sb["session_bound"], json!(false));
    // The defaults: an hour's TTL, five minutes idle; the idle one is nearer.
    assert_eq!(
        (&sb["ttl_secs"], &sb["idle_timeout_secs"]),
        (&json!(3600), &json!(300))
    );
    let created = sb["created_at_ms"].as_i64().unwrap();
    let expires = sb["expires_at_ms"].as_i64().unwrap();
    assert!((expires - created - 300_000).abs() < 5_000, "{sb}");
    // 0 asks for no limit.
    let forever = d
        .ok(
            "POST",
            "/v1/sandboxes",
            Some(json!({"name": "r2", "ttl_secs": 0, "idle_timeout_secs": 0})),
        )
        .await;
    assert_eq!(forever["expires_at_ms"], Value::Null);

    // The lifetime route: r1 now ends in 3 s, and the reaper ends it.
    let (status, v) = d
        .call("POST", "/v1/sandboxes/r1/lifetime", Some(json!({})))
        .await;
    assert_eq!(status, 400, "{v}");
    let set = d
        .ok(
            "POST",
            "/v1/sandboxes/r1/lifetime",
            Some(json!({"ttl_secs": 3})),
        )
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ends = set["expires_at_ms"].as_i64().unwrap();
    assert!((ends - now - 3_000).abs() < 2_000, "{set}");
    let mut gone = false;
    for _ in 0..150 {
        let (status, _) = d.call("GET", "/v1/sandboxes/r1", None).await;
        if status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "r1 outlived its TTL");
    let m = env.manager(env.config()).await;
    assert!(m.history("r1").await.unwrap()[0]
        .reason
        .contains("ttl expired"));
    drop(m);
    // And extended: r2 gets an idle timeout and keeps running.
    let set = d
        .ok(
            "POST",
            "/v1/sandboxes/r2/lifetime",
            Some(json!({"idle_timeout_secs": 600})),
        )
        .await;
    assert_eq!(set["idle_timeout_secs"], json!(600));
    d.ok("DELETE", "/v1/sandboxes/r2", None).await;
    stop(d);
    env.assert_clean();
}
