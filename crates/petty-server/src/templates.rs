//! Templates through the daemon: listing and removing them, building one
//! from a Dockerfile's text or an OCI image with its progress reported as
//! it goes, and the warm pools `templates.warm` asks for.
//!
//! - **Builds** run one at a time (a mutex): a second waits, and is told
//!   so. A Dockerfile comes as text and is written to a scratch directory
//!   under `paths.data_dir`; its context is a directory on the daemon's
//!   host inside `templates.host_paths` (as are local image archives and
//!   layouts, whether `from_image` or a `FROM` names them), else an empty
//!   one. A build
//!   given up on (the REST client gone, the MCP call cancelled) has its
//!   build sandbox removed, as Ctrl-C does for `petty template build`.
//! - **Warm pools**: each `templates.warm` entry gets a [`SandboxPool`] of
//!   its own once its template exists. The entries are looked at when the
//!   daemon starts, every [`WARM_CHECK`] after, and at once after a build
//!   or a removal through the daemon: a template built later (here or by
//!   `petty template build`) gets its pool, a rebuilt one a fresh pool (the
//!   warm sandboxes of the old image go), a removed one none. Removing a
//!   template through the daemon empties its pool first, since the pool's
//!   own sandboxes would keep it in use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use petty_build::{BuildError, DockerfileBuild, Event};
use petty_core::{CoreError, PoolConfig, SandboxPool, TemplateRecord};
use serde::{Deserialize, Serialize};

use crate::error::{error_chain, ApiError, ApiResult, ErrorKind};
use crate::rest::Utf8Carry;
use crate::service::{CreateSpec, Requester, Service};

/// How often the `templates.warm` entries are looked at again.
pub const WARM_CHECK: Duration = Duration::from_secs(5);

/// What every exec in a sandbox of a template gets unless it says otherwise.
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
pub struct DefaultsView {
    /// Environment variables, under the exec's own.
    pub env: BTreeMap<String, String>,
    /// Working directory when the exec names none.
    pub workdir: Option<String>,
    /// User when the exec names none.
    pub user: Option<String>,
    /// `CMD`, recorded.
    pub cmd: Option<Vec<String>>,
    /// `ENTRYPOINT`, recorded.
    pub entrypoint: Option<Vec<String>>,
    /// Labels, recorded.
    pub labels: BTreeMap<String, String>,
}

/// A template as the API shows it.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct TemplateView {
    /// Unique name; a create's `template` takes it.
    pub name: String,
    /// What it was made from: `dockerfile:PATH` (`petty template build`),
    /// `dockerfile:inline` (a Dockerfile sent to the server, with its
    /// context if one was given) or `image:REFERENCE`.
    pub source: String,
    /// What identifies its content: the image's manifest digest, or the
    /// build's last step key.
    pub digest: String,
    /// Bytes its image takes on disk.
    pub size_bytes: u64,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When a sandbox was last created from it, ms since the Unix epoch.
    pub last_used_ms: i64,
    /// What its sandboxes' execs get.
    pub defaults: DefaultsView,
}

impl From<TemplateRecord> for TemplateView {
    fn from(r: TemplateRecord) -> Self {
        let d = r.defaults;
        Self {
            name: r.name,
            source: r.source,
            digest: r.digest,
            size_bytes: r.size_bytes,
            created_at_ms: r.created_at_ms,
            last_used_ms: r.last_used_ms,
            defaults: DefaultsView {
                env: d.env.into_iter().collect(),
                workdir: d.workdir,
                user: d.user,
                cmd: d.cmd,
                entrypoint: d.entrypoint,
                labels: d.labels.into_iter().collect(),
            },
        }
    }
}

