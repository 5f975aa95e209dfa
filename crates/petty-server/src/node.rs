//! `GET /v1/node`: what this daemon is and has, for a gateway
//! (`petty gateway`) to place creates by: its version and protocol, the
//! host's free memory and CPUs, its sandboxes against its capacity, the
//! templates and snapshots it holds, and which snapshots it can take
//! from another node (`snapshot_compat`).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::rest::AppState;
use crate::service::Service;

/// A node's identity and capacity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Petty's version.
    pub version: String,
    /// The guest protocol its agents speak.
    pub protocol: u32,
    /// The VMM backend sandboxes get by default (`qemu`, `firecracker`).
    pub backend: String,
    /// Online CPUs of the host.
    pub cpus: usize,
    /// The host's memory, bytes.
    pub memory_total_bytes: u64,
    /// The host's available memory (`MemAvailable`), bytes.
    pub memory_available_bytes: u64,
    /// Sandboxes with a VM now (the warm pool's too).
    pub sandboxes: usize,
    /// `limits.max_concurrent_sandboxes`.
    pub capacity: usize,
    /// Templates it holds (`base` always).
    pub templates: Vec<String>,
    /// Snapshots it holds.
    pub snapshots: Vec<String>,
    /// Snapshots move only between nodes with the same value: the
    /// backend, the guest protocol and the host CPU's model.
    pub snapshot_compat: String,
    /// False while it is shutting down.
    pub ready: bool,
    /// Set by `POST /v1/node/drain`: a gateway places no creates here
    /// (kept in the data directory, so it outlives a restart).
    pub draining: bool,
}

/// Body of `POST /v1/node/drain`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainSpec {
    /// True to drain (no new creates from a gateway), false to take creates again.
    pub draining: bool,
}

impl Service {
    /// This node's [`NodeInfo`].
    pub async fn node_info(&self, ready: bool) -> ApiResult<NodeInfo> {
        let mut templates: Vec<String> = self
            .list_templates()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if !templates.iter().any(|t| t == "base") {
            templates.insert(0, "base".into());
        }
        let snapshots = self
            .list_snapshots()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let sandboxes = self.manager().count().await.map_err(|e| self.fail(e))?;
        let (total, available) = meminfo();
        let backend = self.manager().default_backend().to_string();
        let protocol = petty_core::PROTOCOL_VERSION;
        Ok(NodeInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol,
            snapshot_compat: format!("{backend}/p{protocol}/{}", cpu_model()),
            backend,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: total,
            memory_available_bytes: available,
            sandboxes,
            capacity: self.config().limits.max_concurrent_sandboxes,
            templates,
            snapshots,
            ready,
            draining: self.draining_file().exists(),
        })
    }

    fn draining_file(&self) -> std::path::PathBuf {
        self.config().paths.data_dir.join("draining")
    }

    /// Marks this node drained (or not).
    pub fn set_draining(&self, draining: bool) -> ApiResult<()> {
        let path = self.draining_file();
        let done = if draining {
            std::fs::write(&path, b"drained through POST /v1/node/drain\n")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        done.map_err(|e| {
            crate::error::ApiError::new(
                crate::error::ErrorKind::Internal,
                format!("marking the node drained at {}: {e}", path.display()),
            )
        })?;
        tracing::info!(draining, "node drain set");
        Ok(())
    }
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, bytes.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The host CPU's model name, as `/proc/cpuinfo` gives it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What this node is and has (for a gateway's placement).
#[utoipa::path(get, path = "/v1/node", tag = "ops",
    responses((status = 200, body = NodeInfo)))]
pub(crate) async fn node_info(State(s): State<AppState>) -> ApiResult<Json<NodeInfo>> {
    let ready = !s.shutting_down.load(std::sync::atomic::Ordering::SeqCst);
    Ok(Json(s.service.node_info(ready).await?))
}

/// Drain this node (a gateway places no creates on it) or take creates again.
#[utoipa::path(post, path = "/v1/node/drain", tag = "ops",
    request_body = DrainSpec,
    responses((status = 200, body = NodeInfo)))]
pub(crate) async fn drain(
    State(s): State<AppState>,
    crate::rest::JsonBody(spec): crate::rest::JsonBody<DrainSpec>,
) -> ApiResult<Json<NodeInfo>> {
    s.service.set_draining(spec.draining)?;
    node_info(State(s)).await
}
