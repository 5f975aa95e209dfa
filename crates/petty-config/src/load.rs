//! Merging the sources, lowest first: built-in defaults (paths from the XDG
//! directories), `/etc/petty/config.toml`, the user's
//! `~/.config/petty/config.toml`, `--config FILE` (or `$PETTY_CONFIG`),
//! `PETTY_<SECTION>_<KEY>` variables, then flags. Each key remembers which
//! source set it, for `petty config show` and for errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::env::{self, Env};
use crate::model::{Settings, KEYS, LIST_KEYS};

/// The system-wide config file.
pub const SYSTEM_FILE: &str = "/etc/petty/config.toml";

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built in; for paths, what it was derived from.
    Default(Option<String>),
    /// A config file.
    File(PathBuf),
    /// An environment variable (`deprecated`: an earlier release's name).
    Env {
        /// Its name.
        name: String,
        /// An earlier release's name, still read for now.
        deprecated: bool,
    },
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default(None) => f.write_str("default"),
            Self::Default(Some(from)) => write!(f, "default ({from})"),
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env {
                name,
                deprecated: false,
            } => write!(f, "env {name}"),
            Self::Env {
                name,
                deprecated: true,
            } => write!(f, "env {name} (deprecated)"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A key set by a flag (or any source given as text).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// `section.key`.
    pub key: String,
    /// The value (TOML).
    pub value: toml::Value,
    /// The flag, e.g. `--listen`.
    pub flag: String,
}

impl Override {
    /// `key` set by `flag` to `raw`: a TOML value if it reads as one (a
    /// number, a boolean, a list), else the text itself.
    pub fn parse(key: &str, raw: &str, flag: &str) -> Self {
        Self {
            key: key.to_string(),
            value: parse_value(key, raw),
            flag: flag.to_string(),
        }
    }

    /// `key` set by `flag` to `value`.
    pub fn new(key: &str, value: impl Into<toml::Value>, flag: &str) -> Self {
        Self {
            key: key.to_string(),
            value: value.into(),
            flag: flag.to_string(),
        }
    }
}

/// What a load reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The environment (variables and the XDG directories).
    pub env: Env,
    /// `--config FILE`; `$PETTY_CONFIG` when `None`.
    pub file: Option<PathBuf>,
    /// Flags, applied last, in order.
    pub flags: Vec<Override>,
    /// The system file (default `/etc/petty/config.toml`).
    pub system_file: PathBuf,
}

impl Sources {
    /// This process's environment, no file or flag given yet.
    pub fn process() -> Self {
        Self::with_env(Env::process())
    }

    /// `env` as the environment, no file or flag given yet.
    pub fn with_env(env: Env) -> Self {
        Self {
            env,
            file: None,
            flags: Vec::new(),
            system_file: PathBuf::from(SYSTEM_FILE),
        }
    }

    /// The user's config file: `$XDG_CONFIG_HOME/petty/config.toml`, else
    /// `~/.config/petty/config.toml`.
    pub fn user_file(&self) -> Option<PathBuf> {
        if let Some(x) = self.env.get(env::XDG_CONFIG_HOME).map(PathBuf::from) {
            if x.is_absolute() {
                return Some(x.join("petty/config.toml"));
            }
        }
        crate::paths::home(&self.env).map(|h| h.join(".config/petty/config.toml"))
    }
}

/// The merged settings, where each came from, and notices to print (an
/// older name used, a variable that is no setting).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// The source of each key that has a value.
    pub sources: BTreeMap<String, Source>,
    /// One line each, for stderr.
    pub notices: Vec<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("reading config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Malformed TOML, an unknown key, or a value of the wrong type; names
    /// the source and the key.
    #[error("config ({origin}): {message}")]
    Parse {
        /// The file, variable or flag.
        origin: String,
        /// What was wrong, with the key.
        message: String,
    },
    /// A value is out of range; the message names the key and what to do.
    #[error("config: {0}")]
    Invalid(String),
}

