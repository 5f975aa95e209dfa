//! Firecracker's jailer, optional: each VM's Firecracker runs chrooted in
//! `<chroot base>/<firecracker>/<id>/root`, as an unprivileged uid and gid,
//! in a cgroup of its own with the limits given.
//!
//! Petty builds the jail's root before the jailer runs (the jailer leaves an
//! existing one as it is): the VM's own disk copy, the kernel and a
//! restore's snapshot files are hard-linked (copied across file systems)
//! into it, readable (and the disk writable) by the jail's user. The API
//! socket is `/run/firecracker.socket` inside it. Paths in API requests are
//! relative to the jail's root. Its run directory records the jail
//! ([`JailRecord`]) before anything starts, so teardown, and the sweep
//! after a SIGKILL of the managing process, remove it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::rundir::JailRecord;

/// Default chroot base, as the jailer's.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// The API socket inside the jail, as Firecracker is told it.
pub const JAILED_API_SOCKET: &str = "/run/firecracker.socket";

/// How to run Firecracker under the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// `jailer`, or a path to it.
    pub binary: String,
    /// The uid Firecracker runs as.
    pub uid: u32,
    /// The gid Firecracker runs as.
    pub gid: u32,
    /// Where jails are built (`--chroot-base-dir`).
    pub chroot_base: PathBuf,
    /// cgroup v2 settings, each `file=value` (`--cgroup`), e.g.
    /// `("cpu.max", "50000 100000")`, `("memory.max", "1G")`.
    pub cgroups: Vec<(String, String)>,
}

impl JailerConfig {
    /// A jailer config with no cgroup limits and the default chroot base.
    pub fn new(binary: impl Into<String>, uid: u32, gid: u32) -> Self {
        Self {
            binary: binary.into(),
            uid,
            gid,
            chroot_base: DEFAULT_CHROOT_BASE.into(),
            cgroups: Vec::new(),
        }
    }

    /// Reads, through `var` (given a key's name, its value), the settings
    /// `backend.firecracker.jailer` (the binary; jailing is on when it is set),
    /// `backend.firecracker.jailer_uid`, `backend.firecracker.jailer_gid` (both required then),
    /// `backend.firecracker.jailer_chroot_base` and `backend.firecracker.jailer_cgroups` (`file=value`
    /// pairs separated by `;`). `Ok(None)` when jailing is off;
    /// `Err` names the setting that is wrong.
    pub fn from_settings(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let Some(binary) = var("backend.firecracker.jailer") else {
            return Ok(None);
        };
        let id = |k: &str| -> Result<u32, String> {
            let v = var(k).ok_or_else(|| {
                format!("backend.firecracker.jailer is set but {k} is not; give the uid/gid Firecracker runs as")
            })?;
            v.trim()
                .parse()
                .map_err(|_| format!("{k}={v:?} is not a numeric id"))
        };
        let mut config = Self::new(
            binary.trim(),
            id("backend.firecracker.jailer_uid")?,
            id("backend.firecracker.jailer_gid")?,
        );
        if let Some(base) = var("backend.firecracker.jailer_chroot_base") {
            config.chroot_base = PathBuf::from(base.trim());
        }
        if let Some(list) = var("backend.firecracker.jailer_cgroups") {
            config.cgroups = parse_cgroups(&list)?;
        }
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks what the jailer would refuse, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if !self.chroot_base.is_absolute() {
            return Err(format!(
                "the jailer's chroot base {} must be an absolute path",
                self.chroot_base.display()
            ));
        }
        if self.chroot_base.to_str().is_none() {
            return Err("the jailer's chroot base must be valid UTF-8".into());
        }
        for (k, v) in &self.cgroups {
            if k.is_empty() || k.contains(['/', '=']) || !k.contains('.') || v.is_empty() {
                return Err(format!(
                    "cgroup setting {k}={v} is not `file=value` (e.g. memory.max=1G)"
                ));
            }
        }
        Ok(())
    }

    /// The jailer's command line (after the program) for VM `fc_id` running
    /// `firecracker` (an absolute path whose name contains `firecracker`).
    pub fn args(&self, fc_id: &str, firecracker: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            fc_id.into(),
            "--exec-file".into(),
            firecracker.into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
        ];
        if !self.cgroups.is_empty() {
            args.extend(["--cgroup-version".into(), "2".into()]);
            for (k, v) in &self.cgroups {
                args.extend(["--cgroup".into(), format!("{k}={v}").into()]);
            }
        }
        args.extend(["--".into(), "--api-sock".into(), JAILED_API_SOCKET.into()]);
        args
    }

    /// The jail of VM `fc_id` running `firecracker`.
    pub fn jail(&self, fc_id: &str, firecracker: &Path) -> Jail {
        let exec_name = firecracker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "firecracker".into());
        let dir = self.chroot_base.join(&exec_name).join(fc_id);
        // The jailer makes `<cgroup2 mount>/<exec name>/<id>` only when it
        // is given cgroup settings.
        let cgroup = (!self.cgroups.is_empty())
            .then(|| cgroup2_mount().map(|m| m.join(&exec_name).join(fc_id)))
            .flatten();
        Jail {
            root: dir.join("root"),
            record: JailRecord {
                dir,
                cgroup,
                cmdline_tag: fc_id.to_string(),
            },
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// Parses `file=value;file=value` (values may hold spaces and commas:
/// `cpu.max=50000 100000;cpuset.cpus=0,2`).
fn parse_cgroups(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| {
                    format!(
                        "backend.firecracker.jailer_cgroups: {item:?} is not `file=value` (e.g. memory.max=1G)"
                    )
                })
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// One VM's jail.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The jail's root: what Firecracker sees as `/`.
    pub root: PathBuf,
    pub(crate) record: JailRecord,
    uid: u32,
    gid: u32,
}

