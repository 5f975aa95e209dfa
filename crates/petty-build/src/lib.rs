//! Petty template builds.
//!
//! - [`dockerfile`]: `petty template build NAME -f Dockerfile [CONTEXT]`.
//!   The Dockerfile is planned whole first (`petty-dockerfile`), then its
//!   steps run in a build sandbox: `RUN` as an exec with the step's
//!   environment, working directory and user, `COPY`/`ADD` through the
//!   agent's file operations, `WORKDIR` as a mkdir. After each step that
//!   changes files the guest syncs and the sandbox is snapshotted as
//!   `petty-build-<key>`, the key hashing the previous step's key, the
//!   step and the copied files: a rebuild restores the last snapshot whose
//!   key still matches and runs only what follows. The last snapshot's disk
//!   becomes the template's image (`<data_dir>/images/<key>.ext4`).
//! - [`image`]: `petty template build NAME --from-image REF`: the image is
//!   pulled (or read from an archive) by `petty-oci`, its layers unpacked
//!   and made into an image with the agent (`petty-image`), its `Env`,
//!   `WorkingDir`, `User`, `Cmd` and `Entrypoint` the template's defaults.
//! - [`prune`]: step caches, unused images and layers removed, and the
//!   cache kept under its size cap.
//!
//! Either way a template is recorded in the manager's store only after a
//! sandbox created from it answered an exec, which also leaves its
//! template snapshot made, so the first real create is as fast as the rest.

#![warn(missing_docs)]

pub mod dockerfile;
pub mod image;
pub mod prune;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use petty_core::{CoreError, SandboxId, SandboxManager};

pub use dockerfile::DockerfileBuild;
pub use prune::PruneReport;

/// The prefix of the snapshots a build keeps as its step cache.
pub const STEP_SNAPSHOT_PREFIX: &str = "petty-build-";

/// What a build reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Step `n` of `total` (1-based) starts, or was found in the cache.
    Step {
        /// Its number.
        n: usize,
        /// How many steps the build has.
        total: usize,
        /// Its Dockerfile line.
        line: usize,
        /// The instruction as written.
        text: &'a str,
        /// Taken from the cache, not run.
        cached: bool,
    },
    /// Output of step `n`'s command.
    Output {
        /// The step.
        n: usize,
        /// Its standard error rather than output.
        stderr: bool,
        /// The bytes.
        data: &'a [u8],
    },
    /// Anything else, in words (pulling a layer, making the image).
    Note(&'a str),
}

