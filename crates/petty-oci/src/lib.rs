//! OCI images for Petty: references, registry pulls, local archives, a digest-verified blob
//! store, and safe layer unpacking.
//!
//! [`pull`] brings an image's manifest, config and layers into a [`Store`], every blob checked
//! against its digest; [`unpack`] applies the layers in order to an empty directory, refusing
//! anything that would reach outside it. Settings come in as [`PullOptions`] and [`Limits`]
//! (the `image.*` configuration keys); the crate reads no environment.
//!
//! Modules:
//! - [`digest`]: `sha256:<hex>` digests and hashing.
//! - [`reference`]: image references and image sources.
//! - [`error`]: [`OciError`], the crate's one error type.
//! - [`store`]: the blob store (temporary file, verify, fsync, rename).
//! - [`manifest`]: manifests, indexes, platforms and image configs.
//! - `registry`: the HTTP API v2 client (token and basic auth, redirects, bounded reads).
//!   Plain HTTP only: an `https` registry is refused with a clear error (no TLS in this build).
//! - `local`: OCI layouts, OCI archives and Docker archives.
//! - `unpack`: layer application with whiteouts, inside the destination only.

#![warn(missing_docs)]

pub mod digest;
pub mod error;
mod local;
pub mod manifest;
pub mod reference;
mod registry;
pub mod store;
mod unpack;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use digest::Digest;
pub use error::OciError;
pub use manifest::ImageConfig;
pub use reference::{ImageSource, Reference};
pub use store::Store;
pub use unpack::UnpackStats;

use manifest::Descriptor;

/// Configuration keys of the limits, as error messages name them.
pub mod keys {
    /// [`Limits::max_image_bytes`](crate::Limits::max_image_bytes).
    pub const MAX_IMAGE: &str = "image.max_image_mib";
    /// [`Limits::max_layers`](crate::Limits::max_layers).
    pub const MAX_LAYERS: &str = "image.max_layers";
    /// [`Limits::max_unpacked_bytes`](crate::Limits::max_unpacked_bytes).
    pub const MAX_UNPACKED: &str = "image.max_unpacked_mib";
}

/// Bounds on what a pull or unpack accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of compressed layers in one image (`image.max_image_mib`).
    pub max_image_bytes: u64,
    /// Most layers in one image (`image.max_layers`).
    pub max_layers: usize,
    /// Most bytes of file content an unpack writes (`image.max_unpacked_mib`).
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_bytes: 8 << 30,
            max_layers: 128,
            max_unpacked_bytes: 16 << 30,
        }
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The registry host for references that name none (`image.default_registry`).
    pub default_registry: Option<String>,
    /// `host[:port]`s that may be reached over plain HTTP when they do not
    /// speak HTTPS; loopback hosts always may.
    pub insecure_registries: Vec<String>,
    /// A PEM file of certificate authorities trusted besides the system's
    /// (`image.ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// User and password for basic or token auth; `None` pulls anonymously.
    pub credentials: Option<(String, String)>,
    /// User and password per registry (`host[:port]`), as the `auth.json`
    /// of `skopeo login`/`podman login` holds them; before `credentials`.
    pub registry_credentials: std::collections::BTreeMap<String, (String, String)>,
    /// The `(os, architecture)` to choose from an index.
    pub platform: (String, String),
    /// Size and count limits.
    pub limits: Limits,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            default_registry: None,
            insecure_registries: Vec::new(),
            ca_file: None,
            credentials: None,
            registry_credentials: Default::default(),
            platform: ("linux".into(), "amd64".into()),
            limits: Limits::default(),
        }
    }
}

/// A pulled image: every blob named here is in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The digest of the image manifest (for a Docker archive, of the OCI manifest made for it).
    pub manifest_digest: Digest,
    /// The digest of the config blob.
    pub config_digest: Digest,
    /// What the config says about running the image.
    pub config: ImageConfig,
    /// The layers, lowest first.
    pub layers: Vec<Layer>,
}

