//! Background processes and terminals through Petty's own API: the real
//! `petty serve` with real VMs, driven by reqwest (REST) and by the rmcp
//! client over `petty mcp` (MCP). A process outlives the request and the
//! client that started it, keeps its output, takes input, resizes and
//! signals; a terminal is a real one in the guest.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{call, structured, Daemon};
use crate::Env;

/// Reads `pid`'s output through `/output` until `want` is in it (at most
/// 60 s, each read waiting up to 2 s); everything read.
async fn output_until(d: &Daemon, sb: &str, pid: u64, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut all = String::new();
    let mut offset = 0;
    while Instant::now() < deadline {
        let v = d
            .ok(
                "GET",
                &format!("/v1/sandboxes/{sb}/processes/{pid}/output?offset={offset}&wait_secs=2"),
                None,
            )
            .await;
        all.push_str(v["output"].as_str().unwrap());
        offset = v["next_offset"].as_u64().unwrap();
        if all.contains(want) {
            return all;
        }
        if v["running"] == json!(false) {
            break;
        }
    }
    panic!("{want:?} never came from process {pid}; got {all:?}");
}

/// Waits (at most 60 s) for `pid` to end; its view.
async fn ended(d: &Daemon, sb: &str, pid: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let v = d
            .ok("GET", &format!("/v1/sandboxes/{sb}/processes/{pid}"), None)
            .await;
        if v["running"] == json!(false) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("process {pid} did not end within 60 s");
}

