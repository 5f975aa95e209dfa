//! Running a command as another user (a template's `USER`).
//!
//! The agent spawns with `posix_spawn`, which cannot change credentials, so
//! a command for a user other than root starts as the agent itself:
//! `petty-agent --run-as UID:GID:G1,G2 PROGRAM ARGV0 ARGS…` drops to the
//! user (supplementary groups, group, user, in that order) and `execve`s
//! the program with the environment it was given.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// Who a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// From `/etc/passwd`, when the user is listed there.
    pub home: Option<String>,
    pub name: Option<String>,
}

impl Credentials {
    /// `--run-as`'s argument.
    pub fn arg(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        format!("{}:{}:{}", self.uid, self.gid, groups.join(","))
    }
}

/// Resolves `spec` (`user`, `uid`, `user:group`, `uid:gid`) against the
/// guest's `/etc/passwd` and `/etc/group`, as Docker's `USER` does: a
/// numeric user need not be listed (its group is then 0), a name must be.
pub fn resolve(spec: &str) -> Result<Credentials, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_in(spec, &passwd, &group)
}

fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Credentials, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("user {spec:?} names no user"));
    }
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let (uid, mut gid, home, name) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| format!("/etc/passwd has a bad uid for {user}"))?,
            f[3].parse::<u32>()
                .map_err(|_| format!("/etc/passwd has a bad gid for {user}"))?,
            Some(f[5].to_string()),
            Some(f[0].to_string()),
        ),
        (None, Ok(uid)) => (uid, 0, None, None),
        (None, Err(_)) => {
            return Err(format!(
                "user {user} is not in the sandbox's /etc/passwd; create it (useradd) or give a uid"
            ))
        }
    };
    // name:x:gid:member,member
    let groups_table: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups_table
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g} is not in the sandbox's /etc/group"))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(n) = &name {
        for f in &groups_table {
            if f[3].split(',').any(|m| m == n) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups,
        home,
        name,
    })
}

/// `--run-as UID:GID:GROUPS PROGRAM ARGV…`: drop to the user and exec.
pub fn run_as(args: &[String]) -> ExitCode {
    match try_run_as(args) {
        Ok(never) => match never {},
        Err(msg) => {
            eprintln!("petty-agent: {msg}");
            ExitCode::from(126)
        }
    }
}

enum Never {}

fn try_run_as(args: &[String]) -> Result<Never, String> {
    let [creds, program, argv @ ..] = args else {
        return Err("--run-as needs UID:GID:GROUPS PROGRAM ARGV".into());
    };
    let mut parts = creds.splitn(3, ':');
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (num(parts.next()), num(parts.next())) else {
        return Err(format!("bad credentials {creds:?}"));
    };
    let groups: Vec<libc::gid_t> = parts
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|g| g.parse().ok())
        .collect();
    // SAFETY: plain system calls on values we own; the order (groups, gid,
    // uid) is the one that leaves no root privilege behind.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(gid) != 0 {
            return Err(format!("setgid {gid}: {}", std::io::Error::last_os_error()));
        }
        if libc::setuid(uid) != 0 {
            return Err(format!("setuid {uid}: {}", std::io::Error::last_os_error()));
        }
    }
    let prog = CString::new(std::path::Path::new(program).as_os_str().as_bytes())
        .map_err(|_| "program contains a NUL byte".to_string())?;
    let c_argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| "argument contains a NUL byte".to_string())?;
    let mut ptrs: Vec<*const libc::c_char> = c_argv.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and a NULL-terminated array that
    // outlive the call; execv returns only on failure.
    unsafe { libc::execv(prog.as_ptr(), ptrs.as_ptr()) };
    Err(format!("{program}: {}", std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nbob:x:1000:\nstaff:x:50:bob,eve\nwheel:x:10:eve\n";

    #[test]
    fn names_and_numbers_resolve() {
        let bob = resolve_in("bob", PASSWD, GROUP).unwrap();
        assert_eq!(
            (bob.uid, bob.gid, bob.groups.clone()),
            (1000, 1000, vec![1000, 50])
        );
        assert_eq!(bob.home.as_deref(), Some("/home/bob"));
        assert_eq!(
            resolve_in("1000", PASSWD, GROUP).unwrap().name.as_deref(),
            Some("bob")
        );
        let anon = resolve_in("4242", PASSWD, GROUP).unwrap();
        assert_eq!((anon.uid, anon.gid, anon.home), (4242, 0, None));
        let grp = resolve_in("bob:wheel", PASSWD, GROUP).unwrap();
        assert_eq!(grp.gid, 10);
        assert_eq!(resolve_in("0:7", PASSWD, GROUP).unwrap().gid, 7);
        assert_eq!(grp.arg(), "1000:10:10,50");
    }

    #[test]
    fn unknown_names_are_refused_with_a_way_out() {
        let e = resolve_in("alice", PASSWD, GROUP).unwrap_err();
        assert!(e.contains("useradd"), "{e}");
        assert!(resolve_in("bob:nogroup", PASSWD, GROUP).is_err());
        assert!(resolve_in(":0", PASSWD, GROUP).is_err());
        assert!(resolve_in("bob", "garbage", "").is_err());
    }
}
