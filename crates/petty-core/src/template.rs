//! Template snapshots: the fast path of sandbox creation.
//!
//! The first create for a given kernel, rootfs, memory size and vCPU count
//! boots a VM whose RAM is a file mapped shared, waits for its agent, and
//! saves it: device state without RAM (`x-ignore-shared`), the disk layer,
//! and the RAM file itself. Every later create restores from it, mapping the
//! RAM file privately: all sandboxes of a template read its pages from the
//! page cache and copy only the pages they write. The key covers every input
//! (paths, sizes and mtimes of kernel and rootfs, memory, vCPUs, protocol and
//! template versions), so a template whose inputs change is rebuilt, never
//! reused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use petty_vmm::{MemoryBacking, VmConfig, Vmm, SNAPSHOT_RAM};

use crate::CoreError;

/// Bump when the way templates are made changes.
const TEMPLATE_VERSION: u32 = 3;

/// The templates of one data directory.
pub(crate) struct Templates {
    dir: PathBuf,
    building: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// FNV-1a: a stable 64-bit hash (the key must not change between builds).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn file_identity(p: &Path) -> Result<Vec<u8>, CoreError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(p)?;
    Ok(format!(
        "{}:{}:{}:{}",
        p.display(),
        md.len(),
        md.mtime(),
        md.mtime_nsec()
    )
    .into_bytes())
}

impl Templates {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("templates"),
            building: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn key(
        backend: &str,
        profile: &str,
        binary: Option<&Path>,
        kernel: &Path,
        rootfs: &Path,
        memory_mib: u32,
        vcpus: u32,
        disk_size_mib: Option<u32>,
        network: bool,
    ) -> Result<String, CoreError> {
        let disk = disk_size_mib.map_or_else(|| "image".to_string(), |d| d.to_string());
        // A VM with a network interface saves state only one with the same
        // devices loads.
        let net = if network { ":net" } else { "" };
        let versions = format!(
            "{}:{}:{backend}:{profile}:{memory_mib}:{vcpus}:{disk}{net}",
            TEMPLATE_VERSION,
            petty_protocol::PROTOCOL_VERSION
        );
        // Another VMM build (an upgraded QEMU) may not load this one's state.
        let binary = match binary {
            Some(b) => file_identity(b)?,
            None => Vec::new(),
        };
        Ok(format!(
            "{:016x}",
            fnv1a(&[
                &file_identity(kernel)?,
                &file_identity(rootfs)?,
                &binary,
                versions.as_bytes()
            ])
        ))
    }

