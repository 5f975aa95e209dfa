//! The REST API under `/v1`, its OpenAPI document, and the HTTP plumbing
//! around it: auth, body limits, JSON errors, health, readiness, metrics.
//! File contents stream both ways: a download from the guest as the client
//! reads it, an upload into the guest as it arrives (that route is not
//! held to `server.max_body_mib` but to `limits.max_upload_mib`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use petty_core::ExecEvent;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::background;
use crate::error::{ApiError, ErrorKind};
use crate::service::{
    BranchView, CreateSpec, EntryView, ExecSpec, ExecView, LifetimeSpec, PoolView, PublishSpec,
    Requester, SandboxView, Service, SnapshotView,
};
use crate::stats::{ReleaseView, SandboxMetricsView, StatsView};
use crate::templates::{BuildLine, BuildTemplateSpec, TemplateView};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The operations.
    pub service: Service,
    /// Set once SIGTERM arrived: `/readyz` answers 503.
    pub shutting_down: Arc<AtomicBool>,
}

/// An error as every route returns it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable kind: `bad_request`, `not_a_regular_file`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `too_large`, `capacity`,
    /// `insufficient_storage`, `agent_error`, `unavailable`, `internal`;
    /// from the request guard, `unsupported_media_type` (415),
    /// `misdirected_host` (421) and `forbidden_origin` (403).
    pub kind: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            Json(ErrorBody {
                kind: self.kind.as_str().into(),
                message: self.message,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn kind_for(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        413 => ErrorKind::TooLarge,
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    }
}

/// A JSON body; an empty body reads as `{}`. Malformed JSON, unknown
/// fields and wrong types are 400s that say what was wrong; too big is 413.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(Self).map_err(|e| {
            ApiError::bad_request(format!(
                "request body is not valid JSON for this route: {e}"
            ))
        })
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        let status = rej.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than this server accepts (server.max_body_mib); send less"
                .to_string()
        } else {
            rej.body_text()
        };
        ApiError::with_status(status.as_u16(), kind_for(status), message)
    })
}

/// Query parameters, with 400s that name the parameter.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// Body of the exec routes: `command` (a shell line) or `argv`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequestBody {
    /// A shell command line, run with `/bin/sh -c`.
    pub command: Option<String>,
    /// An argv, run directly (instead of `command`).
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/root`).
    pub cwd: Option<String>,
    /// Text for the command's stdin.
    pub stdin: Option<String>,
    /// Bytes for the command's stdin, base64 (instead of `stdin`).
    pub stdin_base64: Option<String>,
    /// Kill the command's process group after this many seconds (default `defaults.exec_timeout_secs`).
    pub timeout_secs: Option<f64>,
}

impl ExecRequestBody {
    fn into_spec(self) -> Result<ExecSpec, ApiError> {
        let stdin = match (self.stdin, self.stdin_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give stdin or stdin_base64, not both",
                ))
            }
            (Some(s), None) => Some(s.into_bytes()),
            (None, Some(b)) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| ApiError::bad_request(format!("stdin_base64: {e}")))?,
            ),
            (None, None) => None,
        };
        Ok(ExecSpec {
            command: self.command,
            argv: self.argv,
            env: self.env,
            cwd: self.cwd,
            stdin,
            timeout_secs: self.timeout_secs,
        })
    }
}

/// Body of `POST /v1/sandboxes/{id}/code`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeRequest {
    /// `python`, `bash` or `sh`.
    pub language: String,
    /// The program text.
    pub code: String,
    /// Kill it after this many seconds.
    pub timeout_secs: Option<f64>,
}

/// `?path=` of the file routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// Absolute path in the guest.
    pub path: String,
}

/// `?path=&max_size=&no_limit=` of `GET .../files/content`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DownloadQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Largest file this call sends, in bytes (default `limits.max_download_mib`).
    pub max_size: Option<u64>,
    /// Send the file whatever its size.
    #[serde(default)]
    pub no_limit: bool,
}

/// `?path=&recursive=` of `DELETE .../files`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Remove a non-empty directory and everything in it.
    #[serde(default)]
    pub recursive: bool,
}

/// Body of `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Name for the snapshot (letters, digits, `-_.`).
    pub name: String,
}

/// Body of `POST /v1/snapshots/{name}/restore`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Name for the new sandbox.
    pub name: Option<String>,
}

