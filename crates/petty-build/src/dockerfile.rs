//! Templates from Dockerfiles, built step by step in a build sandbox with
//! every step that changes files cached as a snapshot.

use std::path::{Path, PathBuf};

use petty_core::{ImageDefaults, SandboxConfig, TemplateRecord, BASE_TEMPLATE};
use petty_dockerfile::{Action, Context, ContextEntry, CopySpec, EntryKind, Step};
use petty_protocol::ExecRequest;

use crate::{disk_bytes, sha256_hex, BuildError, Builder, Event, Progress, STEP_SNAPSHOT_PREFIX};

/// Bump when what a step's key covers, or how steps run, changes.
const CACHE_VERSION: &str = "petty-build/1";

/// A Dockerfile build.
#[derive(Debug, Clone)]
pub struct DockerfileBuild {
    /// The template it makes (replacing one of that name).
    pub name: String,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The build context (`COPY`'s sources are relative to it).
    pub context: PathBuf,
    /// `--build-arg NAME=VALUE`s.
    pub build_args: Vec<(String, String)>,
    /// Run every step, using no cached one (`--no-cache`).
    pub no_cache: bool,
}

/// What a build starts from.
pub(crate) struct Base {
    /// Its image (`None`: Petty's own).
    pub(crate) rootfs: Option<PathBuf>,
    /// What its execs get.
    pub(crate) defaults: ImageDefaults,
    /// What identifies it in the step keys.
    pub(crate) identity: String,
}

/// One step, ready to run: its key and, for a COPY, what it copies.
struct Planned {
    step: Step,
    key: String,
    copies: Vec<ContextEntry>,
    changes_files: bool,
}

impl Builder {
    /// Builds template `req.name` from a Dockerfile; returns it as recorded.
    pub async fn build_dockerfile(
        &self,
        req: &DockerfileBuild,
        progress: Progress<'_>,
    ) -> Result<TemplateRecord, BuildError> {
        petty_core::catalog::check_template_name(&req.name)?;
        self.sweep_partial();
        let text = std::fs::read_to_string(&req.dockerfile).map_err(BuildError::io(format!(
            "reading the Dockerfile {}",
            req.dockerfile.display()
        )))?;
        let df = petty_dockerfile::parse(&text)?;
        let first = petty_dockerfile::plan(&df, &req.build_args)?;
        let base = self.base(&first.base, progress).await?;
        let plan =
            petty_dockerfile::plan_on(&df, &req.build_args, &to_plan_defaults(&base.defaults))?;
        for unused in &plan.unused_build_args {
            progress(Event::Note(&format!(
                "warning: build argument {unused} is not declared by an ARG; it is ignored"
            )));
        }
        let context = Context::open(&req.context, None)
            .map_err(|source| BuildError::Context { line: 0, source })?;

        // Every step's key, before anything runs: a COPY's covers what it
        // copies now.
        let mut key = sha256_hex(&[CACHE_VERSION.as_bytes(), base.identity.as_bytes()]);
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in plan.steps {
            let copies = match &step.action {
                Action::Copy(spec) => {
                    context
                        .resolve(spec)
                        .map_err(|source| BuildError::Context {
                            line: step.line,
                            source,
                        })?
                }
                _ => Vec::new(),
            };
            let digest = Context::digest(&copies);
            key = sha256_hex(&[
                key.as_bytes(),
                format!("{:?}", step.action).as_bytes(),
                format!("{:?}", step.env).as_bytes(),
                step.workdir.as_bytes(),
                step.user.as_deref().unwrap_or("").as_bytes(),
                digest.as_bytes(),
            ]);
            let changes_files = !matches!(step.action, Action::Meta);
            steps.push(Planned {
                step,
                key: key.clone(),
                copies,
                changes_files,
            });
        }
        let total = steps.len();

        // The last step whose snapshot exists: everything up to it is
        // cached (its key covers every step before it).
        let mut resume: Option<usize> = None;
        if !req.no_cache {
            for (i, p) in steps.iter().enumerate().rev() {
                if p.changes_files
                    && self
                        .manager
                        .snapshot_info(&snapshot_name(&p.key))
                        .await
                        .is_ok()
                {
                    resume = Some(i);
                    break;
                }
            }
        }
        let first_to_run = resume.map_or(0, |i| i + 1);
        for (i, p) in steps.iter().enumerate().take(first_to_run) {
            progress(Event::Step {
                n: i + 1,
                total,
                line: p.step.line,
                text: &p.step.text,
                cached: true,
            });
        }

        // The last snapshot of the file system: the cached one, then each
        // one made below.
        let mut last_disk: Option<String> = resume.map(|i| snapshot_name(&steps[i].key));
        let runs_something = steps[first_to_run..].iter().any(|p| p.changes_files);
        if runs_something {
            let id = self
                .start_build_sandbox(&base, last_disk.as_deref(), progress)
                .await?;
            let ran = async {
                for (i, p) in steps.iter().enumerate().skip(first_to_run) {
                    progress(Event::Step {
                        n: i + 1,
                        total,
                        line: p.step.line,
                        text: &p.step.text,
                        cached: false,
                    });
                    if !p.changes_files {
                        continue;
                    }
                    self.run_step(&id, i + 1, p, progress).await?;
                    let name = snapshot_name(&p.key);
                    // A rebuild with --no-cache replaces the old entry.
                    if self.manager.snapshot_info(&name).await.is_ok() {
                        let _ = self.manager.delete_snapshot(&name).await;
                    }
                    self.manager
                        .with_sandbox_async(&id, |sb| async move { sb.sync().await })
                        .await?;
                    self.manager.snapshot(&id, &name).await?;
                    last_disk = Some(name);
                }
                Ok::<_, BuildError>(())
            }
            .await;
            self.set_current(None);
            let _ = self.manager.destroy(&id).await;
            ran?;
        } else {
            for (i, p) in steps.iter().enumerate().skip(first_to_run) {
                progress(Event::Step {
                    n: i + 1,
                    total,
                    line: p.step.line,
                    text: &p.step.text,
                    cached: false,
                });
            }
        }

        // The image: the last snapshot's disk made whole, or a copy of the
        // base's when no step changed a file (a template's image is its
        // own: the defaults of a sandbox's execs are found by its image).
        let (rootfs, digest) = match &last_disk {
            Some(snap) => {
                let key = snap.trim_start_matches(STEP_SNAPSHOT_PREFIX).to_string();
                (self.image_of_snapshot(snap, &key, progress).await?, key)
            }
            None => {
                let from = match &base.rootfs {
                    Some(r) => r.clone(),
                    None => self.base_rootfs()?,
                };
                (self.image_copy(&from, &key, progress).await?, key.clone())
            }
        };
        let mut defaults = from_plan_defaults(&plan.config);
        // Variables the base had and the Dockerfile kept are in the plan's.
        if defaults.workdir.is_none() {
            defaults.workdir.clone_from(&base.defaults.workdir);
        }
        let now = petty_core::store::now_ms();
        let record = TemplateRecord {
            name: req.name.clone(),
            source: format!("dockerfile:{}", absolute(&req.dockerfile).display()),
            size_bytes: disk_bytes(&rootfs),
            rootfs,
            digest,
            defaults,
            created_at_ms: now,
            last_used_ms: now,
        };
        self.manager.add_template(record.clone()).await?;
        if let Err(e) = self.check_usable(&req.name, progress).await {
            let _ = self.manager.remove_template(&req.name).await;
            return Err(e);
        }
        self.enforce_cap(progress).await?;
        Ok(record)
    }

