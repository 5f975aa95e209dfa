//! `GET /v1/node`: what this daemon is and has, for a gateway
//! (`petty gateway`) to place creates by: its version and protocol, the
//! host's free memory and CPUs, its sandboxes against its capacity, the
//! templates and snapshots it holds, and which snapshots it can take
//! from another node (`snapshot_compat`).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::rest::AppState;
use crate::service::Service;

/// A node's identity and capacity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Petty's version.
    pub version: String,
    /// The guest protocol its agents speak.
    pub protocol: u32,
    /// The VMM backend sandboxes get by default (`qemu`, `firecracker`).
    pub backend: String,
    /// Online CPUs of the host.
    pub cpus: usize,
    /// The host's memory, bytes.
    pub memory_total_bytes: u64,
    /// The host's available memory (`MemAvailable`), bytes.
    pub memory_available_bytes: u64,
    /// Sandboxes with a VM now (the warm pool's too).
    pub sandboxes: usize,
    /// `limits.max_concurrent_sandboxes`.
    pub capacity: usize,
    /// Templates it holds (`base` always).
    pub templates: Vec<String>,
    /// Snapshots it holds.
    pub snapshots: Vec<String>,
    /// Snapshots move only between nodes with the same value: the
    /// backend, the guest protocol and the host CPU's model.
    pub snapshot_compat: String,
    /// False while it is shutting down.
    pub ready: bool,
    /// Set by `POST /v1/node/drain`: a gateway places no creates here
    /// (kept in the data directory, so it outlives a restart).
    pub draining: bool,
    /// The port E2B's API listens on, when it is served (`e2b.listen`).
    pub e2b_port: Option<u16>,
}

/// Body of `POST /v1/node/drain`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainSpec {
    /// True to drain (no new creates from a gateway), false to take creates again.
    pub draining: bool,
}

impl Service {
    /// This node's [`NodeInfo`].
    pub async fn node_info(&self, ready: bool) -> ApiResult<NodeInfo> {
        let mut templates: Vec<String> = self
            .list_templates()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if !templates.iter().any(|t| t == "base") {
            templates.insert(0, "base".into());
        }
        let snapshots = self
            .list_snapshots()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let sandboxes = self.manager().count().await.map_err(|e| self.fail(e))?;
        let (total, available) = meminfo();
        let backend = self.manager().default_backend().to_string();
        let protocol = petty_core::PROTOCOL_VERSION;
        Ok(NodeInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol,
            snapshot_compat: format!("{backend}/p{protocol}/{}", cpu_model()),
            backend,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: total,
            memory_available_bytes: available,
            sandboxes,
            capacity: self.config().limits.max_concurrent_sandboxes,
            templates,
            snapshots,
            ready,
            draining: self.draining_file().exists(),
            e2b_port: match self
                .inner()
                .e2b_port
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                0 => None,
                p => Some(p),
            },
        })
    }

    fn draining_file(&self) -> std::path::PathBuf {
        self.config().paths.data_dir.join("draining")
    }

    /// Marks this node drained (or not).
    pub fn set_draining(&self, draining: bool) -> ApiResult<()> {
        let path = self.draining_file();
        let done = if draining {
            std::fs::write(&path, b"drained through POST /v1/node/drain\n")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        done.map_err(|e| {
            crate::error::ApiError::new(
                crate::error::ErrorKind::Internal,
                format!("marking the node drained at {}: {e}", path.display()),
            )
        })?;
        tracing::info!(draining, "node drain set");
        Ok(())
    }
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, bytes.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The host CPU's model name, as `/proc/cpuinfo` gives it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What this node is and has (for a gateway's placement).
#[utoipa::path(get, path = "/v1/node", tag = "ops",
    responses((status = 200, body = NodeInfo)))]
pub(crate) async fn node_info(State(s): State<AppState>) -> ApiResult<Json<NodeInfo>> {
    let ready = !s.shutting_down.load(std::sync::atomic::Ordering::SeqCst);
    Ok(Json(s.service.node_info(ready).await?))
}

/// Drain this node (a gateway places no creates on it) or take creates again.
#[utoipa::path(post, path = "/v1/node/drain", tag = "ops",
    request_body = DrainSpec,
    responses((status = 200, body = NodeInfo)))]
pub(crate) async fn drain(
    State(s): State<AppState>,
    crate::rest::JsonBody(spec): crate::rest::JsonBody<DrainSpec>,
) -> ApiResult<Json<NodeInfo>> {
    s.service.set_draining(spec.draining)?;
    node_info(State(s)).await
}

