//! The Firecracker backend's orchestration, with no Firecracker: a stand-in
//! process takes Firecracker's (and the jailer's) place, and a unix-socket
//! HTTP server in the test stands in for its API, recording every request
//! (each checked against Firecracker's spec) and writing the files a
//! snapshot request asks for. This shows what the backend puts where, what
//! it asks in which order, that clones of one snapshot each get their own
//! disk and socket, that Diff memory is merged onto its base, and that
//! teardown and the sweep leave nothing, jail included. Whether real
//! Firecracker does what these requests ask is for the real-VM tests
//! (`crates/petty/tests/it/firecracker.rs`).

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petty_vmm::firecracker::{FirecrackerVmm, JailerConfig, Request, SNAPSHOT_MEMORY};
use petty_vmm::{sweep_stale_run_dirs, Vm, VmConfig, Vmm, SNAPSHOT_STATE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::firecracker_api::Spec;

const PAGE: u64 = 4096;
const PAGES: u64 = 16;

/// A test's world: fake binaries, assets and directories.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let w = Self {
            tmp: tempfile::tempdir().unwrap(),
        };
        let bin = w.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // Stand-ins that live until killed and whose command line carries
        // their arguments, as the real ones' do.
        for (name, label) in [
            ("firecracker", "firecracker-stand-in"),
            ("jailer", "jailer-stand-in"),
        ] {
            let p = bin.join(name);
            std::fs::write(
                &p,
                format!("#!/bin/bash\nexec -a \"{label} $*\" sleep 1000\n"),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(w.path("vmlinux"), b"ELF kernel").unwrap();
        let rootfs = std::fs::File::create(w.path("rootfs.ext4")).unwrap();
        rootfs.set_len(1 << 20).unwrap();
        rootfs.write_all_at(b"ext4 superblock", 1024).unwrap();
        w
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn runs(&self) -> PathBuf {
        self.path("run")
    }

    fn jails(&self) -> PathBuf {
        self.path("jails")
    }

    fn vmm(&self) -> FirecrackerVmm {
        FirecrackerVmm::new(self.runs())
            .with_binary(self.path("bin/firecracker").display().to_string())
            .with_jailer(None)
            .with_tap(None)
            .with_diff_snapshots(false)
    }

    fn jailed_vmm(&self) -> FirecrackerVmm {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut jailer = JailerConfig::new(self.path("bin/jailer").display().to_string(), uid, gid);
        jailer.chroot_base = self.jails();
        self.vmm().with_jailer(Some(jailer))
    }

    fn config(&self, id: &str, restore_from: Option<&Path>) -> VmConfig {
        VmConfig {
            restore_from: restore_from.map(Path::to_path_buf),
            ..VmConfig::new(id, self.path("vmlinux"), self.path("rootfs.ext4"))
        }
    }

    /// Where an unjailed VM's Firecracker works, and its API socket.
    fn plain(&self, id: &str) -> (PathBuf, PathBuf) {
        let dir = self.runs().join(id);
        (dir.clone(), dir.join("api.sock"))
    }

    /// Where a jailed VM's Firecracker works (its jail's root), and its API socket.
    fn jailed(&self, id: &str) -> (PathBuf, PathBuf) {
        let root = self.jails().join("firecracker").join(id).join("root");
        (root.clone(), root.join("run/firecracker.socket"))
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        let d = self.path(&format!("snapshots/{name}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Nothing left: no run directory, no jail.
    fn assert_clean(&self) {
        let entries = |d: PathBuf| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        assert!(
            entries(self.runs()).is_empty(),
            "left: {:?}",
            entries(self.runs())
        );
        assert!(
            entries(self.jails().join("firecracker")).is_empty(),
            "jails left: {:?}",
            entries(self.jails().join("firecracker"))
        );
    }
}

/// Firecracker's API, stood in for: records requests, answers 204, and
/// writes the files `/snapshot/create` names (relative paths resolve in
/// `cwd`, as they do for Firecracker). A Full snapshot's memory is the
/// pattern [`full_page`]; a Diff's holds the pages of `dirty` only.
struct StandIn {
    requests: Arc<Mutex<Vec<Request>>>,
    dirty: Arc<Mutex<Vec<(u64, u8)>>>,
    task: tokio::task::JoinHandle<()>,
}

fn full_page(p: u64) -> u8 {
    0x10 + p as u8
}

impl StandIn {
    fn start(socket: PathBuf, cwd: PathBuf) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let dirty = Arc::new(Mutex::new(Vec::new()));
        let (r, d) = (requests.clone(), dirty.clone());
        let task = tokio::spawn(async move {
            while !socket.parent().unwrap().is_dir() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let req = read_request(&mut s).await;
                if req.path == "/snapshot/create" {
                    let body = req.body.as_ref().unwrap();
                    write_snapshot(body, &cwd, &d.lock().unwrap());
                }
                r.lock().unwrap().push(req);
                s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
            }
        });
        Self {
            requests,
            dirty,
            task,
        }
    }

    /// The requests so far, as `METHOD /path`, each checked against the spec.
    fn calls(&self, spec: &Spec) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                spec.check(r)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
                format!("{} {}", r.method, r.path)
            })
            .collect()
    }

    fn body(&self, method: &str, path: &str) -> Value {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.method == method && r.path == path)
            .and_then(|r| r.body.clone())
            .unwrap_or_else(|| panic!("no {method} {path}"))
    }

    fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(s: &mut tokio::net::UnixStream) -> Request {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "client closed early");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let mut words = head.split_whitespace();
                let method = match words.next().unwrap() {
                    "PUT" => "PUT",
                    "PATCH" => "PATCH",
                    "GET" => "GET",
                    other => panic!("method {other}"),
                };
                let path = words.next().unwrap().to_string();
                let body = &got[end + 4..end + 4 + len];
                return Request {
                    method,
                    path,
                    body: (!body.is_empty()).then(|| serde_json::from_slice(body).unwrap()),
                };
            }
        }
    }
}

