//! Templates through the daemon, with real VMs: a build from a Dockerfile's
//! text over `POST /v1/templates` (its NDJSON progress read as it comes), a
//! listing, creates from the template with its defaults applied (from its
//! `templates.warm` pool and not), removal refused while in use, a build
//! given up by its client, and the MCP tools through the real rmcp client.

use std::time::Duration;

use rmcp::ServiceExt as _;
use serde_json::{json, Value};

use super::{call, structured, text_of, Daemon};
use crate::Env;

/// Builds run without a network (none is needed here) and with the
/// memory creates get, so their sandboxes restore from the same base
/// template snapshot as every other create.
const BUILD_VARS: &[(&str, &str)] = &[
    ("PETTY_TEMPLATES_BUILD_NETWORK", "false"),
    ("PETTY_TEMPLATES_BUILD_MEMORY_MB", "256"),
];

/// `POST /v1/templates` with `body`: the status, and the NDJSON lines of a
/// 200 (else the error body as the one line).
async fn build(d: &Daemon, body: Value) -> (u16, Vec<Value>) {
    let resp = d
        .req(reqwest::Method::POST, "/v1/templates")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, vec![resp.json().await.unwrap_or(Value::Null)]);
    }
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = resp.text().await.unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (status, lines)
}

/// The template of a build's `done` line, which must be its last; every
/// step line before it, in order.
fn done(lines: &[Value]) -> (Value, Vec<Value>) {
    let last = lines.last().expect("a build's lines");
    assert_eq!(
        last["type"], "done",
        "the build did not end done: {lines:#?}"
    );
    assert!(!lines.iter().any(|l| l["type"] == "error"), "{lines:#?}");
    let steps: Vec<Value> = lines
        .iter()
        .filter(|l| l["type"] == "step")
        .cloned()
        .collect();
    (last["template"].clone(), steps)
}

/// Polls `GET /v1/pool` (at most a minute) until `template`'s pool is
/// `state` with `ready` warm sandboxes; its view.
async fn pool_of(d: &Daemon, template: &str, state: &str, ready: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let pool = d.ok("GET", "/v1/pool", None).await;
        last = pool["templates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["template"] == template)
            .unwrap_or_else(|| panic!("no pool for {template}: {pool}"))
            .clone();
        if last["state"] == state && last["ready"] == ready {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{template}'s pool never got to {state} with {ready} ready: {last}");
}

/// The scratch directories builds left in the data directory.
fn scratch_left(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.data.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".petty-build-"))
        .collect()
}

