//! Petty's one configuration model, resolved once at the edge (the `petty`
//! binary) and handed to the libraries as typed values; no library reads
//! the environment.
//!
//! Sources, lowest first: built-in defaults, `/etc/petty/config.toml`,
//! `~/.config/petty/config.toml` (`$XDG_CONFIG_HOME`), `--config FILE`
//! (`$PETTY_CONFIG`), `PETTY_<SECTION>_<KEY>` variables, then flags.
//! `petty config show` prints every key's value and source;
//! `petty.example.toml` at the repository root lists every key with its
//! default. Every environment variable's name is in [`env`].

#![warn(missing_docs)]

pub mod env;
mod load;
mod model;
mod paths;

use std::net::SocketAddr;
use std::time::Duration;

pub use load::{load, ConfigError, Loaded, Override, Row, Source, Sources, SYSTEM_FILE};
pub use model::*;
pub use paths::{find_program, STANDARD_PATH};

impl Default for Settings {
    /// The built-in settings, paths derived from this process's environment.
    fn default() -> Self {
        paths::defaults(&env::Env::process()).0
    }
}

/// A limit in seconds where 0 means none.
fn secs_or_none(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl Settings {
    /// `limits.default_ttl_secs` (`None`: no limit).
    pub fn default_ttl(&self) -> Option<Duration> {
        secs_or_none(self.limits.default_ttl_secs)
    }

    /// `limits.default_idle_timeout_secs` (`None`: no limit).
    pub fn default_idle_timeout(&self) -> Option<Duration> {
        secs_or_none(self.limits.default_idle_timeout_secs)
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

    /// `e2b.listen` as an address (`None`: E2B's API is not served).
    pub fn e2b_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.e2b.listen.is_empty() {
            return Ok(None);
        }
        self.e2b.listen.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "e2b.listen = {:?} is not an address; use IP:PORT such as 127.0.0.1:3000",
                self.e2b.listen
            ))
        })
    }

    /// `server.shutdown_grace_secs` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }

    /// `backend.qemu.binary` found on the search path (or as given, when
    /// it is a path or is not found: the backend then says it is missing).
    pub fn qemu_binary(&self) -> String {
        self.program(&self.backend.qemu.binary)
    }

    /// `backend.firecracker.binary`, as [`Settings::qemu_binary`].
    pub fn firecracker_binary(&self) -> String {
        self.program(&self.backend.firecracker.binary)
    }

    fn program(&self, name: &str) -> String {
        find_program(name, &self.paths.search_path)
            .map_or_else(|| name.to_string(), |p| p.display().to_string())
    }

    /// Checks every value; the error names the key and what to do. (The
    /// daemon checks `server.allowed_hosts` and `server.allowed_origins`
    /// further when it starts.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let addr = self.listen_addr()?;
        if !addr.ip().is_loopback() && self.server.api_keys.is_empty() {
            return bad(format!(
                "server.listen = {addr} is beyond loopback and no API key is set; \
                 set server.api_keys (or PETTY_API_KEYS), or listen on 127.0.0.1"
            ));
        }
        if let Some(addr) = self.e2b_listen_addr()? {
            if !addr.ip().is_loopback() && self.server.api_keys.is_empty() {
                return bad(format!(
                    "e2b.listen = {addr} is beyond loopback and no API key is set; \
                     set server.api_keys (or PETTY_API_KEYS), or listen on 127.0.0.1"
                ));
            }
        }
        if let Some(why) = bad_domain(&self.e2b.domain) {
            return bad(format!(
                "e2b.domain = {:?} {why}; give a DNS name alone, such as sandbox.example.com",
                self.e2b.domain
            ));
        }
        if self.server.api_keys.iter().any(|k| k.len() < 16) {
            return bad("server.api_keys: every key must be at least 16 characters".into());
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
        for (k, p) in [
            ("paths.data_dir", &self.paths.data_dir),
            ("paths.cache_dir", &self.paths.cache_dir),
            ("paths.run_dir", &self.paths.run_dir),
        ] {
            if !p.is_absolute() {
                return bad(format!(
                    "{k} = {} is not an absolute path; give one starting with /",
                    p.display()
                ));
            }
        }
        let fc = &self.backend.firecracker;
        if fc.jailer.is_some() && (fc.jailer_uid.is_none() || fc.jailer_gid.is_none()) {
            return bad(
                "backend.firecracker.jailer is set but jailer_uid or jailer_gid is not; give the uid and gid Firecracker runs as"
                    .into(),
            );
        }
        if self.backend.kind == BackendKind::Flintlock
            && self
                .backend
                .flintlock
                .endpoint
                .as_deref()
                .unwrap_or("")
                .is_empty()
        {
            return bad(
                "backend.kind = \"flintlock\" but backend.flintlock.endpoint is not set; give Flintlock's gRPC endpoint (http://HOST:PORT)"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// What is wrong with `e2b.domain`, if anything (empty is none set): it is
/// a DNS name, lower case, of at least two labels, without a scheme, port,
/// path or wildcard.
fn bad_domain(domain: &str) -> Option<&'static str> {
    if domain.is_empty() {
        return None;
    }
    if domain.contains('*') {
        return Some("is a wildcard");
    }
    if domain.contains("://") || domain.contains('/') {
        return Some("is a URL");
    }
    if domain.contains(':') {
        return Some("has a port");
    }
    if domain.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("is an IP address; sandboxes are named under a DNS name");
    }
    let labels_ok = domain.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if !labels_ok || domain.len() > 253 {
        return Some("is not a lower-case DNS name");
    }
    if !domain.contains('.') {
        return Some("has one label; name a domain such as sandbox.example.com");
    }
    None
}