fn write_snapshot(body: &Value, cwd: &Path, dirty: &[(u64, u8)]) {
    let resolve = |k: &str| {
        let p = Path::new(body[k].as_str().unwrap());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    std::fs::write(resolve("snapshot_path"), b"device state").unwrap();
    let mem = std::fs::File::create(resolve("mem_file_path")).unwrap();
    mem.set_len(PAGES * PAGE).unwrap();
    if body["snapshot_type"] == "Diff" {
        for (p, byte) in dirty {
            mem.write_all_at(&vec![*byte; PAGE as usize], p * PAGE)
                .unwrap();
        }
    } else {
        for p in 0..PAGES {
            mem.write_all_at(&vec![full_page(p); PAGE as usize], p * PAGE)
                .unwrap();
        }
    }
}

/// The byte every page of a memory file holds (each page is uniform here).
fn pages_of(memory: &Path) -> Vec<u8> {
    let bytes = std::fs::read(memory).unwrap();
    assert_eq!(bytes.len() as u64, PAGES * PAGE);
    bytes
        .chunks(PAGE as usize)
        .map(|page| {
            assert!(page.iter().all(|b| *b == page[0]), "a torn page");
            page[0]
        })
        .collect()
}

async fn start(vmm: &FirecrackerVmm, config: &VmConfig) -> Box<dyn Vm> {
    tokio::time::timeout(Duration::from_secs(20), vmm.start(config))
        .await
        .expect("start hung")
        .unwrap_or_else(|e| panic!("starting {}: {e}", config.id))
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().to_string()[..8])
}

