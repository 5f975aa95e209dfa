//! `petty bench serve`: exec round trip through the REST API against the
//! same call made in-process on the library, and the throughput of many
//! concurrent REST clients against the same done in-process, all in one
//! run on the same sandboxes; also the store's reads and writes per REST
//! exec and a lookup's latency while many execs run. A benchmark, not a
//! test: it prints, never asserts.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use petty::settings::ensure_assets;
use petty_core::ExecRequest;

use crate::bench::{median, ms, percentiles};

/// Sandboxes the throughput clients spread over.
const SANDBOXES: usize = 4;

/// The wide throughput run: this many clients over this many sandboxes.
const WIDE: (usize, usize) = (64, 32);

pub async fn serve(
    runs: usize,
    clients: usize,
    per_client: usize,
    s: &petty_config::Settings,
) -> anyhow::Result<ExitCode> {
    if runs == 0 || clients == 0 || per_client == 0 {
        bail!("--runs, --clients and --per-client must be at least 1");
    }
    ensure_assets(s, true).await?;
    let scratch = tempfile::Builder::new().prefix("petty-bench-").tempdir()?;
    crate::bench::clean_up_on_signal(scratch.path().to_path_buf());
    let mut config = s.clone();
    config.server.listen = "127.0.0.1:0".into();
    config.pool.size = 0;
    config.backend.kind = petty_config::BackendKind::Qemu;
    config.paths.data_dir = scratch.path().join("data");
    config.paths.run_dir = scratch.path().join("run");
    let (manager, notice) = petty::settings::manager(&config, true).await?;
    eprintln!("{notice}");
    let service = petty_server::start_service(manager, &config, false, None).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = petty_server::app(
        service.clone(),
        Arc::new(AtomicBool::new(false)),
        petty_server::CancellationToken::new(),
    );
    let server = tokio::spawn(petty_server::serve_router(listener, app));

    let result = measure(&service, &base, runs, clients, per_client).await;
    server.abort();
    service.manager().destroy_all().await?;
    result
}

