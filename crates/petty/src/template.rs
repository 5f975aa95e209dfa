//! Templates: `petty template build` (from a Dockerfile or an OCI image),
//! `petty templates` (list), `petty templates rm`, `petty templates prune`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use petty_build::{DockerfileBuild, Event};
use petty_config::Settings;
use petty_core::TemplateRecord;

/// Arguments of `petty template build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The template's name (a template of that name is replaced).
    pub name: String,
    /// The build context: what COPY and ADD read (default: the
    /// Dockerfile's directory).
    #[arg(value_name = "CONTEXT", conflicts_with = "from_image")]
    pub context: Option<PathBuf>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(
        long = "file",
        short = 'f',
        value_name = "DOCKERFILE",
        conflicts_with = "from_image"
    )]
    pub file: Option<PathBuf>,
    /// Make the template from an OCI image instead: host[:port]/repo:tag,
    /// repo@sha256:…, oci-archive:PATH, docker-archive:PATH or oci:DIR[:TAG].
    #[arg(long, value_name = "REF")]
    pub from_image: Option<String>,
    /// A build argument for the Dockerfile's ARGs (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_kv)]
    pub build_args: Vec<(String, String)>,
    /// Run every step, taking none from the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print the template as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr (errors still go there).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `petty template …`.
#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Build a template from a Dockerfile (`-f Dockerfile [CONTEXT]`) or an
    /// image (`--from-image REF`); prints its name. Steps are cached: a
    /// rebuild runs only the steps after the first one that changed.
    Build(BuildArgs),
}

/// `petty templates …`.
#[derive(Subcommand)]
pub enum TemplatesCmd {
    /// Remove templates (refused while a sandbox or snapshot uses one).
    Rm {
        /// Template names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove build step caches, images no template uses and cached layers.
    Prune {
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        None if !s.is_empty() => Ok((s.to_string(), String::new())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// How a build's progress reads on stderr: `step N/M (line L): TEXT`,
/// the step's output as it comes, notes prefixed with `petty:`.
pub fn print_event(e: Event<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = match e {
        Event::Step {
            n,
            total,
            line,
            text,
            cached,
        } => writeln!(
            err,
            "step {n}/{total} (line {line}): {text}{}",
            if cached { " [cached]" } else { "" }
        ),
        Event::Output { data, .. } => err.write_all(data),
        Event::Note(note) => writeln!(err, "petty: {note}"),
    };
    let _ = err.flush();
}

pub async fn build(args: BuildArgs, s: &Settings) -> anyhow::Result<ExitCode> {
    let (vmm, notice) = petty::settings::backend(s, None)?;
    vmm.check()?;
    petty::settings::ensure_assets(s, !args.quiet).await?;
    if !args.quiet {
        eprintln!("{notice}");
    }
    let manager = crate::manage::manager(s).await?;
    let builder = petty::settings::template_builder(s, manager);
    let quiet = args.quiet;
    let progress = move |e: Event<'_>| {
        if !quiet {
            print_event(e);
        }
    };
    let work = async {
        match &args.from_image {
            Some(source) => builder.import_image(&args.name, source, &progress).await,
            None => {
                let (dockerfile, context) = dockerfile_and_context(&args)?;
                let req = DockerfileBuild {
                    name: args.name.clone(),
                    dockerfile,
                    context,
                    build_args: args.build_args.clone(),
                    no_cache: args.no_cache,
                };
                builder.build_dockerfile(&req, &progress).await
            }
        }
        .map_err(anyhow::Error::from)
    };
    let record = tokio::select! {
        r = work => r?,
        code = crate::run::interrupted() => {
            eprintln!("petty: interrupted; removing the build sandbox (completed steps stay cached)");
            builder.cancel().await;
            return Ok(ExitCode::from(code));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!("{}", record.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The Dockerfile and the context `petty template build` was given.
fn dockerfile_and_context(args: &BuildArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (dockerfile, context) = match (&args.file, &args.context) {
        (Some(f), Some(c)) => (f.clone(), c.clone()),
        (Some(f), None) => {
            let dir = f.parent().filter(|p| !p.as_os_str().is_empty());
            (f.clone(), dir.map_or_else(|| PathBuf::from("."), PathBuf::from))
        }
        (None, Some(c)) => (c.join("Dockerfile"), c.clone()),
        (None, None) => bail!(
            "nothing to build from\nhint: petty template build NAME -f Dockerfile [CONTEXT], or petty template build NAME --from-image REF"
        ),
    };
    if !dockerfile.is_file() {
        bail!(
            "there is no Dockerfile at {}\nhint: name it with -f PATH",
            dockerfile.display()
        );
    }
    if !context.is_dir() {
        bail!(
            "the build context {} is not a directory\nhint: give the directory COPY reads from after the template's name",
            context.display()
        );
    }
    Ok((dockerfile, context))
}

fn ago(now_ms: i64, at_ms: i64) -> String {
    let s = (now_ms - at_ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `petty templates`: every built template (`base`, Petty's own image, is
/// not stored and not listed).
pub async fn list(json: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = crate::manage::manager(s).await?;
    let templates: Vec<TemplateRecord> = manager.templates().await?;
    let mut out = std::io::stdout().lock();
    if json {
        for t in &templates {
            writeln!(out, "{}", serde_json::to_string(t)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = petty_core::store::now_ms();
    writeln!(
        out,
        "{:<24} {:>9} {:>8} {:>9}  SOURCE",
        "NAME", "SIZE", "CREATED", "LAST USED"
    )?;
    for t in &templates {
        writeln!(
            out,
            "{:<24} {:>8.1}M {:>8} {:>9}  {}",
            t.name,
            t.size_bytes as f64 / (1024.0 * 1024.0),
            ago(now, t.created_at_ms),
            ago(now, t.last_used_ms),
            t.source
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(names: Vec<String>, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = crate::manage::manager(s).await?;
    for n in names {
        manager.remove_template(&n).await?;
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn prune(json: bool, s: &Settings) -> anyhow::Result<ExitCode> {
    let manager = crate::manage::manager(s).await?;
    let builder = petty::settings::template_builder(s, manager);
    let r = builder.prune().await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "step_caches": r.steps, "images": r.images, "bytes": r.bytes })
        );
    } else {
        println!(
            "removed {} step caches and {} unused images; freed {:.1} MiB",
            r.steps,
            r.images,
            r.bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
