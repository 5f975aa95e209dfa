//! Sandbox configuration: a builder whose `build()` checks every value
//! against the host before a VM is started.

use std::path::PathBuf;
use std::time::Duration;

use petty_vmm::BackendKind;

use crate::CoreError;

/// A backend named by a user: `qemu`, `firecracker`, or `auto` (`None`:
/// the manager's default).
pub fn backend_choice(name: &str) -> Result<Option<BackendKind>, CoreError> {
    match name {
        "auto" => Ok(None),
        other => other.parse().map(Some).map_err(|_| {
            CoreError::InvalidConfig(format!(
                "backend {other:?} is not one Petty has; use qemu, firecracker or auto"
            ))
        }),
    }
}

/// What an idle timeout does to a managed sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleAction {
    /// It is destroyed (the default).
    #[default]
    Destroy,
    /// It is stopped; its disk stays for [`crate::SandboxManager::start`].
    Stop,
    /// It is hibernated: memory, devices and disk saved, its VMM ended,
    /// brought back by [`crate::SandboxManager::resume`] or its next use.
    Hibernate,
}

impl IdleAction {
    /// Its name: `destroy`, `stop`, `hibernate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Stop => "stop",
            Self::Hibernate => "hibernate",
        }
    }
}

impl std::fmt::Display for IdleAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IdleAction {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "destroy" => Ok(Self::Destroy),
            "stop" => Ok(Self::Stop),
            "hibernate" => Ok(Self::Hibernate),
            other => Err(CoreError::InvalidConfig(format!(
                "on_idle {other:?} is not one Petty has; use destroy, stop or hibernate"
            ))),
        }
    }
}

/// How one sandbox is built. Make one with [`SandboxConfig::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Guest kernel; the built asset when `None`.
    pub kernel: Option<PathBuf>,
    /// Root filesystem image; the built asset when `None`.
    pub rootfs: Option<PathBuf>,
    /// Guest memory in MiB (default 256).
    pub memory_mib: u32,
    /// vCPUs (default 2).
    pub vcpu_count: u32,
    /// vsock context id for backends that use vsock (default 3; 0-2 are reserved).
    pub vsock_cid: u32,
    /// How long to wait for the agent's first answer after boot (default 10 s).
    pub connect_timeout: Duration,
    /// How long any single agent request may take, exec output aside (default 30 s).
    pub rpc_timeout: Duration,
    /// Kill the VM if the creating process dies, even by SIGKILL (default
    /// true). Sandboxes of a [`crate::SandboxManager`] never do: they outlive
    /// the process, in its SQLite store.
    pub die_with_parent: bool,
    /// Unique name (managed sandboxes); derived from the id when `None`.
    pub name: Option<String>,
    /// Destroy the sandbox this long after creation (managed sandboxes;
    /// the manager's default when `None`).
    pub ttl: Option<Duration>,
    /// Destroy the sandbox after this long without an exec or file operation
    /// (managed sandboxes; the manager's default when `None`).
    pub idle_timeout: Option<Duration>,
    /// What its idle timeout does (managed sandboxes; the manager's
    /// [`crate::ManagerConfig::on_idle`] when `None`).
    pub on_idle: Option<IdleAction>,
    /// Size of the root disk in MiB; the guest's `/` grows to fill it. `None`
    /// is the base image's size plus [`disk_free_mib`](Self::disk_free_mib)
    /// for a new sandbox, the snapshot disk's size for a restore; a size
    /// below what the disk is made from is refused when the sandbox starts.
    pub disk_size_mib: Option<u32>,
    /// Room to work: a new sandbox whose `disk_size_mib` is `None` gets a
    /// root disk this much larger than its base image (default 2048, so
    /// `apt-get install` or a `pip install` fits; 0: the image's size). The
    /// disk is sparse: host space is spent only as the guest writes.
    pub disk_free_mib: u32,
    /// VMM backend (`None`: the manager's default). Restores always use
    /// their snapshot's.
    pub backend: Option<BackendKind>,
    /// Where the built guest assets are, for a kernel or rootfs left
    /// `None` (the configuration's `paths.cache_dir`; a manager fills in
    /// its own when `None`).
    pub assets_dir: Option<PathBuf>,
    /// Who asked for it, as `petty ls` and the REST view show it (`cli`,
    /// `rest`, `mcp-stdio`, `mcp-http:<session>`); none when `None`.
    pub owner: Option<String>,
    /// The sandbox goes when the process that made it ends, however it
    /// ends (an MCP session's sandboxes): if that process could not remove
    /// it, the next Petty process's recovery does.
    pub bound_to_owner: bool,
    /// Its network: mode, allow rules, published ports (default: none,
    /// only the guest's loopback). Needs [`crate::ManagerConfig::network`].
    /// A restore of a snapshot taken with a network gets the network of
    /// the sandbox it was taken from when this is none.
    pub network: petty_net::NetworkSpec,
    /// The named template to create from (its image and its exec
    /// defaults; managed sandboxes): `None` or `base` is the rootfs above,
    /// else Petty's own image. Not with `rootfs` (the manager refuses both).
    pub template: Option<String>,
    /// What every exec gets unless its request says otherwise (variables,
    /// working directory, user); a manager fills it from the template.
    pub exec_defaults: crate::ImageDefaults,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            kernel: None,
            rootfs: None,
            memory_mib: 256,
            vcpu_count: 2,
            vsock_cid: 3,
            connect_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(30),
            die_with_parent: true,
            name: None,
            ttl: None,
            idle_timeout: None,
            on_idle: None,
            disk_size_mib: None,
            disk_free_mib: DEFAULT_DISK_FREE_MIB,
            backend: None,
            assets_dir: None,
            owner: None,
            bound_to_owner: false,
            network: petty_net::NetworkSpec::default(),
            template: None,
            exec_defaults: crate::ImageDefaults::default(),
        }
    }
}

