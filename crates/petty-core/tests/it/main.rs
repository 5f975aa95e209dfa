//! The sandbox manager, its warm pool, reaper and recovery over the fake
//! backend of `petty-test-utils`: no QEMU and no guest, but a real SQLite
//! store, real run directories and one placeholder process per VM.
//!
//! Every test runs on a current-thread runtime whose clock is paused
//! (`start_paused`): TTLs and idle timeouts are crossed with
//! `tokio::time::advance`, since the store's clock
//! (`petty_core::store::now_ms`) follows tokio's. `scripts/test-fake` runs
//! this binary with nothing on `$PATH`, which shows that no QEMU is needed;
//! the real-VM tests of the same behaviour are `petty`'s.

mod lifetimes;
mod manager;
mod pool;
mod reaper;
mod recovery;
mod templates;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use petty_core::store::{SandboxRecord, Store};
use petty_core::{ManagerConfig, SandboxConfigBuilder, SandboxId, SandboxManager, SandboxState};
use petty_test_utils::{fake_assets, FakeVmm, VmHandle};

/// One test's host: a data directory, a run root and the fake backend.
pub(crate) struct Env {
    pub fake: Arc<FakeVmm>,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, rootfs) = fake_assets(&dir.path().join("assets"));
        Self {
            fake: Arc::new(FakeVmm::new(dir.path().join("run"))),
            kernel,
            rootfs,
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A manager's config for these tests: no templates (each create is
    /// one boot), and a reaper that runs only when a test asks
    /// (`reap_now`), unless the test sets `reap_interval`.
    pub fn config(&self) -> ManagerConfig {
        ManagerConfig {
            templates: false,
            reap_interval: Duration::from_secs(7 * 24 * 3600),
            ..ManagerConfig::new(self.data_dir())
        }
    }

    pub async fn manager(&self, config: ManagerConfig) -> SandboxManager {
        SandboxManager::new(config, self.fake.clone())
            .await
            .expect("manager")
    }

    /// A sandbox config naming the stand-in kernel and rootfs.
    pub fn sandbox(&self) -> SandboxConfigBuilder {
        petty_core::SandboxConfig::builder()
            .kernel(&self.kernel)
            .rootfs(&self.rootfs)
    }

    /// The store the managers use, opened beside them (as another process
    /// would), to write rows no manager of this process would.
    pub fn store(&self) -> Store {
        std::fs::create_dir_all(self.data_dir()).unwrap();
        Store::open(&self.data_dir().join("petty.db")).unwrap()
    }

    /// Run directories under the run root (its own dot-files aside).
    pub fn run_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("run"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The fake VM of sandbox `id`.
    pub fn vm(&self, id: SandboxId) -> VmHandle {
        self.fake.vm(&id.to_string()).expect("a VM for the sandbox")
    }

    /// No run directory and no VM process is left.
    pub fn assert_clean(&self) {
        assert!(
            self.run_dirs().is_empty(),
            "run dirs: {:?}",
            self.run_dirs()
        );
        assert!(
            self.fake.running().is_empty(),
            "VMs running: {:?}",
            self.fake.running()
        );
    }

    /// A row as another process would have written it: sandbox `name` in
    /// `state`, made by `owner_pid`, with `vm`'s process and run directory.
    pub fn record(
        &self,
        name: &str,
        state: SandboxState,
        vm: Option<&VmHandle>,
        owner_pid: u32,
    ) -> SandboxRecord {
        let id = match vm {
            Some(vm) => vm.id().parse().unwrap(),
            None => SandboxId::new(),
        };
        let now = petty_core::store::now_ms();
        SandboxRecord {
            id,
            name: name.into(),
            state,
            memory_mib: 256,
            vcpus: 2,
            kernel: self.kernel.clone(),
            rootfs: self.rootfs.clone(),
            backend: "qemu".into(),
            vmm_pid: vm.map(VmHandle::pid),
            run_dir: vm.map(|v| v.run_dir().to_path_buf()),
            owner_pid,
            pooled: false,
            created_at_ms: now,
            updated_at_ms: now,
            last_used_ms: now,
            ttl: None,
            idle_timeout: None,
            on_idle: None,
            on_expiry: None,
            reason: None,
            from_snapshot: None,
            disk_size_mib: None,
            owner: String::new(),
            bound_to_owner: false,
            network: None,
            start_kind: petty_core::StartKind::Cold,
            startup_ms: None,
            execs: 0,
            exec_us: 0,
        }
    }
}

/// Waits until `f` holds, yielding to the runtime (paused time moves on
/// whenever nothing else can run). The bound, in real time, only stops a
/// broken build from hanging.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The reason the history gives for the latest removal of `key`.
pub async fn removed_because(m: &SandboxManager, key: &str) -> String {
    m.history(key)
        .await
        .unwrap()
        .first()
        .unwrap_or_else(|| panic!("no history for {key}"))
        .reason
        .clone()
}

pub fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}
