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

/// The id of the root drive.
pub const ROOT_DRIVE: &str = "rootfs";
/// The id of the optional network interface.
pub const NET_IFACE: &str = "eth0";

/// A network interface backed by a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The host TAP device.
    pub tap: String,
    /// The guest's MAC address.
    pub guest_mac: String,
}

/// What a VM boots with. Paths are as Firecracker sees them: relative ones
/// resolve against its working directory (the run directory, or the jail's
/// root), which is how snapshots stay restorable by many clones at once.
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
    /// An optional network interface.
    pub network: Option<Network>,
    /// Track dirty pages, so that later snapshots can be Diffs.
    pub track_dirty_pages: bool,
}

/// The calls that configure and start a VM, in order.
pub fn boot_sequence(spec: &BootSpec) -> Vec<Request> {
    let mut seq = vec![
        Request::put(
            "/machine-config",
            json!({
                "vcpu_count": spec.vcpus,
                "mem_size_mib": spec.memory_mib,
                "smt": false,
                "track_dirty_pages": spec.track_dirty_pages,
            }),
        ),
        Request::put(
            "/boot-source",
            json!({
                "kernel_image_path": spec.kernel.display().to_string(),
                "boot_args": spec.boot_args,
            }),
        ),
        Request::put(
            format!("/drives/{ROOT_DRIVE}"),
            json!({
                "drive_id": ROOT_DRIVE,
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
    if let Some(net) = &spec.network {
        seq.push(Request::put(
            format!("/network-interfaces/{NET_IFACE}"),
            json!({
                "iface_id": NET_IFACE,
                "host_dev_name": net.tap,
                "guest_mac": net.guest_mac,
            }),
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

/// What a fresh Firecracker process loads.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The snapshot's state file.
    pub state: PathBuf,
    /// Its (full) memory file, mapped privately: clones of one snapshot
    /// share its page-cache pages and copy only those they write.
    pub memory: PathBuf,
    /// This clone's own vsock socket, so many clones coexist.
    pub vsock_uds: PathBuf,
    /// Track dirty pages, so that snapshots of the clone can be Diffs.
    pub track_dirty_pages: bool,
    /// The TAP device this clone's network interface uses instead of the
    /// snapshot's, when the snapshot has one.
    pub tap: Option<String>,
}

/// Loads a snapshot into a fresh Firecracker process and leaves it paused
/// (`resume_vm: false`): the root drive is pointed at the clone's own disk
/// ([`patch_drive`]) before the guest runs ([`resume`]).
pub fn snapshot_load(spec: &LoadSpec) -> Request {
    let mut body = json!({
        "snapshot_path": spec.state.display().to_string(),
        "mem_backend": { "backend_type": "File", "backend_path": spec.memory.display().to_string() },
        "vsock_override": { "uds_path": spec.vsock_uds.display().to_string() },
        "track_dirty_pages": spec.track_dirty_pages,
        "resume_vm": false,
    });
    if let Some(tap) = &spec.tap {
        body["network_overrides"] = json!([{ "iface_id": NET_IFACE, "host_dev_name": tap }]);
    }
    Request::put("/snapshot/load", body)
}

/// Points a running (or loaded, paused) VM's drive at `path`: Firecracker
/// reopens it and tells the guest its size, which may have grown.
pub fn patch_drive(drive_id: &str, path: &Path) -> Request {
    Request {
        method: "PATCH",
        path: format!("/drives/{drive_id}"),
        body: Some(json!({ "drive_id": drive_id, "path_on_host": path.display().to_string() })),
    }
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