/// Variables named `PETTY_…` that are not settings but are read elsewhere.
const NOT_KEYS: &[&str] = &[
    env::PETTY_CONFIG,
    env::PETTY_NO_CONFIG,
    env::PETTY_LOG,
    env::PETTY_API_KEYS,
    // Read by petty-image's build script, at build time.
    "PETTY_AGENT_BINARY",
];

/// Merges every source, lowest first, and checks the result.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let (defaults, derived) = crate::paths::defaults(&sources.env);
    let mut table = toml::Table::try_from(&defaults).expect("the defaults serialize");
    let mut origin: BTreeMap<String, Source> = KEYS
        .iter()
        .filter(|k| get(&table, k).is_some())
        .map(|k| (k.to_string(), Source::Default(derived.get(*k).cloned())))
        .collect();
    let mut notices = Vec::new();

    let mut files = Vec::new();
    if !sources.env.flag(env::PETTY_NO_CONFIG) {
        files.push((sources.system_file.clone(), false));
        if let Some(user) = sources.user_file() {
            files.push((user, false));
        }
    }
    let named = sources
        .file
        .clone()
        .or_else(|| sources.env.get(env::PETTY_CONFIG).map(PathBuf::from));
    if let Some(f) = named {
        files.push((f, true));
    }
    for (path, required) in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let what = format!("file {}", path.display());
        let layer: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: what.clone(),
            message: e.to_string(),
        })?;
        for (key, value) in leaves(&layer) {
            let key = match crate::env::DEPRECATED_KEYS
                .iter()
                .find(|(old, _)| *old == key)
            {
                Some((old, new)) => {
                    notices.push(format!(
                        "petty: {what}: `{old}` is deprecated; call it `{new}`"
                    ));
                    new.to_string()
                }
                None => key,
            };
            set(&mut table, &key, value, &what)?;
            origin.insert(key, Source::File(path.clone()));
        }
        check(&table, &what)?;
    }

    // Variables: the older names first, so a new name given too wins.
    let mut vars: Vec<(String, String, &str, bool)> = Vec::new();
    for (name, raw) in sources.env.petty_vars() {
        let Some(raw) = raw.to_str() else {
            notices.push(format!("petty: {name} is not valid UTF-8; ignored"));
            continue;
        };
        if let Some((_, key)) = env::DEPRECATED.iter().find(|(old, _)| *old == name) {
            notices.push(format!(
                "petty: {name} is deprecated; use {} ({key})",
                env::var_name(key)
            ));
            vars.push((key.to_string(), name.to_string(), raw, true));
        } else if name == env::PETTY_API_KEYS {
            vars.push(("server.api_keys".into(), name.to_string(), raw, false));
        } else if let Some(k) = KEYS.iter().find(|k| env::var_name(k) == name) {
            vars.push((k.to_string(), name.to_string(), raw, false));
        } else if !NOT_KEYS.contains(&name) {
            notices.push(format!(
                "petty: {name} is not a setting (`petty config show` lists them); ignored"
            ));
        }
    }
    vars.sort_by_key(|(_, _, _, deprecated)| !deprecated);
    for (key, name, raw, deprecated) in vars {
        set(&mut table, &key, parse_value(&key, raw), &name)?;
        check(&table, &name)?;
        origin.insert(key, Source::Env { name, deprecated });
    }

    for o in &sources.flags {
        set(&mut table, &o.key, o.value.clone(), &o.flag)?;
        check(&table, &o.flag)?;
        origin.insert(o.key.clone(), Source::Flag(o.flag.clone()));
    }

    let settings: Settings =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: "the merged settings".into(),
                message: e.to_string(),
            })?;
    settings.validate()?;
    Ok(Loaded {
        settings,
        sources: origin,
        notices,
    })
}

