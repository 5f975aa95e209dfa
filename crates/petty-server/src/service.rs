//! What the REST API and the MCP tools both call: the manager and pool
//! behind one set of operations, with the daemon's defaults and limits
//! applied, errors mapped to a kind and status, and every operation counted
//! and logged with its sandbox.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petty_core::store::SnapshotRecord;
use petty_core::{
    ClientError, CoreError, ExecRequest, ExecResult, ExecStream, FileEntry, FileStat, FileType,
    SandboxConfig, SandboxInfo, SandboxManager, SandboxPool, SandboxState,
};
use serde::{Deserialize, Serialize};

use petty_config::Settings;

use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::metrics::{Gauges, Metrics};

/// What a create may ask for (the body of `POST /v1/sandboxes` and the
/// arguments of the `create_sandbox` tool); anything left out takes the
/// configured default.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct CreateSpec {
    /// Optional unique name (letters, digits, '-', '_', '.'); later calls can use it instead of the id.
    pub name: Option<String>,
    /// Number of virtual CPUs (default from the server's config, usually 2).
    pub vcpu: Option<u32>,
    /// Guest memory in MiB (default from the server's config, usually 256).
    pub memory_mb: Option<u32>,
    /// Root disk size in MiB (default: the image's size); the guest's / grows to fill it.
    pub disk_size_mb: Option<u32>,
    /// Destroy the sandbox this many seconds after creation (default: the
    /// server's limits.default_ttl_secs, usually 3600; 0: no limit).
    pub ttl_secs: Option<u64>,
    /// Destroy the sandbox after this many seconds without a command or file
    /// operation (default: the server's limits.default_idle_timeout_secs,
    /// usually 300; 0: no limit).
    pub idle_timeout_secs: Option<u64>,
    /// What the idle timeout does: "destroy", "stop" (its disk is kept for
    /// a start) or "hibernate" (its memory too; the next call resumes it);
    /// default the server's limits.on_idle.
    pub on_idle: Option<String>,
    /// VMM backend: "qemu" or "firecracker" (default: the server's backend.kind).
    pub backend: Option<String>,
    /// MCP only: keep the sandbox when the MCP session that created it ends
    /// (default false: the session's sandboxes go with it, unless created
    /// with a ttl_secs).
    pub keep: Option<bool>,
    /// Network: "none" (only the guest's loopback), "public" (the internet,
    /// never the host or the networks around it) or "allow" (only what
    /// allow_hosts and allow_cidrs allow); default the server's
    /// network.default ("allow" when rules are given).
    pub network: Option<String>,
    /// With network "allow": names that may resolve and be reached
    /// ("example.com", "*.example.com", optionally ":PORT").
    pub allow_hosts: Option<Vec<String>>,
    /// With network "allow": blocks that may be reached ("10.0.0.0/8",
    /// optionally ":PORT").
    pub allow_cidrs: Option<Vec<String>>,
    /// Guest ports to reach from the host: "GUEST_PORT" or
    /// "GUEST_PORT:HOST_PORT"; the chosen host ports come back in
    /// `network.published`.
    pub publish: Option<Vec<String>>,
    /// Create from this template (GET /v1/templates or list_templates lists
    /// them; default "base", Petty's own image): its root file system, and
    /// its environment, working directory and user under every exec's own.
    pub template: Option<String>,
}

/// A sandbox's network as the API shows it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct NetworkView {
    /// "public" or "allow".
    pub mode: String,
    /// Names allowed ("allow" mode).
    pub allow_hosts: Vec<String>,
    /// Blocks allowed ("allow" mode).
    pub allow_cidrs: Vec<String>,
    /// Published ports.
    pub published: Vec<PortView>,
}

/// A published port.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct PortView {
    /// The guest's port.
    pub guest_port: u16,
    /// The host's port (on the server's network.publish_address, 127.0.0.1
    /// unless configured).
    pub host_port: u16,
}

impl From<petty_net::NetworkSpec> for NetworkView {
    fn from(n: petty_net::NetworkSpec) -> Self {
        Self {
            mode: n.mode.to_string(),
            allow_hosts: n.allow_hosts,
            allow_cidrs: n.allow_cidrs,
            published: n
                .publish
                .iter()
                .map(|p| PortView {
                    guest_port: p.guest,
                    host_port: p.host,
                })
                .collect(),
        }
    }
}

/// A port to publish on a running sandbox.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// The guest's port.
    pub guest_port: u16,
    /// The host's port (default: one the host picks).
    pub host_port: Option<u16>,
}

/// Who asks for new sandboxes: the owner they are shown with, and whether
/// they go with the asking session (an MCP session's do, unless the create
/// asks to keep them or gives a TTL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// Shown as the sandbox's owner (`rest`, `mcp-stdio`, `mcp-http:<session>`).
    pub owner: String,
    /// The requester is a session whose sandboxes end with it.
    pub session: bool,
}

impl Requester {
    /// A REST client: its sandboxes live by their TTL and idle timeout.
    pub fn rest() -> Self {
        Self {
            owner: "rest".into(),
            session: false,
        }
    }

    /// Whether a sandbox this create makes goes with the session.
    pub fn binds(&self, spec: &CreateSpec) -> bool {
        self.session && !spec.keep.unwrap_or(false) && spec.ttl_secs.is_none()
    }
}

/// Body of `POST /v1/sandboxes/{id}/lifetime` and the arguments of the
/// `set_sandbox_lifetime` tool: each limit given replaces the sandbox's.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct LifetimeSpec {
    /// The sandbox now ends this many seconds from now (0: no TTL), as
    /// E2B's set_timeout does: it extends or shortens.
    pub ttl_secs: Option<u64>,
    /// New idle timeout in seconds (0: none).
    pub idle_timeout_secs: Option<u64>,
}

