//! The daemon's errors: [`ApiError`], what a route or tool answers (a
//! status, a stable [`ErrorKind`], a message that says what to do, and the
//! core error it came from), and [`ServerError`], why the daemon could not
//! start or serve.

use std::fmt;
use std::sync::Arc;

use petty_core::{ClientError, CoreError, GuestErrorKind};

/// A failure's stable, machine-readable kind, as clients match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or a value is out of range (400).
    BadRequest,
    /// The path names a device, FIFO, socket or directory (400).
    NotARegularFile,
    /// No key, or a wrong one (401).
    Unauthorized,
    /// The key does not allow this (403).
    Forbidden,
    /// The request came from a web page whose origin is not allowed (403).
    ForbiddenOrigin,
    /// No such sandbox, snapshot, route or file (404).
    NotFound,
    /// The sandbox's state, a name taken, a snapshot in use (409).
    Conflict,
    /// Over a size limit (413).
    TooLarge,
    /// The body's `Content-Type` is not the route's (415).
    UnsupportedMediaType,
    /// The `Host` is not this daemon's (421).
    MisdirectedHost,
    /// At the sandbox limit (429).
    Capacity,
    /// The daemon failed (500).
    Internal,
    /// The guest failed an I/O operation (500).
    GuestError,
    /// The VM failed (500).
    VmError,
    /// The guest agent did not answer, or broke the protocol (502).
    AgentError,
    /// The backend or the guest assets are missing here, or the daemon is
    /// stopping (503).
    Unavailable,
    /// The sandbox's disk is full (507).
    InsufficientStorage,
}

impl ErrorKind {
    /// The name clients see, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotARegularFile => "not_a_regular_file",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MisdirectedHost => "misdirected_host",
            Self::Capacity => "capacity",
            Self::Internal => "internal",
            Self::GuestError => "guest_error",
            Self::VmError => "vm_error",
            Self::AgentError => "agent_error",
            Self::Unavailable => "unavailable",
            Self::InsufficientStorage => "insufficient_storage",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest | Self::NotARegularFile => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::ForbiddenOrigin => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::MisdirectedHost => 421,
            Self::Capacity => 429,
            Self::Internal | Self::GuestError | Self::VmError => 500,
            Self::AgentError => 502,
            Self::Unavailable => 503,
            Self::InsufficientStorage => 507,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A failed operation: an HTTP status, a stable kind, a message that says
/// what to do, and the core error it came from (its chain is in the
/// message too, so a client sees every cause).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status (the kind's, except for a few framework rejections).
    pub status: u16,
    /// Stable machine-readable kind.
    pub kind: ErrorKind,
    /// For people (and models): which sandbox, what went wrong, what to try.
    pub message: String,
    /// The core error behind it, if one was.
    pub source: Option<Arc<CoreError>>,
}

impl PartialEq for ApiError {
    /// Two errors are the same answer when status, kind and message are.
    fn eq(&self, other: &Self) -> bool {
        (self.status, self.kind, &self.message) == (other.status, other.kind, &other.message)
    }
}

impl Eq for ApiError {}

impl ApiError {
    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// An error of `kind`, with its status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::with_status(kind.status(), kind, message)
    }

    /// An error of `kind` answered with another status (a framework
    /// rejection such as 405).
    pub fn with_status(status: u16, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// True for failures of the guest agent link (counted in metrics).
    pub(crate) fn is_agent_error(e: &CoreError) -> bool {
        matches!(
            e,
            CoreError::AgentTimeout { .. }
                | CoreError::Connection { .. }
                | CoreError::Rpc(
                    ClientError::Disconnected(_)
                        | ClientError::Hostile { .. }
                        | ClientError::Timeout { .. }
                        | ClientError::Protocol(_)
                        | ClientError::Version { .. }
                        | ClientError::Io(_)
                )
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The kind a core error is answered with.
pub(crate) fn kind_of(e: &CoreError) -> ErrorKind {
    use ErrorKind as K;
    match e {
        CoreError::InvalidConfig(_) | CoreError::Json(_) => K::BadRequest,
        CoreError::NotFound(_)
        | CoreError::SnapshotNotFound(_)
        | CoreError::TemplateNotFound(_) => K::NotFound,
        CoreError::InvalidState { .. }
        | CoreError::Died { .. }
        | CoreError::SnapshotInUse { .. }
        | CoreError::TemplateInUse { .. }
        | CoreError::NameTaken(_) => K::Conflict,
        CoreError::Capacity { .. } => K::Capacity,
        CoreError::KeptDiskFull(_) => K::InsufficientStorage,
        CoreError::Rpc(ClientError::Remote { kind, .. }) => match kind {
            GuestErrorKind::NotFound => K::NotFound,
            GuestErrorKind::AlreadyExists => K::Conflict,
            GuestErrorKind::NotARegularFile => K::NotARegularFile,
            GuestErrorKind::NoSpace => K::InsufficientStorage,
            GuestErrorKind::Io => K::GuestError,
            _ => K::BadRequest,
        },
        CoreError::Rpc(ClientError::TooLarge { .. }) => K::TooLarge,
        // Includes a guest that broke the protocol (`ClientError::Hostile`):
        // the daemon is fine, the sandbox's agent is not.
        CoreError::Rpc(_) | CoreError::AgentTimeout { .. } | CoreError::Connection { .. } => {
            K::AgentError
        }
        CoreError::Image(_)
        | CoreError::BackendUnavailable(_)
        | CoreError::NetworkUnavailable(_) => K::Unavailable,
        CoreError::Network(_) => K::VmError,
        CoreError::Vm(_) => K::VmError,
        CoreError::Store { .. } | CoreError::Io(_) => K::Internal,
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let kind = kind_of(&e);
        let mut message = error_chain(&e);
        if kind == ErrorKind::InsufficientStorage && matches!(e, CoreError::Rpc(_)) {
            message.push_str(
                "; the sandbox's disk is full and nothing was written: free space in it, \
                 or create it with a larger disk_size_mb",
            );
        }
        Self {
            status: kind.status(),
            kind,
            message,
            source: Some(Arc::new(e)),
        }
    }
}

/// The error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Result of the service's operations.
pub type ApiResult<T> = Result<T, ApiError>;

/// Why the daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting the daemon checks itself (`server.allowed_hosts`,
    /// `server.allowed_origins`, `server.listen`) is wrong; names the key.
    #[error("config: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("listening on {addr} (server.listen)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The warm pool's sandbox config is refused.
    #[error("the warm pool's sandbox config")]
    Pool(#[source] ApiError),
    /// Serving HTTP or MCP failed.
    #[error("{what}")]
    Serve {
        /// What was being served.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
