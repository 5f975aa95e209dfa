//! A warm pool: ready sandboxes booted ahead of demand, handed out at once.
//!
//! A background task keeps `min_size` sandboxes ready, booting at most
//! `max_concurrent_boots` at a time. [`SandboxPool::acquire`] takes a warm one
//! when there is one (a hit) and boots one on the spot otherwise (a miss);
//! either way the refill starts at once. Pooled sandboxes are ordinary
//! managed sandboxes marked `pooled` in the store, so they count against the
//! manager's limit, and recovery reaps them if their process dies.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{CoreError, SandboxConfig, SandboxId, SandboxManager};

/// [`PoolConfig::warmup`]'s default.
pub const DEFAULT_WARMUP: &str = "true; python3 -c pass 2>/dev/null; true";

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Ready sandboxes to keep (default 3).
    pub min_size: usize,
    /// Boots in flight at once (default 2).
    pub max_concurrent_boots: usize,
    /// How often the pool checks its size (default 1 s); it also refills at
    /// once after every acquire.
    pub fill_interval: Duration,
    /// How each pooled sandbox is built.
    pub sandbox_config: SandboxConfig,
    /// A shell command each sandbox runs once before it joins the pool
    /// (default: `true` and `python3 -c pass`, the commonest first
    /// commands, so a software-emulated VM has translated their code paths
    /// before a user's first exec); empty for none. Its exec is not counted
    /// in the handed-out sandbox's metrics.
    pub warmup: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_size: 3,
            max_concurrent_boots: 2,
            fill_interval: Duration::from_secs(1),
            sandbox_config: SandboxConfig::default(),
            warmup: DEFAULT_WARMUP.into(),
        }
    }
}

/// What a pool has done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolStats {
    /// Acquires served from a warm sandbox.
    pub warm_hits: u64,
    /// Acquires that had to boot one.
    pub cold_misses: u64,
    /// Sandboxes the pool booted for itself.
    pub created: u64,
    /// Sandboxes the pool destroyed (at shutdown).
    pub destroyed: u64,
    /// Sandboxes given back ([`SandboxPool::release`]).
    pub released: u64,
    /// `warm_hits / (warm_hits + cold_misses)`, 0 before any acquire.
    pub hit_rate: f64,
    /// Warm sandboxes ready now.
    pub available: usize,
    /// Warm sandboxes it keeps ([`PoolConfig::min_size`]).
    pub target: usize,
    /// Share of the target handed out and not yet replaced: `1 -
    /// available / target` (0 for an empty target).
    pub utilisation: f64,
    /// Mean time of a successful acquire (a hand-out, or a boot on a
    /// miss), ms; 0 before any.
    pub avg_acquire_ms: f64,
}

/// A warm pool over a [`SandboxManager`]. Cheap to clone.
#[derive(Clone)]
pub struct SandboxPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    manager: SandboxManager,
    config: PoolConfig,
    ready: Mutex<VecDeque<SandboxId>>,
    booting: AtomicUsize,
    running: AtomicBool,
    wake: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    warm_hits: AtomicU64,
    cold_misses: AtomicU64,
    created: AtomicU64,
    destroyed: AtomicU64,
    /// Total time of successful acquires, µs.
    acquire_us: AtomicU64,
    /// Sandboxes given back with [`SandboxPool::release`].
    released: AtomicU64,
    /// What its sandboxes are made from, once it has made one: (memory
    /// MiB, vCPUs, rootfs), so a release can check a sandbox is one of
    /// them.
    shape: Mutex<Option<(u32, u32, std::path::PathBuf)>>,
}