/// Body of `POST /v1/templates` and the arguments of the `build_template`
/// tool: a name and either `from_image` or `dockerfile`.
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
pub struct BuildTemplateSpec {
    /// The template's name (1 to 64 letters, digits, '-', '_', '.'; not
    /// "base"). A template of that name is replaced.
    pub name: String,
    /// Make it from an OCI image: host[:port]/repo:tag, repo@sha256:...,
    /// oci-archive:PATH, docker-archive:PATH or oci:DIR[:TAG] (paths on the
    /// server's host).
    pub from_image: Option<String>,
    /// Or build it from this Dockerfile text (one stage; "FROM base" is
    /// Petty's own image, "FROM NAME" another template). Steps are cached:
    /// a rebuild runs only the steps after the first one that changed.
    pub dockerfile: Option<String>,
    /// With dockerfile: the build context, an absolute path of a directory
    /// on the server's host that COPY and ADD read (default: an empty one).
    pub context: Option<String>,
    /// With dockerfile: values for its ARGs.
    pub build_args: Option<BTreeMap<String, String>>,
    /// With dockerfile: run every step, taking none from the cache.
    pub no_cache: Option<bool>,
}

/// A build request that passed its checks.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    name: String,
    what: BuildFrom,
}

#[derive(Debug, Clone)]
enum BuildFrom {
    Image(String),
    Dockerfile {
        text: String,
        context: Option<PathBuf>,
        build_args: Vec<(String, String)>,
        no_cache: bool,
    },
}

impl BuildPlan {
    /// The template it makes.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One line of a build's progress (`application/x-ndjson` from `POST
/// /v1/templates`); the last is `done` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildLine {
    /// Step `n` of `total` starts, or was found in the cache.
    Step {
        /// Its number, from 1.
        n: usize,
        /// How many steps the build has.
        total: usize,
        /// Its Dockerfile line.
        line: usize,
        /// The instruction as written.
        text: String,
        /// Taken from the cache, not run.
        cached: bool,
    },
    /// Output of step `n`'s command (UTF-8, invalid bytes replaced).
    Output {
        /// The step.
        n: usize,
        /// `stdout` or `stderr`.
        stream: String,
        /// The text.
        data: String,
    },
    /// Anything else, in words (pulling a layer, checking the template).
    Note {
        /// What happens.
        message: String,
    },
    /// The template is made; the last line.
    Done {
        /// The template as recorded.
        template: TemplateView,
    },
    /// The build failed; the last line.
    Error {
        /// Error kind (`bad_request` for the Dockerfile, a step, the
        /// context or the image reference; others as for any route).
        kind: String,
        /// What went wrong and what to do.
        message: String,
    },
}

impl BuildLine {
    /// For a log of a build: a step's line as `petty template build` prints it.
    pub fn summary(&self) -> Option<String> {
        match self {
            Self::Step {
                n,
                total,
                line,
                text,
                cached,
            } => Some(format!(
                "step {n}/{total} (line {line}): {text}{}",
                if *cached { " [cached]" } else { "" }
            )),
            Self::Note { message } => Some(message.clone()),
            _ => None,
        }
    }
}

/// A template's warm pool as `GET /v1/pool` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplatePoolView {
    /// The template.
    pub template: String,
    /// `running`, or `waiting` while the template does not exist (it is
    /// looked for every few seconds and after every build).
    pub state: String,
    /// Target number of warm sandboxes (its `templates.warm` count).
    pub target_size: usize,
    /// Warm sandboxes ready now.
    pub ready: usize,
    /// Creates served warm since the pool started.
    pub hits: u64,
    /// Acquires that had to create since the pool started.
    pub misses: u64,
}

/// The 404 of a template that does not exist, saying where to look.
pub(crate) fn template_not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "no template named {name}; GET /v1/templates (the list_templates tool) lists them, \
             POST /v1/templates (build_template) builds one; \"base\" is Petty's own image"
        ),
    )
}