/// Body of the fork routes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many children (1 to 64).
    pub count: usize,
}

/// Body of the branch route.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    /// Name for the snapshot taken.
    pub name: String,
    /// How many children (1 to 64).
    pub count: usize,
}

/// One line of the streaming exec response (`application/x-ndjson`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecStreamLine {
    /// Output on stdout, as it came (UTF-8; a character split across chunks is held back until whole).
    Stdout {
        /// The text.
        data: String,
    },
    /// Output on stderr.
    Stderr {
        /// The text.
        data: String,
    },
    /// The command ended; the last line.
    Exit {
        /// Exit code (128+N for signal N, 124 on timeout).
        exit_code: i32,
        /// True when the timeout killed it.
        timed_out: bool,
    },
    /// The stream broke; the last line.
    Error {
        /// Error kind.
        kind: String,
        /// What happened.
        message: String,
    },
}

/// `/readyz` and `/healthz` bodies.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or why not.
    pub status: String,
    /// Sandboxes with a VM.
    pub sandboxes: usize,
    /// `limits.max_concurrent_sandboxes`.
    pub capacity: usize,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Petty",
        description = "Sandboxes for AI agents: each one a microVM with its own kernel. \
            Every route but /healthz and /readyz takes `Authorization: Bearer <key>` when the server has keys. \
            Every POST and PUT sends `Content-Type: application/json` (the file upload: `application/octet-stream`), \
            body or not (415 otherwise); a Host that is not this server gets 421, an Origin not in server.allowed_origins 403. \
            Sandboxes are addressed by id or name.",
    ),
    paths(
        create_sandbox, list_sandboxes, get_sandbox, delete_sandbox, set_lifetime,
        publish_port, network_status,
        exec, exec_stream, run_code,
        background::start_process, background::list_processes, background::get_process,
        background::kill_process, background::process_output, background::follow_process,
        background::process_input, background::resize_process, background::signal_process,
        list_files, remove_file, download_file, upload_file, make_dir,
        snapshot_sandbox, fork_sandbox, branch_sandbox, list_snapshots, get_snapshot, delete_snapshot,
        restore_snapshot, fork_snapshot,
        list_templates, build_template, get_template, delete_template,
        pool_stats, sandbox_metrics, release_sandbox, stop_sandbox, start_sandbox,
        hibernate_sandbox, resume_sandbox, stats, crate::node::node_info, crate::node::drain, crate::node::export_template, crate::node::import_template,
        healthz, readyz, metrics,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The REST routes, health, metrics and OpenAPI (not yet authenticated).
pub fn routes(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/v1/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox).delete(delete_sandbox),
        )
        .route("/v1/sandboxes/{id}/lifetime", post(set_lifetime))
        .route("/v1/sandboxes/{id}/ports", post(publish_port))
        .route("/v1/sandboxes/{id}/network", get(network_status))
        .route("/v1/sandboxes/{id}/metrics", get(sandbox_metrics))
        .route("/v1/sandboxes/{id}/release", post(release_sandbox))
        .route("/v1/sandboxes/{id}/stop", post(stop_sandbox))
        .route("/v1/sandboxes/{id}/start", post(start_sandbox))
        .route("/v1/sandboxes/{id}/hibernate", post(hibernate_sandbox))
        .route("/v1/sandboxes/{id}/resume", post(resume_sandbox))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/stream", post(exec_stream))
        .route("/v1/sandboxes/{id}/code", post(run_code))
        .route(
            "/v1/sandboxes/{id}/processes",
            post(background::start_process).get(background::list_processes),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}",
            get(background::get_process).delete(background::kill_process),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/output",
            get(background::process_output),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/stream",
            get(background::follow_process),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/input",
            post(background::process_input),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/resize",
            post(background::resize_process),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/signal",
            post(background::signal_process),
        )
        .route(
            "/v1/sandboxes/{id}/files",
            get(list_files).delete(remove_file),
        )
        .route(
            "/v1/sandboxes/{id}/files/content",
            get(download_file).put(upload_file),
        )
        .route("/v1/sandboxes/{id}/directories", post(make_dir))
        .route("/v1/sandboxes/{id}/snapshots", post(snapshot_sandbox))
        .route("/v1/sandboxes/{id}/fork", post(fork_sandbox))
        .route("/v1/sandboxes/{id}/branch", post(branch_sandbox))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{name}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/snapshots/{name}/restore", post(restore_snapshot))
        .route("/v1/snapshots/{name}/fork", post(fork_snapshot))
        .route("/v1/templates", get(list_templates).post(build_template))
        .route(
            "/v1/templates/{name}",
            get(get_template).delete(delete_template),
        )
        .route("/v1/pool", get(pool_stats))
        .route("/v1/stats", get(stats))
        .route("/v1/node", get(crate::node::node_info))
        .route("/v1/node/drain", post(crate::node::drain))
        .route(
            "/v1/templates/{name}/image",
            get(crate::node::export_template).put(crate::node::import_template),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .fallback(|| async {
            ApiError::new(
                ErrorKind::NotFound,
                "no such route; GET /openapi.json lists them",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Bearer-key check for everything but `/healthz` and `/readyz`: 401
/// without a key, 403 with a wrong one.
pub async fn require_key(keys: Arc<Vec<String>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if keys.is_empty() || path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match given {
        None => ApiError::new(
            ErrorKind::Unauthorized,
            "this server needs an API key: send `Authorization: Bearer <key>`",
        )
        .into_response(),
        Some(k)
            if keys
                .iter()
                .any(|want| constant_time_eq(want.as_bytes(), k.trim().as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => {
            ApiError::new(ErrorKind::Forbidden, "this API key is not accepted").into_response()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type ApiJson<T> = Result<Json<T>, ApiError>;

/// Create a sandbox (from the warm pool when the request asks for the defaults).
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSpec,
    responses(
        (status = 201, description = "Created and ready", body = SandboxView),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 429, description = "At max_concurrent_sandboxes", body = ErrorBody),
    ))]
async fn create_sandbox(
    State(s): State<AppState>,
    JsonBody(spec): JsonBody<CreateSpec>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.service.create(spec, &Requester::rest()).await?),
    ))
}

/// List sandboxes.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, body = Vec<SandboxView>)))]
async fn list_sandboxes(State(s): State<AppState>) -> ApiJson<Vec<SandboxView>> {
    Ok(Json(s.service.list().await?))
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody)))]
async fn get_sandbox(State(s): State<AppState>, Path(id): Path<String>) -> ApiJson<SandboxView> {
    Ok(Json(s.service.get(&id).await?))
}

