//! A tiny busybox image made with umoci (two layers, the second a whiteout of `etc/gone`),
//! and copies of it made with skopeo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use petty_oci::{unpack, Image, Limits, Store};

/// Whether `tool` can run; prints why not.
pub fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// The OCI layout, with the image tagged `t`.
    pub fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    /// An OCI archive made by skopeo (made once).
    pub fn oci_archive(&self) -> PathBuf {
        self.copy("oci-archive", "image-oci.tar")
    }

    /// A docker archive made by skopeo (made once).
    pub fn docker_archive(&self) -> PathBuf {
        self.copy("docker-archive", "image-docker.tar")
    }

    fn copy(&self, transport: &str, name: &str) -> PathBuf {
        static LOCK: Mutex<()> = Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.dir.path().join(name);
        if !path.exists() {
            run(Command::new("skopeo").args([
                "copy",
                "--quiet",
                &format!("oci:{}:t", self.layout().display()),
                &format!("{transport}:{}", path.display()),
            ]));
        }
        path
    }
}

/// The shared fixture, or `None` (with the reason printed) when a tool is missing.
pub fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            if !(have("umoci") && have("skopeo") && Path::new("/bin/busybox").exists()) {
                eprintln!("skipping: the image fixture needs umoci, skopeo and /bin/busybox");
                return None;
            }
            Some(build())
        })
        .as_ref()
}

fn build() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = format!("{}:t", layout.display());
    let b1 = dir.path().join("b1");
    let b2 = dir.path().join("b2");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&b1));
    let rootfs = b1.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("etc/gone"), b"to be whited out\n").unwrap();
    std::fs::write(rootfs.join("etc/kept"), b"kept\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b1));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&b2));
    std::fs::remove_file(b2.join("rootfs/etc/gone")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b2));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PETTY_TEST=1",
        "--config.cmd",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.workingdir",
        "/etc",
    ]));
    Fixture { dir }
}

/// Collects progress lines.
#[derive(Default)]
pub struct Lines(pub Mutex<Vec<String>>);

impl Lines {
    pub fn say(&self, line: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.to_owned());
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Unpacks `image` and checks the tree and config the fixture should give.
pub fn check_image(image: &Image, store: &Store) {
    assert_eq!(image.layers.len(), 2, "{image:?}");
    assert!(
        image.config.env.iter().any(|e| e == "PETTY_TEST=1"),
        "{:?}",
        image.config.env
    );
    assert_eq!(image.config.cmd, ["/bin/sh", "-c"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/etc"));
    assert_eq!(image.config.os, "linux");
    for blob in image.blobs() {
        assert!(store.has(blob), "{blob} is not in the store");
    }
    let dir = tempfile::tempdir().unwrap();
    let lines = Lines::default();
    let say = |l: &str| lines.say(l);
    let stats = unpack(image, store, dir.path(), &Limits::default(), &say).unwrap();
    assert_eq!(stats.layers, 2);
    assert!(stats.bytes > 100_000, "{stats:?}");
    assert_eq!(lines.all().len(), 2, "{:?}", lines.all());
    let root = dir.path();
    let busybox = std::fs::metadata(root.join("bin/busybox")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert!(
        busybox.permissions().mode() & 0o111 != 0,
        "busybox is not executable"
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(
        !root.join("etc/gone").exists(),
        "the whiteout was not applied"
    );
    assert!(
        !root.join("etc/.wh.gone").exists(),
        "a whiteout file was left"
    );
    assert_eq!(std::fs::read(root.join("etc/kept")).unwrap(), b"kept\n");
    // Another test's fork may briefly hold the just-written file open (ETXTBSY): retry.
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    let out = loop {
        match Command::new(root.join("bin/busybox"))
            .args(["echo", "hi"])
            .output()
        {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(out.stdout, b"hi\n");
}
