//! The registry client: HTTP API v2 manifests and blobs, `WWW-Authenticate` challenges
//! (Bearer tokens, cached for the pull, and Basic), redirects, and bounded reads.
//!
//! HTTPS (the system's certificate authorities and `image.ca_file`'s), as Docker does; a
//! loopback registry or one of `image.insecure_registries` that does not speak HTTPS is
//! reached over plain HTTP instead. No other registry ever is.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::OciError;
use crate::manifest::{self, Descriptor, Document, MAX_MANIFEST_BYTES};
use crate::reference::{host_is_loopback, Reference};
use crate::{check_manifest, human_bytes, image_of, Image, Progress, PullOptions, Store};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the HTTPS probe waits for a registry that may speak only plain
/// HTTP and stay silent on a TLS handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TOKEN_BYTES: u64 = 1 << 20;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
    Other(String),
}

/// Parses the first challenge of a `WWW-Authenticate` header.
pub(crate) fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        match get("realm") {
            Some(realm) => Challenge::Bearer {
                realm,
                service: get("service"),
                scope: get("scope"),
            },
            None => Challenge::Other("Bearer without a realm".into()),
        }
    } else if scheme.eq_ignore_ascii_case("basic") {
        Challenge::Basic
    } else {
        Challenge::Other(scheme.chars().take(40).collect())
    }
}

/// `k=v, k2="quoted, \"v\""` as pairs.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        if chars.next() != Some('=') {
            // A token without a value (or the end): skip it.
            if chars.peek().is_none() {
                return out;
            }
            continue;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        out.push((key.trim().to_owned(), value));
        if out.len() > 32 {
            return out;
        }
    }
}

enum Auth {
    Anonymous,
    Basic,
    Bearer(String),
}

struct Client<'a> {
    /// The user and password for this registry, if any.
    creds: Option<&'a (String, String)>,
    http: reqwest::Client,
    base: String,
    reference: &'a Reference,
    opts: &'a PullOptions,
    auth: Auth,
}

/// Whether `host_port` may be reached over plain HTTP.
fn http_allowed(host_port: &str, opts: &PullOptions) -> bool {
    host_is_loopback(host_port)
        || opts
            .insecure_registries
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host_port))
}

/// Why `host` could not be reached over HTTPS, and what to do.
fn https_failed(host: &str, url: &str, source: reqwest::Error) -> OciError {
    use std::error::Error as _;
    let mut cause = source.to_string();
    let mut next = source.source();
    while let Some(e) = next {
        cause = format!("{cause}: {e}");
        next = e.source();
    }
    OciError::Tls {
        what: format!(
            "cannot reach registry {host} over HTTPS ({url}): {cause}; hint: if its certificate is signed by a \
             private authority, set `image.ca_file`; if it speaks only plain HTTP, add {host:?} to \
             `image.insecure_registries` (only where the network is trusted)"
        ),
    }
}

