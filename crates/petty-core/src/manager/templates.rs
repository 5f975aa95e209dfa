//! Named templates: recorded, listed, removed, and what creates from them
//! get.

use std::path::{Path, PathBuf};

use super::SandboxManager;
use crate::catalog::{check_template_name, ImageDefaults, TemplateRecord, BASE_TEMPLATE};
use crate::CoreError;

impl SandboxManager {
    /// Where named templates' images live: `<data_dir>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.inner.config.data_dir.join("images")
    }

    /// Records template `record.name` (its image already in place,
    /// normally under [`images_dir`](Self::images_dir)), replacing one of
    /// that name: sandboxes and snapshots made from the one it replaces
    /// keep its image until they go ([`prune_images`](Self::prune_images)
    /// removes it then).
    pub async fn add_template(&self, record: TemplateRecord) -> Result<(), CoreError> {
        check_template_name(&record.name)?;
        if !record.rootfs.is_file() {
            return Err(CoreError::InvalidConfig(format!(
                "template {}'s image {} does not exist",
                record.name,
                record.rootfs.display()
            )));
        }
        let r = record.clone();
        let old = self.db(move |s| s.put_template(&r)).await?;
        if let Some(old) = old.filter(|o| o.rootfs != record.rootfs) {
            self.remove_image_if_unused(&old.rootfs).await?;
        }
        tracing::info!(template = %record.name, source = %record.source, "template recorded");
        Ok(())
    }

    /// Every named template, by name (`base`, Petty's own image, is not
    /// one of them).
    pub async fn templates(&self) -> Result<Vec<TemplateRecord>, CoreError> {
        self.db(|s| s.list_templates()).await
    }

    /// The template named `name`.
    pub async fn template_info(&self, name: &str) -> Result<TemplateRecord, CoreError> {
        let n = name.to_string();
        self.db(move |s| s.get_template(&n))
            .await?
            .ok_or_else(|| CoreError::TemplateNotFound(name.to_string()))
    }

    /// Removes template `name` and its image, refusing while a sandbox or
    /// snapshot uses the image.
    pub async fn remove_template(&self, name: &str) -> Result<(), CoreError> {
        let record = self.template_info(name).await?;
        let rootfs = record.rootfs.clone();
        // Another template on the same image does not keep this one: the
        // image stays for it.
        let users: Vec<String> = self
            .db(move |s| s.rootfs_users(&rootfs))
            .await?
            .into_iter()
            .filter(|u| !u.starts_with("template "))
            .collect();
        if !users.is_empty() {
            return Err(CoreError::TemplateInUse {
                name: name.to_string(),
                users,
            });
        }
        let n = name.to_string();
        self.db(move |s| s.remove_template(&n)).await?;
        self.remove_image_if_unused(&record.rootfs).await?;
        tracing::info!(template = %name, "template removed");
        Ok(())
    }

    /// Removes the images under [`images_dir`](Self::images_dir) that no
    /// template, sandbox or snapshot uses, and the template snapshots of
    /// images that are gone; returns what it removed.
    pub async fn prune_images(&self) -> Result<Vec<PathBuf>, CoreError> {
        let in_use = self.db(|s| s.rootfs_in_use()).await?;
        let mut removed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.images_dir()) {
            for e in entries.flatten() {
                let path = e.path();
                let is_image = path.extension().is_some_and(|x| x == "ext4");
                if is_image && !in_use.contains(&path) && std::fs::remove_file(&path).is_ok() {
                    removed.push(path);
                }
            }
        }
        self.inner.templates.remove_orphans();
        Ok(removed)
    }

    /// Deletes `rootfs` (one of [`images_dir`](Self::images_dir)'s) and
    /// its template snapshots when nothing uses it any more.
    async fn remove_image_if_unused(&self, rootfs: &Path) -> Result<(), CoreError> {
        if !rootfs.starts_with(self.images_dir()) {
            return Ok(());
        }
        let r = rootfs.to_path_buf();
        if !self.db(move |s| s.rootfs_users(&r)).await?.is_empty() {
            return Ok(());
        }
        match std::fs::remove_file(rootfs) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.inner.templates.remove_for(rootfs);
        Ok(())
    }

    /// What execs in a sandbox on `rootfs` get: its template's defaults,
    /// none for any other image.
    pub(crate) async fn defaults_for(&self, rootfs: &Path) -> Result<ImageDefaults, CoreError> {
        // Named templates' images live in images_dir: any other rootfs
        // costs no store read (an attach reads the store once).
        if !rootfs.starts_with(self.images_dir()) {
            return Ok(ImageDefaults::default());
        }
        let r = rootfs.to_path_buf();
        Ok(self
            .db(move |s| s.template_by_rootfs(&r))
            .await?
            .map(|t| t.defaults)
            .unwrap_or_default())
    }

    /// Points `config` at its template's image and defaults (none, or
    /// `base`: unchanged), and records the use.
    pub(crate) async fn resolve_template(
        &self,
        config: &mut crate::SandboxConfig,
    ) -> Result<(), CoreError> {
        match config.template.as_deref() {
            None | Some(BASE_TEMPLATE) => Ok(()),
            Some(name) => {
                let record = self.template_info(name).await?;
                if config.rootfs.is_some() {
                    return Err(CoreError::InvalidConfig(
                        "give a template or a rootfs, not both".into(),
                    ));
                }
                config.rootfs = Some(record.rootfs);
                config.exec_defaults = record.defaults;
                let n = name.to_string();
                let _ = self.db(move |s| s.touch_template(&n)).await;
                Ok(())
            }
        }
    }
}
