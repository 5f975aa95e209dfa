//! Petty's binaries finding one another: `petty bench` runs `petty-bench`,
//! and `petty-bench boot` times `petty run`. A build (`cargo build
//! --release -p petty -p petty-bench`) and an install put them in one
//! directory, so each looks beside itself first, then on the search path.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The executable `name` beside this process's own (in the directory of
/// [`std::env::current_exe`], symbolic links resolved), else the first on
/// `search_path` (`$PATH`'s directories, or `paths.search_path`).
pub fn find(name: &str, search_path: &[PathBuf]) -> Option<PathBuf> {
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    own_dir
        .iter()
        .chain(search_path)
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
}

/// A regular file (through links) that someone may execute.
fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_executable_on_the_search_path_and_skips_what_is_not_one() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plain = a.path().join("petty-x");
        std::fs::write(&plain, "").unwrap();
        let exe = b.path().join("petty-x");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(b.path().join("petty-dir")).unwrap();
        let path = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find("petty-x", &path), Some(exe));
        assert_eq!(find("petty-dir", &path), None);
        assert_eq!(find("petty-none", &path), None);
    }
}