impl<'a> Client<'a> {
    fn new(reference: &'a Reference, opts: &'a PullOptions) -> Result<Client<'a>, OciError> {
        let mut builder = reqwest::Client::builder();
        if let Some(file) = &opts.ca_file {
            let pem = std::fs::read(file).map_err(|e| OciError::Tls {
                what: format!(
                    "cannot read the certificate authorities of `image.ca_file` ({}): {e}",
                    file.display()
                ),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| OciError::Tls {
                what: format!(
                    "`image.ca_file` ({}) is not a PEM file of certificates: {e}",
                    file.display()
                ),
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("petty-oci/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| OciError::Transport {
                url: reference.registry.clone(),
                source,
            })?;
        let creds = opts
            .registry_credentials
            .get(&reference.registry)
            .or(opts.credentials.as_ref());
        Ok(Client {
            creds,
            http,
            base: format!("https://{}", reference.registry),
            reference,
            opts,
            auth: Auth::Anonymous,
        })
    }

    /// Settles the scheme: HTTPS when the registry answers it (any status),
    /// else plain HTTP where that is allowed.
    async fn choose_scheme(&mut self) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let probe = self.http.get(&url).timeout(PROBE_TIMEOUT).send().await;
        match probe {
            Ok(_) => Ok(()),
            Err(_) if http_allowed(&self.reference.registry, self.opts) => {
                self.base = format!("http://{}", self.reference.registry);
                Ok(())
            }
            Err(e) => Err(https_failed(&self.reference.registry, &url, e)),
        }
    }

    fn request(&self, url: &str, accept: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        match &self.auth {
            Auth::Anonymous => req,
            Auth::Basic => match self.creds {
                Some((user, pass)) => req.basic_auth(user, Some(pass)),
                None => req,
            },
            Auth::Bearer(token) => req.header(AUTHORIZATION, format!("Bearer {token}")),
        }
    }

    /// GETs `url`, answering one auth challenge; returns a successful response.
    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        what: &str,
        small: bool,
    ) -> Result<reqwest::Response, OciError> {
        let mut challenged = false;
        loop {
            let mut req = self.request(url, accept);
            if small {
                req = req.timeout(SMALL_REQUEST_TIMEOUT);
            }
            let resp = req.send().await.map_err(|source| OciError::Transport {
                url: url.to_owned(),
                source,
            })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let header = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                self.authenticate(&header).await?;
                continue;
            }
            return Err(self.status_error(resp, url, what).await);
        }
    }

    async fn status_error(&self, resp: reqwest::Response, url: &str, what: &str) -> OciError {
        let status = resp.status();
        let detail = read_capped(resp, 512, url)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OciError::Auth {
                registry: self.reference.registry.clone(),
                reason: format!(
                    "HTTP {} for {what}; hint: {}",
                    status.as_u16(),
                    if self.creds.is_some() {
                        "check the user and password, and that they may pull this repository"
                    } else {
                        "the repository may be private: log in with `skopeo login` or `podman login` \
                         (Petty reads their auth.json, or `image.auth_file`)"
                    }
                ),
            },
            StatusCode::NOT_FOUND => OciError::NotFound {
                what: format!(
                    "{what} in {}/{}",
                    self.reference.registry, self.reference.repository
                ),
                hint: "hint: check the repository, tag and digest".into(),
            },
            _ => OciError::Http {
                url: url.to_owned(),
                status: status.as_u16(),
                detail: detail.chars().take(300).collect(),
            },
        }
    }

    async fn authenticate(&mut self, header: &str) -> Result<(), OciError> {
        let registry = self.reference.registry.clone();
        match parse_challenge(header) {
            Challenge::Basic => {
                if self.creds.is_none() {
                    return Err(OciError::Auth {
                        registry,
                        reason: "it asks for a user and password (Basic); hint: log in with \
                                 `skopeo login` or `podman login` (Petty reads their auth.json, \
                                 or `image.auth_file`)"
                            .into(),
                    });
                }
                self.auth = Auth::Basic;
                Ok(())
            }
            Challenge::Bearer { realm, service, .. } => {
                let mut url = Url::parse(&realm).map_err(|e| OciError::Auth {
                    registry: registry.clone(),
                    reason: format!("its token realm {realm:?} is not a URL ({e})"),
                })?;
                let realm_host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    (None, _) => String::new(),
                };
                match url.scheme() {
                    "https" => {}
                    "http" if http_allowed(&realm_host, self.opts) => {}
                    "http" => {
                        return Err(OciError::Auth {
                            registry,
                            reason: format!(
                                "its token realm {realm} is plain HTTP, which would send credentials \
                                 unencrypted; hint: add {realm_host:?} to `image.insecure_registries` \
                                 only if that network is trusted"
                            ),
                        })
                    }
                    other => {
                        return Err(OciError::Auth {
                            registry,
                            reason: format!("its token realm has the scheme {other:?}"),
                        })
                    }
                }
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.append_pair(
                        "scope",
                        &format!("repository:{}:pull", self.reference.repository),
                    );
                }
                let mut req = self.http.get(url.clone()).timeout(SMALL_REQUEST_TIMEOUT);
                if let Some((user, pass)) = self.creds {
                    req = req.basic_auth(user, Some(pass));
                }
                let resp = req.send().await.map_err(|source| OciError::Transport {
                    url: url.to_string(),
                    source,
                })?;
                if !resp.status().is_success() {
                    return Err(OciError::Auth {
                        registry,
                        reason: format!(
                            "its token service {realm} answered HTTP {}; hint: check the credentials",
                            resp.status().as_u16()
                        ),
                    });
                }
                let body = read_capped(resp, MAX_TOKEN_BYTES, url.as_str()).await?;
                #[derive(Deserialize)]
                struct TokenAnswer {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let answer: TokenAnswer =
                    serde_json::from_slice(&body).map_err(|e| OciError::Auth {
                        registry: registry.clone(),
                        reason: format!("its token service answered no JSON token ({e})"),
                    })?;
                let token = answer
                    .token
                    .or(answer.access_token)
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| OciError::Auth {
                        registry: registry.clone(),
                        reason: "its token service answered without a usable token".into(),
                    })?;
                self.auth = Auth::Bearer(token);
                Ok(())
            }
            Challenge::Other(what) => Err(OciError::Auth {
                registry,
                reason: if header.is_empty() {
                    "HTTP 401 without a WWW-Authenticate challenge".into()
                } else {
                    format!("it asks for an authentication scheme Petty does not speak ({what})")
                },
            }),
        }
    }

    async fn manifest(&mut self, target: &str) -> Result<(Vec<u8>, Option<String>), OciError> {
        let url = format!(
            "{}/v2/{}/manifests/{target}",
            self.base, self.reference.repository
        );
        let what = format!("manifest {target}");
        let resp = self.get(&url, Some(manifest::ACCEPT), &what, true).await?;
        let content_type = content_type(resp.headers());
        let bytes = read_capped(resp, MAX_MANIFEST_BYTES, &url).await?;
        Ok((bytes, content_type))
    }

    /// Streams the blob `desc` into the store, checking size and digest as it comes.
    async fn blob(
        &mut self,
        store: &Store,
        desc: &Descriptor,
        label: &str,
        progress: Progress<'_>,
    ) -> Result<(), OciError> {
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.base, self.reference.repository, desc.digest
        );
        let what = format!("blob {}", desc.digest);
        let mut resp = self.get(&url, None, &what, false).await?;
        let mut tmp = store.temp()?;
        let mut last = Instant::now();
        while let Some(chunk) = resp.chunk().await.map_err(|source| OciError::Transport {
            url: url.clone(),
            source,
        })? {
            let got = tmp.len() + chunk.len() as u64;
            if got > desc.size {
                return Err(OciError::SizeMismatch {
                    what: what.clone(),
                    expected: desc.size,
                    actual: got,
                });
            }
            tmp.write(&chunk)?;
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                progress(&format!(
                    "{label} {} / {}",
                    human_bytes(got),
                    human_bytes(desc.size)
                ));
            }
        }
        let (store, desc) = (store.clone(), desc.clone());
        tokio::task::spawn_blocking(move || {
            tmp.commit(&store, Some((&desc.digest, desc.size)), &what)
                .map(|_| ())
        })
        .await
        .map_err(|e| {
            OciError::Io(std::io::Error::other(format!(
                "the blob commit task failed: {e}"
            )))
        })?
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
}

