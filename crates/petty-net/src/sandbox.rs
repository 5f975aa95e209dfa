//! A sandbox's network on the host: its namespace (named after the sandbox),
//! the TAP device the VMM attaches to inside it, the ruleset, and the
//! helper process ([`crate::helper`]) that carries its traffic.
//!
//! Everything a sandbox's network holds lives inside its namespace or in
//! its directory under the state root, so removing the namespace (which
//! takes the TAP device and the ruleset with it), the helper and the
//! directory leaves nothing: no rule is added to the host's own firewall,
//! no route and no device outside the namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::addr::Cidr;
use crate::guest::{GATEWAY_IP, GATEWAY_MAC, PREFIX_LEN, TAP_NAME};
use crate::helper::{self, Control, HelperConfig, Status};
use crate::netns::{self, NetError, Netns};
use crate::spec::{NetworkSpec, Publish};

/// What every sandbox network's namespace is named: this, then the
/// sandbox's id (other `petty-` namespaces, a test's, are not swept).
pub const SANDBOX_PREFIX: &str = "petty-sb-";

/// How long the helper gets to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// A namespace this young without a helper may be one being made.
const CREATING_GRACE: Duration = Duration::from_secs(60);

/// How sandbox networks are made on this host.
#[derive(Debug, Clone)]
pub struct NetSettings {
    /// iproute2's `ip`.
    pub ip: PathBuf,
    /// nftables' `nft`.
    pub nft: PathBuf,
    /// The program that runs the helper as `PROGRAM __net-helper CONFIG`
    /// (the `petty` binary); `None`: networks cannot be made.
    pub helper: Option<PathBuf>,
    /// Where each sandbox's network directory goes.
    pub state_root: PathBuf,
    /// What `public` mode never reaches (`network.deny_cidrs`).
    pub deny: Vec<Cidr>,
    /// The resolvers the helper asks (`network.dns`, else the host's
    /// `/etc/resolv.conf`).
    pub upstreams: Vec<SocketAddr>,
    /// Per-sandbox cap on each direction, in Mbit/s; 0: none.
    pub bandwidth_mbit: u32,
    /// Most connections a sandbox has open at once; 0: none.
    pub max_connections: u32,
    /// Where published host ports listen.
    pub publish_address: IpAddr,
}

impl NetSettings {
    /// The namespace of sandbox `id`.
    pub fn netns_name(id: &str) -> String {
        format!("{SANDBOX_PREFIX}{id}")
    }

    /// The directory of sandbox `id`'s network.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.state_root.join(id)
    }

    /// Why networks cannot be made here, if they cannot: not root, or a
    /// program missing.
    pub fn unavailable(&self) -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some(
                "sandbox networks need root (network namespaces and TAP devices); \
                 run petty as root, or use --network none"
                    .into(),
            );
        }
        for (p, pkg) in [(&self.ip, "iproute2"), (&self.nft, "nftables")] {
            if !p.is_file() {
                return Some(format!("{} is missing: apt-get install {pkg}", p.display()));
            }
        }
        if self.helper.is_none() {
            return Some("no network helper program is configured (the petty binary)".into());
        }
        if !Path::new("/dev/net/tun").exists() {
            return Some("/dev/net/tun is missing: modprobe tun".into());
        }
        None
    }
}

/// Reads the `nameserver` lines of a resolv.conf.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// One sandbox's network, while it is being made: dropped before
/// [`SandboxNet::keep`], it removes everything it made.
pub struct SandboxNet {
    settings: NetSettings,
    id: String,
    ns: Option<Netns>,
    published: Vec<Publish>,
}