/// A sandbox as the API shows it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct SandboxView {
    /// Unique id (a UUID).
    pub id: String,
    /// Unique name; any call takes it in place of the id.
    pub name: String,
    /// `creating`, `ready`, `paused`, `stopping`, `stopped` or `failed`.
    pub state: String,
    /// vCPUs.
    pub vcpu: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// VMM backend (`qemu` or `firecracker`).
    pub backend: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last exec or file operation, ms since the Unix epoch.
    pub last_used_at_ms: i64,
    /// Lifetime in seconds, if any.
    pub ttl_secs: Option<u64>,
    /// Idle timeout in seconds, if any.
    pub idle_timeout_secs: Option<u64>,
    /// The snapshot it was restored from, if any.
    pub from_snapshot: Option<String>,
    /// Why it is stopped or failed.
    pub reason: Option<String>,
    /// Who made it: `rest`, `cli`, `mcp-stdio`, `mcp-http:<session>`, `pool`.
    pub owner: String,
    /// It goes when the MCP session that made it ends.
    pub session_bound: bool,
    /// When its TTL or idle timeout will end it (the earlier), ms since the
    /// Unix epoch; none without either.
    pub expires_at_ms: Option<i64>,
    /// Its network; none when it has only the guest's loopback.
    pub network: Option<NetworkView>,
    /// How it started: `cold`, `template`, `pool`, `restore`, `fork` or `unknown`.
    pub start_kind: String,
    /// From the create call to ready (a pooled one: its hand-out), ms.
    pub startup_ms: Option<u64>,
    /// What its idle timeout does (`destroy`, `stop`, `hibernate`); none:
    /// the server's limits.on_idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_idle: Option<String>,
    /// Host disk its own files take, bytes: its overlay while it runs, its
    /// kept disk when stopped, its memory and disk when hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl From<SandboxInfo> for SandboxView {
    fn from(r: SandboxInfo) -> Self {
        let expires_at_ms = r.expires_at_ms();
        Self {
            id: r.id.to_string(),
            name: r.name,
            state: r.state.to_string(),
            vcpu: r.vcpus,
            memory_mb: r.memory_mib,
            backend: r.backend,
            created_at_ms: r.created_at_ms,
            last_used_at_ms: r.last_used_ms,
            ttl_secs: r.ttl.map(|d| d.as_secs()),
            idle_timeout_secs: r.idle_timeout.map(|d| d.as_secs()),
            expires_at_ms,
            from_snapshot: r.from_snapshot,
            reason: r.reason,
            owner: r.owner,
            session_bound: r.bound_to_owner,
            network: r.network.map(NetworkView::from),
            start_kind: r.start_kind.to_string(),
            startup_ms: r.startup_ms,
            on_idle: r.on_idle.map(|a| a.to_string()),
            disk_bytes: None,
        }
    }
}

/// `r` as the API shows it, with the host disk its files take.
pub fn view_of(manager: &petty_core::SandboxManager, r: SandboxInfo) -> SandboxView {
    let disk_bytes = manager.disk_use(&r);
    SandboxView {
        disk_bytes: Some(disk_bytes),
        ..SandboxView::from(r)
    }
}

/// A branch: the snapshot taken and the children started from it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct BranchView {
    /// The snapshot, kept: restore or branch it again later.
    pub snapshot: SnapshotView,
    /// The children, each where the sandbox was when it was snapshotted.
    pub sandboxes: Vec<SandboxView>,
}

/// A snapshot as the API shows it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct SnapshotView {
    /// Unique name.
    pub name: String,
    /// The snapshot this one's disk layers on, if its sandbox was itself restored.
    pub parent: Option<String>,
    /// The sandbox it was taken from.
    pub source_sandbox: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Guest memory in MiB (restores get the same).
    pub memory_mb: u32,
    /// vCPUs (restores get the same).
    pub vcpu: u32,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
}

