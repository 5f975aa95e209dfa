//! E2B's own SDKs against `petty serve --e2b-listen`: the real `e2b` and
//! `e2b-code-interpreter` Python packages (pinned, installed by
//! `scripts/install-deps` into Petty's cache) run the scripts in
//! `tests/e2b/` with `E2B_API_URL` and `E2B_SANDBOX_URL` set to the
//! daemon, against real VMs (E2B's JavaScript SDK too, when Node 20 is
//! here); the host form `E2B_DOMAIN` makes the SDKs send is driven with a
//! real HTTP client, since it needs TLS in front.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::Env;

/// Where `scripts/install-deps` puts E2B's SDKs: Petty's cache.
fn cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
        .join("petty")
}

/// The Python of the environment `scripts/install-deps` made for E2B's SDKs.
pub(crate) fn sdk_python() -> PathBuf {
    let python = cache().join("e2b-sdk/bin/python");
    assert!(
        python.is_file(),
        "E2B's SDKs are not installed at {}: run scripts/install-deps",
        python.display()
    );
    python
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2b")
        .join(name)
}

/// `petty serve` with E2B's API on a port of its own; killed on drop.
struct E2bDaemon {
    child: Child,
    /// Petty's own API.
    base: String,
    /// E2B's.
    e2b: String,
    /// Its stderr.
    log: PathBuf,
}

impl E2bDaemon {
    fn start(env: &Env, args: &[&str]) -> Self {
        Self::start_with(env, args, &[])
    }

    /// [`start`](Self::start) with variables `vars` set for the daemon.
    fn start_with(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let log = env.data.path().join("e2b-daemon.log");
        let mut child = env
            .cmd()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--e2b-listen",
                "127.0.0.1:0",
            ])
            .args(["--pool-size", "0"])
            .args(args)
            // Template builds (sdk.py makes one) need no network, and with
            // the memory creates get they restore from the base template.
            .env("PETTY_TEMPLATES_BUILD_NETWORK", "false")
            .env("PETTY_TEMPLATES_BUILD_MEMORY_MB", "256")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
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
        let base = addr();
        let e2b = addr();
        Self {
            child,
            base,
            e2b,
            log,
        }
    }

    /// Runs `script` with E2B's SDK pointed here, with API key `key`.
    fn run(&self, script_name: &str, key: &str) -> std::process::Output {
        Command::new(sdk_python())
            .arg(script(script_name))
            .env("E2B_API_URL", &self.e2b)
            .env("E2B_SANDBOX_URL", &self.e2b)
            .env("E2B_API_KEY", key)
            // Petty's own API, where sdk.py builds a template.
            .env("PETTY_API_URL", &self.base)
            .env_remove("E2B_DOMAIN")
            .env_remove("E2B_DEBUG")
            .output()
            .unwrap()
    }

    fn ok(&self, script_name: &str, key: &str) {
        let out = self.run(script_name, key);
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .trim_end()
                    .ends_with("ok"),
            "{script_name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for E2bDaemon {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn e2bs_python_sdk_drives_sandboxes_commands_files_pause_and_connect() {
    let env = Env::new();
    let d = E2bDaemon::start(&env, &[]);
    // With no keys on loopback, any key is taken (as with Petty's own API).
    d.ok("sdk.py", "any-key");
    drop(d);
    env.assert_clean();
}

#[test]
fn e2bs_code_interpreter_keeps_state_in_python_and_bash_contexts() {
    let env = Env::new();
    let d = E2bDaemon::start(&env, &[]);
    d.ok("interpreter.py", "any-key");
    drop(d);
    env.assert_clean();
}