    /// What `FROM image` names: `base` (Petty's own image), a template,
    /// or an OCI image reference (pulled and made into an image first).
    pub(crate) async fn base(
        &self,
        from: &str,
        progress: Progress<'_>,
    ) -> Result<Base, BuildError> {
        if from == BASE_TEMPLATE {
            let rootfs = self.base_rootfs()?;
            return Ok(Base {
                identity: format!("base:{}", file_identity(&rootfs)),
                rootfs: None,
                defaults: ImageDefaults::default(),
            });
        }
        if let Ok(t) = self.manager.template_info(from).await {
            return Ok(Base {
                identity: format!("template:{}:{}", t.name, t.digest),
                rootfs: Some(t.rootfs),
                defaults: t.defaults,
            });
        }
        let (rootfs, image) = self.image_rootfs(from, progress).await?;
        Ok(Base {
            identity: format!("image:{}", image.manifest_digest),
            rootfs: Some(rootfs),
            defaults: crate::image::defaults_of(&image.config),
        })
    }

    /// Petty's own rootfs.
    fn base_rootfs(&self) -> Result<PathBuf, BuildError> {
        Ok(self.images.locate()?.rootfs)
    }

    /// Starts the build sandbox: restored from snapshot `from`, else
    /// created from the base; with the `public` network when it may.
    async fn start_build_sandbox(
        &self,
        base: &Base,
        from: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<String, BuildError> {
        let network = if self.settings.network && self.manager.config().network.is_some() {
            petty_net_public()
        } else {
            if self.settings.network {
                progress(Event::Note(
                    "warning: sandbox networks are not available here (they need root and nft): \
                     steps run without a network",
                ));
            }
            Default::default()
        };
        let config = SandboxConfig {
            rootfs: base.rootfs.clone(),
            exec_defaults: base.defaults.clone(),
            memory_mib: self.settings.memory_mib,
            owner: Some("build".into()),
            bound_to_owner: true,
            network,
            ..Default::default()
        };
        let id = match from {
            Some(snap) => self.manager.restore_with(snap, config).await?,
            None => self.manager.create(config).await?,
        };
        self.set_current(Some(id));
        Ok(id.to_string())
    }

    /// Runs one step that changes files in sandbox `id`.
    async fn run_step(
        &self,
        id: &str,
        n: usize,
        p: &Planned,
        progress: Progress<'_>,
    ) -> Result<(), BuildError> {
        let step = &p.step;
        match &step.action {
            Action::Meta => Ok(()),
            Action::Workdir(dir) => self
                .manager
                .with_sandbox_async(id, |sb| async move { sb.mkdir(dir).await })
                .await
                .map_err(|e| BuildError::Step {
                    line: step.line,
                    message: format!("making the working directory {dir}: {e}"),
                }),
            Action::Run(argv) => {
                let mut req = ExecRequest::argv(argv.clone());
                req.env.clone_from(&step.env);
                req.cwd = Some(step.workdir.clone());
                req.user.clone_from(&step.user);
                req.timeout_ms = Some(self.settings.step_timeout.as_millis() as u64);
                let (code, tail, timed_out) = self
                    .manager
                    .with_sandbox_async(id, |sb| async move {
                        let mut stream = sb.exec_stream(req).await?;
                        let mut tail = Vec::new();
                        loop {
                            match stream.next().await.map_err(CoreError::from)? {
                                petty_core::ExecEvent::Stdout(d) => progress(Event::Output {
                                    n,
                                    stderr: false,
                                    data: &d,
                                }),
                                petty_core::ExecEvent::Stderr(d) => {
                                    progress(Event::Output {
                                        n,
                                        stderr: true,
                                        data: &d,
                                    });
                                    tail.extend_from_slice(&d);
                                    let keep = tail.len().saturating_sub(4096);
                                    tail.drain(..keep);
                                }
                                petty_core::ExecEvent::Exit(status) => {
                                    return Ok((status.code, tail, status.timed_out))
                                }
                            }
                        }
                    })
                    .await?;
                if code != 0 {
                    let tail = String::from_utf8_lossy(&tail);
                    let last = tail.lines().rev().find(|l| !l.trim().is_empty());
                    return Err(BuildError::StepFailed {
                        line: step.line,
                        text: step.text.clone(),
                        code,
                        tail: if timed_out {
                            Some(format!(
                                "it ran longer than {} s",
                                self.settings.step_timeout.as_secs()
                            ))
                        } else {
                            last.map(str::to_string)
                        },
                    });
                }
                Ok(())
            }
            Action::Copy(spec) => self.copy(id, step, spec, &p.copies).await,
        }
    }

    /// A COPY: directories made, files streamed in with their modes,
    /// symlinks made with `ln`, owners set with `chown`.
    async fn copy(
        &self,
        id: &str,
        step: &Step,
        spec: &CopySpec,
        entries: &[ContextEntry],
    ) -> Result<(), BuildError> {
        let line = step.line;
        let fail = |what: String| {
            move |e: CoreError| BuildError::Step {
                line,
                message: format!("{what}: {e}"),
            }
        };
        let sb = self.manager.get(id).await?;
        // One file onto a directory that exists lands inside it.
        let single_into_dir = if !spec.dest_is_dir && entries.len() == 1 {
            matches!(entries[0].kind, EntryKind::File { .. })
                && sb
                    .stat_target(&spec.dest)
                    .await
                    .is_ok_and(|s| s.file_type == petty_core::FileType::Directory)
        } else {
            false
        };
        if spec.dest_is_dir {
            sb.mkdir(&spec.dest)
                .await
                .map_err(fail(format!("making {}", spec.dest)))?;
        }
        let mut made = Vec::with_capacity(entries.len());
        for e in entries {
            let dest = if single_into_dir {
                let file = e.src.file_name().unwrap_or_default().to_string_lossy();
                format!("{}/{file}", spec.dest.trim_end_matches('/'))
            } else {
                e.dest.clone()
            };
            match &e.kind {
                EntryKind::Dir => sb
                    .mkdir(&dest)
                    .await
                    .map_err(fail(format!("making {dest}")))?,
                EntryKind::File { .. } => {
                    let file =
                        tokio::fs::File::open(&e.src)
                            .await
                            .map_err(BuildError::io(format!(
                                "reading {} from the build context",
                                e.src.display()
                            )))?;
                    sb.write_file_from(&dest, file, Some(e.mode & 0o7777))
                        .await
                        .map_err(fail(format!("writing {dest}")))?;
                }
                EntryKind::Symlink(target) => {
                    let argv = vec![
                        "ln".to_string(),
                        "-sfn".into(),
                        target.to_string_lossy().into_owned(),
                        dest.clone(),
                    ];
                    self.tool(&sb, line, argv, "a symlink").await?;
                }
            }
            made.push(dest);
        }
        if let Some(owner) = &spec.chown {
            for chunk in made.chunks(256) {
                let mut argv = vec!["chown".to_string(), "-h".into(), owner.clone()];
                argv.extend(chunk.iter().cloned());
                self.tool(&sb, line, argv, "--chown").await?;
            }
        }
        Ok(())
    }

    /// Runs a tool a COPY needs (`ln`, `chown`) from the image.
    async fn tool(
        &self,
        sb: &petty_core::Sandbox,
        line: usize,
        argv: Vec<String>,
        what: &str,
    ) -> Result<(), BuildError> {
        let tool = argv[0].clone();
        let r = sb
            .exec(ExecRequest::argv(argv), None)
            .await
            .map_err(|e| BuildError::Step {
                line,
                message: format!("running {tool} for {what}: {e}"),
            })?;
        if r.exit_code != 0 {
            return Err(BuildError::Step {
                line,
                message: format!(
                    "COPY of {what} needs `{tool}` in the image, and it failed (exit {}): {}",
                    r.exit_code,
                    r.stderr.trim()
                ),
            });
        }
        Ok(())
    }

    /// `<images>/<key>.ext4`, a copy of image `from` (sparse, reflinked
    /// where the file system can), unless it exists.
    async fn image_copy(
        &self,
        from: &Path,
        key: &str,
        progress: Progress<'_>,
    ) -> Result<PathBuf, BuildError> {
        let mut cp = tokio::process::Command::new("cp");
        cp.args(["--sparse=always", "--reflink=auto"]).arg(from);
        let note = format!(
            "no step changed a file: the template's image is a copy of {}",
            from.display()
        );
        self.make_image(key, cp, &note, progress).await
    }

    /// `<images>/<key>.ext4`, made from snapshot `snap`'s disk (with its
    /// backing chain) unless it exists.
    async fn image_of_snapshot(
        &self,
        snap: &str,
        key: &str,
        progress: Progress<'_>,
    ) -> Result<PathBuf, BuildError> {
        let record = self.manager.snapshot_info(snap).await?;
        let disk = self.manager.snapshot_disk(&record)?;
        let mut convert = tokio::process::Command::new(&self.settings.qemu_img);
        convert.args(["convert", "-O", "raw"]).arg(&disk);
        let note = "the template's image is the last step's disk, made whole (qemu-img convert)";
        self.make_image(key, convert, note, progress).await
    }

    /// `<images>/<key>.ext4` unless it exists: `tool`, given a temporary
    /// path to write, makes it, and it is moved into place read-only when
    /// whole (removed on any failure).
    async fn make_image(
        &self,
        key: &str,
        mut tool: tokio::process::Command,
        note: &str,
        progress: Progress<'_>,
    ) -> Result<PathBuf, BuildError> {
        let dir = self.manager.images_dir();
        let image = dir.join(format!("{}.ext4", &key[..key.len().min(32)]));
        if image.is_file() {
            return Ok(image);
        }
        std::fs::create_dir_all(&dir)
            .map_err(BuildError::io(format!("creating {}", dir.display())))?;
        progress(Event::Note(&format!("{note}: {}", image.display())));
        let tmp = dir.join(format!(".{}.tmp-{}", key, std::process::id()));
        let what = format!("{:?}", tool.as_std());
        let out = tool.arg(&tmp).kill_on_drop(true).output().await;
        let failure = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            let _ = std::fs::remove_file(&tmp);
            return Err(BuildError::Io {
                what,
                source: std::io::Error::other(why),
            });
        }
        publish(&tmp, &image)?;
        Ok(image)
    }
}

/// Makes `tmp` read-only and renames it to `image`; removes it on failure.
fn publish(tmp: &Path, image: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o444))
        .and_then(|()| std::fs::rename(tmp, image))
        .map_err(|e| {
            let _ = std::fs::remove_file(tmp);
            BuildError::Io {
                what: format!("moving the image into place at {}", image.display()),
                source: e,
            }
        })
}

