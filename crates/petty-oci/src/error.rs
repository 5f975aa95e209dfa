//! `OciError`, the one error type of this crate. Each message says what went wrong and,
//! where there is one, what to do about it; causes are `#[source]`s, not repeated.

use std::io;

use crate::digest::Digest;

/// What can go wrong pulling or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// An image reference that does not parse.
    #[error("bad image reference {input:?}: {reason}")]
    BadReference {
        /// The reference as given.
        input: String,
        /// Why it was refused, with a hint.
        reason: String,
    },
    /// An image source (`oci:`, `oci-archive:`, `docker-archive:`) that cannot be used.
    #[error("bad image source {input}: {reason}")]
    BadSource {
        /// The source as given.
        input: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A registry answered with an unexpected HTTP status.
    #[error(
        "registry request {url} failed with HTTP {status}{}",
        detail_suffix(detail)
    )]
    Http {
        /// The URL asked for.
        url: String,
        /// The status it answered.
        status: u16,
        /// The start of the answer's body, if any.
        detail: String,
    },
    /// A registry could not be reached, or the connection broke.
    #[error(
        "could not talk to {url}; hint: check that the registry is up and its host name is right"
    )]
    Transport {
        /// The URL asked for.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// HTTPS to a registry failed (certificate, handshake, a plain-HTTP
    /// server), or the trusted authorities could not be read.
    #[error("{what}")]
    Tls {
        /// What failed, why, and what to do.
        what: String,
    },
    /// The registry refused the credentials, or there were none and it wants some.
    #[error("registry {registry} refused access: {reason}")]
    Auth {
        /// The registry host.
        registry: String,
        /// What happened, with a hint.
        reason: String,
    },
    /// The image, a manifest or a blob does not exist.
    #[error("{what} not found{}", detail_suffix(hint))]
    NotFound {
        /// What was looked for.
        what: String,
        /// What to check.
        hint: String,
    },
    /// An image index without a manifest for the platform wanted.
    #[error("the image has no manifest for {wanted}; it has: {available}")]
    NoPlatform {
        /// `os/architecture` asked for.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// Content whose digest is not the one it was asked for by.
    #[error("{what} has digest {actual}, expected {expected}; the source is corrupt or was tampered with")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// Content whose size is not the one its descriptor gives.
    #[error("{what} is {actual} bytes, its descriptor says {expected}; the source is corrupt")]
    SizeMismatch {
        /// What was checked.
        what: String,
        /// The size the descriptor gives.
        expected: u64,
        /// The size it has.
        actual: u64,
    },
    /// A manifest, index or config that is not valid.
    #[error("{what} is not valid: {reason}")]
    BadManifest {
        /// What was read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something this crate does not do.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What it is, with a hint.
        what: String,
    },
    /// Over a configured limit.
    #[error("{what}, over the limit of {}; hint: raise `{key}` if the image is trusted", human_limit(key, *limit))]
    TooLarge {
        /// What is too large, with its size.
        what: String,
        /// The limit (bytes, or a count for `image.max_layers`).
        limit: u64,
        /// The configuration key that sets the limit.
        key: &'static str,
    },
    /// A layer entry that would write outside the destination or make a device.
    #[error("refusing layer {layer}: entry {path:?} {reason}; the image is broken or hostile")]
    Hostile {
        /// The layer holding the entry.
        layer: Digest,
        /// The entry's path in the layer.
        path: String,
        /// What it would do.
        reason: String,
    },
    /// A file system operation failed on a named path.
    #[error("{what}")]
    IoAt {
        /// What was being done, and on which path.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file system operation failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn human_limit(key: &str, limit: u64) -> String {
    if key == "image.max_layers" {
        format!("{limit} layers")
    } else {
        crate::human_bytes(limit)
    }
}

impl OciError {
    pub(crate) fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> OciError {
        let what = what.into();
        move |source| OciError::IoAt { what, source }
    }
}
