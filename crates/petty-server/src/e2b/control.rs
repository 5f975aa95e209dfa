//! E2B's control plane (`E2B_API_URL`): the shapes E2B's SDK 2.63 sends
//! and parses, mapped onto Petty's operations. A sandbox's `sandboxID` is
//! its Petty id; `templateID` is `base` (and E2B's own template names,
//! which mean Petty's image), a Petty template or a snapshot (restored, as
//! E2B's snapshots are used); `timeout` is its TTL from now; `pause` is a
//! hibernation and `connect` resumes it (or starts a stopped one), with a
//! fresh timeout. `autoPause` makes the TTL's expiry a hibernation (with
//! `autoPauseMemory: false`, a stop that keeps the disk) rather than a
//! destroy: the core's per-sandbox `on_expiry`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{E2b, E2bError, Extra, ENVD_VERSION};
use crate::service::{CreateSpec, LifetimeSpec, Requester, SandboxView};
use petty_core::IdleAction;

/// The timeout E2B gives a sandbox that names none (create, and a connect
/// that brings one back).
const DEFAULT_TIMEOUT: u64 = 300;

type Result<T> = std::result::Result<T, E2bError>;

pub(super) fn routes() -> Router<Arc<E2b>> {
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/sandboxes/{id}/snapshots", post(snapshot))
        .route("/snapshots", get(list_snapshots))
        .route("/templates/{id}", axum::routing::delete(delete_snapshot))
}

/// E2B's requester: its sandboxes live by their `timeout`.
fn e2b_requester() -> Requester {
    Requester {
        owner: "e2b".into(),
        session: false,
    }
}

/// E2B's names for the image every E2B sandbox starts from.
fn is_base(template: &str) -> bool {
    matches!(
        template,
        "base" | "code-interpreter-v1" | "code-interpreter" | "code-interpreter-beta"
    )
}

/// A sandbox as create and connect answer it.
fn sandbox_json(e2b: &E2b, view: &SandboxView, template_id: &str) -> Value {
    json!({
        "templateID": template_id,
        "sandboxID": view.id,
        "clientID": "petty",
        "alias": template_id,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": e2b.token(&view.id),
        "trafficAccessToken": e2b.token(&view.id),
        "domain": e2b.domain(),
    })
}

/// RFC 3339 (UTC, seconds) of `ms` since the epoch.
pub(super) fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// E2B's two states: a sandbox that runs, and one put away (hibernated,
/// paused or stopped: `connect` brings each back). Others are not listed.
fn e2b_state(state: &str) -> Option<&'static str> {
    match state {
        "ready" | "creating" => Some("running"),
        "hibernated" | "paused" | "stopped" => Some("paused"),
        _ => None,
    }
}

/// A sandbox as get and list answer it.
fn detail_json(e2b: &E2b, view: &SandboxView) -> Value {
    let extra = e2b.extra(&view.id);
    let ends = view
        .expires_at_ms
        .unwrap_or(view.created_at_ms + 365 * 86_400_000);
    json!({
        "templateID": extra.template_id,
        "alias": extra.template_id,
        "sandboxID": view.id,
        "clientID": "petty",
        "startedAt": rfc3339(view.created_at_ms),
        "endAt": rfc3339(ends),
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": e2b.token(&view.id),
        "cpuCount": view.vcpu,
        "memoryMB": view.memory_mb,
        "diskSizeMB": view.disk_bytes.map_or(0, |b| b >> 20),
        "state": e2b_state(&view.state).unwrap_or("paused"),
        "metadata": extra.metadata,
        "allowInternetAccess": view.network.as_ref().is_some_and(|n| n.mode == "public"),
        "domain": e2b.domain(),
        "lifecycle": {
            "onTimeout": if extra.auto_pause { "pause" } else { "kill" },
            "autoResume": extra.auto_resume,
        },
    })
}

/// Lets sandbox `id` live `secs` from now; with `no_idle`, with no idle
/// timeout (E2B's sandboxes have none).
async fn live_for(e2b: &E2b, id: &str, secs: u64, no_idle: bool) -> Result<SandboxView> {
    let spec = LifetimeSpec {
        ttl_secs: Some(secs),
        idle_timeout_secs: no_idle.then_some(0),
    };
    Ok(e2b.service.set_lifetime(id, spec).await?)
}

fn not_found(id: &str) -> E2bError {
    E2bError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
}