#[tokio::test]
async fn boot_snapshot_and_two_clones_of_one_snapshot_each_with_their_own_files() {
    let spec = Spec::load();
    let w = World::new();
    let vmm = w.vmm().with_tap(Some("tap-petty".into()));
    let origin = id("origin");
    let (cwd, sock) = w.plain(&origin);
    let api = StandIn::start(sock, cwd.clone());
    let vm = start(&vmm, &w.config(&origin, None)).await;

    assert_eq!(
        api.calls(&spec),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /network-interfaces/eth0",
            "PUT /actions",
        ]
    );
    // The drive and the socket by relative paths, resolved in the VM's own
    // directory, where its own disk copy is; the kernel by its real path.
    assert_eq!(
        api.body("PUT", "/drives/rootfs")["path_on_host"],
        "rootfs.ext4"
    );
    assert_eq!(api.body("PUT", "/vsock")["uds_path"], "vsock.sock");
    assert_eq!(
        api.body("PUT", "/boot-source")["kernel_image_path"],
        json!(w.path("vmlinux").display().to_string())
    );
    assert_eq!(
        api.body("PUT", "/network-interfaces/eth0")["host_dev_name"],
        "tap-petty"
    );
    assert_eq!(
        api.body("PUT", "/machine-config")["track_dirty_pages"],
        false
    );
    assert_eq!(
        std::fs::read(cwd.join("rootfs.ext4")).unwrap(),
        std::fs::read(w.path("rootfs.ext4")).unwrap()
    );

    api.clear();
    let snap = w.snapshot_dir("s1");
    let files = vm.snapshot(&snap, true).await.unwrap();
    assert_eq!(
        api.calls(&spec),
        ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    );
    assert_eq!(api.body("PUT", "/snapshot/create")["snapshot_type"], "Full");
    assert_eq!(files.disk_bytes, 1 << 20);
    for f in [
        SNAPSHOT_STATE,
        SNAPSHOT_MEMORY,
        "disk.ext4",
        "firecracker.json",
    ] {
        assert!(snap.join(f).is_file(), "{f} missing");
    }
    // Snapshotting into a directory that holds one already is refused:
    // Firecracker would truncate a memory file clones may be mapping.
    let again = vm.snapshot(&snap, true).await.unwrap_err().to_string();
    assert!(again.contains("empty directory"), "{again}");

    // Two clones of the one snapshot, running at once.
    let mut clones = Vec::new();
    for name in ["clone-a", "clone-b"] {
        let cid = id(name);
        let (ccwd, csock) = w.plain(&cid);
        let capi = StandIn::start(csock, ccwd.clone());
        let clone = start(&vmm, &w.config(&cid, Some(&snap))).await;
        assert_eq!(
            capi.calls(&spec),
            ["PUT /snapshot/load", "PATCH /drives/rootfs", "PATCH /vm"]
        );
        let load = capi.body("PUT", "/snapshot/load");
        assert_eq!(
            load["snapshot_path"],
            json!(snap.join(SNAPSHOT_STATE).display().to_string())
        );
        assert_eq!(
            load["mem_backend"],
            json!({ "backend_type": "File", "backend_path": snap.join(SNAPSHOT_MEMORY).display().to_string() })
        );
        assert_eq!(load["resume_vm"], false);
        assert_eq!(load["vsock_override"]["uds_path"], "vsock.sock");
        assert_eq!(load["network_overrides"][0]["host_dev_name"], "tap-petty");
        assert_eq!(
            capi.body("PATCH", "/drives/rootfs")["path_on_host"],
            "rootfs.ext4"
        );
        assert_eq!(capi.body("PATCH", "/vm")["state"], "Resumed");
        // Its own disk, a copy of the snapshot's: never the snapshot's file.
        let own = ccwd.join("rootfs.ext4");
        assert_ne!(
            std::fs::metadata(&own).unwrap().ino(),
            std::fs::metadata(snap.join("disk.ext4")).unwrap().ino()
        );
        clones.push((clone, capi, own));
    }
    // Each clone's disk takes its own writes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&clones[0].2)
        .unwrap()
        .write_all_at(b"written by a", 4096)
        .unwrap();
    let mut b_bytes = [0u8; 12];
    std::fs::File::open(&clones[1].2)
        .unwrap()
        .read_exact_at(&mut b_bytes, 4096)
        .unwrap();
    assert_ne!(&b_bytes, b"written by a");
    assert!(clones.iter().all(|(c, _, _)| c.is_running()) && vm.is_running());

    for (c, _, _) in clones {
        c.stop().await.unwrap();
    }
    vm.stop().await.unwrap();
    w.assert_clean();
}

