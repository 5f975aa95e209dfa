//! [`FlintlockVmm`]: Petty's `Vmm` over Flintlock's gRPC API.
//!
//! A start asks Flintlock for a MicroVM (`CreateMicroVM`) booting the
//! configured kernel and root images with Petty's kernel command line: the
//! agent on TCP, its address, and a token made for this VM alone
//! ([`petty_protocol::tcp`]). The VM has no process on this host: its
//! [`Vm::pid`] is 0, its run directory holds only `flintlock.json` (its
//! uid, address and token, readable by this user alone) so another
//! process can [`Vmm::attach`] to it, and [`Vm::ended`] asks Flintlock
//! (`GetMicroVM`) every few seconds. A stop is a `DeleteMicroVM`; so is
//! dropping a VM that was neither stopped nor detached. There are no
//! snapshots, pause or kept disks: those calls say so and name the
//! backends that have them.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use petty_protocol::tcp::GuestNet;
use petty_vmm::{
    AgentStream, BackendKind, BackendMaker, BootTurns, BoxFuture, SnapshotFiles, Vm, VmConfig, Vmm,
    VmmError,
};
use tonic::transport::{Channel, Endpoint};

use crate::config::FlintlockConfig;
use crate::proto::api::{
    micro_vm_client::MicroVmClient, CreateMicroVmRequest, DeleteMicroVmRequest, GetMicroVmRequest,
    ListMicroVMsRequest,
};
use crate::proto::types::MicroVm;
use crate::spec::{self, GuestPlan, Liveness};