impl SandboxConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> SandboxConfigBuilder {
        SandboxConfigBuilder(Self::default())
    }

    /// Checks every value; the error names the field and what to do.
    pub fn validate(&self) -> Result<(), CoreError> {
        const MIN_MEMORY_MIB: u32 = 64;
        let host_mib = host_memory_mib();
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(CoreError::InvalidConfig(format!(
                "memory_mib {} is below the {MIN_MEMORY_MIB} MiB a guest needs to boot; ask for at least {MIN_MEMORY_MIB}",
                self.memory_mib
            )));
        }
        if let Some(host) = host_mib {
            if u64::from(self.memory_mib) > host {
                return Err(CoreError::InvalidConfig(format!(
                    "memory_mib {} is more than this host's {host} MiB; ask for less",
                    self.memory_mib
                )));
            }
        }
        const MAX_VCPUS: u32 = 32;
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(CoreError::InvalidConfig(format!(
                "vcpu_count {} is out of range; use 1 to {MAX_VCPUS}",
                self.vcpu_count
            )));
        }
        if self.vsock_cid < 3 {
            return Err(CoreError::InvalidConfig(format!(
                "vsock_cid {} is reserved (0-2 belong to the hypervisor and host); use 3 or more",
                self.vsock_cid
            )));
        }
        for (what, path) in [("kernel", &self.kernel), ("rootfs", &self.rootfs)] {
            if let Some(p) = path {
                if !p.is_file() {
                    return Err(CoreError::InvalidConfig(format!(
                        "{what} {} does not exist; give an existing file or leave it unset to use the built one (`petty image build`)",
                        p.display()
                    )));
                }
            }
        }
        if let Some(name) = &self.name {
            let ok = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !name.starts_with(['-', '.']);
            if !ok {
                return Err(CoreError::InvalidConfig(format!(
                    "name {name:?} is not allowed; use 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
                )));
            }
        }
        if self.ttl.is_some_and(|t| t.is_zero()) || self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(CoreError::InvalidConfig(
                "ttl and idle_timeout must be greater than zero (leave them unset for none)".into(),
            ));
        }
        if let Some(mib) = self.disk_size_mib {
            if mib == 0 || mib > MAX_DISK_SIZE_MIB {
                return Err(CoreError::InvalidConfig(format!(
                    "disk_size_mib {mib} is out of range; use 1 to {MAX_DISK_SIZE_MIB} (1 TiB), at least the base image's size, or leave it unset for the base image's size"
                )));
            }
        }
        if self.disk_free_mib > MAX_DISK_SIZE_MIB {
            return Err(CoreError::InvalidConfig(format!(
                "disk_free_mib {} is out of range; use 0 to {MAX_DISK_SIZE_MIB} (1 TiB)",
                self.disk_free_mib
            )));
        }
        if self.connect_timeout.is_zero() || self.rpc_timeout.is_zero() {
            return Err(CoreError::InvalidConfig(
                "timeouts must be greater than zero".into(),
            ));
        }
        // Without a network, published ports and allow rules would be
        // dropped without a word: refused instead. (A network's rules are
        // checked against the host's deny list when it is made.)
        if !self.network.has_network() {
            self.network
                .policy(&[])
                .map_err(|e| CoreError::InvalidConfig(e.to_string()))?;
        }
        Ok(())
    }
}

/// Largest root disk a sandbox may ask for: 1 TiB.
const MAX_DISK_SIZE_MIB: u32 = 1 << 20;

/// The room a new sandbox's root disk has beyond its image by default.
pub const DEFAULT_DISK_FREE_MIB: u32 = 2048;

/// Builds a [`SandboxConfig`].
#[derive(Debug, Clone)]
pub struct SandboxConfigBuilder(SandboxConfig);

