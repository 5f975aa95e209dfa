//! The daemon's configuration: one TOML file, overridden by environment
//! variables, overridden by flags. Unknown keys and bad values are refused
//! at start, naming the key.
//!
//! Every key `section.key` can be set from the environment as
//! `PETTY_<SECTION>_<KEY>` (upper case), for example
//! `PETTY_LIMITS_MAX_CONCURRENT_SANDBOXES=20`; list keys (`server.api_keys`,
//! `server.allowed_hosts`, `server.allowed_origins`) take a comma-separated
//! value there, and `PETTY_API_KEYS` is a shorthand for `server.api_keys`.
//! `petty.example.toml` at the repository root lists every key with its
//! default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening, keys, shutdown.
    pub server: ServerSection,
    /// Limits on what clients may ask for.
    pub limits: LimitsSection,
    /// Defaults for a create that does not say.
    pub defaults: DefaultsSection,
    /// The warm pool.
    pub pool: PoolSection,
    /// MCP sessions.
    pub mcp: McpSection,
    /// The VMM backend and its files.
    pub backend: BackendSection,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on (default `127.0.0.1:8080`). Anything beyond
    /// loopback needs at least one API key.
    pub listen: String,
    /// Bearer keys accepted on REST and HTTP MCP; none means no auth (loopback only).
    pub api_keys: Vec<String>,
    /// Host names (or IP literals) a request's `Host` may name besides the
    /// listen address, loopback addresses and `localhost`; others get 421.
    /// No ports, no wildcards.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) of web pages allowed to call the
    /// daemon, with CORS; a request with any other `Origin` gets 403. Empty
    /// (the default): no page may, and CORS is off.
    pub allowed_origins: Vec<String>,
    /// What SIGTERM does to sandboxes: `keep` them running for the next
    /// start (default) or `destroy` them.
    pub on_shutdown: OnShutdown,
    /// How long in-flight calls get to finish after SIGTERM (default 30).
    pub shutdown_grace_secs: u64,
    /// Largest request body in MiB (default 100); larger gets 413. File
    /// uploads are streamed and bounded by `limits.max_upload_mib` instead.
    pub max_body_mib: u64,
    /// Log lines as `text` (default) or `json`.
    pub log_format: LogFormat,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            api_keys: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            on_shutdown: OnShutdown::Keep,
            shutdown_grace_secs: 30,
            max_body_mib: 100,
            log_format: LogFormat::Text,
        }
    }
}

/// What happens to sandboxes when the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// They keep running; the next start finds them.
    Keep,
    /// They are destroyed.
    Destroy,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most sandboxes with a VM at once (default 100); one more gets 429.
    pub max_concurrent_sandboxes: usize,
    /// VMs starting at once on this host, across every Petty process that
    /// shares its run directory root (default: the host's CPU count); more
    /// wait their turn.
    pub max_concurrent_boots: Option<usize>,
    /// REST and MCP sandboxes are destroyed this long after creation unless
    /// the create says otherwise (default 3600, an hour: E2B's longest
    /// sandbox life on its base tier; 0: no limit). A route and a tool
    /// extend it.
    pub default_ttl_secs: u64,
    /// REST and MCP sandboxes are destroyed after this long without a
    /// command or file operation unless the create says otherwise (default
    /// 300: E2B's default sandbox timeout, counted here from the last use so
    /// a sandbox in use is never cut off; 0: no limit).
    pub default_idle_timeout_secs: u64,
    /// Largest guest memory a create may ask for, in MiB (default 8192).
    pub max_memory_mb: u32,
    /// Most vCPUs a create may ask for (default 8).
    pub max_vcpu: u32,
    /// Largest file a REST download sends, in MiB (default 4096), counted
    /// while it streams from the guest; a call may raise or lift it.
    pub max_download_mib: u64,
    /// Largest streamed file upload, in MiB (default 4096); the sandbox's
    /// free disk is the other bound.
    pub max_upload_mib: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_concurrent_sandboxes: 100,
            max_concurrent_boots: None,
            default_ttl_secs: 3600,
            default_idle_timeout_secs: 300,
            max_memory_mb: 8192,
            max_vcpu: 8,
            max_download_mib: 4096,
            max_upload_mib: 4096,
        }
    }
}

