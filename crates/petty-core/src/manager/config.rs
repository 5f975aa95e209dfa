//! What a manager is configured with.

use std::path::PathBuf;
use std::time::Duration;

/// How a manager behaves.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Most sandboxes with a VM at once, across every process sharing the
    /// data directory (default 100). One more is refused at once.
    pub max_sandboxes: usize,
    /// TTL for sandboxes whose config sets none (default: none).
    pub default_ttl: Option<Duration>,
    /// Idle timeout for sandboxes whose config sets none (default: none).
    pub default_idle_timeout: Option<Duration>,
    /// Directory of the SQLite file, snapshots and templates (required:
    /// the configuration's `paths.data_dir`; [`ManagerConfig::new`]).
    pub data_dir: PathBuf,
    /// Where guest assets are cached, for sandboxes whose config names no
    /// kernel or rootfs ([`SandboxConfig::assets_dir`]); the
    /// configuration's `paths.cache_dir`.
    pub assets_dir: Option<PathBuf>,
    /// How backends other than the manager's own are made, when a sandbox
    /// (or the snapshot it is restored from) asks for one.
    pub backends: petty_vmm::BackendOptions,
    /// How often the reaper looks at lifetimes (default 1 s).
    pub reap_interval: Duration,
    /// How often the reaper pings each sandbox it holds (default 10 s).
    pub health_interval: Duration,
    /// Wait for an agent's first answer (default 10 s).
    pub connect_timeout: Duration,
    /// Bound on any single agent request (default 30 s).
    pub rpc_timeout: Duration,
    /// Create sandboxes by restoring a template snapshot (made by the first
    /// create of each kernel, rootfs, memory size and vCPU count) rather than
    /// booting (default true).
    pub templates: bool,
    /// VMs booting at once in this process (default: the host's CPU count).
    /// Further creates wait their turn (the capacity check happens before
    /// they wait), so a burst of creates does not starve every boot of CPU.
    pub max_concurrent_boots: usize,
    /// With `templates`, on a backend that can ([`Vmm::can_standby`]): keep
    /// one VMM started ahead of need for each template in use, waiting for
    /// the template's state, so a create from a template skips the VMM's own
    /// start-up (default true). Each costs one idle VMM process and no guest
    /// CPU; it dies with the manager (or, should this process be killed,
    /// at the next sweep of any petty process).
    pub standby: bool,
    /// How sandbox networks are made on this host (`None`: sandboxes asking
    /// for a network are refused).
    pub network: Option<petty_net::NetSettings>,
    /// The VMs this manager starts die with this process, even by SIGKILL,
    /// instead of running on for a later one (default false). For a
    /// one-shot process such as `petty run`, whose sandbox must not outlive
    /// it; their records are still swept by the next manager.
    pub vms_die_with_process: bool,
    /// What an idle timeout does to a sandbox whose config says nothing
    /// (default: destroy it). A TTL always destroys.
    pub on_idle: crate::IdleAction,
    /// Most bytes the disks kept by stopped sandboxes and the files of
    /// hibernated ones may take together (`None`: no cap). A hibernation
    /// that would pass it is refused (an idle one stops the sandbox
    /// instead); a stop is not (its disk exists already).
    pub max_kept_bytes: Option<u64>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            max_sandboxes: 100,
            default_ttl: None,
            default_idle_timeout: None,
            data_dir: PathBuf::new(),
            assets_dir: None,
            backends: petty_vmm::BackendOptions::default(),
            reap_interval: Duration::from_secs(1),
            health_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(30),
            max_concurrent_boots: crate::host_cpus(),
            templates: true,
            standby: true,
            network: None,
            vms_die_with_process: false,
            on_idle: crate::IdleAction::Destroy,
            max_kept_bytes: None,
        }
    }
}

impl ManagerConfig {
    /// The defaults, with state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }
}
