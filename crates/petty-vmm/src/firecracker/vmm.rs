//! The Firecracker backend: one `firecracker --api-sock` process per VM,
//! configured over its API, the agent reached over hybrid vsock port 52.
//!
//! Each VM's run directory holds the API socket, the vsock socket, its own
//! copy of the root filesystem (reflinked where the file system can, sparse
//! otherwise) and Firecracker's log. Snapshots are Full snapshots of the
//! paused VM (state + memory file) plus a copy of its disk.
//!
//! Not done yet: restoring a snapshot. Firecracker reopens the drive at the
//! path recorded in the snapshot, so clones need the jailer's per-VM chroot
//! (or a mount namespace) for each to see its own disk at that path; until
//! then a restore is refused with an error that says so. The jailer itself
//! is not wired in either.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use petty_protocol::VSOCK_PORT;

use super::api::{boot_sequence, pause, resume, snapshot_create, ApiClient, BootSpec};
use crate::process::{tail, VmmProcess};
use crate::qemu::find_on_path;
use crate::rundir::vmm_alive;
use crate::{
    check_disk_size, Accel, AccelChoice, AgentStream, BoxFuture, SnapshotFiles, Vm, VmConfig, Vmm,
    VmmError, SNAPSHOT_STATE,
};

/// API socket, inside the run directory.
pub const API_SOCKET: &str = "api.sock";
/// Hybrid vsock socket, inside the run directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The VM's own root disk, inside the run directory.
const ROOTFS: &str = "rootfs.ext4";
/// Firecracker's stdout and stderr (guest console included).
const LOG: &str = "firecracker.log";
/// A Firecracker snapshot's memory file.
pub const SNAPSHOT_MEMORY: &str = "memory";
/// A Firecracker snapshot's disk copy.
pub const SNAPSHOT_ROOTFS: &str = "disk.ext4";

/// Kernel command line for Petty guests under Firecracker: `reboot=k` (the
/// i8042 reset ends Firecracker), and the agent told to use vsock.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=1 pci=off root=/dev/vda rw \
     rootfstype=ext4 init=/sbin/petty-agent random.trust_cpu=on petty.transport=vsock";

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The Firecracker backend.
pub struct FirecrackerVmm {
    binary: String,
    root: PathBuf,
}

impl FirecrackerVmm {
    /// A backend keeping run directories under `root`. `PETTY_FIRECRACKER`
    /// overrides the binary.
    pub fn new(root: PathBuf) -> Self {
        Self {
            binary: std::env::var("PETTY_FIRECRACKER").unwrap_or_else(|_| "firecracker".into()),
            root,
        }
    }

    /// Uses `binary` (a name on `PATH` or a path) instead of the default.
    pub fn with_binary(mut self, binary: impl Into<String>) -> Self {
        self.binary = binary.into();
        self
    }

    /// The binary, if this host can run Firecracker VMs; else why not.
    pub fn availability(&self) -> Result<PathBuf, String> {
        let binary =
            find_on_path(&self.binary).ok_or_else(|| format!("no `{}` on PATH", self.binary))?;
        let accel = AccelChoice::detect();
        if accel.accel != Accel::Kvm {
            return Err(format!("Firecracker needs a working KVM: {}", accel.reason));
        }
        Ok(binary)
    }