/// Destroy a sandbox: its VM, disk and record.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 204, description = "Destroyed"), (status = 404, body = ErrorBody)))]
async fn delete_sandbox(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.service.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Extend or shorten a sandbox's life: `ttl_secs` from now (0: no TTL),
/// `idle_timeout_secs` (0: none).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/lifetime", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = LifetimeSpec,
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_lifetime(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<LifetimeSpec>,
) -> ApiJson<SandboxView> {
    Ok(Json(s.service.set_lifetime(&id, spec).await?))
}

/// Publish a port of a running networked sandbox on the host (the server's
/// network.publish_address, 127.0.0.1 unless configured).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/ports", tag = "network",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = PublishSpec,
    responses((status = 200, body = SandboxView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn publish_port(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<PublishSpec>,
) -> ApiJson<SandboxView> {
    Ok(Json(s.service.publish(&id, spec).await?))
}

/// What a sandbox's network did: connections made, open and refused, names
/// answered and refused, bytes each way, the latest refusals.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/network", tag = "network",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn network_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiJson<serde_json::Value> {
    Ok(Json(s.service.network_status(&id).await?))
}

/// What a sandbox costs and does now: how it started and how long that
/// took, its VMM's host memory (RSS, PSS) and CPU, the guest's own memory,
/// its disk, the commands run in it and its network traffic. Reading it is
/// not a use (idle timeouts go on counting).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = SandboxMetricsView), (status = 404, body = ErrorBody)))]
async fn sandbox_metrics(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiJson<SandboxMetricsView> {
    Ok(Json(s.service.sandbox_metrics(&id).await?))
}

/// Give a sandbox back to the warm pool it came from: it is destroyed (its
/// files and processes go with it, its id is not used again) and the pool
/// restores a fresh one from the template in its place. 409 when no pool
/// makes sandboxes like it.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/release", tag = "pool",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = ReleaseView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn release_sandbox(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiJson<ReleaseView> {
    Ok(Json(s.service.release(&id).await?))
}

/// Shut a sandbox down cleanly: its record and disk stay (it holds no
/// memory, CPU or slot of the limit) for `POST .../start`, until DELETE.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn stop_sandbox(State(s): State<AppState>, Path(id): Path<String>) -> ApiJson<SandboxView> {
    Ok(Json(s.service.stop(&id).await?))
}

/// Boot a stopped sandbox again on the disk its stop kept: every file it
/// had, none of its processes; its lifetimes count from now.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn start_sandbox(State(s): State<AppState>, Path(id): Path<String>) -> ApiJson<SandboxView> {
    Ok(Json(s.service.start(&id).await?))
}