/// `[mcp]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// An MCP session over HTTP that sends nothing for this long ends, and
    /// the sandboxes it created (unless asked to be kept) go with it
    /// (default 600).
    pub session_idle_secs: u64,
}

impl Default for McpSection {
    fn default() -> Self {
        Self {
            session_idle_secs: 600,
        }
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsSection {
    /// vCPUs of a sandbox (default 2).
    pub vcpu: u32,
    /// Guest memory in MiB (default 256).
    pub memory_mb: u32,
    /// Root disk size in MiB (default: the image's size plus
    /// `disk_free_mb`).
    pub disk_size_mb: Option<u32>,
    /// Room to work on a new sandbox's root disk when no size is asked for:
    /// this many MiB beyond the image (default 2048; 0: the image's size).
    /// The disk is sparse, so host space is spent only as the guest writes.
    pub disk_free_mb: u32,
    /// Timeout of a command that sets none, in seconds (default 300).
    pub exec_timeout_secs: u64,
}

impl Default for DefaultsSection {
    fn default() -> Self {
        Self {
            vcpu: 2,
            memory_mb: 256,
            disk_size_mb: None,
            disk_free_mb: petty_core::DEFAULT_DISK_FREE_MIB,
            exec_timeout_secs: 300,
        }
    }
}

/// `[pool]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Warm sandboxes of the default size kept ready (default 2; 0 turns the pool off).
    pub size: usize,
    /// Pool boots in flight at once (default 1).
    pub max_concurrent_boots: usize,
}

impl Default for PoolSection {
    fn default() -> Self {
        Self {
            size: 2,
            max_concurrent_boots: 1,
        }
    }
}

/// `[backend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSection {
    /// `auto` (default: Firecracker where it can run, else QEMU), `qemu` or `firecracker`.
    pub kind: BackendKind,
    /// QEMU binary (default `qemu-system-x86_64` on `PATH`).
    pub qemu_binary: Option<String>,
    /// Firecracker binary (default `firecracker` on `PATH`).
    pub firecracker_binary: Option<String>,
    /// Guest kernel (default: the one `petty image build` made).
    pub kernel: Option<PathBuf>,
    /// Root filesystem image (default: the one `petty image build` made).
    pub rootfs: Option<PathBuf>,
    /// State directory: SQLite file, snapshots, templates (default `~/.local/share/petty`).
    pub data_dir: Option<PathBuf>,
    /// Directory of VM run directories (default `$XDG_RUNTIME_DIR/petty` or `/tmp/petty-<uid>`).
    pub run_dir: Option<PathBuf>,
    /// Create sandboxes by restoring a template snapshot (default true).
    pub templates: bool,
    /// Keep one VMM started ahead of need for each template in use, so a
    /// create from a template does not wait for the VMM to start (default
    /// true; QEMU only).
    pub standby: bool,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            kind: BackendKind::Auto,
            qemu_binary: None,
            firecracker_binary: None,
            kernel: None,
            rootfs: None,
            data_dir: None,
            run_dir: None,
            templates: true,
            standby: true,
        }
    }
}

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Firecracker where it can run, else QEMU.
    Auto,
    /// QEMU (KVM or software emulation).
    Qemu,
    /// Firecracker (needs KVM).
    Firecracker,
}

impl BackendKind {
    /// The name `petty_vmm::choose_backend` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Qemu => "qemu",
            Self::Firecracker => "firecracker",
        }
    }
}