    async fn start_vm(&self, config: &VmConfig) -> Result<FcVm, VmmError> {
        let binary = find_on_path(&self.binary).ok_or_else(|| VmmError::BinaryMissing {
            binary: self.binary.clone(),
        })?;
        if let Some(snap) = &config.restore_from {
            return Err(VmmError::Snapshot {
                op: "restoring",
                dir: snap.clone(),
                message: "restoring Firecracker snapshots needs the jailer's per-VM chroot, which Petty does not set up yet; use the QEMU backend (PETTY_BACKEND=qemu) for restores and forks".into(),
            });
        }
        for (what, path) in [
            ("guest kernel (ELF vmlinux)", &config.kernel),
            ("guest rootfs", &config.rootfs),
        ] {
            if !path.is_file() {
                return Err(VmmError::AssetMissing {
                    what,
                    path: path.clone(),
                });
            }
        }
        check_disk_size(config.disk_size_mib, &config.rootfs)?;
        // From here on, dropping `vm` kills Firecracker and removes the directory.
        let mut vm = FcVm {
            proc: VmmProcess::prepare(&self.root, config)?,
        };
        let dir = vm.proc.dir.clone();
        let prepare = |source| VmmError::Prepare {
            dir: dir.clone(),
            source,
        };
        copy_sparse(&config.rootfs, &dir.join(ROOTFS)).await?;
        if let Some(mib) = config.disk_size_mib {
            // A larger disk is the copy extended with a hole; the guest grows
            // its file system into it at boot. (`cp` gave the copy the cached
            // image's read-only mode.)
            use std::os::unix::fs::PermissionsExt;
            let disk = dir.join(ROOTFS);
            fs::set_permissions(&disk, fs::Permissions::from_mode(0o644))
                .and_then(|()| fs::OpenOptions::new().write(true).open(&disk))
                .and_then(|f| f.set_len(u64::from(mib) << 20))
                .map_err(prepare)?;
        }

        let log = fs::File::create(dir.join(LOG)).map_err(prepare)?;
        let log2 = log.try_clone().map_err(prepare)?;
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg("--api-sock")
            .arg(dir.join(API_SOCKET))
            .arg("--id")
            .arg(fc_id(&config.id))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        vm.proc.spawn(cmd, config.die_with_parent, &self.binary)?;

        let deadline = Instant::now() + START_TIMEOUT;
        while !dir.join(API_SOCKET).exists() {
            if !vm.is_running() {
                return Err(VmmError::EarlyExit {
                    binary: self.binary.clone(),
                    status: "exited".into(),
                    stderr: vm.console_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmmError::StartTimeout {
                    binary: self.binary.clone(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut boot_args = BASE_CMDLINE.to_string();
        for w in &config.extra_cmdline {
            boot_args.push(' ');
            boot_args.push_str(w);
        }
        let spec = BootSpec {
            kernel: config.kernel.clone(),
            boot_args,
            rootfs: dir.join(ROOTFS),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            // Each VM has its own vsock device behind its own socket.
            vsock_cid: 3,
            vsock_uds: dir.join(VSOCK_SOCKET),
            tap: None,
        };
        let api = vm.api();
        for req in boot_sequence(&spec) {
            api.send(&req).await.map_err(|e| VmmError::Qmp {
                command: format!("{} {}", req.method, req.path),
                message: e.to_string(),
            })?;
        }
        Ok(vm)
    }
}

/// Firecracker's `--id` allows alphanumerics and dashes, 64 at most.
fn fc_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

/// Copies a disk image, sharing blocks where the file system can (reflink)
/// and skipping holes otherwise.
async fn copy_sparse(from: &Path, to: &Path) -> Result<(), VmmError> {
    let out = tokio::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(|e| VmmError::Overlay(format!("running cp: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmmError::Overlay(format!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Vmm for FirecrackerVmm {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn wants_elf_kernel(&self) -> bool {
        true
    }

    fn can_restore(&self) -> bool {
        false
    }

    fn check(&self) -> Result<(), VmmError> {
        self.availability()
            .map(|_| ())
            .map_err(|reason| VmmError::Unavailable {
                backend: "firecracker".into(),
                reason,
            })
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<Box<dyn Vm>, VmmError>> {
        Box::pin(async move { Ok(Box::new(self.start_vm(config).await?) as Box<dyn Vm>) })
    }

    fn attach(&self, id: &str, pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        let dir = self.root.join(id);
        if !vmm_alive(pid, &dir) {
            return Err(VmmError::Gone { id: id.into(), pid });
        }
        Ok(Box::new(FcVm {
            proc: VmmProcess::attached(id, dir, pid),
        }))
    }
}

/// A running Firecracker VM.
pub struct FcVm {
    proc: VmmProcess,
}

impl FcVm {
    fn api(&self) -> ApiClient {
        ApiClient::new(self.proc.dir.join(API_SOCKET), Duration::from_secs(30))
    }

    async fn call(&self, req: super::api::Request) -> Result<(), VmmError> {
        self.api()
            .send(&req)
            .await
            .map(|_| ())
            .map_err(|e| VmmError::Qmp {
                command: format!("{} {}", req.method, req.path),
                message: e.to_string(),
            })
    }

    async fn save(&self, out: &Path, resume_after: bool) -> Result<SnapshotFiles, VmmError> {
        self.call(pause()).await?;
        let saved = async {
            self.call(snapshot_create(
                &out.join(SNAPSHOT_STATE),
                &out.join(SNAPSHOT_MEMORY),
                false,
            ))
            .await?;
            copy_sparse(&self.proc.dir.join(ROOTFS), &out.join(SNAPSHOT_ROOTFS)).await
        }
        .await;
        if resume_after {
            self.call(resume()).await?;
        }
        saved?;
        let size = |f: &str| fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        Ok(SnapshotFiles {
            dir: out.to_path_buf(),
            state_bytes: size(SNAPSHOT_STATE) + size(SNAPSHOT_MEMORY),
            disk_bytes: size(SNAPSHOT_ROOTFS),
        })
    }
}

impl Vm for FcVm {
    fn id(&self) -> &str {
        &self.proc.id
    }

    fn pid(&self) -> u32 {
        self.proc.pid
    }

    fn run_dir(&self) -> &Path {
        &self.proc.dir
    }

    fn connect_agent(&self) -> BoxFuture<'_, Result<AgentStream, VmmError>> {
        Box::pin(async move {
            let path = self.proc.dir.join(VSOCK_SOCKET);
            crate::vsock::connect(&path, VSOCK_PORT, Duration::from_secs(10))
                .await
                .map_err(|e| VmmError::AgentConnect {
                    path,
                    source: std::io::Error::other(e),
                })
        })
    }

    fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    fn console_tail(&self) -> String {
        tail(&self.proc.dir.join(LOG), 2048)
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<(), VmmError>> {
        self.proc.stop()
    }

    fn detach(self: Box<Self>) {
        self.proc.detach();
    }

    fn snapshot<'a>(
        &'a self,
        dir: &'a Path,
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotFiles, VmmError>> {
        Box::pin(self.save(dir, resume))
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(self.call(pause()))
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(self.call(resume()))
    }
}
