//! Templates from OCI images: pulled from a registry or read from an
//! archive (`petty-oci`), unpacked, made into an image with the agent
//! (`petty-image`), cached by manifest digest.

use std::path::PathBuf;

use petty_core::{ImageDefaults, TemplateRecord};

use crate::{disk_bytes, BuildError, Builder, Event, Progress};

impl Builder {
    /// Makes template `name` from image `source` (a registry reference,
    /// `oci-archive:PATH`, `docker-archive:PATH` or `oci:DIR`); returns it
    /// as recorded.
    pub async fn import_image(
        &self,
        name: &str,
        source: &str,
        progress: Progress<'_>,
    ) -> Result<TemplateRecord, BuildError> {
        petty_core::catalog::check_template_name(name)?;
        self.sweep_partial();
        let (rootfs, image) = self.image_rootfs(source, progress).await?;
        let now = petty_core::store::now_ms();
        let record = TemplateRecord {
            name: name.to_string(),
            source: format!("image:{source}"),
            size_bytes: disk_bytes(&rootfs),
            rootfs,
            digest: image.manifest_digest.to_string(),
            defaults: defaults_of(&image.config),
            created_at_ms: now,
            last_used_ms: now,
        };
        self.manager.add_template(record.clone()).await?;
        if let Err(e) = self.check_usable(name, progress).await {
            let _ = self.manager.remove_template(name).await;
            return Err(e);
        }
        self.enforce_cap(progress).await?;
        Ok(record)
    }

    /// The image `source` names as a root file system image
    /// (`<images>/<manifest digest>.ext4`), made unless it exists.
    pub(crate) async fn image_rootfs(
        &self,
        source: &str,
        progress: Progress<'_>,
    ) -> Result<(PathBuf, petty_oci::Image), BuildError> {
        let parsed: petty_oci::ImageSource = source.parse()?;
        let note = |line: &str| progress(Event::Note(line));
        let image = petty_oci::pull(&parsed, &self.layers, &self.pull, &note).await?;
        let dir = self.manager.images_dir();
        let rootfs = dir.join(format!("{}.ext4", image.manifest_digest.hex()));
        if rootfs.is_file() {
            progress(Event::Note(&format!(
                "image {} is unpacked already",
                image.manifest_digest
            )));
            return Ok((rootfs, image));
        }
        std::fs::create_dir_all(&dir)
            .map_err(BuildError::io(format!("creating {}", dir.display())))?;
        let tree = dir.join(format!(
            ".unpack-{}-{}",
            image.manifest_digest.hex(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree)
            .map_err(BuildError::io(format!("creating {}", tree.display())))?;
        let (layers, images, limits) = (
            self.layers.clone(),
            self.images.clone(),
            self.pull.limits.clone(),
        );
        let (img, tree2, out) = (image.clone(), tree.clone(), rootfs.clone());
        // Blocking work on its own thread; its progress lines come back
        // here as they are written.
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut work = tokio::task::spawn_blocking(move || {
            let note = |line: &str| {
                let _ = tx.send(line.to_string());
            };
            petty_oci::unpack(&img, &layers, &tree2, &limits, &note)?;
            note("making the root file system image (agent, mkfs.ext4)");
            images.image_from_tree(&tree2, &out)?;
            Ok::<_, BuildError>(())
        });
        let made = loop {
            tokio::select! {
                Some(line) = lines.recv() => progress(Event::Note(&line)),
                done = &mut work => break done,
            }
        };
        while let Ok(line) = lines.try_recv() {
            progress(Event::Note(&line));
        }
        let _ = std::fs::remove_dir_all(&tree);
        made.map_err(|e| BuildError::io("unpacking the image")(std::io::Error::other(e)))??;
        progress(Event::Note(&format!("image ready: {}", rootfs.display())));
        Ok((rootfs, image))
    }
}

/// What an image's configuration makes the template's defaults.
pub(crate) fn defaults_of(c: &petty_oci::ImageConfig) -> ImageDefaults {
    ImageDefaults {
        env: c
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect(),
        workdir: c.working_dir.clone().filter(|w| !w.is_empty()),
        user: c.user.clone().filter(|u| !u.is_empty()),
        cmd: (!c.cmd.is_empty()).then(|| c.cmd.clone()),
        entrypoint: (!c.entrypoint.is_empty()).then(|| c.entrypoint.clone()),
        labels: c
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
