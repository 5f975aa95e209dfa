//! Growing the root file system to fill its disk.
//!
//! A sandbox may have a root disk larger than the image it was made from
//! (`disk_size_mib`). The agent grows the mounted ext4 online to the size of
//! its block device: at boot, and on every `refresh` (after a restore the
//! host grows the disk under the running guest). Nothing here is fatal:
//! failures go to the guest console and the file system keeps its size.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`, the new size in blocks.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
/// ext4 superblock: where it starts on the device, and its magic.
const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xef53;
/// `INCOMPAT_64BIT`: the block count has a high half.
const INCOMPAT_64BIT: u32 = 0x80;

fn log(msg: &str) {
    eprintln!("petty-agent: {msg}");
}

/// The block device holding `/`: its `/sys/dev/block` directory.
fn root_device_sys() -> std::io::Result<String> {
    let dev = fs::metadata("/")?.dev();
    Ok(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ))
}

/// Size of the root block device in bytes, as the guest kernel sees it.
fn device_bytes(sys: &str) -> std::io::Result<u64> {
    let sectors = fs::read_to_string(format!("{sys}/size"))?;
    let sectors: u64 = sectors
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("{sys}/size is not a number")))?;
    Ok(sectors * 512)
}

/// `(block size, block count)` of the ext4 file system on the device, read
/// from its superblock (the kernel keeps the live superblock in the device's
/// page cache, so a buffered read sees the current values).
fn fs_geometry(sys: &str) -> std::io::Result<(u64, u64)> {
    let uevent = fs::read_to_string(format!("{sys}/uevent"))?;
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| std::io::Error::other(format!("{sys}/uevent names no device")))?;
    let dev = File::open(format!("/dev/{name}"))?;
    let mut sb = [0u8; 1024];
    dev.read_exact_at(&mut sb, SUPERBLOCK_OFFSET)?;
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != EXT4_MAGIC {
        return Err(std::io::Error::other(format!("/dev/{name} is not ext4")));
    }
    let log_block = le32(0x18);
    if log_block > 6 {
        return Err(std::io::Error::other("implausible ext4 block size"));
    }
    let block_size = 1024u64 << log_block;
    let mut blocks = u64::from(le32(0x04));
    if le32(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(0x150)) << 32;
    }
    Ok((block_size, blocks))
}

/// Grows `/` to fill its block device if the device is larger. With
/// `expect_bytes`, first waits (at most `wait`) for the kernel to see the
/// device at that size: after a restore the host grows the disk and the
/// guest learns of it from an interrupt handled shortly after.
pub fn grow_root(expect_bytes: Option<u64>, wait: Duration) {
    // Only the guest's init may resize its `/`; never the host's, where
    // `petty-agent --stdio` runs in tests.
    if std::process::id() != 1 {
        return;
    }
    if let Err(e) = try_grow_root(expect_bytes, wait) {
        log(&format!("growing / to fill its disk: {e}"));
    }
}

fn try_grow_root(expect_bytes: Option<u64>, wait: Duration) -> std::io::Result<()> {
    let sys = root_device_sys()?;
    let mut bytes = device_bytes(&sys)?;
    if let Some(want) = expect_bytes {
        let deadline = Instant::now() + wait;
        while bytes < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            bytes = device_bytes(&sys)?;
        }
        if bytes < want {
            log(&format!(
                "the root disk shows {} MiB after {wait:?}, not the {} MiB the host gave it",
                bytes >> 20,
                want >> 20
            ));
        }
    }
    let (block_size, blocks) = fs_geometry(&sys)?;
    let target = bytes / block_size;
    if target <= blocks {
        return Ok(());
    }
    let root = File::open("/")?;
    let started = Instant::now();
    // SAFETY: the ioctl reads one u64 from a pointer valid for the call, on
    // an fd we own.
    if unsafe { libc::ioctl(root.as_raw_fd(), EXT4_IOC_RESIZE_FS, &target as *const u64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    log(&format!(
        "grew / from {} to {} MiB in {} ms",
        (blocks * block_size) >> 20,
        (target * block_size) >> 20,
        started.elapsed().as_millis()
    ));
    Ok(())
}