/// The template builder and the one-at-a-time lock.
pub(crate) struct Builds {
    builder: Option<Arc<petty_build::Builder>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Builds {
    pub(crate) fn new(builder: Option<petty_build::Builder>) -> Self {
        Self {
            builder: builder.map(Arc::new),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// Removes the build sandbox of a build dropped before its end, holding
/// the build lock until it is gone (a next build's sandbox is never the
/// one removed).
struct CancelOnDrop {
    builder: Arc<petty_build::Builder>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl CancelOnDrop {
    fn finish(mut self) {
        self.held = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        self.metrics
            .template_build_failures
            .fetch_add(1, Ordering::Relaxed);
        let builder = self.builder.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            tracing::info!("template build given up on; removing its build sandbox");
            rt.spawn(async move {
                builder.cancel().await;
                drop(held);
            });
        }
    }
}

/// The `templates.warm` entries and their pools.
pub(crate) struct WarmPools {
    entries: Vec<(String, usize)>,
    pools: std::sync::Mutex<BTreeMap<String, WarmPool>>,
    /// Entries whose template was missing, said once each.
    missing: std::sync::Mutex<BTreeSet<String>>,
    /// Serializes the changes to `pools` (a look at the entries, a removal).
    changes: tokio::sync::Mutex<()>,
    stop: tokio_util::sync::CancellationToken,
}

struct WarmPool {
    pool: SandboxPool,
    /// The template when the pool started: a rebuild changes it.
    made_from: Made,
    target: usize,
}

/// What a pool's sandboxes were made from: the image, and the defaults
/// their execs got at create (a rebuild may change only those).
#[derive(PartialEq)]
struct Made {
    rootfs: PathBuf,
    digest: String,
    defaults: petty_core::ImageDefaults,
}

impl Made {
    fn of(r: &TemplateRecord) -> Self {
        Self {
            rootfs: r.rootfs.clone(),
            digest: r.digest.clone(),
            defaults: r.defaults.clone(),
        }
    }
}

impl WarmPools {
    pub(crate) fn new(entries: Vec<(String, usize)>) -> Self {
        Self {
            entries: entries.into_iter().filter(|(_, n)| *n > 0).collect(),
            pools: Default::default(),
            missing: Default::default(),
            changes: tokio::sync::Mutex::new(()),
            stop: tokio_util::sync::CancellationToken::new(),
        }
    }

    fn wanted(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, count)| *count)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks `templates.warm`: each entry `NAME` or `NAME=COUNT`, a template
/// name other than `base` (whose pool is `pool.size`), each once.
pub(crate) fn warm_entries(
    settings: &petty_config::Settings,
) -> Result<Vec<(String, usize)>, String> {
    let entries = settings.templates.warm_pools()?;
    let mut seen = BTreeSet::new();
    for (name, _) in &entries {
        if name == petty_core::BASE_TEMPLATE {
            return Err(
                "templates.warm: \"base\" is Petty's own image, whose warm pool is pool.size; \
                 set that instead"
                    .into(),
            );
        }
        petty_core::catalog::check_template_name(name)
            .map_err(|e| format!("templates.warm entry {name:?}: {e}"))?;
        if !seen.insert(name.clone()) {
            return Err(format!(
                "templates.warm names {name} twice; give it once, as {name}=COUNT"
            ));
        }
    }
    Ok(entries)
}

fn build_error(e: BuildError) -> ApiError {
    use petty_oci::OciError as O;
    let kind = match &e {
        BuildError::Dockerfile(_)
        | BuildError::Context { .. }
        | BuildError::StepFailed { .. }
        | BuildError::Step { .. } => ErrorKind::BadRequest,
        BuildError::Core(CoreError::TemplateNotFound(name)) => {
            return ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "the Dockerfile's FROM names template {name}, which does not exist; \
                     FROM base is Petty's own image, GET /v1/templates lists the others"
                ),
            )
        }
        BuildError::Core(c) => crate::error::kind_of(c),
        BuildError::Oci(o) => match o {
            O::BadReference { .. } | O::BadSource { .. } | O::NoPlatform { .. } => {
                ErrorKind::BadRequest
            }
            O::NotFound { .. } => ErrorKind::NotFound,
            O::Auth { .. } => ErrorKind::Forbidden,
            _ => ErrorKind::Unavailable,
        },
        BuildError::Image(_) => ErrorKind::Unavailable,
        BuildError::Io { .. } => ErrorKind::Internal,
        BuildError::Unusable { .. } => ErrorKind::VmError,
    };
    ApiError::new(kind, error_chain(&e))
}

impl Service {
    fn builder(&self) -> ApiResult<Arc<petty_build::Builder>> {
        self.inner().builds.builder.clone().ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unavailable,
                "this server was started without a template builder; build templates with \
                 `petty template build` on its host",
            )
        })
    }

    /// Every template (`base`, Petty's own image, is not stored and not listed).
    pub async fn list_templates(&self) -> ApiResult<Vec<TemplateView>> {
        let all = self
            .inner()
            .manager
            .templates()
            .await
            .map_err(|e| self.fail(e))?;
        Ok(all.into_iter().map(TemplateView::from).collect())
    }

    /// One template.
    pub async fn get_template(&self, name: &str) -> ApiResult<TemplateView> {
        match self.inner().manager.template_info(name).await {
            Ok(r) => Ok(r.into()),
            Err(CoreError::TemplateNotFound(_)) => Err(template_not_found(name)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Removes a template and its image: refused (409) while a sandbox or
    /// snapshot uses it; this daemon's warm sandboxes of it go first.
    #[tracing::instrument(skip(self))]
    pub async fn delete_template(&self, name: &str) -> ApiResult<()> {
        let record = match self.inner().manager.template_info(name).await {
            Ok(r) => r,
            Err(CoreError::TemplateNotFound(_)) => return Err(template_not_found(name)),
            Err(e) => return Err(self.fail(e)),
        };
        let warm = &self.inner().warm;
        let changing = warm.changes.lock().await;
        // What keeps it other than the warm pool: refused without
        // emptying the pool.
        let manager = &self.inner().manager;
        let mut users: Vec<String> = manager
            .list()
            .await
            .map_err(|e| self.fail(e))?
            .into_iter()
            .filter(|s| s.rootfs == record.rootfs && !s.pooled)
            .map(|s| format!("sandbox {}", s.name))
            .collect();
        users.extend(
            manager
                .list_snapshots()
                .await
                .map_err(|e| self.fail(e))?
                .into_iter()
                .filter(|s| s.rootfs == record.rootfs)
                .map(|s| format!("snapshot {}", s.name)),
        );
        if !users.is_empty() {
            return Err(self.fail(CoreError::TemplateInUse {
                name: name.to_string(),
                users,
            }));
        }
        let emptied = lock(&warm.pools).remove(name);
        if let Some(p) = &emptied {
            tracing::info!(template = %name, "emptying the template's warm pool before removing it");
            if let Err(e) = p.pool.shutdown().await {
                tracing::warn!(template = %name, "emptying the warm pool: {e}");
            }
        }
        let removed = manager.remove_template(name).await;
        drop(changing);
        match removed {
            Ok(()) => {
                tracing::info!(template = %name, "template removed");
                Ok(())
            }
            Err(e) => {
                if emptied.is_some() {
                    // Still there (a sandbox made from it meanwhile): its pool comes back.
                    self.check_warm_pools().await;
                }
                Err(self.fail(e))
            }
        }
    }

    /// Checks a build request before anything runs: 400s that say what to
    /// give instead; 503 when this server has no builder.
    pub fn check_build(&self, spec: BuildTemplateSpec) -> ApiResult<BuildPlan> {
        self.builder()?;
        petty_core::catalog::check_template_name(&spec.name).map_err(|e| self.fail(e))?;
        let for_dockerfile = spec.context.is_some()
            || spec.build_args.as_ref().is_some_and(|a| !a.is_empty())
            || spec.no_cache == Some(true);
        let what = match (spec.from_image, spec.dockerfile) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give from_image (an image reference) or dockerfile (a Dockerfile's text), not both",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "nothing to build from: give dockerfile (a Dockerfile's text, e.g. \
                     \"FROM base\\nRUN pip install requests\") or from_image (e.g. \
                     \"registry.example.com/python:3.12\", \"oci-archive:/path/image.tar\")",
                ))
            }
            (Some(_), None) if for_dockerfile => {
                return Err(ApiError::bad_request(
                    "context, build_args and no_cache are for a Dockerfile build; leave them out with from_image",
                ))
            }
            (Some(image), None) => {
                let image = image.trim().to_string();
                let source = image
                    .parse::<petty_oci::ImageSource>()
                    .map_err(|e| ApiError::bad_request(format!("from_image: {e}")))?;
                if let Some(path) = source.local_path() {
                    self.check_host_path("from_image", &path)?;
                }
                BuildFrom::Image(image)
            }
            (None, Some(text)) => {
                if text.trim().is_empty() {
                    return Err(ApiError::bad_request(
                        "dockerfile is empty; give the Dockerfile's text, starting with FROM \
                         (\"FROM base\" is Petty's own image)",
                    ));
                }
                let build_args: Vec<(String, String)> =
                    spec.build_args.unwrap_or_default().into_iter().collect();
                let parsed = petty_dockerfile::parse(&text)
                    .map_err(|e| ApiError::bad_request(format!("dockerfile: {e}")))?;
                let plan = petty_dockerfile::plan(&parsed, &build_args)
                    .map_err(|e| ApiError::bad_request(format!("dockerfile: {e}")))?;
                // A FROM naming a local archive reads the host as a context does.
                if let Ok(source) = plan.base.parse::<petty_oci::ImageSource>() {
                    if let Some(path) = source.local_path() {
                        self.check_host_path("the Dockerfile's FROM", &path)?;
                    }
                }
                let context = match spec.context {
                    None => None,
                    Some(c) => Some(self.check_host_path("context", &check_context(&c)?)?),
                };
                BuildFrom::Dockerfile {
                    text,
                    context,
                    build_args,
                    no_cache: spec.no_cache.unwrap_or(false),
                }
            }
        };
        Ok(BuildPlan {
            name: spec.name,
            what,
        })
    }

    /// Builds a template as `plan` says, telling `progress` each step,
    /// output and note as they come; the template as recorded. One build
    /// runs at a time (a second waits). Dropping the future before its end
    /// gives the build up: its build sandbox is removed.
    #[tracing::instrument(skip_all, fields(template = %plan.name))]
    pub async fn build_template(
        &self,
        plan: BuildPlan,
        progress: &(dyn Fn(BuildLine) + Send + Sync),
    ) -> ApiResult<TemplateView> {
        let builder = self.builder()?;
        let lock = self.inner().builds.lock.clone();
        let held = match lock.clone().try_lock_owned() {
            Ok(held) => held,
            Err(_) => {
                progress(BuildLine::Note {
                    message:
                        "another template build is running (one runs at a time); waiting for it"
                            .into(),
                });
                lock.lock_owned().await
            }
        };
        let guard = CancelOnDrop {
            builder: builder.clone(),
            held: Some(held),
            metrics: self.inner().metrics.clone(),
        };
        let built = self.run_build(&builder, &plan, progress).await;
        guard.finish();
        let m = &self.inner().metrics;
        match built {
            Ok(record) => {
                m.template_builds.fetch_add(1, Ordering::Relaxed);
                tracing::info!(digest = %record.digest, "template built");
                if self.inner().warm.wanted(&plan.name).is_some() {
                    // Its warm pool starts, or restarts on the new image.
                    let service = self.clone();
                    tokio::spawn(async move { service.check_warm_pools().await });
                }
                Ok(record.into())
            }
            Err(e) => {
                m.template_build_failures.fetch_add(1, Ordering::Relaxed);
                let e = build_error(e);
                tracing::info!(
                    kind = e.kind.as_str(),
                    "template build failed: {}",
                    e.message
                );
                Err(e)
            }
        }
    }

    async fn run_build(
        &self,
        builder: &petty_build::Builder,
        plan: &BuildPlan,
        progress: &(dyn Fn(BuildLine) + Send + Sync),
    ) -> Result<TemplateRecord, BuildError> {
        let carry = std::sync::Mutex::new(OutputCarry::default());
        let events = |e: Event<'_>| {
            let line = match e {
                Event::Step {
                    n,
                    total,
                    line,
                    text,
                    cached,
                } => BuildLine::Step {
                    n,
                    total,
                    line,
                    text: text.to_string(),
                    cached,
                },
                Event::Output { n, stderr, data } => {
                    let data = lock(&carry).push(n, stderr, data);
                    if data.is_empty() {
                        return;
                    }
                    BuildLine::Output {
                        n,
                        stream: if stderr { "stderr" } else { "stdout" }.into(),
                        data,
                    }
                }
                Event::Note(message) => BuildLine::Note {
                    message: message.to_string(),
                },
            };
            progress(line);
        };
        match &plan.what {
            BuildFrom::Image(source) => builder.import_image(&plan.name, source, &events).await,
            BuildFrom::Dockerfile {
                text,
                context,
                build_args,
                no_cache,
            } => {
                let data_dir = self.config().paths.data_dir.clone();
                let text = text.clone();
                let scratch = tokio::task::spawn_blocking(move || scratch_dir(&data_dir, &text))
                    .await
                    .map_err(|e| BuildError::Io {
                        what: "preparing the build's scratch directory".into(),
                        source: std::io::Error::other(e),
                    })??;
                let req = DockerfileBuild {
                    name: plan.name.clone(),
                    dockerfile: scratch.path().join("Dockerfile"),
                    context: context
                        .clone()
                        .unwrap_or_else(|| scratch.path().join("context")),
                    build_args: build_args.clone(),
                    no_cache: *no_cache,
                };
                let mut record = builder.build_dockerfile(&req, &events).await?;
                // The builder names the Dockerfile's path, a scratch file
                // gone by now: say where it came from instead.
                record.source = match context {
                    Some(c) => format!("dockerfile:inline (context {})", c.display()),
                    None => "dockerfile:inline".into(),
                };
                self.inner().manager.add_template(record.clone()).await?;
                Ok(record)
            }
        }
    }

    /// Gives up the build in flight, if any (the daemon's shutdown).
    pub(crate) async fn cancel_build(&self) {
        if let Some(b) = &self.inner().builds.builder {
            b.cancel().await;
        }
    }

    /// The warm pool of template `name`, when `templates.warm` has one running.
    /// Every running `templates.warm` pool, by template.
    pub(crate) fn template_pools(&self) -> Vec<(String, SandboxPool)> {
        lock(&self.inner().warm.pools)
            .iter()
            .map(|(t, p)| (t.clone(), p.pool.clone()))
            .collect()
    }

    pub(crate) fn template_pool(&self, name: &str) -> Option<SandboxPool> {
        lock(&self.inner().warm.pools)
            .get(name)
            .map(|p| p.pool.clone())
    }

    /// Every `templates.warm` pool's figures, in the entries' order.
    pub(crate) fn template_pool_views(&self) -> Vec<TemplatePoolView> {
        let warm = &self.inner().warm;
        let pools = lock(&warm.pools);
        warm.entries
            .iter()
            .map(|(name, count)| match pools.get(name) {
                Some(p) => {
                    let s = p.pool.stats();
                    TemplatePoolView {
                        template: name.clone(),
                        state: "running".into(),
                        target_size: p.target,
                        ready: p.pool.size(),
                        hits: s.warm_hits,
                        misses: s.cold_misses,
                    }
                }
                None => TemplatePoolView {
                    template: name.clone(),
                    state: "waiting".into(),
                    target_size: *count,
                    ready: 0,
                    hits: 0,
                    misses: 0,
                },
            })
            .collect()
    }

    /// Starts the `templates.warm` pools whose templates exist, and looks
    /// again every [`WARM_CHECK`] until [`Service::stop_warm_pools`].
    pub(crate) async fn start_warm_pools(&self) {
        if self.inner().warm.entries.is_empty() {
            return;
        }
        self.check_warm_pools().await;
        let weak = self.downgrade();
        let stop = self.inner().warm.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(WARM_CHECK) => {}
                }
                let Some(service) = Service::upgrade(&weak) else {
                    return;
                };
                service.check_warm_pools().await;
            }
        });
    }

    /// Brings each `templates.warm` pool in line with its template: started
    /// once it exists, restarted when rebuilt, emptied when gone.
    pub(crate) async fn check_warm_pools(&self) {
        let warm = &self.inner().warm;
        let _changing = warm.changes.lock().await;
        for (name, count) in &warm.entries {
            if warm.stop.is_cancelled() {
                return;
            }
            let record = match self.inner().manager.template_info(name).await {
                Ok(r) => Some(r),
                Err(CoreError::TemplateNotFound(_)) => None,
                Err(e) => {
                    tracing::warn!(template = %name, "templates.warm: looking the template up: {e}");
                    continue;
                }
            };
            let (running, current) = {
                let pools = lock(&warm.pools);
                let p = pools.get(name);
                (
                    p.is_some(),
                    p.zip(record.as_ref())
                        .is_some_and(|(p, r)| p.made_from == Made::of(r)),
                )
            };
            if running && !current {
                let old = lock(&warm.pools).remove(name);
                if let Some(old) = old {
                    tracing::info!(template = %name, "template rebuilt or removed; emptying its warm pool");
                    if let Err(e) = old.pool.shutdown().await {
                        tracing::warn!(template = %name, "emptying the warm pool: {e}");
                    }
                }
            } else if running {
                continue;
            }
            let Some(record) = record else {
                if lock(&warm.missing).insert(name.clone()) {
                    tracing::warn!(
                        template = %name,
                        "templates.warm names template {name}, which does not exist (yet); its pool starts once it is built"
                    );
                }
                continue;
            };
            lock(&warm.missing).remove(name);
            let spec = CreateSpec {
                template: Some(name.clone()),
                ..Default::default()
            };
            let owner = Requester {
                owner: "pool".into(),
                session: false,
            };
            let sandbox_config = match self.sandbox_config(&spec, &owner) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(template = %name, "templates.warm: the pool's sandbox config is refused: {e}");
                    continue;
                }
            };
            let pool = SandboxPool::new(
                self.manager().clone(),
                PoolConfig {
                    min_size: *count,
                    max_concurrent_boots: self.config().pool.max_concurrent_boots,
                    fill_interval: Duration::from_secs(1),
                    sandbox_config,
                    warmup: self.config().pool.warmup_command.clone(),
                },
            );
            pool.start();
            tracing::info!(template = %name, size = count, "warm pool started");
            lock(&warm.pools).insert(
                name.clone(),
                WarmPool {
                    pool,
                    made_from: Made::of(&record),
                    target: *count,
                },
            );
        }
    }

    /// Stops looking at `templates.warm` and empties every template pool.
    pub(crate) async fn stop_warm_pools(&self) {
        let warm = &self.inner().warm;
        warm.stop.cancel();
        let _changing = warm.changes.lock().await;
        let pools: Vec<WarmPool> = std::mem::take(&mut *lock(&warm.pools))
            .into_values()
            .collect();
        for p in pools {
            if let Err(e) = p.pool.shutdown().await {
                eprintln!("petty: emptying a template's warm pool: {e}");
            }
        }
    }
}

