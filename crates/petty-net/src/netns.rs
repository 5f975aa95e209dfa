//! Network namespaces for sandboxes, made and removed with iproute2's
//! `ip netns` (so `ip netns list` shows what Petty holds), each named
//! `petty-…` and removed when its handle drops, with the veth pairs it
//! made. (The kernel removes a namespace's interfaces and their peers
//! itself, but later, from a work queue: a handle removes its host-side
//! veths first, so nothing is left once `drop` returns.)
//!
//! Needs `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` (root): [`Netns::create`]
//! says so when it is refused.

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Every namespace Petty makes is named with this prefix.
pub const PREFIX: &str = "petty-";

/// Where iproute2 keeps its named namespaces (a bind mount each).
pub const NETNS_DIR: &str = "/run/netns";

/// A command that failed, or could not be run.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The program could not be started.
    #[error("running {program}: {source} (install iproute2: apt-get install iproute2)")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed: {stderr}{hint}")]
    Failed {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
        /// What to do, when known.
        hint: &'static str,
    },
    /// A name that is not Petty's, or not one iproute2 takes.
    #[error("{0}")]
    Invalid(String),
}

/// Runs `program args`; its stdout, or what it said on failure.
fn run<I, S>(program: &Path, args: I) -> Result<String, NetError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    check(program, &args, out)
}

fn check(program: &Path, args: &[std::ffi::OsString], out: Output) -> Result<String, NetError> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if stderr.contains("Operation not permitted") || stderr.contains("Permission denied")
    {
        " (sandbox networking needs root: run petty as root, or use network mode none)"
    } else {
        ""
    };
    let command = std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Err(NetError::Failed {
        command,
        stderr,
        hint,
    })
}

/// A named network namespace, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    ip: PathBuf,
    /// Host-side ends of the veth pairs made into this namespace.
    host_links: Vec<String>,
    removed: bool,
}

impl Netns {
    /// Makes namespace `name` (which must start with [`PREFIX`]) with its
    /// loopback up, using the iproute2 `ip` at `ip`.
    pub fn create(ip: &Path, name: &str) -> Result<Self, NetError> {
        Self::create_with(ip, name, &[])
    }