impl SandboxNet {
    /// Makes sandbox `id`'s namespace, TAP device and ruleset, and starts
    /// its helper, which follows process `owner` until [`Self::attach`]
    /// names the VMM. Every part made is removed again if a later one
    /// fails.
    pub fn create(
        settings: &NetSettings,
        id: &str,
        spec: &NetworkSpec,
        owner: u32,
    ) -> Result<Self, NetError> {
        if let Some(why) = settings.unavailable() {
            return Err(NetError::Invalid(why));
        }
        spec.policy(&settings.deny)
            .map_err(|e| NetError::Invalid(e.to_string()))?;
        let name = NetSettings::netns_name(id);
        let dir = settings.dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetError::Invalid(format!("making {}: {e}", dir.display())))?;
        let mut net = Self {
            settings: settings.clone(),
            id: id.to_string(),
            ns: None,
            published: Vec::new(),
        };
        // The TAP device in the run that brings the loopback up (each `ip`
        // run costs a few ms).
        let tap = [
            format!("tuntap add dev {TAP_NAME} mode tap"),
            format!("link set {TAP_NAME} address {GATEWAY_MAC}"),
            format!("addr add {GATEWAY_IP}/{PREFIX_LEN} dev {TAP_NAME}"),
            format!("link set {TAP_NAME} up"),
        ];
        let ns = net
            .ns
            .insert(Netns::create_with(&settings.ip, &name, &tap)?);
        load_ruleset(ns, &settings.nft)?;
        net.start_helper(spec, owner)?;
        Ok(net)
    }

    fn start_helper(&mut self, spec: &NetworkSpec, owner: u32) -> Result<(), NetError> {
        let s = &self.settings;
        let dir = s.dir(&self.id);
        let name = NetSettings::netns_name(&self.id);
        let config = HelperConfig {
            sandbox: self.id.clone(),
            netns_path: netns::path_of(&name),
            netns: name,
            dir: dir.clone(),
            ip: s.ip.clone(),
            spec: spec.clone(),
            deny: s.deny.clone(),
            upstreams: s.upstreams.clone(),
            bandwidth_bytes: u64::from(s.bandwidth_mbit) * 125_000,
            max_connections: s.max_connections,
            publish_address: s.publish_address,
            owner_pid: owner,
        };
        let path = dir.join(helper::CONFIG_FILE);
        let invalid = |what: String| NetError::Invalid(what);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&config).map_err(|e| invalid(e.to_string()))?,
        )
        .map_err(|e| invalid(format!("writing {}: {e}", path.display())))?;
        let program = s
            .helper
            .clone()
            .ok_or_else(|| invalid("no network helper".into()))?;
        let log = std::fs::File::create(dir.join(helper::LOG_FILE))
            .map_err(|e| invalid(format!("{}: {e}", dir.join(helper::LOG_FILE).display())))?;
        let mut cmd = Command::new(&program);
        cmd.arg("__net-helper")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe. A session of its own, so the
        // helper outlives its maker as a detached VMM does.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| NetError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Reaped by a thread of its own, so it is never left a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        let ready: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        if ready["ready"] != true {
            let said = std::fs::read_to_string(dir.join(helper::LOG_FILE)).unwrap_or_default();
            return Err(NetError::Failed {
                command: format!("{} __net-helper {}", program.display(), path.display()),
                stderr: last_lines(&said, 5),
                hint: "",
            });
        }
        self.published = serde_json::from_value(ready["publish"].clone()).unwrap_or_default();
        Ok(())
    }

    /// The namespace file the VMM is started in.
    pub fn netns_path(&self) -> PathBuf {
        netns::path_of(&NetSettings::netns_name(&self.id))
    }

    /// The published ports, with the host ports chosen.
    pub fn published(&self) -> &[Publish] {
        &self.published
    }

    /// Tells the helper to follow the VMM (`pid`) from now on.
    pub fn attach(&self, pid: u32) -> Result<(), NetError> {
        control(&self.settings, &self.id, &Control::Watch { pid }).map(|_| ())
    }

    /// The network now belongs to the sandbox: dropping this no longer
    /// removes it ([`remove`] does).
    pub fn keep(mut self) {
        if let Some(ns) = self.ns.take() {
            ns.forget();
        }
    }
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        if let Some(ns) = self.ns.take() {
            // Removed below, with the helper and the directory.
            ns.forget();
            if let Err(e) = remove(&self.settings, &self.id) {
                tracing::warn!(sandbox = %self.id, "removing its network: {e}");
            }
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn load_ruleset(ns: &Netns, nft: &Path) -> Result<(), NetError> {
    let mut cmd = ns.command_inside(nft)?;
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetError::Spawn {
        program: nft.to_path_buf(),
        source,
    })?;
    let _ = child
        .stdin
        .take()
        .expect("piped")
        .write_all(crate::ruleset::ruleset().as_bytes());
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        program: nft.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            command: format!("nft -f - (in {})", ns.name()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            hint: " (the kernel needs nf_tables and nft_redirect)",
        });
    }
    Ok(())
}

/// One request to sandbox `id`'s helper; its answer.
fn control(
    settings: &NetSettings,
    id: &str,
    request: &Control,
) -> Result<serde_json::Value, NetError> {
    let path = settings.dir(id).join(helper::CONTROL_SOCKET);
    let fail = |e: std::io::Error| {
        NetError::Invalid(format!(
            "the network helper of sandbox {id} does not answer ({}: {e})",
            path.display()
        ))
    };
    let mut s = UnixStream::connect(&path).map_err(fail)?;
    s.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(fail)?;
    let mut line = serde_json::to_string(request).expect("a request serializes");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(fail)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(fail)?;
    let v: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|e| NetError::Invalid(format!("the network helper said {answer:?}: {e}")))?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(NetError::Invalid(e.to_string())),
        None => Ok(v),
    }
}