impl From<SnapshotRecord> for SnapshotView {
    fn from(r: SnapshotRecord) -> Self {
        Self {
            name: r.name,
            parent: r.parent,
            source_sandbox: r.source_sandbox,
            size_bytes: r.size_bytes,
            memory_mb: r.memory_mib,
            vcpu: r.vcpus,
            created_at_ms: r.created_at_ms,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecSpec {
    /// A shell command line (`/bin/sh -c`); or
    pub command: Option<String>,
    /// an argv, run directly.
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/root`).
    pub cwd: Option<String>,
    /// Bytes for the command's stdin (default: none, stdin is /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this many seconds (default: `defaults.exec_timeout_secs`).
    pub timeout_secs: Option<f64>,
}

/// How a command ended and what it printed.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct ExecView {
    /// Exit code: 128+N when killed by signal N, 124 on timeout, 127 not found.
    pub exit_code: i32,
    /// Standard output (UTF-8, invalid bytes replaced).
    pub stdout: String,
    /// Standard error (UTF-8, invalid bytes replaced).
    pub stderr: String,
    /// True when the timeout killed it.
    pub timed_out: bool,
    /// True when output beyond the collection cap was dropped (use the streaming form).
    pub truncated: bool,
    /// Wall time from start to exit, in milliseconds.
    pub duration_ms: f64,
}

impl ExecView {
    fn new(r: ExecResult, took: Duration) -> Self {
        Self {
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            timed_out: r.timed_out,
            truncated: r.truncated,
            duration_ms: took.as_secs_f64() * 1000.0,
        }
    }
}

/// One directory entry.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct EntryView {
    /// File name.
    pub name: String,
    /// Full path.
    pub path: String,
    /// True for a directory.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
}

/// The warm pools' figures: the base image's (`pool.size`) at the top,
/// each template's (`templates.warm`) in `templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    /// False when `pool.size` is 0.
    pub enabled: bool,
    /// Target number of warm sandboxes.
    pub target_size: usize,
    /// Warm sandboxes ready now.
    pub ready: usize,
    /// Creates served warm.
    pub hits: u64,
    /// Pool acquires that had to create.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
    /// Share of the target handed out and not yet replaced (`1 - ready /
    /// target_size`).
    pub utilisation: f64,
    /// Mean time of a pool acquire (a hand-out, or a create on a miss), ms.
    pub avg_acquire_ms: f64,
    /// The pool of each `templates.warm` entry.
    pub templates: Vec<crate::templates::TemplatePoolView>,
}

/// The operations, shared by REST and MCP. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) manager: SandboxManager,
    pool: Option<SandboxPool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Settings,
    /// Live MCP sessions and the clean-ups of ended ones.
    sessions: tokio_util::task::TaskTracker,
    /// Template builds, one at a time (see [`crate::templates`]).
    pub(crate) builds: crate::templates::Builds,
    /// The warm pools of `templates.warm`.
    pub(crate) warm: crate::templates::WarmPools,
    /// Background processes, REST's, MCP's and E2B's.
    processes: crate::processes::Processes,
    /// The port E2B's API listens on (0: not served), for `/v1/node`.
    pub(crate) e2b_port: std::sync::atomic::AtomicU16,
}

impl Service {
    /// A service over `manager`, with a warm pool when `pool` is given; it
    /// builds no templates and keeps no template pools
    /// ([`crate::start_service`] makes one that does).
    pub fn new(
        manager: SandboxManager,
        pool: Option<SandboxPool>,
        metrics: Arc<Metrics>,
        config: Settings,
    ) -> Self {
        Self::assemble(manager, pool, metrics, config, None, Vec::new())
    }

    /// A service with a template builder and the `templates.warm` entries
    /// (template, count) it keeps pools for (started by
    /// [`Service::start_warm_pools`]).
    pub(crate) fn assemble(
        manager: SandboxManager,
        pool: Option<SandboxPool>,
        metrics: Arc<Metrics>,
        config: Settings,
        builder: Option<petty_build::Builder>,
        warm: Vec<(String, usize)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                manager,
                pool,
                metrics,
                config,
                sessions: tokio_util::task::TaskTracker::new(),
                builds: crate::templates::Builds::new(builder),
                warm: crate::templates::WarmPools::new(warm),
                processes: crate::processes::Processes::default(),
                e2b_port: std::sync::atomic::AtomicU16::new(0),
            }),
        }
    }

    /// The shared state, for the loops that must not keep it alive.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// The service again from [`Service::downgrade`]'s handle, while it lives.
    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Counts an MCP session as live until the token is dropped.
    pub(crate) fn session_token(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.inner.sessions.token()
    }

    /// Runs an ended session's clean-up, counted for [`Self::wait_for_sessions`].
    pub(crate) fn track(&self, cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.inner.sessions.spawn(cleanup);
        }
    }

    /// Waits (up to `bound`) until every MCP session has ended and its
    /// sandboxes are destroyed: the daemon's shutdown calls it once the
    /// sessions are cancelled. False when time ran out.
    pub async fn wait_for_sessions(&self, bound: Duration) -> bool {
        self.inner.sessions.close();
        tokio::time::timeout(bound, self.inner.sessions.wait())
            .await
            .is_ok()
    }

    /// The manager underneath.
    pub fn manager(&self) -> &SandboxManager {
        &self.inner.manager
    }

    /// The warm pool, if on.
    pub fn pool(&self) -> Option<&SandboxPool> {
        self.inner.pool.as_ref()
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &Settings {
        &self.inner.config
    }

    pub(crate) fn fail(&self, e: CoreError) -> ApiError {
        if ApiError::is_agent_error(&e) {
            self.inner
                .metrics
                .agent_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        let e = ApiError::from(e);
        if e.status >= 500 {
            tracing::warn!(kind = e.kind.as_str(), "{}", e.message);
        } else {
            tracing::debug!(kind = e.kind.as_str(), "{}", e.message);
        }
        e
    }

    /// A create's TTL and idle timeout: as asked (0: none), else the
    /// configured defaults.
    fn lifetimes(&self, spec: &CreateSpec) -> (Option<Duration>, Option<Duration>) {
        let c = &self.inner.config;
        let limit = |asked: Option<u64>, default: Option<Duration>| match asked {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => default,
        };
        (
            limit(spec.ttl_secs, c.default_ttl()),
            limit(spec.idle_timeout_secs, c.default_idle_timeout()),
        )
    }

    /// The sandbox config a create spec asks for from `who`, checked
    /// against the limits.
    pub fn sandbox_config(&self, spec: &CreateSpec, who: &Requester) -> ApiResult<SandboxConfig> {
        let c = &self.inner.config;
        let vcpu = spec.vcpu.unwrap_or(c.defaults.vcpu);
        let memory = spec.memory_mb.unwrap_or(c.defaults.memory_mb);
        if vcpu == 0 || vcpu > c.limits.max_vcpu {
            return Err(ApiError::bad_request(format!(
                "vcpu {vcpu} is out of range; ask for 1 to {} (limits.max_vcpu)",
                c.limits.max_vcpu
            )));
        }
        if memory > c.limits.max_memory_mb {
            return Err(ApiError::bad_request(format!(
                "memory_mb {memory} is more than this server allows ({} MiB, limits.max_memory_mb); ask for less",
                c.limits.max_memory_mb
            )));
        }
        let mut b = SandboxConfig::builder()
            .vcpu_count(vcpu)
            .memory_mib(memory)
            .disk_free_mib(c.defaults.disk_free_mb);
        if let Some(disk) = spec.disk_size_mb.or(c.defaults.disk_size_mb) {
            b = b.disk_size_mib(disk);
        }
        if let Some(k) = &c.backend.kernel {
            b = b.kernel(k);
        }
        match named_template(spec) {
            // The template's image, not backend.rootfs (which is the base's).
            Some(t) => b = b.template(t),
            None => {
                if let Some(r) = &c.backend.rootfs {
                    b = b.rootfs(r);
                }
            }
        }
        if let Some(n) = &spec.name {
            b = b.name(n);
        }
        let (ttl, idle) = self.lifetimes(spec);
        if let Some(t) = ttl {
            b = b.ttl(t);
        }
        if let Some(t) = idle {
            b = b.idle_timeout(t);
        }
        if let Some(backend) = &spec.backend {
            b = b.backend(petty_core::backend_choice(backend).map_err(|e| self.fail(e))?);
        }
        if let Some(action) = &spec.on_idle {
            b = b.on_idle(action.parse().map_err(|e| self.fail(e))?);
        }
        b.owner(who.owner.clone())
            .network(self.network_spec(spec)?)
            .bound_to_owner(who.binds(spec))
            .build()
            .map_err(|e| self.fail(e))
    }

    /// True when a create with `spec` can take a warm pool sandbox of its
    /// template as is.
    fn poolable(&self, spec: &CreateSpec) -> bool {
        let d = &self.inner.config.defaults;
        spec.name.is_none()
            && spec.backend.is_none()
            && spec.ttl_secs.is_none()
            && spec.idle_timeout_secs.is_none()
            && spec.on_idle.is_none()
            && spec.vcpu.is_none_or(|v| v == d.vcpu)
            && spec.memory_mb.is_none_or(|m| m == d.memory_mb)
            && spec.disk_size_mb.is_none_or(|s| Some(s) == d.disk_size_mb)
            // The pool's sandboxes have network.default's mode, no rules
            // and no published ports.
            && spec
                .network
                .as_deref()
                .is_none_or(|m| m == self.inner.config.network.default.as_str())
            && spec.allow_hosts.as_ref().is_none_or(Vec::is_empty)
            && spec.allow_cidrs.as_ref().is_none_or(Vec::is_empty)
            && spec.publish.as_ref().is_none_or(Vec::is_empty)
    }

    /// The network a create spec asks for, with the server's default mode.
    fn network_spec(&self, spec: &CreateSpec) -> ApiResult<petty_net::NetworkSpec> {
        let rules = spec.allow_hosts.as_ref().is_some_and(|v| !v.is_empty())
            || spec.allow_cidrs.as_ref().is_some_and(|v| !v.is_empty());
        let mode = match &spec.network {
            Some(m) => m
                .parse::<petty_net::NetworkMode>()
                .map_err(|e| ApiError::bad_request(format!("network: {e}")))?,
            None if rules => petty_net::NetworkMode::Allow,
            None => self.inner.config.network.default,
        };
        let publish = spec
            .publish
            .iter()
            .flatten()
            .map(|p| p.parse::<petty_net::Publish>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::bad_request(format!("publish: {e}")))?;
        Ok(petty_net::NetworkSpec {
            mode,
            allow_hosts: spec.allow_hosts.clone().unwrap_or_default(),
            allow_cidrs: spec.allow_cidrs.clone().unwrap_or_default(),
            publish,
        })
    }

    /// Publishes a port of a running sandbox; the sandbox as it is now.
    #[tracing::instrument(skip(self))]
    pub async fn publish(&self, sandbox: &str, spec: PublishSpec) -> ApiResult<SandboxView> {
        self.get(sandbox).await?;
        let p = petty_net::Publish {
            guest: spec.guest_port,
            host: spec.host_port.unwrap_or(0),
        };
        if p.guest == 0 {
            return Err(ApiError::bad_request(
                "guest_port must be a port from 1 to 65535",
            ));
        }
        self.inner
            .manager
            .publish(sandbox, p)
            .await
            .map_err(|e| self.fail(e))?;
        self.get(sandbox).await
    }

    /// What a sandbox's network did: counters and the latest refusals.
    pub async fn network_status(&self, sandbox: &str) -> ApiResult<serde_json::Value> {
        self.get(sandbox).await?;
        let (status, packets) = self
            .inner
            .manager
            .network_status(sandbox)
            .await
            .map_err(|e| self.fail(e))?;
        let mut v = serde_json::to_value(status)
            .map_err(|e| ApiError::new(crate::error::ErrorKind::Internal, e.to_string()))?;
        v["refused_packets"] = packets.into();
        Ok(v)
    }

    /// Creates a sandbox: from the warm pool of its template (the base
    /// image's, or a `templates.warm` one) when the spec allows, else new.
    #[tracing::instrument(skip_all, fields(name = spec.name.as_deref().unwrap_or(""), template = spec.template.as_deref().unwrap_or("")))]
    pub async fn create(&self, spec: CreateSpec, who: &Requester) -> ApiResult<SandboxView> {
        let config = self.sandbox_config(&spec, who)?;
        let started = Instant::now();
        let pool = match named_template(&spec) {
            None => self.inner.pool.clone(),
            Some(t) => self.template_pool(t),
        };
        let id = match (pool, self.poolable(&spec)) {
            (Some(pool), true) => {
                pool.acquire_as(Some(&who.owner), config.bound_to_owner)
                    .await
            }
            _ => self.inner.manager.create(config).await,
        };
        let m = &self.inner.metrics;
        let id = match id {
            Ok(id) => id,
            Err(CoreError::TemplateNotFound(name)) => {
                m.create_failures.fetch_add(1, Ordering::Relaxed);
                return Err(crate::templates::template_not_found(&name));
            }
            Err(e) => {
                m.create_failures.fetch_add(1, Ordering::Relaxed);
                return Err(self.fail(e));
            }
        };
        m.boot_latency.observe(started.elapsed());
        m.creates.fetch_add(1, Ordering::Relaxed);
        tracing::info!(sandbox = %id, ms = started.elapsed().as_millis() as u64, "created");
        self.get(&id.to_string()).await
    }

    /// Every sandbox handed out (warm pool sandboxes are not listed).
    pub async fn list(&self) -> ApiResult<Vec<SandboxView>> {
        let all = self.inner.manager.list().await.map_err(|e| self.fail(e))?;
        let manager = self.inner.manager.clone();
        tokio::task::spawn_blocking(move || {
            all.into_iter()
                .filter(|r| !r.pooled)
                .map(|r| view_of(&manager, r))
                .collect()
        })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("listing sandboxes: {e}")))
    }

    /// One sandbox by id or name.
    pub async fn get(&self, key: &str) -> ApiResult<SandboxView> {
        let r = self.record(key).await?;
        Ok(view_of(&self.inner.manager, r))
    }

    /// The row of a sandbox handed out (a warm pool's is not found): one
    /// store read, which an operation on the sandbox passes on to the
    /// manager ([`SandboxManager::with_record_async`]) rather than read again.
    async fn record(&self, key: &str) -> ApiResult<SandboxInfo> {
        let info = self
            .inner
            .manager
            .info(key)
            .await
            .map_err(|e| self.fail(e))?;
        if info.pooled {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no sandbox named {key}"),
            ));
        }
        Ok(info)
    }

    /// Sets how much longer a sandbox may live (see [`LifetimeSpec`]).
    #[tracing::instrument(skip(self))]
    pub async fn set_lifetime(&self, sandbox: &str, spec: LifetimeSpec) -> ApiResult<SandboxView> {
        if spec.ttl_secs.is_none() && spec.idle_timeout_secs.is_none() {
            return Err(ApiError::bad_request(
                "nothing to set: give ttl_secs (the sandbox ends that many seconds from now; 0: never) and/or idle_timeout_secs (0: none)",
            ));
        }
        self.get(sandbox).await?;
        let limit = |secs: Option<u64>| secs.map(|s| (s > 0).then(|| Duration::from_secs(s)));
        self.inner
            .manager
            .set_lifetime(sandbox, limit(spec.ttl_secs), limit(spec.idle_timeout_secs))
            .await
            .map(SandboxView::from)
            .map_err(|e| self.fail(e))
    }

    /// Shuts a sandbox down cleanly, keeping its record and disk for
    /// [`start`](Self::start).
    #[tracing::instrument(skip(self))]
    pub async fn stop(&self, sandbox: &str) -> ApiResult<SandboxView> {
        let view = self.get(sandbox).await?;
        self.inner
            .manager
            .stop(&view.id, true)
            .await
            .map_err(|e| self.fail(e))?;
        tracing::info!("stopped");
        self.get(&view.id).await
    }

    /// Saves a sandbox's memory, devices and disk and ends its VM.
    #[tracing::instrument(skip(self))]
    pub async fn hibernate(&self, sandbox: &str) -> ApiResult<SandboxView> {
        let view = self.get(sandbox).await?;
        self.inner
            .manager
            .hibernate(&view.id)
            .await
            .map_err(|e| self.fail(e))?;
        tracing::info!("hibernated");
        self.get(&view.id).await
    }

    /// Brings a hibernated sandbox back (or lets a paused one run).
    #[tracing::instrument(skip(self))]
    pub async fn resume(&self, sandbox: &str) -> ApiResult<SandboxView> {
        let view = self.get(sandbox).await?;
        self.inner
            .manager
            .resume(&view.id)
            .await
            .map_err(|e| self.fail(e))?;
        tracing::info!("resumed");
        self.get(&view.id).await
    }

    /// Boots a stopped sandbox again on its kept disk.
    #[tracing::instrument(skip(self))]
    pub async fn start(&self, sandbox: &str) -> ApiResult<SandboxView> {
        let view = self.get(sandbox).await?;
        self.inner
            .manager
            .start(&view.id)
            .await
            .map_err(|e| self.fail(e))?;
        tracing::info!("started");
        self.get(&view.id).await
    }

    /// Destroys a sandbox: its VM, its files and its record.
    #[tracing::instrument(skip(self))]
    pub async fn destroy(&self, sandbox: &str) -> ApiResult<()> {
        let id = self.get(sandbox).await?.id;
        self.inner
            .manager
            .destroy(sandbox)
            .await
            .map_err(|e| self.fail(e))?;
        self.inner.processes.forget(&id);
        self.inner.metrics.destroys.fetch_add(1, Ordering::Relaxed);
        tracing::info!("destroyed");
        Ok(())
    }

    fn exec_request(&self, spec: &ExecSpec) -> ApiResult<ExecRequest> {
        let mut req = match (&spec.command, &spec.argv) {
            (Some(cmd), None) if !cmd.trim().is_empty() => ExecRequest::shell(cmd.clone()),
            (None, Some(argv)) if !argv.is_empty() && !argv[0].is_empty() => {
                ExecRequest::argv(argv.clone())
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give either command (a shell line) or argv (a list), not both",
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "nothing to run: give command (a shell line, e.g. \"ls -l /\") or argv (e.g. [\"ls\", \"-l\"])",
                ))
            }
        };
        req.env = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        req.cwd = spec.cwd.clone();
        req.stdin = spec.stdin.is_some();
        let secs = spec
            .timeout_secs
            .unwrap_or(self.inner.config.defaults.exec_timeout_secs as f64);
        if !(secs > 0.0 && secs <= 86_400.0) {
            return Err(ApiError::bad_request(format!(
                "timeout_secs {secs} is out of range; use more than 0 and at most 86400"
            )));
        }
        req.timeout_ms = Some((secs * 1000.0).ceil() as u64);
        Ok(req)
    }

    /// Runs a command to completion.
    #[tracing::instrument(skip(self, spec))]
    pub async fn exec(&self, sandbox: &str, spec: ExecSpec) -> ApiResult<ExecView> {
        let req = self.exec_request(&spec)?;
        let record = self.record(sandbox).await?;
        let started = Instant::now();
        let stdin = spec.stdin;
        let out = self
            .inner
            .manager
            .with_record_async(
                sandbox,
                &record,
                |sb| async move { sb.exec(req, stdin).await },
            )
            .await;
        self.finish_exec(out, started)
    }

    fn finish_exec(
        &self,
        out: Result<ExecResult, CoreError>,
        started: Instant,
    ) -> ApiResult<ExecView> {
        let took = started.elapsed();
        let m = &self.inner.metrics;
        m.execs.fetch_add(1, Ordering::Relaxed);
        m.exec_latency.observe(took);
        let out = out.map_err(|e| self.fail(e))?;
        tracing::info!(
            exit_code = out.exit_code,
            timed_out = out.timed_out,
            ms = took.as_secs_f64() * 1000.0,
            "exec"
        );
        Ok(ExecView::new(out, took))
    }

    /// Runs `code` in `language` (`python`, `bash` or `sh`).
    #[tracing::instrument(skip(self, code))]
    pub async fn run_code(
        &self,
        sandbox: &str,
        language: &str,
        code: &str,
        timeout_secs: Option<f64>,
    ) -> ApiResult<ExecView> {
        let argv = petty_core::code_argv(language, code).map_err(|e| self.fail(e))?;
        self.exec(
            sandbox,
            ExecSpec {
                argv: Some(argv),
                timeout_secs,
                ..Default::default()
            },
        )
        .await
    }

    /// Starts a command and returns its output stream; the caller reads it
    /// to the end and reports the end with [`Service::exec_stream_done`].
    #[tracing::instrument(skip(self, spec))]
    pub async fn exec_stream(&self, sandbox: &str, spec: ExecSpec) -> ApiResult<ExecStream> {
        let req = self.exec_request(&spec)?;
        // Idle timeouts count from the start of the stream.
        let stream = self.start_process(sandbox, req).await?;
        if let Some(data) = spec.stdin {
            let stdin = stream.stdin();
            if !data.is_empty() {
                stdin.write(&data).await.map_err(|e| self.fail(e.into()))?;
            }
            stdin.close().await.map_err(|e| self.fail(e.into()))?;
        }
        Ok(stream)
    }

    /// Starts `req` as it is (no default timeout: it runs until it ends or
    /// is signalled) and returns its stream; E2B's processes. The caller
    /// reports its end with [`Service::exec_stream_done`].
    #[tracing::instrument(skip(self, req))]
    pub async fn start_process(&self, sandbox: &str, req: ExecRequest) -> ApiResult<ExecStream> {
        let record = self.record(sandbox).await?;
        self.inner
            .manager
            .with_record_async(
                sandbox,
                &record,
                |sb| async move { sb.exec_stream(req).await },
            )
            .await
            .map_err(|e| self.fail(e))
    }

    /// Every sandbox's background processes.
    pub(crate) fn processes(&self) -> &crate::processes::Processes {
        &self.inner.processes
    }

    /// Starts `req` in `sandbox` as a background process: it runs in a
    /// task of its own until it ends (or is signalled), whoever started it
    /// gone or not, and its end is counted as an exec's.
    pub(crate) async fn spawn_process(
        &self,
        sandbox: &str,
        req: ExecRequest,
        tag: Option<String>,
        config: serde_json::Value,
    ) -> ApiResult<Arc<crate::processes::Proc>> {
        let id = self.record(sandbox).await?.id.to_string();
        let running = self.inner.processes.running(&id).len();
        if running >= crate::processes::MAX_PER_SANDBOX {
            return Err(ApiError::new(
                ErrorKind::Capacity,
                format!(
                    "sandbox {id} runs {running} background processes already; wait for or kill some"
                ),
            ));
        }
        let argv = match &req.command {
            petty_core::ExecCommand::Argv(a) => a.clone(),
            petty_core::ExecCommand::Shell(line) => {
                vec!["/bin/sh".into(), "-c".into(), line.clone()]
            }
        };
        let started = crate::processes::Started {
            argv,
            tag,
            config,
            stdin: req.stdin,
            pty: req.pty.is_some(),
        };
        let at = Instant::now();
        let stream = self.start_process(&id, req).await?;
        let service = self.clone();
        Ok(self
            .inner
            .processes
            .spawn(&id, stream, started, move |ended| {
                let _ = service.exec_stream_done(at, ended);
            }))
    }

    /// The process of `sandbox` that `which` names (its pid, or its tag:
    /// a running one first), running or recently ended; or a 404 that
    /// says how to list them.
    pub(crate) async fn process(
        &self,
        sandbox: &str,
        which: &str,
    ) -> ApiResult<Arc<crate::processes::Proc>> {
        let id = self.record(sandbox).await?.id.to_string();
        let found = match which.parse::<u32>() {
            Ok(pid) => self.inner.processes.get(&id, pid),
            Err(_) => self.inner.processes.by_tag(&id, which),
        };
        found.ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("sandbox {id} has no process {which}; list its processes to see which run"),
            )
        })
    }

    /// Runs `f` on sandbox `sandbox` (a warm pool's is not found), counted
    /// as a use of it: what the other operations here do not cover.
    pub async fn with_sandbox<T, F, Fut>(&self, sandbox: &str, f: F) -> ApiResult<T>
    where
        F: FnOnce(std::sync::Arc<petty_core::Sandbox>) -> Fut,
        Fut: std::future::Future<Output = Result<T, petty_core::CoreError>>,
    {
        let record = self.record(sandbox).await?;
        self.inner
            .manager
            .with_record_async(sandbox, &record, f)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Records the end of a streamed command: counted and timed like any
    /// exec; a broken stream's error as the client should see it.
    pub fn exec_stream_done(
        &self,
        started: Instant,
        ended: Result<(), ClientError>,
    ) -> ApiResult<()> {
        let m = &self.inner.metrics;
        m.execs.fetch_add(1, Ordering::Relaxed);
        m.exec_latency.observe(started.elapsed());
        ended.map_err(|e| self.fail(e.into()))
    }

    /// A whole regular file of at most `limit` bytes (a bigger one is a
    /// 413 that says how to get it instead; a device, FIFO or socket a 400).
    #[tracing::instrument(skip(self))]
    pub async fn read_file(&self, sandbox: &str, path: &str, limit: u64) -> ApiResult<Vec<u8>> {
        check_path(path)?;
        let record = self.record(sandbox).await?;
        let p = path.to_string();
        let read = self
            .inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move {
                let stat = sb.stat_target(&p).await?;
                if !readable(&stat) || stat.size > limit {
                    return Ok(Err(stat));
                }
                let mut data = Vec::with_capacity(stat.size as usize);
                sb.read_file_into(&p, &mut data, limit).await?;
                Ok(Ok(data))
            })
            .await
            .map_err(|e| self.fail(e))?;
        match read {
            Ok(data) => Ok(data),
            Err(stat) if !readable(&stat) => Err(not_readable(sandbox, path, &stat)),
            Err(stat) => Err(ApiError::new(ErrorKind::TooLarge,
                format!(
                    "{path} is {} bytes, more than the {limit} this call returns; download it over REST \
                     (GET /v1/sandboxes/{sandbox}/files/content?path={path}) or read part of it \
                     (e.g. head -c 100000 {path})",
                    stat.size
                ),
            )),
        }
    }

    /// A regular file as a stream of chunks, read from the guest as the
    /// client takes them (memory stays bounded whatever the file's size),
    /// stopping with an error past `limit` bytes (`None`: no limit) however
    /// much the guest sends. Errors found before the first byte (no such
    /// file, a directory or device, over the limit by its size) are the
    /// result's; one later ends the stream with an error.
    #[tracing::instrument(skip(self))]
    pub async fn read_file_stream(
        &self,
        sandbox: &str,
        path: &str,
        limit: Option<u64>,
    ) -> ApiResult<tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>> {
        use tokio::io::AsyncReadExt as _;
        check_path(path)?;
        let record = self.record(sandbox).await?;
        let p = path.to_string();
        let sb = self
            .inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move {
                let stat = sb.stat_target(&p).await?;
                Ok((sb, stat))
            })
            .await;
        let (sb, stat) = sb.map_err(|e| self.fail(e))?;
        if !readable(&stat) {
            return Err(not_readable(sandbox, path, &stat));
        }
        if let Some(limit) = limit.filter(|l| stat.size > *l) {
            return Err(download_too_large(path, Some(stat.size), limit));
        }
        const CHUNK: usize = 256 * 1024;
        let (mut writer, mut reader) = tokio::io::duplex(CHUNK);
        let guest_path = path.to_string();
        let read = tokio::spawn(async move {
            let r = sb
                .read_file_into(&guest_path, &mut writer, limit.unwrap_or(u64::MAX))
                .await;
            drop(writer);
            r
        });
        // Wait for the first bytes, so that a refusal (the path changed
        // since the stat, or the guest says no) is an error status rather
        // than a broken 200.
        let mut buf = vec![0u8; CHUNK];
        let first = reader
            .read(&mut buf)
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("file download: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if first == 0 {
            // Over before any byte: an empty file, or an error.
            return match read.await {
                Ok(Ok(_)) => Ok(rx),
                Ok(Err(e)) => Err(self.download_error(e, path, limit)),
                Err(e) => Err(ApiError::new(
                    ErrorKind::Internal,
                    format!("file download: {e}"),
                )),
            };
        }
        let service = self.clone();
        let path = path.to_string();
        tokio::spawn(async move {
            let mut n = first;
            loop {
                let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                if tx.send(Ok(chunk)).await.is_err() {
                    // The client went away: stop reading the guest.
                    read.abort();
                    return;
                }
                n = match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
            }
            let e = match read.await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => service.download_error(e, &path, limit).message,
                Err(e) => e.to_string(),
            };
            tracing::warn!("file download broke off: {e}");
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        });
        Ok(rx)
    }

    fn download_error(&self, e: CoreError, path: &str, limit: Option<u64>) -> ApiError {
        match (e, limit) {
            (CoreError::Rpc(ClientError::TooLarge { .. }), Some(limit)) => {
                download_too_large(path, None, limit)
            }
            (e, _) => self.fail(e),
        }
    }

    /// Writes a whole file (creating parent directories).
    #[tracing::instrument(skip(self, data), fields(bytes = data.len()))]
    pub async fn write_file(&self, sandbox: &str, path: &str, data: &[u8]) -> ApiResult<()> {
        check_path(path)?;
        let record = self.record(sandbox).await?;
        let p = path.to_string();
        self.inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move {
                sb.write_file(&p, data).await
            })
            .await
            .map_err(|e| self.fail(e))
    }

    /// Streams `body` into a file in the guest (parents created) as it
    /// arrives, so the daemon holds a few chunks whatever the size. Past
    /// `limit` bytes (`limits.max_upload_mib`; `declared` is the
    /// Content-Length, checked first) it is a 413; a full guest disk a 507;
    /// either way the guest's file is left as it was, with nothing partial
    /// beside it. The number of bytes written.
    #[tracing::instrument(skip(self, body))]
    pub async fn write_file_stream<R>(
        &self,
        sandbox: &str,
        path: &str,
        body: R,
        declared: Option<u64>,
    ) -> ApiResult<u64>
    where
        R: tokio::io::AsyncRead + Unpin + Send,
    {
        check_path(path)?;
        let limit_mib = self.inner.config.limits.max_upload_mib;
        let limit = limit_mib.saturating_mul(1 << 20);
        let too_large = || {
            ApiError::new(
                ErrorKind::TooLarge,
                format!(
                    "upload to {path} is larger than this server accepts ({limit_mib} MiB, \
                     limits.max_upload_mib); nothing was written; send less, or raise the limit"
                ),
            )
        };
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let record = self.record(sandbox).await?;
        let capped = Capped::new(body, limit);
        let state = capped.state.clone();
        let p = path.to_string();
        let written = self
            .inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move {
                sb.write_file_from(&p, capped, None).await
            })
            .await;
        match written {
            Ok(n) => {
                tracing::info!(bytes = n, "uploaded");
                Ok(n)
            }
            Err(_) if state.over.load(Ordering::Relaxed) => Err(too_large()),
            Err(CoreError::Rpc(ClientError::Io(e))) if state.broke.load(Ordering::Relaxed) => {
                Err(ApiError::bad_request(format!(
                    "the upload to {path} broke off ({e}); nothing was written; send it again"
                )))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// A directory's entries.
    #[tracing::instrument(skip(self))]
    pub async fn list_files(&self, sandbox: &str, path: &str) -> ApiResult<Vec<EntryView>> {
        check_path(path)?;
        let record = self.record(sandbox).await?;
        let p = path.to_string();
        let entries: Vec<FileEntry> = self
            .inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move { sb.list_dir(&p).await })
            .await
            .map_err(|e| self.fail(e))?;
        let base = path.trim_end_matches('/');
        Ok(entries
            .into_iter()
            .map(|e| EntryView {
                path: format!("{base}/{}", e.name),
                name: e.name,
                is_dir: e.is_dir,
                size: e.size,
            })
            .collect())
    }

    /// Removes a file, or a directory (with `recursive` when not empty).
    #[tracing::instrument(skip(self))]
    pub async fn remove_file(&self, sandbox: &str, path: &str, recursive: bool) -> ApiResult<()> {
        check_path(path)?;
        if path.trim_end_matches('/').is_empty() {
            return Err(ApiError::bad_request("refusing to remove /"));
        }
        let record = self.record(sandbox).await?;
        let p = path.to_string();
        self.inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move {
                sb.remove(&p, recursive).await
            })
            .await
            .map_err(|e| self.fail(e))
    }

    /// Creates a directory and its parents.
    #[tracing::instrument(skip(self))]
    pub async fn mkdir(&self, sandbox: &str, path: &str) -> ApiResult<()> {
        check_path(path)?;
        let record = self.record(sandbox).await?;
        let p = path.to_string();
        self.inner
            .manager
            .with_record_async(sandbox, &record, |sb| async move { sb.mkdir(&p).await })
            .await
            .map_err(|e| self.fail(e))
    }

    /// Snapshots a sandbox as `name`.
    #[tracing::instrument(skip(self))]
    pub async fn snapshot(&self, sandbox: &str, name: &str) -> ApiResult<SnapshotView> {
        self.get(sandbox).await?;
        let r = self
            .inner
            .manager
            .snapshot(sandbox, name)
            .await
            .map_err(|e| self.fail(e))?;
        self.inner.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        Ok(r.into())
    }

    /// Every snapshot (templates are not listed).
    pub async fn list_snapshots(&self) -> ApiResult<Vec<SnapshotView>> {
        let all = self
            .inner
            .manager
            .list_snapshots()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(all.into_iter().map(SnapshotView::from).collect())
    }

    /// One snapshot.
    pub async fn get_snapshot(&self, name: &str) -> ApiResult<SnapshotView> {
        self.inner
            .manager
            .snapshot_info(name)
            .await
            .map(Into::into)
            .map_err(|e| self.fail(e))
    }

    /// Deletes a snapshot (refused while something depends on it).
    #[tracing::instrument(skip(self))]
    pub async fn delete_snapshot(&self, name: &str) -> ApiResult<()> {
        self.inner
            .manager
            .delete_snapshot(name)
            .await
            .map_err(|e| self.fail(e))
    }

    /// A new sandbox from a snapshot.
    #[tracing::instrument(skip(self))]
    pub async fn restore(
        &self,
        snapshot: &str,
        name: Option<&str>,
        who: &Requester,
    ) -> ApiResult<SandboxView> {
        let config = self.child_config(name, who)?;
        let started = Instant::now();
        let id = self.inner.manager.restore_with(snapshot, config).await;
        let id = self.created(id, started, 1)?;
        self.get(&id.to_string()).await
    }

    /// `count` new sandboxes from a snapshot or a running sandbox.
    #[tracing::instrument(skip(self))]
    pub async fn fork(
        &self,
        source: &str,
        count: usize,
        who: &Requester,
    ) -> ApiResult<Vec<SandboxView>> {
        if count == 0 || count > 64 {
            return Err(ApiError::bad_request(format!(
                "count {count} is out of range; fork 1 to 64 children at a time"
            )));
        }
        let config = self.child_config(None, who)?;
        let started = Instant::now();
        let ids = self.inner.manager.fork_with(source, count, config).await;
        let ids = self.created(ids, started, count)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get(&id.to_string()).await?);
        }
        Ok(out)
    }

    /// Snapshot `sandbox` as `name` and start `count` children from it in
    /// one call (the branch point of a tree search).
    #[tracing::instrument(skip(self))]
    pub async fn branch(
        &self,
        sandbox: &str,
        name: &str,
        count: usize,
        who: &Requester,
    ) -> ApiResult<BranchView> {
        if count == 0 || count > 64 {
            return Err(ApiError::bad_request(format!(
                "count {count} is out of range; branch into 1 to 64 children at a time"
            )));
        }
        self.get(sandbox).await?;
        let config = self.child_config(None, who)?;
        let started = Instant::now();
        let made = self
            .inner
            .manager
            .branch(sandbox, name, count, config)
            .await;
        let made = self.created(made, started, count)?;
        self.inner.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        let mut sandboxes = Vec::with_capacity(made.1.len());
        for id in made.1 {
            sandboxes.push(self.get(&id.to_string()).await?);
        }
        Ok(BranchView {
            snapshot: made.0.into(),
            sandboxes,
        })
    }

    /// The config of a restored or forked sandbox: a name, the default
    /// lifetimes and `who` as owner (memory, vCPUs and disk are the
    /// snapshot's).
    fn child_config(&self, name: Option<&str>, who: &Requester) -> ApiResult<SandboxConfig> {
        let spec = CreateSpec::default();
        let (ttl, idle) = self.lifetimes(&spec);
        let mut b = SandboxConfig::builder()
            .owner(who.owner.clone())
            .bound_to_owner(who.binds(&spec));
        if let Some(n) = name {
            b = b.name(n);
        }
        if let Some(t) = ttl {
            b = b.ttl(t);
        }
        if let Some(t) = idle {
            b = b.idle_timeout(t);
        }
        b.build().map_err(|e| self.fail(e))
    }

    fn created<T>(&self, r: Result<T, CoreError>, started: Instant, count: usize) -> ApiResult<T> {
        let m = &self.inner.metrics;
        match r {
            Ok(v) => {
                let each = started.elapsed() / count.max(1) as u32;
                for _ in 0..count {
                    m.restore_latency.observe(each);
                }
                m.creates.fetch_add(count as u64, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                m.create_failures.fetch_add(1, Ordering::Relaxed);
                Err(self.fail(e))
            }
        }
    }

    /// The base image's warm pool (`pool.size`), if it has one.
    pub(crate) fn base_pool(&self) -> Option<SandboxPool> {
        self.inner.pool.clone()
    }

    /// The warm pool's figures.
    pub fn pool_stats(&self) -> PoolView {
        let target = self.inner.config.pool.size;
        match &self.inner.pool {
            Some(p) => {
                let s = p.stats();
                PoolView {
                    enabled: true,
                    target_size: target,
                    ready: p.size(),
                    hits: s.warm_hits,
                    misses: s.cold_misses,
                    hit_rate: s.hit_rate,
                    utilisation: s.utilisation,
                    avg_acquire_ms: s.avg_acquire_ms,
                    templates: self.template_pool_views(),
                }
            }
            None => PoolView {
                enabled: false,
                target_size: 0,
                ready: 0,
                hits: 0,
                misses: 0,
                hit_rate: 0.0,
                utilisation: 0.0,
                avg_acquire_ms: 0.0,
                templates: self.template_pool_views(),
            },
        }
    }

    /// The metrics text.
    pub async fn render_metrics(&self) -> ApiResult<String> {
        let all = self.inner.manager.list().await.map_err(|e| self.fail(e))?;
        let states = SandboxState::ALL;
        let pool = self.pool_stats();
        let g = Gauges {
            by_state: states
                .iter()
                .map(|s| {
                    (
                        s.as_str(),
                        all.iter().filter(|r| r.state == *s).count() as u64,
                    )
                })
                .collect(),
            pool_ready: pool.ready as u64,
            pool_hits: pool.hits,
            pool_misses: pool.misses,
            template_pools: pool
                .templates
                .iter()
                .map(|t| (t.template.clone(), t.ready as u64, t.hits, t.misses))
                .collect(),
        };
        let mut out = self.inner.metrics.render(&g);
        if self.inner.config.server.per_sandbox_metrics {
            self.render_sandbox_metrics(&mut out).await?;
        }
        Ok(out)
    }
}

