//! The build plan: what each instruction does once its variables are
//! substituted — run an argv, copy from the context, make a directory, or
//! only change the image's configuration — with the environment, working
//! directory, user and shell each step runs with, and the final image
//! configuration.
//!
//! ARGs reach RUN as environment variables, as Docker passes them; ENV wins
//! over an ARG of the same name. Build args override only declared ARGs
//! ([`Plan::unused_build_args`] lists the others for a warning).

use crate::error::DockerfileError;
use crate::parse::{refuse_urls, Command, Dockerfile, Kind};
use crate::subst::substitute;

/// The PATH Docker gives a build whose base image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A Dockerfile's build, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The `FROM` image, substituted with build args.
    pub base: String,
    /// One step per instruction after `FROM`.
    pub steps: Vec<Step>,
    /// The image configuration after the last step.
    pub config: ImageDefaults,
    /// Build args given but declared by no ARG (Docker warns of them).
    pub unused_build_args: Vec<String>,
}

/// One instruction, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction as written, for logs.
    pub text: String,
    /// What the builder does.
    pub action: Action,
    /// The environment after this step: ENV, then ARGs that have a value
    /// and no ENV of the same name.
    pub env: Vec<(String, String)>,
    /// The working directory after this step (`/` when never set).
    pub workdir: String,
    /// The user after this step.
    pub user: Option<String>,
    /// The shell for shell forms (default `["/bin/sh", "-c"]`).
    pub shell: Vec<String>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run this argv (the shell form is already wrapped in the shell).
    Run(Vec<String>),
    /// Copy from the build context.
    Copy(CopySpec),
    /// Make this directory (`mkdir -p`); it is the working directory after.
    Workdir(String),
    /// Only the image configuration changes.
    Meta,
}

/// A COPY or ADD with its variables substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// Sources relative to the build context (globs allowed).
    pub sources: Vec<String>,
    /// Absolute destination in the image (a relative one joins the workdir).
    pub dest: String,
    /// Sources go inside `dest`: it ended with `/` (or `.`), or there are
    /// several sources or a glob.
    pub dest_is_dir: bool,
    /// `--chown` substituted.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<u32>,
    /// It was ADD: [`crate::Context::resolve`] refuses local archives (ADD
    /// would extract them) and otherwise copies as COPY does.
    pub add: bool,
}

/// Image configuration: a base image's (as input to [`plan_on`]) or the
/// built image's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// Environment, in order of first definition.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// CMD as an argv (the shell form wrapped in the SHELL).
    pub cmd: Option<Vec<String>>,
    /// ENTRYPOINT as an argv.
    pub entrypoint: Option<Vec<String>>,
    /// Labels, later ones replacing earlier of the same key.
    pub labels: Vec<(String, String)>,
    /// Exposed ports as `port/proto`.
    pub exposed: Vec<String>,
}

/// Plans the build on a base image that sets nothing but Docker's default
/// PATH. Use [`plan_on`] with the base image's configuration when known, so
/// `ENV PATH=/x:$PATH` and an inherited WORKDIR or CMD come out right.
pub fn plan(df: &Dockerfile, build_args: &[(String, String)]) -> Result<Plan, DockerfileError> {
    plan_on(df, build_args, &ImageDefaults::default())
}