/// Publishes a guest port of running sandbox `id`; the port with its host
/// port.
pub fn publish(settings: &NetSettings, id: &str, p: Publish) -> Result<Publish, NetError> {
    let v = control(settings, id, &Control::Publish { publish: p })?;
    serde_json::from_value(v["publish"].clone())
        .map_err(|e| NetError::Invalid(format!("the network helper's answer: {e}")))
}

/// Sandbox `id`'s network: the helper's counters and refusals, and the
/// packets its ruleset refused.
pub fn status(settings: &NetSettings, id: &str) -> Result<(Status, u64), NetError> {
    let v = control(settings, id, &Control::Status)?;
    let status: Status = serde_json::from_value(v)
        .map_err(|e| NetError::Invalid(format!("the network helper's answer: {e}")))?;
    let mut nft = Command::new(&settings.nft);
    let netns = netns::path_of(&NetSettings::netns_name(id));
    netns::join_in_child(&mut nft, &netns)
        .map_err(|e| NetError::Invalid(format!("{}: {e}", netns.display())))?;
    let packets = nft
        .args([
            "-j",
            "list",
            "counter",
            "inet",
            crate::ruleset::TABLE,
            "refused",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            v["nftables"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .unwrap_or(0);
    Ok((status, packets))
}

/// Every running network helper: its pid and its configuration file (from
/// its command line, `petty __net-helper CONFIG`), whichever state root it
/// belongs to.
fn helpers() -> Vec<(i32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let _program = args.next();
        if args.next() == Some(b"__net-helper".as_slice()) {
            if let Some(config) = args.next() {
                found.push((pid, PathBuf::from(String::from_utf8_lossy(config).as_ref())));
            }
        }
    }
    found
}

/// The pid of sandbox `id`'s helper under these settings, if it runs.
fn helper_pid(settings: &NetSettings, id: &str) -> Option<i32> {
    let config = settings.dir(id).join(helper::CONFIG_FILE);
    helpers()
        .into_iter()
        .find(|(_, c)| *c == config)
        .map(|(pid, _)| pid)
}

/// Removes sandbox `id`'s network: its helper, namespace and directory.
/// Nothing there is not an error.
pub fn remove(settings: &NetSettings, id: &str) -> Result<(), NetError> {
    let name = NetSettings::netns_name(id);
    // A sandbox that never had a network: two stats, not a scan of /proc.
    // (A helper's configuration is in its directory, which only this
    // removes.)
    if !settings.dir(id).exists() && !netns::path_of(&name).exists() {
        return Ok(());
    }
    if let Some(pid) = helper_pid(settings, id) {
        // SAFETY: kill(2) on the pid just checked to be the helper.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let r = if netns::path_of(&name).exists() {
        netns::remove_named(&settings.ip, &name)
    } else {
        Ok(())
    };
    let _ = std::fs::remove_dir_all(settings.dir(id));
    r
}

/// Removes every sandbox network whose helper is gone (its sandbox's VMM
/// ended without the helper seeing it, or the helper was killed), and
/// directories with no namespace. A namespace whose helper runs, under
/// this state root or another (another Petty on the host), is left alone.
/// The ids removed.
pub fn sweep(settings: &NetSettings) -> Vec<String> {
    let mut removed = Vec::new();
    let names = netns::list(&settings.ip).unwrap_or_default();
    let running: Vec<String> = helpers()
        .into_iter()
        .filter_map(|(_, config)| {
            Some(config.parent()?.file_name()?.to_string_lossy().into_owned())
        })
        .collect();
    let young = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() < CREATING_GRACE)
            .unwrap_or(false)
    };
    for name in &names {
        let Some(id) = name.strip_prefix(SANDBOX_PREFIX) else {
            continue;
        };
        if running.iter().any(|r| r == id) {
            continue;
        }
        // Being made: its helper not started yet.
        if young(&netns::path_of(name)) {
            continue;
        }
        if remove(settings, id).is_ok() {
            removed.push(id.to_string());
        }
    }
    if let Ok(entries) = std::fs::read_dir(&settings.state_root) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !names.contains(&NetSettings::netns_name(&id)) && !young(&e.path()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text =
            "# comment\nsearch example\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\noptions x\n";
        assert_eq!(
            resolv_conf_servers(text),
            vec![
                "10.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