/// The template a create spec names, unless it is the base image.
pub(crate) fn named_template(spec: &CreateSpec) -> Option<&str> {
    spec.template
        .as_deref()
        .filter(|t| *t != petty_core::catalog::BASE_TEMPLATE)
}

/// True for what a file transfer may read: a regular file (or a file whose
/// kind the guest did not say; it refuses non-regular files itself).
fn readable(stat: &FileStat) -> bool {
    !stat.is_dir && matches!(stat.file_type, FileType::File | FileType::Unknown)
}

/// The error for a directory, device, FIFO or socket asked for as a file.
fn not_readable(sandbox: &str, path: &str, stat: &FileStat) -> ApiError {
    if stat.is_dir {
        return ApiError::bad_request(format!(
            "{path} is a directory; list it with GET /v1/sandboxes/{sandbox}/files?path={path}"
        ));
    }
    ApiError::new(
        ErrorKind::NotARegularFile,
        format!(
            "{path} is {}, not a regular file; only regular files can be copied; read part of it \
             with a command instead (e.g. head -c 1048576 {path})",
            stat.file_type.describe()
        ),
    )
}

/// The 413 of a download past its limit (`size`: what the guest's stat said).
fn download_too_large(path: &str, size: Option<u64>, limit: u64) -> ApiError {
    let what = match size {
        Some(n) => format!("{path} is {n} bytes"),
        None => format!("{path} sent more bytes than it said it had"),
    };
    ApiError::new(ErrorKind::TooLarge,
        format!(
            "{what}, more than this download's limit of {limit} bytes \
             (limits.max_download_mib); ask for more with ?max_size=BYTES, or lift it with ?no_limit=true"
        ),
    )
}

