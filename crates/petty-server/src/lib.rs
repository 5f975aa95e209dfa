//! Petty's daemon: the sandbox manager behind an MCP server (stdio and
//! streamable HTTP), a REST API under `/v1` with its OpenAPI document,
//! Prometheus metrics, health checks, bearer-key auth, a guard against
//! requests a web page could forge, and a TOML config.
//!
//! [`serve`] runs the HTTP daemon (`petty serve`); [`serve_stdio`] runs MCP
//! over stdin/stdout (`petty mcp`). Both build the same [`Service`] from a
//! [`Config`], so REST routes and MCP tools do the same thing.

#![warn(missing_docs)]

pub mod config;
pub mod guard;
pub mod mcp;
pub mod metrics;
pub mod rest;
pub mod service;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use petty_core::{ManagerConfig, PoolConfig, SandboxManager, SandboxPool};
use petty_vmm::{choose_backend_with, runtime_root, BackendOptions};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt as _;

pub use axum::Router;
pub use config::{Config, ConfigError, OnShutdown};
pub use mcp::PettyMcp;
pub use service::{ApiError, Service};
pub use tokio_util::sync::CancellationToken;

/// Builds the manager (recovering what an earlier run left), the warm pool
/// when `with_pool` and `pool.size > 0`, and the service over them. Returns
/// the service and the backend notice (which VMM and why).
pub async fn build_service(config: &Config, with_pool: bool) -> anyhow::Result<(Service, String)> {
    let root = config.backend.run_dir.clone().unwrap_or_else(runtime_root);
    let binaries = BackendOptions {
        qemu: config.backend.qemu_binary.clone(),
        firecracker: config.backend.firecracker_binary.clone(),
        boot_slots: config.limits.max_concurrent_boots,
    };
    // `auto` leaves the choice to PETTY_BACKEND when that is set.
    let kind = match config.backend.kind {
        config::BackendKind::Auto => None,
        k => Some(k.as_str()),
    };
    let (vmm, notice) = choose_backend_with(kind, root, &binaries)?;
    // Lifetimes are the service's to give (REST and MCP defaults, 0 for
    // none), so the manager applies none of its own.
    let mut mc = ManagerConfig {
        max_sandboxes: config.limits.max_concurrent_sandboxes,
        templates: config.backend.templates,
        standby: config.backend.standby,
        ..ManagerConfig::default()
    };
    if let Some(d) = &config.backend.data_dir {
        mc.data_dir = d.clone();
    }
    if let Some(n) = config.limits.max_concurrent_boots {
        mc.max_concurrent_boots = n;
    }
    let manager = SandboxManager::new(mc, Arc::from(vmm))
        .await
        .context("opening the sandbox manager")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let service = Service::new(manager.clone(), None, metrics.clone(), config.clone());
    if !with_pool || config.pool.size == 0 {
        return Ok((service, notice));
    }
    let pool_owner = service::Requester {
        owner: "pool".into(),
        session: false,
    };
    let sandbox_config = service
        .sandbox_config(&service::CreateSpec::default(), &pool_owner)
        .map_err(|e| anyhow::anyhow!("pool sandbox config: {}", e.message))?;
    let pool = SandboxPool::new(
        manager.clone(),
        PoolConfig {
            min_size: config.pool.size,
            max_concurrent_boots: config.pool.max_concurrent_boots,
            fill_interval: Duration::from_secs(1),
            sandbox_config,
        },
    );
    pool.start();
    Ok((
        Service::new(manager, Some(pool), metrics, config.clone()),
        notice,
    ))
}

/// The whole HTTP application: REST, `/mcp`, health, metrics, OpenAPI,
/// behind the request guard (Host, Origin, Content-Type) and then the key
/// check.
pub fn app(
    service: Service,
    shutting_down: Arc<AtomicBool>,
    mcp_cancel: CancellationToken,
) -> axum::Router {
    let config = service.config().clone();
    let max_body = usize::try_from(config.server.max_body_mib.saturating_mul(1024 * 1024))
        .unwrap_or(usize::MAX);
    // The guard in front checks Host and Origin on every route, /mcp
    // included. rmcp's own checks follow other rules (its loopback names
    // only, origins without a port matching any port), so they are off:
    // one rule, the guard's, tested through /mcp.
    let mcp_config = StreamableHttpServerConfig::default()
        .with_cancellation_token(mcp_cancel)
        .with_max_request_body_bytes(max_body)
        .disable_allowed_hosts()
        .disable_allowed_origins();
    let listen = config
        .listen_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let guard = Arc::new(guard::Guard::new(&config.server, listen));
    let mcp_service = service.clone();
    // A session with no call in flight for mcp.session_idle_secs ends, and
    // the sandboxes it made go with it: the handler watches that. rmcp's
    // own keep-alive counts a long call as idle, so it only collects
    // sessions abandoned for a day beyond that.
    let idle = Duration::from_secs(config.mcp.session_idle_secs);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(idle + Duration::from_secs(86_400));
    let sessions = Arc::new(sessions);
    let mcp = StreamableHttpService::new(
        {
            let sessions = sessions.clone();
            move || {
                Ok(PettyMcp::new(
                    mcp_service.clone(),
                    mcp::Transport::Http {
                        sessions: sessions.clone(),
                        idle,
                    },
                ))
            }
        },
        sessions,
        mcp_config,
    );
    let keys = Arc::new(config.server.api_keys.clone());
    rest::routes(
        rest::AppState {
            service,
            shutting_down,
        },
        max_body,
    )
    .nest_service("/mcp", mcp)
    .layer(axum::middleware::from_fn(move |req, next| {
        rest::require_key(keys.clone(), req, next)
    }))
    // Outermost: a forged request is refused before the key check.
    .layer(axum::middleware::from_fn(move |req, next| {
        guard::guard(guard.clone(), req, next)
    }))
}

