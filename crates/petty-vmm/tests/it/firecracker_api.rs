//! Every request the Firecracker backend sends, checked against
//! Firecracker's own API spec (`tests/data/firecracker-api.yaml`): the path
//! and method exist, and the body satisfies the schema (required fields,
//! types, enums, bounds, no unknown fields: Firecracker rejects those). And
//! the HTTP client against a unix-socket server that stands in for
//! Firecracker's API in these tests only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use petty_vmm::firecracker::{
    boot_sequence, patch_drive, pause, resume, snapshot_create, snapshot_load, ApiClient, ApiError,
    BootSpec, LoadSpec, Network, Request,
};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Spec(Yaml);

impl Spec {
    pub fn load() -> Self {
        // A copy in the repository (tests/data/README.md says whence).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/firecracker-api.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("reading Firecracker's API spec at {}: {e}", path.display())
        });
        Spec(serde_yaml::from_str(&text).unwrap())
    }

    fn get<'a>(v: &'a Yaml, key: &str) -> Option<&'a Yaml> {
        v.as_mapping()?.get(Yaml::String(key.into()))
    }

    /// The operation for `method path`, matching `{param}` segments.
    fn operation(&self, method: &str, path: &str) -> Result<&Yaml, String> {
        let paths = Self::get(&self.0, "paths").unwrap().as_mapping().unwrap();
        let want: Vec<&str> = path.split('/').collect();
        for (template, ops) in paths {
            let t: Vec<&str> = template.as_str().unwrap().split('/').collect();
            let matches = t.len() == want.len()
                && t.iter()
                    .zip(&want)
                    .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')));
            if matches {
                return Self::get(ops, &method.to_lowercase())
                    .ok_or_else(|| format!("{path} has no {method} in the spec"));
            }
        }
        Err(format!("{path} is not in the spec"))
    }

    fn resolve<'a>(&'a self, schema: &'a Yaml) -> &'a Yaml {
        match Self::get(schema, "$ref").and_then(Yaml::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/definitions/");
                let defs = Self::get(&self.0, "definitions").unwrap();
                self.resolve(
                    Self::get(defs, name).unwrap_or_else(|| panic!("no definition {name}")),
                )
            }
            None => schema,
        }
    }

    /// Checks `req` against the spec; the first violation found.
    pub fn check(&self, req: &Request) -> Result<(), String> {
        let op = self.operation(req.method, &req.path)?;
        let params = Self::get(op, "parameters").and_then(Yaml::as_sequence);
        let body_param = params.and_then(|ps| {
            ps.iter()
                .find(|p| Self::get(p, "in").and_then(Yaml::as_str) == Some("body"))
        });
        match (body_param, &req.body) {
            (Some(p), Some(body)) => self.validate(Self::get(p, "schema").unwrap(), body, "body"),
            (Some(_), None) => Err(format!("{} {} needs a body", req.method, req.path)),
            (None, Some(_)) => Err(format!("{} {} takes no body", req.method, req.path)),
            (None, None) => Ok(()),
        }
    }

    fn validate(&self, schema: &Yaml, v: &Json, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(options) = Self::get(schema, "enum").and_then(Yaml::as_sequence) {
            let allowed: Vec<String> = options
                .iter()
                .map(|o| {
                    o.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{o:?}"))
                })
                .collect();
            let got = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            if !allowed.contains(&got) {
                return Err(format!("{at}: {got:?} is not one of {allowed:?}"));
            }
        }
        let bound = |key: &str| Self::get(schema, key).and_then(Yaml::as_i64);
        match Self::get(schema, "type").and_then(Yaml::as_str) {
            Some("object") => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected an object"))?;
                let props = Self::get(schema, "properties").and_then(Yaml::as_mapping);
                for req in Self::get(schema, "required")
                    .and_then(Yaml::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let name = req.as_str().unwrap();
                    if !obj.contains_key(name) {
                        return Err(format!("{at}: required field {name} is missing"));
                    }
                }
                for (key, value) in obj {
                    let prop = props
                        .and_then(|p| p.get(Yaml::String(key.clone())))
                        .ok_or_else(|| format!("{at}: unknown field {key}"))?;
                    self.validate(prop, value, &format!("{at}.{key}"))?;
                }
                Ok(())
            }
            Some("string") => v
                .is_string()
                .then_some(())
                .ok_or_else(|| format!("{at}: expected a string")),
            Some("boolean") => v
                .is_boolean()
                .then_some(())
                .ok_or_else(|| format!("{at}: expected a boolean")),
            Some("integer") => {
                let n = v
                    .as_i64()
                    .ok_or_else(|| format!("{at}: expected an integer"))?;
                if bound("minimum").is_some_and(|m| n < m)
                    || bound("maximum").is_some_and(|m| n > m)
                {
                    return Err(format!("{at}: {n} is out of bounds"));
                }
                Ok(())
            }
            Some("array") => {
                let items = Self::get(schema, "items").unwrap();
                for (i, item) in v
                    .as_array()
                    .ok_or_else(|| format!("{at}: expected an array"))?
                    .iter()
                    .enumerate()
                {
                    self.validate(items, item, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn spec_for_boot(tap: Option<&str>, track_dirty_pages: bool) -> BootSpec {
    BootSpec {
        kernel: "/var/cache/petty/vmlinux".into(),
        boot_args: "console=ttyS0 reboot=k panic=1 init=/sbin/petty-agent".into(),
        // Relative, as the backend sends them: resolved in the VM's own
        // directory, so a snapshot names no particular VM's files.
        rootfs: "rootfs.ext4".into(),
        memory_mib: 256,
        vcpus: 2,
        vsock_cid: 3,
        vsock_uds: "vsock.sock".into(),
        network: tap.map(|tap| Network {
            tap: tap.into(),
            guest_mac: "06:00:12:34:56:78".into(),
        }),
        track_dirty_pages,
    }
}

fn load_spec(tap: Option<&str>, track_dirty_pages: bool) -> LoadSpec {
    LoadSpec {
        state: "/s/state".into(),
        memory: "/s/memory".into(),
        vsock_uds: "vsock.sock".into(),
        track_dirty_pages,
        tap: tap.map(str::to_string),
    }
}

#[test]
fn every_request_petty_sends_is_valid_for_the_spec() {
    let spec = Spec::load();
    let mut all = Vec::new();
    for (tap, track) in [
        (None, false),
        (Some("tap0"), false),
        (None, true),
        (Some("tap0"), true),
    ] {
        all.extend(boot_sequence(&spec_for_boot(tap, track)));
        all.push(snapshot_load(&load_spec(tap, track)));
    }
    all.extend([
        pause(),
        resume(),
        snapshot_create(Path::new("/s/state"), Path::new("/s/mem"), false),
        snapshot_create(
            Path::new("saved.state"),
            Path::new("saved.memory.diff"),
            true,
        ),
        patch_drive("rootfs", Path::new("rootfs.ext4")),
    ]);
    for req in &all {
        spec.check(req)
            .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.path));
    }
    let boot = boot_sequence(&spec_for_boot(None, false));
    assert_eq!(
        boot.last().unwrap().body,
        Some(json!({ "action_type": "InstanceStart" }))
    );
    // The network interface is configured before the start, with its MAC.
    let net = boot_sequence(&spec_for_boot(Some("tap0"), false));
    let eth0 = &net[net.len() - 2];
    assert_eq!(eth0.path, "/network-interfaces/eth0");
    assert_eq!(
        eth0.body,
        Some(
            json!({ "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:12:34:56:78" })
        )
    );
    assert_eq!(
        boot_sequence(&spec_for_boot(None, true))[0]
            .body
            .as_ref()
            .unwrap()["track_dirty_pages"],
        json!(true)
    );
    // A load leaves the VM paused, its vsock socket its own, its TAP moved.
    let load = snapshot_load(&load_spec(Some("tap1"), true)).body.unwrap();
    assert_eq!(load["resume_vm"], json!(false));
    assert_eq!(load["vsock_override"], json!({ "uds_path": "vsock.sock" }));
    assert_eq!(
        load["mem_backend"],
        json!({ "backend_type": "File", "backend_path": "/s/memory" })
    );
    assert_eq!(
        load["network_overrides"],
        json!([{ "iface_id": "eth0", "host_dev_name": "tap1" }])
    );
    assert!(snapshot_load(&load_spec(None, false))
        .body
        .unwrap()
        .get("network_overrides")
        .is_none());
}

#[test]
fn the_checker_rejects_what_firecracker_would() {
    let spec = Spec::load();
    let bad = [
        (
            Request {
                method: "PUT",
                path: "/machine-config".into(),
                body: Some(json!({ "vcpu_count": 2 })),
            },
            "mem_size_mib is missing",
        ),
        (
            Request {
                method: "PUT",
                path: "/machine-config".into(),
                body: Some(json!({ "vcpu_count": 64, "mem_size_mib": 256 })),
            },
            "out of bounds",
        ),
        (
            Request {
                method: "PATCH",
                path: "/vm".into(),
                body: Some(json!({ "state": "Frozen" })),
            },
            "is not one of",
        ),
        (
            Request {
                method: "PUT",
                path: "/vsock".into(),
                body: Some(json!({ "guest_cid": 3, "uds_path": "/x", "cid": 3 })),
            },
            "unknown field cid",
        ),
        (
            Request {
                method: "PUT",
                path: "/boot-source".into(),
                body: Some(json!({ "kernel_image_path": 7 })),
            },
            "expected a string",
        ),
        (
            Request {
                method: "PUT",
                path: "/no-such-endpoint".into(),
                body: None,
            },
            "not in the spec",
        ),
        (
            // After boot only the path (and rate limits) of a drive change.
            Request {
                method: "PATCH",
                path: "/drives/rootfs".into(),
                body: Some(
                    json!({ "drive_id": "rootfs", "path_on_host": "d", "is_read_only": true }),
                ),
            },
            "unknown field is_read_only",
        ),
        (
            Request {
                method: "PUT",
                path: "/snapshot/load".into(),
                body: Some(json!({
                    "snapshot_path": "s",
                    "mem_backend": { "backend_type": "Anonymous", "backend_path": "m" },
                })),
            },
            "is not one of",
        ),
        (
            Request {
                method: "PUT",
                path: "/snapshot/load".into(),
                body: Some(json!({
                    "snapshot_path": "s",
                    "network_overrides": [{ "iface_id": "eth0" }],
                })),
            },
            "host_dev_name is missing",
        ),
        (
            Request {
                method: "DELETE",
                path: "/vm".into(),
                body: None,
            },
            "has no DELETE",
        ),
    ];
    for (req, want) in bad {
        let err = spec
            .check(&req)
            .expect_err(&format!("{} {} should be rejected", req.method, req.path));
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

/// A unix-socket HTTP server standing in for Firecracker's API in this test
/// only: records each request and answers with `status` and `body`.
async fn stand_in(
    path: PathBuf,
    status: &'static str,
    body: &'static str,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then exactly Content-Length bytes of body.
        loop {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    break;
                }
            }
            assert!(n > 0, "client closed early");
        }
        let reply = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(reply.as_bytes()).await.unwrap();
        got
    })
}

#[tokio::test]
async fn client_sends_http_and_surfaces_firecracker_faults_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let server = stand_in(sock.clone(), "204 No Content", "").await;
    let client = ApiClient::new(&sock, Duration::from_secs(5));
    client.send(&pause()).await.unwrap();
    let raw = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(raw.starts_with("PATCH /vm HTTP/1.1\r\n"), "{raw}");
    assert!(raw.ends_with(r#"{"state":"Paused"}"#), "{raw}");

    std::fs::remove_file(&sock).unwrap();
    let fault = r#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#;
    let server = stand_in(sock.clone(), "400 Bad Request", fault).await;
    match client.send(&snapshot_load(&load_spec(None, false))).await {
        Err(e @ ApiError::Refused { status: 400, .. }) => assert!(
            e.to_string()
                .contains("The requested operation is not supported after starting the microVM."),
            "{e}"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
    server.await.unwrap();
}