/// Save a sandbox's memory, devices and disk to the data directory and end
/// its VM; it holds no memory, CPU or slot until resumed (any request for
/// it resumes it first).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/hibernate", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn hibernate_sandbox(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiJson<SandboxView> {
    Ok(Json(s.service.hibernate(&id).await?))
}

/// Bring a hibernated sandbox back exactly as it was (or let a paused one
/// run again).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn resume_sandbox(State(s): State<AppState>, Path(id): Path<String>) -> ApiJson<SandboxView> {
    Ok(Json(s.service.resume(&id).await?))
}

/// The daemon's totals: sandboxes by state and by how they started,
/// creates and their success rate and mean time, commands run and their
/// rate, and the warm pool's figures.
#[utoipa::path(get, path = "/v1/stats", tag = "ops",
    responses((status = 200, body = StatsView)))]
async fn stats(State(s): State<AppState>) -> ApiJson<StatsView> {
    Ok(Json(s.service.stats().await?))
}

/// Run a command to completion.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "exec",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = ExecRequestBody,
    responses((status = 200, body = ExecView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequestBody>,
) -> ApiJson<ExecView> {
    Ok(Json(s.service.exec(&id, req.into_spec()?).await?))
}

/// Run a command, streaming its output as newline-delimited JSON
/// ([`ExecStreamLine`] per line) as it comes; the last line is `exit` or `error`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec/stream", tag = "exec",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = ExecRequestBody,
    responses((status = 200, content_type = "application/x-ndjson", body = ExecStreamLine), (status = 404, body = ErrorBody)))]
async fn exec_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ExecRequestBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut stream = s.service.exec_stream(&id, req.into_spec()?).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let service = s.service.clone();
    let span = tracing::info_span!("exec_stream", sandbox = %id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut out = Utf8Carry::default();
            let mut err = Utf8Carry::default();
            loop {
                let (line, last) = match stream.next().await {
                    Ok(ExecEvent::Stdout(b)) => {
                        (ExecStreamLine::Stdout { data: out.push(&b) }, false)
                    }
                    Ok(ExecEvent::Stderr(b)) => {
                        (ExecStreamLine::Stderr { data: err.push(&b) }, false)
                    }
                    Ok(ExecEvent::Exit(status)) => {
                        let _ = service.exec_stream_done(started, Ok(()));
                        tracing::info!(exit_code = status.code, "exec stream ended");
                        (
                            ExecStreamLine::Exit {
                                exit_code: status.code,
                                timed_out: status.timed_out,
                            },
                            true,
                        )
                    }
                    Err(e) => {
                        let api = service
                            .exec_stream_done(started, Err(e))
                            .expect_err("an error stays one");
                        let line = ExecStreamLine::Error {
                            kind: api.kind.as_str().into(),
                            message: api.message,
                        };
                        (line, true)
                    }
                };
                let mut buf = serde_json::to_vec(&line).expect("plain data");
                buf.push(b'\n');
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    // The client went away: stop the command rather than let it run on.
                    tracing::info!("exec stream client gone; killing the command");
                    let _ = stream.signal(libc::SIGKILL).await;
                    return;
                }
                if last {
                    return;
                }
            }
        },
        span,
    ));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Holds back a UTF-8 character split across output chunks.
#[derive(Default)]
pub(crate) struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> String {
        self.0.extend_from_slice(chunk);
        let keep = match std::str::from_utf8(&self.0) {
            Ok(_) => 0,
            // An incomplete sequence at the very end: wait for the rest.
            Err(e) if e.error_len().is_none() => self.0.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let tail = self.0.split_off(self.0.len() - keep);
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0 = tail;
        text
    }
}

