//! Firecracker memory files: merging a Diff snapshot's memory onto the full
//! memory it was taken on top of.
//!
//! A Diff memory file has the guest's full memory size but holds only the
//! pages dirtied since the last snapshot (or load), written at their own
//! offsets; every other page is a hole. Merging copies the file's data
//! extents, found with `SEEK_DATA`/`SEEK_HOLE`, onto a copy of the base.
//! This is only right where the file system reports holes page by page: one
//! that reports a whole record as data around a single written page (ZFS,
//! or any without hole support) would carry zeros over the base's pages.
//! [`holes_are_page_granular`] checks that before a Diff is asked for.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Guest page size; Diff files are written in these.
const PAGE: u64 = 4096;

/// `lseek` with `whence`; `None` at end of file (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: lseek on a file descriptor we own; it only moves its offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// The data extents of `file` as `(start, end)` byte ranges, in order.
pub(crate) fn data_extents(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let len = file.metadata()?.len();
    let mut extents = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(start) = seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        extents.push((start, end));
        at = end;
    }
    Ok(extents)
}

/// True when files in `dir` report holes page by page: one page written
/// into the middle of a sparse file shows as exactly that page of data.
pub fn holes_are_page_granular(dir: &Path) -> bool {
    let probe = dir.join(format!(".hole-probe-{}", std::process::id()));
    let result = (|| -> io::Result<bool> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)?;
        // A page off any larger record boundary (64 KiB, 128 KiB, 1 MiB).
        let at = (512 << 10) + PAGE;
        f.set_len(1 << 20)?;
        f.write_all_at(&[0x5a; PAGE as usize], at)?;
        Ok(data_extents(&f)? == [(at, at + PAGE)])
    })();
    let _ = fs::remove_file(&probe);
    result.unwrap_or(false)
}

/// Writes into `out` the memory that Diff file `diff` describes on top of
/// full memory file `base`: a copy of `base` (sharing its blocks where the
/// file system can) with `diff`'s data extents written over it at their
/// offsets. `out` appears complete or not at all.
pub fn merge_diff(base: &Path, diff: &Path, out: &Path) -> io::Result<()> {
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let merged = (|| {
        let copied = std::process::Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(base)
            .arg(&partial)
            .output()?;
        if !copied.status.success() {
            return Err(io::Error::other(format!(
                "copying {} to {}: {}",
                base.display(),
                partial.display(),
                String::from_utf8_lossy(&copied.stderr).trim()
            )));
        }
        let from = File::open(diff)?;
        let to = OpenOptions::new().write(true).open(&partial)?;
        let mut buf = vec![0u8; 1 << 20];
        for (start, end) in data_extents(&from)? {
            let mut at = start;
            while at < end {
                let n = usize::try_from(end - at)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                from.read_exact_at(&mut buf[..n], at)?;
                to.write_all_at(&buf[..n], at)?;
                at += n as u64;
            }
        }
        let len = from.metadata()?.len();
        if to.metadata()?.len() < len {
            to.set_len(len)?;
        }
        fs::rename(&partial, out)
    })();
    if merged.is_err() {
        let _ = fs::remove_file(&partial);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(byte: u8) -> Vec<u8> {
        vec![byte; PAGE as usize]
    }

    #[test]
    fn a_diff_is_merged_page_by_page_onto_a_copy_of_its_base() {
        let dir = tempfile::tempdir().unwrap();
        if !holes_are_page_granular(dir.path()) {
            eprintln!(
                "skipping the merge test: the file system of {} does not report holes page by page",
                dir.path().display()
            );
            return;
        }
        let pages = 64u64;
        // The base: every page holds its own number.
        let base = dir.path().join("base");
        let mut content = Vec::new();
        for p in 0..pages {
            content.extend(page_of(p as u8 + 1));
        }
        fs::write(&base, &content).unwrap();
        // The diff, as Firecracker writes one: the memory's full length,
        // dirty pages at their offsets (one of them all zeros, which must
        // still win over the base), holes elsewhere.
        let diff = dir.path().join("diff");
        let f = File::create(&diff).unwrap();
        f.set_len(pages * PAGE).unwrap();
        let dirty: [(u64, u8); 4] = [(0, 0xd0), (3, 0x00), (4, 0xd4), (63, 0xdf)];
        for (p, byte) in dirty {
            f.write_all_at(&page_of(byte), p * PAGE).unwrap();
        }
        drop(f);
        assert_eq!(
            data_extents(&File::open(&diff).unwrap()).unwrap(),
            [(0, PAGE), (3 * PAGE, 5 * PAGE), (63 * PAGE, 64 * PAGE)]
        );

        let out = dir.path().join("merged");
        merge_diff(&base, &diff, &out).unwrap();
        let merged = fs::read(&out).unwrap();
        assert_eq!(merged.len() as u64, pages * PAGE);
        for p in 0..pages {
            let want = dirty
                .iter()
                .find(|(d, _)| *d == p)
                .map_or(p as u8 + 1, |(_, b)| *b);
            let page = &merged[(p * PAGE) as usize..((p + 1) * PAGE) as usize];
            assert!(
                page.iter().all(|b| *b == want),
                "page {p} should be {want:#x}"
            );
        }
        // The base is untouched, and nothing is left half-written.
        assert_eq!(fs::read(&base).unwrap(), content);
        assert!(!dir.path().join("merged.partial").exists());
    }

    #[test]
    fn a_failed_merge_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        let e = merge_diff(
            &dir.path().join("no-base"),
            &dir.path().join("no-diff"),
            &out,
        );
        assert!(e.is_err());
        assert!(!out.exists() && !dir.path().join("merged.partial").exists());
    }

    #[test]
    fn the_probe_sees_page_granular_holes_where_there_are() {
        // This host's temporary directory: on ext4, XFS, btrfs and tmpfs
        // the probe must pass (else Diffs would never be used there).
        let dir = tempfile::tempdir().unwrap();
        let fs_type = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if ["ext2/ext3", "xfs", "btrfs", "tmpfs"].contains(&fs_type.as_str()) {
            assert!(holes_are_page_granular(dir.path()), "{fs_type}");
        } else {
            eprintln!("the hole probe is not asserted on file system {fs_type:?}");
        }
        assert!(!holes_are_page_granular(&dir.path().join("missing")));
    }
}
