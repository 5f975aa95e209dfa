//! What builds leave: step caches, images no template uses, layers.

use crate::{BuildError, Builder, Event, Progress, STEP_SNAPSHOT_PREFIX};

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Step cache snapshots.
    pub steps: usize,
    /// Images no template, sandbox or snapshot used.
    pub images: usize,
    /// Bytes freed, about.
    pub bytes: u64,
}

impl Builder {
    /// Removes every step cache, every image nothing uses and every layer
    /// (templates keep their images; a rebuild fetches layers again).
    pub async fn prune(&self) -> Result<PruneReport, BuildError> {
        let mut report = PruneReport::default();
        self.sweep_partial();
        // Newest first: a step's snapshot layers on the one before it.
        let mut steps = self.step_snapshots().await?;
        steps.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
        for s in steps {
            if self.manager.delete_snapshot(&s.name).await.is_ok() {
                report.steps += 1;
                report.bytes += s.size_bytes;
            }
        }
        for image in self.manager.prune_images().await? {
            report.images += 1;
            report.bytes += crate::disk_bytes(&image);
        }
        report.bytes += self
            .layers
            .prune(&Default::default())
            .map_err(BuildError::io("removing cached layers"))?;
        Ok(report)
    }

    /// Removes the oldest step caches, then layers, until the two take no
    /// more than the configured cap.
    pub(crate) async fn enforce_cap(&self, progress: Progress<'_>) -> Result<(), BuildError> {
        let cap = self.settings.cache_max_bytes;
        let mut steps = self.step_snapshots().await?;
        let layers = self.layers.disk_bytes().unwrap_or(0);
        let mut total: u64 = layers + steps.iter().map(|s| s.size_bytes).sum::<u64>();
        if total <= cap {
            return Ok(());
        }
        // Oldest first; one that a later step layers on waits for it.
        steps.sort_by_key(|s| s.created_at_ms);
        let mut removed = 0;
        loop {
            let mut progressed = false;
            for s in &steps {
                if total <= cap {
                    break;
                }
                if self.manager.delete_snapshot(&s.name).await.is_ok() {
                    total = total.saturating_sub(s.size_bytes);
                    removed += 1;
                    progressed = true;
                }
            }
            steps = self.step_snapshots().await?;
            steps.sort_by_key(|s| s.created_at_ms);
            if total <= cap || !progressed {
                break;
            }
        }
        if total > cap {
            let freed = self
                .layers
                .prune(&Default::default())
                .map_err(BuildError::io("removing cached layers"))?;
            total = total.saturating_sub(freed);
        }
        progress(Event::Note(&format!(
            "build cache over its cap ({} MiB): removed {removed} step caches; {} MiB left",
            cap >> 20,
            total >> 20
        )));
        Ok(())
    }

    async fn step_snapshots(&self) -> Result<Vec<petty_core::store::SnapshotRecord>, BuildError> {
        Ok(self
            .manager
            .list_snapshots()
            .await?
            .into_iter()
            .filter(|s| s.name.starts_with(STEP_SNAPSHOT_PREFIX))
            .collect())
    }
}
