//! Snapshots, restores and forks.

use std::path::{Path, PathBuf};

use super::{remove_run_dir, CreatePlan, SandboxManager};
use crate::store::{now_ms, SnapshotRecord};
use crate::{CoreError, SandboxConfig, SandboxId};

impl SandboxManager {
    fn snapshots_dir(&self) -> PathBuf {
        self.inner.config.data_dir.join("snapshots")
    }

    /// Snapshots sandbox `key` as `name`: memory, device state and disk,
    /// consistent with each other. The sandbox pauses for it and runs on.
    pub async fn snapshot(&self, key: &str, name: &str) -> Result<SnapshotRecord, CoreError> {
        SandboxConfig::builder().name(name).build().map_err(|_| {
            CoreError::InvalidConfig(format!(
                "snapshot name {name:?} is not allowed; use 1 to 64 letters, digits, '-', '_' or '.'"
            ))
        })?;
        let n = name.to_string();
        if self.db(move |s| s.get_snapshot(&n)).await?.is_some() {
            return Err(CoreError::NameTaken(name.to_string()));
        }
        let sb = self.get(key).await?;
        let source = self.info(key).await?;
        let vmm = self.vmm_named(&source.backend)?;
        let dir = self.snapshots_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let saved = async {
            sb.snapshot_to(&dir).await?;
            // The sandbox runs on already; now make the snapshot one whose
            // children share its memory pages.
            // A networked guest's state loads only into a VM with its
            // interface: the re-save VM runs in the sandbox's namespace.
            let network = source.network.as_ref().map(|_| {
                petty_vmm::VmNetwork::new(petty_net::netns::path_of(
                    &petty_net::NetSettings::netns_name(&source.id.to_string()),
                ))
            });
            let base = petty_vmm::VmConfig {
                memory_mib: source.memory_mib,
                vcpus: source.vcpus,
                network,
                ..petty_vmm::VmConfig::new(
                    format!("resave-{}", uuid::Uuid::new_v4()),
                    &source.kernel,
                    &source.rootfs,
                )
            };
            vmm.share_snapshot_ram(&dir, &base).await?;
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let record = SnapshotRecord {
            name: name.to_string(),
            parent: source.from_snapshot.clone(),
            source_sandbox: source.name.clone(),
            dir: dir.clone(),
            size_bytes: disk_usage(&dir),
            memory_mib: source.memory_mib,
            vcpus: source.vcpus,
            kernel: source.kernel.clone(),
            rootfs: source.rootfs.clone(),
            created_at_ms: now_ms(),
            backend: source.backend.clone(),
            network: source.network.clone(),
        };
        let r = record.clone();
        if let Err(e) = self.db(move |s| s.insert_snapshot(&r)).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(snapshot = %name, source = %source.name, bytes = record.size_bytes, "snapshot taken");
        Ok(record)
    }

    /// The snapshot named `name`.
    pub async fn snapshot_info(&self, name: &str) -> Result<SnapshotRecord, CoreError> {
        let n = name.to_string();
        self.db(move |s| s.get_snapshot(&n))
            .await?
            .ok_or_else(|| CoreError::SnapshotNotFound(name.to_string()))
    }

    /// The disk layer of snapshot `snap`: an image (qcow2 under QEMU)
    /// whose backing chain ends at the snapshot's rootfs, complete as far
    /// as the guest had synced it ([`Sandbox::sync`](crate::Sandbox::sync)).
    pub fn snapshot_disk(&self, snap: &SnapshotRecord) -> Result<PathBuf, CoreError> {
        Ok(self.vmm_named(&snap.backend)?.snapshot_disk(&snap.dir))
    }

    /// Every snapshot, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, CoreError> {
        self.db(|s| s.list_snapshots()).await
    }

    /// Starts a new sandbox from snapshot `snapshot`, named `name` (or after its id).
    pub async fn restore(
        &self,
        snapshot: &str,
        name: Option<&str>,
    ) -> Result<SandboxId, CoreError> {
        let mut b = SandboxConfig::builder();
        if let Some(n) = name {
            b = b.name(n);
        }
        self.restore_with(snapshot, b.build()?).await
    }