/// Every key, as `section.key`: the ones the environment can set.
pub const KEYS: &[&str] = &[
    "server.listen",
    "server.api_keys",
    "server.allowed_hosts",
    "server.allowed_origins",
    "server.on_shutdown",
    "server.shutdown_grace_secs",
    "server.max_body_mib",
    "server.log_format",
    "limits.max_concurrent_sandboxes",
    "limits.max_concurrent_boots",
    "limits.default_ttl_secs",
    "limits.default_idle_timeout_secs",
    "limits.max_memory_mb",
    "limits.max_vcpu",
    "limits.max_download_mib",
    "limits.max_upload_mib",
    "defaults.vcpu",
    "defaults.memory_mb",
    "defaults.disk_size_mb",
    "defaults.disk_free_mb",
    "defaults.exec_timeout_secs",
    "pool.size",
    "pool.max_concurrent_boots",
    "mcp.session_idle_secs",
    "backend.kind",
    "backend.qemu_binary",
    "backend.firecracker_binary",
    "backend.kernel",
    "backend.rootfs",
    "backend.data_dir",
    "backend.run_dir",
    "backend.templates",
    "backend.standby",
];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("config {origin}: {message}")]
    Parse {
        /// The file, or "environment and flags".
        origin: String,
        /// What toml said, with the key and line.
        message: String,
    },
    /// A value is out of range; the message names the key.
    #[error("config: {0}")]
    Invalid(String),
}

/// A key set from outside the file: an environment variable or a flag.
#[derive(Debug, Clone)]
pub struct Override {
    /// `section.key`.
    pub key: String,
    /// The value as TOML (a bare word is taken as a string).
    pub value: toml::Value,
    /// Where it came from, for errors (`PETTY_SERVER_LISTEN`, `--listen`).
    pub source: String,
}

impl Override {
    /// An override from a raw string: TOML if it parses as a TOML value,
    /// else the string itself.
    pub fn parse(key: &str, raw: &str, source: &str) -> Self {
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Self {
            key: key.to_string(),
            value,
            source: source.to_string(),
        }
    }
}

/// Keys whose value is a list: from the environment, comma-separated.
const LIST_KEYS: &[&str] = &[
    "server.api_keys",
    "server.allowed_hosts",
    "server.allowed_origins",
];

/// The overrides found in `env` (pairs of name and value), for every key
/// in [`KEYS`] plus the `PETTY_API_KEYS` shorthand.
pub fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut out = Vec::new();
    for (name, raw) in env {
        let key = if name == "PETTY_API_KEYS" {
            "server.api_keys"
        } else {
            match KEYS.iter().find(|k| env_name(k) == name) {
                Some(k) => *k,
                None => continue,
            }
        };
        let mut o = Override::parse(key, &raw, &name);
        if LIST_KEYS.contains(&key) && !o.value.is_array() {
            // Lists are given comma-separated.
            o.value = toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| toml::Value::String(k.to_string()))
                    .collect(),
            );
        }
        out.push(o);
    }
    out
}

