//! The settings themselves: one typed section per concern, each key with
//! its default. `petty.example.toml` lists every key (a test keeps it so).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every setting, merged from all sources ([`crate::load`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where Petty keeps things.
    pub paths: PathsSection,
    /// The VMM backends.
    pub backend: BackendSection,
    /// Limits on what clients may ask for.
    pub limits: LimitsSection,
    /// What a create gets when it does not say.
    pub defaults: DefaultsSection,
    /// The daemon's warm pool.
    pub pool: PoolSection,
    /// The daemon: listening, keys, shutdown.
    pub server: ServerSection,
    /// MCP sessions.
    pub mcp: McpSection,
    /// Building the guest image.
    pub image: ImageSection,
    /// Sandbox networks.
    #[serde(default)]
    pub network: NetworkSection,
    /// Named templates: builds, their cache, the warm pool per template.
    #[serde(default)]
    pub templates: TemplatesSection,
    /// E2B's API, for E2B's own SDKs.
    #[serde(default)]
    pub e2b: E2bSection,
    /// `petty gateway`: one endpoint over many `petty serve` nodes.
    #[serde(default)]
    pub gateway: GatewaySection,
}

/// `[paths]`. Defaults follow the XDG base directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// State: the SQLite file, snapshots, templates (default
    /// `$XDG_DATA_HOME/petty`, else `~/.local/share/petty`).
    pub data_dir: PathBuf,
    /// Guest assets, kernel and rootfs (default `$XDG_CACHE_HOME/petty`,
    /// else `~/.cache/petty`).
    pub cache_dir: PathBuf,
    /// The run root: one directory per VM with its sockets, disk overlay
    /// and logs (default `$XDG_RUNTIME_DIR/petty`, else `/run/petty` for
    /// root, else `/tmp/petty-<uid>`); it must be this user's, mode 0700.
    pub run_dir: PathBuf,
    /// Where programs are looked for (default: `$PATH`).
    pub search_path: Vec<PathBuf>,
}

/// `[backend]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSection {
    /// `auto` (Firecracker where its binary and a KVM that boots its
    /// guests exist, else QEMU), `qemu`, `firecracker` or `flintlock`
    /// (never chosen by `auto`).
    pub kind: BackendKind,
    /// Guest kernel (default: the one `petty image build` made).
    pub kernel: Option<PathBuf>,
    /// Root filesystem image (default: the one `petty image build` made).
    pub rootfs: Option<PathBuf>,
    /// Create sandboxes by restoring a template snapshot (default true).
    pub templates: bool,
    /// A long-running process (`petty serve`, `petty mcp`) keeps one VMM
    /// started ahead of need for each template in use (default true; QEMU).
    pub standby: bool,
    /// QEMU.
    pub qemu: QemuSection,
    /// Firecracker.
    pub firecracker: FirecrackerSection,
    /// Flintlock hosts.
    pub flintlock: FlintlockSection,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            kind: BackendKind::Auto,
            kernel: None,
            rootfs: None,
            templates: true,
            standby: true,
            qemu: QemuSection::default(),
            firecracker: FirecrackerSection::default(),
            flintlock: FlintlockSection::default(),
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
    /// MicroVMs on a Flintlock host (`[backend.flintlock]`).
    Flintlock,
}

/// `[backend.qemu]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuSection {
    /// The QEMU binary: a name looked for on the search path, or a path.
    pub binary: String,
    /// `auto` (KVM when it boots a stock kernel here, else TCG), `kvm` or `tcg`.
    pub accel: AccelSetting,
    /// Address randomisation inside guests: `auto` (on under KVM, off under
    /// TCG, where QEMU 7.2 re-translates every process placed at new
    /// addresses), `on` or `off`.
    pub guest_aslr: Switch,
}

impl Default for QemuSection {
    fn default() -> Self {
        Self {
            binary: "qemu-system-x86_64".into(),
            accel: AccelSetting::Auto,
            guest_aslr: Switch::Auto,
        }
    }
}

/// `backend.qemu.accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    /// Probe the host.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// A setting that is on, off, or chosen by Petty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Petty chooses (the key's documentation says how).
    Auto,
    /// On.
    On,
    /// Off.
    Off,
}

impl Switch {
    /// `Some(true)` for on, `Some(false)` for off, `None` for auto.
    pub fn forced(self) -> Option<bool> {
        match self {
            Self::Auto => None,
            Self::On => Some(true),
            Self::Off => Some(false),
        }
    }
}