#[test]
fn e2bs_auto_pause_pauses_at_the_timeout_and_connect_or_a_call_brings_it_back() {
    let env = Env::new();
    let d = E2bDaemon::start(&env, &[]);
    d.ok("lifecycle.py", "any-key");
    drop(d);
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2bs_api_wants_the_key_and_each_sandbox_its_own_token() {
    let env = Env::new();
    let key = "e2b-test-key-0123456789";
    let d = E2bDaemon::start(&env, &["--api-key", key]);
    // The SDK with a wrong key is refused as E2B refuses it.
    let out = d.run("sdk.py", "wrong-key-0123456789");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AuthenticationException"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = reqwest::Client::new();
    let create = |k: &'static str| {
        http.post(format!("{}/v2/sandboxes", d.e2b))
            .header("x-api-key", k)
            .json(&json!({"templateID": "base", "timeout": 60}))
            .send()
    };
    let r = create(key).await.unwrap();
    assert_eq!(r.status(), 201);
    let made: serde_json::Value = r.json().await.unwrap();
    let (id, token) = (
        made["sandboxID"].as_str().unwrap().to_string(),
        made["envdAccessToken"].as_str().unwrap().to_string(),
    );
    let health = |token: String, id: String| {
        http.get(format!("{}/health", d.e2b))
            .header("e2b-sandbox-id", id)
            .header("x-access-token", token)
            .send()
    };
    assert_eq!(
        health(token.clone(), id.clone()).await.unwrap().status(),
        204
    );
    // Another sandbox's token, or none, reaches nothing.
    let r = create(key).await.unwrap();
    let second: serde_json::Value = r.json().await.unwrap();
    let other = second["envdAccessToken"].as_str().unwrap().to_string();
    assert_eq!(health(other, id.clone()).await.unwrap().status(), 401);
    let r = http
        .post(format!("{}/process.Process/List", d.e2b))
        .header("e2b-sandbox-id", &id)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("X-Access-Token"),
        "{body}"
    );
    // A web page cannot drive it: a foreign Origin is refused before keys.
    let r = http
        .delete(format!("{}/sandboxes/{id}", d.e2b))
        .header("x-api-key", key)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A wrong key leaves it; the right one kills it; then it is not found.
    let r = http
        .delete(format!("{}/sandboxes/{id}", d.e2b))
        .header("x-api-key", "wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (want, sandbox) in [(204, &id), (404, &id)] {
        let r = http
            .delete(format!("{}/sandboxes/{sandbox}", d.e2b))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
        if want == 404 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], 404, "E2B's error shape: {body}");
        }
    }
    let second_id = second["sandboxID"].as_str().unwrap();
    let r = http
        .delete(format!("{}/sandboxes/{second_id}", d.e2b))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Petty's own API still answers beside it.
    let r = http
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    drop(d);
    env.assert_clean();
}

