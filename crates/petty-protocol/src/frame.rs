//! Length-prefixed frames and an incremental, bounded decoder.

use std::fmt;

/// Bytes before the payload: length (4), kind (1), id (4).
pub const HEADER_LEN: usize = 9;

/// Largest value the length prefix may hold (kind + id + payload).
pub const MAX_FRAME_LEN: u32 = 1024 * 1024 + 5;

/// Largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = MAX_FRAME_LEN as usize - 5;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON [`crate::Request`], host to guest.
    Request = 1,
    /// JSON [`crate::Response`], guest to host; the last frame for its id.
    Response = 2,
    /// Raw stdout bytes of an exec, guest to host.
    Stdout = 3,
    /// Raw stderr bytes of an exec, guest to host.
    Stderr = 4,
    /// Raw stdin bytes for an exec, host to guest; an empty payload closes stdin.
    Stdin = 5,
    /// Raw file bytes (a read: guest to host; a write: host to guest, empty = end).
    Data = 6,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Stdout,
            4 => Self::Stderr,
            5 => Self::Stdin,
            6 => Self::Data,
            _ => return None,
        })
    }
}

/// One frame: its kind, the request it belongs to, and its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The request this frame belongs to.
    pub id: u32,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Why a byte stream could not be read as frames. Any of these ends the
/// connection: the stream cannot be resynchronised after it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLong(u32),
    /// The length prefix is too small to hold a kind and an id.
    #[error("frame of {0} bytes is shorter than its 5-byte header")]
    TooShort(u32),
    /// The kind byte is not one of [`FrameKind`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

impl Frame {
    /// A frame with the given kind, id and payload.
    pub fn new(kind: FrameKind, id: u32, payload: Vec<u8>) -> Self {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        Self { kind, id, payload }
    }

    /// A JSON frame carrying `value`.
    pub fn json<T: serde::Serialize>(kind: FrameKind, id: u32, value: &T) -> Self {
        let payload = serde_json::to_vec(value).expect("protocol messages always serialize");
        Self::new(kind, id, payload)
    }

    /// Parses the payload as JSON.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = (self.payload.len() + 5) as u32;
        out.reserve(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Turns a byte stream, fed in pieces of any size, into frames.
///
/// Memory use is bounded by one frame: the length prefix is checked before the
/// body is buffered.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// How many more bytes the decoder may usefully take before it holds a
    /// whole frame; callers read at most this much so the buffer stays bounded.
    pub fn want(&self) -> usize {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return HEADER_LEN.max(64 * 1024) - avail.len();
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        (4 + len).saturating_sub(avail.len()).max(1)
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or the
    /// error that ends the stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(len));
        }
        if len < 5 {
            return Err(FrameError::TooShort(len));
        }
        if avail.len() >= 5 && FrameKind::from_u8(avail[4]).is_none() {
            return Err(FrameError::UnknownKind(avail[4]));
        }
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let kind = FrameKind::from_u8(avail[4]).expect("checked above");
        let id = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]);
        let payload = avail[HEADER_LEN..total].to_vec();
        self.start += total;
        // Compact once the consumed prefix dominates, so the buffer never holds
        // more than about two frames.
        if self.start > 256 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Frame { kind, id, payload }))
    }

    /// Call at end of stream: an error if a partial frame is still buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() - self.start {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_one_byte_pieces() {
        let frames = vec![
            Frame::new(FrameKind::Request, 1, b"{}".to_vec()),
            Frame::new(FrameKind::Stdout, 7, vec![0u8; 70_000]),
            Frame::new(FrameKind::Stdin, 7, vec![]),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode_into(&mut bytes);
        }
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &bytes {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        dec.finish().unwrap();
    }

    #[test]
    fn refuses_huge_length_before_buffering() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(dec.next_frame(), Err(FrameError::TooLong(u32::MAX)));
    }

    #[test]
    fn refuses_short_and_unknown() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 2, 1, 1]);
        assert_eq!(dec.next_frame(), Err(FrameError::TooShort(2)));
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 5, 99]);
        assert_eq!(dec.next_frame(), Err(FrameError::UnknownKind(99)));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut dec = FrameDecoder::new();
        let bytes = Frame::new(FrameKind::Data, 3, vec![1, 2, 3]).encode();
        dec.push(&bytes[..bytes.len() - 1]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated(bytes.len() - 1)));
    }

    #[test]
    fn want_never_exceeds_one_frame() {
        let mut dec = FrameDecoder::new();
        assert!(dec.want() <= 64 * 1024);
        dec.push(&(100u32).to_be_bytes());
        assert_eq!(dec.want(), 100);
    }
}
