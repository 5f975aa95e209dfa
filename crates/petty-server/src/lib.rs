//! Petty's daemon: the sandbox manager behind an MCP server (stdio and
//! streamable HTTP), a REST API under `/v1` with its OpenAPI document,
//! Prometheus metrics, health checks, bearer-key auth, a guard against
//! requests a web page could forge, and a TOML config.
//!
//! The caller (the `petty` binary) resolves the settings
//! ([`petty_config::Settings`]), chooses the backend and opens the
//! [`SandboxManager`]; [`start_service`] puts the [`Service`] (and the warm
//! pool) over it. [`serve`] runs the HTTP daemon on a listener from [`bind`]
//! (`petty serve`); [`serve_stdio`] runs MCP over stdin/stdout (`petty
//! mcp`). Both serve the same [`Service`], so REST routes and MCP tools do
//! the same thing; templates are built by the [`petty_build::Builder`] the
//! caller makes. This crate knows no backend.

#![warn(missing_docs)]

pub mod background;
pub mod e2b;
pub mod error;
pub mod guard;
pub mod mcp;
pub mod metrics;
pub mod node;
mod processes;
pub mod rest;
pub mod service;
pub mod stats;
pub mod templates;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use petty_config::{OnShutdown, Settings};
use petty_core::{PoolConfig, SandboxManager, SandboxPool};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt as _;

pub use axum::Router;
pub use error::{ApiError, ApiResult, ErrorKind, ServerError};
pub use mcp::PettyMcp;
pub use service::Service;
pub use tokio_util::sync::CancellationToken;

/// Checks the settings only the daemon reads further
/// (`server.allowed_hosts`, `server.allowed_origins`); the error names the
/// key and what to give instead.
pub fn check_settings(settings: &Settings) -> Result<(), ServerError> {
    for entry in &settings.server.allowed_hosts {
        if let Err(why) = guard::parse_allowed_host(entry) {
            return Err(ServerError::Config(format!(
                "server.allowed_hosts: {entry:?} {why}; give host names such as \"petty.internal\""
            )));
        }
    }
    for entry in &settings.server.allowed_origins {
        if let Err(why) = guard::parse_origin(entry.trim()) {
            return Err(ServerError::Config(format!(
                "server.allowed_origins: {entry:?} {why}; give origins such as \"https://app.example.com\""
            )));
        }
    }
    settings
        .listen_addr()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    templates::warm_entries(settings).map_err(ServerError::Config)?;
    Ok(())
}