async fn exec(d: &Daemon, sandbox: &str, command: &str) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_builds_a_template_creates_from_it_warm_and_removes_it() {
    let env = Env::new();
    // The one host directory builds through the daemon may read.
    let roots = tempfile::tempdir().unwrap();
    let context = roots.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "from the host\n").unwrap();
    let ctx = context.to_str().unwrap();
    let mut vars = BUILD_VARS.to_vec();
    vars.push(("PETTY_TEMPLATES_WARM", "tpl=1"));
    vars.push(("PETTY_TEMPLATES_HOST_PATHS", roots.path().to_str().unwrap()));
    let d = Daemon::start_with(&env, &["--pool-size", "0"], &vars);

    // The warm entry waits for its template.
    let waiting = pool_of(&d, "tpl", "waiting", 0).await;
    assert_eq!(waiting["target_size"], 1, "{waiting}");

    // What the host has outside templates.host_paths is refused, however
    // it is named.
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().to_str().unwrap();
    std::os::unix::fs::symlink(outside.path(), roots.path().join("escape")).unwrap();
    let escape = roots.path().join("escape");
    for body in [
        json!({"name": "tpl", "dockerfile": "FROM base", "context": out}),
        json!({"name": "tpl", "dockerfile": "FROM base", "context": escape}),
        json!({"name": "tpl", "from_image": "oci-archive:/etc/hostname"}),
        json!({"name": "tpl", "from_image": format!("oci:{out}")}),
        json!({"name": "tpl", "dockerfile": "FROM docker-archive:/etc/hostname"}),
    ] {
        let (status, lines) = build(&d, body.clone()).await;
        assert_eq!(status, 403, "{body}: {lines:?}");
        let msg = lines[0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("templates.host_paths"), "{body}: {msg}");
    }

    // Bad input is refused before anything runs, saying what to give.
    for (body, hint) in [
        (json!({"name": "tpl"}), "nothing to build"),
        (json!({"name": "base", "dockerfile": "FROM base"}), "base"),
        (
            json!({"name": "a/b", "dockerfile": "FROM base"}),
            "not allowed",
        ),
        (
            json!({"name": "tpl", "dockerfile": "FROM base", "from_image": "x.example/y:1"}),
            "not both",
        ),
        (
            json!({"name": "tpl", "dockerfile": "FROM base", "context": "relative/dir"}),
            "not absolute",
        ),
        (
            json!({"name": "tpl", "dockerfile": "FROM base", "context": "/nonexistent/petty-ctx"}),
            "cannot be read",
        ),
        (
            json!({"name": "tpl", "from_image": "x.example/y:1", "no_cache": true}),
            "for a Dockerfile build",
        ),
        (json!({"name": "tpl", "dockerfile": "  "}), "empty"),
        (
            json!({"name": "tpl", "dockerfile": "FROM base\nFROBNICATE x"}),
            "dockerfile:",
        ),
        (
            json!({"name": "tpl", "dockerfile": "FROM base", "colour": 1}),
            "unknown field",
        ),
    ] {
        let (status, lines) = build(&d, body.clone()).await;
        assert_eq!(status, 400, "{body}: {lines:?}");
        let msg = lines[0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(hint), "{body}: {msg:?} should say {hint:?}");
    }

    // A build: every step reported in order, then the template.
    let dockerfile = "FROM base\nENV GREETING=hello\nWORKDIR /app\nRUN echo x > /f\nCOPY hello.txt /app/hello.txt\n";
    let (status, lines) = build(
        &d,
        json!({"name": "tpl", "dockerfile": dockerfile, "context": ctx}),
    )
    .await;
    assert_eq!(status, 200, "{lines:?}");
    let (template, steps) = done(&lines);
    let total = steps[0]["total"].as_u64().unwrap() as usize;
    assert_eq!(steps.len(), total, "{steps:#?}");
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["n"], i + 1, "{s}");
        assert_eq!(
            s["cached"], false,
            "a first build takes nothing from the cache: {s}"
        );
    }
    let texts: Vec<&str> = steps.iter().map(|s| s["text"].as_str().unwrap()).collect();
    for want in [
        "ENV GREETING=hello",
        "WORKDIR /app",
        "RUN echo x > /f",
        "COPY hello.txt /app/hello.txt",
    ] {
        assert!(texts.contains(&want), "{want} not among {texts:?}");
    }
    let run = steps
        .iter()
        .find(|s| s["text"] == "RUN echo x > /f")
        .unwrap();
    assert_eq!(run["line"], 4, "{run}");
    assert_eq!(template["name"], "tpl");
    assert_eq!(
        template["source"],
        format!("dockerfile:inline (context {ctx})"),
        "{template}"
    );
    assert_eq!(
        template["defaults"]["env"]["GREETING"], "hello",
        "{template}"
    );
    assert_eq!(template["defaults"]["workdir"], "/app", "{template}");
    assert!(template["size_bytes"].as_u64().unwrap() > 0, "{template}");
    assert!(
        !template["digest"].as_str().unwrap().is_empty(),
        "{template}"
    );
    assert_eq!(d.metric("petty_template_builds_total").await, 1.0);
    assert!(scratch_left(&env).is_empty(), "{:?}", scratch_left(&env));

    // Listed, and one by name; an unknown name is a 404.
    let list = d.ok("GET", "/v1/templates", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tpl"], "{list}");
    assert_eq!(d.ok("GET", "/v1/templates/tpl", None).await, list[0]);
    let (status, err) = d.call("GET", "/v1/templates/nope", None).await;
    assert_eq!(
        (status, err["kind"].clone()),
        (404, json!("not_found")),
        "{err}"
    );

    // The warm entry's pool starts once the template exists; a create
    // asking for the template and nothing else is served from it.
    pool_of(&d, "tpl", "running", 1).await;
    let (status, warm) = d
        .call("POST", "/v1/sandboxes", Some(json!({"template": "tpl"})))
        .await;
    assert_eq!(status, 201, "{warm}");
    let pool = pool_of(&d, "tpl", "running", 1).await;
    assert_eq!(
        (pool["hits"].clone(), pool["misses"].clone()),
        (json!(1), json!(0)),
        "{pool}"
    );
    assert_eq!(
        d.metric("petty_template_pool_hits_total{template=\"tpl\"}")
            .await,
        1.0
    );
    // A named create is not a pool's: it is made from the template at once.
    let (status, named) = d
        .call(
            "POST",
            "/v1/sandboxes",
            Some(json!({"name": "t2", "template": "tpl"})),
        )
        .await;
    assert_eq!(status, 201, "{named}");
    assert_eq!(pool_of(&d, "tpl", "running", 1).await["hits"], 1);

    // Both get the template's files and its exec defaults, under an
    // exec's own.
    for sb in [warm["id"].as_str().unwrap(), "t2"] {
        assert_eq!(exec(&d, sb, "pwd").await, "/app\n", "{sb}");
        assert_eq!(exec(&d, sb, "echo $GREETING").await, "hello\n", "{sb}");
        assert_eq!(exec(&d, sb, "cat /f").await, "x\n", "{sb}");
        assert_eq!(
            exec(&d, sb, "cat hello.txt").await,
            "from the host\n",
            "{sb}"
        );
    }
    let r = d
        .ok(
            "POST",
            "/v1/sandboxes/t2/exec",
            Some(
                json!({"command": "pwd; echo $GREETING", "cwd": "/tmp", "env": {"GREETING": "hi"}}),
            ),
        )
        .await;
    assert_eq!(r["stdout"], "/tmp\nhi\n", "{r}");

    // Removal is refused while sandboxes use it, naming them; the warm
    // pool is left as it was.
    let (status, err) = d.call("DELETE", "/v1/templates/tpl", None).await;
    assert_eq!(
        (status, err["kind"].clone()),
        (409, json!("conflict")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("sandbox t2"),
        "{err}"
    );
    assert_eq!(pool_of(&d, "tpl", "running", 1).await["hits"], 1);
    d.ok(
        "DELETE",
        &format!("/v1/sandboxes/{}", warm["id"].as_str().unwrap()),
        None,
    )
    .await;
    d.ok("DELETE", "/v1/sandboxes/t2", None).await;

    // Once they are gone it goes (its warm sandbox first), and its pool
    // waits again.
    let (status, _) = d.call("DELETE", "/v1/templates/tpl", None).await;
    assert_eq!(status, 204);
    let (status, _) = d.call("GET", "/v1/templates/tpl", None).await;
    assert_eq!(status, 404);
    assert_eq!(d.ok("GET", "/v1/templates", None).await, json!([]));
    pool_of(&d, "tpl", "waiting", 0).await;
    let (status, err) = d.call("DELETE", "/v1/templates/tpl", None).await;
    assert_eq!(status, 404, "{err}");

    // A create from a template that does not exist is a 404 saying where
    // to look.
    let (status, err) = d
        .call("POST", "/v1/sandboxes", Some(json!({"template": "tpl"})))
        .await;
    assert_eq!(
        (status, err["kind"].clone()),
        (404, json!("not_found")),
        "{err}"
    );
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("no template named tpl") && msg.contains("GET /v1/templates"),
        "{msg}"
    );
    // Nothing is left: no sandbox (build sandboxes included).
    assert_eq!(d.ok("GET", "/v1/sandboxes", None).await, json!([]));

    // Built again, every step comes from the cache, and the warm pool
    // starts again.
    let (status, lines) = build(
        &d,
        json!({"name": "tpl", "dockerfile": dockerfile, "context": ctx}),
    )
    .await;
    assert_eq!(status, 200, "{lines:?}");
    let (again, steps) = done(&lines);
    assert_eq!(steps.len(), total, "{steps:#?}");
    assert!(steps.iter().all(|s| s["cached"] == true), "{steps:#?}");
    assert_eq!(again["digest"], template["digest"], "{again}");
    pool_of(&d, "tpl", "running", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_its_client_gives_up_on_is_cancelled() {
    let env = Env::new();
    // A bad templates.warm is refused at start, naming the key.
    for (warm, hint) in [("base=2", "pool.size"), ("t=x", "NAME=COUNT")] {
        let out = env
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PETTY_TEMPLATES_WARM", warm)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{warm}: {err}");
        assert!(
            err.contains("templates.warm") && err.contains(hint),
            "{warm}: {err}"
        );
    }
    let d = Daemon::start_with(&env, &["--pool-size", "0"], BUILD_VARS);
    // A step that prints for two minutes unless stopped.
    let dockerfile =
        "FROM base\nRUN i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done\n";
    let resp = d
        .req(reqwest::Method::POST, "/v1/templates")
        .json(&json!({"name": "slow", "dockerfile": dockerfile}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut resp = resp;
    let mut seen = String::new();
    while !seen.contains("\"type\":\"output\"") {
        let chunk = resp
            .chunk()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the build ended before its output: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("tick"), "{seen}");
    // The build sandbox runs now.
    let owners = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["owner"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(owners(&d.ok("GET", "/v1/sandboxes", None).await), ["build"]);
    drop(resp);

    // The client gone, the build goes: its sandbox removed, no template.
    let mut left = Value::Null;
    for _ in 0..600 {
        left = d.ok("GET", "/v1/sandboxes", None).await;
        if left.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, json!([]), "the build sandbox was left");
    assert!(d.log().contains("client gone"), "{}", d.log());
    assert_eq!(d.ok("GET", "/v1/templates", None).await, json!([]));
    assert_eq!(d.metric("petty_template_build_failures_total").await, 1.0);
    assert!(scratch_left(&env).is_empty(), "{:?}", scratch_left(&env));

    // The next build runs (the one-at-a-time lock was let go): one whose
    // steps change no file, and a failing one, whose error names its line.
    let (status, lines) = build(
        &d,
        json!({"name": "meta", "dockerfile": "FROM base\nENV A=1\nRUN false\n"}),
    )
    .await;
    assert_eq!(status, 200);
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "error", "{lines:#?}");
    assert_eq!(last["kind"], "bad_request", "{last}");
    let msg = last["message"].as_str().unwrap();
    assert!(
        msg.contains("line 3") && msg.contains("exit code 1"),
        "{msg}"
    );
    let (status, lines) = build(
        &d,
        json!({"name": "meta", "dockerfile": "FROM base\nENV A=1\n"}),
    )
    .await;
    assert_eq!(status, 200);
    let (template, _) = done(&lines);
    assert_eq!(template["defaults"]["env"]["A"], "1", "{template}");
    assert_eq!(d.ok("GET", "/v1/sandboxes", None).await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_builds_lists_and_deletes_templates() {
    let env = Env::new();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_petty"));
    cmd.arg("mcp")
        .env("PETTY_PATHS_RUN_DIR", env.root.path())
        .env("PETTY_PATHS_DATA_DIR", env.data.path())
        .envs(BUILD_VARS.iter().copied())
        .stderr(std::process::Stdio::inherit());
    crate::assets();
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let client = ().serve(transport).await.expect("MCP handshake with petty mcp");

    let tools = client.list_all_tools().await.unwrap();
    let create = tools.iter().find(|t| t.name == "create_sandbox").unwrap();
    assert!(
        create.input_schema["properties"]["template"].is_object(),
        "create_sandbox takes no template"
    );

    // Bad input is a tool error that says what to give.
    let r = call(&client, "build_template", json!({"name": "mt"})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("nothing to build"), "{}", text_of(&r));

    let r = structured(
        &call(
            &client,
            "build_template",
            json!({"name": "mt", "dockerfile": "FROM base\nENV X=1\nWORKDIR /w\nRUN echo hi > /hi\n"}),
        )
        .await,
    );
    assert_eq!(r["template"]["name"], "mt", "{r}");
    assert_eq!(r["template"]["defaults"]["workdir"], "/w", "{r}");
    assert_eq!(r["template"]["source"], "dockerfile:inline", "{r}");
    let log: Vec<&str> = r["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("step ") && l.ends_with("RUN echo hi > /hi")),
        "{log:?}"
    );

    let list = structured(&call(&client, "list_templates", json!({})).await);
    assert_eq!(list["templates"][0]["name"], "mt", "{list}");
    assert_eq!(list["templates"].as_array().unwrap().len(), 1, "{list}");

    let sb = structured(
        &call(
            &client,
            "create_sandbox",
            json!({"name": "from-mt", "template": "mt"}),
        )
        .await,
    );
    assert_eq!(sb["name"], "from-mt");
    let out = structured(
        &call(
            &client,
            "execute_command",
            json!({"sandbox": "from-mt", "command": "pwd; echo $X; cat /hi"}),
        )
        .await,
    );
    assert_eq!(out["stdout"], "/w\n1\nhi\n", "{out}");

    // In use: refused, naming the sandbox; then removed.
    let r = call(&client, "delete_template", json!({"template": "mt"})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(text_of(&r).contains("sandbox from-mt"), "{}", text_of(&r));
    structured(&call(&client, "destroy_sandbox", json!({"sandbox": "from-mt"})).await);
    let r = structured(&call(&client, "delete_template", json!({"template": "mt"})).await);
    assert_eq!(r["deleted"], "mt");
    let list = structured(&call(&client, "list_templates", json!({})).await);
    assert_eq!(list["templates"], json!([]), "{list}");
    let r = call(&client, "create_sandbox", json!({"template": "mt"})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(
        text_of(&r).contains("no template named mt"),
        "{}",
        text_of(&r)
    );
    client.cancel().await.unwrap();
}