/// `[backend.firecracker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirecrackerSection {
    /// The Firecracker binary: a name looked for on the search path, or a path.
    pub binary: String,
    /// A host TAP device: VMs get `eth0` on it (one VM at a time per device).
    pub tap: Option<String>,
    /// Track dirty pages, so a snapshot of a restored VM is a Diff.
    pub diff_snapshots: bool,
    /// The jailer binary: when set, Firecracker runs under it (as root).
    pub jailer: Option<String>,
    /// The uid jailed Firecracker runs as (required with `jailer`).
    pub jailer_uid: Option<u32>,
    /// The gid jailed Firecracker runs as (required with `jailer`).
    pub jailer_gid: Option<u32>,
    /// Where jails are built (default `/srv/jailer`).
    pub jailer_chroot_base: Option<PathBuf>,
    /// cgroup v2 limits of each jailed VM, `file=value` pairs separated by
    /// `;`, e.g. `cpu.max=50000 100000;memory.max=1G`.
    pub jailer_cgroups: Option<String>,
}

impl Default for FirecrackerSection {
    fn default() -> Self {
        Self {
            binary: "firecracker".into(),
            tap: None,
            diff_snapshots: false,
            jailer: None,
            jailer_uid: None,
            jailer_gid: None,
            jailer_chroot_base: None,
            jailer_cgroups: None,
        }
    }
}

/// `[backend.flintlock]`: MicroVMs on a Flintlock host, through its gRPC
/// API. Checked when the backend is made (`petty-flintlock`), naming the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlintlockSection {
    /// Flintlock's gRPC endpoint, `http://HOST:PORT` (unset: the backend is
    /// not configured).
    pub endpoint: Option<String>,
    /// The Flintlock namespace Petty's MicroVMs go in (default `petty`).
    pub namespace: String,
    /// OCI reference of the image holding the guest kernel (vmlinux).
    pub kernel_image: Option<String>,
    /// The kernel's file inside that image (default: Flintlock's).
    pub kernel_filename: Option<String>,
    /// OCI reference of the image whose file system is Petty's rootfs.
    pub root_image: Option<String>,
    /// The IPv4 network guests get addresses in, e.g. `10.100.0.0/24`;
    /// this host must reach it.
    pub guest_cidr: Option<String>,
    /// The guests' default gateway (default: the network's first address).
    pub gateway: Option<String>,
    /// `tap` (default) or `macvtap`.
    pub interface_type: String,
    /// The bridge Flintlock attaches TAP devices to (default: Flintlock's).
    pub bridge: Option<String>,
    /// The TCP port the guest agent listens on (default 52).
    pub agent_port: u16,
    /// Flintlock's provider (default: its own default).
    pub provider: Option<String>,
}

impl Default for FlintlockSection {
    fn default() -> Self {
        Self {
            endpoint: None,
            namespace: "petty".into(),
            kernel_image: None,
            kernel_filename: None,
            root_image: None,
            guest_cidr: None,
            gateway: None,
            interface_type: "tap".into(),
            bridge: None,
            agent_port: 52,
            provider: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most sandboxes with a VM at once, across every Petty process sharing
    /// the data directory (default 100); one more is refused (429).
    pub max_concurrent_sandboxes: usize,
    /// VMs starting at once on this host, across every Petty process that
    /// shares its run root (default: the CPU count); more wait their turn.
    pub max_concurrent_boots: Option<usize>,
    /// REST and MCP sandboxes end this long after creation unless the
    /// create says otherwise (default 3600; 0: no limit). The CLI's sandboxes
    /// have none unless asked.
    pub default_ttl_secs: u64,
    /// REST and MCP sandboxes end after this long without a command or file
    /// operation unless the create says otherwise (default 300; 0: no limit).
    pub default_idle_timeout_secs: u64,
    /// Largest guest memory a create may ask for, in MiB (default 8192).
    pub max_memory_mb: u32,
    /// Most vCPUs a create may ask for (default 8).
    pub max_vcpu: u32,
    /// Largest download from a guest, in MiB (default 4096; per call it can
    /// be lifted).
    pub max_download_mib: u64,
    /// Largest streamed upload into a guest, in MiB (default 4096).
    pub max_upload_mib: u64,
    /// What an idle timeout does to a sandbox whose create says nothing:
    /// `destroy` it (default), `stop` it, keeping its disk for `petty
    /// start`, or `hibernate` it, keeping its memory too for `petty resume`
    /// (or its next use). A TTL always destroys.
    pub on_idle: OnIdle,
    /// Most host disk, in MiB, that stopped sandboxes' kept disks and
    /// hibernated sandboxes' files may take together (default 0: no cap).
    /// A hibernation past it is refused (an idle one stops the sandbox
    /// instead); a stop is not, its disk being there already.
    pub max_kept_disk_mib: u64,
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
            on_idle: OnIdle::Destroy,
            max_kept_disk_mib: 0,
        }
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsSection {
    /// vCPUs of a sandbox (default 2).
    pub vcpu: u32,
    /// Guest memory in MiB (default 256).
    pub memory_mb: u32,
    /// Root disk size in MiB (default: the image's size plus `disk_free_mb`).
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
            disk_free_mb: 2048,
            exec_timeout_secs: 300,
        }
    }
}

