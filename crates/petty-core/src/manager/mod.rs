//! The sandbox manager: every sandbox by id or name, limits, lifetimes, and
//! state in SQLite that outlives the process.
//!
//! Sandboxes of a manager are persistent: their VMs run detached, and any
//! later process with a manager on the same data directory finds them again
//! (attaching to live VMs, reaping dead ones). Each manager runs a reaper
//! task that destroys sandboxes past their TTL or idle timeout, and marks
//! failed the ones whose VM died or whose agent fell silent; why is recorded.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use petty_protocol::{ExecRequest, FileEntry};
use petty_vmm::{BackendKind, Vmm};

use crate::store::{HistoryRecord, SandboxRecord, Store, StoreStats};
use crate::template::Templates;
use crate::{CoreError, ExecResult, Sandbox, SandboxId, SandboxState};

mod config;
mod create;
mod lifecycle;
mod network;
mod recovery;
mod snapshots;
mod stats;
mod templates;

pub use config::ManagerConfig;
pub(crate) use create::CreatePlan;
use create::{StandbyKey, StandbyVm};
pub(crate) use network::{keep_network, make_network, vm_network};
use recovery::reaper;

/// A sandbox as [`SandboxManager::list`] reports it.
pub type SandboxInfo = SandboxRecord;

/// Owns every sandbox. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct SandboxManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// The default backend.
    vmm: Arc<dyn Vmm>,
    /// Other backends sandboxes asked for (or their snapshots were taken
    /// with), made on first use.
    backends: std::sync::Mutex<HashMap<BackendKind, Arc<dyn Vmm>>>,
    store: Arc<Store>,
    config: ManagerConfig,
    /// Sandboxes this process holds a connection to. A blocking lock, held
    /// for a lookup or an insert and never across an await (a guard held
    /// there would make the daemon's futures not `Send`, so it would not
    /// build): no request waits on another sandbox's attach or exec here.
    live: RwLock<HashMap<SandboxId, Arc<Sandbox>>>,
    /// Turns to boot.
    boots: tokio::sync::Semaphore,
    templates: Templates,
    reaper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// VMMs started ahead of template restores, one per template in use.
    standbys: std::sync::Mutex<HashMap<StandbyKey, StandbyVm>>,
    /// Templates whose standby VMM is being started.
    standbys_starting: std::sync::Mutex<HashSet<StandbyKey>>,
    /// Creates and execs this manager made ([`SandboxManager::stats`]).
    counters: crate::metrics::Counters,
    /// When it opened.
    opened: std::time::Instant,
    /// Each sandbox's VMM as last sampled by [`SandboxManager::metrics`]:
    /// CPU use is reported over the time since.
    cpu_samples: std::sync::Mutex<HashMap<SandboxId, crate::metrics::ProcessSample>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl SandboxManager {
    /// Opens the store, recovers what earlier processes left (live VMs are
    /// kept, dead ones reaped, orphaned files removed) and starts the reaper.
    pub async fn new(config: ManagerConfig, vmm: Arc<dyn Vmm>) -> Result<Self, CoreError> {
        if config.data_dir.as_os_str().is_empty() {
            return Err(CoreError::InvalidConfig(
                "ManagerConfig::data_dir is not set; give the configuration's paths.data_dir (ManagerConfig::new)".into(),
            ));
        }
        let path = config.data_dir.join("petty.db");
        let store = Arc::new(blocking(move || Store::open(&path)).await?);
        let inner = Arc::new(Inner {
            vmm,
            backends: std::sync::Mutex::new(HashMap::new()),
            store,
            config: config.clone(),
            live: RwLock::new(HashMap::new()),
            boots: tokio::sync::Semaphore::new(config.max_concurrent_boots.max(1)),
            templates: Templates::new(&config.data_dir),
            reaper: std::sync::Mutex::new(None),
            standbys: std::sync::Mutex::new(HashMap::new()),
            standbys_starting: std::sync::Mutex::new(HashSet::new()),
            counters: Default::default(),
            opened: std::time::Instant::now(),
            cpu_samples: std::sync::Mutex::new(HashMap::new()),
        });
        let manager = Self { inner };
        manager.recover().await?;
        let task = tokio::spawn(reaper(Arc::downgrade(&manager.inner)));
        *manager
            .inner
            .reaper
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(manager)
    }

    /// The manager's configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// The SQLite file.
    pub fn store_path(&self) -> &Path {
        self.inner.store.path()
    }

    /// The store's reads and writes since this manager opened it: what a
    /// request costs in SQLite round trips (tests and benchmarks count them).
    pub fn store_stats(&self) -> StoreStats {
        self.inner.store.stats()
    }

    /// The backend sandboxes get when a create names none.
    pub fn default_backend(&self) -> BackendKind {
        self.inner.vmm.kind()
    }

    /// The backend called `name` (`None` or `auto`: the default), made on
    /// first use with its run directories beside the default's. An error
    /// says why the backend cannot run here.
    fn vmm_for(&self, kind: Option<BackendKind>) -> Result<Arc<dyn Vmm>, CoreError> {
        let default = &self.inner.vmm;
        let kind = match kind {
            None => return Ok(default.clone()),
            Some(k) if k == default.kind() => return Ok(default.clone()),
            Some(k) => k,
        };
        let mut made = self
            .inner
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(v) = made.get(&kind) {
            return Ok(v.clone());
        }
        let (vmm, _) = petty_vmm::choose_backend(
            Some(kind),
            default.root().to_path_buf(),
            &self.inner.config.backends,
        )?;
        let vmm: Arc<dyn Vmm> = Arc::from(vmm);
        made.insert(kind, vmm.clone());
        Ok(vmm)
    }

    /// The backend a row or snapshot records (by name).
    fn vmm_named(&self, name: &str) -> Result<Arc<dyn Vmm>, CoreError> {
        self.vmm_for(Some(name.parse::<BackendKind>()?))
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let store = self.inner.store.clone();
        blocking(move || f(&store)).await
    }

    fn live(&self) -> RwLockReadGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.inner.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn live_mut(&self) -> RwLockWriteGuard<'_, HashMap<SandboxId, Arc<Sandbox>>> {
        self.inner.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of the sandbox with this id or name.
    pub async fn info(&self, key: &str) -> Result<SandboxInfo, CoreError> {
        let k = key.to_string();
        self.db(move |s| s.get(&k))
            .await?
            .ok_or_else(|| CoreError::NotFound(key.to_string()))
    }

    /// Why a removed sandbox went (most recent first).
    pub async fn history(&self, key: &str) -> Result<Vec<HistoryRecord>, CoreError> {
        let k = key.to_string();
        self.db(move |s| s.history(&k)).await
    }

    /// The live sandbox with this id or name, attaching to it if another
    /// process created it.
    pub async fn get(&self, key: &str) -> Result<Arc<Sandbox>, CoreError> {
        let record = self.info(key).await?;
        self.get_by_record(key, &record).await
    }

    /// [`get`](Self::get) given the record just read for `key` with
    /// [`info`](Self::info): a caller that looks at the record first (the
    /// daemon hides warm pool sandboxes) needs no second store read.
    pub async fn get_by_record(
        &self,
        key: &str,
        record: &SandboxRecord,
    ) -> Result<Arc<Sandbox>, CoreError> {
        if record.state == SandboxState::Hibernated {
            // Any request for it brings it back first.
            tracing::info!(sandbox = %record.id, name = %record.name, "a request for a hibernated sandbox resumes it");
            self.wake(record).await?;
            return self
                .live()
                .get(&record.id)
                .cloned()
                .ok_or_else(|| CoreError::NotFound(key.to_string()));
        }
        if matches!(record.state, SandboxState::Ready | SandboxState::Paused) {
            if let Some(sb) = self.live().get(&record.id) {
                return Ok(sb.clone());
            }
        } else {
            // Another process may have stopped it: the store is the truth,
            // and a connection this process still holds is stale.
            self.live_mut().remove(&record.id);
            return Err(CoreError::InvalidState {
                id: record.name.clone(),
                state: record.state.to_string(),
                hint: match &record.reason {
                    Some(r) if r != record.state.as_str() => {
                        format!("{r}; remove it with `petty rm {}`", record.name)
                    }
                    _ => format!("remove it with `petty rm {}`", record.name),
                },
            });
        }
        let vmm = self.vmm_named(&record.backend)?;
        let attached = Sandbox::attach(
            vmm.as_ref(),
            record,
            self.inner.config.connect_timeout,
            self.inner.config.rpc_timeout,
        )
        .await;
        let sandbox = match attached {
            Ok(mut sb) => {
                sb.set_exec_defaults(self.defaults_for(&record.rootfs).await?);
                Arc::new(sb)
            }
            Err(CoreError::Vm(petty_vmm::VmmError::Gone { .. })) => {
                // Its VM died while no process watched: reap it now.
                self.reap(record, "its VMM process is gone").await?;
                return Err(CoreError::NotFound(format!(
                    "{key} (its VM had died; it was removed)"
                )));
            }
            Err(e) => return Err(e),
        };
        Ok(self.hold(sandbox).await)
    }

    /// Runs `f` with the sandbox `key` (attaching if needed) and records the use.
    ///
    /// One store read and one write: the row is read even when this process
    /// holds a connection, since the store is the truth across processes
    /// (another may have stopped or removed the sandbox, and a held
    /// connection does not know); the write is the use (`last_used`).
    pub async fn with_sandbox_async<F, Fut, T>(&self, key: &str, f: F) -> Result<T, CoreError>
    where
        F: FnOnce(Arc<Sandbox>) -> Fut,
        Fut: Future<Output = Result<T, CoreError>>,
    {
        let record = self.info(key).await?;
        self.with_record_async(key, &record, f).await
    }

    /// [`with_sandbox_async`](Self::with_sandbox_async) given the record
    /// just read for `key` with [`info`](Self::info): one store write.
    pub async fn with_record_async<F, Fut, T>(
        &self,
        key: &str,
        record: &SandboxRecord,
        f: F,
    ) -> Result<T, CoreError>
    where
        F: FnOnce(Arc<Sandbox>) -> Fut,
        Fut: Future<Output = Result<T, CoreError>>,
    {
        let sb = self.get_by_record(key, record).await?;
        let id = sb.id();
        let out = {
            // Not idle while it runs, however long (the store's last use
            // moves when it ends).
            let _busy = sb.busy();
            f(sb.clone()).await
        };
        if let Some(cause) = sb.died() {
            // Recorded now, not only by the watcher's task: a CLI process
            // may end before that task runs.
            self.mark_failed(id, &cause).await;
            return out;
        }
        // Idle timeouts are judged from the store, by any process; the
        // commands this connection ran since the last use are counted in
        // the same write.
        let (execs, exec_us) = sb.usage().take();
        self.inner
            .counters
            .execs
            .fetch_add(execs, std::sync::atomic::Ordering::Relaxed);
        let _ = self.db(move |s| s.record_use(id, execs, exec_us)).await;
        out
    }

    /// Runs a shell command in `key`.
    pub async fn execute(&self, key: &str, script: &str) -> Result<ExecResult, CoreError> {
        let script = script.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.execute(&script).await })
            .await
    }

    /// Runs an exec request (argv or shell, env, cwd, timeout) in `key`.
    pub async fn exec(
        &self,
        key: &str,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, CoreError> {
        self.with_sandbox_async(key, |sb| async move { sb.exec(req, stdin).await })
            .await
    }

    /// Runs `code` in `language` in `key`.
    pub async fn execute_code(
        &self,
        key: &str,
        language: &str,
        code: &str,
    ) -> Result<ExecResult, CoreError> {
        let (language, code) = (language.to_string(), code.to_string());
        self.with_sandbox_async(
            key,
            |sb| async move { sb.execute_code(&language, &code).await },
        )
        .await
    }

    /// Reads a whole regular file from `key` (devices, FIFOs and sockets
    /// are refused with [`crate::GuestErrorKind::NotARegularFile`]).
    pub async fn read_file(&self, key: &str, path: &str) -> Result<Vec<u8>, CoreError> {
        let path = path.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.read_file(&path).await })
            .await
    }

    /// Writes a file in `key`.
    pub async fn write_file(&self, key: &str, path: &str, data: &[u8]) -> Result<(), CoreError> {
        let path = path.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.write_file(&path, data).await })
            .await
    }

    /// Lists a directory in `key`.
    pub async fn list_dir(&self, key: &str, path: &str) -> Result<Vec<FileEntry>, CoreError> {
        let path = path.to_string();
        self.with_sandbox_async(key, |sb| async move { sb.list_dir(&path).await })
            .await
    }

    /// Every sandbox in the store, oldest first (pooled ones included).
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, CoreError> {
        self.db(|s| s.list()).await
    }

    /// How many sandboxes hold a VM, across processes.
    pub async fn count(&self) -> Result<usize, CoreError> {
        self.db(|s| s.count_with_vm()).await
    }

    /// True when a sandbox with this id or name exists (in any state).
    pub async fn exists(&self, key: &str) -> Result<bool, CoreError> {
        let k = key.to_string();
        Ok(self.db(move |s| s.get(&k)).await?.is_some())
    }
}

fn short_name(id: SandboxId) -> String {
    format!("sb-{}", &id.to_string()[..8])
}

/// Removes a run (or snapshot) directory, and the VM's jail if it had one.
fn remove_run_dir(dir: Option<&Path>) -> Result<(), CoreError> {
    match dir {
        Some(dir) => Ok(petty_vmm::remove_run_dir(dir)?),
        None => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Io(std::io::Error::other(e)))?
}
