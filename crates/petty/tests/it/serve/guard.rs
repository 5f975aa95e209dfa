//! The request guard end to end: the real `petty serve` on 127.0.0.1:0,
//! sent what a web page could forge (text/plain and form bodies, a foreign
//! Host as DNS rebinding gives, a foreign Origin) by a real HTTP client,
//! and the same requests done right; and every curl line of the README's
//! daemon section, run with the system `curl`.

use std::process::Command;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

use super::{Daemon, KEY};
use crate::Env;

const EVIL: &str = "https://evil.example";
const APP: &str = "https://app.example";

/// An MCP `initialize` request, as a streamable HTTP client POSTs it.
fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": {"name": "guard-test", "version": "0"}}})
    .to_string()
}

/// Status, headers and JSON body (Null when empty or not JSON).
async fn send(r: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Asserts a refusal: its status, its kind, and that its message says what to do.
async fn refused(r: reqwest::RequestBuilder, status: u16, kind: &str, hint: &str) -> HeaderMap {
    let (got, headers, body) = send(r).await;
    assert_eq!((got, body["kind"].as_str()), (status, Some(kind)), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(hint), "{message:?} should say {hint:?}");
    headers
}

fn no_cors(h: &HeaderMap) {
    let cors: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(
        cors.is_empty(),
        "CORS headers without configured origins: {cors:?}"
    );
}

impl Daemon {
    fn host_port(&self) -> &str {
        self.base.strip_prefix("http://").unwrap()
    }

    async fn names(&self) -> Vec<String> {
        self.ok("GET", "/v1/sandboxes", None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_requests_are_refused_and_the_same_done_right_succeed() {
    let env = Env::new();
    let d = Daemon::start(&env, &["--pool-size", "0"]);
    let post = |path: &str| d.req(Method::POST, path);
    let json = "application/json";

    // What a page can send without a preflight: text/plain and form bodies,
    // and a body-less POST. None creates anything.
    let hint = "send `Content-Type: application/json`";
    refused(
        post("/v1/sandboxes")
            .header("content-type", "text/plain")
            .body(r#"{"name": "forged"}"#),
        415,
        "unsupported_media_type",
        hint,
    )
    .await;
    refused(
        post("/v1/sandboxes")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=forged"),
        415,
        "unsupported_media_type",
        hint,
    )
    .await;
    refused(post("/v1/sandboxes"), 415, "unsupported_media_type", hint).await;
    // A browser adds its Origin, refused first.
    refused(
        post("/v1/sandboxes")
            .header("content-type", "text/plain")
            .header("origin", EVIL)
            .body(r#"{"name": "forged"}"#),
        403,
        "forbidden_origin",
        "server.allowed_origins",
    )
    .await;
    // DNS rebinding: the page's own name in Host, on every kind of route.
    for path in [
        "/v1/sandboxes",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/nothing",
    ] {
        refused(
            d.req(Method::GET, path).header("host", "evil.example:8080"),
            421,
            "misdirected_host",
            "add the host to server.allowed_hosts",
        )
        .await;
    }
    refused(
        post("/v1/sandboxes")
            .header("host", "evil.example")
            .json(&json!({"name": "forged"})),
        421,
        "misdirected_host",
        "server.allowed_hosts",
    )
    .await;
    // /mcp alike: foreign Host, foreign Origin, a text/plain body.
    let mcp = || {
        post("/mcp")
            .header("accept", "application/json, text/event-stream")
            .body(initialize())
    };
    refused(
        mcp()
            .header("content-type", json)
            .header("host", "evil.example"),
        421,
        "misdirected_host",
        "server.allowed_hosts",
    )
    .await;
    let h = refused(
        mcp().header("content-type", json).header("origin", EVIL),
        403,
        "forbidden_origin",
        "--allowed-origin",
    )
    .await;
    no_cors(&h);
    refused(
        mcp().header("content-type", "text/plain"),
        415,
        "unsupported_media_type",
        hint,
    )
    .await;
    refused(
        d.req(Method::GET, "/mcp").header("origin", EVIL),
        403,
        "forbidden_origin",
        "server.allowed_origins",
    )
    .await;
    // Any Origin on any route, `null` included, and its preflight: no CORS here.
    for origin in [EVIL, "null", "http://localhost:8080"] {
        let h = refused(
            d.req(Method::GET, "/v1/sandboxes").header("origin", origin),
            403,
            "forbidden_origin",
            "server.allowed_origins",
        )
        .await;
        no_cors(&h);
    }
    let h = refused(
        d.req(Method::OPTIONS, "/v1/sandboxes")
            .header("origin", EVIL)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
        403,
        "forbidden_origin",
        "server.allowed_origins",
    )
    .await;
    no_cors(&h);
    assert!(
        d.names().await.is_empty(),
        "a forged request created a sandbox"
    );

    // Loopback names are this server.
    for host in ["localhost", "127.0.0.2:1", "[::1]:8080"] {
        let (status, _, _) = send(d.req(Method::GET, "/healthz").header("host", host)).await;
        assert_eq!(status, 200, "Host: {host}");
    }

    // Done right: created, no CORS headers.
    let (status, h, sb) = send(post("/v1/sandboxes").json(&json!({"name": "target"}))).await;
    assert_eq!(status, 201, "{sb}");
    no_cors(&h);
    assert!(h.get("vary").is_none());

    // Forged commands against a real sandbox: none runs.
    let touch = json!({"command": "touch /root/pwned"}).to_string();
    for (path, body) in [
        ("/v1/sandboxes/target/exec", touch.clone()),
        ("/v1/sandboxes/target/exec/stream", touch.clone()),
        (
            "/v1/sandboxes/target/code",
            json!({"language": "sh", "code": "touch /root/pwned"}).to_string(),
        ),
    ] {
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            refused(
                post(path).header("content-type", ct).body(body.clone()),
                415,
                "unsupported_media_type",
                hint,
            )
            .await;
        }
        refused(
            post(path)
                .header("content-type", json)
                .header("origin", EVIL)
                .body(body.clone()),
            403,
            "forbidden_origin",
            "server.allowed_origins",
        )
        .await;
        refused(
            post(path)
                .header("content-type", json)
                .header("host", "evil.example")
                .body(body.clone()),
            421,
            "misdirected_host",
            "server.allowed_hosts",
        )
        .await;
    }
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/target/exec",
            Some(json!({"command": "test -e /root/pwned && echo ran || echo refused"})),
        )
        .await;
    assert_eq!(r["stdout"], "refused\n");

    // Uploads take application/octet-stream; everything else a JSON type, body or not.
    let upload = || {
        d.req(
            Method::PUT,
            "/v1/sandboxes/target/files/content?path=/root/up.bin",
        )
        .body(vec![1u8, 2, 3])
    };
    let bytes_hint = "send `Content-Type: application/octet-stream`";
    refused(upload(), 415, "unsupported_media_type", bytes_hint).await;
    refused(
        upload().header("content-type", "text/plain"),
        415,
        "unsupported_media_type",
        bytes_hint,
    )
    .await;
    refused(
        upload().header("content-type", json),
        415,
        "unsupported_media_type",
        bytes_hint,
    )
    .await;
    let (status, _, _) = send(upload().header("content-type", "application/octet-stream")).await;
    assert_eq!(status, 204);
    refused(
        post("/v1/sandboxes/target/directories?path=/root/d"),
        415,
        "unsupported_media_type",
        hint,
    )
    .await;
    let (status, _, _) = send(
        post("/v1/sandboxes/target/directories?path=/root/d")
            .header("content-type", "application/json; charset=utf-8"),
    )
    .await;
    assert_eq!(status, 201);
    // MCP's handshake, done right.
    let resp = mcp().header("content-type", json).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().contains_key("mcp-session-id"));
    drop(resp);
    assert_eq!(d.names().await, ["target"]);
    d.ok("DELETE", "/v1/sandboxes/target", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_origins_and_hosts_are_let_in_with_cors() {
    let env = Env::new();
    let d = Daemon::start_with(
        &env,
        &[
            "--api-key",
            KEY,
            "--pool-size",
            "0",
            "--allowed-origin",
            APP,
        ],
        &[("PETTY_SERVER_ALLOWED_HOSTS", "petty.internal")],
    );
    let header_has = |h: &HeaderMap, name: &str, want: &str| {
        let v = h
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {h:?}"))
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(v.contains(want), "{name}: {v:?} lacks {want:?}");
    };

    // Preflights from the allowed origin are answered, before the key check.
    for path in ["/v1/sandboxes", "/mcp"] {
        let (status, h, _) = send(
            d.http
                .request(Method::OPTIONS, format!("{}{path}", d.base))
                .header("origin", APP)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
        )
        .await;
        assert_eq!(status, 204, "{path}");
        assert_eq!(h["access-control-allow-origin"], APP);
        for m in ["get", "post", "put", "delete"] {
            header_has(&h, "access-control-allow-methods", m);
        }
        for name in [
            "authorization",
            "content-type",
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
        ] {
            header_has(&h, "access-control-allow-headers", name);
        }
        header_has(&h, "vary", "origin");
    }
    // Its requests get through, with CORS headers on answers and errors alike.
    let (status, h, list) = send(d.req(Method::GET, "/v1/sandboxes").header("origin", APP)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(h["access-control-allow-origin"], APP);
    header_has(&h, "access-control-expose-headers", "mcp-session-id");
    header_has(&h, "vary", "origin");
    let h = refused(
        d.http
            .get(format!("{}/v1/sandboxes", d.base))
            .header("origin", APP),
        401,
        "unauthorized",
        "Authorization: Bearer",
    )
    .await;
    assert_eq!(h["access-control-allow-origin"], APP);
    let h = refused(
        d.req(Method::POST, "/v1/sandboxes")
            .header("origin", APP)
            .header("content-type", "text/plain")
            .body("{}"),
        415,
        "unsupported_media_type",
        "application/json",
    )
    .await;
    assert_eq!(h["access-control-allow-origin"], APP);
    let resp = d
        .req(Method::POST, "/mcp")
        .header("origin", APP)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    assert!(resp.headers().contains_key("mcp-session-id"));
    drop(resp);
    // Without an Origin: no CORS grant, but the answer varies by Origin.
    let (status, h, _) = send(d.req(Method::GET, "/v1/sandboxes")).await;
    assert_eq!(status, 200);
    assert!(h.get("access-control-allow-origin").is_none());
    header_has(&h, "vary", "origin");

    // Other origins are still refused, even with the key: another scheme,
    // another port, a subdomain.
    for origin in [
        "http://app.example",
        "https://app.example:8443",
        "https://sub.app.example",
        EVIL,
    ] {
        let h = refused(
            d.req(Method::GET, "/v1/sandboxes").header("origin", origin),
            403,
            "forbidden_origin",
            "server.allowed_origins",
        )
        .await;
        assert!(h.get("access-control-allow-origin").is_none());
    }

    // The configured host passes (any case, any port); others do not, key or not.
    for host in ["petty.internal", "PETTY.internal:9999"] {
        let (status, _, _) = send(d.req(Method::GET, "/v1/sandboxes").header("host", host)).await;
        assert_eq!(status, 200, "Host: {host}");
    }
    refused(
        d.req(Method::GET, "/v1/sandboxes")
            .header("host", "sub.petty.internal"),
        421,
        "misdirected_host",
        "server.allowed_hosts",
    )
    .await;
    // Forged requests are refused before the key check: 415 and 421, not 401.
    refused(
        d.http
            .post(format!("{}/v1/sandboxes", d.base))
            .header("content-type", "text/plain")
            .body("{}"),
        415,
        "unsupported_media_type",
        "application/json",
    )
    .await;
    refused(
        d.http
            .get(format!("{}/v1/sandboxes", d.base))
            .header("host", "evil.example"),
        421,
        "misdirected_host",
        "server.allowed_hosts",
    )
    .await;

    // A bad entry stops the daemon at start, naming the key.
    let out = env.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--allowed-origin",
        "app.example",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.allowed_origins") && err.contains("no scheme"),
        "{err}"
    );
}

/// The curl lines of README.md's daemon section, read at test time.
fn readme_curl_lines() -> Vec<String> {
    let lines: Vec<String> = crate::readme_section("### The daemon: REST, MCP and metrics")
        .lines()
        .filter(|l| l.starts_with("curl "))
        .map(str::to_string)
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("openapi.json")),
        "the daemon section's curl lines were not all read: {lines:?}"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_curl_example_succeeds() {
    let lines = readme_curl_lines();
    let env = Env::new();
    // The template build needs no network, and with the memory creates
    // get its sandboxes restore from the same base template snapshot.
    let d = Daemon::start_with(
        &env,
        &["--pool-size", "0"],
        &[
            ("PETTY_TEMPLATES_BUILD_NETWORK", "false"),
            ("PETTY_TEMPLATES_BUILD_MEMORY_MB", "256"),
        ],
    );
    let port = d.host_port().rsplit(':').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // The files the lines upload (`@FILE`, `-T FILE`).
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            let file = match word.strip_prefix('@') {
                Some(f) => Some(f),
                None if *word == "-T" => words.get(i + 1).copied(),
                None => None,
            };
            if let Some(file) = file {
                std::fs::write(dir.path().join(file.trim_matches('\'')), &data).unwrap();
            }
        }
    }
    for line in &lines {
        // As written, but at this daemon's port; the wrapper only reports:
        // a non-zero exit for a 4xx/5xx, and the status after the body.
        let cmd = line.replace("localhost:8080", &format!("localhost:{port}"));
        let script = format!(
            "curl() {{ command curl --fail-with-body -sS -w '\\n%{{http_code}}\\n' \"$@\"; }}\n{cmd}\n"
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .expect("run sh (and curl: scripts/install-deps installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = stdout.lines().last().unwrap_or_default().trim().to_string();
        assert!(
            out.status.success() && code.starts_with('2'),
            "README line failed (HTTP {code}): {line}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A download the README makes got back what its upload sent.
    if dir.path().join("copy.bin").exists() {
        assert_eq!(std::fs::read(dir.path().join("copy.bin")).unwrap(), data);
    }
}