/// The header carrying a template's record on an export and an import
/// (JSON, base64: names and labels need not be header-safe).
pub const TEMPLATE_HEADER: &str = "x-petty-template";
/// The header carrying the guest protocol the image's agent speaks.
pub const PROTOCOL_HEADER: &str = "x-petty-protocol";
/// The media type of a template image on the wire: [`sparse`]'s stream.
pub const SPARSE_TYPE: &str = "application/vnd.petty.sparse";

/// What of a template moves between nodes beside its image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateHeader {
    /// Its name where it came from.
    pub name: String,
    /// What it was made from.
    pub source: String,
    /// What identifies its content (the build's key or the image's digest).
    pub digest: String,
    /// What its execs get.
    pub defaults: petty_core::ImageDefaults,
}

/// A sparse file on the wire: images are mostly holes (a template's is
/// its data plus the room to work a sandbox gets), so only the data goes.
/// The stream is `MAGIC`, the file's length (u64, big-endian), then
/// records `offset, length` (u64 each) and that many bytes, one per data
/// extent in order, and last `u64::MAX, 32` and the SHA-256 of every byte
/// before it: a stream damaged or cut short is refused whole.
pub mod sparse {
    use sha2::Digest as _;
    use std::io::{Read as _, Seek as _};
    use std::os::unix::fs::FileExt as _;

    /// The stream's first bytes.
    pub const MAGIC: &[u8; 13] = b"PETTYSPARSE1\n";
    /// The most one record carries.
    const CHUNK: u64 = 1 << 20;

    /// The data extents of `f` (`SEEK_DATA`/`SEEK_HOLE`), as (offset, length).
    pub fn extents(f: &std::fs::File) -> std::io::Result<Vec<(u64, u64)>> {
        use std::os::fd::AsRawFd as _;
        let len = f.metadata()?.len();
        let fd = f.as_raw_fd();
        let mut out = Vec::new();
        let mut at: i64 = 0;
        while (at as u64) < len {
            // SAFETY: lseek on a descriptor this function borrows.
            let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
            if data < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(e);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(std::io::Error::last_os_error());
            }
            out.push((data as u64, (hole - data) as u64));
            at = hole;
        }
        Ok(out)
    }

    /// Sends `path` as a sparse stream, a chunk at a time, to `tx`.
    pub fn send(
        path: &std::path::Path,
        tx: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    ) -> std::io::Result<()> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let mut h = sha2::Sha256::new();
        let mut emit = |bytes: Vec<u8>| -> std::io::Result<()> {
            h.update(&bytes);
            tx.blocking_send(Ok(bytes))
                .map_err(|_| std::io::Error::other("the receiver went away"))
        };
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&len.to_be_bytes());
        emit(head)?;
        for (start, n) in extents(&f)? {
            let mut at = start;
            while at < start + n {
                let take = CHUNK.min(start + n - at);
                let mut rec = Vec::with_capacity(16 + take as usize);
                rec.extend_from_slice(&at.to_be_bytes());
                rec.extend_from_slice(&take.to_be_bytes());
                let body = rec.len();
                rec.resize(body + take as usize, 0);
                f.seek(std::io::SeekFrom::Start(at))?;
                f.read_exact(&mut rec[body..])?;
                emit(rec)?;
                at += take;
            }
        }
        let mut tail = u64::MAX.to_be_bytes().to_vec();
        tail.extend_from_slice(&32u64.to_be_bytes());
        tail.extend_from_slice(&h.finalize());
        tx.blocking_send(Ok(tail))
            .map_err(|_| std::io::Error::other("the receiver went away"))
    }

    /// Writes a sparse stream read from `input` into `out` (empty, made
    /// by the caller); its length, once the stream proved whole.
    pub fn receive(
        mut input: impl std::io::Read,
        out: &std::fs::File,
        max_len: u64,
    ) -> Result<u64, String> {
        let mut h = sha2::Sha256::new();
        let mut read = |buf: &mut [u8], h: &mut sha2::Sha256| -> Result<(), String> {
            input
                .read_exact(buf)
                .map_err(|e| format!("the stream ended early or broke: {e}"))?;
            h.update(&*buf);
            Ok(())
        };
        let mut magic = [0u8; 13];
        read(&mut magic, &mut h)?;
        if &magic != MAGIC {
            return Err("not a Petty sparse stream (its first bytes are wrong)".into());
        }
        let mut n = [0u8; 8];
        read(&mut n, &mut h)?;
        let len = u64::from_be_bytes(n);
        if len > max_len {
            return Err(format!(
                "the image is {len} bytes, over the {max_len} this node takes"
            ));
        }
        out.set_len(len)
            .map_err(|e| format!("sizing the image: {e}"))?;
        let mut next = 0u64;
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            let mut rec = [0u8; 16];
            let before = h.clone();
            read(&mut rec, &mut h)?;
            let at = u64::from_be_bytes(rec[..8].try_into().expect("8 bytes"));
            let size = u64::from_be_bytes(rec[8..].try_into().expect("8 bytes"));
            if at == u64::MAX {
                if size != 32 {
                    return Err("the stream's last record is not a SHA-256".into());
                }
                let mut want = [0u8; 32];
                input
                    .read_exact(&mut want)
                    .map_err(|e| format!("the stream ended early: {e}"))?;
                // The digest covers every byte before its own record.
                let got = before.finalize();
                if got[..] != want[..] {
                    return Err("the stream's SHA-256 does not match what came: it was damaged on the way; copy it again".into());
                }
                return Ok(len);
            }
            if size == 0
                || size > CHUNK
                || at < next
                || at.checked_add(size).is_none_or(|end| end > len)
            {
                return Err(format!(
                    "a record at {at} of {size} bytes is out of order or outside the image"
                ));
            }
            let chunk = &mut buf[..size as usize];
            read(chunk, &mut h)?;
            out.write_all_at(chunk, at)
                .map_err(|e| format!("writing the image: {e}"))?;
            next = at + size;
        }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> crate::error::ApiError {
    crate::error::ApiError::new(crate::error::ErrorKind::Internal, format!("{what}: {e}"))
}