/// The service over `manager` (opened by the caller on the backend it
/// chose), building templates with `builder` (made over the same manager;
/// without one the build route and tool answer 503). With `with_pool`, the
/// base image's warm pool when `pool.size > 0`, and one pool per
/// `templates.warm` entry once its template exists.
pub async fn start_service(
    manager: SandboxManager,
    settings: &Settings,
    with_pool: bool,
    builder: Option<petty_build::Builder>,
) -> Result<Service, ServerError> {
    let warm = templates::warm_entries(settings).map_err(ServerError::Config)?;
    let warm = if with_pool { warm } else { Vec::new() };
    let metrics = Arc::new(metrics::Metrics::default());
    let pool = if with_pool && settings.pool.size > 0 {
        let probe = Service::new(manager.clone(), None, metrics.clone(), settings.clone());
        let pool_owner = service::Requester {
            owner: "pool".into(),
            session: false,
        };
        let sandbox_config = probe
            .sandbox_config(&service::CreateSpec::default(), &pool_owner)
            .map_err(ServerError::Pool)?;
        let pool = SandboxPool::new(
            manager.clone(),
            PoolConfig {
                min_size: settings.pool.size,
                max_concurrent_boots: settings.pool.max_concurrent_boots,
                fill_interval: Duration::from_secs(1),
                sandbox_config,
                warmup: settings.pool.warmup_command.clone(),
            },
        );
        pool.start();
        Some(pool)
    } else {
        None
    };
    let service = Service::assemble(manager, pool, metrics, settings.clone(), builder, warm);
    service.start_warm_pools().await;
    Ok(service)
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

/// Binds `server.listen` (before the manager is opened, so a port in use is
/// the first thing said).
pub async fn bind(settings: &Settings) -> Result<tokio::net::TcpListener, ServerError> {
    let addr = settings
        .listen_addr()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Runs the daemon on `listener` until SIGTERM or SIGINT: prints
/// `petty: listening on http://ADDR` on stdout, serves, then shuts down
/// within `server.shutdown_grace_secs` and keeps or destroys the sandboxes
/// as `server.on_shutdown` says.
pub async fn serve(listener: tokio::net::TcpListener, service: Service) -> Result<(), ServerError> {
    let config = service.config().clone();
    let local: SocketAddr = listener.local_addr().map_err(|e| ServerError::Serve {
        what: "reading the listening address",
        source: e.into(),
    })?;
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
    // E2B's API on its own listener, ended with the daemon's.
    let e2b_task = match config
        .e2b_listen_addr()
        .map_err(|e| ServerError::Config(e.to_string()))?
    {
        Some(addr) => {
            let e2b_listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            let local = e2b_listener.local_addr().map_err(|e| ServerError::Serve {
                what: "reading E2B's listening address",
                source: e.into(),
            })?;
            service
                .inner()
                .e2b_port
                .store(local.port(), Ordering::Relaxed);
            let app = e2b::app(service.clone()).map_err(|e| ServerError::Serve {
                what: "setting up E2B's API",
                source: e.into(),
            })?;
            {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "petty: E2B's API on http://{local}: set E2B_API_URL and E2B_SANDBOX_URL to it"
                );
                let _ = out.flush();
            }
            tracing::info!(%local, "serving E2B's API");
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                let _ = axum::serve(e2b_listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }))
        }
        None => None,
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(graceful);
    let grace = config.shutdown_grace();
    tokio::select! {
        r = server => r.map_err(|e| ServerError::Serve { what: "serving HTTP", source: e.into() })?,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            eprintln!("petty: grace period ({} s) over; dropping calls still running", grace.as_secs());
        }
    }
    signal_task.abort();
    if let Some(t) = e2b_task {
        t.abort();
    }
    shutdown(&service, config.server.on_shutdown).await;
    Ok(())
}

/// Serves MCP over stdin/stdout until the client closes stdin or a signal
/// arrives, then keeps or destroys sandboxes as `server.on_shutdown` says.
/// No warm pool: the daemon keeps one; this creates from templates.
pub async fn serve_stdio(service: Service) -> Result<(), ServerError> {
    let on_shutdown = service.config().server.on_shutdown;
    let mcp = PettyMcp::new(service.clone(), mcp::Transport::Stdio);
    let running = mcp
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServerError::Serve {
            what: "starting MCP on stdio",
            source: e.into(),
        })?;
    // The client closing stdin (or being killed) ends the session, as a
    // signal does; either way its sandboxes go, unless they were kept.
    let served = tokio::select! {
        r = running.waiting() => r.map(|_| ()).map_err(|e| ServerError::Serve {
            what: "serving MCP on stdio",
            source: e.into(),
        }),
        _ = wait_for_signal() => Ok(()),
    };
    mcp.end_session().await;
    drop(mcp);
    shutdown(&service, on_shutdown).await;
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
    // A build still running goes (its build sandbox with it).
    service.cancel_build().await;
    if let Some(pool) = service.pool() {
        if let Err(e) = pool.shutdown().await {
            eprintln!("petty: emptying the warm pool: {e}");
        }
    }
    service.stop_warm_pools().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_origin_settings_are_checked_naming_the_key() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "server.allowed_origins",
                &["app.example.com"],
                "server.allowed_origins: \"app.example.com\" has no scheme",
            ),
            (
                "server.allowed_origins",
                &["null"],
                "server.allowed_origins",
            ),
            (
                "server.allowed_hosts",
                &["*"],
                "server.allowed_hosts: \"*\" is a wildcard",
            ),
            (
                "server.allowed_hosts",
                &["petty.internal:8080"],
                "server.allowed_hosts",
            ),
        ];
        for (key, values, want) in cases {
            let mut s = Settings::default();
            let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            match *key {
                "server.allowed_origins" => s.server.allowed_origins = list,
                _ => s.server.allowed_hosts = list,
            }
            let e = check_settings(&s).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{values:?}: {e:?} should mention {want:?}"
            );
        }
        let mut s = Settings::default();
        s.server.allowed_hosts = vec!["petty.internal".into()];
        s.server.allowed_origins = vec!["https://app.example.com".into()];
        check_settings(&s).unwrap();
    }
}