/// The table deserializes as settings: a bad key or value names `what`.
fn check(table: &toml::Table, what: &str) -> Result<(), ConfigError> {
    toml::Value::Table(table.clone())
        .try_into::<Settings>()
        .map(|_| ())
        .map_err(|e| ConfigError::Parse {
            origin: what.to_string(),
            message: e.to_string(),
        })
}

/// A variable's or flag's text as the value of `key`: comma-separated for
/// a list (colon-separated for `paths.search_path`), else a TOML value if
/// it reads as one, else the text.
pub(crate) fn parse_value(key: &str, raw: &str) -> toml::Value {
    if LIST_KEYS.contains(&key) {
        if let Ok(toml::Value::Array(a)) = toml_literal(raw) {
            return toml::Value::Array(a);
        }
        let sep = if key == "paths.search_path" { ':' } else { ',' };
        return toml::Value::Array(
            raw.split(sep)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        );
    }
    toml_literal(raw).unwrap_or_else(|_| toml::Value::String(raw.to_string()))
}

fn toml_literal(raw: &str) -> Result<toml::Value, ()> {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .ok_or(())
}

/// Every leaf of `table` as `a.b.c` and its value (lists are leaves, and
/// so is an empty table, so an unknown empty section is still refused).
fn leaves(table: &toml::Table) -> Vec<(String, toml::Value)> {
    let mut out = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(t) if !t.is_empty() => {
                for (sub, v) in leaves(t) {
                    out.push((format!("{k}.{sub}"), v));
                }
            }
            v => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// The value at `key` (`a.b.c`), if there is one.
pub(crate) fn get<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

fn set(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    what: &str,
) -> Result<(), ConfigError> {
    let (path, last) = match key.rsplit_once('.') {
        Some(split) => split,
        // An empty section: seen, so an unknown one is refused.
        None if matches!(&value, toml::Value::Table(t) if t.is_empty()) => {
            table
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            return Ok(());
        }
        None => {
            return Err(ConfigError::Parse {
                origin: what.to_string(),
                message: format!("`{key}` is not a key: keys are section.key"),
            })
        }
    };
    let mut t = table;
    for p in path.split('.') {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Parse {
                    origin: what.to_string(),
                    message: format!("`{p}` in `{key}` is a value, not a section"),
                })
            }
        };
    }
    match (t.get_mut(last), value) {
        // An empty section adds nothing to one that exists.
        (Some(toml::Value::Table(_)), toml::Value::Table(new)) if new.is_empty() => {}
        (_, value) => {
            t.insert(last.to_string(), value);
        }
    }
    Ok(())
}

/// One key of the effective settings, as `petty config show` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `section.key`.
    pub key: &'static str,
    /// Its value (`None`: unset); API keys are hidden.
    pub value: Option<toml::Value>,
    /// Where the value came from.
    pub source: String,
}

impl Row {
    /// The value as TOML text, `(none)` when unset.
    pub fn value_text(&self) -> String {
        self.value
            .as_ref()
            .map_or_else(|| "(none)".to_string(), ToString::to_string)
    }
}

/// Keys whose values are secrets: shown as how many there are.
const SECRET_KEYS: &[&str] = &["server.api_keys", "gateway.api_keys", "gateway.node_key"];

impl Loaded {
    /// Every key, its value and where it came from, in the order of
    /// [`KEYS`]; secrets are replaced by a count.
    pub fn rows(&self) -> Vec<Row> {
        let table = toml::Table::try_from(&self.settings).expect("settings serialize");
        KEYS.iter()
            .map(|k| {
                let value = get(&table, k)
                    .cloned()
                    .map(|v| match (&v, SECRET_KEYS.contains(k)) {
                        (toml::Value::Array(a), true) => {
                            toml::Value::String(format!("({} hidden)", a.len()))
                        }
                        _ => v,
                    });
                let source = self
                    .sources
                    .get(*k)
                    .map_or_else(|| "default".to_string(), ToString::to_string);
                Row {
                    key: k,
                    value,
                    source,
                }
            })
            .collect()
    }
}
