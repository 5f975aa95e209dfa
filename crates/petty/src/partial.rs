//! The partial file of a copy from a sandbox: `.NAME.petty-partial.PID`
//! beside the destination `NAME`, renamed over it once the copy is whole,
//! removed when the copy fails or is interrupted. The PID in the name tells
//! a partial whose copy is still running from one left by a killed process,
//! which the next copy to the same destination removes.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A partial file being written; removed on drop unless committed.
pub struct Partial {
    path: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Partial {
    /// Creates this process's partial file for `dest` (which must not exist
    /// yet under that name: a leftover of ours would be from a pid reused).
    pub fn create(dest: &Path) -> std::io::Result<(Self, File)> {
        let path = partial_path(dest, std::process::id())?;
        let _ = std::fs::remove_file(&path);
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok((
            Self {
                path,
                dest: dest.to_path_buf(),
                committed: false,
            },
            file,
        ))
    }

    /// The partial file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the partial file over the destination.
    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `DIR/.NAME.petty-partial.PID` for destination `DIR/NAME`.
pub fn partial_path(dest: &Path, pid: u32) -> std::io::Result<PathBuf> {
    let mut name = OsString::from(".");
    name.push(file_name(dest)?);
    name.push(format!(".petty-partial.{pid}"));
    Ok(dest.with_file_name(name))
}

fn file_name(dest: &Path) -> std::io::Result<&std::ffi::OsStr> {
    dest.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a file", dest.display()),
        )
    })
}

/// Removes the partial files other copies to `dest` left behind: those
/// whose process is gone (or is no longer a `petty`). Returns what it removed.
pub fn sweep_stale(dest: &Path) -> Vec<PathBuf> {
    let Ok(name) = file_name(dest) else {
        return Vec::new();
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".petty-partial.");
    let prefix = prefix.to_string_lossy().into_owned();
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let me = comm(std::process::id());
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || (me.is_some() && comm(pid) == me);
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// A process's command name, if it exists.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_file_sits_beside_its_destination_and_names_its_process() {
        assert_eq!(
            partial_path(Path::new("/data/out.bin"), 42).unwrap(),
            Path::new("/data/.out.bin.petty-partial.42")
        );
        assert_eq!(
            partial_path(Path::new("z"), 7).unwrap(),
            Path::new(".z.petty-partial.7")
        );
        assert!(partial_path(Path::new("/"), 7).is_err());
    }

    #[test]
    fn a_partial_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let (p, mut f) = Partial::create(&dest).unwrap();
        std::io::Write::write_all(&mut f, b"half").unwrap();
        assert!(p.path().exists());
        drop(p);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());

        let (p, mut f) = Partial::create(&dest).unwrap();
        std::io::Write::write_all(&mut f, b"whole").unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_partials_of_dead_processes_for_this_destination_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        // A process that has exited: its pid is free (or reused by something
        // that is not this test binary).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = partial_path(&dest, dead).unwrap();
        let ours = partial_path(&dest, std::process::id()).unwrap();
        let other_dest = partial_path(&dir.path().join("g"), dead).unwrap();
        let unrelated = dir.path().join(".f.petty-partial.notapid");
        for p in [&stale, &ours, &other_dest, &unrelated] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(sweep_stale(&dest), vec![stale.clone()]);
        assert!(!stale.exists());
        assert!(ours.exists() && other_dest.exists() && unrelated.exists());
    }
}