/// Serves `app` on `listener` until the task is dropped (benchmarks, tests).
pub async fn serve_router(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app).await
}

/// Runs the daemon until SIGTERM or SIGINT: binds `server.listen`, prints
/// `petty: listening on http://ADDR` on stdout, serves, then shuts down
/// within `server.shutdown_grace_secs` and keeps or destroys the sandboxes
/// as `server.on_shutdown` says.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (server.listen)"))?;
    let (service, notice) = build_service(&config, true).await?;
    eprintln!("{notice}");
    let local: SocketAddr = listener.local_addr()?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    let mcp_cancel = CancellationToken::new();
    let router = app(
        service.clone(),
        shutting_down.clone(),
        mcp_cancel.child_token(),
    );
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "petty: listening on http://{local} (REST /v1, MCP /mcp, /metrics){}",
            if config.server.api_keys.is_empty() {
                ""
            } else {
                "; API key required"
            }
        );
        let _ = out.flush();
    }
    tracing::info!(%local, "listening");

    let stop = CancellationToken::new();
    let signal_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.cancel();
        })
    };
    let graceful = {
        let stop = stop.clone();
        let flag = shutting_down.clone();
        let mcp_cancel = mcp_cancel.clone();
        async move {
            stop.cancelled().await;
            flag.store(true, Ordering::SeqCst);
            mcp_cancel.cancel();
            eprintln!(
                "petty: stopping: no new connections; in-flight calls get up to the grace period"
            );
        }
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(graceful);
    let grace = config.shutdown_grace();
    tokio::select! {
        r = server => r.context("serving HTTP")?,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            eprintln!("petty: grace period ({} s) over; dropping calls still running", grace.as_secs());
        }
    }
    signal_task.abort();
    shutdown(&service, config.server.on_shutdown).await;
    Ok(())
}

/// Serves MCP over stdin/stdout until the client closes stdin or a signal
/// arrives, then keeps or destroys sandboxes as `server.on_shutdown` says.
/// No warm pool: the daemon keeps one; this creates from templates.
pub async fn serve_stdio(config: Config) -> anyhow::Result<()> {
    let (service, notice) = build_service(&config, false).await?;
    tracing::info!("{notice}");
    let mcp = PettyMcp::new(service.clone(), mcp::Transport::Stdio);
    let running = mcp
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .context("starting MCP on stdio")?;
    // The client closing stdin (or being killed) ends the session, as a
    // signal does; either way its sandboxes go, unless they were kept.
    let served = tokio::select! {
        r = running.waiting() => r.map(|_| ()).context("serving MCP on stdio"),
        _ = wait_for_signal() => Ok(()),
    };
    mcp.end_session().await;
    drop(mcp);
    shutdown(&service, config.server.on_shutdown).await;
    served
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Empties the warm pool, then keeps (detached, recorded in SQLite) or
/// destroys every sandbox.
async fn shutdown(service: &Service, on_shutdown: OnShutdown) {
    // MCP sessions are cancelled by now: their sandboxes go first.
    if !service.wait_for_sessions(Duration::from_secs(30)).await {
        eprintln!("petty: MCP sessions' sandboxes still being destroyed after 30 s; going on");
    }
    if let Some(pool) = service.pool() {
        if let Err(e) = pool.shutdown().await {
            eprintln!("petty: emptying the warm pool: {e}");
        }
    }
    let manager = service.manager();
    service.manager().stop_standbys();
    match on_shutdown {
        OnShutdown::Keep => {
            let n = manager.count().await.unwrap_or(0);
            manager.release_all().await;
            eprintln!("petty: stopped; {n} sandbox(es) left running for the next start (server.on_shutdown = keep)");
        }
        OnShutdown::Destroy => {
            let list = manager.list().await.unwrap_or_default();
            let mut destroyed = 0;
            for r in &list {
                match manager.destroy(&r.id.to_string()).await {
                    Ok(()) => destroyed += 1,
                    Err(e) => eprintln!("petty: destroying {}: {e}", r.name),
                }
            }
            eprintln!(
                "petty: stopped; destroyed {destroyed} sandbox(es) (server.on_shutdown = destroy)"
            );
        }
    }
}