#[tokio::test]
async fn snapshots_of_a_clone_are_diffs_merged_onto_their_base() {
    let spec = Spec::load();
    let w = World::new();
    let vmm = w.vmm().with_diff_snapshots(true);
    let origin = id("origin");
    let (cwd, sock) = w.plain(&origin);
    let api = StandIn::start(sock, cwd);
    let vm = start(&vmm, &w.config(&origin, None)).await;
    assert_eq!(
        api.body("PUT", "/machine-config")["track_dirty_pages"],
        true
    );
    let s1 = w.snapshot_dir("s1");
    vm.snapshot(&s1, true).await.unwrap();
    // Nothing to diff against yet: Full.
    assert_eq!(api.body("PUT", "/snapshot/create")["snapshot_type"], "Full");
    let full: Vec<u8> = (0..PAGES).map(full_page).collect();
    assert_eq!(pages_of(&s1.join(SNAPSHOT_MEMORY)), full);

    let cid = id("clone");
    let (ccwd, csock) = w.plain(&cid);
    let capi = StandIn::start(csock, ccwd.clone());
    let clone = start(&vmm, &w.config(&cid, Some(&s1))).await;
    assert_eq!(
        capi.body("PUT", "/snapshot/load")["track_dirty_pages"],
        true
    );

    // The clone dirties pages 1 and 5 (one of them to zeros).
    *capi.dirty.lock().unwrap() = vec![(1, 0xd1), (5, 0x00)];
    let s2 = w.snapshot_dir("s2");
    vm_snapshot(&*clone, &s2).await;
    let create = capi.body("PUT", "/snapshot/create");
    assert_eq!(create["snapshot_type"], "Diff");
    // Written in the clone's own directory, then merged into the snapshot's.
    assert_eq!(create["mem_file_path"], "saved.memory.diff");
    let mut want = full.clone();
    want[1] = 0xd1;
    want[5] = 0x00;
    assert_eq!(
        pages_of(&s2.join(SNAPSHOT_MEMORY)),
        want,
        "merged onto s1's memory"
    );
    assert_eq!(
        pages_of(&s1.join(SNAPSHOT_MEMORY)),
        full,
        "the base is untouched"
    );
    assert!(!ccwd.join("saved.memory.diff").exists());

    // The next Diff is on top of the snapshot just taken.
    *capi.dirty.lock().unwrap() = vec![(2, 0xe2)];
    let s3 = w.snapshot_dir("s3");
    vm_snapshot(&*clone, &s3).await;
    assert_eq!(
        capi.body("PUT", "/snapshot/create")["snapshot_type"],
        "Diff"
    );
    want[2] = 0xe2;
    assert_eq!(pages_of(&s3.join(SNAPSHOT_MEMORY)), want);

    // Once its base is gone (deleted), the next one is Full again.
    std::fs::remove_dir_all(&s3).unwrap();
    let s4 = w.snapshot_dir("s4");
    vm_snapshot(&*clone, &s4).await;
    assert_eq!(
        capi.body("PUT", "/snapshot/create")["snapshot_type"],
        "Full"
    );
    capi.calls(&spec);

    // A clone of a merged Diff restores from its full memory.
    let gid = id("grandchild");
    let (gcwd, gsock) = w.plain(&gid);
    let gapi = StandIn::start(gsock, gcwd);
    let grandchild = start(&vmm, &w.config(&gid, Some(&s2))).await;
    assert_eq!(
        gapi.body("PUT", "/snapshot/load")["mem_backend"]["backend_path"],
        json!(s2.join(SNAPSHOT_MEMORY).display().to_string())
    );
    gapi.calls(&spec);

    for v in [grandchild, clone, vm] {
        v.stop().await.unwrap();
    }
    w.assert_clean();
}

async fn vm_snapshot(vm: &dyn Vm, dir: &Path) {
    vm.snapshot(dir, true)
        .await
        .unwrap_or_else(|e| panic!("snapshot to {}: {e}", dir.display()));
}