async fn start(d: &Daemon, sb: &str, body: Value) -> u64 {
    let (status, v) = d
        .call("POST", &format!("/v1/sandboxes/{sb}/processes"), Some(body))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["running"], json!(true), "{v}");
    v["pid"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_background_processes_and_terminals_with_a_real_vm() {
    let env = Env::new();
    crate::assets();
    let mut d = Daemon::start(&env, &["--pool-size", "0"]);
    let sb = d
        .ok("POST", "/v1/sandboxes", Some(json!({"name": "bg"})))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A process followed as NDJSON: stdout, stderr and its exit, in order.
    let pid = start(
        &d,
        &sb,
        json!({"command": "for i in 1 2 3; do echo line$i; sleep 0.1; done; echo oops >&2; exit 7", "tag": "loop"}),
    )
    .await;
    let text = d
        .req(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{sb}/processes/{pid}/stream"),
        )
        .timeout(Duration::from_secs(60))
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
    let stdout: String = lines
        .iter()
        .filter(|l| l["type"] == "stdout")
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "line1\nline2\nline3\n", "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "stderr" && l["data"] == "oops\n"),
        "{text}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &json!({"type": "exit", "exit_code": 7, "timed_out": false})
    );
    // Ended, it is still there to look at, and listed with its tag.
    let v = ended(&d, &sb, pid).await;
    assert_eq!(
        (v["exit_code"].clone(), v["tag"].clone()),
        (json!(7), json!("loop")),
        "{v}"
    );
    let all = d
        .ok("GET", &format!("/v1/sandboxes/{sb}/processes"), None)
        .await;
    assert!(
        all.as_array().unwrap().iter().any(|p| p["pid"] == pid),
        "{all}"
    );
    // Its whole output reads again from offset 0; past the end, nothing.
    let v = d
        .ok(
            "GET",
            &format!("/v1/sandboxes/{sb}/processes/{pid}/output"),
            None,
        )
        .await;
    assert_eq!(v["output"], "line1\nline2\nline3\noops\n", "{v}");
    let end = v["next_offset"].as_u64().unwrap();
    let v = d
        .ok(
            "GET",
            &format!("/v1/sandboxes/{sb}/processes/{pid}/output?offset={end}"),
            None,
        )
        .await;
    assert_eq!(
        (v["output"].clone(), v["running"].clone()),
        (json!(""), json!(false))
    );

    // A process outlives the client that started and followed it.
    let pid = start(&d, &sb, json!({"command": "sleep 1; echo late"})).await;
    let resp = d
        .req(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{sb}/processes/{pid}/stream"),
        )
        .send()
        .await
        .unwrap();
    drop(resp);
    assert!(output_until(&d, &sb, pid, "late").await.contains("late"));
    assert_eq!(ended(&d, &sb, pid).await["exit_code"], 0);

    // Input on pipes: what is sent, then end of input.
    let pid = start(&d, &sb, json!({"command": "tr a-z A-Z", "stdin": true})).await;
    d.ok(
        "POST",
        &format!("/v1/sandboxes/{sb}/processes/{pid}/input"),
        Some(json!({"data": "hello\n", "close": true})),
    )
    .await;
    output_until(&d, &sb, pid, "HELLO").await;
    assert_eq!(ended(&d, &sb, pid).await["exit_code"], 0);
    // A process without stdin refuses input; one without a terminal, a resize.
    let pid = start(&d, &sb, json!({"command": "sleep 300"})).await;
    for (route, body) in [
        ("input", json!({"data": "x"})),
        ("resize", json!({"rows": 10, "cols": 10})),
    ] {
        let (status, v) = d
            .call(
                "POST",
                &format!("/v1/sandboxes/{sb}/processes/{pid}/{route}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 409, "{route}: {v}");
    }
    // Signals by name reach its group; an unknown one is refused.
    let (status, v) = d
        .call(
            "POST",
            &format!("/v1/sandboxes/{sb}/processes/{pid}/signal"),
            Some(json!({"signal": "SIGBOGUS"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    d.ok(
        "POST",
        &format!("/v1/sandboxes/{sb}/processes/{pid}/signal"),
        Some(json!({"signal": "TERM"})),
    )
    .await;
    let v = ended(&d, &sb, pid).await;
    assert_eq!(
        (v["signal"].clone(), v["exit_code"].clone()),
        (json!(15), json!(143)),
        "{v}"
    );
    // DELETE kills.
    let pid = start(&d, &sb, json!({"argv": ["sleep", "300"]})).await;
    d.ok(
        "DELETE",
        &format!("/v1/sandboxes/{sb}/processes/{pid}"),
        None,
    )
    .await;
    assert_eq!(ended(&d, &sb, pid).await["signal"], 9);

    // A terminal: a real one in the guest, sized, resized, typed into.
    let pid = start(
        &d,
        &sb,
        json!({"command": "bash --norc -i", "pty": {"rows": 30, "cols": 100}}),
    )
    .await;
    let input = |data: &str| {
        let (d, path) = (&d, format!("/v1/sandboxes/{sb}/processes/{pid}/input"));
        let body = json!({ "data": data });
        async move { d.ok("POST", &path, Some(body)).await }
    };
    input("stty size; tty\n").await;
    let out = output_until(&d, &sb, pid, "30 100").await;
    let out = if out.contains("/dev/pts/") {
        out
    } else {
        output_until(&d, &sb, pid, "/dev/pts/").await
    };
    assert!(out.contains("/dev/pts/"), "{out:?}");
    d.ok(
        "POST",
        &format!("/v1/sandboxes/{sb}/processes/{pid}/resize"),
        Some(json!({"rows": 40, "cols": 120})),
    )
    .await;
    input("stty size\n").await;
    output_until(&d, &sb, pid, "40 120").await;
    input("exit 3\n").await;
    let v = ended(&d, &sb, pid).await;
    assert_eq!(
        (v["exit_code"].clone(), v["pty"].clone()),
        (json!(3), json!(true)),
        "{v}"
    );

    // Unknown processes and bad requests say what to do.
    let (status, v) = d
        .call("GET", &format!("/v1/sandboxes/{sb}/processes/99999"), None)
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = d
        .call(
            "POST",
            &format!("/v1/sandboxes/{sb}/processes"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("nothing to run"),
        "{v}"
    );

    // Destroying the sandbox takes its processes with it.
    let pid = start(&d, &sb, json!({"command": "sleep 300"})).await;
    d.ok("DELETE", &format!("/v1/sandboxes/{sb}"), None).await;
    let (status, _) = d
        .call("GET", &format!("/v1/sandboxes/{sb}/processes/{pid}"), None)
        .await;
    assert_eq!(status, 404);
    // Its standby VMM goes with the daemon.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(), 0);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_background_processes_and_a_terminal_through_petty_mcp() {
    use rmcp::ServiceExt as _;
    let env = Env::new();
    crate::assets();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_petty"));
    cmd.arg("mcp")
        .env("PETTY_PATHS_RUN_DIR", env.root.path())
        .env("PETTY_PATHS_DATA_DIR", env.data.path())
        .stderr(std::process::Stdio::inherit());
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let client = ().serve(transport).await.expect("MCP handshake with petty mcp");
    let sb = structured(&call(&client, "create_sandbox", json!({"name": "m"})).await)["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Polling by offset: the first read waits for output, the next gives
    // only what is new, the end comes with the exit code.
    let p = structured(
        &call(
            &client,
            "start_process",
            json!({"sandbox": sb, "command": "echo first; sleep 1; echo second; exit 4"}),
        )
        .await,
    );
    let pid = p["pid"].as_u64().unwrap();
    let read = |offset: u64| {
        let (client, sb) = (&client, sb.clone());
        async move {
            structured(
                &call(
                    client,
                    "read_process_output",
                    json!({"sandbox": sb, "pid": pid, "offset": offset, "wait_secs": 5}),
                )
                .await,
            )
        }
    };
    let mut seen = String::new();
    let mut offset = 0;
    let mut last = json!(null);
    for _ in 0..30 {
        last = read(offset).await;
        seen.push_str(last["output"].as_str().unwrap());
        offset = last["next_offset"].as_u64().unwrap();
        if last["running"] == json!(false) {
            break;
        }
    }
    assert_eq!(seen, "first\nsecond\n");
    assert_eq!(last["exit_code"], 4, "{last}");
    let listed = structured(&call(&client, "list_processes", json!({"sandbox": sb})).await);
    assert!(
        listed["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid),
        "{listed}"
    );

    // A Python REPL on a terminal, typed into.
    let p = structured(
        &call(
            &client,
            "start_process",
            json!({"sandbox": sb, "command": "python3 -q", "pty": {"rows": 24, "cols": 80}}),
        )
        .await,
    );
    let repl = p["pid"].as_u64().unwrap();
    structured(
        &call(
            &client,
            "send_process_input",
            json!({"sandbox": sb, "pid": repl, "input": "print(6*7)\n"}),
        )
        .await,
    );
    let mut seen = String::new();
    let mut offset = 0;
    for _ in 0..30 {
        let v = structured(
            &call(
                &client,
                "read_process_output",
                json!({"sandbox": sb, "pid": repl, "offset": offset, "wait_secs": 2}),
            )
            .await,
        );
        seen.push_str(v["output"].as_str().unwrap());
        offset = v["next_offset"].as_u64().unwrap();
        if seen.contains("42") {
            break;
        }
    }
    assert!(seen.contains("42"), "{seen:?}");
    // kill_process stops it; without a pid it says what to give.
    let r = call(&client, "kill_process", json!({"sandbox": sb})).await;
    assert_eq!(r.is_error, Some(true));
    structured(&call(&client, "kill_process", json!({"sandbox": sb, "pid": repl})).await);
    let mut gone = false;
    for _ in 0..50 {
        let v = structured(
            &call(
                &client,
                "read_process_output",
                json!({"sandbox": sb, "pid": repl, "offset": offset, "wait_secs": 1}),
            )
            .await,
        );
        offset = v["next_offset"].as_u64().unwrap();
        if v["running"] == json!(false) {
            assert_eq!(v["exit_code"], 137, "{v}");
            gone = true;
            break;
        }
    }
    assert!(gone, "the REPL outlived kill_process");
    // The session's end (its client gone) takes the sandbox and its
    // processes with it.
    drop(client);
    for _ in 0..300 {
        if crate::leftovers(env.root.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.assert_clean();
}
