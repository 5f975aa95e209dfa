//! The crate's error type. Each variant names the operation that failed, and
//! its message ends with a `hint:` telling the user what to do about it.

use std::{io, path::PathBuf, process::ExitStatus};

/// Everything that can go wrong while locating or building guest assets.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An asset is not in the cache yet ([`crate::ImageBuilder::locate`] never builds).
    #[error("the guest {what} is not built yet (looked for {})\nhint: {hint}", path.display())]
    Missing {
        /// `"kernel"` or `"rootfs"`.
        what: &'static str,
        /// Where the asset would be.
        path: PathBuf,
        /// What to run, e.g. ``run `petty image build` ``.
        hint: String,
    },

    /// A host program, file or package needed for a build is absent.
    #[error("{tool} is not available on this host\nhint: {hint}")]
    HostTool {
        /// The program or file that is missing.
        tool: String,
        /// The command that installs it.
        hint: String,
    },

    /// Something about the host could not be determined (Debian codename, mirror).
    #[error("cannot determine {what}\nhint: {hint}")]
    HostConfig {
        /// What was being looked up.
        what: &'static str,
        /// How to provide it.
        hint: String,
    },

    /// A build step needs root and the process is not root.
    #[error("{step} needs root privileges\nhint: {hint}")]
    NeedsRoot {
        /// The step that needs root.
        step: &'static str,
        /// How to run it as root.
        hint: String,
    },

    /// A build step's command could not be started or failed.
    #[error("{step} failed")]
    Build {
        /// The step, e.g. `"building the kernel"`.
        step: &'static str,
        /// The command's failure.
        #[source]
        source: CommandError,
    },

    /// `make allnoconfig` silently dropped options that the fragment asks for.
    #[error(
        "the kernel configuration lacks options that images/kernel/petty.config asks for: {}\n\
         hint: an option is dropped when one it depends on is off; add that dependency \
         (as `CONFIG_X=y`) to images/kernel/petty.config",
        dropped.join(", ")
    )]
    KernelConfig {
        /// One entry per option, e.g. `CONFIG_VIRTIO_BLK (want y, got not set)`.
        dropped: Vec<String>,
    },

    /// A file-system operation in the cache failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// The operation, e.g. `"create directory"`.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The cache lock could not be taken.
    #[error("cannot lock the asset cache at {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why a build command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("cannot start `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error(
        "`{command}` failed with {status}; full log in {}, last lines:\n{tail}\nhint: {hint}",
        log.display()
    )]
    Exit {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The file holding its whole output.
        log: PathBuf,
        /// The last lines of its output.
        tail: String,
        /// What to try.
        hint: &'static str,
    },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }
}
