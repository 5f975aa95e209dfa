//! One sandbox: a VM, the agent connection into it, and the operations on it.

use std::fmt;
use std::path::PathBuf;

use petty_agent_client::{AgentClient, ClientError, ExecStream};
use petty_protocol::{ExecRequest, FileEntry, FileStat, Pong};
use petty_vmm::{Vm, VmConfig, Vmm};
use tokio::sync::Mutex;

use crate::{CoreError, SandboxConfig};

/// Most output [`Sandbox::exec`] keeps per stream; stream larger output with
/// [`Sandbox::exec_stream`].
pub const MAX_COLLECTED_OUTPUT: usize = 64 * 1024 * 1024;

/// A sandbox's unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SandboxId(uuid::Uuid);

impl SandboxId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for SandboxId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SandboxId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Shell-style exit code (128 + n when killed by signal n).
    pub exit_code: i32,
    /// Standard output (lossily decoded as UTF-8).
    pub stdout: String,
    /// Standard error (lossily decoded as UTF-8).
    pub stderr: String,
    /// True when the timeout killed the command.
    pub timed_out: bool,
    /// True when output past [`MAX_COLLECTED_OUTPUT`] was dropped.
    pub truncated: bool,
}

impl ExecResult {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// A running sandbox. Dropping it kills its VM; [`destroy`](Self::destroy)
/// does the same and reports errors.
pub struct Sandbox {
    id: SandboxId,
    config: SandboxConfig,
    vm: Mutex<Option<Box<dyn Vm>>>,
    agent: AgentClient,
    pong: Pong,
}

impl Sandbox {
    /// Boots a VM on `vmm`, waits for its agent and checks the protocol
    /// version. On any error the VM is gone and nothing is left behind.
    pub async fn create(vmm: &dyn Vmm, config: SandboxConfig) -> Result<Self, CoreError> {
        config.validate()?;
        let (kernel, rootfs) = resolve_assets(&config)?;
        let id = SandboxId::new();
        let vm_config = VmConfig {
            id: id.to_string(),
            kernel,
            rootfs,
            memory_mib: config.memory_mib,
            vcpus: config.vcpu_count,
            extra_cmdline: Vec::new(),
            die_with_parent: config.die_with_parent,
        };
        let vm = vmm.start(&vm_config).await?;
        // Any early return below drops `vm`, which kills it and removes its files.
        let stream = vm.connect_agent().await?;
        let agent = AgentClient::new(stream, config.rpc_timeout);
        let pong = match agent.handshake(config.connect_timeout).await {
            Ok(p) => p,
            Err(ClientError::Timeout { .. }) => {
                return Err(CoreError::AgentTimeout {
                    secs: config.connect_timeout.as_secs(),
                    console: vm.console_tail(),
                })
            }
            Err(source) => {
                return Err(CoreError::Connection {
                    console: vm.console_tail(),
                    source,
                })
            }
        };
        // The guest has no battery-backed clock worth trusting: give it ours.
        agent.sync_clock().await?;
        tracing::debug!(sandbox = %id, pid = vm.pid(), kernel = %pong.kernel, "sandbox ready");
        Ok(Self {
            id,
            config,
            vm: Mutex::new(Some(vm)),
            agent,
            pong,
        })
    }

