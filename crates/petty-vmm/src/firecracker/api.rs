//! Firecracker API requests and the HTTP client that sends them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One API call: method, path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `PUT`, `PATCH` or `GET`.
    pub method: &'static str,
    /// Path, e.g. `/drives/rootfs`.
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

impl Request {
    fn put(path: impl Into<String>, body: Value) -> Self {
        Self {
            method: "PUT",
            path: path.into(),
            body: Some(body),
        }
    }
}

/// What a VM boots with.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Kernel command line.
    pub boot_args: String,
    /// The VM's own copy-on-write root disk.
    pub rootfs: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest vsock context id (3 or more).
    pub vsock_cid: u32,
    /// Host side of the hybrid vsock.
    pub vsock_uds: PathBuf,
    /// Host TAP device for an optional network interface.
    pub tap: Option<String>,
}

/// The calls that configure and start a VM, in order.
pub fn boot_sequence(spec: &BootSpec) -> Vec<Request> {
    let mut seq = vec![
        Request::put(
            "/machine-config",
            json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib, "smt": false }),
        ),
        Request::put(
            "/boot-source",
            json!({
                "kernel_image_path": spec.kernel.display().to_string(),
                "boot_args": spec.boot_args,
            }),
        ),
        Request::put(
            "/drives/rootfs",
            json!({
                "drive_id": "rootfs",
                "path_on_host": spec.rootfs.display().to_string(),
                "is_root_device": true,
                "is_read_only": false,
            }),
        ),
        Request::put(
            "/vsock",
            json!({ "guest_cid": spec.vsock_cid, "uds_path": spec.vsock_uds.display().to_string() }),
        ),
    ];
    if let Some(tap) = &spec.tap {
        seq.push(Request::put(
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": tap }),
        ));
    }
    seq.push(Request::put(
        "/actions",
        json!({ "action_type": "InstanceStart" }),
    ));
    seq
}

/// Freezes the vCPUs.
pub fn pause() -> Request {
    Request {
        method: "PATCH",
        path: "/vm".into(),
        body: Some(json!({ "state": "Paused" })),
    }
}

/// Lets the vCPUs run again.
pub fn resume() -> Request {
    Request {
        method: "PATCH",
        path: "/vm".into(),
        body: Some(json!({ "state": "Resumed" })),
    }
}

/// Writes a full (or, with `diff`, a diff) snapshot of a paused VM.
pub fn snapshot_create(state: &Path, memory: &Path, diff: bool) -> Request {
    Request::put(
        "/snapshot/create",
        json!({
            "snapshot_type": if diff { "Diff" } else { "Full" },
            "snapshot_path": state.display().to_string(),
            "mem_file_path": memory.display().to_string(),
        }),
    )
}

/// Loads a snapshot into a fresh Firecracker process, its memory file
/// mapped privately (so clones share its pages), with the vsock socket
/// moved to `vsock_uds` so many clones of one snapshot coexist.
pub fn snapshot_load(state: &Path, memory: &Path, vsock_uds: &Path) -> Request {
    Request::put(
        "/snapshot/load",
        json!({
            "snapshot_path": state.display().to_string(),
            "mem_backend": { "backend_type": "File", "backend_path": memory.display().to_string() },
            "vsock_override": { "uds_path": vsock_uds.display().to_string() },
            "resume_vm": true,
        }),
    )
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Talking to the socket failed.
    #[error("Firecracker API socket {}", path.display())]
    Io {
        /// The API socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Firecracker refused the call; its own words are kept verbatim.
    #[error("Firecracker refused {method} {path} ({status}): {fault}")]
    Refused {
        /// The method.
        method: &'static str,
        /// The path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Firecracker's `fault_message` (or the raw body).
        fault: String,
    },
    /// The answer was not HTTP as expected.
    #[error("Firecracker API answered {method} {path} with something unreadable: {detail}")]
    Malformed {
        /// The method.
        method: &'static str,
        /// The path.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// Largest response accepted from the API socket.
const MAX_RESPONSE: usize = 1 << 20;

/// HTTP/1.1 over Firecracker's API socket, one connection per call.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// Sends `req`; the response body on success (2xx).
    pub async fn send(&self, req: &Request) -> Result<Vec<u8>, ApiError> {
        let io = |source| ApiError::Io {
            path: self.socket.clone(),
            source,
        };
        let fut = async {
            let mut stream = UnixStream::connect(&self.socket).await.map_err(io)?;
            let body = req
                .body
                .as_ref()
                .map(|b| serde_json::to_vec(b).expect("json"))
                .unwrap_or_default();
            let head = format!(
                "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                req.method,
                req.path,
                body.len()
            );
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            stream.write_all(&body).await.map_err(io)?;
            let mut raw = Vec::new();
            (&mut stream)
                .take(MAX_RESPONSE as u64)
                .read_to_end(&mut raw)
                .await
                .map_err(io)?;
            Ok(raw)
        };
        let raw = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))??;
        let malformed = |detail: &str| ApiError::Malformed {
            method: req.method,
            path: req.path.clone(),
            detail: detail.into(),
        };
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| malformed("no end of headers"))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let body = raw[split + 4..].to_vec();
        let status: u16 = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("no status line"))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let fault = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("fault_message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        Err(ApiError::Refused {
            method: req.method,
            path: req.path.clone(),
            status,
            fault,
        })
    }
}
