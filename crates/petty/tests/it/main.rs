//! End-to-end tests: real QEMU VMs booting the kernel and rootfs Petty
//! builds, driven through the `petty` CLI and the `petty-core` library.
//!
//! They need the host packages (`scripts/install-deps`) and build the guest
//! assets on first use (minutes, once; `scripts/test` does it up front with
//! progress). They fail, rather than skip, when those are missing: a green
//! run means real VMs ran.

mod bench;
mod cli;
mod cli_manage;
mod deploy;
mod e2b;
mod egress;
mod firecracker;
mod gateway;
mod hardening;
mod manager;
mod metrics;
mod network;
mod readme;
mod sandbox;
mod serve;
mod settings;
mod snapshots;
mod standby;
mod teardown;
mod templates;
mod transfers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use petty_config::Settings;
use petty_vmm::qemu::QemuVmm;

/// The settings the tests run under, loaded as `petty` loads them, from
/// this process's environment (`scripts/test` sets `PETTY_NO_CONFIG`, so
/// no file of the machine's changes them): where the guest assets are,
/// which QEMU, the Firecracker backend's options.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        petty::settings::load(None, Vec::new())
            .expect("the settings of the test environment")
            .settings
    })
}

/// The guest assets, built once per test process.
pub fn assets() -> &'static petty_image::Assets {
    static ASSETS: OnceLock<petty_image::Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        petty::settings::image_builder(settings())
            .ensure()
            .expect("guest assets (run scripts/install-deps, then petty image build)")
    })
}

/// README.md's section under `heading` (a whole heading line, as
/// `## Using it`): its text up to the next heading, read at test time.
/// Lines starting with `#` inside code blocks are shell comments, not
/// headings.
pub fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let mut lines = readme.lines().skip_while(|l| *l != heading);
    assert!(
        lines.next().is_some(),
        "README.md has no {heading:?} section"
    );
    let mut in_code = false;
    let mut section = String::new();
    for line in lines {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            break;
        }
        section.push_str(line);
        section.push('\n');
    }
    section
}

/// A sandbox config with the defaults and the test settings' guest assets.
pub fn sandbox_config() -> petty_core::SandboxConfig {
    config_builder().build().unwrap()
}

/// A sandbox config builder that finds the test settings' guest assets.
pub fn config_builder() -> petty_core::SandboxConfigBuilder {
    petty_core::SandboxConfig::builder().assets_dir(settings().paths.cache_dir.clone())
}

/// The manager's defaults, finding the test settings' guest assets and
/// making backends (a Firecracker one too) as `petty` would.
pub fn manager_defaults() -> petty_core::ManagerConfig {
    let mut c = petty::settings::manager_config(settings());
    let d = petty_core::ManagerConfig::default();
    // The library's defaults, not the daemon's limits.
    c.max_sandboxes = d.max_sandboxes;
    c.max_concurrent_boots = d.max_concurrent_boots;
    c.templates = d.templates;
    c.standby = d.standby;
    c
}

/// Size of the base rootfs image in MiB: a sandbox's root disk unless it
/// asks for more (`disk_size_mib`).
pub fn base_image_mib() -> u32 {
    let bytes = std::fs::metadata(&assets().rootfs).unwrap().len();
    u32::try_from(bytes.div_ceil(1 << 20)).unwrap()
}

/// Parses `df -m --output=size /` (header, then the size of `/` in MiB).
pub fn df_size_mib(stdout: &str) -> u64 {
    stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df printed {stdout:?}"))
}

/// The shell command whose output [`df_size_mib`] reads.
pub const DF_ROOT: &str = "df -m --output=size /";

/// A QEMU backend whose run directories live under `root`.
pub fn vmm(root: &Path) -> QemuVmm {
    assets();
    petty::settings::backend_options(settings())
        .qemu(root.to_path_buf())
        .0
}

/// A fresh, empty directory for one test's VM run directories.
pub fn run_root() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("petty-it-")
        .tempdir()
        .expect("tempdir");
    // A run root must be private to its user (petty refuses any other).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `petty` with its run directories under `root`.
pub fn petty(root: &Path) -> Command {
    assets();
    let mut c = Command::new(env!("CARGO_BIN_EXE_petty"));
    c.env("PETTY_NO_CONFIG", "1")
        .env("PETTY_PATHS_RUN_DIR", root);
    c
}

/// One test's world: its own run root and data directory, shared by the
/// library (a `SandboxManager`) and the CLI (`petty` with both set).
pub struct Env {
    pub root: tempfile::TempDir,
    pub data: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self {
            root: run_root(),
            data: tempfile::tempdir().unwrap(),
        }
    }
}

impl Env {
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager configuration on this world's data directory. Without
    /// standby VMMs: they live as long as their manager, and most tests
    /// check that nothing is left while theirs still lives (`standby.rs`
    /// tests them; the daemon's tests run with them, its default).
    pub fn config(&self) -> petty_core::ManagerConfig {
        petty_core::ManagerConfig {
            data_dir: self.data.path().to_path_buf(),
            reap_interval: std::time::Duration::from_millis(200),
            standby: false,
            ..manager_defaults()
        }
    }

    pub async fn manager(&self, config: petty_core::ManagerConfig) -> petty_core::SandboxManager {
        petty_core::SandboxManager::new(config, std::sync::Arc::new(vmm(self.root.path())))
            .await
            .unwrap()
    }

    /// `petty` on this world's directories.
    pub fn cmd(&self) -> Command {
        let mut c = petty(self.root.path());
        c.env("PETTY_PATHS_DATA_DIR", self.data.path());
        c
    }

    /// Runs `petty ARGS`; its output.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `petty ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "petty {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// No run directory, no VMM and no sandbox row left.
    pub fn assert_clean(&self) {
        assert!(
            leftovers(self.root.path()).is_empty(),
            "left: {:?}",
            leftovers(self.root.path())
        );
        let root = self.root.path().display().to_string();
        assert!(processes_mentioning(&root).is_empty(), "VMM left running");
        let db = self.data.path().join("petty.db");
        if db.exists() {
            let rows = petty_core::store::Store::open(&db).unwrap().list().unwrap();
            assert!(
                rows.is_empty(),
                "rows left: {:?}",
                rows.iter().map(|r| (&r.name, r.state)).collect::<Vec<_>>()
            );
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Managed sandboxes outlive their manager by design: a test that
        // failed with some alive must not leave them running.
        kill_vms_under(self.root.path());
    }
}

/// Entries left in a run root: empty after a clean teardown. The root's
/// own shared files (the turns to start a VM, the measured TSC rate) are
/// not a VM's leftovers.
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| !matches!(e.file_name().to_str(), Some(".turns" | ".tsc-khz")))
                // Sandbox networks' state: a leftover only if not empty.
                .filter(|e| {
                    e.file_name() != ".net"
                        || std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every VMM under `root`: the safety net of a test that failed with
/// sandboxes alive (managed sandboxes outlive their manager by design).
pub fn kill_vms_under(root: &Path) {
    for pid in processes_mentioning(&root.display().to_string()) {
        // SAFETY: signalling a QEMU this test started under its own root.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Processes whose command line mentions `needle` (e.g. a run directory).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let needle = needle.as_bytes();
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                found.push(pid);
            }
        }
    }
    found
}