    /// The sandbox's id.
    pub fn id(&self) -> SandboxId {
        self.id
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The guest kernel release, as the agent reported it.
    pub fn guest_kernel(&self) -> &str {
        &self.pong.kernel
    }

    /// The VMM's process id, while the VM runs.
    pub async fn vmm_pid(&self) -> Option<u32> {
        self.vm.lock().await.as_ref().map(|vm| vm.pid())
    }

    /// The VM's run directory (sockets, overlay, logs), while it runs.
    pub async fn run_dir(&self) -> Option<PathBuf> {
        self.vm
            .lock()
            .await
            .as_ref()
            .map(|vm| vm.run_dir().to_path_buf())
    }

    /// Runs `script` with `/bin/sh -c` and collects its output.
    pub async fn execute(&self, script: &str) -> Result<ExecResult, CoreError> {
        self.exec(ExecRequest::shell(script), None).await
    }

    /// Runs `code` in `language` (`python`, `bash` or `sh`).
    pub async fn execute_code(&self, language: &str, code: &str) -> Result<ExecResult, CoreError> {
        let argv = code_argv(language, code)?;
        self.exec(ExecRequest::argv(argv), None).await
    }

    /// Runs a command to completion, feeding it `stdin` if given.
    pub async fn exec(
        &self,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecResult, CoreError> {
        let out = self
            .agent
            .exec_collect(req, stdin, MAX_COLLECTED_OUTPUT)
            .await?;
        Ok(ExecResult {
            exit_code: out.status.code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            timed_out: out.status.timed_out,
            truncated: out.truncated,
        })
    }

    /// Starts a command and streams its output as it comes.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream, CoreError> {
        Ok(self.agent.exec(req).await?)
    }

    /// Reads a whole file from the guest.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, CoreError> {
        Ok(self.agent.read_file(path).await?)
    }

    /// Writes a file in the guest, creating parent directories.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), CoreError> {
        self.agent.write_file(path, data, None).await?;
        Ok(())
    }

    /// Writes a file with the given permission bits.
    pub async fn write_file_mode(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), CoreError> {
        self.agent.write_file(path, data, Some(mode)).await?;
        Ok(())
    }

    /// Lists a directory in the guest.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileEntry>, CoreError> {
        Ok(self.agent.list_dir(path).await?)
    }

    /// Describes a path in the guest.
    pub async fn stat(&self, path: &str) -> Result<FileStat, CoreError> {
        Ok(self.agent.stat(path).await?)
    }

    /// Creates a directory (and parents) in the guest.
    pub async fn mkdir(&self, path: &str) -> Result<(), CoreError> {
        Ok(self.agent.mkdir(path).await?)
    }

    /// Removes a file or directory in the guest.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), CoreError> {
        Ok(self.agent.remove(path, recursive).await?)
    }

    /// Renames a path in the guest.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), CoreError> {
        Ok(self.agent.rename(from, to).await?)
    }

    /// The agent connection, for operations not wrapped here.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// True when the VM runs and its agent answers a ping.
    pub async fn is_healthy(&self) -> bool {
        let running = self
            .vm
            .lock()
            .await
            .as_ref()
            .is_some_and(|vm| vm.is_running());
        running && self.agent.ping().await.is_ok()
    }

    /// Kills the VM and removes its files.
    pub async fn destroy(self) -> Result<(), CoreError> {
        let vm = self.vm.lock().await.take();
        if let Some(vm) = vm {
            vm.stop().await?;
        }
        tracing::debug!(sandbox = %self.id, "sandbox destroyed");
        Ok(())
    }
}

/// The argv that runs `code` in `language`.
pub fn code_argv(language: &str, code: &str) -> Result<Vec<String>, CoreError> {
    let interpreter: &[&str] = match language.to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => &["python3", "-c"],
        "bash" => &["bash", "-c"],
        "sh" | "shell" => &["sh", "-c"],
        other => {
            return Err(CoreError::InvalidConfig(format!(
                "language {other:?} is not supported; use python, bash or sh"
            )))
        }
    };
    let mut argv: Vec<String> = interpreter.iter().map(|s| s.to_string()).collect();
    argv.push(code.to_string());
    Ok(argv)
}

fn resolve_assets(config: &SandboxConfig) -> Result<(PathBuf, PathBuf), CoreError> {
    if let (Some(k), Some(r)) = (&config.kernel, &config.rootfs) {
        return Ok((k.clone(), r.clone()));
    }
    let assets = petty_image::ImageBuilder::new(petty_image::cache_dir()).locate()?;
    Ok((
        config.kernel.clone().unwrap_or(assets.kernel),
        config.rootfs.clone().unwrap_or(assets.rootfs),
    ))
}