    /// [`Netns::create`], then `setup` (lines of `ip` commands, as
    /// [`Netns::ip_batch`] takes them) in the same `ip` run that brings the
    /// loopback up: two processes in all.
    pub fn create_with(ip: &Path, name: &str, setup: &[String]) -> Result<Self, NetError> {
        let ok = name.starts_with(PREFIX)
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(NetError::Invalid(format!(
                "{name:?} is not a Petty namespace name: {PREFIX} then letters, digits, '-' or '_'"
            )));
        }
        run(ip, ["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
            ip: ip.to_path_buf(),
            host_links: Vec::new(),
            removed: false,
        };
        // Dropping `ns` on an error removes the namespace just made.
        let mut lines = vec!["link set lo up".to_string()];
        lines.extend_from_slice(setup);
        ns.ip_batch(&lines)?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that is the namespace, for `setns(2)` (what a VMM is
    /// started inside).
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Leaves the namespace (and its veths) in place: something else
    /// removes it now ([`remove_named`]).
    pub fn forget(mut self) {
        self.removed = true;
    }

    /// Runs `ip ARGS` inside the namespace; its stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String, NetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run(&self.ip, all)
    }

    /// Runs several `ip` commands inside the namespace in one `ip -batch`
    /// (one process instead of one each); each line as `ip` would take it
    /// after `ip -n NAME`.
    pub fn ip_batch(&self, lines: &[String]) -> Result<(), NetError> {
        use std::io::Write as _;
        let args: Vec<std::ffi::OsString> = vec![
            "-n".into(),
            self.name.clone().into(),
            "-batch".into(),
            "-".into(),
        ];
        let mut child = Command::new(&self.ip)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetError::Spawn {
                program: self.ip.clone(),
                source,
            })?;
        let mut text = lines.join("\n");
        text.push('\n');
        let _ = child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes());
        let out = child.wait_with_output().map_err(|source| NetError::Spawn {
            program: self.ip.clone(),
            source,
        })?;
        let mut shown = args;
        shown.push(format!("<<< {}", lines.join("; ")).into());
        check(&self.ip, &shown, out).map(|_| ())
    }

    /// A command that runs `program` inside the namespace, joined with
    /// `setns` just before it execs (no `ip netns exec` in between).
    pub fn command_inside(&self, program: &Path) -> Result<Command, NetError> {
        let mut c = Command::new(program);
        join_in_child(&mut c, &self.path())
            .map_err(|e| NetError::Invalid(format!("{}: {e}", self.path().display())))?;
        Ok(c)
    }

    /// A command that runs `argv` inside the namespace (`ip netns exec`).
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// A veth pair: `host` in the namespace this process is in, `inside`
    /// in this one, with `host_addr` and `inside_addr` on a /30 between
    /// them, both up.
    pub fn veth(
        &mut self,
        host: &str,
        inside: &str,
        host_addr: Ipv4Addr,
        inside_addr: Ipv4Addr,
    ) -> Result<(), NetError> {
        for n in [host, inside] {
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                return Err(NetError::Invalid(format!(
                    "{n:?} is not an interface name (1 to 15 characters, no '/' or space)"
                )));
            }
        }
        run(
            &self.ip,
            [
                "link", "add", host, "type", "veth", "peer", "name", inside, "netns", &self.name,
            ],
        )?;
        self.host_links.push(host.to_string());
        run(
            &self.ip,
            ["addr", "add", &format!("{host_addr}/30"), "dev", host],
        )?;
        run(&self.ip, ["link", "set", host, "up"])?;
        self.ip(["addr", "add", &format!("{inside_addr}/30"), "dev", inside])?;
        self.ip(["link", "set", inside, "up"])?;
        Ok(())
    }

    /// Removes the namespace now, with its veth pairs, saying why it
    /// could not.
    pub fn remove(mut self) -> Result<(), NetError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        self.removed = true;
        // Deleting one end of a veth pair deletes both, at once.
        let mut first_err = None;
        for link in std::mem::take(&mut self.host_links) {
            if let Err(e) = run(&self.ip, ["link", "delete", &link]) {
                first_err.get_or_insert(e);
            }
        }
        let ns = run(&self.ip, ["netns", "delete", &self.name]).map(drop);
        match first_err {
            Some(e) => Err(e),
            None => ns,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.teardown() {
                eprintln!("petty: removing network namespace {}: {e}", self.name);
            }
        }
    }
}

/// The Petty namespaces that exist (`ip netns list`, those named
/// `NS_GET_NSTYPE`: `_IO(0xb7, 0x3)`, the kind of namespace a file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Makes the child of `cmd` join the network namespace at `netns` (a file
/// such as `/run/netns/NAME`) just before it execs, with `setns(2)` in
/// `pre_exec`. The file is opened and checked to be a network namespace
/// here, so a missing one (`NotFound`) or another kind of file
/// (`InvalidInput`) fails before anything is spawned; `cmd` holds it open
/// until it is dropped.
pub fn join_in_child(cmd: &mut Command, netns: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let file = std::fs::File::open(netns)?;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a namespace file ({e})"),
        ));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a namespace, but not a network namespace",
        ));
    }
    // SAFETY: setns is async-signal-safe; `file` moves into the closure,
    // so the descriptor stays open as long as `cmd`.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The file of namespace `name`, which a process joins with `setns`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// [`PREFIX`]…): what a sweep compares with the sandboxes that live.
pub fn list(ip: &Path) -> Result<Vec<String>, NetError> {
    let out = run(ip, ["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect())
}

/// Removes namespace `name` left by a process that is gone.
pub fn remove_named(ip: &Path, name: &str) -> Result<(), NetError> {
    if !name.starts_with(PREFIX) {
        return Err(NetError::Invalid(format!(
            "{name:?} is not a Petty namespace; not removed"
        )));
    }
    run(ip, ["netns", "delete", name]).map(drop)
}