impl Service {
    /// `path` (what a build through the daemon would read on the host) is
    /// inside one of `templates.host_paths`, its symlinks resolved; the
    /// resolved path.
    fn check_host_path(&self, what: &str, path: &std::path::Path) -> ApiResult<PathBuf> {
        let roots = &self.config().templates.host_paths;
        let forbidden = || {
            ApiError::new(
                ErrorKind::Forbidden,
                format!(
                "{what} {} is on the server's host, and builds through the daemon may read only \
                 the directories of templates.host_paths ({}); hint: add a directory to \
                 templates.host_paths in the daemon's config, or run `petty template build` \
                 on the host, which reads what its user can",
                path.display(),
                if roots.is_empty() { "none".to_string() } else { roots.join(", ") }
            ),
            )
        };
        let real = std::fs::canonicalize(path).map_err(|e| {
            ApiError::bad_request(format!(
                "{what} {} cannot be read on the server's host ({e})",
                path.display()
            ))
        })?;
        let inside = roots
            .iter()
            .any(|r| std::fs::canonicalize(r).is_ok_and(|root| real.starts_with(root)));
        if inside {
            Ok(real)
        } else {
            Err(forbidden())
        }
    }
}

/// A Dockerfile context given to the daemon: an absolute directory.
fn check_context(c: &str) -> ApiResult<PathBuf> {
    let path = PathBuf::from(c);
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "context {c:?} is not absolute; give the absolute path of a directory on the \
             server's host, or leave it out for an empty context"
        )));
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(ApiError::bad_request(format!(
            "context {c} is not a directory; give the directory COPY reads from"
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "context {c} cannot be read on the server's host ({e}); give a directory that exists there"
        ))),
    }
}

