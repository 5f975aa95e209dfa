//! Image references (`host[:port]/repo/path[:tag][@sha256:…]`) and image sources
//! (`oci:`, `oci-archive:`, `docker-archive:`, else a registry reference).
//!
//! No public registry is built in: a reference without a registry host (its first
//! component has no `.` or `:` and is not `localhost`) is completed with the
//! `image.default_registry` setting, and without one it is refused.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::OciError;

/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry speaking the HTTP API v2.
    Registry(Reference),
    /// A tar of an OCI layout (`oci-archive:PATH`, as `skopeo copy` writes it).
    /// `PATH:NAME` picks the manifest whose `org.opencontainers.image.ref.name` is NAME
    /// when `PATH` itself does not exist.
    OciArchive(PathBuf),
    /// A `docker save` / `podman save` tar (`docker-archive:PATH`).
    DockerArchive(PathBuf),
    /// An OCI layout directory (`oci:DIR`, or `oci:DIR:NAME` as for `OciArchive`).
    OciLayout(PathBuf),
}

impl ImageSource {
    /// The host file or directory a local source reads (`None` for a
    /// registry): its path without a `:NAME` suffix.
    pub fn local_path(&self) -> Option<PathBuf> {
        match self {
            ImageSource::Registry(_) => None,
            ImageSource::OciArchive(p)
            | ImageSource::DockerArchive(p)
            | ImageSource::OciLayout(p) => Some(crate::local::split_name(p).0),
        }
    }
}

impl FromStr for ImageSource {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = |rest: &str, kind: &str| {
            if rest.is_empty() {
                Err(OciError::BadSource {
                    input: s.to_owned(),
                    reason: format!("{kind}: needs a path, as in {kind}:./image.tar"),
                })
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            return Ok(ImageSource::OciArchive(path(rest, "oci-archive")?));
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            return Ok(ImageSource::DockerArchive(path(rest, "docker-archive")?));
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            return Ok(ImageSource::OciLayout(path(rest, "oci")?));
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        Ok(ImageSource::Registry(rest.parse()?))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(r) => r.fmt(f),
            ImageSource::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            ImageSource::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
            ImageSource::OciLayout(p) => write!(f, "oci:{}", p.display()),
        }
    }
}

/// A reference to an image in a registry.
///
/// `registry` is empty when the text named no registry host; [`Reference::with_default_registry`]
/// (which `pull` calls with `PullOptions::default_registry`) fills it in or refuses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, or empty when not named.
    pub registry: String,
    /// The repository path, such as `team/app`.
    pub repository: String,
    /// The tag; `None` with a digest, or [`DEFAULT_TAG`] when neither was given.
    pub tag: Option<String>,
    /// The manifest digest, when pinned.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `s`, completing a reference without a registry host with `default_registry`.
    pub fn parse(s: &str, default_registry: Option<&str>) -> Result<Reference, OciError> {
        s.parse::<Reference>()?
            .with_default_registry(s, default_registry)
    }

    /// Fills in an empty registry with `default_registry`, or says how to name one.
    pub fn with_default_registry(
        mut self,
        input: &str,
        default_registry: Option<&str>,
    ) -> Result<Reference, OciError> {
        if self.registry.is_empty() {
            match default_registry {
                Some(host) if !host.is_empty() => {
                    check_host(host).map_err(|reason| OciError::BadReference {
                        input: host.to_owned(),
                        reason: format!("image.default_registry: {reason}"),
                    })?;
                    self.registry = host.to_owned();
                }
                _ => {
                    return Err(OciError::BadReference {
                        input: input.to_owned(),
                        reason: "it names no registry host; hint: write it as host[:port]/repository[:tag], \
                                 or set `image.default_registry`"
                            .into(),
                    })
                }
            }
        }
        Ok(self)
    }

    /// The tag or digest to ask the registry for (the digest wins).
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// Whether the registry host is a loopback one (127.0.0.0/8, `::1`, `localhost`).
    pub fn is_loopback(&self) -> bool {
        host_is_loopback(&self.registry)
    }
}

