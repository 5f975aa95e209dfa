//! The guest agent over TCP, host side: a VM reached over its network (a
//! remote backend such as Flintlock's), where the agent serves only hosts
//! that give the VM's token first ([`petty_protocol::tcp`]).
//!
//! [`connect`] opens the connection, sends [`Request::Auth`] as its first
//! frame and reads the answer (bounded in size and time); from then on the
//! stream carries the same frames as virtio-serial or vsock. A guest
//! still booting refuses connections: callers retry, as they do for the
//! other transports.

use std::net::SocketAddr;
use std::time::Duration;

use petty_protocol::{Frame, FrameDecoder, FrameKind, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The auth request's frame id (the client's own requests start at a
/// random id, and this answer is read before the client sees the stream).
const AUTH_ID: u32 = 0;

/// Largest answer to the auth request read.
const MAX_ANSWER: usize = 4096;

/// Why no authenticated stream was made.
#[derive(Debug, thiserror::Error)]
pub enum TcpAgentError {
    /// The TCP connection failed (the guest is not up yet, or unreachable).
    #[error("connecting to the agent at {addr}")]
    Connect {
        /// The guest's agent address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer the auth request in time, or hung up.
    #[error("the agent at {addr} did not answer the auth request: {problem}")]
    NoAnswer {
        /// The guest's agent address.
        addr: SocketAddr,
        /// What happened.
        problem: String,
    },
    /// The agent refused the token.
    #[error("the agent at {addr} refused the VM's token: {message}")]
    Refused {
        /// The guest's agent address.
        addr: SocketAddr,
        /// The agent's words.
        message: String,
    },
}

/// Connects to the agent at `addr` and authenticates with `token`, each
/// step within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    token: &str,
    timeout: Duration,
) -> Result<TcpStream, TcpAgentError> {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(TcpAgentError::Connect { addr, source }),
        Err(_) => {
            return Err(TcpAgentError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })
        }
    };
    let _ = stream.set_nodelay(true);
    let no_answer = |problem: String| TcpAgentError::NoAnswer { addr, problem };
    let auth = Frame::json(
        FrameKind::Request,
        AUTH_ID,
        &Request::Auth {
            token: token.to_string(),
        },
    );
    let answer = async {
        stream.write_all(&auth.encode()).await?;
        read_one_frame(&mut stream).await
    };
    let frame = match tokio::time::timeout(timeout, answer).await {
        Err(_) => return Err(no_answer(format!("nothing within {timeout:?}"))),
        Ok(Err(e)) => return Err(no_answer(e.to_string())),
        Ok(Ok(f)) => f,
    };
    match frame.parse::<Response>() {
        Ok(Response::Ok) if frame.kind == FrameKind::Response && frame.id == AUTH_ID => Ok(stream),
        Ok(Response::Error { message, .. }) => Err(TcpAgentError::Refused { addr, message }),
        other => Err(no_answer(format!("unexpected answer {other:?}"))),
    }
}

/// Reads exactly one frame (nothing after it) of at most [`MAX_ANSWER`].
async fn read_one_frame(stream: &mut TcpStream) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if !(5..=MAX_ANSWER).contains(&n) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {n} bytes"),
        ));
    }
    let mut bytes = len.to_vec();
    bytes.resize(4 + n, 0);
    stream.read_exact(&mut bytes[4..]).await?;
    let mut decoder = FrameDecoder::new();
    decoder.push(&bytes);
    match decoder.next_frame() {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        )),
    }
}