/// A template's image, to copy it to another node (a gateway does): a
/// [`sparse`] stream (only the image's data, with its SHA-256 last), the
/// record and the agent's protocol in the headers.
#[utoipa::path(get, path = "/v1/templates/{name}/image", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, content_type = "application/vnd.petty.sparse", body = Vec<u8>), (status = 404, body = crate::rest::ErrorBody)))]
pub(crate) async fn export_template(
    State(s): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<axum::response::Response, crate::error::ApiError> {
    use base64::Engine as _;
    let record = s
        .service
        .manager()
        .template_info(&name)
        .await
        .map_err(|e| s.service.fail(e))?;
    let header = TemplateHeader {
        name: record.name.clone(),
        source: record.source.clone(),
        digest: record.digest.clone(),
        defaults: record.defaults.clone(),
    };
    let header = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&header).expect("plain data"));
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
    let path = record.rootfs.clone();
    let template = name.clone();
    tokio::task::spawn_blocking(move || match sparse::send(&path, &tx) {
        Ok(()) => tracing::info!(template = %template, "template exported"),
        Err(e) => {
            tracing::warn!(template = %template, error = %e, "template export failed");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, SPARSE_TYPE)
        .header(TEMPLATE_HEADER, header)
        .header(PROTOCOL_HEADER, petty_core::PROTOCOL_VERSION.to_string())
        .body(body)
        .expect("valid headers"))
}

/// Takes a template another node exported (`GET
/// /v1/templates/{name}/image`): the stream written into the images
/// directory and checked whole, refused when the image's agent speaks
/// another protocol than this node's; then recorded, replacing one of that
/// name. Nothing is left of an import that failed.
#[utoipa::path(put, path = "/v1/templates/{name}/image", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    request_body(content = Vec<u8>, content_type = "application/vnd.petty.sparse"),
    responses((status = 201, body = crate::templates::TemplateView), (status = 400, body = crate::rest::ErrorBody), (status = 409, body = crate::rest::ErrorBody)))]
