//! Firecracker's hybrid vsock, host side: connect to the VM's vsock unix
//! socket, write `CONNECT <port>\n`, read `OK <host port>\n`, and from then
//! on the socket is a byte stream to the guest port, the same frames as over
//! virtio-serial.
//!
//! Firecracker closes the connection when nothing listens on the guest port
//! yet (the agent is still starting), so connecting is retried every 100 ms
//! until the deadline. Each attempt's answer is bounded in size and time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest handshake answer accepted (`OK 4294967295\n` is 14 bytes).
const MAX_ANSWER: usize = 64;
/// How long one attempt waits for the answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Why the handshake did not produce a stream.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// No attempt succeeded before the deadline; the last failure is given.
    #[error("no vsock connection to guest port {port} through {} within {waited:?}: {last}", path.display())]
    Timeout {
        /// The VM's vsock socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// How long we tried.
        waited: Duration,
        /// What the last attempt ran into.
        last: String,
    },
    /// The peer answered something other than `OK <port>`.
    #[error("vsock handshake through {}: expected `OK <port>`, got {answer:?}", path.display())]
    BadAnswer {
        /// The VM's vsock socket.
        path: PathBuf,
        /// What it said (lossily decoded, at most 64 bytes).
        answer: String,
    },
}

/// One handshake attempt: `Ok(Some(stream))`, `Ok(None)` for a failure worth
/// retrying (no socket yet, closed early, no answer in time), `Err` for an
/// answer that breaks the protocol.
async fn attempt(
    path: &Path,
    port: u32,
    wait: Duration,
) -> Result<Result<UnixStream, String>, VsockError> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("connect: {e}"))),
    };
    if let Err(e) = stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
    {
        return Ok(Err(format!("write: {e}")));
    }
    // Read the answer byte by byte: nothing past its newline may be consumed,
    // that is already the guest's data.
    let mut answer = Vec::with_capacity(16);
    let read = tokio::time::timeout(wait, async {
        loop {
            let mut b = [0u8; 1];
            match stream.read(&mut b).await {
                Ok(0) => {
                    return Err("closed before answering (guest not listening yet?)".to_string())
                }
                Ok(_) if b[0] == b'\n' => return Ok(()),
                Ok(_) if answer.len() >= MAX_ANSWER => return Ok(()),
                Ok(_) => answer.push(b[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await;
    match read {
        Err(_) => return Ok(Err(format!("no answer within {wait:?}"))),
        Ok(Err(e)) => return Ok(Err(e)),
        Ok(Ok(())) => {}
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    match text.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(_)) => Ok(Ok(stream)),
        _ => Err(VsockError::BadAnswer {
            path: path.to_path_buf(),
            answer: text,
        }),
    }
}

/// Connects to guest `port` through the hybrid vsock socket at `path`,
/// retrying every 100 ms for up to `timeout`.
pub async fn connect(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match attempt(path, port, remaining.min(ATTEMPT_TIMEOUT)).await? {
            Ok(stream) => return Ok(stream),
            Err(why) => why,
        };
        if tokio::time::Instant::now() + RETRY_EVERY >= deadline {
            return Err(VsockError::Timeout {
                path: path.to_path_buf(),
                port,
                waited: timeout,
                last,
            });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