impl Jail {
    /// The jail's directory (`<chroot base>/<firecracker>/<id>`).
    pub fn dir(&self) -> &Path {
        &self.record.dir
    }

    /// The API socket, seen from the host.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join(JAILED_API_SOCKET.trim_start_matches('/'))
    }

    /// Records the jail in `run_dir` (so that removing the run directory
    /// removes the jail), then makes its root and `/run`, owned by the
    /// jail's user.
    pub fn prepare(&self, run_dir: &Path) -> io::Result<()> {
        // Unix socket paths hold at most 107 bytes.
        let longest = self.api_socket().as_os_str().len();
        if longest > 107 {
            return Err(io::Error::other(format!(
                "the API socket {} is {longest} bytes long, over the 107 a unix socket path allows; use a shorter chroot base",
                self.api_socket().display()
            )));
        }
        self.record.write(run_dir)?;
        let run = self
            .api_socket()
            .parent()
            .expect("socket in a dir")
            .to_path_buf();
        fs::create_dir_all(&run)?;
        for d in [&self.root, &run] {
            self.give(d)?;
        }
        Ok(())
    }

    /// Hands `path` to the jail's user.
    pub fn give(&self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }

    /// Puts `src` into the jail's root as `name`, read-only: a hard link
    /// where `src` is on the same file system and readable by the jail's
    /// user (so page-cache pages stay shared with every other user of the
    /// file), else a copy owned by that user. Returns `name` as Firecracker
    /// sees it.
    pub fn link_in(&self, src: &Path, name: &str) -> io::Result<PathBuf> {
        let dst = self.root.join(name);
        let _ = fs::remove_file(&dst);
        let linked = match fs::hard_link(src, &dst) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EPERM)) => false,
            Err(e) => return Err(e),
        };
        if linked && !self.can_read(&fs::metadata(&dst)?) {
            // Changing the owner of a hard link changes the original's:
            // copy instead.
            fs::remove_file(&dst)?;
            return self.copy_in(src, name);
        }
        if !linked {
            return self.copy_in(src, name);
        }
        Ok(PathBuf::from(name))
    }

    fn copy_in(&self, src: &Path, name: &str) -> io::Result<PathBuf> {
        let dst = self.root.join(name);
        let out = std::process::Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(src)
            .arg(&dst)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "copying {} into the jail: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o400))?;
        self.give(&dst)?;
        Ok(PathBuf::from(name))
    }

    fn can_read(&self, md: &fs::Metadata) -> bool {
        let mode = md.mode();
        self.uid == 0
            || mode & 0o004 != 0
            || (md.uid() == self.uid && mode & 0o400 != 0)
            || (md.gid() == self.gid && mode & 0o040 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_environment_turns_the_jailer_on_and_says_what_is_wrong() {
        assert_eq!(JailerConfig::from_settings(vars(&[])).unwrap(), None);
        let c = JailerConfig::from_settings(vars(&[
            ("backend.firecracker.jailer", "/usr/bin/jailer"),
            ("backend.firecracker.jailer_uid", "123"),
            ("backend.firecracker.jailer_gid", "100"),
            ("backend.firecracker.jailer_chroot_base", "/var/jail"),
            (
                "backend.firecracker.jailer_cgroups",
                "cpu.max=50000 100000; memory.max=1G;cpuset.cpus=0,2",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((c.uid, c.gid), (123, 100));
        assert_eq!(c.chroot_base, Path::new("/var/jail"));
        assert_eq!(
            c.cgroups,
            [
                ("cpu.max".to_string(), "50000 100000".to_string()),
                ("memory.max".into(), "1G".into()),
                ("cpuset.cpus".into(), "0,2".into()),
            ]
        );
        let default_base = JailerConfig::from_settings(vars(&[
            ("backend.firecracker.jailer", "jailer"),
            ("backend.firecracker.jailer_uid", "1"),
            ("backend.firecracker.jailer_gid", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(default_base.chroot_base, Path::new(DEFAULT_CHROOT_BASE));

        for (bad, says) in [
            (
                vec![("backend.firecracker.jailer", "jailer")],
                "backend.firecracker.jailer_uid",
            ),
            (
                vec![
                    ("backend.firecracker.jailer", "jailer"),
                    ("backend.firecracker.jailer_uid", "x"),
                    ("backend.firecracker.jailer_gid", "1"),
                ],
                "not a numeric id",
            ),
            (
                vec![
                    ("backend.firecracker.jailer", "jailer"),
                    ("backend.firecracker.jailer_uid", "1"),
                    ("backend.firecracker.jailer_gid", "1"),
                    ("backend.firecracker.jailer_cgroups", "memory"),
                ],
                "backend.firecracker.jailer_cgroups",
            ),
            (
                vec![
                    ("backend.firecracker.jailer", "jailer"),
                    ("backend.firecracker.jailer_uid", "1"),
                    ("backend.firecracker.jailer_gid", "1"),
                    ("backend.firecracker.jailer_chroot_base", "relative/base"),
                ],
                "absolute",
            ),
        ] {
            let e = JailerConfig::from_settings(vars(&bad)).unwrap_err();
            assert!(e.contains(says), "{e:?} should mention {says}");
        }
    }

    #[test]
    fn the_jailer_command_line_from_a_config() {
        let mut c = JailerConfig::new("/usr/bin/jailer", 123, 100);
        let fc = Path::new("/usr/local/bin/firecracker");
        let plain: Vec<String> = c
            .args("vm-1", fc)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            plain.join(" "),
            "--id vm-1 --exec-file /usr/local/bin/firecracker --uid 123 --gid 100 \
             --chroot-base-dir /srv/jailer -- --api-sock /run/firecracker.socket"
        );
        c.chroot_base = "/var/jail".into();
        c.cgroups = vec![
            ("cpu.max".into(), "50000 100000".into()),
            ("memory.max".into(), "1G".into()),
        ];
        let limited: Vec<String> = c
            .args("vm-1", fc)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            limited,
            [
                "--id",
                "vm-1",
                "--exec-file",
                "/usr/local/bin/firecracker",
                "--uid",
                "123",
                "--gid",
                "100",
                "--chroot-base-dir",
                "/var/jail",
                "--cgroup-version",
                "2",
                "--cgroup",
                "cpu.max=50000 100000",
                "--cgroup",
                "memory.max=1G",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
            ]
        );
        let jail = c.jail("vm-1", fc);
        assert_eq!(jail.dir(), Path::new("/var/jail/firecracker/vm-1"));
        assert_eq!(jail.root, Path::new("/var/jail/firecracker/vm-1/root"));
        assert_eq!(
            jail.api_socket(),
            Path::new("/var/jail/firecracker/vm-1/root/run/firecracker.socket")
        );
        assert_eq!(jail.record.cmdline_tag, "vm-1");
        if let Some(cg) = &jail.record.cgroup {
            assert!(cg.ends_with("firecracker/vm-1"), "{}", cg.display());
        }
    }

    #[test]
    fn files_are_hard_linked_into_the_jail_and_all_of_it_goes_with_the_run_dir() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run/vm-1");
        fs::create_dir_all(&run_dir).unwrap();
        let kernel = tmp.path().join("vmlinux");
        fs::write(&kernel, b"kernel").unwrap();
        fs::set_permissions(&kernel, fs::Permissions::from_mode(0o644)).unwrap();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut c = JailerConfig::new("jailer", uid, gid);
        c.chroot_base = tmp.path().join("jails");
        let jail = c.jail("vm-1", Path::new("/opt/fc/firecracker"));
        jail.prepare(&run_dir).unwrap();
        assert!(jail.root.join("run").is_dir());
        assert_eq!(JailRecord::read(&run_dir).unwrap(), jail.record);

        let seen = jail.link_in(&kernel, "vmlinux").unwrap();
        assert_eq!(seen, Path::new("vmlinux"));
        let inside = fs::metadata(jail.root.join("vmlinux")).unwrap();
        assert_eq!(
            inside.ino(),
            fs::metadata(&kernel).unwrap().ino(),
            "a hard link"
        );

        crate::rundir::remove_run_dir(&run_dir).unwrap();
        assert!(!run_dir.exists());
        assert!(!jail.dir().exists(), "the jail went with the run dir");
        assert!(kernel.is_file(), "the linked original stays");
        assert!(
            tmp.path().join("jails/firecracker").is_dir(),
            "only this VM's jail goes"
        );
    }

    #[test]
    fn an_over_long_socket_path_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = JailerConfig::new("jailer", 0, 0);
        c.chroot_base = tmp.path().join("x".repeat(90));
        let jail = c.jail("vm-1", Path::new("/usr/bin/firecracker"));
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let jail = Jail { uid, gid, ..jail };
        let e = jail.prepare(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("shorter chroot base"), "{e}");
    }
}