impl SandboxConfigBuilder {
    /// Guest kernel image.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.kernel = Some(path.into());
        self
    }

    /// Root filesystem image.
    pub fn rootfs(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.rootfs = Some(path.into());
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.0.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn vcpu_count(mut self, n: u32) -> Self {
        self.0.vcpu_count = n;
        self
    }

    /// vsock context id (3 or more).
    pub fn vsock_cid(mut self, cid: u32) -> Self {
        self.0.vsock_cid = cid;
        self
    }

    /// Wait for the agent's first answer.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.0.connect_timeout = t;
        self
    }

    /// Bound on any single agent request.
    pub fn rpc_timeout(mut self, t: Duration) -> Self {
        self.0.rpc_timeout = t;
        self
    }

    /// Kill the VM when the creating process dies.
    pub fn die_with_parent(mut self, yes: bool) -> Self {
        self.0.die_with_parent = yes;
        self
    }

    /// Unique name for a managed sandbox.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.0.name = Some(name.into());
        self
    }

    /// Lifetime of a managed sandbox.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.0.ttl = Some(ttl);
        self
    }

    /// Idle timeout of a managed sandbox.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.0.idle_timeout = Some(t);
        self
    }

    /// What the idle timeout of a managed sandbox does.
    pub fn on_idle(mut self, action: IdleAction) -> Self {
        self.0.on_idle = Some(action);
        self
    }

    /// Root disk size in MiB (at least the base image's).
    pub fn disk_size_mib(mut self, mib: u32) -> Self {
        self.0.disk_size_mib = Some(mib);
        self
    }

    /// Room to work on a new sandbox's disk when no size is given (see
    /// [`SandboxConfig::disk_free_mib`]).
    pub fn disk_free_mib(mut self, mib: u32) -> Self {
        self.0.disk_free_mib = mib;
        self
    }

    /// VMM backend for this sandbox (`None`: the manager's default).
    pub fn backend(mut self, kind: impl Into<Option<BackendKind>>) -> Self {
        self.0.backend = kind.into();
        self
    }

    /// Where the built guest assets are (see [`SandboxConfig::assets_dir`]).
    pub fn assets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.0.assets_dir = Some(dir.into());
        self
    }

    /// Who asks for the sandbox (see [`SandboxConfig::owner`]).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.0.owner = Some(owner.into());
        self
    }

    /// Whether the sandbox goes with the process that makes it (see
    /// [`SandboxConfig::bound_to_owner`]).
    pub fn bound_to_owner(mut self, yes: bool) -> Self {
        self.0.bound_to_owner = yes;
        self
    }

    /// Its network (see [`SandboxConfig::network`]).
    pub fn network(mut self, spec: petty_net::NetworkSpec) -> Self {
        self.0.network = spec;
        self
    }

    /// The named template to create from (managed sandboxes).
    pub fn template(mut self, name: impl Into<String>) -> Self {
        self.0.template = Some(name.into());
        self
    }

    /// The validated configuration.
    pub fn build(self) -> Result<SandboxConfig, CoreError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

/// Total memory of this host in MiB, from `/proc/meminfo`.
pub fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Number of CPUs this process may use.
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = SandboxConfig::builder().build().unwrap();
        assert_eq!((c.memory_mib, c.vcpu_count, c.vsock_cid), (256, 2, 3));
    }

    #[test]
    fn disk_size_is_optional_and_bounded() {
        assert_eq!(
            SandboxConfig::builder().build().unwrap().disk_size_mib,
            None
        );
        for mib in [1, 1024, MAX_DISK_SIZE_MIB] {
            let c = SandboxConfig::builder().disk_size_mib(mib).build().unwrap();
            assert_eq!(c.disk_size_mib, Some(mib));
        }
        let e = SandboxConfig::builder()
            .disk_size_mib(u32::MAX)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk_size_mib") && e.contains("1 TiB"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (SandboxConfig::builder().memory_mib(0), "memory_mib 0"),
            (
                SandboxConfig::builder().memory_mib(u32::MAX),
                "more than this host",
            ),
            (SandboxConfig::builder().vcpu_count(0), "vcpu_count 0"),
            (SandboxConfig::builder().vsock_cid(2), "vsock_cid 2"),
            (
                SandboxConfig::builder().kernel("/no/such/kernel"),
                "kernel /no/such/kernel",
            ),
            (SandboxConfig::builder().disk_size_mib(0), "disk_size_mib 0"),
            (
                SandboxConfig::builder().disk_size_mib(MAX_DISK_SIZE_MIB + 1),
                "disk_size_mib 1048577 is out of range",
            ),
        ];
        for (b, want) in cases {
            let e = b.build().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn ports_and_rules_without_a_network_are_refused() {
        let none = |f: fn(&mut petty_net::NetworkSpec)| {
            let mut spec = petty_net::NetworkSpec::default();
            f(&mut spec);
            SandboxConfig::builder().network(spec).build()
        };
        let e = none(|s| s.publish = vec!["80".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("published ports need a network"), "{e}");
        let e = none(|s| s.allow_cidrs = vec!["10.0.0.0/8".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("need network mode allow"), "{e}");
        assert!(none(|_| {}).is_ok());
        let public = petty_net::NetworkSpec {
            publish: vec!["80".parse().unwrap()],
            ..petty_net::NetworkSpec::mode(petty_net::NetworkMode::Public)
        };
        assert!(SandboxConfig::builder().network(public).build().is_ok());
    }
}