/// The view of sandbox `id`, 404 in E2B's shape when there is none.
async fn view(e2b: &E2b, id: &str) -> Result<SandboxView> {
    e2b.service.get(id).await.map_err(|e| {
        if e.kind == crate::error::ErrorKind::NotFound {
            not_found(id)
        } else {
            e.into()
        }
    })
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(E2bError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{what}.{k} must be a string, not {other}"),
                )),
            })
            .collect(),
        Some(other) => Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} must be an object of strings, not {other}"),
        )),
    }
}

/// A sandbox put away: hibernated or stopped (no VM: no lifetime to set
/// until it is brought back).
fn put_away(view: &SandboxView) -> bool {
    matches!(view.state.as_str(), "hibernated" | "stopped")
}

/// A boolean field of a create's body, if given.
fn flag(body: &Value, name: &str) -> Result<Option<bool>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            format!("{name} must be true or false, not {other}"),
        )),
    }
}

/// What a create's `autoPause` asks the TTL's expiry to do: hibernate
/// (memory kept), or with `autoPauseMemory: false` stop (the disk kept, a
/// cold boot on connect); `None`: destroy, as without it.
fn on_expiry_of(body: &Value) -> Result<Option<IdleAction>> {
    let memory = flag(body, "autoPauseMemory")?.unwrap_or(true);
    Ok(match flag(body, "autoPause")? {
        Some(true) if memory => Some(IdleAction::Hibernate),
        Some(true) => Some(IdleAction::Stop),
        _ => None,
    })
}

/// `autoResume`: `{"enabled": bool}` (or a bare bool).
fn auto_resume_of(body: &Value) -> Result<bool> {
    match body.get("autoResume") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Object(m)) => match m.get("enabled") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(E2bError::new(
                StatusCode::BAD_REQUEST,
                format!("autoResume.enabled must be true or false, not {other}"),
            )),
        },
        Some(other) => Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            format!("autoResume must be {{\"enabled\": true|false}}, not {other}"),
        )),
    }
}

/// Sets what `id`'s TTL does at its end, then the TTL itself (`secs` from
/// now), in that order so the reaper never sees the one without the
/// other.
async fn arm(e2b: &E2b, id: &str, on_expiry: Option<IdleAction>, secs: u64) -> Result<SandboxView> {
    if on_expiry.is_some() {
        e2b.service
            .manager()
            .set_on_expiry(id, on_expiry)
            .await
            .map_err(|e| e2b.service.fail(e))?;
    }
    live_for(e2b, id, secs, true).await
}

fn timeout_of(body: &Value) -> Result<Option<u64>> {
    match body.get("timeout") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            E2bError::new(
                StatusCode::BAD_REQUEST,
                format!("timeout must be a whole number of seconds, not {v}"),
            )
        }),
    }
}

/// `POST /v2/sandboxes` (and `/sandboxes`): 201 with the new sandbox.
async fn create(State(e2b): State<Arc<E2b>>, body: Option<Json<Value>>) -> Result<Response> {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let template = body
        .get("templateID")
        .and_then(Value::as_str)
        .unwrap_or("base")
        .to_string();
    let timeout = timeout_of(&body)?.unwrap_or(DEFAULT_TIMEOUT);
    let metadata = string_map(body.get("metadata"), "metadata")?;
    let env_vars = string_map(body.get("envVars"), "envVars")?;
    let on_expiry = on_expiry_of(&body)?;
    let auto_resume = auto_resume_of(&body)?;
    if auto_resume && on_expiry.is_none() {
        return Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            "autoResume needs autoPause: only a sandbox its timeout pauses can be resumed",
        ));
    }
    let network = match body.get("allow_internet_access").and_then(Value::as_bool) {
        Some(true) => Some("public".to_string()),
        Some(false) => Some("none".to_string()),
        None => None,
    };
    let who = e2b_requester();
    let service = &e2b.service;
    let is_snapshot = !is_base(&template) && service.get_snapshot(&template).await.is_ok();
    let made = if is_snapshot {
        service.restore(&template, None, &who).await?
    } else {
        let spec = CreateSpec {
            template: (!is_base(&template)).then(|| template.clone()),
            // With autoPause the TTL is set once its expiry's action is.
            ttl_secs: Some(if on_expiry.is_some() { 0 } else { timeout }),
            idle_timeout_secs: Some(0),
            network,
            ..CreateSpec::default()
        };
        service.create(spec, &who).await.map_err(|e| {
            if e.kind == crate::error::ErrorKind::NotFound {
                E2bError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "template {template} not found: `petty templates` lists them, or use base"
                    ),
                )
            } else {
                e.into()
            }
        })?
    };
    let view = if is_snapshot || on_expiry.is_some() {
        match arm(&e2b, &made.id, on_expiry, timeout).await {
            Ok(v) => v,
            Err(e) => {
                // Not left behind with no lifetime.
                let _ = service.destroy(&made.id).await;
                return Err(e);
            }
        }
    } else {
        made
    };
    e2b.set_extra(
        &view.id,
        Extra {
            template_id: template.clone(),
            metadata,
            env_vars,
            auto_pause: on_expiry.is_some(),
            auto_resume,
            timeout_secs: Some(timeout),
        },
    )?;
    Ok((
        StatusCode::CREATED,
        Json(sandbox_json(&e2b, &view, &template)),
    )
        .into_response())
}

