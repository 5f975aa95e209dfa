//! The one error type of petty-core.

use petty_agent_client::ClientError;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A configuration value is out of range; the message names it.
    #[error("invalid sandbox config: {0}")]
    InvalidConfig(String),
    /// Guest assets are missing or could not be built.
    #[error(transparent)]
    Image(#[from] petty_image::ImageError),
    /// The backend cannot run VMs on this host (its binary is missing, or
    /// it needs what the host lacks); the message says what to do.
    #[error(transparent)]
    BackendUnavailable(petty_vmm::VmmError),
    /// Starting, stopping or snapshotting the VM failed.
    #[error(transparent)]
    Vm(petty_vmm::VmmError),
    /// The guest agent never answered after boot.
    #[error("the guest agent did not answer within {secs} s of boot (time the VM waited for a CPU not counted); guest console:\n{console}")]
    AgentTimeout {
        /// How long we waited.
        secs: u64,
        /// The end of the guest console, to see why.
        console: String,
    },
    /// The connection to the agent failed during start-up.
    #[error("connecting to the guest agent; guest console:\n{console}")]
    Connection {
        /// The end of the guest console.
        console: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// A request to the agent failed.
    #[error(transparent)]
    Rpc(#[from] ClientError),
    /// The host cannot give this sandbox a network (not root, a program
    /// missing); the message says what to do.
    #[error("{0}")]
    NetworkUnavailable(String),
    /// Making, changing or asking about a sandbox's network failed.
    #[error("sandbox network: {0}")]
    Network(String),
    /// No sandbox with this name or id.
    #[error("no sandbox named {0}")]
    NotFound(String),
    /// The sandbox is in a state that does not allow the operation.
    #[error("sandbox {id} is {state}; {hint}")]
    InvalidState {
        /// The sandbox.
        id: String,
        /// Its state.
        state: String,
        /// What to do instead.
        hint: String,
    },
    /// The sandbox's VM ended on its own (its VMM exited, its guest halted
    /// or powered off) while this call was in flight or before it.
    #[error(
        "sandbox {id} has failed: {cause}; remove it with `petty rm {id}` and create a new one"
    )]
    Died {
        /// The sandbox.
        id: String,
        /// What ended it, as the VMM's signals told.
        cause: String,
    },
    /// The sandbox limit is reached; answered at once, never queued.
    #[error("at capacity: {max} sandboxes already exist (max_sandboxes); destroy one or raise the limit")]
    Capacity {
        /// The limit.
        max: usize,
    },
    /// Stopped and hibernated sandboxes' files would take more host disk
    /// than `limits.max_kept_disk_mib` allows; the message says how much
    /// and what to do.
    #[error("{0}")]
    KeptDiskFull(String),
    /// A snapshot cannot be deleted while others depend on it.
    #[error("snapshot {name} is in use by {}; remove those first", dependents.join(", "))]
    SnapshotInUse {
        /// The snapshot.
        name: String,
        /// Snapshots layered on it and sandboxes restored from it.
        dependents: Vec<String>,
    },
    /// No snapshot with this name.
    #[error("no snapshot named {0}; `petty snapshots` lists them")]
    SnapshotNotFound(String),
    /// No template with this name.
    #[error(
        "no template named {0}; `petty templates` lists them, `petty template build` makes one"
    )]
    TemplateNotFound(String),
    /// A template cannot be removed while sandboxes or snapshots use it.
    #[error("template {name} is in use by {}; remove those first", users.join(", "))]
    TemplateInUse {
        /// The template.
        name: String,
        /// Sandboxes and snapshots on its image.
        users: Vec<String>,
    },
    /// Another sandbox already has this name.
    #[error("a sandbox named {0} already exists; pick another name or remove it (`petty rm {0}`)")]
    NameTaken(String),
    /// The state database failed.
    #[error("sandbox state database {}", path.display())]
    Store {
        /// The database file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A JSON document (a config, a request body) could not be read.
    #[error("invalid JSON")]
    Json(#[from] serde_json::Error),
    /// Host I/O failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<petty_vmm::VmmError> for CoreError {
    /// A backend that cannot run here is told apart from a VM that failed,
    /// so callers never look inside the backend's errors.
    fn from(e: petty_vmm::VmmError) -> Self {
        use petty_vmm::VmmError;
        match e {
            VmmError::BinaryMissing { .. }
            | VmmError::Unavailable { .. }
            | VmmError::NotSupported { .. } => Self::BackendUnavailable(e),
            e => Self::Vm(e),
        }
    }
}