/// Where a build's events go.
pub type Progress<'a> = &'a (dyn Fn(Event<'_>) + Send + Sync);

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile cannot be built as written.
    #[error("{0}")]
    Dockerfile(#[from] petty_dockerfile::DockerfileError),
    /// The build context cannot give what a COPY asks for.
    #[error("Dockerfile line {line}: {source}")]
    Context {
        /// The COPY's line.
        line: usize,
        /// The cause.
        #[source]
        source: petty_dockerfile::ContextError,
    },
    /// A step's command failed.
    #[error("Dockerfile line {line}: `{text}` failed with exit code {code}{}; fix the command (its output is above) and build again: the steps before it are cached", tail.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
    StepFailed {
        /// Its line.
        line: usize,
        /// The instruction.
        text: String,
        /// Its exit code.
        code: i32,
        /// The last line it wrote to stderr.
        tail: Option<String>,
    },
    /// A step could not be carried out (a COPY's file operations, a
    /// missing tool in the image).
    #[error("Dockerfile line {line}: {message}")]
    Step {
        /// Its line.
        line: usize,
        /// What went wrong and what to do.
        message: String,
    },
    /// The image could not be pulled or unpacked.
    #[error(transparent)]
    Oci(#[from] petty_oci::OciError),
    /// The image could not be made into a root file system.
    #[error(transparent)]
    Image(#[from] petty_image::ImageError),
    /// The manager refused or failed (a sandbox, a snapshot, the store).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The template was made but a sandbox from it did not work.
    #[error("template {name} was made but a sandbox from it does not answer: {cause}")]
    Unusable {
        /// The template.
        name: String,
        /// What happened.
        cause: String,
    },
}

impl BuildError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// How builds run.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Guest memory of a build sandbox in MiB (default 1024: `pip install`
    /// of a large package needs room).
    pub memory_mib: u32,
    /// Give build sandboxes the `public` network, so `RUN apt-get` and
    /// `pip install` work (default true; needs the manager's network
    /// settings, else builds run without a network and say so).
    pub network: bool,
    /// Bound on one step's command (default 1 hour).
    pub step_timeout: Duration,
    /// Bytes the step cache and the layer store may take together; past
    /// it the oldest step caches go first, then layers (default 20 GiB).
    pub cache_max_bytes: u64,
    /// `qemu-img`, which turns a build's last disk into the image.
    pub qemu_img: PathBuf,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            memory_mib: 1024,
            network: true,
            step_timeout: Duration::from_secs(3600),
            cache_max_bytes: 20 << 30,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

/// Builds templates into a manager's store.
pub struct Builder {
    manager: SandboxManager,
    images: petty_image::ImageBuilder,
    layers: petty_oci::Store,
    pull: petty_oci::PullOptions,
    settings: BuildSettings,
    /// The build sandbox running now, removed by [`Builder::cancel`].
    current: Mutex<Option<SandboxId>>,
}

impl Builder {
    /// A builder over `manager`: images made with `images`, layers kept in
    /// `layers`, pulls as `pull` says.
    pub fn new(
        manager: SandboxManager,
        images: petty_image::ImageBuilder,
        layers: petty_oci::Store,
        pull: petty_oci::PullOptions,
        settings: BuildSettings,
    ) -> Self {
        Self {
            manager,
            images,
            layers,
            pull,
            settings,
            current: Mutex::new(None),
        }
    }

    /// The manager it builds into.
    pub fn manager(&self) -> &SandboxManager {
        &self.manager
    }

    /// Removes the build sandbox of a build given up on (Ctrl-C, a client
    /// gone): what it left is only complete cache entries.
    pub async fn cancel(&self) {
        let id = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(id) = id {
            let _ = self.manager.destroy(&id.to_string()).await;
        }
    }

    fn set_current(&self, id: Option<SandboxId>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// Creates a sandbox from the template just recorded and runs an exec
    /// in it: the template works, and its template snapshot is made.
    async fn check_usable(&self, name: &str, progress: Progress<'_>) -> Result<(), BuildError> {
        progress(Event::Note(&format!(
            "checking template {name}: a sandbox from it (its first create saves the snapshot every later create restores)"
        )));
        let config = petty_core::SandboxConfig {
            template: Some(name.to_string()),
            owner: Some("build".into()),
            bound_to_owner: true,
            ..Default::default()
        };
        let id = self
            .manager
            .create(config)
            .await
            .map_err(|e| BuildError::Unusable {
                name: name.to_string(),
                cause: e.to_string(),
            })?;
        // An exec that needs no shell: images without one still get execs.
        let probe = petty_protocol::ExecRequest::argv(["/sbin/petty-agent", "--version"]);
        let result = self.manager.exec(&id.to_string(), probe, None).await;
        let _ = self.manager.destroy(&id.to_string()).await;
        match result {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => Err(BuildError::Unusable {
                name: name.to_string(),
                cause: format!("the agent exited with {}: {}", r.exit_code, r.stderr.trim()),
            }),
            Err(e) => Err(BuildError::Unusable {
                name: name.to_string(),
                cause: e.to_string(),
            }),
        }
    }
}

impl Builder {
    /// Removes what builds interrupted by a kill left in the images
    /// directory: unpacked trees (`.unpack-…-PID`), half-made images
    /// (`.KEY.tmp-PID`, `.image-tmp-PID`) of processes that are gone. Step
    /// caches need no sweep: a snapshot is recorded only when whole.
    pub fn sweep_partial(&self) {
        let Ok(entries) = std::fs::read_dir(self.manager.images_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with('.') {
                continue;
            }
            let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: signal 0 only asks whether the process exists.
            let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
            if alive {
                continue;
            }
            let path = e.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Lowercase hex SHA-256 of `parts`, each followed by a newline.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes a file takes on disk (a sparse image counts what it uses).
pub(crate) fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}
