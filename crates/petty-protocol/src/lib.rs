//! The wire between the Petty host and the guest agent.
//!
//! One byte stream per sandbox (a virtio-serial port under QEMU, a vsock
//! connection under Firecracker) carries frames:
//!
//! ```text
//! +----------------+--------+----------------+-----------------+
//! | len: u32 BE    | kind:u8| id: u32 BE     | payload         |
//! +----------------+--------+----------------+-----------------+
//!   len counts kind + id + payload (so len >= 5)
//! ```
//!
//! `kind` says what the payload is: a JSON [`Request`] (host to guest), a JSON
//! [`Response`] (guest to host, the last frame of a request), or raw bytes
//! (stdout, stderr, stdin, file data). Raw bytes are never JSON-encoded, so file
//! transfers and command output cost no base64 inflation. `id` ties every frame
//! to one request, so many requests can be in flight on one stream at once.
//!
//! Every frame is bounded by [`MAX_FRAME_LEN`]; a decoder refuses a longer
//! length prefix before allocating anything, so a hostile peer cannot make the
//! other side grow without bound. This crate knows nothing of runtimes or VMMs:
//! the guest agent drives it with blocking reads, the host with tokio.

#![warn(missing_docs)]

mod frame;
mod message;
pub mod net;
pub mod tcp;

pub use frame::{
    Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD,
};
pub use message::{
    Command, ErrorKind, ExecRequest, ExitStatus, FileEntry, FileStat, FileType, Pong, PtySize,
    Request, Response, WatchEvent,
};

/// Version of this protocol; the agent reports it in [`Pong`] and the host
/// refuses an agent that speaks another. 4: `cancel`, `stat` with
/// `follow`, the file type in `FileStat`, the `not_a_regular_file` and
/// `no_space` error kinds, and writes through a temporary file. 5: `user`
/// in `ExecRequest`, and a working directory of `/` when `/root` is missing.
/// 6: `pty` in `ExecRequest`, `resize`, and `watch` with its `WatchEvent`s.
/// 7: `detach` in `ExecRequest`, answered with `Response::Started` (an
/// older agent would ignore the field and run the command attached, to be
/// killed when its client goes). `auth` came within 7: it is sent only
/// over TCP ([`tcp`]), which no agent before it serves, and an agent on
/// another channel answers it `ok`, so no agent misreads it.
pub const PROTOCOL_VERSION: u32 = 7;

/// The vsock port the agent listens on under Firecracker.
pub const VSOCK_PORT: u32 = 52;

/// The name of the virtio-serial port the agent opens under QEMU.
pub const SERIAL_PORT_NAME: &str = "petty.agent";

/// Largest chunk of raw bytes (output, stdin, file data) either side puts in one frame.
pub const CHUNK_SIZE: usize = 64 * 1024;