/// The host form E2B's SDKs use with `E2B_DOMAIN` (and no
/// `E2B_SANDBOX_URL`): `<port>-<sandboxID>.<domain>` in `Host`, with no
/// `E2b-Sandbox-Id` header, sent by a real HTTP client whose resolver maps
/// the names onto the daemon's loopback address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2bs_host_form_reaches_envd_and_the_interpreter_under_its_domain_only() {
    let env = Env::new();
    let domain = "sb.petty.test";
    let d = E2bDaemon::start_with(&env, &[], &[("PETTY_E2B_DOMAIN", domain)]);
    let addr: std::net::SocketAddr = d.e2b.trim_start_matches("http://").parse().unwrap();
    let port = addr.port();
    let made: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v2/sandboxes", d.e2b))
        .json(&json!({"templateID": "base", "timeout": 120}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made["domain"], domain, "{made}");
    let id = made["sandboxID"].as_str().unwrap().to_string();
    let token = made["envdAccessToken"].as_str().unwrap().to_string();
    let host = |p: u16| format!("{p}-{id}.{domain}");
    let evil = format!("49983-{id}.evil.example");
    let mut http = reqwest::Client::builder();
    for name in [
        host(49983),
        host(49999),
        host(8080),
        evil.clone(),
        format!("api.{domain}"),
    ] {
        http = http.resolve(&name, addr);
    }
    let http = http.build().unwrap();
    let url = |h: &str, path: &str| format!("http://{h}:{port}{path}");
    // envd, by the host alone.
    let r = http
        .get(url(&host(49983), "/health"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(url(&host(49983), "/files?path=/etc/os-release"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Debian"));
    // Its token is still wanted.
    let r = http.get(url(&host(49983), "/health")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The code interpreter at 49999; not at envd's port.
    let r = http
        .post(url(&host(49999), "/execute"))
        .header("x-access-token", &token)
        .json(&json!({"code": "print(6 * 7)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = r.text().await.unwrap();
    let printed = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|l| l["type"] == "stdout" && l["text"] == "42\n");
    assert!(printed, "{out}");
    let r = http
        .post(url(&host(49983), "/execute"))
        .header("x-access-token", &token)
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A port Petty does not serve: 502 in E2B's shape.
    let r = http
        .get(url(&host(8080), "/"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 502, "{body}");
    // The same form under another domain is refused before anything runs.
    let r = http
        .get(url(&evil, "/health"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    // The control plane by api.<domain>; no sandbox's host reaches it.
    let r = http
        .get(url(&format!("api.{domain}"), "/v2/sandboxes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(url(&host(49983), "/v2/sandboxes"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .delete(url(&format!("api.{domain}"), &format!("/sandboxes/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    drop(d);
    env.assert_clean();
}

/// Node, when it is 20.18 or later (what E2B's JavaScript SDK needs).
fn node_20() -> Result<PathBuf, String> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("no node here ({e})"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<u32> = v
        .trim_start_matches('v')
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    match parts.as_slice() {
        [20, minor, ..] if *minor >= 18 => Ok("node".into()),
        [major, ..] if *major >= 22 => Ok("node".into()),
        _ => Err(format!(
            "node {v} is older than the 20.18 E2B's JavaScript SDK needs"
        )),
    }
}

#[test]
fn e2bs_javascript_sdk_creates_runs_files_watches_forks_and_kills() {
    let node = match node_20() {
        Ok(n) => n,
        Err(why) => {
            eprintln!("e2b: the JavaScript SDK test does not run: {why}");
            return;
        }
    };
    let modules = cache().join("e2b-sdk-js/node_modules");
    assert!(
        modules.join("e2b").is_dir(),
        "E2B's JavaScript SDK is not installed at {}: run scripts/install-deps",
        modules.display()
    );
    let env = Env::new();
    let d = E2bDaemon::start(&env, &[]);
    // The script beside the SDK's modules, where Node's imports look.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
    std::fs::copy(script("sdk.mjs"), dir.path().join("sdk.mjs")).unwrap();
    let out = Command::new(node)
        .arg(dir.path().join("sdk.mjs"))
        .env("E2B_API_URL", &d.e2b)
        .env("E2B_SANDBOX_URL", &d.e2b)
        .env("E2B_API_KEY", "any")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim_end() == "ok",
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(d);
    env.assert_clean();
}

/// The README's E2B example, run as written (against this test's daemon
/// rather than port 3000).
#[test]
fn the_readmes_e2b_example_runs_as_written() {
    let section = crate::readme_section("### E2B's SDKs");
    let sh = section.split("```sh\n").nth(1).unwrap();
    assert!(
        sh.contains("petty serve --e2b-listen 127.0.0.1:3000")
            && sh.contains(
                "E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:3000"
            ),
        "{sh}"
    );
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let len = section[start..].find("```").unwrap();
    let env = Env::new();
    let d = E2bDaemon::start(&env, &[]);
    let file = env.data.path().join("readme_e2b.py");
    std::fs::write(&file, &section[start..start + len]).unwrap();
    let out = Command::new(sdk_python())
        .arg(&file)
        .env("E2B_API_URL", &d.e2b)
        .env("E2B_SANDBOX_URL", &d.e2b)
        .env("E2B_API_KEY", "any")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[1], "['1', '2']");
    drop(d);
    env.assert_clean();
}