/// What a [`Capped`] reader saw.
#[derive(Default)]
struct CapState {
    /// More than the limit arrived.
    over: std::sync::atomic::AtomicBool,
    /// The source itself failed (the client broke off).
    broke: std::sync::atomic::AtomicBool,
}

/// An upload's body, failing as soon as more than `left` bytes arrive.
struct Capped<R> {
    inner: R,
    left: u64,
    state: Arc<CapState>,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            state: Arc::default(),
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Capped<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > this.left {
                    this.state.over.store(true, Ordering::Relaxed);
                    buf.set_filled(before);
                    return std::task::Poll::Ready(Err(std::io::Error::other(
                        "upload larger than its limit",
                    )));
                }
                this.left -= n;
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Ready(Err(e)) => {
                this.state.broke.store(true, Ordering::Relaxed);
                std::task::Poll::Ready(Err(e))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Guest paths are absolute.
fn check_path(path: &str) -> ApiResult<()> {
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "path {path:?} is not absolute; give a path starting with / (e.g. /root/{path})"
        )));
    }
    if path.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use petty_core::Violation;
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[test]
    fn a_guest_that_breaks_the_protocol_is_an_agent_error() {
        for e in [
            ClientError::Hostile {
                what: Violation::UnknownKind(9),
            },
            ClientError::Disconnected("the VM powered off".into()),
        ] {
            let text = e.to_string();
            let e = CoreError::Rpc(e);
            assert!(ApiError::is_agent_error(&e), "{e:?}");
            let api = ApiError::from(e);
            assert_eq!(
                (api.status, api.kind.as_str()),
                (502, "agent_error"),
                "{api:?}"
            );
            assert_eq!(api.message, text);
        }
    }

    #[tokio::test]
    async fn an_upload_body_fails_past_its_limit_and_says_so() {
        let body = vec![1u8; 1000];
        let mut ok = Capped::new(&body[..], 1000);
        let mut out = Vec::new();
        ok.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 1000);
        assert!(!ok.state.over.load(Ordering::Relaxed));

        let mut over = Capped::new(&body[..], 999);
        assert!(over.read_to_end(&mut Vec::new()).await.is_err());
        assert!(over.state.over.load(Ordering::Relaxed));
        assert!(!over.state.broke.load(Ordering::Relaxed));
    }

    #[test]
    fn only_regular_files_are_readable_and_refusals_name_the_type() {
        let stat = |file_type| FileStat {
            is_dir: file_type == FileType::Directory,
            is_symlink: false,
            file_type,
            size: 0,
            mode: 0o644,
            mtime: 0,
        };
        assert!(readable(&stat(FileType::File)));
        for t in [
            FileType::CharDevice,
            FileType::Fifo,
            FileType::Socket,
            FileType::Directory,
        ] {
            assert!(!readable(&stat(t)), "{t:?}");
        }
        let e = not_readable("box", "/root/z", &stat(FileType::CharDevice));
        assert_eq!((e.status, e.kind.as_str()), (400, "not_a_regular_file"));
        assert!(e
            .message
            .starts_with("/root/z is a character device, not a regular file"));
        let e = download_too_large("/root/big", Some(10), 5);
        assert_eq!(e.status, 413);
        assert!(e.message.contains("no_limit=true"), "{}", e.message);
    }
}