    /// The template for these inputs, made first if there is none. Its
    /// guest booted with a root disk of `disk_size_mib` (the image's size
    /// when `None`) and grew its file system to fill it, so sandboxes
    /// restored from it at that size have nothing left to grow.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn ensure(
        &self,
        vmm: &dyn Vmm,
        kernel: &Path,
        rootfs: &Path,
        memory_mib: u32,
        vcpus: u32,
        disk_size_mib: Option<u32>,
        connect_timeout: Duration,
        network: Option<&petty_net::NetSettings>,
    ) -> Result<PathBuf, CoreError> {
        let binary = vmm.binary_path();
        let key = Self::key(
            vmm.name(),
            &vmm.guest_profile(),
            binary.as_deref(),
            kernel,
            rootfs,
            memory_mib,
            vcpus,
            disk_size_mib,
            network.is_some(),
        )?;
        let dir = self.dir.join(&key);
        if vmm.snapshot_exists(&dir) {
            return Ok(dir);
        }
        // One builder per key in this process; the file lock covers others.
        let gate = self
            .building
            .lock()
            .await
            .entry(key.clone())
            .or_default()
            .clone();
        let _building = gate.lock().await;
        std::fs::create_dir_all(&self.dir)?;
        let lock_path = self.dir.join(format!("{key}.lock"));
        let _file_lock = tokio::task::spawn_blocking(move || lock_file(&lock_path))
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))??;
        if vmm.snapshot_exists(&dir) {
            return Ok(dir);
        }
        let tmp = self.dir.join(format!(".tmp-{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let built = build(
            vmm,
            &tmp,
            &key,
            kernel,
            rootfs,
            memory_mib,
            vcpus,
            disk_size_mib,
            connect_timeout,
            network,
        )
        .await;
        match built {
            Ok(()) => {
                // What it was made from, so that removing a named
                // template's image removes its snapshots too.
                std::fs::write(
                    tmp.join(ROOTFS_MARKER),
                    rootfs.as_os_str().as_encoded_bytes(),
                )?;
                std::fs::rename(&tmp, &dir)?;
                tracing::info!(template = %key, "template snapshot made");
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }
}

/// The file in a template snapshot naming the rootfs it was made from.
const ROOTFS_MARKER: &str = "rootfs";

impl Templates {
    /// Removes the template snapshots made from `rootfs` (a named
    /// template's image, removed); returns how many.
    pub(crate) fn remove_for(&self, rootfs: &Path) -> usize {
        self.remove_where(|made_from| made_from == rootfs)
    }

    /// Removes the template snapshots whose rootfs is gone.
    pub(crate) fn remove_orphans(&self) -> usize {
        self.remove_where(|made_from| !made_from.is_file())
    }

    fn remove_where(&self, pick: impl Fn(&Path) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let Ok(made_from) = std::fs::read(e.path().join(ROOTFS_MARKER)) else {
                continue;
            };
            let made_from = PathBuf::from(String::from_utf8_lossy(&made_from).into_owned());
            if pick(&made_from) && petty_vmm::remove_run_dir(&e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[allow(clippy::too_many_arguments)]
async fn build(
    vmm: &dyn Vmm,
    tmp: &Path,
    key: &str,
    kernel: &Path,
    rootfs: &Path,
    memory_mib: u32,
    vcpus: u32,
    disk_size_mib: Option<u32>,
    connect_timeout: Duration,
    network: Option<&petty_net::NetSettings>,
) -> Result<(), CoreError> {
    let mut config = shared_ram_vm(
        format!("template-{}-{}", &key[..8], std::process::id()),
        kernel,
        rootfs,
        memory_mib,
        vcpus,
        tmp.join(SNAPSHOT_RAM),
    );
    config.disk_size_mib = disk_size_mib;
    // A networked template's VM has the interface its restores will have,
    // in a namespace of its own that reaches nothing (removed with `_net`).
    let _net = match network {
        Some(settings) => {
            let (settings, id) = (settings.clone(), config.id.clone());
            let net = crate::manager::make_network(settings, id, Default::default()).await?;
            config.network = Some(crate::manager::vm_network(&net));
            Some(net)
        }
        None => None,
    };
    // Held for the whole build: a boot, the warm-up and the save are all CPU.
    let _turn = vmm.boot_turns().acquire().await?;
    let vm = vmm.start(&config).await?;
    // Dropping `vm` on any error below kills it and removes its files.
    let clock = petty_vmm::RunClock::start(vm.pid());
    let stream = vm.connect_agent().await?;
    let agent = petty_agent_client::AgentClient::new(stream, connect_timeout);
    // As for any boot, the deadline is on the guest's progress.
    let greeting = agent.handshake(connect_timeout.saturating_mul(12));
    match crate::sandbox::within_progress(&clock, connect_timeout, greeting).await {
        Some(Ok(_)) => {}
        None => {
            return Err(CoreError::AgentTimeout {
                secs: connect_timeout.as_secs(),
                console: vm.console_tail(),
            })
        }
        Some(Err(source)) => {
            return Err(CoreError::Connection {
                console: vm.console_tail(),
                source,
            })
        }
    }
    // Warm the guest's page cache with what nearly every first command
    // needs (the shell, the C library, Python), so sandboxes restored from
    // the template do not read them from disk again.
    let warm_up = petty_protocol::ExecRequest::shell("true; python3 -c pass 2>/dev/null; true");
    agent.exec_collect(warm_up, None, 1 << 16).await?;
    // Its restores warm their exec path the moment they run.
    agent.before_snapshot().await?;
    vm.snapshot(tmp, false).await?;
    vm.stop().await?;
    Ok(())
}

/// A throwaway VM (dies with us) whose RAM is `ram`, mapped shared.
fn shared_ram_vm(
    id: String,
    kernel: &Path,
    rootfs: &Path,
    memory_mib: u32,
    vcpus: u32,
    ram: PathBuf,
) -> VmConfig {
    VmConfig {
        memory_mib,
        vcpus,
        memory: MemoryBacking::File {
            path: ram,
            shared: true,
        },
        ..VmConfig::new(id, kernel, rootfs)
    }
}

/// Takes an exclusive `flock` on `path`, held until the file is dropped.
fn lock_file(path: &Path) -> Result<std::fs::File, CoreError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on an fd we own; it blocks until the lock is ours.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let (k, r, q) = (
            dir.path().join("k"),
            dir.path().join("r"),
            dir.path().join("qemu"),
        );
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&r, b"rootfs").unwrap();
        std::fs::write(&q, b"qemu 7.2").unwrap();
        let key = |b, m, v| {
            Templates::key(b, "tcg:aslr=false", Some(&q), &k, &r, m, v, None, false).unwrap()
        };
        let base = key("qemu", 256, 2);
        // Another disk size is another template (its guest grew to fit it).
        let sized =
            |d| Templates::key("qemu", "tcg:aslr=false", Some(&q), &k, &r, 256, 2, d, false);
        assert_ne!(base, sized(Some(2700)).unwrap());
        assert_ne!(sized(Some(2700)).unwrap(), sized(Some(2800)).unwrap());
        assert_eq!(base, key("qemu", 256, 2));
        assert_ne!(base, key("qemu", 512, 2));
        assert_ne!(base, key("qemu", 256, 1));
        assert_ne!(base, key("firecracker", 256, 2));
        let no_binary =
            Templates::key("qemu", "tcg:aslr=false", None, &k, &r, 256, 2, None, false).unwrap();
        assert_ne!(base, no_binary);
        // Another accelerator or boot option (ASLR) is another guest.
        let with_aslr = Templates::key(
            "qemu",
            "tcg:aslr=true",
            Some(&q),
            &k,
            &r,
            256,
            2,
            None,
            false,
        )
        .unwrap();
        assert_ne!(base, with_aslr);
        // A VM with a network interface has other devices.
        let with_net = Templates::key(
            "qemu",
            "tcg:aslr=false",
            Some(&q),
            &k,
            &r,
            256,
            2,
            None,
            true,
        )
        .unwrap();
        assert_ne!(base, with_net);
        std::fs::write(&r, b"rootfs, rebuilt").unwrap();
        let rebuilt = key("qemu", 256, 2);
        assert_ne!(base, rebuilt);
        // An upgraded VMM binary (another size or mtime) is a new template.
        std::fs::write(&q, b"qemu 10.0, upgraded").unwrap();
        assert_ne!(rebuilt, key("qemu", 256, 2));
    }
}
