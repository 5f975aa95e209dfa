//! Local sources: an OCI layout directory (`oci:DIR[:NAME]`), a tar of one
//! (`oci-archive:FILE[:NAME]`), and a `docker save` tar (`docker-archive:FILE[:REPO:TAG]`).
//!
//! Every blob is checked against its digest on its way into the store. An OCI archive's
//! blobs are all imported as the tar is read (its `index.json` may come last), checked
//! against their names; a Docker archive's files are hashed as they are imported, and the
//! image gets an OCI manifest made for it (so its `manifest_digest` is of that manifest).
//! Blocking: `pull` runs this on a blocking thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::OciError;
use crate::manifest::{self, Descriptor, Document, MAX_MANIFEST_BYTES};
use crate::registry::read_small_blob;
use crate::{
    check_manifest, human_bytes, image_of, keys, Image, ImageSource, Progress, PullOptions, Store,
    REF_NAME,
};

pub(crate) fn pull(
    source: &ImageSource,
    store: &Store,
    opts: &PullOptions,
    progress: Progress<'_>,
) -> Result<Image, OciError> {
    match source {
        ImageSource::OciLayout(p) => {
            let (dir, name) = split_name(p);
            let input = source.to_string();
            let index = read_capped_file(&dir.join("index.json"), &input)?;
            if !dir.join("oci-layout").is_file() {
                return Err(bad_source(
                    &input,
                    "it has no oci-layout file: is it an OCI layout directory?",
                ));
            }
            progress(&format!("reading {input}"));
            resolve(
                &index,
                name.as_deref(),
                &dir.join("blobs").join("sha256"),
                store,
                opts,
                progress,
                &input,
            )
        }
        ImageSource::OciArchive(p) => {
            let (file, name) = split_name(p);
            let input = source.to_string();
            progress(&format!("importing {input}"));
            let index = import_oci_archive(&file, store, opts, &input)?;
            let blobs = store.dir();
            resolve(
                &index,
                name.as_deref(),
                &blobs,
                store,
                opts,
                progress,
                &input,
            )
        }
        ImageSource::DockerArchive(p) => {
            let (file, name) = split_name(p);
            let input = source.to_string();
            progress(&format!("importing {input}"));
            docker_archive(&file, name.as_deref(), store, opts, progress, &input)
        }
        ImageSource::Registry(_) => Err(OciError::BadSource {
            input: source.to_string(),
            reason: "a registry reference is not a local source".into(),
        }),
    }
}

fn bad_source(input: &str, reason: impl Into<String>) -> OciError {
    OciError::BadSource {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// `PATH:NAME` when `PATH:NAME` itself does not exist but `PATH` does.
pub(crate) fn split_name(p: &Path) -> (PathBuf, Option<String>) {
    if p.exists() {
        return (p.to_owned(), None);
    }
    let s = p.to_string_lossy();
    if let Some((path, name)) = s.split_once(':') {
        if !name.is_empty() && Path::new(path).exists() {
            return (PathBuf::from(path), Some(name.to_owned()));
        }
    }
    (p.to_owned(), None)
}

fn read_capped(reader: &mut dyn Read, what: &str) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    reader
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(OciError::io_at(format!("reading {what}")))?;
    if out.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(OciError::Unsupported {
            what: format!("{what} is more than {}", human_bytes(MAX_MANIFEST_BYTES)),
        });
    }
    Ok(out)
}

fn read_capped_file(path: &Path, input: &str) -> Result<Vec<u8>, OciError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad_source(input, format!("{} does not exist", path.display())),
        _ => OciError::io_at(format!("opening {}", path.display()))(e),
    })?;
    read_capped(&mut file, &path.display().to_string())
}