/// The file of a VM's run directory that records it.
pub const RECORD_FILE: &str = "flintlock.json";

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one attempt to reach the agent may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Vm::ended`] asks Flintlock about the VM.
const POLL_EVERY: Duration = Duration::from_secs(2);

const NAME: &str = "flintlock";

/// What the backend lacks, in the words every such call returns.
fn no_snapshots(what: &str) -> VmmError {
    VmmError::NotSupported {
        backend: NAME,
        message: format!(
            "has no snapshots: {what} needs one (Flintlock's API cannot save or load a \
             MicroVM's memory); use the qemu or firecracker backend for snapshots, forks, \
             hibernation and templates"
        ),
    }
}

/// Flintlock's API, connected on each call (a `Channel` needs a runtime
/// to be made, and backends are made outside one).
#[derive(Debug, Clone)]
struct Api {
    endpoint: String,
}

impl Api {
    fn err(&self, op: impl Into<String>, message: impl std::fmt::Display) -> VmmError {
        VmmError::Remote {
            backend: NAME,
            endpoint: self.endpoint.clone(),
            op: op.into(),
            message: message.to_string(),
        }
    }

    async fn client(&self, op: &str) -> Result<MicroVmClient<Channel>, VmmError> {
        let ep = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| self.err(op, format!("not a usable endpoint: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT);
        let channel = ep.connect().await.map_err(|e| {
            self.err(
                op,
                format!("cannot connect ({e}); is flintlockd running and backend.flintlock.endpoint right?"),
            )
        })?;
        Ok(MicroVmClient::new(channel))
    }

    fn status(&self, op: &str, s: tonic::Status) -> VmmError {
        self.err(op, format!("{:?}: {}", s.code(), s.message()))
    }

    async fn list(&self, namespace: &str) -> Result<Vec<MicroVm>, VmmError> {
        let op = format!("ListMicroVMs {namespace}");
        let mut c = self.client(&op).await?;
        let r = c
            .list_micro_v_ms(ListMicroVMsRequest {
                namespace: namespace.into(),
                name: None,
            })
            .await
            .map_err(|s| self.status(&op, s))?;
        Ok(r.into_inner().microvm)
    }

    /// `None`: Flintlock does not know the uid.
    async fn get(&self, uid: &str) -> Result<Option<MicroVm>, VmmError> {
        let op = format!("GetMicroVM {uid}");
        let mut c = self.client(&op).await?;
        match c.get_micro_vm(GetMicroVmRequest { uid: uid.into() }).await {
            Ok(r) => Ok(r.into_inner().microvm),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(self.status(&op, s)),
        }
    }

    async fn delete(&self, uid: &str) -> Result<(), VmmError> {
        let op = format!("DeleteMicroVM {uid}");
        let mut c = self.client(&op).await?;
        match c
            .delete_micro_vm(DeleteMicroVmRequest { uid: uid.into() })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(self.status(&op, s)),
        }
    }
}

/// The Flintlock backend.
pub struct FlintlockVmm {
    config: FlintlockConfig,
    api: Api,
    root: PathBuf,
    turns: BootTurns,
}

impl FlintlockVmm {
    /// The backend `config` describes, its run directories under `root`.
    pub fn new(config: FlintlockConfig, root: PathBuf) -> Self {
        // Remote starts take none of this host's CPU: turns of their own.
        let turns = BootTurns::new(&root.join(".flintlock"), 64);
        Self {
            api: Api {
                endpoint: config.endpoint.clone(),
            },
            config,
            root,
            turns,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &FlintlockConfig {
        &self.config
    }

    /// Asks Flintlock for the MicroVMs in Petty's namespace (what `petty
    /// doctor` calls to see the endpoint answer).
    pub async fn list(&self) -> Result<Vec<MicroVm>, VmmError> {
        self.api.list(&self.config.namespace).await
    }

    async fn start_vm(&self, vm: &VmConfig) -> Result<Box<dyn Vm>, VmmError> {
        if vm.restore_from.is_some() || vm.standby {
            return Err(no_snapshots("restoring a VM"));
        }
        if vm.disk.is_some() {
            return Err(VmmError::NotSupported {
                backend: NAME,
                message: "cannot boot on a kept disk (its VMs keep no disk when stopped); \
                          use the qemu backend for stop and start"
                    .into(),
            });
        }
        if vm.network.is_some() {
            return Err(VmmError::NotSupported {
                backend: NAME,
                message: "does not give VMs Petty's sandbox networks (network.mode): the VM \
                          is on the Flintlock host's network (backend.flintlock.guest_cidr); \
                          create the sandbox without a network mode"
                    .into(),
            });
        }
        self.config
            .validate()
            .map_err(|reason| VmmError::Unavailable {
                backend: NAME.into(),
                reason,
            })?;
        let used: HashSet<Ipv4Addr> = spec::used_addresses(&self.list().await?);
        let random = random_bytes::<16>();
        let seed = u64::from_le_bytes(random[..8].try_into().expect("8 bytes"));
        let ip = spec::choose_address(&self.config, &used, seed).ok_or_else(|| {
            self.api.err(
                "choosing a guest address",
                format!(
                    "every address of backend.flintlock.guest_cidr {} is taken",
                    self.config.guest_cidr
                ),
            )
        })?;
        let plan = GuestPlan {
            net: GuestNet {
                mac: spec::mac_from(random[8..13].try_into().expect("5 bytes")),
                ip,
                prefix: self.config.guest_cidr.prefix,
                gateway: self.config.gateway(),
            },
            token: hex(&random_bytes::<32>()),
        };
        let dir = self.root.join(&vm.id);
        let prepare = |source| VmmError::Prepare {
            dir: dir.clone(),
            source,
        };
        petty_vmm::ensure_run_root(&self.root)?;
        std::fs::create_dir(&dir).map_err(prepare)?;
        let spec = spec::microvm_spec(&self.config, vm, &plan);
        let op = format!("CreateMicroVM {}/{}", self.config.namespace, vm.id);
        let created = async {
            let mut c = self.api.client(&op).await?;
            c.create_micro_vm(CreateMicroVmRequest {
                microvm: Some(spec),
                metadata: Default::default(),
            })
            .await
            .map_err(|s| self.api.status(&op, s))
        }
        .await;
        let uid = match created {
            Ok(r) => r.into_inner().microvm.and_then(|m| m.spec?.uid),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let record = Record {
            uid: uid.unwrap_or_default(),
            addr: SocketAddr::new(ip.into(), self.config.agent_port),
            token: plan.token,
        };
        let vm_handle = FlintlockVm::new(vm.id.clone(), dir.clone(), self.api.clone(), record);
        if vm_handle.record.uid.is_empty() {
            // Dropping it deletes nothing (no uid): say what Flintlock did.
            return Err(self.api.err(&op, "the answer names no uid for the MicroVM"));
        }
        vm_handle.record.write(&dir).map_err(prepare)?;
        tracing::debug!(vm = %vm.id, uid = %vm_handle.record.uid, addr = %vm_handle.record.addr, "flintlock MicroVM created");
        Ok(Box::new(vm_handle))
    }
}

