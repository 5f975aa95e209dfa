//! `petty bench gateway`: three nodes (each a `petty serve` process on
//! loopback with its own data and run directories) behind a gateway in
//! this process: an exec round trip through the gateway beside the
//! same one sent to the node directly, interleaved in one run; the
//! throughput and balance of many concurrent clients through the gateway;
//! and how long the gateway takes to notice a lost node, and to answer a
//! request for one of its sandboxes once it has. A benchmark, not a test:
//! it prints, never asserts.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use petty::settings::ensure_assets;
use serde_json::{json, Value};

use crate::bench::{ms, Dist};

/// Nodes behind the gateway.
const NODES: usize = 3;

struct Node {
    base: String,
    child: std::process::Child,
}

/// `petty serve` on a free loopback port with its own directories under
/// `scratch`; its URL once it listens.
fn start_node(
    petty: &std::path::Path,
    scratch: &std::path::Path,
    i: usize,
) -> anyhow::Result<Node> {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(petty)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pool-size",
            "0",
            "--on-shutdown",
            "destroy",
        ])
        .arg("--data-dir")
        .arg(scratch.join(format!("data-{i}")))
        .arg("--run-dir")
        .arg(scratch.join(format!("run-{i}")))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", petty.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("petty serve printed no address: {line:?}"))?
        .to_string();
    Ok(Node { base, child })
}

pub async fn gateway(
    runs: usize,
    clients: usize,
    per_client: usize,
    s: &petty_config::Settings,
) -> anyhow::Result<ExitCode> {
    if runs == 0 || clients == 0 || per_client == 0 {
        bail!("--runs, --clients and --per-client must be at least 1");
    }
    ensure_assets(s, true).await?;
    let petty = petty::exe::find("petty", &s.paths.search_path)
        .context("no petty beside petty-bench or on PATH: cargo build --release -p petty")?;
    let scratch = tempfile::Builder::new().prefix("petty-bench-").tempdir()?;
    crate::bench::clean_up_on_signal(scratch.path().to_path_buf());
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(start_node(&petty, scratch.path(), i)?);
    }
    let mut config = s.clone();
    config.gateway.nodes = nodes.iter().map(|n| n.base.clone()).collect();
    let g = petty_gateway::Gateway::new(&config)?;
    g.nodes().refresh().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let gw = format!("http://{local}");
    let app = petty_gateway::app(g.clone(), &config, local);
    let gw_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let interval = Duration::from_secs(1);
    let health = {
        let g = g.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                g.nodes().refresh().await;
            }
        })
    };

    let result = measure(&mut nodes, &gw, &g, runs, clients, per_client, interval).await;
    health.abort();
    gw_server.abort();
    // Every node and VM of the run goes (a lost node's VMs outlived it).
    for n in &mut nodes {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    crate::bench::kill_processes_mentioning(scratch.path());
    result
}

async fn exec(http: &reqwest::Client, base: &str, sandbox: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let resp = http
        .post(format!("{base}/v1/sandboxes/{sandbox}/exec"))
        .json(&json!({"argv": ["true"]}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() || body["exit_code"] != 0 {
        bail!("exec in {sandbox} through {base}: {status} {body}");
    }
    Ok(t.elapsed())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    nodes: &mut [Node],
    gw: &str,
    g: &petty_gateway::Gateway,
    runs: usize,
    clients: usize,
    per_client: usize,
    interval: Duration,
) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    // Four sandboxes per node, made through the gateway.
    let mut on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..NODES * 4 {
        let resp = http
            .post(format!("{gw}/v1/sandboxes"))
            .json(&json!({ "name": format!("gw-bench-{i}") }))
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("create through the gateway: {status} {v}");
        }
        on.entry(v["node"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(v["name"].as_str().unwrap_or_default().to_string());
    }
    let placed: Vec<usize> = on.values().map(Vec::len).collect();
    println!(
        "gateway (in this process) over {NODES} nodes (petty serve processes on loopback, QEMU)"
    );
    println!("  placement of {} creates: {placed:?} per node", NODES * 4);

    // Round trip: the same sandbox, through the gateway and directly,
    // interleaved so both see the same machine.
    let (first_node, first) = on.iter().next().context("no sandbox was made")?;
    let node_base = format!("http://{first_node}");
    let sandbox = &first[0];
    for _ in 0..5 {
        exec(&http, gw, sandbox).await?;
        exec(&http, &node_base, sandbox).await?;
    }
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        via.push(exec(&http, gw, sandbox).await?);
        direct.push(exec(&http, &node_base, sandbox).await?);
    }
    let (via, direct) = (Dist::of(&via), Dist::of(&direct));
    println!("  exec round trip, direct to the node (baseline)  {direct}");
    println!("  exec round trip, through the gateway            {via}");
    println!(
        "  gateway overhead at the median                  {:+.1} % ({:+.2} ms; goal <= +5 %)",
        (via.p50.as_secs_f64() / direct.p50.as_secs_f64() - 1.0) * 100.0,
        (via.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1000.0
    );

    // Throughput: `clients` clients over every sandbox, through the gateway.
    let all: Vec<(String, String)> = on
        .iter()
        .flat_map(|(n, s)| s.iter().map(move |s| (n.clone(), s.clone())))
        .collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (node, sb) = all[c % all.len()].clone();
        let (http, gw) = (http.clone(), gw.to_string());
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..per_client {
                times.push(exec(&http, &gw, &sb).await?);
            }
            anyhow::Ok((node, times))
        }));
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut times = Vec::new();
    for t in tasks {
        let (node, ts) = t.await??;
        *per_node.entry(node).or_default() += ts.len();
        times.extend(ts);
    }
    let took = t.elapsed();
    println!(
        "  {clients} clients x {per_client} execs through the gateway: {:.0} execs/s; round trip {}",
        times.len() as f64 / took.as_secs_f64(),
        Dist::of(&times)
    );
    println!(
        "  execs per node: {:?}",
        per_node.values().collect::<Vec<_>>()
    );

    // A lost node: its server stops answering; how long until the
    // gateway says so, and how fast a request for its sandbox then fails.
    let lost = on.keys().last().context("no node")?.clone();
    let victim = on[&lost][0].clone();
    let node = nodes
        .iter_mut()
        .find(|n| n.base.ends_with(&lost))
        .context("the lost node")?;
    let t = Instant::now();
    node.child.kill()?;
    let noticed = loop {
        if g.nodes()
            .find(&lost)
            .is_some_and(|n| n.state == petty_gateway::NodeState::Down)
        {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the gateway did not notice the lost node within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut fails = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let status = http
            .post(format!("{gw}/v1/sandboxes/{victim}/exec"))
            .json(&json!({"argv": ["true"]}))
            .send()
            .await?
            .status();
        fails.push(t.elapsed());
        if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            bail!("a request for a lost node's sandbox answered {status}");
        }
    }
    println!(
        "  a lost node noticed after                       {} (health reads every {})",
        ms(noticed),
        ms(interval)
    );
    println!(
        "  a request for its sandbox then fails in         {}",
        Dist::of(&fails)
    );
    Ok(ExitCode::SUCCESS)
}