impl SandboxPool {
    /// A pool (not yet filling: call [`start`](Self::start)).
    pub fn new(manager: SandboxManager, config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                manager,
                config,
                ready: Mutex::new(VecDeque::new()),
                booting: AtomicUsize::new(0),
                running: AtomicBool::new(false),
                wake: Notify::new(),
                task: Mutex::new(None),
                warm_hits: AtomicU64::new(0),
                cold_misses: AtomicU64::new(0),
                created: AtomicU64::new(0),
                destroyed: AtomicU64::new(0),
                acquire_us: AtomicU64::new(0),
                released: AtomicU64::new(0),
                shape: Mutex::new(None),
            }),
        }
    }

    /// Starts filling in the background.
    pub fn start(&self) {
        if self.inner.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            while inner.running.load(Ordering::SeqCst) {
                fill(&inner);
                tokio::select! {
                    _ = tokio::time::sleep(inner.config.fill_interval) => {}
                    _ = inner.wake.notified() => {}
                }
            }
        });
        *lock(&self.inner.task) = Some(task);
    }

    /// A ready sandbox: a warm one at once if there is one, else a fresh boot.
    /// The caller owns it from here (destroy it through the manager).
    pub async fn acquire(&self) -> Result<SandboxId, CoreError> {
        self.acquire_as(None, false).await
    }

    /// [`acquire`](Self::acquire) for `owner` (see
    /// [`SandboxConfig::owner`]; `None` keeps the pool config's), going with
    /// its owner process when `bound_to_owner`
    /// ([`SandboxConfig::bound_to_owner`]). Its TTL and idle timeout count
    /// from now.
    pub async fn acquire_as(
        &self,
        owner: Option<&str>,
        bound_to_owner: bool,
    ) -> Result<SandboxId, CoreError> {
        let started = std::time::Instant::now();
        let warm = lock(&self.inner.ready).pop_front();
        self.inner.wake.notify_one();
        if let Some(id) = warm {
            self.inner.warm_hits.fetch_add(1, Ordering::Relaxed);
            // Handing out is a row update; the VM is already up.
            let ms = started.elapsed().as_millis() as u64;
            self.inner
                .manager
                .unpool(id, owner.map(str::to_string), bound_to_owner, ms)
                .await?;
            self.timed(started);
            return Ok(id);
        }
        self.inner.cold_misses.fetch_add(1, Ordering::Relaxed);
        let mut config = self.inner.config.sandbox_config.clone();
        if let Some(owner) = owner {
            config.owner = Some(owner.to_string());
        }
        config.bound_to_owner = bound_to_owner;
        let id = self.inner.manager.create(config).await?;
        self.timed(started);
        Ok(id)
    }

    fn timed(&self, started: std::time::Instant) {
        let us = started.elapsed().as_micros() as u64;
        self.inner.acquire_us.fetch_add(us, Ordering::Relaxed);
    }

    /// True when `record` is a sandbox this pool makes: same memory, vCPUs
    /// and image (the pool's own sandboxes tell it the image once it has
    /// made one).
    pub fn fits(&self, record: &crate::SandboxInfo) -> bool {
        let c = &self.inner.config.sandbox_config;
        if (record.memory_mib, record.vcpus) != (c.memory_mib, c.vcpu_count) {
            return false;
        }
        match &*lock(&self.inner.shape) {
            Some((_, _, rootfs)) => *rootfs == record.rootfs,
            None => false,
        }
    }

    /// Takes back a sandbox handed out by this pool (or made like its
    /// sandboxes) and returns the one that replaces it: the sandbox is
    /// destroyed — its files, processes and memory go with its VM, and its
    /// id is never handed out again, so whoever held it cannot reach the
    /// next user's — and a fresh one is restored from the template snapshot
    /// in its place before this returns, first in line for the next
    /// acquire. A VM that has run cannot load a snapshot again, so the
    /// reset is a new VMM restoring the template, not a reboot. Refused
    /// (nothing changed) for a sandbox still in the pool or not of its kind
    /// ([`fits`](Self::fits)).
    pub async fn release(&self, key: &str) -> Result<SandboxId, CoreError> {
        let record = self.inner.manager.info(key).await?;
        if record.pooled {
            return Err(CoreError::InvalidConfig(format!(
                "sandbox {} is in the warm pool already",
                record.name
            )));
        }
        if !self.fits(&record) {
            return Err(CoreError::InvalidConfig(format!(
                "sandbox {} ({} MiB, {} vCPUs, image {}) is not of this pool's kind; destroy it instead",
                record.name,
                record.memory_mib,
                record.vcpus,
                record.rootfs.display()
            )));
        }
        self.inner.manager.destroy(&record.id.to_string()).await?;
        self.inner.released.fetch_add(1, Ordering::Relaxed);
        let fresh = make_one(&self.inner).await?;
        lock(&self.inner.ready).push_front(fresh);
        Ok(fresh)
    }

    /// Warm sandboxes ready now.
    pub fn size(&self) -> usize {
        lock(&self.inner.ready).len()
    }

    /// Counters so far.
    pub fn stats(&self) -> PoolStats {
        let i = &self.inner;
        let hits = i.warm_hits.load(Ordering::Relaxed);
        let misses = i.cold_misses.load(Ordering::Relaxed);
        let (available, target) = (self.size(), i.config.min_size);
        PoolStats {
            warm_hits: hits,
            cold_misses: misses,
            created: i.created.load(Ordering::Relaxed),
            destroyed: i.destroyed.load(Ordering::Relaxed),
            released: i.released.load(Ordering::Relaxed),
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            available,
            target,
            utilisation: if target == 0 {
                0.0
            } else {
                1.0 - (available.min(target) as f64 / target as f64)
            },
            avg_acquire_ms: if hits + misses == 0 {
                0.0
            } else {
                i.acquire_us.load(Ordering::Relaxed) as f64 / (hits + misses) as f64 / 1000.0
            },
        }
    }

    /// True between [`start`](Self::start) and [`shutdown`](Self::shutdown).
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Stops filling, waits for boots in flight, and destroys every
    /// sandbox the pool still holds.
    pub async fn shutdown(&self) -> Result<(), CoreError> {
        self.inner.running.store(false, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        while self.inner.booting.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held: Vec<_> = lock(&self.inner.ready).drain(..).collect();
        let mut first_err = None;
        for id in held {
            match self.inner.manager.destroy(&id.to_string()).await {
                Ok(()) => {
                    self.inner.destroyed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Starts as many boots as the pool is short, within the boot limit.
fn fill(inner: &Arc<PoolInner>) {
    loop {
        let ready = lock(&inner.ready).len();
        let booting = inner.booting.load(Ordering::SeqCst);
        if !inner.running.load(Ordering::SeqCst)
            || ready + booting >= inner.config.min_size
            || booting >= inner.config.max_concurrent_boots
        {
            return;
        }
        inner.booting.fetch_add(1, Ordering::SeqCst);
        let inner = inner.clone();
        tokio::spawn(async move {
            match make_one(&inner).await {
                Ok(id) => {
                    lock(&inner.ready).push_back(id);
                    inner.booting.fetch_sub(1, Ordering::SeqCst);
                    inner.wake.notify_one();
                }
                Err(e) => {
                    // At capacity or out of assets: try again next interval,
                    // not at once.
                    tracing::warn!("warm pool could not boot a sandbox: {e}");
                    inner.booting.fetch_sub(1, Ordering::SeqCst);
                }
            }
        });
    }
}

/// One pooled sandbox from the pool's config (a template restore where the
/// backend can), warmed up.
async fn make_one(inner: &Arc<PoolInner>) -> Result<SandboxId, CoreError> {
    let id = inner
        .manager
        .create_inner(crate::manager::CreatePlan::pooled(
            inner.config.sandbox_config.clone(),
        ))
        .await?;
    if lock(&inner.shape).is_none() {
        if let Ok(r) = inner.manager.info(&id.to_string()).await {
            *lock(&inner.shape) = Some((r.memory_mib, r.vcpus, r.rootfs));
        }
    }
    if !inner.config.warmup.is_empty() {
        // Under software emulation a fresh VMM translates every guest code
        // path on first use: this way the user's first exec does not pay
        // for it.
        let _ = inner
            .manager
            .execute(&id.to_string(), &inner.config.warmup)
            .await;
    }
    inner.created.fetch_add(1, Ordering::Relaxed);
    Ok(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