async fn read_capped(
    mut resp: reqwest::Response,
    cap: u64,
    url: &str,
) -> Result<Vec<u8>, OciError> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_big(url, cap));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| OciError::Transport {
        url: url.to_owned(),
        source,
    })? {
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(too_big(url, cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn too_big(url: &str, cap: u64) -> OciError {
    OciError::Unsupported {
        what: format!(
            "the answer to {url} is more than {}, which no manifest, config or token needs",
            human_bytes(cap)
        ),
    }
}

fn verify(bytes: &[u8], expected: &Digest, what: &str) -> Result<Digest, OciError> {
    let actual = Digest::of_bytes(bytes);
    if &actual != expected {
        return Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(actual)
}

pub(crate) async fn pull(
    reference: &Reference,
    store: &Store,
    opts: &PullOptions,
    progress: Progress<'_>,
) -> Result<Image, OciError> {
    let mut client = Client::new(reference, opts)?;
    client.choose_scheme().await?;
    progress(&format!("pulling {reference} ({})", client.base));
    let (mut bytes, mut ctype) = client.manifest(&reference.target()).await?;
    if let Some(d) = &reference.digest {
        verify(&bytes, d, &format!("the manifest of {reference}"))?;
    }
    let (config, layers) = match manifest::parse_document(&bytes, ctype.as_deref(), "the manifest")?
    {
        Document::Manifest { config, layers } => (config, layers),
        Document::Index(entries) => {
            let platform = (opts.platform.0.as_str(), opts.platform.1.as_str());
            let chosen = manifest::choose_platform(&entries, platform)?.clone();
            progress(&format!(
                "{}/{}: manifest {}",
                platform.0, platform.1, chosen.digest
            ));
            if chosen.size > MAX_MANIFEST_BYTES {
                return Err(too_big(&chosen.digest.to_string(), MAX_MANIFEST_BYTES));
            }
            (bytes, ctype) = client.manifest(&chosen.digest.to_string()).await?;
            verify(&bytes, &chosen.digest, "the platform's manifest")?;
            match manifest::parse_document(&bytes, ctype.as_deref(), "the platform's manifest")? {
                Document::Manifest { config, layers } => (config, layers),
                Document::Index(_) => {
                    return Err(OciError::Unsupported {
                        what: "an index inside an index".into(),
                    })
                }
            }
        }
    };
    let manifest_digest = Digest::of_bytes(&bytes);
    check_manifest(&config, &layers, &opts.limits)?;
    if !store.has(&manifest_digest) {
        store.put_reader(
            &mut &bytes[..],
            Some((&manifest_digest, bytes.len() as u64)),
            MAX_MANIFEST_BYTES,
            "the manifest",
            crate::keys::MAX_IMAGE,
        )?;
    }
    if !store.has(&config.digest) {
        client.blob(store, &config, "config", progress).await?;
    }
    let config_bytes = read_small_blob(store, &config.digest)?;
    let image_config = manifest::parse_config(&config_bytes, "the image config")?;
    pull_layers(&mut client, store, &layers, progress).await?;
    Ok(image_of(
        manifest_digest,
        config.digest,
        image_config,
        &layers,
    ))
}

async fn pull_layers(
    client: &mut Client<'_>,
    store: &Store,
    layers: &[Descriptor],
    progress: Progress<'_>,
) -> Result<(), OciError> {
    let n = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        let label = format!("layer {}/{n} {}…", i + 1, layer.digest.short());
        if store.has(&layer.digest) {
            progress(&format!("{label} {} (cached)", human_bytes(layer.size)));
            continue;
        }
        progress(&format!("{label} {} downloading", human_bytes(layer.size)));
        client.blob(store, layer, &label, progress).await?;
        progress(&format!("{label} {} done", human_bytes(layer.size)));
    }
    Ok(())
}

/// A config (or other small blob) from the store.
pub(crate) fn read_small_blob(store: &Store, digest: &Digest) -> Result<Vec<u8>, OciError> {
    let path = store.blob_path(digest);
    let meta =
        std::fs::metadata(&path).map_err(OciError::io_at(format!("reading {}", path.display())))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(too_big(&digest.to_string(), MAX_MANIFEST_BYTES));
    }
    std::fs::read(&path).map_err(OciError::io_at(format!("reading {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:5001/token",service="registry.test",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://127.0.0.1:5001/token".into(),
                service: Some("registry.test".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        let c = parse_challenge(
            r#"bearer  Realm = "http://x/t" , error="insufficient_scope", service=plain"#,
        );
        match c {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                assert_eq!(realm, "http://x/t");
                assert_eq!(service.as_deref(), Some("plain"));
                assert_eq!(scope, None);
            }
            other => panic!("{other:?}"),
        }
        let c = parse_challenge(r#"Bearer realm="http://x/t\"q\"",service="""#);
        assert!(
            matches!(c, Challenge::Bearer { realm, service: Some(s), .. } if realm == "http://x/t\"q\"" && s.is_empty())
        );
    }

    #[test]
    fn parses_other_challenges_and_junk() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Challenge::Basic
        );
        assert_eq!(parse_challenge("basic"), Challenge::Basic);
        assert!(matches!(parse_challenge(""), Challenge::Other(_)));
        assert!(matches!(
            parse_challenge("Bearer service=x"),
            Challenge::Other(_)
        ));
        assert!(matches!(
            parse_challenge("Negotiate abc"),
            Challenge::Other(_)
        ));
        for junk in [
            "Bearer realm",
            "Bearer realm=\"unterminated",
            "Bearer ,,,=,=\"",
            "Bearer =x",
            "Bearer a=b=c",
        ] {
            let _ = parse_challenge(junk);
        }
        assert!(
            matches!(parse_challenge("Bearer realm=\"unterminated"), Challenge::Bearer { realm, .. } if realm == "unterminated")
        );
    }

    #[test]
    fn plain_http_only_where_allowed() {
        let mut opts = PullOptions::default();
        assert!(http_allowed("127.0.0.1:5000", &opts));
        assert!(http_allowed("localhost", &opts));
        assert!(!http_allowed("registry.internal:5000", &opts));
        opts.insecure_registries
            .push("registry.internal:5000".into());
        assert!(http_allowed("registry.internal:5000", &opts));
        let r: Reference = "example.com/app:1".parse().unwrap();
        let defaults = PullOptions::default();
        let c = Client::new(&r, &defaults).unwrap();
        assert_eq!(c.base, "https://example.com");
    }
}