/// `GET /sandboxes/{id}`.
async fn info(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Result<Json<Value>> {
    let v = view(&e2b, &id).await?;
    Ok(Json(detail_json(&e2b, &v)))
}

/// `GET /v2/sandboxes` (and `/sandboxes`): every sandbox, filtered by
/// `state` (`running,paused`) and `metadata` (`k=v&k2=v2`, url-encoded).
/// One page: no `x-next-token`.
async fn list(
    State(e2b): State<Arc<E2b>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>> {
    let states: Option<Vec<String>> = q
        .get("state")
        .map(|s| s.split(',').map(|s| s.trim().to_string()).collect());
    let wanted: Vec<(String, String)> = q
        .get("metadata")
        .map(|m| {
            url_pairs(m)
                .into_iter()
                // The SDK quotes each key and value, then url-encodes the pair.
                .map(|(k, v)| {
                    (
                        percent_decode(&percent_decode(&k)),
                        percent_decode(&percent_decode(&v)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for v in e2b.service.list().await? {
        let Some(state) = e2b_state(&v.state) else {
            continue;
        };
        if states
            .as_ref()
            .is_some_and(|s| !s.iter().any(|w| w == state))
        {
            continue;
        }
        let extra = e2b.extra(&v.id);
        if !wanted
            .iter()
            .all(|(k, want)| extra.metadata.get(k) == Some(want))
        {
            continue;
        }
        out.push(detail_json(&e2b, &v));
    }
    Ok(Json(Value::Array(out)))
}

/// `k=v&k2=v2` split (each side still percent-encoded).
fn url_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `DELETE /sandboxes/{id}`: 204, or 404.
async fn kill(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Result<StatusCode> {
    let v = view(&e2b, &id).await?;
    e2b.service.destroy(&v.id).await?;
    e2b.forget(&v.id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout` `{"timeout": SECS}`: it ends (or, with
/// `autoPause`, is paused) that long from now. A sandbox that is paused has
/// no timeout running: it keeps SECS for when a connect brings it back.
async fn set_timeout(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode> {
    let secs = timeout_of(&body)?.ok_or_else(|| {
        E2bError::new(
            StatusCode::BAD_REQUEST,
            "timeout is required: the seconds from now the sandbox may live",
        )
    })?;
    let v = view(&e2b, &id).await?;
    if !put_away(&v) {
        live_for(&e2b, &v.id, secs, false).await?;
    }
    let mut extra = e2b.extra(&v.id);
    extra.timeout_secs = Some(secs);
    e2b.set_extra(&v.id, extra)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/pause`: a hibernation (memory, processes and
/// files kept, its VM ended); 409 when it is put away already. As in E2B,
/// a paused sandbox's timeout does not run: its TTL goes, and a connect
/// gives it a fresh one.
async fn pause(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Result<StatusCode> {
    let v = view(&e2b, &id).await?;
    if e2b_state(&v.state) == Some("paused") {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    let left = v
        .expires_at_ms
        .map(|at| ((at - petty_core::store::now_ms()) / 1000).max(1) as u64);
    let no_ttl = LifetimeSpec {
        ttl_secs: Some(0),
        idle_timeout_secs: None,
    };
    e2b.service.set_lifetime(&v.id, no_ttl).await?;
    if let Err(e) = e2b.service.hibernate(&v.id).await {
        // It runs on, with the time it had.
        if let Some(secs) = left {
            let _ = live_for(&e2b, &v.id, secs, false).await;
        }
        return Err(e.into());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Brings `id` back if it is put away (hibernated, paused or stopped,
/// whether by `pause` or by its `autoPause` timeout) with a fresh timeout:
/// the one asked, else the one it was last given (E2B's sandboxes; one
/// made through Petty's own API keeps its lifetime). A running one lives
/// `timeout` more seconds when that is longer than it has left.
async fn bring_back(e2b: &E2b, id: &str, body: &Value) -> Result<SandboxView> {
    let asked = timeout_of(body)?;
    let mut v = settled(e2b, id).await?;
    let was_away = match v.state.as_str() {
        "hibernated" | "paused" => {
            v = e2b.service.resume(&v.id).await?;
            true
        }
        "stopped" => {
            v = e2b.service.start(&v.id).await?;
            true
        }
        _ => false,
    };
    let mut extra = e2b.extra(&v.id);
    if was_away {
        if let Some(secs) = asked.or(extra.timeout_secs) {
            v = live_for(e2b, &v.id, secs, false).await?;
        }
    } else if let Some(secs) = asked {
        let now = petty_core::store::now_ms();
        let wanted = now + (secs as i64) * 1000;
        if v.expires_at_ms.is_some_and(|at| at < wanted) {
            v = live_for(e2b, &v.id, secs, false).await?;
        }
    }
    if asked.is_some() && asked != extra.timeout_secs {
        extra.timeout_secs = asked;
        e2b.set_extra(&v.id, extra)?;
    }
    Ok(v)
}

/// The view of `id` once it is not between states (a hibernation its
/// timeout began, a create or resume under way): polled, at most a minute.
async fn settled(e2b: &E2b, id: &str) -> Result<SandboxView> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = view(e2b, id).await?;
        if !matches!(v.state.as_str(), "stopping" | "creating")
            || std::time::Instant::now() >= deadline
        {
            return Ok(v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Serialises the wakes `autoResume` makes: two calls into a sandbox put
/// away bring it back once.
static WAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `autoResume`: brings sandbox `id` back, with a fresh timeout, when it is
/// put away and was made with `autoResume` on (a call into it arrived).
pub(super) async fn wake_for_traffic(e2b: &E2b, id: &str) -> Result<()> {
    if !e2b.extra(id).auto_resume {
        return Ok(());
    }
    let away = |v: &SandboxView| put_away(v) || v.state == "paused";
    // Running (the common case): no wait on another sandbox's wake.
    match settled(e2b, id).await {
        Ok(v) if away(&v) => {}
        _ => return Ok(()),
    }
    let _one = WAKING.lock().await;
    match settled(e2b, id).await {
        Ok(v) if away(&v) => bring_back(e2b, &v.id, &json!({})).await.map(drop),
        _ => Ok(()),
    }
}

/// `POST /v2/sandboxes/{id}/connect`: 200 with the sandbox, resumed first
/// if it was paused.
async fn connect(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response> {
    brought_back(&e2b, &id, body, StatusCode::OK).await
}

/// `POST /sandboxes/{id}/resume` (older SDKs): 201 with the sandbox.
async fn resume(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response> {
    brought_back(&e2b, &id, body, StatusCode::CREATED).await
}

/// [`bring_back`], answered with `status` and the sandbox.
async fn brought_back(
    e2b: &E2b,
    id: &str,
    body: Option<Json<Value>>,
    status: StatusCode,
) -> Result<Response> {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let v = bring_back(e2b, id, &body).await?;
    let template = e2b.extra(&v.id).template_id;
    Ok((status, Json(sandbox_json(e2b, &v, &template))).into_response())
}

/// `GET /sandboxes/{id}/metrics`: one sample, now.
async fn metrics(State(e2b): State<Arc<E2b>>, Path(id): Path<String>) -> Result<Json<Value>> {
    let v = view(&e2b, &id).await?;
    let m = e2b.service.sandbox_metrics(&v.id).await?;
    let now = petty_core::store::now_ms();
    Ok(Json(json!([{
        "timestamp": rfc3339(now),
        "timestampUnix": now / 1000,
        "cpuCount": m.vcpu,
        "cpuUsedPct": m.cpu_percent.unwrap_or(0.0),
        "memUsed": m.guest_memory_used_bytes.unwrap_or(0),
        "memTotal": m.guest_memory_total_bytes.unwrap_or(m.memory_limit_bytes),
        "memCache": 0,
        "diskUsed": m.disk_bytes,
        "diskTotal": v.disk_bytes.unwrap_or(m.disk_bytes),
    }])))
}

/// `POST /sandboxes/{id}/fork` `{"count": N, "timeout": SECS}`: 201 with
/// one `{"sandbox": …}` per child (each with the parent's template,
/// metadata and variables).
async fn fork(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response> {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
    let timeout = timeout_of(&body)?.unwrap_or(DEFAULT_TIMEOUT);
    let parent = view(&e2b, &id).await?;
    let mut extra = e2b.extra(&parent.id);
    extra.timeout_secs = Some(timeout);
    // A child's timeout does what its parent's does.
    let on_expiry = match e2b.service.manager().info(&parent.id).await {
        Ok(r) => r.on_expiry,
        Err(e) => return Err(e2b.service.fail(e).into()),
    };
    let children = e2b
        .service
        .fork(&parent.id, count, &e2b_requester())
        .await?;
    let mut out = Vec::new();
    for child in children {
        let child = arm(&e2b, &child.id, on_expiry, timeout).await?;
        e2b.set_extra(&child.id, extra.clone())?;
        out.push(json!({"sandbox": sandbox_json(&e2b, &child, &extra.template_id)}));
    }
    Ok((StatusCode::CREATED, Json(Value::Array(out))).into_response())
}

/// `POST /sandboxes/{id}/snapshots` `{"name"}`: 201 `{"snapshotID",
/// "names"}`; the id is a `templateID` creates restore from. The sandbox
/// runs on.
async fn snapshot(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response> {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let v = view(&e2b, &id).await?;
    let name = match body.get("name").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => format!("e2b-{}-{}", &v.id[..8], petty_core::store::now_ms()),
    };
    let snap = e2b.service.snapshot(&v.id, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"snapshotID": snap.name, "names": [snap.name]})),
    )
        .into_response())
}

/// `GET /snapshots[?sandboxID=ID]`: one page of every snapshot (or those
/// taken of one sandbox).
async fn list_snapshots(
    State(e2b): State<Arc<E2b>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>> {
    // Rows name their source by name or id: both are matched.
    let of = match q.get("sandboxID") {
        Some(id) => {
            let name = e2b.service.get(id).await.map(|v| v.name).ok();
            Some((id.clone(), name))
        }
        None => None,
    };
    let all: Vec<Value> = e2b
        .service
        .list_snapshots()
        .await?
        .into_iter()
        .filter(|s| {
            of.as_ref().is_none_or(|(id, name)| {
                &s.source_sandbox == id || name.as_ref() == Some(&s.source_sandbox)
            })
        })
        .map(|s| json!({"snapshotID": s.name, "names": [s.name]}))
        .collect();
    Ok(Json(Value::Array(all)))
}

/// `DELETE /templates/{id}`: a snapshot goes (E2B's snapshots are
/// templates); 404 when there is none.
async fn delete_snapshot(
    State(e2b): State<Arc<E2b>>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if e2b.service.get_snapshot(&id).await.is_err() {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("snapshot {id} not found"),
        ));
    }
    e2b.service.delete_snapshot(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_metadata_filters_decode() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599_000), "2026-12-31T23:59:59Z");
        assert_eq!(percent_decode("a%3Db%26c"), "a=b&c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            url_pairs("user%3Dalice=x&env=dev"),
            [
                ("user%3Dalice".into(), "x".into()),
                ("env".into(), "dev".into())
            ]
        );
        assert_eq!(e2b_state("hibernated"), Some("paused"));
        assert_eq!(e2b_state("failed"), None);
    }

    #[test]
    fn auto_pause_asks_a_hibernation_or_with_no_memory_a_stop() {
        let of = |b: Value| on_expiry_of(&b).ok().flatten();
        assert_eq!(of(json!({})), None);
        assert_eq!(of(json!({"autoPause": false})), None);
        assert_eq!(of(json!({"autoPause": true})), Some(IdleAction::Hibernate));
        assert_eq!(
            of(json!({"autoPause": true, "autoPauseMemory": false})),
            Some(IdleAction::Stop)
        );
        assert!(on_expiry_of(&json!({"autoPause": "yes"})).is_err());
        let resume = |b: Value| auto_resume_of(&b).ok();
        assert_eq!(resume(json!({"autoResume": {"enabled": true}})), Some(true));
        assert_eq!(
            resume(json!({"autoResume": {"enabled": false}})),
            Some(false)
        );
        assert_eq!(resume(json!({})), Some(false));
        assert!(auto_resume_of(&json!({"autoResume": 1})).is_err());
    }
}