/// Plans the build on a base image whose configuration is `base`.
pub fn plan_on(
    df: &Dockerfile,
    build_args: &[(String, String)],
    base: &ImageDefaults,
) -> Result<Plan, DockerfileError> {
    let escape = df.escape;
    let given = |name: &str| {
        build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut declared: Vec<&str> = Vec::new();

    let mut pre: Vec<(String, Option<String>)> = Vec::new();
    for (name, default) in &df.args_before_from {
        declared.push(name);
        let value = match (given(name), default) {
            (Some(v), _) => Some(v),
            (None, Some(d)) => Some(subst(df.from.line, d, escape, &|n| lookup(&pre, n))?),
            (None, None) => None,
        };
        pre.push((name.clone(), value));
    }
    let base_image = subst(df.from.line, &df.from.raw, escape, &|n| lookup(&pre, n))?;
    if base_image.is_empty() {
        return Err(DockerfileError::syntax(
            df.from.line,
            format!("FROM `{}` names no image; hint: pass the ARG with --build-arg or give it a default", df.from.raw),
        ));
    }

    let mut st = State {
        env: base.env.clone(),
        args: Vec::new(),
        workdir: base
            .workdir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: base.user.clone(),
        shell: vec!["/bin/sh".into(), "-c".into()],
    };
    if !st.env.iter().any(|(k, _)| k == "PATH") {
        st.env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let mut config = base.clone();
    let mut cmd_set_here = false;
    let mut steps = Vec::new();

    for ins in &df.instructions {
        let line = ins.line;
        let word = |st: &State, w: &str| subst(line, w, escape, &|n| st.get(n));
        let action = match &ins.kind {
            Kind::Run(c) => Action::Run(argv(line, "RUN", c, &st.shell)?),
            Kind::Cmd(c) => {
                config.cmd = Some(argv(line, "CMD", c, &st.shell)?);
                cmd_set_here = true;
                Action::Meta
            }
            Kind::Entrypoint(c) => {
                config.entrypoint = Some(argv(line, "ENTRYPOINT", c, &st.shell)?);
                // Docker drops a CMD inherited from the base image.
                if !cmd_set_here {
                    config.cmd = None;
                }
                Action::Meta
            }
            Kind::Copy(c) => {
                let sources = c
                    .sources
                    .iter()
                    .map(|s| word(&st, s))
                    .collect::<Result<Vec<_>, _>>()?;
                if c.add {
                    refuse_urls(line, &sources)?;
                }
                if sources.iter().any(String::is_empty) {
                    return Err(DockerfileError::syntax(
                        line,
                        "a source is empty once its variables are substituted; hint: set the ARG or ENV it uses",
                    ));
                }
                let dest = word(&st, &c.dest)?;
                if dest.is_empty() {
                    return Err(DockerfileError::syntax(
                        line,
                        "the destination is empty once its variables are substituted; hint: set the ARG or ENV it uses",
                    ));
                }
                let dir_like =
                    dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest == "..";
                let glob = sources.iter().any(|s| s.contains(['*', '?', '[']));
                let chown = c.chown.as_deref().map(|v| word(&st, v)).transpose()?;
                Action::Copy(CopySpec {
                    dest: join(&st.workdir, &dest),
                    dest_is_dir: dir_like || sources.len() > 1 || glob,
                    sources,
                    chown,
                    chmod: c.chmod,
                    add: c.add,
                })
            }
            Kind::Env(pairs) => {
                // Every pair sees the environment before this ENV, as in Docker.
                let mut set = Vec::new();
                for (k, v) in pairs {
                    set.push((word(&st, k)?, word(&st, v)?));
                }
                for (k, v) in set {
                    if k.is_empty() {
                        return Err(DockerfileError::syntax(
                            line,
                            "ENV: a name is empty once substituted",
                        ));
                    }
                    upsert(&mut st.env, k, v);
                }
                Action::Meta
            }
            Kind::Arg(name, default) => {
                declared.push(name);
                let value = match (given(name), default) {
                    (Some(v), _) => Some(v),
                    (None, Some(d)) => Some(word(&st, d)?),
                    // `ARG NAME` after FROM takes the value declared before FROM.
                    (None, None) => lookup(&pre, name).or_else(|| st.arg(name)),
                };
                st.args.retain(|(k, _)| k != name);
                if let Some(v) = value {
                    st.args.push((name.clone(), v));
                }
                Action::Meta
            }
            Kind::Workdir(w) => {
                let w = word(&st, w)?;
                if w.is_empty() {
                    return Err(DockerfileError::syntax(
                        line,
                        "WORKDIR is empty once substituted; hint: set the variable",
                    ));
                }
                st.workdir = clean(&join(&st.workdir, &w));
                config.workdir = Some(st.workdir.clone());
                Action::Workdir(st.workdir.clone())
            }
            Kind::User(u) => {
                let u = word(&st, u)?;
                if u.is_empty() {
                    return Err(DockerfileError::syntax(
                        line,
                        "USER is empty once substituted; hint: set the variable",
                    ));
                }
                st.user = Some(u.clone());
                config.user = Some(u);
                Action::Meta
            }
            Kind::Label(pairs) => {
                for (k, v) in pairs {
                    let (k, v) = (word(&st, k)?, word(&st, v)?);
                    upsert(&mut config.labels, k, v);
                }
                Action::Meta
            }
            Kind::Expose(ports) => {
                for p in ports {
                    for p in word(&st, p)?.split_whitespace() {
                        let port = expose(line, p)?;
                        if !config.exposed.contains(&port) {
                            config.exposed.push(port);
                        }
                    }
                }
                Action::Meta
            }
            Kind::Shell(argv) => {
                st.shell = argv.clone();
                Action::Meta
            }
            Kind::StopSignal(s) => {
                word(&st, s)?;
                Action::Meta
            }
            Kind::Volume(v) => {
                for v in v {
                    word(&st, v)?;
                }
                Action::Meta
            }
            Kind::Healthcheck(_) | Kind::Maintainer(_) => Action::Meta,
        };
        steps.push(Step {
            line,
            text: ins.text.clone(),
            action,
            env: st.step_env(),
            workdir: st.workdir.clone(),
            user: st.user.clone(),
            shell: st.shell.clone(),
        });
    }
    config.env = st.env;
    let mut unused_build_args: Vec<String> = build_args
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !declared.contains(&k.as_str()))
        .collect();
    unused_build_args.dedup();
    Ok(Plan {
        base: base_image,
        steps,
        config,
        unused_build_args,
    })
}

struct State {
    env: Vec<(String, String)>,
    args: Vec<(String, String)>,
    workdir: String,
    user: Option<String>,
    shell: Vec<String>,
}

impl State {
    fn get(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| self.arg(name))
    }

    fn arg(&self, name: &str) -> Option<String> {
        self.args
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn step_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (k, v) in &self.args {
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }
}

fn lookup(values: &[(String, Option<String>)], name: &str) -> Option<String> {
    values
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

fn upsert(list: &mut Vec<(String, String)>, k: String, v: String) {
    match list.iter_mut().find(|(e, _)| *e == k) {
        Some(slot) => slot.1 = v,
        None => list.push((k, v)),
    }
}

fn subst(
    line: usize,
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, DockerfileError> {
    substitute(word, escape, lookup).map_err(|message| DockerfileError::Variable { line, message })
}

fn argv(
    line: usize,
    name: &str,
    c: &Command,
    shell: &[String],
) -> Result<Vec<String>, DockerfileError> {
    match c {
        Command::Shell(script) => Ok(shell.iter().cloned().chain([script.clone()]).collect()),
        Command::Exec(v) if v.is_empty() && name == "RUN" => Err(DockerfileError::syntax(
            line,
            "RUN [] has no command; hint: name the program, e.g. `RUN [\"make\"]`",
        )),
        Command::Exec(v) => Ok(v.clone()),
    }
}

fn expose(line: usize, p: &str) -> Result<String, DockerfileError> {
    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let valid_port = |s: &str| s.parse::<u16>().is_ok();
    let ok = match port.split_once('-') {
        Some((a, b)) => valid_port(a) && valid_port(b),
        None => valid_port(port),
    };
    if !ok || !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
        return Err(DockerfileError::syntax(
            line,
            format!("EXPOSE `{p}` is not a port; hint: write it like `8080` or `53/udp`"),
        ));
    }
    Ok(format!("{port}/{proto}"))
}

/// `path` made absolute against `dir`, keeping a trailing `/`.
fn join(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", dir.trim_end_matches('/'))
    };
    let cleaned = clean(&joined);
    if (path.ends_with('/') || path.ends_with("/.") || path == "." || path == "..")
        && cleaned != "/"
    {
        format!("{cleaned}/")
    } else {
        cleaned
    }
}

/// Lexically cleans an absolute path (`..` stops at `/`).
pub(crate) fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests;
