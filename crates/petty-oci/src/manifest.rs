//! Manifests, indexes and image configs (OCI and Docker schema 2), as far as a pull needs
//! them: which kind a document is, the platform an index offers, the config's run settings.
//! Schema 1 manifests are refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::OciError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The `Accept` header of a manifest request.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The most bytes a manifest, index or config may have.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
struct RawDocument {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

/// What a manifest document turned out to be.
#[derive(Debug)]
pub(crate) enum Document {
    /// An index or manifest list.
    Index(Vec<Descriptor>),
    /// An image manifest.
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Reads a manifest or index; `content_type` is the registry's, when there is one.
pub(crate) fn parse_document(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Document, OciError> {
    let schema1 = |mt: &str| mt.starts_with("application/vnd.docker.distribution.manifest.v1");
    if content_type.is_some_and(schema1) {
        return Err(schema1_error(what));
    }
    let raw: RawDocument = serde_json::from_slice(bytes).map_err(|e| OciError::BadManifest {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if raw.schema_version == Some(1)
        || raw.fs_layers.is_some()
        || raw.media_type.as_deref().is_some_and(schema1)
    {
        return Err(schema1_error(what));
    }
    if let Some(manifests) = raw.manifests {
        return Ok(Document::Index(manifests));
    }
    match (raw.config, raw.layers) {
        (Some(config), Some(layers)) => Ok(Document::Manifest { config, layers }),
        _ => Err(OciError::BadManifest {
            what: what.to_owned(),
            reason: "it is neither an image manifest (config and layers) nor an index (manifests)"
                .into(),
        }),
    }
}

fn schema1_error(what: &str) -> OciError {
    OciError::Unsupported {
        what: format!(
            "{what} is a Docker schema 1 manifest, which Petty does not read; hint: push the image \
             again with a current tool (docker push, skopeo copy) so it has a schema 2 or OCI manifest"
        ),
    }
}

fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Picks the index entry for `os`/`arch` (the variant is ignored).
pub(crate) fn choose_platform<'a>(
    entries: &'a [Descriptor],
    (os, arch): (&str, &str),
) -> Result<&'a Descriptor, OciError> {
    let arch = normalize_arch(arch);
    let found = entries.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && normalize_arch(&p.architecture) == arch)
    });
    if let Some(d) = found {
        return Ok(d);
    }
    let available: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(OciError::NoPlatform {
        wanted: format!("{os}/{arch}"),
        available: if available.is_empty() {
            "no platforms named".into()
        } else {
            available.join(", ")
        },
    })
}

/// What an image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `K=V` environment entries.
    pub env: Vec<String>,
    /// The working directory, when set.
    pub working_dir: Option<String>,
    /// The user (`name`, `uid`, `uid:gid`), when set.
    pub user: Option<String>,
    /// The default command (arguments to the entrypoint, when there is one).
    pub cmd: Vec<String>,
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The CPU architecture (`amd64`, …).
    pub architecture: String,
    /// The operating system (`linux`).
    pub os: String,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    config: Option<RawRunConfig>,
}

#[derive(Deserialize, Default)]
struct RawRunConfig {
    #[serde(rename = "Env")]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    working_dir: Option<String>,
    #[serde(rename = "User")]
    user: Option<String>,
    #[serde(rename = "Cmd")]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Entrypoint")]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// Reads an image config.
pub(crate) fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfig, OciError> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| OciError::BadManifest {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    let run = raw.config.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(ImageConfig {
        env: run.env.unwrap_or_default(),
        working_dir: non_empty(run.working_dir),
        user: non_empty(run.user),
        cmd: run.cmd.unwrap_or_default(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        labels: run.labels.unwrap_or_default(),
        architecture: raw.architecture,
        os: raw.os,
    })
}

/// An OCI manifest for `config` and `layers`, for sources that have none (docker archives).
pub(crate) fn oci_manifest_json(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    // Serializing a `Value` built from strings and numbers cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(n: u8, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of_bytes(&[n]),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn chooses_the_platform_ignoring_variant() {
        let entries = vec![
            desc(1, "linux", "arm", Some("v7")),
            desc(2, "unknown", "unknown", None),
            desc(3, "linux", "arm64", Some("v8")),
            desc(4, "linux", "amd64", Some("v3")),
        ];
        assert_eq!(
            choose_platform(&entries, ("linux", "amd64"))
                .unwrap()
                .digest,
            entries[3].digest
        );
        assert_eq!(
            choose_platform(&entries, ("linux", "aarch64"))
                .unwrap()
                .digest,
            entries[2].digest
        );
        match choose_platform(&entries, ("linux", "s390x")).unwrap_err() {
            OciError::NoPlatform { wanted, available } => {
                assert_eq!(wanted, "linux/s390x");
                assert_eq!(available, "linux/arm/v7, linux/arm64/v8, linux/amd64/v3");
            }
            other => panic!("{other}"),
        }
        assert!(choose_platform(&[], ("linux", "amd64")).is_err());
    }

    #[test]
    fn tells_documents_apart() {
        let d = Digest::of_bytes(b"x");
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_document(manifest.as_bytes(), None, "m").unwrap(),
            Document::Manifest { .. }
        ));
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":1}}]}}"#);
        assert!(
            matches!(parse_document(index.as_bytes(), None, "m").unwrap(), Document::Index(v) if v.len() == 1)
        );
        let s1 = r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let err = parse_document(s1.as_bytes(), None, "m").unwrap_err();
        assert!(
            matches!(err, OciError::Unsupported { .. }) && err.to_string().contains("schema 1"),
            "{err}"
        );
        let err = parse_document(
            b"{}",
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            "m",
        )
        .unwrap_err();
        assert!(matches!(err, OciError::Unsupported { .. }));
        assert!(matches!(
            parse_document(b"{}", None, "m"),
            Err(OciError::BadManifest { .. })
        ));
        assert!(matches!(
            parse_document(b"\xff", None, "m"),
            Err(OciError::BadManifest { .. })
        ));
        let bad_digest = r#"{"manifests":[{"digest":"sha256:00","size":1}]}"#;
        assert!(parse_document(bad_digest.as_bytes(), None, "m").is_err());
    }

    #[test]
    fn reads_config_with_nulls() {
        let c = parse_config(
            br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Cmd":null,"Entrypoint":["/bin/sh"],"WorkingDir":"","Labels":{"k":"v"},"User":"1000"}}"#,
            "c",
        )
        .unwrap();
        assert_eq!(c.env, ["A=1"]);
        assert!(c.cmd.is_empty());
        assert_eq!(c.entrypoint, ["/bin/sh"]);
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(parse_config(b"{}", "c").unwrap(), ImageConfig::default());
    }
}
