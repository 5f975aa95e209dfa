//! Facts about the build host: its Debian codename and mirror (read from
//! `/etc/os-release` and apt's sources, unless the caller's
//! `image.debian_mirror` setting names one),
//! where host programs are, and which package provides each of them.
//!
//! Only cheap lookups live here (small file reads and `stat`s); nothing runs a
//! subprocess.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

// Where programs are looked for when the caller gives no search path.
use petty_config::STANDARD_PATH;

use crate::error::ImageError;

/// The setting that chooses the Debian mirror debootstrap uses (the
/// caller's configuration holds it; this crate reads no environment).
pub(crate) const MIRROR_SETTING: &str = "image.debian_mirror (PETTY_IMAGE_DEBIAN_MIRROR)";

/// What a build takes from its caller about the host: where programs are
/// and the Debian mirror, if one was chosen.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    /// Directories searched for programs, in order (empty: the standard ones).
    pub(crate) search_path: Vec<PathBuf>,
    /// The mirror for debootstrap; the host's apt source when `None`.
    pub(crate) mirror: Option<String>,
}

/// Directories searched for programs besides `$PATH`: debootstrap and
/// mkfs.ext4 live in sbin, which a normal user's `PATH` often lacks.
const EXTRA_PATH: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// A host program (or file) a build needs, and the package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    /// Program name on `PATH`, or a header's name.
    pub(crate) name: &'static str,
    /// For a file rather than a program: its absolute path.
    pub(crate) file: Option<&'static str>,
    /// Debian package that provides it.
    pub(crate) package: &'static str,
}

/// Host programs the kernel build needs.
pub(crate) const KERNEL_TOOLS: &[Tool] = &[
    Tool {
        name: "tar",
        file: None,
        package: "tar",
    },
    Tool {
        name: "xz",
        file: None,
        package: "xz-utils",
    },
    Tool {
        name: "make",
        file: None,
        package: "make",
    },
    Tool {
        name: "gcc",
        file: None,
        package: "build-essential",
    },
    Tool {
        name: "flex",
        file: None,
        package: "flex",
    },
    Tool {
        name: "bison",
        file: None,
        package: "bison",
    },
    Tool {
        name: "bc",
        file: None,
        package: "bc",
    },
    Tool {
        name: "libelf.h",
        file: Some("/usr/include/libelf.h"),
        package: "libelf-dev",
    },
    Tool {
        name: "openssl/opensslv.h",
        file: Some("/usr/include/openssl/opensslv.h"),
        package: "libssl-dev",
    },
];

/// Host programs the rootfs build needs.
pub(crate) const ROOTFS_TOOLS: &[Tool] = &[
    Tool {
        name: "debootstrap",
        file: None,
        package: "debootstrap",
    },
    Tool {
        name: "mkfs.ext4",
        file: None,
        package: "e2fsprogs",
    },
    Tool {
        name: "cp",
        file: None,
        package: "coreutils",
    },
];

impl Tool {
    /// The command that installs it.
    pub(crate) fn install_hint(&self) -> String {
        install_command(self.package)
    }

    /// An error saying the tool is missing.
    pub(crate) fn missing(&self) -> ImageError {
        ImageError::HostTool {
            tool: self.file.unwrap_or(self.name).to_owned(),
            hint: self.install_hint(),
        }
    }
}

/// `apt-get install <pkg>` (with sudo when not root), or the repo's script.
pub(crate) fn install_command(package: &str) -> String {
    let sudo = if is_root() { "" } else { "sudo " };
    format!(
        "{sudo}apt-get install {package} (or run scripts/install-deps from the Petty repository)"
    )
}

