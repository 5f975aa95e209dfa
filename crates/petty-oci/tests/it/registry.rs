//! Registry pulls from a real `docker-registry` on loopback, and through a token-auth front
//! that answers 401 with a Bearer challenge and proxies authorized requests to it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use petty_oci::{pull, Digest, ImageSource, OciError, PullOptions, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{check_image, fixture, have, run, Lines};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A registry process, killed on drop (also when a test panics).
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a registry and pushes the fixture to it as `test/busybox:1`.
async fn start_registry(layout: &Path) -> Option<Registry> {
    if !Path::new(REGISTRY).exists() {
        eprintln!("skipping: {REGISTRY} is not installed");
        return None;
    }
    if !have("skopeo") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        addr,
        _dir: dir,
    };
    let url = format!("http://{}/v2/", registry.addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not come up at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let layout = layout.to_owned();
    let dest = format!("docker://{}/test/busybox:1", registry.addr);
    tokio::task::spawn_blocking(move || {
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:t", layout.display()),
            &dest,
        ]))
    })
    .await
    .unwrap();
    Some(registry)
}

async fn pull_ref(
    reference: &str,
    store: &Store,
    opts: &PullOptions,
) -> (Result<petty_oci::Image, OciError>, Vec<String>) {
    let source: ImageSource = reference.parse().unwrap();
    let lines = Lines::default();
    let say = |l: &str| lines.say(l);
    let got = pull(&source, store, opts, &say).await;
    (got, lines.all())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_and_digest() {
    let Some(f) = fixture() else { return };
    let Some(registry) = start_registry(&f.layout()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions::default();
    let by_tag = format!("{}/test/busybox:1", registry.addr);
    let (image, lines) = pull_ref(&by_tag, &store, &opts).await;
    let image = image.unwrap();
    check_image(&image, &store);
    assert!(lines.iter().any(|l| l.contains("layer 2/2")), "{lines:?}");

    // By digest; the layers are cached now.
    let by_digest = format!("{}/test/busybox@{}", registry.addr, image.manifest_digest);
    let (again, lines) = pull_ref(&by_digest, &store, &opts).await;
    assert_eq!(again.unwrap(), image);
    assert_eq!(
        lines.iter().filter(|l| l.contains("(cached)")).count(),
        2,
        "{lines:?}"
    );

    // A digest the registry does not have.
    let wrong = format!(
        "{}/test/busybox@{}",
        registry.addr,
        Digest::of_bytes(b"not a manifest")
    );
    let err = pull_ref(&wrong, &store, &opts).await.0.unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("digest"), "{err}");

    // A repository that does not exist; a registry without a host named.
    let err = pull_ref(&format!("{}/test/nothing:1", registry.addr), &store, &opts)
        .await
        .0
        .unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err}");
    let err = pull_ref("test/busybox:1", &store, &opts)
        .await
        .0
        .unwrap_err();
    assert!(err.to_string().contains("image.default_registry"), "{err}");
    let with_default = PullOptions {
        default_registry: Some(registry.addr.clone()),
        ..PullOptions::default()
    };
    assert_eq!(
        pull_ref("test/busybox:1", &store, &with_default)
            .await
            .0
            .unwrap(),
        image
    );
}

/// A loopback front for the registry: Bearer token auth, then proxying. It also answers a
/// request for the manifest `sha256:000…0` with the real manifest, to test the digest check.
struct TokenFront {
    addr: String,
    token_requests: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
}

const TOKEN: &str = "petty-test-token";