/// Run code in a language's interpreter.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code", tag = "exec",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = RunCodeRequest,
    responses((status = 200, body = ExecView), (status = 400, body = ErrorBody)))]
async fn run_code(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RunCodeRequest>,
) -> ApiJson<ExecView> {
    Ok(Json(
        s.service
            .run_code(&id, &req.language, &req.code, req.timeout_secs)
            .await?,
    ))
}

/// List a directory.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), PathQuery),
    responses((status = 200, body = Vec<EntryView>), (status = 404, body = ErrorBody)))]
async fn list_files(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<PathQuery>,
) -> ApiJson<Vec<EntryView>> {
    Ok(Json(s.service.list_files(&id, &q.path).await?))
}

/// Delete a file or directory.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), RemoveQuery),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody)))]
async fn remove_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    s.service.remove_file(&id, &q.path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a regular file's bytes, streamed from the guest. Devices,
/// FIFOs and sockets are refused (400 `not_a_regular_file`); past the size
/// limit (`limits.max_download_mib`, or `max_size`) it is a 413 before the
/// first byte when the file's size says so, and a broken-off body if the
/// guest sends more than it said.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/content", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), DownloadQuery),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "A directory, device, FIFO or socket", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, description = "Larger than the download's limit", body = ErrorBody),
    ))]
async fn download_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<DownloadQuery>,
) -> Result<Response, ApiError> {
    let limit = match (q.max_size, q.no_limit) {
        (Some(_), true) => {
            return Err(ApiError::bad_request("give max_size or no_limit, not both"))
        }
        (Some(n), false) => Some(n),
        (None, true) => None,
        (None, false) => Some(
            s.service
                .config()
                .limits
                .max_download_mib
                .saturating_mul(1 << 20),
        ),
    };
    let chunks = s.service.read_file_stream(&id, &q.path, limit).await?;
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(chunks));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Upload a file: the request body is the file's bytes (no base64),
/// streamed into the guest as it arrives. The file appears whole or not at
/// all. Past `limits.max_upload_mib` it is a 413, a full sandbox disk a
/// 507; either way nothing is written.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/content", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), PathQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "The target is a directory, device, FIFO or socket", body = ErrorBody),
        (status = 413, description = "Larger than limits.max_upload_mib", body = ErrorBody),
        (status = 507, description = "The sandbox's disk is full", body = ErrorBody),
    ))]
async fn upload_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<PathQuery>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    use tokio_stream::StreamExt as _;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut reader = tokio_util::io::StreamReader::new(body);
    let written = s
        .service
        .write_file_stream(&id, &q.path, &mut reader, declared)
        .await;
    if written.is_err() {
        // Read (and drop) what the client is still sending, so it can read
        // the error rather than meet a closed connection; bounded, so a
        // huge upload refused early is not read to its end.
        const DRAIN: u64 = 256 << 20;
        let mut rest = tokio::io::AsyncReadExt::take(&mut reader, DRAIN);
        let mut sink = tokio::io::sink();
        let drain = tokio::io::copy(&mut rest, &mut sink);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    }
    written?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a directory and its parents.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/directories", tag = "files",
    params(("id" = String, Path, description = "Sandbox id or name"), PathQuery),
    responses((status = 201, description = "Created"), (status = 404, body = ErrorBody)))]
async fn make_dir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<PathQuery>,
) -> Result<StatusCode, ApiError> {
    s.service.mkdir(&id, &q.path).await?;
    Ok(StatusCode::CREATED)
}

/// Snapshot a running sandbox (memory, devices, disk); it runs on.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = SnapshotRequest,
    responses((status = 201, body = SnapshotView), (status = 409, body = ErrorBody)))]
async fn snapshot_sandbox(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.service.snapshot(&id, &req.name).await?),
    ))
}

/// Fork a running sandbox into `count` children (snapshotted first).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = ForkRequest,
    responses((status = 201, body = Vec<SandboxView>), (status = 429, body = ErrorBody)))]
async fn fork_sandbox(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ForkRequest>,
) -> Result<(StatusCode, Json<Vec<SandboxView>>), ApiError> {
    s.service.get(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(s.service.fork(&id, req.count, &Requester::rest()).await?),
    ))
}