/// `section.key` → `PETTY_SECTION_KEY`.
pub fn env_name(key: &str) -> String {
    format!("PETTY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// A limit in seconds where 0 means none.
fn secs_or_none(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl Config {
    /// `limits.default_ttl_secs` (`None`: no limit).
    pub fn default_ttl(&self) -> Option<Duration> {
        secs_or_none(self.limits.default_ttl_secs)
    }

    /// `limits.default_idle_timeout_secs` (`None`: no limit).
    pub fn default_idle_timeout(&self) -> Option<Duration> {
        secs_or_none(self.limits.default_idle_timeout_secs)
    }

    /// Reads `file` (if any), applies `overrides` in order, and validates.
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Self, ConfigError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: format!("file {}", path.display()),
                    message: e.to_string(),
                })?;
                (table, format!("file {}", path.display()))
            }
            None => (toml::Table::new(), "defaults".to_string()),
        };
        // Check the file alone first, so its errors name the file.
        if file.is_some() {
            Self::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::Parse {
                    origin: origin.clone(),
                    message: e.to_string(),
                }
            })?;
        }
        for o in overrides {
            let Some((section, key)) = o.key.split_once('.') else {
                return Err(ConfigError::Invalid(format!(
                    "{}: {} is not a section.key name",
                    o.source, o.key
                )));
            };
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(t) = entry else {
                return Err(ConfigError::Invalid(format!("{section} must be a table")));
            };
            t.insert(key.to_string(), o.value.clone());
            Self::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::Parse {
                    origin: o.source.clone(),
                    message: format!("{} = {}: {e}", o.key, o.value),
                }
            })?;
        }
        let config =
            Self::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin,
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key and what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let addr = self.listen_addr()?;
        if !addr.ip().is_loopback() && self.server.api_keys.is_empty() {
            return bad(format!(
                "server.listen = {addr} is beyond loopback and no API key is set; \
                 set server.api_keys (or PETTY_API_KEYS), or listen on 127.0.0.1"
            ));
        }
        if self.server.api_keys.iter().any(|k| k.len() < 16) {
            return bad("server.api_keys: every key must be at least 16 characters".into());
        }
        for entry in &self.server.allowed_hosts {
            if let Err(why) = crate::guard::parse_allowed_host(entry) {
                return bad(format!(
                    "server.allowed_hosts: {entry:?} {why}; give host names such as \"petty.internal\""
                ));
            }
        }
        for entry in &self.server.allowed_origins {
            if let Err(why) = crate::guard::parse_origin(entry.trim()) {
                return bad(format!(
                    "server.allowed_origins: {entry:?} {why}; give origins such as \"https://app.example.com\""
                ));
            }
        }
        if self.server.max_body_mib == 0 {
            return bad("server.max_body_mib must be at least 1".into());
        }
        for (k, v) in [
            ("limits.max_download_mib", self.limits.max_download_mib),
            ("limits.max_upload_mib", self.limits.max_upload_mib),
        ] {
            if v == 0 {
                return bad(format!("{k} must be at least 1"));
            }
        }
        if self.limits.max_concurrent_sandboxes == 0 {
            return bad("limits.max_concurrent_sandboxes must be at least 1".into());
        }
        if self.limits.max_concurrent_boots == Some(0) {
            return bad(
                "limits.max_concurrent_boots must be at least 1 (leave it out for the CPU count)"
                    .into(),
            );
        }
        if self.mcp.session_idle_secs == 0 {
            return bad("mcp.session_idle_secs must be at least 1".into());
        }
        if self.defaults.vcpu == 0 || self.defaults.vcpu > self.limits.max_vcpu {
            return bad(format!(
                "defaults.vcpu = {} is out of range; use 1 to limits.max_vcpu ({})",
                self.defaults.vcpu, self.limits.max_vcpu
            ));
        }
        if self.defaults.memory_mb < 64 || self.defaults.memory_mb > self.limits.max_memory_mb {
            return bad(format!(
                "defaults.memory_mb = {} is out of range; use 64 to limits.max_memory_mb ({})",
                self.defaults.memory_mb, self.limits.max_memory_mb
            ));
        }
        if self.defaults.disk_size_mb == Some(0) {
            return bad(
                "defaults.disk_size_mb must be at least 1 (leave it out for the image's size plus defaults.disk_free_mb)"
                    .into(),
            );
        }
        if self.defaults.exec_timeout_secs == 0 {
            return bad("defaults.exec_timeout_secs must be at least 1".into());
        }
        if self.pool.size > 0 && self.pool.max_concurrent_boots == 0 {
            return bad("pool.max_concurrent_boots must be at least 1".into());
        }
        if self.pool.size > self.limits.max_concurrent_sandboxes {
            return bad(format!(
                "pool.size = {} is more than limits.max_concurrent_sandboxes ({})",
                self.pool.size, self.limits.max_concurrent_sandboxes
            ));
        }
        for (k, p) in [
            ("backend.kernel", &self.backend.kernel),
            ("backend.rootfs", &self.backend.rootfs),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    return bad(format!(
                        "{k} = {} does not exist; give an existing file or leave it out for the built one",
                        p.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// `server.listen` as an address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server.listen = {:?} is not an address; use IP:PORT such as 127.0.0.1:8080",
                self.server.listen
            ))
        })
    }

    /// `server.shutdown_grace_secs` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, overrides: &[Override]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petty.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), overrides)
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../petty.example.toml");
        let loaded = Config::load(Some(&path), &[]).unwrap();
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn every_key_is_listed_and_settable_from_the_environment() {
        let table: toml::Table = toml::Table::try_from(Config::default()).unwrap();
        let mut listed = Vec::new();
        for (section, v) in &table {
            for key in v.as_table().unwrap().keys() {
                listed.push(format!("{section}.{key}"));
            }
        }
        for k in &listed {
            assert!(KEYS.contains(&k.as_str()), "{k} is missing from KEYS");
        }
        let env = vec![
            ("PETTY_LIMITS_MAX_CONCURRENT_SANDBOXES".into(), "7".into()),
            ("PETTY_SERVER_ON_SHUTDOWN".into(), "destroy".into()),
            (
                "PETTY_API_KEYS".into(),
                "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb".into(),
            ),
            ("PETTY_BACKEND_KIND".into(), "qemu".into()),
            ("PETTY_DEFAULTS_DISK_SIZE_MB".into(), "2048".into()),
            ("PETTY_SERVER_ALLOWED_HOSTS".into(), "petty.internal".into()),
            (
                "PETTY_SERVER_ALLOWED_ORIGINS".into(),
                "https://app.example.com, http://localhost:3000".into(),
            ),
            ("PETTY_LIMITS_MAX_UPLOAD_MIB".into(), "16384".into()),
            ("UNRELATED".into(), "x".into()),
        ];
        let c = Config::load(None, &env_overrides(env)).unwrap();
        assert_eq!(c.limits.max_concurrent_sandboxes, 7);
        assert_eq!(c.server.on_shutdown, OnShutdown::Destroy);
        assert_eq!(c.server.api_keys.len(), 2);
        assert_eq!(c.backend.kind, BackendKind::Qemu);
        assert_eq!(c.defaults.disk_size_mb, Some(2048));
        assert_eq!(c.server.allowed_hosts, ["petty.internal"]);
        assert_eq!(
            c.server.allowed_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert_eq!(c.limits.max_upload_mib, 16384);
    }

    #[test]
    fn later_overrides_win() {
        let c = load_str(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[Override::parse("server.listen", "127.0.0.1:2", "--listen")],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &[Override], &str)] = &[
            ("[server]\nlisen = \"x\"\n", &[], "lisen"),
            ("[limitz]\n", &[], "limitz"),
            ("[defaults]\nvcpu = \"two\"\n", &[], "vcpu"),
            ("[defaults]\nvcpu = 0\n", &[], "defaults.vcpu"),
            ("[defaults]\nmemory_mb = 10\n", &[], "defaults.memory_mb"),
            ("[server]\non_shutdown = \"explode\"\n", &[], "explode"),
            (
                "[server]\nlisten = \"0.0.0.0:80\"\n",
                &[],
                "beyond loopback",
            ),
            ("[server]\nlisten = \"nope\"\n", &[], "server.listen"),
            ("[backend]\nkernel = \"/no/such\"\n", &[], "backend.kernel"),
            (
                "[server]\nallowed_origins = [\"app.example.com\"]\n",
                &[],
                "server.allowed_origins: \"app.example.com\" has no scheme",
            ),
            (
                "[server]\nallowed_origins = [\"null\"]\n",
                &[],
                "server.allowed_origins",
            ),
            (
                "[server]\nallowed_hosts = [\"*\"]\n",
                &[],
                "server.allowed_hosts: \"*\" is a wildcard",
            ),
            (
                "[server]\nallowed_hosts = [\"petty.internal:8080\"]\n",
                &[],
                "server.allowed_hosts",
            ),
            (
                "[limits]\nmax_download_mib = 0\n",
                &[],
                "limits.max_download_mib",
            ),
            (
                "",
                &[Override {
                    key: "limits.max_vcpu".into(),
                    value: toml::Value::String("many".into()),
                    source: "PETTY_LIMITS_MAX_VCPU".into(),
                }],
                "PETTY_LIMITS_MAX_VCPU",
            ),
        ];
        for (text, ov, want) in cases {
            let e = load_str(text, ov).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn beyond_loopback_is_allowed_with_a_key() {
        let c = load_str(
            "[server]\nlisten = \"0.0.0.0:8080\"\napi_keys = [\"0123456789abcdef\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.listen_addr().unwrap().port(), 8080);
    }
}