/// The default `pool.warmup_command`.
fn default_warmup_command() -> String {
    "true; python3 -c pass 2>/dev/null; true".into()
}

/// `[pool]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Warm sandboxes of the default size the daemon keeps ready (default 2;
    /// 0 turns the pool off).
    pub size: usize,
    /// Pool boots in flight at once (default 1).
    pub max_concurrent_boots: usize,
    /// A shell command each warm sandbox runs once before it is handed out,
    /// so that the first commands users run do not pay for warming up (a
    /// software-emulated VM translates each guest code path on its first
    /// run). Empty: none. Default: `true; python3 -c pass 2>/dev/null; true`.
    pub warmup_command: String,
}

impl Default for PoolSection {
    fn default() -> Self {
        Self {
            size: 2,
            max_concurrent_boots: 1,
            warmup_command: default_warmup_command(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// uploads stream and have `limits.max_upload_mib` instead.
    pub max_body_mib: u64,
    /// Log lines as `text` (default) or `json`.
    pub log_format: LogFormat,
    /// Per-sandbox series on `/metrics` (memory, CPU, disk, execs, startup,
    /// labelled by sandbox name); off by default, to bound the label
    /// cardinality a scraper stores.
    pub per_sandbox_metrics: bool,
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
            per_sandbox_metrics: false,
        }
    }
}

/// What an idle timeout does (`limits.on_idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnIdle {
    /// The sandbox is destroyed.
    Destroy,
    /// The sandbox is stopped; its disk stays for a start.
    Stop,
    /// The sandbox is hibernated; memory and disk stay for a resume.
    Hibernate,
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

/// `[mcp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// An MCP session over HTTP with no call for this long ends, and the
    /// sandboxes it created (unless kept) go with it (default 600).
    pub session_idle_secs: u64,
}

impl Default for McpSection {
    fn default() -> Self {
        Self {
            session_idle_secs: 600,
        }
    }
}

/// `[e2b]`: E2B's control plane and in-sandbox API (envd), for E2B's own
/// SDKs pointed at Petty (`E2B_API_URL` and `E2B_SANDBOX_URL`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct E2bSection {
    /// Address to serve them on, e.g. `127.0.0.1:3000` (default empty: not
    /// served). Beyond loopback it needs `server.api_keys`, which are then
    /// E2B's API keys (`X-API-KEY`).
    pub listen: String,
    /// The domain E2B's SDKs name sandboxes under (`E2B_DOMAIN`), e.g.
    /// `sandbox.example.com` (default empty: none). Set, the listener also
    /// takes `Host: <port>-<sandboxID>.<domain>` (port 49983 envd, 49999
    /// the code interpreter) and `api.<domain>`, and creates answer it as
    /// their `domain`.
    pub domain: String,
}

/// `[gateway]`: `petty gateway`, which serves Petty's REST API over any
/// number of `petty serve` nodes, placing creates and routing every
/// request for a sandbox to its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Address the gateway listens on (default `127.0.0.1:8090`).
    pub listen: String,
    /// Also serve E2B's API over the nodes' (those with `e2b.listen`)
    /// here, e.g. `127.0.0.1:3000` (default empty: not served).
    pub e2b_listen: String,
    /// The nodes' base URLs, e.g. `http://10.0.0.2:8080`.
    pub nodes: Vec<String>,
    /// Nodes found by DNS as well: `dns:NAME` (its A/AAAA records, at
    /// `discover_port`) or `srv:NAME` (its SRV records), re-resolved every
    /// `health_interval_secs`; a Kubernetes headless Service publishes
    /// both. Empty: only `nodes`.
    pub discover: String,
    /// The port of nodes found by `dns:` (default 8080).
    pub discover_port: u16,
    /// The DNS server discovery asks, `IP[:PORT]` (default empty: the
    /// system's resolver for `dns:`, `/etc/resolv.conf`'s first
    /// nameserver for `srv:`).
    pub dns_server: String,
    /// Keys clients must send the gateway (`Authorization: Bearer`); beyond
    /// loopback at least one is required.
    pub api_keys: Vec<String>,
    /// The key the gateway sends its nodes (one of their
    /// `server.api_keys`); empty: none.
    pub node_key: String,
    /// How often each node's health and capacity are read (default 2 s).
    pub health_interval_secs: u64,
    /// Placement looks at this many nodes at random and takes the least
    /// loaded (best of K; default 2; 0: all of them).
    pub best_of: usize,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8090".into(),
            e2b_listen: String::new(),
            nodes: Vec::new(),
            discover: String::new(),
            discover_port: 8080,
            dns_server: String::new(),
            api_keys: Vec::new(),
            node_key: String::new(),
            health_interval_secs: 2,
            best_of: 2,
        }
    }
}