/// Snapshot a running sandbox and start `count` children from the
/// snapshot, in one call.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/branch", tag = "snapshots",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = BranchRequest,
    responses((status = 201, body = BranchView), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn branch_sandbox(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<BranchRequest>,
) -> Result<(StatusCode, Json<BranchView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.service
                .branch(&id, &req.name, req.count, &Requester::rest())
                .await?,
        ),
    ))
}

/// List snapshots.
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots",
    responses((status = 200, body = Vec<SnapshotView>)))]
async fn list_snapshots(State(s): State<AppState>) -> ApiJson<Vec<SnapshotView>> {
    Ok(Json(s.service.list_snapshots().await?))
}

/// One snapshot.
#[utoipa::path(get, path = "/v1/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "Snapshot name")),
    responses((status = 200, body = SnapshotView), (status = 404, body = ErrorBody)))]
async fn get_snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiJson<SnapshotView> {
    Ok(Json(s.service.get_snapshot(&name).await?))
}

/// Delete a snapshot; refused (409) while a sandbox or snapshot depends on it.
#[utoipa::path(delete, path = "/v1/snapshots/{name}", tag = "snapshots",
    params(("name" = String, Path, description = "Snapshot name")),
    responses((status = 204, description = "Deleted"), (status = 409, body = ErrorBody)))]
async fn delete_snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.service.delete_snapshot(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a new sandbox from a snapshot.
#[utoipa::path(post, path = "/v1/snapshots/{name}/restore", tag = "snapshots",
    params(("name" = String, Path, description = "Snapshot name")),
    request_body = RestoreRequest,
    responses((status = 201, body = SandboxView), (status = 404, body = ErrorBody)))]
async fn restore_snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<RestoreRequest>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(
            s.service
                .restore(&name, req.name.as_deref(), &Requester::rest())
                .await?,
        ),
    ))
}

/// Start `count` new sandboxes from a snapshot.
#[utoipa::path(post, path = "/v1/snapshots/{name}/fork", tag = "snapshots",
    params(("name" = String, Path, description = "Snapshot name")),
    request_body = ForkRequest,
    responses((status = 201, body = Vec<SandboxView>), (status = 404, body = ErrorBody)))]
async fn fork_snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ForkRequest>,
) -> Result<(StatusCode, Json<Vec<SandboxView>>), ApiError> {
    s.service.get_snapshot(&name).await?;
    Ok((
        StatusCode::CREATED,
        Json(s.service.fork(&name, req.count, &Requester::rest()).await?),
    ))
}

/// List templates (`base`, Petty's own image, is not listed).
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, body = Vec<TemplateView>)))]
async fn list_templates(State(s): State<AppState>) -> ApiJson<Vec<TemplateView>> {
    Ok(Json(s.service.list_templates().await?))
}

/// One template.
#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, body = TemplateView), (status = 404, body = ErrorBody)))]
async fn get_template(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiJson<TemplateView> {
    Ok(Json(s.service.get_template(&name).await?))
}

/// Remove a template and its image; refused (409) while a sandbox or
/// snapshot uses it. This server's warm sandboxes of it (`templates.warm`)
/// are emptied first.
#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "In use", body = ErrorBody),
    ))]
async fn delete_template(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.service.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Output a slow client has not read yet beyond which further step output
/// is dropped (and counted in a note); steps and notes are always sent.
const BUILD_BACKLOG: usize = 8 << 20;

/// Build a template from a Dockerfile's text (`dockerfile`, with an
/// optional `context` directory on the server's host, `build_args`,
/// `no_cache`) or an OCI image (`from_image`), streaming its progress as
/// newline-delimited JSON ([`BuildLine`] per line) as it goes; the last
/// line is `done` (with the template) or `error`. One build runs at a
/// time: another waits (a `note` says so). A client that goes away gives
/// the build up (its build sandbox is removed; finished steps stay
/// cached). Bad input is a 400 before anything runs.
#[utoipa::path(post, path = "/v1/templates", tag = "templates",
    request_body = BuildTemplateSpec,
    responses(
        (status = 200, content_type = "application/x-ndjson", body = BuildLine),
        (status = 400, description = "Bad name, Dockerfile, context or image reference", body = ErrorBody),
        (status = 503, description = "This server builds no templates", body = ErrorBody),
    ))]