pub(crate) async fn import_template(
    State(s): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    req: axum::extract::Request,
) -> Result<(axum::http::StatusCode, Json<crate::templates::TemplateView>), crate::error::ApiError>
{
    use base64::Engine as _;
    use tokio_stream::StreamExt as _;
    let bad = crate::error::ApiError::bad_request;
    let headers = req.headers().clone();
    let get = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let checked = (|| {
        let protocol = get(PROTOCOL_HEADER).ok_or_else(|| {
            bad(format!(
                "no {PROTOCOL_HEADER} header: send what GET /v1/templates/{{name}}/image answered with"
            ))
        })?;
        if protocol != petty_core::PROTOCOL_VERSION.to_string() {
            return Err(crate::error::ApiError::new(
                crate::error::ErrorKind::Conflict,
                format!(
                    "template {name}'s image has an agent of protocol {protocol}, this node's guests speak {}: rebuild the template here, or upgrade the older node",
                    petty_core::PROTOCOL_VERSION
                ),
            ));
        }
        let header: TemplateHeader = get(TEMPLATE_HEADER)
            .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad(format!("no readable {TEMPLATE_HEADER} header")))?;
        petty_core::check_template_name(&name).map_err(|e| s.service.fail(e))?;
        Ok(header)
    })();
    let header: TemplateHeader = match checked {
        Ok(h) => h,
        Err(e) => {
            // Read (and drop) what the client is still sending, so it reads
            // the refusal rather than meets a closed connection; bounded.
            let mut body = req.into_body().into_data_stream();
            let drain = async {
                let mut n = 0usize;
                while let Some(Ok(chunk)) = body.next().await {
                    n += chunk.len();
                    if n > 256 << 20 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
            return Err(e);
        }
    };
    let dir = s.service.manager().images_dir();
    std::fs::create_dir_all(&dir).map_err(|e| internal("making the images directory", e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let final_path = dir.join(format!("import-{stamp:x}.ext4"));
    let partial = dir.join(format!("import-{stamp:x}.ext4.partial"));
    let file = std::fs::File::create(&partial).map_err(|e| internal("writing the image", e))?;
    let body = req
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
    let max = s
        .service
        .config()
        .image
        .max_unpacked_mib
        .saturating_mul(1 << 20);
    let written = tokio::task::spawn_blocking(move || {
        let n = sparse::receive(std::io::BufReader::new(reader), &file, max)?;
        file.sync_all()
            .map_err(|e| format!("writing the image: {e}"))?;
        Ok::<u64, String>(n)
    })
    .await
    .map_err(|e| internal("receiving the image", e))?;
    let bytes = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(bad(format!("template {name}'s image: {e}")));
        }
    };
    std::fs::rename(&partial, &final_path).map_err(|e| internal("placing the image", e))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let record = petty_core::TemplateRecord {
        name: name.clone(),
        source: header.source,
        rootfs: final_path.clone(),
        digest: header.digest,
        defaults: header.defaults,
        size_bytes: bytes,
        created_at_ms: now,
        last_used_ms: 0,
    };
    if let Err(e) = s.service.manager().add_template(record).await {
        let _ = std::fs::remove_file(&final_path);
        return Err(s.service.fail(e));
    }
    tracing::info!(template = %name, bytes, "template imported");
    let view = s
        .service
        .list_templates()
        .await?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| internal("the imported template", "not listed"))?;
    Ok((axum::http::StatusCode::CREATED, Json(view)))
}

#[cfg(test)]
mod tests {
    use super::sparse;

    fn roundtrip(stream: &[u8]) -> Result<Vec<u8>, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        sparse::receive(stream, &out, 1 << 30)?;
        Ok(std::fs::read(dir.path().join("out")).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sparse_file_goes_as_its_data_and_comes_back_the_same() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&vec![7u8; 3 << 20], 20 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let p = path.clone();
        let sender = tokio::task::spawn_blocking(move || sparse::send(&p, &tx));
        let mut stream = Vec::new();
        while let Some(chunk) = rx.recv().await {
            stream.extend(chunk.unwrap());
        }
        sender.await.unwrap().unwrap();
        // Holes stay out of the stream.
        assert!(stream.len() < 8 << 20, "{} bytes", stream.len());
        assert_eq!(roundtrip(&stream).unwrap(), std::fs::read(&path).unwrap());
        // A changed byte, a cut, a record out of the image: refused.
        let mut damaged = stream.clone();
        let at = damaged.len() / 2;
        damaged[at] ^= 1;
        assert!(roundtrip(&damaged).unwrap_err().contains("damaged"));
        assert!(roundtrip(&stream[..stream.len() - 10])
            .unwrap_err()
            .contains("ended early"));
        assert!(roundtrip(b"NOTSPARSE....xxxxxxxx").is_err());
        let mut outside = sparse::MAGIC.to_vec();
        outside.extend_from_slice(&16u64.to_be_bytes());
        outside.extend_from_slice(&8u64.to_be_bytes());
        outside.extend_from_slice(&16u64.to_be_bytes());
        outside.extend_from_slice(&[0u8; 16]);
        assert!(roundtrip(&outside).unwrap_err().contains("outside"));
    }
}