    /// Starts a new sandbox from snapshot `snapshot` with `config`'s name,
    /// lifetimes and disk size (`disk_size_mib`, at least the snapshot's);
    /// kernel, memory and vCPUs are the snapshot's.
    pub async fn restore_with(
        &self,
        snapshot: &str,
        config: SandboxConfig,
    ) -> Result<SandboxId, CoreError> {
        let snap = self.snapshot_info(snapshot).await?;
        self.create_inner(CreatePlan::restore(config, snap)).await
    }

    /// `n` new sandboxes from `source`: a snapshot's name, or a running
    /// sandbox (snapshotted first, as `<sandbox>-fork-<n>`). Children share
    /// the snapshot's disk layers copy-on-write; each one's writes are its own.
    pub async fn fork(&self, source: &str, n: usize) -> Result<Vec<SandboxId>, CoreError> {
        self.fork_with(source, n, SandboxConfig::default()).await
    }

    /// [`fork`](Self::fork) with every child given `config`'s lifetimes,
    /// disk size and owner (its name, if any, is not used: each child is
    /// named after its id).
    pub async fn fork_with(
        &self,
        source: &str,
        n: usize,
        mut config: SandboxConfig,
    ) -> Result<Vec<SandboxId>, CoreError> {
        config.name = None;
        if n == 0 {
            return Err(CoreError::InvalidConfig(
                "fork needs a count of at least 1".into(),
            ));
        }
        let s = source.to_string();
        let snap = match self.db(move |st| st.get_snapshot(&s)).await? {
            Some(snap) => snap,
            None => {
                let info = self.info(source).await?;
                let name = format!("{}-fork-{}", info.name, now_ms());
                self.snapshot(source, &name).await?
            }
        };
        self.restore_many(&snap, n, &config).await
    }

    /// Snapshots sandbox `key` as `name` and starts `n` children from it,
    /// in one call: the branch point of a tree search. The children start
    /// side by side (as many at once as `max_concurrent_boots` lets), each
    /// given `config`'s lifetimes, disk size and owner. When any child
    /// fails, the ones started are destroyed and the snapshot is kept (it
    /// was taken whole); the error is the first failure.
    pub async fn branch(
        &self,
        key: &str,
        name: &str,
        n: usize,
        mut config: SandboxConfig,
    ) -> Result<(SnapshotRecord, Vec<SandboxId>), CoreError> {
        if n == 0 {
            return Err(CoreError::InvalidConfig(
                "a branch needs a count of at least 1 child".into(),
            ));
        }
        config.name = None;
        let snap = self.snapshot(key, name).await?;
        let children = self.restore_many(&snap, n, &config).await?;
        Ok((snap, children))
    }

    /// `n` sandboxes restored from `snap` at once; all of them or none.
    async fn restore_many(
        &self,
        snap: &SnapshotRecord,
        n: usize,
        config: &SandboxConfig,
    ) -> Result<Vec<SandboxId>, CoreError> {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (m, plan) = (
                self.clone(),
                CreatePlan {
                    fork: true,
                    ..CreatePlan::restore(config.clone(), snap.clone())
                },
            );
            set.spawn(async move { (i, m.create_inner(plan).await) });
        }
        let mut children = vec![None; n];
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok(id))) => children[i] = Some(id),
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(CoreError::Io(std::io::Error::other(format!(
                        "a child's start ended early: {e}"
                    ))));
                }
            }
        }
        if let Some(e) = first_error {
            for id in children.into_iter().flatten() {
                if let Err(err) = self.destroy(&id.to_string()).await {
                    tracing::warn!(sandbox = %id, error = %err, "removing a child of a failed branch");
                }
            }
            return Err(e);
        }
        Ok(children.into_iter().flatten().collect())
    }

    /// Deletes snapshot `name`, refusing while a snapshot layered on it or a
    /// sandbox restored from it still exists (their disks read its files).
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), CoreError> {
        let snap = self.snapshot_info(name).await?;
        let n = name.to_string();
        let dependents = self.db(move |s| s.snapshot_dependents(&n)).await?;
        if !dependents.is_empty() {
            return Err(CoreError::SnapshotInUse {
                name: name.to_string(),
                dependents,
            });
        }
        remove_run_dir(Some(&snap.dir))?;
        let n = name.to_string();
        self.db(move |s| s.remove_snapshot(&n)).await
    }
}

/// Bytes a directory's files take on disk (sparse files count what they use).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}