async fn start_front(upstream: String, want_basic: Option<String>) -> TokenFront {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let token_requests = Arc::new(AtomicUsize::new(0));
    let unauthorized = Arc::new(AtomicUsize::new(0));
    let (tr, un, me) = (token_requests.clone(), unauthorized.clone(), addr.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (http, upstream, me, tr, un, want_basic) = (
                http.clone(),
                upstream.clone(),
                me.clone(),
                tr.clone(),
                un.clone(),
                want_basic.clone(),
            );
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    // A TLS handshake (the client tries HTTPS first): refused
                    // as a plain HTTP server does.
                    if buf.first() == Some(&0x16) {
                        let _ = sock.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
                        return;
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("/")
                    .to_owned();
                let header = |name: &str| {
                    head.split("\r\n").find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                };
                let (status, ctype, extra, body): (&str, String, String, Vec<u8>) = if path
                    .starts_with("/token")
                {
                    tr.fetch_add(1, Ordering::SeqCst);
                    let scope_ok = path.contains("scope=repository%3Atest%2Fbusybox%3Apull")
                        && path.contains("service=front");
                    let basic_ok = want_basic
                        .as_ref()
                        .is_none_or(|b| header("authorization").as_deref() == Some(b.as_str()));
                    if scope_ok && basic_ok {
                        (
                            "200 OK",
                            "application/json".into(),
                            String::new(),
                            format!("{{\"access_token\":\"{TOKEN}\"}}").into_bytes(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            "text/plain".into(),
                            String::new(),
                            b"bad token request".to_vec(),
                        )
                    }
                } else if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
                    un.fetch_add(1, Ordering::SeqCst);
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"front\",scope=\"repository:test/busybox:pull\"\r\n"
                    );
                    (
                        "401 Unauthorized",
                        "application/json".into(),
                        challenge,
                        b"{\"errors\":[]}".to_vec(),
                    )
                } else {
                    let zeros = format!("/manifests/sha256:{}", "0".repeat(64));
                    let upstream_path = path.replace(&zeros, "/manifests/1");
                    let mut req = http.get(format!("http://{upstream}{upstream_path}"));
                    if let Some(accept) = header("accept") {
                        req = req.header("accept", accept);
                    }
                    match req.send().await {
                        Ok(resp) => {
                            let status = if resp.status().is_success() {
                                "200 OK"
                            } else {
                                "404 Not Found"
                            };
                            let ctype = resp
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("application/octet-stream")
                                .to_owned();
                            (
                                status,
                                ctype,
                                String::new(),
                                resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                            )
                        }
                        Err(_) => (
                            "502 Bad Gateway",
                            "text/plain".into(),
                            String::new(),
                            Vec::new(),
                        ),
                    }
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    TokenFront {
        addr,
        token_requests,
        unauthorized,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_the_token_dance() {
    let Some(f) = fixture() else { return };
    let Some(registry) = start_registry(&f.layout()).await else {
        return;
    };
    let front = start_front(registry.addr.clone(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let (image, _) = pull_ref(
        &format!("{}/test/busybox:1", front.addr),
        &store,
        &PullOptions::default(),
    )
    .await;
    let image = image.unwrap();
    check_image(&image, &store);
    assert_eq!(
        front.token_requests.load(Ordering::SeqCst),
        1,
        "the token is cached for the pull"
    );
    assert_eq!(front.unauthorized.load(Ordering::SeqCst), 1);

    // The front serves the real manifest for sha256:000…0: the pull must refuse it.
    let lie = format!("{}/test/busybox@sha256:{}", front.addr, "0".repeat(64));
    let err = pull_ref(&lie, &store, &PullOptions::default())
        .await
        .0
        .unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_credentials_to_the_token_service() {
    let Some(f) = fixture() else { return };
    let Some(registry) = start_registry(&f.layout()).await else {
        return;
    };
    // "user:secret" in base64.
    let front = start_front(registry.addr.clone(), Some("Basic dXNlcjpzZWNyZXQ=".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let reference = format!("{}/test/busybox:1", front.addr);
    let err = pull_ref(&reference, &store, &PullOptions::default())
        .await
        .0
        .unwrap_err();
    assert!(matches!(err, OciError::Auth { .. }), "{err}");
    let opts = PullOptions {
        credentials: Some(("user".into(), "secret".into())),
        ..PullOptions::default()
    };
    pull_ref(&reference, &store, &opts).await.0.unwrap();
}