/// `[image]`: Petty's own image, and the OCI images templates are made
/// from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSection {
    /// The Debian mirror the rootfs is built from (default: the host's own
    /// apt sources).
    pub debian_mirror: Option<String>,
    /// The registry (`host[:port]`) of an image reference that names none
    /// (`busybox:1`); default none: references must name their registry.
    pub default_registry: Option<String>,
    /// Registries (`host[:port]`) pulled from over plain HTTP; loopback
    /// ones always may be.
    pub insecure_registries: Vec<String>,
    /// A PEM file of certificate authorities trusted for registries'
    /// HTTPS besides the system's (a registry with a private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// The registry logins (`auth.json` of `skopeo login`/`podman login`,
    /// or Docker's `config.json`); default `$REGISTRY_AUTH_FILE`, else
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, else
    /// `~/.docker/config.json`, whichever exists.
    pub auth_file: Option<std::path::PathBuf>,
    /// Largest image to pull: its layers' compressed sizes together, in
    /// MiB (default 8192).
    pub max_image_mib: u64,
    /// Most layers an image may have (default 128).
    pub max_layers: usize,
    /// Largest unpacked image in MiB (default 16384).
    pub max_unpacked_mib: u64,
}

impl Default for ImageSection {
    fn default() -> Self {
        Self {
            debian_mirror: None,
            default_registry: None,
            insecure_registries: Vec::new(),
            ca_file: None,
            auth_file: None,
            max_image_mib: 8192,
            max_layers: 128,
            max_unpacked_mib: 16384,
        }
    }
}

/// `[templates]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesSection {
    /// Guest memory of a Dockerfile build's sandbox in MiB (default 1024).
    pub build_memory_mb: u32,
    /// Give build sandboxes the `public` network so `RUN apt-get` and
    /// `pip install` work (default true; needs what sandbox networks need).
    pub build_network: bool,
    /// Bound on one build step's command, in seconds (default 3600).
    pub step_timeout_secs: u64,
    /// What build step caches and cached layers may take together, in MiB;
    /// past it the oldest go (default 20480).
    pub cache_max_mib: u64,
    /// Templates the daemon keeps warm sandboxes of, each `NAME` or
    /// `NAME=COUNT` (default none; `pool.size` is the base image's).
    pub warm: Vec<String>,
    /// Host directories a build through the daemon (REST, MCP) may read:
    /// a Dockerfile's context, a local image archive or layout
    /// (`from_image`, or a Dockerfile's `FROM`). Default none: the daemon
    /// builds inline Dockerfiles with an empty context, from registries and
    /// templates only. The CLI reads what its user can.
    pub host_paths: Vec<String>,
}

impl Default for TemplatesSection {
    fn default() -> Self {
        Self {
            build_memory_mb: 1024,
            build_network: true,
            step_timeout_secs: 3600,
            cache_max_mib: 20480,
            warm: Vec::new(),
            host_paths: Vec::new(),
        }
    }
}