async fn build_template(
    State(s): State<AppState>,
    JsonBody(spec): JsonBody<BuildTemplateSpec>,
) -> Result<Response, ApiError> {
    use std::sync::atomic::AtomicUsize;
    use tokio_stream::StreamExt as _;
    let plan = s.service.check_build(spec)?;
    // Unbounded in lines, bounded in bytes: the builder reports from
    // inside its steps and cannot wait for a slow client.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let backlog = Arc::new(AtomicUsize::new(0));
    let service = s.service.clone();
    let span = tracing::info_span!("template_build", template = %plan.name());
    let queued = backlog.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let dropped = AtomicUsize::new(0);
            let send = |line: &BuildLine| {
                let mut buf = serde_json::to_vec(line).expect("plain data");
                buf.push(b'\n');
                queued.fetch_add(buf.len(), Ordering::Relaxed);
                let _ = tx.send(Bytes::from(buf));
            };
            let progress = |line: BuildLine| {
                if let BuildLine::Output { data, .. } = &line {
                    if queued.load(Ordering::Relaxed) > BUILD_BACKLOG {
                        dropped.fetch_add(data.len(), Ordering::Relaxed);
                        return;
                    }
                }
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    send(&BuildLine::Note {
                        message: format!(
                            "{lost} bytes of step output dropped: the client read too slowly"
                        ),
                    });
                }
                send(&line);
            };
            let build = service.build_template(plan, &progress);
            let last = tokio::select! {
                r = build => match r {
                    Ok(template) => BuildLine::Done { template },
                    Err(e) => BuildLine::Error { kind: e.kind.as_str().into(), message: e.message },
                },
                // The client went away: dropping the build gives it up.
                _ = tx.closed() => {
                    tracing::info!("template build client gone; giving the build up");
                    return;
                }
            };
            send(&last);
        },
        span,
    ));
    let body = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |b| {
        backlog.fetch_sub(b.len(), Ordering::Relaxed);
        Ok::<_, Infallible>(b)
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Warm pool figures: the base image's (`pool.size`) and, in `templates`,
/// each `templates.warm` template's.
#[utoipa::path(get, path = "/v1/pool", tag = "pool", responses((status = 200, body = PoolView)))]
async fn pool_stats(State(s): State<AppState>) -> Json<PoolView> {
    Json(s.service.pool_stats())
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "Alive")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when the state database answers and the daemon is not
/// shutting down; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    let capacity = s.service.config().limits.max_concurrent_sandboxes;
    if s.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "shutting down".into(),
                sandboxes: 0,
                capacity,
            }),
        );
    }
    match s.service.manager().count().await {
        Ok(n) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
                sandboxes: n,
                capacity,
            }),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: format!("state database: {e}"),
                sandboxes: 0,
                capacity,
            }),
        ),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let text = s.service.render_metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_held_back() {
        let mut c = Utf8Carry::default();
        let snow = "☃".as_bytes();
        assert_eq!(c.push(&[b'a', snow[0]]), "a");
        assert_eq!(c.push(&snow[1..]), "☃");
        assert_eq!(c.push(&[0xff, b'b']), "\u{fffd}b");
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/sandboxes",
            "/v1/sandboxes/{id}",
            "/v1/sandboxes/{id}/lifetime",
            "/v1/sandboxes/{id}/exec",
            "/v1/sandboxes/{id}/exec/stream",
            "/v1/sandboxes/{id}/code",
            "/v1/sandboxes/{id}/files",
            "/v1/sandboxes/{id}/files/content",
            "/v1/sandboxes/{id}/directories",
            "/v1/sandboxes/{id}/snapshots",
            "/v1/sandboxes/{id}/fork",
            "/v1/sandboxes/{id}/branch",
            "/v1/snapshots",
            "/v1/snapshots/{name}",
            "/v1/snapshots/{name}/restore",
            "/v1/snapshots/{name}/fork",
            "/v1/templates",
            "/v1/templates/{name}",
            "/v1/pool",
            "/v1/stats",
            "/v1/sandboxes/{id}/metrics",
            "/v1/sandboxes/{id}/release",
            "/v1/sandboxes/{id}/stop",
            "/v1/sandboxes/{id}/start",
            "/v1/sandboxes/{id}/hibernate",
            "/v1/sandboxes/{id}/resume",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(doc["components"]["schemas"]["ExecRequestBody"].is_object());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