#[tokio::test]
async fn jailed_vms_run_in_a_chroot_with_linked_files_and_teardown_removes_it() {
    let spec = Spec::load();
    let w = World::new();
    let vmm = w.jailed_vmm();
    let origin = id("jailed");
    let (root, sock) = w.jailed(&origin);
    let api = StandIn::start(sock, root.clone());
    let vm = start(&vmm, &w.config(&origin, None)).await;
    api.calls(&spec);
    // The jailer's command line, as the stand-in was started with it.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.pid())).unwrap();
    // (Before the stand-in's `exec` its arguments are NUL-separated.)
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!(
            "--id {origin} --exec-file {} --uid",
            w.path("bin/firecracker").display()
        )) && cmdline.contains(&format!(
            "--chroot-base-dir {} -- --api-sock /run/firecracker.socket",
            w.jails().display()
        )),
        "{cmdline}"
    );
    // Paths relative to the jail's root; the kernel hard-linked into it.
    assert_eq!(
        api.body("PUT", "/boot-source")["kernel_image_path"],
        "vmlinux"
    );
    assert_eq!(
        std::fs::metadata(root.join("vmlinux")).unwrap().ino(),
        std::fs::metadata(w.path("vmlinux")).unwrap().ino()
    );
    assert!(root.join("rootfs.ext4").is_file());
    assert!(vm.run_dir().join("jail.json").is_file());

    // A snapshot is written in the jail and moved out of it.
    let snap = w.snapshot_dir("s1");
    vm.snapshot(&snap, true).await.unwrap();
    assert_eq!(
        api.body("PUT", "/snapshot/create")["snapshot_path"],
        "saved.state"
    );
    assert!(snap.join(SNAPSHOT_STATE).is_file() && !root.join("saved.state").exists());
    assert_eq!(
        pages_of(&snap.join(SNAPSHOT_MEMORY)),
        (0..PAGES).map(full_page).collect::<Vec<_>>()
    );

    // A jailed clone loads hard links to the snapshot's files: one memory
    // file, shared page cache.
    let cid = id("jailed-clone");
    let (croot, csock) = w.jailed(&cid);
    let capi = StandIn::start(csock, croot.clone());
    let clone = start(&vmm, &w.config(&cid, Some(&snap))).await;
    capi.calls(&spec);
    let load = capi.body("PUT", "/snapshot/load");
    assert_eq!(load["snapshot_path"], "loaded.state");
    assert_eq!(load["mem_backend"]["backend_path"], "loaded.memory");
    assert_eq!(
        std::fs::metadata(croot.join("loaded.memory"))
            .unwrap()
            .ino(),
        std::fs::metadata(snap.join(SNAPSHOT_MEMORY)).unwrap().ino()
    );
    assert!(
        !croot.join("loaded.state").exists(),
        "released after the load"
    );

    clone.stop().await.unwrap();
    vm.stop().await.unwrap();
    w.assert_clean();
    assert!(
        snap.join(SNAPSHOT_MEMORY).is_file(),
        "the snapshot outlives its clones"
    );
}

#[tokio::test]
async fn a_jailed_vm_left_by_a_killed_owner_is_killed_and_its_jail_removed_by_the_sweep() {
    let w = World::new();
    let vmm = w.jailed_vmm();
    let vid = id("orphan");
    let (root, sock) = w.jailed(&vid);
    let _api = StandIn::start(sock, root.clone());
    let vm = start(&vmm, &w.config(&vid, None)).await;
    let (pid, run_dir) = (vm.pid(), vm.run_dir().to_path_buf());
    // The managing process dies without any teardown (SIGKILL): nothing of
    // ours runs, and the jailer's change of user cleared the parent-death
    // signal, so the VM lives on. Its owner file then names a dead process.
    vm.detach();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::write(run_dir.join("owner.pid"), dead.to_string()).unwrap();

    assert_eq!(
        sweep_stale_run_dirs(&w.runs()),
        std::slice::from_ref(&run_dir)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while petty_vmm::vmm_alive(pid, &run_dir) {
        assert!(Instant::now() < deadline, "the orphan survived the sweep");
        std::thread::sleep(Duration::from_millis(10));
    }
    w.assert_clean();
}

#[tokio::test]
async fn restores_are_refused_before_anything_starts_when_they_cannot_work() {
    let w = World::new();
    let vmm = w.vmm().with_tap(Some("tap-petty".into()));
    let origin = id("origin");
    let (cwd, sock) = w.plain(&origin);
    let _api = StandIn::start(sock, cwd);
    let vm = start(&vmm, &w.config(&origin, None)).await;
    let snap = w.snapshot_dir("with-net");
    vm.snapshot(&snap, true).await.unwrap();
    vm.stop().await.unwrap();

    // A disk smaller than the snapshot's.
    let err = vmm
        .start(&VmConfig {
            disk_size_mib: Some(0),
            ..w.config(&id("clone"), Some(&snap))
        })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("disk_size_mib 0"), "{err}");

    // Taken with a network interface: its clones need a TAP device.
    let err = w
        .vmm()
        .start(&w.config(&id("clone"), Some(&snap)))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("PETTY_FIRECRACKER_TAP"), "{err}");

    // Made by an earlier Petty (no description): take a new one.
    std::fs::remove_file(snap.join("firecracker.json")).unwrap();
    let err = vmm
        .start(&w.config(&id("clone"), Some(&snap)))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("take a new snapshot"), "{err}");

    // Not a snapshot at all.
    let err = vmm
        .start(&w.config(&id("clone"), Some(&w.snapshot_dir("empty"))))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("state is missing"), "{err}");
    w.assert_clean();
}