impl TemplatesSection {
    /// `warm` as (template, count); a bad entry is an error naming it.
    pub fn warm_pools(&self) -> Result<Vec<(String, usize)>, String> {
        self.warm
            .iter()
            .map(|w| match w.split_once('=') {
                None => Ok((w.clone(), 1)),
                Some((name, n)) => n
                    .parse::<usize>()
                    .map(|n| (name.to_string(), n))
                    .map_err(|_| format!("templates.warm entry {w:?}: use NAME or NAME=COUNT")),
            })
            .collect()
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// A create's network mode when it names none: `none` (only the
    /// guest's loopback), `public` or `allow` (default `none`).
    pub default: petty_net::NetworkMode,
    /// Blocks `public` mode never reaches, nor names in `allow` mode
    /// resolve to (default: private networks, CGNAT, loopback, link-local,
    /// multicast, IPv6 unique-local and link-local, Azure's wire server).
    /// The host's own addresses are refused whatever this says.
    pub deny_cidrs: Vec<petty_net::Cidr>,
    /// Resolvers the sandboxes' DNS asks (default: the host's
    /// `/etc/resolv.conf`).
    pub dns: Vec<std::net::IpAddr>,
    /// Where published ports listen on the host (default 127.0.0.1).
    pub publish_address: std::net::IpAddr,
    /// Each sandbox's cap on bytes each way, in Mbit/s (default 0: none).
    pub bandwidth_mbit: u32,
    /// Most connections one sandbox has open at once (default 1024; 0:
    /// none).
    pub max_connections: u32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            default: petty_net::NetworkMode::None,
            deny_cidrs: petty_net::policy::default_deny(),
            dns: Vec::new(),
            publish_address: std::net::Ipv4Addr::LOCALHOST.into(),
            bandwidth_mbit: 0,
            max_connections: 1024,
        }
    }
}

/// Every key, as `section.key`: what files, the environment
/// ([`crate::env::var_name`]) and flags can set.
pub const KEYS: &[&str] = &[
    "paths.data_dir",
    "paths.cache_dir",
    "paths.run_dir",
    "paths.search_path",
    "backend.kind",
    "backend.kernel",
    "backend.rootfs",
    "backend.templates",
    "backend.standby",
    "backend.qemu.binary",
    "backend.qemu.accel",
    "backend.qemu.guest_aslr",
    "backend.firecracker.binary",
    "backend.firecracker.tap",
    "backend.firecracker.diff_snapshots",
    "backend.firecracker.jailer",
    "backend.firecracker.jailer_uid",
    "backend.firecracker.jailer_gid",
    "backend.firecracker.jailer_chroot_base",
    "backend.firecracker.jailer_cgroups",
    "backend.flintlock.endpoint",
    "backend.flintlock.namespace",
    "backend.flintlock.kernel_image",
    "backend.flintlock.kernel_filename",
    "backend.flintlock.root_image",
    "backend.flintlock.guest_cidr",
    "backend.flintlock.gateway",
    "backend.flintlock.interface_type",
    "backend.flintlock.bridge",
    "backend.flintlock.agent_port",
    "backend.flintlock.provider",
    "limits.max_concurrent_sandboxes",
    "limits.max_concurrent_boots",
    "limits.default_ttl_secs",
    "limits.default_idle_timeout_secs",
    "limits.max_memory_mb",
    "limits.max_vcpu",
    "limits.max_download_mib",
    "limits.max_upload_mib",
    "limits.on_idle",
    "limits.max_kept_disk_mib",
    "defaults.vcpu",
    "defaults.memory_mb",
    "defaults.disk_size_mb",
    "defaults.disk_free_mb",
    "defaults.exec_timeout_secs",
    "pool.size",
    "pool.max_concurrent_boots",
    "pool.warmup_command",
    "server.listen",
    "server.api_keys",
    "server.allowed_hosts",
    "server.allowed_origins",
    "server.on_shutdown",
    "server.shutdown_grace_secs",
    "server.max_body_mib",
    "server.log_format",
    "server.per_sandbox_metrics",
    "mcp.session_idle_secs",
    "e2b.listen",
    "e2b.domain",
    "gateway.listen",
    "gateway.e2b_listen",
    "gateway.nodes",
    "gateway.discover",
    "gateway.discover_port",
    "gateway.dns_server",
    "gateway.api_keys",
    "gateway.node_key",
    "gateway.health_interval_secs",
    "gateway.best_of",
    "image.debian_mirror",
    "image.default_registry",
    "image.insecure_registries",
    "image.ca_file",
    "image.auth_file",
    "image.max_image_mib",
    "image.max_layers",
    "image.max_unpacked_mib",
    "network.default",
    "network.deny_cidrs",
    "network.dns",
    "network.publish_address",
    "network.bandwidth_mbit",
    "network.max_connections",
    "templates.build_memory_mb",
    "templates.build_network",
    "templates.step_timeout_secs",
    "templates.cache_max_mib",
    "templates.warm",
    "templates.host_paths",
];

/// Keys whose value is a list; from the environment, comma-separated
/// (`paths.search_path`: colon-separated, as `PATH` is).
pub(crate) const LIST_KEYS: &[&str] = &[
    "server.api_keys",
    "server.allowed_hosts",
    "server.allowed_origins",
    "paths.search_path",
    "network.deny_cidrs",
    "network.dns",
    "image.insecure_registries",
    "templates.warm",
    "templates.host_paths",
    "gateway.nodes",
    "gateway.api_keys",
];
