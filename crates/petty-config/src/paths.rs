//! Default paths, derived from the environment the way the XDG base
//! directory specification says, and the search path for programs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::env::{self, Env};
use crate::model::{
    BackendSection, DefaultsSection, ImageSection, LimitsSection, McpSection, NetworkSection,
    PathsSection, PoolSection, ServerSection, Settings,
};

/// Where programs are looked for when `PATH` is not set (and by the
/// libraries when their caller gives no search path).
pub const STANDARD_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The built-in settings for `env`, and for each path key what it was
/// derived from.
pub(crate) fn defaults(env: &Env) -> (Settings, BTreeMap<String, String>) {
    let mut from = BTreeMap::new();
    let mut note = |key: &str, why: &str| {
        from.insert(key.to_string(), why.to_string());
    };
    let absolute = |name: &str| env.get(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let home = home(env);
    // The XDG spec says relative values are invalid and must be ignored.
    let data_dir = match (absolute(env::XDG_DATA_HOME), &home) {
        (Some(x), _) => {
            note("paths.data_dir", "$XDG_DATA_HOME/petty");
            x.join("petty")
        }
        (None, Some(h)) => {
            note("paths.data_dir", "~/.local/share/petty");
            h.join(".local/share/petty")
        }
        (None, None) => {
            note("paths.data_dir", "no home directory");
            PathBuf::from("/var/lib/petty")
        }
    };
    let cache_dir = match (absolute(env::XDG_CACHE_HOME), &home) {
        (Some(x), _) => {
            note("paths.cache_dir", "$XDG_CACHE_HOME/petty");
            x.join("petty")
        }
        (None, Some(h)) => {
            note("paths.cache_dir", "~/.cache/petty");
            h.join(".cache/petty")
        }
        (None, None) => {
            note("paths.cache_dir", "no home directory");
            PathBuf::from("/var/cache/petty")
        }
    };
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let run_dir = match absolute(env::XDG_RUNTIME_DIR) {
        Some(x) => {
            note("paths.run_dir", "$XDG_RUNTIME_DIR/petty");
            x.join("petty")
        }
        None if uid == 0 => {
            note("paths.run_dir", "root, no $XDG_RUNTIME_DIR");
            PathBuf::from("/run/petty")
        }
        None => {
            note("paths.run_dir", "no $XDG_RUNTIME_DIR");
            PathBuf::from(format!("/tmp/petty-{uid}"))
        }
    };
    let search_path = match env.get(env::PATH) {
        Some(p) => {
            note("paths.search_path", "$PATH");
            std::env::split_paths(p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        }
        None => {
            note("paths.search_path", "no $PATH");
            STANDARD_PATH.iter().map(PathBuf::from).collect()
        }
    };
    // The registry logins skopeo, podman and Docker write, whichever
    // exists first (none: pulls are anonymous).
    let auth_file = [
        absolute(env::REGISTRY_AUTH_FILE).map(|p| (p, "$REGISTRY_AUTH_FILE")),
        absolute(env::XDG_RUNTIME_DIR).map(|x| {
            (
                x.join("containers/auth.json"),
                "$XDG_RUNTIME_DIR/containers/auth.json",
            )
        }),
        home.as_ref()
            .map(|h| (h.join(".docker/config.json"), "~/.docker/config.json")),
    ]
    .into_iter()
    .flatten()
    .find(|(p, _)| p.is_file())
    .map(|(p, why)| {
        note("image.auth_file", why);
        p
    });
    let settings = Settings {
        paths: PathsSection {
            data_dir,
            cache_dir,
            run_dir,
            search_path,
        },
        backend: BackendSection::default(),
        limits: LimitsSection::default(),
        defaults: DefaultsSection::default(),
        pool: PoolSection::default(),
        server: ServerSection::default(),
        mcp: McpSection::default(),
        e2b: Default::default(),
        gateway: Default::default(),
        image: ImageSection {
            auth_file,
            ..ImageSection::default()
        },
        network: NetworkSection::default(),
        templates: crate::model::TemplatesSection::default(),
    };
    (settings, from)
}

/// The user's home: `$HOME`, else what the password database says.
pub(crate) fn home(env: &Env) -> Option<PathBuf> {
    env.get(env::HOME)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(passwd_home)
}

/// This user's home directory as the password database has it.
fn passwd_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 4096];
    // SAFETY: getpwuid_r writes into `pwd` and `buf` (whose length it is
    // given) and sets `result` to `pwd` or null; pw_dir points into `buf`,
    // which outlives its use here.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes();
        (!dir.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
    }
}

/// `name` if it holds a slash, else the first file of that name in
/// `search_path`; `None` when there is none.
pub fn find_program(name: &str, search_path: &[PathBuf]) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    search_path
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
