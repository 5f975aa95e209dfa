//! `ensure` end to end: real kernel and rootfs, cache reuse, concurrent callers.

use std::{
    fs,
    io::Read,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use petty_image::{Assets, ImageBuilder, AGENT_SHA256};

/// The cache `petty` uses under this environment's settings.
fn cache_dir() -> std::path::PathBuf {
    petty_config::load(&petty_config::Sources::process())
        .expect("the test environment's settings")
        .settings
        .paths
        .cache_dir
}
use sha2::{Digest, Sha256};

/// Why the real build cannot run here, if it cannot.
fn cannot_build() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && ImageBuilder::new(cache_dir()).locate().is_err() {
        return Some("building the rootfs needs root and the assets are not cached".into());
    }
    let status = ImageBuilder::new(cache_dir()).status();
    status.iter().find(|s| s.needed && !s.present).map(|s| {
        format!(
            "{} is missing (fix: {})",
            s.name,
            s.fix.as_deref().unwrap_or("?")
        )
    })
}

fn ensure() -> Option<Assets> {
    if let Some(why) = cannot_build() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(
        ImageBuilder::new(cache_dir())
            .ensure()
            .unwrap_or_else(|e| panic!("ensure failed: {e}: {:?}", e)),
    )
}

#[test]
fn ensure_builds_assets_that_look_right() {
    let Some(assets) = ensure() else { return };

    let bz = fs::read(&assets.kernel).unwrap();
    assert_eq!(
        &bz[0x202..0x206],
        b"HdrS",
        "bzImage has the x86 boot header"
    );
    let vmlinux = fs::read(&assets.vmlinux).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");

    let mut superblock = [0u8; 2048];
    fs::File::open(&assets.rootfs)
        .unwrap()
        .read_exact(&mut superblock)
        .unwrap();
    let magic = u16::from_le_bytes([superblock[1080], superblock[1081]]);
    assert_eq!(magic, 0xEF53, "rootfs is ext2/3/4");

    // The agent inside the image is byte-identical to the embedded one and executable.
    let Some(debugfs) = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped the rootfs content checks: debugfs (e2fsprogs) is not installed");
        return;
    };
    let debugfs = |req: &str| {
        let out = Command::new(debugfs)
            .args(["-R", req])
            .arg(&assets.rootfs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "debugfs {req}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let agent = debugfs("cat /usr/sbin/petty-agent");
    assert_eq!(hex(&Sha256::digest(&agent)), AGENT_SHA256);
    let stat = String::from_utf8_lossy(&debugfs("stat /usr/sbin/petty-agent")).into_owned();
    assert!(stat.contains("Mode:  0755"), "{stat}");
    assert_eq!(debugfs("cat /etc/hostname"), b"petty\n");
    let python = String::from_utf8_lossy(&debugfs("stat /usr/bin/python3")).into_owned();
    assert!(
        python.contains("Type: symlink") || python.contains("Type: regular"),
        "{python}"
    );
    let sbin = String::from_utf8_lossy(&debugfs("stat /sbin")).into_owned();
    assert!(
        sbin.contains("Type: symlink") || sbin.contains("Type: directory"),
        "{sbin}"
    );
}

#[test]
fn second_ensure_and_locate_are_instant() {
    let Some(first) = ensure() else { return };
    let builder = ImageBuilder::new(cache_dir()).with_progress(false);
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(builder.ensure().unwrap(), first);
        assert_eq!(builder.locate().unwrap(), first);
    }
    let per_call = start.elapsed() / 20;
    assert!(
        per_call < Duration::from_millis(20),
        "locate/ensure took {per_call:?} each"
    );
}

#[test]
fn concurrent_callers_agree() {
    if let Some(why) = cannot_build() {
        eprintln!("skipped: {why}");
        return;
    }
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                ImageBuilder::new(cache_dir())
                    .ensure()
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(results[0], results[1]);
    assert!(
        !cache_dir()
            .join("tmp")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
            || builder_running()
    );
}

/// Another test binary may be building right now, leaving its scratch in tmp.
fn builder_running() -> bool {
    let lock = cache_dir().join(".lock");
    let Ok(f) = fs::File::open(Path::new(&lock)) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !free
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