use petty_core::CoreError;

fn petty_net_public() -> petty_net::NetworkSpec {
    petty_net::NetworkSpec {
        mode: petty_net::NetworkMode::Public,
        ..Default::default()
    }
}

/// The snapshot a step's key names.
pub(crate) fn snapshot_name(key: &str) -> String {
    format!("{STEP_SNAPSHOT_PREFIX}{}", &key[..key.len().min(32)])
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A file's identity for a key: path, size and modification time.
pub(crate) fn file_identity(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{}:{}:{}:{}",
            p.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => p.display().to_string(),
    }
}

fn to_plan_defaults(d: &ImageDefaults) -> petty_dockerfile::ImageDefaults {
    petty_dockerfile::ImageDefaults {
        env: d.env.clone(),
        workdir: d.workdir.clone(),
        user: d.user.clone(),
        cmd: d.cmd.clone(),
        entrypoint: d.entrypoint.clone(),
        labels: d.labels.clone(),
        exposed: Vec::new(),
    }
}

fn from_plan_defaults(d: &petty_dockerfile::ImageDefaults) -> ImageDefaults {
    ImageDefaults {
        env: d.env.clone(),
        workdir: d.workdir.clone(),
        user: d.user.clone(),
        cmd: d.cmd.clone(),
        entrypoint: d.entrypoint.clone(),
        labels: d.labels.clone(),
    }
}