impl Vmm for FlintlockVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Flintlock
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<Box<dyn Vm>, VmmError>> {
        Box::pin(self.start_vm(config))
    }

    fn attach(&self, id: &str, _pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        let dir = self.root.join(id);
        let record = Record::read(&dir).map_err(|source| VmmError::Prepare {
            dir: dir.clone(),
            source,
        })?;
        Ok(Box::new(FlintlockVm::new(
            id.into(),
            dir,
            self.api.clone(),
            record,
        )))
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn wants_elf_kernel(&self) -> bool {
        // Flintlock's providers (Firecracker, Cloud Hypervisor) boot vmlinux.
        true
    }

    fn check(&self) -> Result<(), VmmError> {
        self.config
            .validate()
            .map_err(|reason| VmmError::Unavailable {
                backend: NAME.into(),
                reason,
            })
    }

    fn can_restore(&self) -> bool {
        false
    }

    fn snapshot_exists(&self, _dir: &Path) -> bool {
        false
    }

    fn guest_profile(&self) -> String {
        format!("flintlock:{}", self.config.endpoint)
    }

    fn boot_turns(&self) -> &BootTurns {
        &self.turns
    }
}

/// What a VM's run directory records of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    uid: String,
    addr: SocketAddr,
    token: String,
}

impl Record {
    fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = dir.join(format!(".{RECORD_FILE}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(RECORD_FILE))
    }

    fn read(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(dir.join(RECORD_FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// One MicroVM on a Flintlock host.
pub struct FlintlockVm {
    id: String,
    dir: PathBuf,
    api: Api,
    record: Record,
    gone: Arc<AtomicBool>,
    /// Stopped or detached: dropping it deletes nothing.
    released: AtomicBool,
}

impl FlintlockVm {
    fn new(id: String, dir: PathBuf, api: Api, record: Record) -> Self {
        Self {
            id,
            dir,
            api,
            record,
            gone: Arc::new(AtomicBool::new(false)),
            released: AtomicBool::new(false),
        }
    }

    /// Flintlock's uid of the MicroVM.
    pub fn uid(&self) -> &str {
        &self.record.uid
    }

    /// Where its agent listens.
    pub fn agent_addr(&self) -> SocketAddr {
        self.record.addr
    }
}

impl Drop for FlintlockVm {
    fn drop(&mut self) {
        if self.released.load(Ordering::Relaxed) || self.record.uid.is_empty() {
            return;
        }
        // Never left running unseen: delete it, as a local VMM is killed.
        let (api, uid, dir) = (self.api.clone(), self.record.uid.clone(), self.dir.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = api.delete(&uid).await {
                        tracing::warn!(%uid, "deleting the dropped MicroVM: {e}");
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                });
            }
            Err(_) => tracing::warn!(
                %uid,
                "a Flintlock MicroVM dropped outside a runtime is left running; delete it \
                 with `petty rm` or Flintlock's API"
            ),
        }
    }
}

impl Vm for FlintlockVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> u32 {
        // No process of this host runs it.
        0
    }

    fn run_dir(&self) -> &Path {
        &self.dir
    }

    fn connect_agent(&self) -> BoxFuture<'_, Result<AgentStream, VmmError>> {
        Box::pin(async move {
            petty_vmm::tcp::connect(self.record.addr, &self.record.token, AGENT_TIMEOUT)
                .await
                .map(AgentStream::from)
                .map_err(|e| VmmError::AgentConnect {
                    path: PathBuf::from(format!("tcp://{}", self.record.addr)),
                    source: std::io::Error::other(e),
                })
        })
    }

    fn is_running(&self) -> bool {
        !self.gone.load(Ordering::Relaxed)
    }

    fn console_tail(&self) -> String {
        format!(
            "(the flintlock backend keeps no console here: see flintlockd's logs for MicroVM {})",
            self.record.uid
        )
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<(), VmmError>> {
        self.released.store(true, Ordering::Relaxed);
        let (api, uid, dir) = (self.api.clone(), self.record.uid.clone(), self.dir.clone());
        let gone = self.gone.clone();
        Box::pin(async move {
            api.delete(&uid).await?;
            gone.store(true, Ordering::Relaxed);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
    }

    fn stop_keeping_disk(
        self: Box<Self>,
        _to: PathBuf,
    ) -> BoxFuture<'static, Result<(), VmmError>> {
        Box::pin(async {
            Err(VmmError::NotSupported {
                backend: NAME,
                message: "cannot keep a stopped VM's disk (Flintlock deletes it with the \
                          MicroVM); destroy the sandbox, or use the qemu backend for stop and \
                          start"
                    .into(),
            })
        })
    }

    fn detach(self: Box<Self>) {
        self.released.store(true, Ordering::Relaxed);
    }

    fn snapshot<'a>(
        &'a self,
        _dir: &'a Path,
        _resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotFiles, VmmError>> {
        Box::pin(async {
            Err(no_snapshots(
                "a snapshot (or a fork, a hibernation, a template)",
            ))
        })
    }

    fn ended(&self) -> BoxFuture<'static, String> {
        let (api, uid, gone) = (self.api.clone(), self.record.uid.clone(), self.gone.clone());
        Box::pin(async move {
            loop {
                tokio::time::sleep(POLL_EVERY).await;
                let why = match api.get(&uid).await {
                    Ok(None) => "Flintlock no longer knows its MicroVM".to_string(),
                    Ok(Some(m)) => match spec::liveness(&m) {
                        Liveness::Ended(why) => why.to_string(),
                        _ => continue,
                    },
                    // An endpoint that does not answer says nothing of the VM.
                    Err(_) => continue,
                };
                gone.store(true, Ordering::Relaxed);
                return format!("its MicroVM {uid} ended: {why}");
            }
        })
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(async {
            Err(VmmError::NotSupported {
                backend: NAME,
                message: "cannot pause a VM (Flintlock's API has no pause); use the qemu or \
                          firecracker backend"
                    .into(),
            })
        })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), VmmError>> {
        Box::pin(async {
            Err(VmmError::NotSupported {
                backend: NAME,
                message: "cannot pause or resume a VM (Flintlock's API has no pause); use the \
                          qemu or firecracker backend"
                    .into(),
            })
        })
    }
}

/// Makes the backend from `config` (or says why it cannot), for
/// [`petty_vmm::BackendOptions::flintlock`].
pub fn maker(config: Result<FlintlockConfig, String>) -> BackendMaker {
    BackendMaker(Arc::new(move |root| match &config {
        Ok(c) => {
            c.validate().map_err(|reason| VmmError::Unavailable {
                backend: NAME.into(),
                reason,
            })?;
            Ok(Box::new(FlintlockVmm::new(c.clone(), root)) as Box<dyn Vmm>)
        }
        Err(reason) => Err(VmmError::Unavailable {
            backend: NAME.into(),
            reason: reason.clone(),
        }),
    }))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    buf
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