impl Host {
    /// The search path with the sbin directories appended.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = if self.search_path.is_empty() {
            STANDARD_PATH.iter().map(PathBuf::from).collect()
        } else {
            self.search_path.clone()
        };
        for extra in EXTRA_PATH {
            if !dirs.iter().any(|d| d == Path::new(extra)) {
                dirs.push(PathBuf::from(extra));
            }
        }
        dirs
    }

    /// Finds an executable on the search path or in the sbin directories.
    pub(crate) fn find_program(&self, name: &str) -> Option<PathBuf> {
        self.dirs().into_iter().map(|dir| dir.join(name)).find(|p| {
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// The search path with the sbin directories, as `PATH` for child
    /// processes (debootstrap runs chroot, mount and friends from there).
    pub(crate) fn path_with_sbin(&self) -> std::ffi::OsString {
        env::join_paths(self.dirs()).unwrap_or_else(|_| STANDARD_PATH.join(":").into())
    }

    /// Where `tool` is, if present.
    pub(crate) fn find(&self, tool: &Tool) -> Option<PathBuf> {
        if let Some(file) = tool.file {
            let p = PathBuf::from(file);
            return p.exists().then_some(p);
        }
        self.find_program(tool.name)
    }

    /// Returns an error for the first missing tool in `tools`.
    pub(crate) fn require(&self, tools: &[Tool]) -> Result<(), ImageError> {
        match tools.iter().find(|t| self.find(t).is_none()) {
            Some(t) => Err(t.missing()),
            None => Ok(()),
        }
    }

    /// The mirror for debootstrap: the one chosen, else the host's apt
    /// source for `codename`.
    pub(crate) fn mirror(&self, codename: &str) -> Result<String, ImageError> {
        match self.mirror.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => Ok(m.to_string()),
            None => apt_mirror(codename),
        }
    }
}

/// Whether the process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The host's Debian (or Ubuntu) codename, from `/etc/os-release`.
pub(crate) fn codename() -> Result<String, ImageError> {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    parse_codename(&text).ok_or_else(|| ImageError::HostConfig {
        what: "the host's Debian codename (VERSION_CODENAME in /etc/os-release)",
        hint: "build the guest assets on a Debian host, e.g. Debian 12 (bookworm)".into(),
    })
}

fn parse_codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.trim().strip_prefix("VERSION_CODENAME=")?;
        let value = value.trim().trim_matches(['"', '\'']);
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// The host's apt source for `codename`.
fn apt_mirror(codename: &str) -> Result<String, ImageError> {
    let mut deb822 = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => deb822.push(fs::read_to_string(&p).unwrap_or_default()),
                Some("list") => {
                    if let Some(m) =
                        parse_sources_list(&fs::read_to_string(&p).unwrap_or_default(), codename)
                    {
                        return Ok(m);
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(m) = deb822.iter().find_map(|t| parse_deb822(t, codename)) {
        return Ok(m);
    }
    if let Some(m) = parse_sources_list(
        &fs::read_to_string("/etc/apt/sources.list").unwrap_or_default(),
        codename,
    ) {
        return Ok(m);
    }
    Err(ImageError::HostConfig {
        what: "a Debian mirror (no apt source on this host serves the `deb` suite of the host's release)",
        hint: format!("set {MIRROR_SETTING} to the URL of a Debian mirror reachable from this host"),
    })
}

/// Schemes debootstrap can fetch from.
fn usable_uri(uri: &str) -> bool {
    ["http://", "https://", "file:/"]
        .iter()
        .any(|s| uri.starts_with(s))
}

/// First `URIs:` of a deb822 stanza with `Types: deb` and `Suites:` containing `codename`.
pub(crate) fn parse_deb822(text: &str, codename: &str) -> Option<String> {
    let mut stanza: Vec<(String, String)> = Vec::new();
    // A trailing empty line flushes the last stanza.
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let Some(uri) = deb822_stanza_uri(&stanza, codename) {
                return Some(uri);
            }
            stanza.clear();
        } else if line.trim_start().starts_with('#') {
            // Comment lines may appear inside a stanza.
        } else if line.starts_with([' ', '\t']) {
            // Continuation of a multi-line field.
            if let Some((_, value)) = stanza.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            stanza.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    None
}

fn deb822_stanza_uri(stanza: &[(String, String)], codename: &str) -> Option<String> {
    let field = |name: &str| {
        stanza
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let enabled = !field("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no"));
    let is_deb = field("types")?.split_whitespace().any(|t| t == "deb");
    let has_suite = field("suites")?.split_whitespace().any(|s| s == codename);
    if !(enabled && is_deb && has_suite) {
        return None;
    }
    field("uris")?
        .split_whitespace()
        .find(|u| usable_uri(u))
        .map(str::to_owned)
}

/// URI of the first one-line `deb [options] URI suite components` entry for `codename`.
pub(crate) fn parse_sources_list(text: &str, codename: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb")?;
        if !rest.starts_with([' ', '\t']) {
            return None; // deb-src
        }
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            rest = rest.split_once(']')?.1.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (uri, suite) = (words.next()?, words.next()?);
        (suite == codename && usable_uri(uri)).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codename_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(parse_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(
            parse_codename("VERSION_CODENAME=\"jammy\"\n").as_deref(),
            Some("jammy")
        );
        assert_eq!(parse_codename("ID=alpine\n"), None);
        assert_eq!(parse_codename("VERSION_CODENAME=\n"), None);
    }

    #[test]
    fn deb822_picks_the_release_suite_not_security() {
        let text = "\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
";
        assert_eq!(
            parse_deb822(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(parse_deb822(text, "trixie"), None);
    }

    #[test]
    fn deb822_skips_src_disabled_and_unusable_schemes() {
        let text = "\
Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no

Types: deb deb-src
URIs: cdrom:[Debian]/ mirror+file:/etc/apt/mirrors.txt
 https://ok.example/debian
Suites: bookworm
";
        assert_eq!(
            parse_deb822(text, "bookworm").as_deref(),
            Some("https://ok.example/debian")
        );
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/x.gpg] http://mirror.example/debian bookworm main contrib # trailing
";
        assert_eq!(
            parse_sources_list(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(parse_sources_list(text, "trixie"), None);
    }
}