/// A scratch directory under `data_dir` with the Dockerfile and an empty
/// context; removed when dropped.
fn scratch_dir(data_dir: &std::path::Path, text: &str) -> Result<tempfile::TempDir, BuildError> {
    let io = |what: &str| {
        let what = format!("{what} under {}", data_dir.display());
        move |source| BuildError::Io { what, source }
    };
    let dir = tempfile::Builder::new()
        .prefix(".petty-build-")
        .tempdir_in(data_dir)
        .map_err(io("making the build's scratch directory"))?;
    std::fs::write(dir.path().join("Dockerfile"), text).map_err(io("writing the Dockerfile"))?;
    std::fs::create_dir(dir.path().join("context"))
        .map_err(io("making the empty build context"))?;
    Ok(dir)
}

/// Output split across chunks: a character held back until whole, per step
/// and stream.
#[derive(Default)]
struct OutputCarry {
    step: usize,
    stdout: Utf8Carry,
    stderr: Utf8Carry,
}

impl OutputCarry {
    fn push(&mut self, step: usize, stderr: bool, data: &[u8]) -> String {
        if step != self.step {
            // A new step: what the last one left half-written is dropped.
            *self = Self {
                step,
                ..Default::default()
            };
        }
        if stderr {
            self.stderr.push(data)
        } else {
            self.stdout.push(data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_entries_are_checked() {
        let mut s = petty_config::Settings::default();
        s.templates.warm = vec!["py".into(), "node=3".into()];
        assert_eq!(
            warm_entries(&s).unwrap(),
            vec![("py".to_string(), 1), ("node".to_string(), 3)]
        );
        for (bad, want) in [
            (vec!["base=2"], "pool.size"),
            (vec!["py", "py=2"], "twice"),
            (vec!["py=x"], "NAME=COUNT"),
            (vec!["a/b"], "not allowed"),
        ] {
            s.templates.warm = bad.iter().map(|b| b.to_string()).collect();
            let e = warm_entries(&s).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn output_holds_a_split_character_back_per_step() {
        let mut c = OutputCarry::default();
        let snow = "☃".as_bytes();
        assert_eq!(c.push(1, false, &[b'a', snow[0]]), "a");
        assert_eq!(c.push(1, true, b"e"), "e");
        assert_eq!(c.push(1, false, &snow[1..]), "☃");
        assert_eq!(c.push(2, false, &[snow[0]]), "");
        assert_eq!(c.push(3, false, b"x"), "x");
    }

    #[test]
    fn a_step_line_reads_as_the_cli_prints_it() {
        let l = BuildLine::Step {
            n: 2,
            total: 3,
            line: 4,
            text: "RUN echo x".into(),
            cached: true,
        };
        assert_eq!(
            l.summary().unwrap(),
            "step 2/3 (line 4): RUN echo x [cached]"
        );
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["type"], "step");
        assert_eq!(v["cached"], true);
    }
}