impl Image {
    /// Every blob the image needs, for [`Store::prune`]'s keep set.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// One layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The blob's digest (of its compressed bytes).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A progress callback: one human line per call.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// Fetches (or reads from the archive) the manifest, config and every layer of `source` into
/// `store`, each verified by digest; layers already in the store are not fetched again.
pub async fn pull(
    source: &ImageSource,
    store: &Store,
    opts: &PullOptions,
    progress: Progress<'_>,
) -> Result<Image, OciError> {
    match source {
        ImageSource::Registry(reference) => {
            let input = reference.to_string();
            let reference = reference
                .clone()
                .with_default_registry(&input, opts.default_registry.as_deref())?;
            registry::pull(&reference, store, opts, progress).await
        }
        local => {
            let (source, store, opts) = (local.clone(), store.clone(), opts.clone());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let job = tokio::task::spawn_blocking(move || {
                let say = move |line: &str| {
                    let _ = tx.send(line.to_owned());
                };
                local::pull(&source, &store, &opts, &say)
            });
            while let Some(line) = rx.recv().await {
                progress(&line);
            }
            job.await.map_err(|e| {
                OciError::Io(std::io::Error::other(format!("the pull task failed: {e}")))
            })?
        }
    }
}

/// Applies `image`'s layers, in order, to the empty directory `dest`. Blocking.
///
/// On error `dest` holds a partial tree, which the caller deletes.
pub fn unpack(
    image: &Image,
    store: &Store,
    dest: &Path,
    limits: &Limits,
    progress: Progress<'_>,
) -> Result<UnpackStats, OciError> {
    unpack::unpack(image, store, dest, limits, progress)
}

/// Checks a manifest's layers against the limits and media types a pull accepts, before any
/// layer is fetched.
pub(crate) fn check_manifest(
    config: &Descriptor,
    layers: &[Descriptor],
    limits: &Limits,
) -> Result<(), OciError> {
    const CONFIG_TYPES: [&str; 3] = [
        "",
        manifest::OCI_CONFIG,
        "application/vnd.docker.container.image.v1+json",
    ];
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(OciError::Unsupported {
            what: format!(
                "config media type {:?}: this is not a container image (an OCI artifact?)",
                config.media_type
            ),
        });
    }
    if config.size > manifest::MAX_MANIFEST_BYTES {
        return Err(OciError::Unsupported {
            what: format!(
                "an image config of {} (more than {})",
                human_bytes(config.size),
                human_bytes(manifest::MAX_MANIFEST_BYTES)
            ),
        });
    }
    if layers.len() > limits.max_layers {
        return Err(OciError::TooLarge {
            what: format!("the image has {} layers", layers.len()),
            limit: limits.max_layers as u64,
            key: keys::MAX_LAYERS,
        });
    }
    let total = layers
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.size));
    if total > limits.max_image_bytes {
        return Err(OciError::TooLarge {
            what: format!("the image's layers total {}", human_bytes(total)),
            limit: limits.max_image_bytes,
            key: keys::MAX_IMAGE,
        });
    }
    for l in layers {
        unpack::Compression::for_media_type(&l.media_type)?;
    }
    Ok(())
}

/// The image made from a manifest's parts.
pub(crate) fn image_of(
    manifest_digest: Digest,
    config_digest: Digest,
    config: ImageConfig,
    layers: &[Descriptor],
) -> Image {
    Image {
        manifest_digest,
        config_digest,
        config,
        layers: layers
            .iter()
            .map(|l| Layer {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            })
            .collect(),
    }
}

/// The annotation naming a manifest in an OCI layout's index.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `bytes` as `1.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8 GiB");
    }

    fn layer(size: u64) -> Descriptor {
        Descriptor {
            media_type: manifest::OCI_LAYER_GZIP.into(),
            digest: Digest::of_bytes(&size.to_le_bytes()),
            size,
            platform: None,
            annotations: None,
        }
    }

    #[test]
    fn limits_are_checked_before_download() {
        let config = Descriptor {
            media_type: manifest::OCI_CONFIG.into(),
            ..layer(10)
        };
        let limits = Limits {
            max_image_bytes: 100,
            max_layers: 2,
            max_unpacked_bytes: 1,
        };
        check_manifest(&config, &[layer(50), layer(50)], &limits).unwrap();
        match check_manifest(&config, &[layer(50), layer(51)], &limits).unwrap_err() {
            OciError::TooLarge { key, limit, .. } => {
                assert_eq!((key, limit), (keys::MAX_IMAGE, 100))
            }
            other => panic!("{other}"),
        }
        let err = check_manifest(&config, &[layer(1), layer(1), layer(1)], &limits).unwrap_err();
        assert!(err.to_string().contains("image.max_layers"), "{err}");
        let odd = Descriptor {
            media_type: "application/vnd.example.thing".into(),
            ..layer(1)
        };
        assert!(matches!(
            check_manifest(&config, &[odd], &limits),
            Err(OciError::Unsupported { .. })
        ));
        let artifact = Descriptor {
            media_type: "application/vnd.cncf.helm.config.v1+json".into(),
            ..layer(1)
        };
        assert!(matches!(
            check_manifest(&artifact, &[], &limits),
            Err(OciError::Unsupported { .. })
        ));
    }
}