/// A network namespace made for one test, with `ip` (root only); `None`,
/// saying why, otherwise.
fn test_netns(tag: &str) -> Option<petty_net::netns::Netns> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return None;
    }
    let Some(ip) = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: no iproute2 `ip`");
        return None;
    };
    let name = format!("petty-t-{tag}-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    Some(petty_net::netns::Netns::create(&ip, &name).expect("a network namespace"))
}

/// The inode of a network namespace: of its file, or of a process's.
fn netns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[tokio::test]
async fn a_vms_own_network_is_its_tap_and_mac_and_firecracker_runs_in_its_namespace() {
    let Some(ns) = test_netns("fc") else { return };
    let spec = Spec::load();
    let w = World::new();
    // The backend's own TAP device is overridden by the VM's.
    let vmm = w.vmm().with_tap(Some("tap-global".into()));
    let network = petty_vmm::VmNetwork {
        netns: ns.path(),
        tap: "tap0".into(),
        mac: "02:50:54:00:00:15".into(),
    };
    let origin = id("origin");
    let (cwd, sock) = w.plain(&origin);
    let api = StandIn::start(sock, cwd);
    let vm = start(
        &vmm,
        &VmConfig {
            network: Some(network.clone()),
            ..w.config(&origin, None)
        },
    )
    .await;
    assert!(api
        .calls(&spec)
        .contains(&"PUT /network-interfaces/eth0".to_string()));
    let iface = api.body("PUT", "/network-interfaces/eth0");
    assert_eq!(iface["host_dev_name"], "tap0");
    assert_eq!(iface["guest_mac"], "02:50:54:00:00:15");
    let proc_ns = PathBuf::from(format!("/proc/{}/ns/net", vm.pid()));
    assert_eq!(netns_inode(&proc_ns), netns_inode(&ns.path()));
    assert_ne!(
        netns_inode(&proc_ns),
        netns_inode(Path::new("/proc/self/ns/net"))
    );
    let snap = w.snapshot_dir("own-net");
    vm.snapshot(&snap, true).await.unwrap();

    // Its clone, in another namespace: the snapshot's interface moved to
    // that namespace's TAP device.
    let Some(ns2) = test_netns("fc2") else { return };
    let cid = id("clone");
    let (ccwd, csock) = w.plain(&cid);
    let capi = StandIn::start(csock, ccwd);
    let clone = start(
        &vmm,
        &VmConfig {
            network: Some(petty_vmm::VmNetwork {
                netns: ns2.path(),
                tap: "tap1".into(),
                ..network
            }),
            ..w.config(&cid, Some(&snap))
        },
    )
    .await;
    capi.calls(&spec);
    let load = capi.body("PUT", "/snapshot/load");
    assert_eq!(
        load["network_overrides"],
        json!([{ "iface_id": "eth0", "host_dev_name": "tap1" }])
    );
    let clone_ns = PathBuf::from(format!("/proc/{}/ns/net", clone.pid()));
    assert_eq!(netns_inode(&clone_ns), netns_inode(&ns2.path()));

    // A restore without a network cannot leave the interface out when no
    // TAP device is set at all; one without a namespace fails before
    // Firecracker starts.
    let err = w
        .vmm()
        .start(&w.config(&id("clone"), Some(&snap)))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("give the restore a network"), "{err}");
    let err = vmm
        .start(&VmConfig {
            network: Some(petty_vmm::VmNetwork {
                netns: w.path("no-such-netns"),
                tap: "tap0".into(),
                mac: "02:50:54:00:00:15".into(),
            }),
            ..w.config(&id("clone"), Some(&snap))
        })
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, petty_vmm::VmmError::Network { .. })
            && err.to_string().contains("does not exist"),
        "{err}"
    );
    clone.stop().await.unwrap();
    vm.stop().await.unwrap();
    w.assert_clean();
}