async fn measure(
    service: &petty_server::Service,
    base: &str,
    runs: usize,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::new();
    let mut names = Vec::new();
    let made = SANDBOXES.max(WIDE.1);
    for i in 0..made {
        let name = format!("bench-{i}");
        let resp = http
            .post(format!("{base}/v1/sandboxes"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "create through REST: {} {}",
                resp.status(),
                resp.text().await?
            );
        }
        names.push(name);
        eprint!("\rsandboxes: {}/{made}", i + 1);
    }
    eprintln!();
    let manager = service.manager().clone();
    let manager_stats = manager.clone();
    let base = base.to_string();
    let base_url = base.clone();
    let client = http.clone();
    let rest_exec = move |name: String| {
        let http = client.clone();
        let url = format!("{base}/v1/sandboxes/{name}/exec");
        async move {
            let t = Instant::now();
            let resp = http
                .post(url)
                .json(&serde_json::json!({ "argv": ["true"] }))
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            if !status.is_success() || body["exit_code"] != 0 {
                bail!("REST exec: {status} {body}");
            }
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    let lib_exec = move |name: String| {
        let manager = manager.clone();
        async move {
            let t = Instant::now();
            let r = manager
                .exec(&name, ExecRequest::argv(["true"]), None)
                .await
                .context("in-process exec")?;
            if r.exit_code != 0 {
                bail!("in-process exec exited {}", r.exit_code);
            }
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    // Warm both paths (first-use translation under TCG, HTTP connection).
    for _ in 0..3 {
        rest_exec(names[0].clone()).await?;
        lib_exec(names[0].clone()).await?;
    }
    // Alternate the two so drift in the guest hits both alike.
    let (mut rest, mut lib) = (Vec::new(), Vec::new());
    for i in 0..runs {
        rest.push(rest_exec(names[0].clone()).await?);
        lib.push(lib_exec(names[0].clone()).await?);
        eprint!("\rround trips: {}/{runs}", i + 1);
    }
    eprintln!();
    let (rest_pct, lib_pct) = (percentiles(rest.clone()), percentiles(lib.clone()));
    let (rest_med, lib_med) = (median(rest), median(lib));
    // SQLite round trips of one REST exec, as the store counts them; the
    // median, since the reaper's pass (once a second) reads the store too.
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let before = manager_stats.store_stats();
        rest_exec(names[0].clone()).await?;
        let after = manager_stats.store_stats();
        reads.push(after.reads - before.reads);
        writes.push(after.writes - before.writes);
    }
    reads.sort_unstable();
    writes.sort_unstable();
    let (reads, writes) = (reads[runs / 2], writes[runs / 2]);
    // The HTTP layer alone: a lookup that touches no VM (SQLite read), both ways.
    let (mut rest_get, mut lib_get) = (Vec::new(), Vec::new());
    for _ in 0..runs * 10 {
        let t = Instant::now();
        let resp = http
            .get(format!("{base_url}/v1/sandboxes/{}", names[0]))
            .send()
            .await?;
        let _: serde_json::Value = resp.error_for_status()?.json().await?;
        rest_get.push(t.elapsed());
        let t = Instant::now();
        service
            .get(&names[0])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        lib_get.push(t.elapsed());
    }
    let (rest_get, lib_get) = (median(rest_get), median(lib_get));

    let lib_tp = run_clients(clients, per_client, &names[..SANDBOXES], lib_exec.clone()).await?;
    eprintln!("in-process throughput run done");
    // A lookup while those execs run again: its store read shares the
    // store with every exec's reads and writes. Sampled every millisecond.
    let busy = Arc::new(AtomicBool::new(true));
    let looker = {
        let (service, name, busy) = (service.clone(), names[0].clone(), busy.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t = Instant::now();
                service
                    .get(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                lat.push(t.elapsed());
                if !busy.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, anyhow::Error>(lat)
        })
    };
    let loaded = run_clients(clients, per_client, &names[..SANDBOXES], lib_exec.clone()).await;
    busy.store(false, Ordering::Relaxed);
    let mut busy_get = looker.await??;
    loaded?;
    busy_get.sort_unstable();
    let busy_get_p90 = busy_get[busy_get.len() * 9 / 10];
    let busy_get = busy_get[busy_get.len() / 2];
    eprintln!("lookups under load done");
    let rest_tp = run_clients(clients, per_client, &names[..SANDBOXES], rest_exec.clone()).await?;
    eprintln!("REST throughput run done");
    let (wide_clients, wide_sandboxes) = WIDE;
    let wide_lib =
        run_clients(wide_clients, per_client, &names[..wide_sandboxes], lib_exec).await?;
    let wide_rest = run_clients(
        wide_clients,
        per_client,
        &names[..wide_sandboxes],
        rest_exec,
    )
    .await?;
    eprintln!("wide throughput runs done");
    let overhead = rest_med.as_secs_f64() / lib_med.as_secs_f64() - 1.0;
    println!("petty bench serve ({runs} runs; exec `true`; 256 MiB, 2 vCPUs; daemon in this process on 127.0.0.1)");
    println!(
        "  exec round trip, in-process library call        median {}; {lib_pct}",
        ms(lib_med)
    );
    println!(
        "  exec round trip, REST POST /v1/sandboxes/*/exec median {}; {rest_pct}",
        ms(rest_med)
    );
    println!(
        "  REST overhead                                   {:+.1}% (target <= 20%)",
        overhead * 100.0
    );
    println!(
        "  store round trips per REST exec                 {reads} read(s), {writes} write(s) (median)"
    );
    println!(
        "  sandbox lookup (no VM work), in-process         median {:.3} ms",
        lib_get.as_secs_f64() * 1000.0
    );
    println!(
        "  sandbox lookup, REST GET /v1/sandboxes/*        median {:.3} ms (HTTP + JSON cost {:+.3} ms)",
        rest_get.as_secs_f64() * 1000.0,
        (rest_get.as_secs_f64() - lib_get.as_secs_f64()) * 1000.0
    );
    println!("  {clients} concurrent clients x {per_client} execs over {SANDBOXES} sandboxes:");
    lib_tp.print("in-process");
    rest_tp.print("REST");
    println!(
        "    sandbox lookup during an in-process run      median {:.3} ms, p90 {:.3} ms",
        busy_get.as_secs_f64() * 1000.0,
        busy_get_p90.as_secs_f64() * 1000.0
    );
    println!(
        "  {wide_clients} concurrent clients x {per_client} execs over {wide_sandboxes} sandboxes:"
    );
    wide_lib.print("in-process");
    wide_rest.print("REST");
    Ok(ExitCode::SUCCESS)
}

/// One throughput run: how long the whole took and each exec's latency.
struct Throughput {
    total: Duration,
    latencies: Vec<Duration>,
}

impl Throughput {
    fn print(&self, what: &str) {
        println!(
            "    {what:<46}{:.0} execs/s ({} total); latency {}",
            self.latencies.len() as f64 / self.total.as_secs_f64(),
            ms(self.total),
            percentiles(self.latencies.clone())
        );
    }
}

/// `clients` tasks at once, client `c` running `per_client` execs one after
/// another in sandbox `names[c % names.len()]`.
async fn run_clients<F, Fut>(
    clients: usize,
    per_client: usize,
    names: &[String],
    exec: F,
) -> anyhow::Result<Throughput>
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send,
{
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let name = names[c % names.len()].clone();
        let exec = exec.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                lat.push(exec(name.clone()).await?);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(clients * per_client);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Throughput {
        total: t.elapsed(),
        latencies,
    })
}