/// Whether `host[:port]` names a loopback address.
pub(crate) fn host_is_loopback(host_port: &str) -> bool {
    let host = strip_port(host_port);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split_once(']').map_or(host_port, |(h, _)| h);
    }
    match host_port.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| OciError::BadReference {
            input: s.chars().take(300).collect(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > 1024 {
            return Err(bad("it is longer than 1024 characters"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest = d.parse::<Digest>().map_err(|e| {
                    bad(&format!(
                        "{}; a pinned image is name@sha256:<64 hex digits>",
                        e.reason
                    ))
                })?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        let (registry, rest) = match name_tag.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest)
            }
            _ => ("", name_tag),
        };
        if !registry.is_empty() {
            check_host(registry).map_err(|r| bad(&r))?;
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (rest, None),
        };
        check_repository(repository).map_err(|r| bad(&r))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|r| bad(&r))?;
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.registry.is_empty() {
            write!(f, "{}/", self.registry)?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_host(host_port: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry host {host_port:?} has an unclosed '['"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "registry host {host_port:?} is not an IPv6 address in brackets"
            ));
        }
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(port) => (h, Some(port)),
                None => return Err(format!("registry host {host_port:?} has junk after ']'")),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("registry port {port:?} is not a port number"));
        }
    }
    if !host_port.starts_with('[') {
        let labels_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return Err(format!("registry host {host:?} is not a valid host name"));
        }
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is missing".into());
    }
    if repo.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for comp in repo.split('/') {
        let ok = !comp.is_empty()
            && comp
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && comp
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && comp
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "repository component {comp:?} must be lowercase letters and digits, \
                 separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be up to 128 letters, digits, '_', '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn r(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_hosts_repositories_tags_and_digests() {
        let a = r("127.0.0.1:5000/test/busybox:1");
        assert_eq!(a.registry, "127.0.0.1:5000");
        assert_eq!(a.repository, "test/busybox");
        assert_eq!(a.tag.as_deref(), Some("1"));
        assert_eq!(a.digest, None);

        let b = r(&format!("registry.example/a/b/c@{D}"));
        assert_eq!(b.registry, "registry.example");
        assert_eq!(b.repository, "a/b/c");
        assert_eq!(b.tag, None);
        assert_eq!(b.digest.as_ref().map(|d| d.to_string()).as_deref(), Some(D));
        assert_eq!(b.target(), D);

        let c = r(&format!("localhost/app:v1.2_x@{D}"));
        assert_eq!(
            (c.registry.as_str(), c.repository.as_str()),
            ("localhost", "app")
        );
        assert_eq!(c.tag.as_deref(), Some("v1.2_x"));
        assert!(c.digest.is_some());
        assert_eq!(c.target(), D, "the digest wins over the tag");

        let d = r("localhost:8080/app");
        assert_eq!(d.registry, "localhost:8080");
        assert_eq!(d.tag.as_deref(), Some("latest"));
        assert!(d.is_loopback());

        let e = r("[::1]:5000/x/y:z");
        assert_eq!(e.registry, "[::1]:5000");
        assert!(e.is_loopback());

        let f = r("example.com/app");
        assert!(!f.is_loopback());
        assert_eq!(f.to_string(), "example.com/app:latest");
        assert_eq!(c.to_string(), format!("localhost/app:v1.2_x@{D}"));
    }

    #[test]
    fn a_first_component_without_dot_or_colon_is_not_a_host() {
        let a = r("team/app:3");
        assert_eq!(a.registry, "");
        assert_eq!(a.repository, "team/app");
        let b = r("busybox");
        assert_eq!(
            (b.registry.as_str(), b.repository.as_str()),
            ("", "busybox")
        );

        let err = Reference::parse("team/app", None).unwrap_err().to_string();
        assert!(err.contains("image.default_registry"), "{err}");
        let c = Reference::parse("team/app", Some("mirror.internal:5000")).unwrap();
        assert_eq!(c.registry, "mirror.internal:5000");
        assert_eq!(c.repository, "team/app");
        let kept = Reference::parse("other.host/app", Some("mirror.internal")).unwrap();
        assert_eq!(kept.registry, "other.host");
        assert!(Reference::parse("app", Some("bad host")).is_err());
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Host.example/App",
            "host.example/app:",
            "host.example/app:-x",
            "host.example/app@sha256:abc",
            "host.example/app@md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "host.example//app",
            "host.example/app/",
            "host.example:0/app",
            "host.example:99999/app",
            "host.example:x/app",
            "-host.example/app",
            "[::1/app",
            "[nope]:5000/app",
            "host.example/ap p",
            "host.example/.app",
            "host.example/app:tag:more",
            "localhost/",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} was accepted");
        }
        let long = format!("host.example/app:{}", "a".repeat(129));
        assert!(long.parse::<Reference>().is_err());
    }

    #[test]
    fn parses_sources() {
        let s = |x: &str| x.parse::<ImageSource>().unwrap();
        assert_eq!(
            s("oci-archive:/tmp/a.tar"),
            ImageSource::OciArchive("/tmp/a.tar".into())
        );
        assert_eq!(
            s("docker-archive:rel/b.tar"),
            ImageSource::DockerArchive("rel/b.tar".into())
        );
        assert_eq!(
            s("oci:/tmp/layout:tag"),
            ImageSource::OciLayout("/tmp/layout:tag".into())
        );
        match s("docker://localhost:5000/a:b") {
            ImageSource::Registry(r) => assert_eq!(r.registry, "localhost:5000"),
            other => panic!("{other:?}"),
        }
        match s("team/app") {
            ImageSource::Registry(r) => assert_eq!(r.registry, ""),
            other => panic!("{other:?}"),
        }
        assert!("oci:".parse::<ImageSource>().is_err());
        assert!("oci-archive:".parse::<ImageSource>().is_err());
        assert!("docker-archive:".parse::<ImageSource>().is_err());
        assert!("NOPE".parse::<ImageSource>().is_err());
        assert_eq!(s("oci:/x").to_string(), "oci:/x");
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:5000",
            "[::1]",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(host_is_loopback(h), "{h}");
        }
        for h in [
            "10.0.0.1:5000",
            "example.com",
            "[::2]:5000",
            "localhost.example",
        ] {
            assert!(!host_is_loopback(h), "{h}");
        }
    }
}