/// Reads a blob of a layout, checking its size and digest.
fn read_blob(blobs: &Path, desc: &Descriptor, what: &str) -> Result<Vec<u8>, OciError> {
    if desc.size > MAX_MANIFEST_BYTES {
        return Err(OciError::Unsupported {
            what: format!(
                "{what} of {} (more than {})",
                human_bytes(desc.size),
                human_bytes(MAX_MANIFEST_BYTES)
            ),
        });
    }
    let bytes = read_capped_file(&blobs.join(desc.digest.hex()), what)?;
    if bytes.len() as u64 != desc.size {
        return Err(OciError::SizeMismatch {
            what: what.to_owned(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = Digest::of_bytes(&bytes);
    if actual != desc.digest {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Copies a layout's blob into the store, verified.
fn import(blobs: &Path, store: &Store, desc: &Descriptor, what: &str) -> Result<(), OciError> {
    if store.has(&desc.digest) {
        return Ok(());
    }
    let path = blobs.join(desc.digest.hex());
    let mut file = File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => OciError::NotFound {
            what: format!("{what} ({})", path.display()),
            hint: "the layout or archive is incomplete".into(),
        },
        _ => OciError::io_at(format!("opening {}", path.display()))(e),
    })?;
    store.put_reader(
        &mut file,
        Some((&desc.digest, desc.size)),
        desc.size,
        what,
        keys::MAX_IMAGE,
    )?;
    Ok(())
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
}

/// Picks the manifest of a layout's `index.json` and brings the image into the store.
fn resolve(
    index: &[u8],
    name: Option<&str>,
    blobs: &Path,
    store: &Store,
    opts: &PullOptions,
    progress: Progress<'_>,
    input: &str,
) -> Result<Image, OciError> {
    let platform = (opts.platform.0.as_str(), opts.platform.1.as_str());
    let entries = match manifest::parse_document(index, None, "index.json")? {
        Document::Index(entries) => entries,
        Document::Manifest { .. } => {
            return Err(bad_source(
                input,
                "its index.json is a manifest, not an index",
            ))
        }
    };
    let names = || {
        let v: Vec<&str> = entries.iter().filter_map(ref_name).collect();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let chosen = match name {
        Some(n) => entries
            .iter()
            .find(|d| ref_name(d) == Some(n))
            .ok_or_else(|| OciError::NotFound {
                what: format!("image {n:?} in {input}"),
                hint: format!("the names it has: {}", names()),
            })?,
        None if entries.len() == 1 => &entries[0],
        None if entries.is_empty() => {
            return Err(bad_source(input, "its index.json lists no image"))
        }
        None => match manifest::choose_platform(&entries, platform) {
            Ok(d) => d,
            Err(_) => {
                return Err(bad_source(
                    input,
                    format!(
                        "it holds {} images; hint: name one as {input}:NAME (names: {})",
                        entries.len(),
                        names()
                    ),
                ))
            }
        },
    };
    let mut desc = chosen.clone();
    let mut bytes = read_blob(blobs, &desc, "the manifest")?;
    let (config, layers) = loop {
        match manifest::parse_document(&bytes, None, "the manifest")? {
            Document::Manifest { config, layers } => break (config, layers),
            Document::Index(inner) => {
                if desc.digest != chosen.digest {
                    return Err(OciError::Unsupported {
                        what: "an index inside an index inside index.json".into(),
                    });
                }
                desc = manifest::choose_platform(&inner, platform)?.clone();
                let index_bytes = bytes;
                store.put_reader(
                    &mut &index_bytes[..],
                    None,
                    MAX_MANIFEST_BYTES,
                    "the index",
                    keys::MAX_IMAGE,
                )?;
                bytes = read_blob(blobs, &desc, "the platform's manifest")?;
            }
        }
    };
    check_manifest(&config, &layers, &opts.limits)?;
    let manifest_digest = desc.digest.clone();
    store.put_reader(
        &mut &bytes[..],
        Some((&manifest_digest, bytes.len() as u64)),
        MAX_MANIFEST_BYTES,
        "the manifest",
        keys::MAX_IMAGE,
    )?;
    import(blobs, store, &config, "the image config")?;
    let image_config =
        manifest::parse_config(&read_small_blob(store, &config.digest)?, "the image config")?;
    let n = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        // An archive's blobs were verified into the store as it was read:
        // "cached" would say nothing there.
        let cached = blobs != store.dir() && store.has(&layer.digest);
        import(blobs, store, layer, &format!("layer {}", layer.digest))?;
        progress(&format!(
            "layer {}/{n} {}… {}{}",
            i + 1,
            layer.digest.short(),
            human_bytes(layer.size),
            if cached { " (cached)" } else { "" }
        ));
    }
    Ok(image_of(
        manifest_digest,
        config.digest,
        image_config,
        &layers,
    ))
}

fn open_archive(path: &Path, input: &str) -> Result<tar::Archive<Box<dyn Read>>, OciError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad_source(input, format!("{} does not exist", path.display())),
        _ => OciError::io_at(format!("opening {}", path.display()))(e),
    })?;
    let reader = crate::unpack::layer_reader(file)
        .map_err(OciError::io_at(format!("reading {}", path.display())))?;
    Ok(tar::Archive::new(reader))
}

/// The archive member's path without `./`, or `None` when it climbs out.
fn member_path(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut parts: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The most blob bytes an archive may bring, beyond its layers' limit (configs, manifests).
const ARCHIVE_SLACK: u64 = 64 << 20;

/// Imports every blob of an OCI archive (checked against its name); returns `index.json`.
fn import_oci_archive(
    path: &Path,
    store: &Store,
    opts: &PullOptions,
    input: &str,
) -> Result<Vec<u8>, OciError> {
    let mut archive = open_archive(path, input)?;
    let read_err = || OciError::io_at(format!("reading {}", path.display()));
    let budget = opts.limits.max_image_bytes.saturating_add(ARCHIVE_SLACK);
    let mut total = 0u64;
    let mut index = None;
    for entry in archive.entries().map_err(read_err())? {
        let mut entry = entry.map_err(read_err())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(name) = member_path(&entry.path_bytes()) else {
            continue;
        };
        if name == "index.json" {
            index = Some(read_capped(&mut entry, "index.json")?);
            continue;
        }
        let Some(hex) = name.strip_prefix("blobs/sha256/") else {
            continue;
        };
        let Ok(digest) = format!("sha256:{hex}").parse::<Digest>() else {
            continue;
        };
        let size = entry.size();
        total = total.saturating_add(size);
        if total > budget {
            return Err(OciError::TooLarge {
                what: format!("{input} holds more than {} of blobs", human_bytes(budget)),
                limit: opts.limits.max_image_bytes,
                key: keys::MAX_IMAGE,
            });
        }
        if !store.has(&digest) {
            store.put_reader(
                &mut entry,
                Some((&digest, size)),
                size,
                &format!("blob {digest} of {input}"),
                keys::MAX_IMAGE,
            )?;
        }
    }
    index.ok_or_else(|| {
        bad_source(
            input,
            "it has no index.json: is it an OCI archive (not a docker archive)?",
        )
    })
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn docker_archive(
    path: &Path,
    name: Option<&str>,
    store: &Store,
    opts: &PullOptions,
    progress: Progress<'_>,
    input: &str,
) -> Result<Image, OciError> {
    let mut archive = open_archive(path, input)?;
    let read_err = || OciError::io_at(format!("reading {}", path.display()));
    let budget = opts.limits.max_image_bytes.saturating_add(ARCHIVE_SLACK);
    let mut total = 0u64;
    let mut files: HashMap<String, (Digest, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut manifest_json = None;
    for entry in archive.entries().map_err(read_err())? {
        let mut entry = entry.map_err(read_err())?;
        let Some(member) = member_path(&entry.path_bytes()) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            let base = if kind.is_symlink() {
                member.rsplit_once('/').map_or("", |(d, _)| d).to_owned()
            } else {
                String::new()
            };
            let joined = format!("{base}/{}", String::from_utf8_lossy(&target));
            if let Some(t) = member_path(joined.as_bytes()) {
                links.insert(member, t);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if member == "manifest.json" {
            manifest_json = Some(read_capped(&mut entry, "manifest.json")?);
            continue;
        }
        if member == "repositories" || member == "index.json" || member == "oci-layout" {
            continue;
        }
        total = total.saturating_add(entry.size());
        if total > budget {
            return Err(OciError::TooLarge {
                what: format!("{input} is more than {}", human_bytes(budget)),
                limit: opts.limits.max_image_bytes,
                key: keys::MAX_IMAGE,
            });
        }
        let got = store.put_reader(
            &mut entry,
            None,
            budget,
            &format!("{member} of {input}"),
            keys::MAX_IMAGE,
        )?;
        files.insert(member, got);
    }
    let manifest_json = manifest_json
        .ok_or_else(|| bad_source(input, "it has no manifest.json: is it a docker archive?"))?;
    let entries: Vec<DockerManifest> =
        serde_json::from_slice(&manifest_json).map_err(|e| OciError::BadManifest {
            what: format!("manifest.json of {input}"),
            reason: e.to_string(),
        })?;
    let entry = match name {
        Some(n) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == n))
            })
            .ok_or_else(|| OciError::NotFound {
                what: format!("image {n:?} in {input}"),
                hint: "name it as in the archive's RepoTags".into(),
            })?,
        None => {
            if entries.len() > 1 {
                progress(&format!(
                    "{input} holds {} images; taking the first",
                    entries.len()
                ));
            }
            entries
                .first()
                .ok_or_else(|| bad_source(input, "its manifest.json lists no image"))?
        }
    };
    let lookup = |member: &str| -> Result<(Digest, u64), OciError> {
        let mut m = member_path(member.as_bytes()).unwrap_or_default();
        for _ in 0..8 {
            if let Some(found) = files.get(&m) {
                return Ok(found.clone());
            }
            match links.get(&m) {
                Some(t) => m = t.clone(),
                None => break,
            }
        }
        Err(bad_source(
            input,
            format!("its manifest.json names {member:?}, which the archive lacks"),
        ))
    };
    let (config_digest, config_size) = lookup(&entry.config)?;
    let config = Descriptor {
        media_type: manifest::OCI_CONFIG.into(),
        digest: config_digest,
        size: config_size,
        platform: None,
        annotations: None,
    };
    let mut layers = Vec::with_capacity(entry.layers.len());
    for l in &entry.layers {
        let (digest, size) = lookup(l)?;
        let mut magic = [0u8; 4];
        let n = File::open(store.blob_path(&digest))
            .and_then(|mut f| f.read(&mut magic))
            .map_err(OciError::io_at(format!("reading layer {digest}")))?;
        let media_type = match &magic[..n] {
            [0x1f, 0x8b, ..] => manifest::OCI_LAYER_GZIP,
            [0x28, 0xb5, 0x2f, 0xfd] => manifest::OCI_LAYER_ZSTD,
            _ => manifest::OCI_LAYER_TAR,
        };
        layers.push(Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: None,
        });
    }
    check_manifest(&config, &layers, &opts.limits)?;
    let image_config =
        manifest::parse_config(&read_small_blob(store, &config.digest)?, "the image config")?;
    let manifest_bytes = manifest::oci_manifest_json(&config, &layers);
    let (manifest_digest, _) = store.put_reader(
        &mut &manifest_bytes[..],
        None,
        MAX_MANIFEST_BYTES,
        "the manifest",
        keys::MAX_IMAGE,
    )?;
    let n = layers.len();
    for (i, l) in layers.iter().enumerate() {
        progress(&format!(
            "layer {}/{n} {}… {}",
            i + 1,
            l.digest.short(),
            human_bytes(l.size)
        ));
    }
    Ok(image_of(
        manifest_digest,
        config.digest,
        image_config,
        &layers,
    ))
}
