//! Every environment variable Petty reads, by name, in one place: the
//! `PETTY_<SECTION>_<KEY>` form of each key ([`var_name`]), the few
//! variables that are not keys, and the older names that still work for
//! one release with a notice. `grep` for a name here finds its only reader.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// A config file read after the system's and the user's (as `--config`).
pub const PETTY_CONFIG: &str = "PETTY_CONFIG";
/// Set (to anything but empty or `0`): skip `/etc/petty/config.toml` and
/// the user's config file. Tests and CI set it, so no file of the machine's
/// changes what they run.
pub const PETTY_NO_CONFIG: &str = "PETTY_NO_CONFIG";
/// The log filter (`tracing` directives, e.g. `debug`); `RUST_LOG` when unset.
pub const PETTY_LOG: &str = "PETTY_LOG";
/// The ecosystem's log filter, read when `PETTY_LOG` is not set.
pub const RUST_LOG: &str = "RUST_LOG";
/// Set: no colour in logs (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";
/// A shorthand for `PETTY_SERVER_API_KEYS` (comma-separated keys).
pub const PETTY_API_KEYS: &str = "PETTY_API_KEYS";

/// The user's home, for default paths.
pub const HOME: &str = "HOME";
/// XDG base directories, for default paths.
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// See [`XDG_CONFIG_HOME`].
pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";
/// See [`XDG_CONFIG_HOME`].
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// See [`XDG_CONFIG_HOME`].
pub const XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
/// Where programs (QEMU, Firecracker, the image build's tools) are looked for.
pub const PATH: &str = "PATH";
/// The registry logins file `skopeo login`/`podman login` write (their
/// own variable), read when `image.auth_file` is not set.
pub const REGISTRY_AUTH_FILE: &str = "REGISTRY_AUTH_FILE";

/// Variables of earlier releases, each with the key it sets now. They still
/// work for one release; each use logs a one-line notice.
pub const DEPRECATED: &[(&str, &str)] = &[
    ("PETTY_BACKEND", "backend.kind"),
    ("PETTY_QEMU", "backend.qemu.binary"),
    ("PETTY_ACCEL", "backend.qemu.accel"),
    ("PETTY_GUEST_ASLR", "backend.qemu.guest_aslr"),
    ("PETTY_FIRECRACKER", "backend.firecracker.binary"),
    ("PETTY_FIRECRACKER_TAP", "backend.firecracker.tap"),
    (
        "PETTY_FIRECRACKER_DIFF",
        "backend.firecracker.diff_snapshots",
    ),
    ("PETTY_JAILER", "backend.firecracker.jailer"),
    ("PETTY_JAILER_UID", "backend.firecracker.jailer_uid"),
    ("PETTY_JAILER_GID", "backend.firecracker.jailer_gid"),
    (
        "PETTY_JAILER_CHROOT_BASE",
        "backend.firecracker.jailer_chroot_base",
    ),
    ("PETTY_JAILER_CGROUPS", "backend.firecracker.jailer_cgroups"),
    ("PETTY_DATA_DIR", "paths.data_dir"),
    ("PETTY_RUN_DIR", "paths.run_dir"),
    ("PETTY_CACHE_DIR", "paths.cache_dir"),
    ("PETTY_DEBIAN_MIRROR", "image.debian_mirror"),
    ("PETTY_BACKEND_DATA_DIR", "paths.data_dir"),
    ("PETTY_BACKEND_RUN_DIR", "paths.run_dir"),
];

/// Keys of earlier releases' config files, each with the key it is now.
pub const DEPRECATED_KEYS: &[(&str, &str)] = &[
    ("backend.qemu_binary", "backend.qemu.binary"),
    ("backend.firecracker_binary", "backend.firecracker.binary"),
    ("backend.data_dir", "paths.data_dir"),
    ("backend.run_dir", "paths.run_dir"),
];

/// `section.key` (or `section.sub.key`) → `PETTY_SECTION_KEY`.
pub fn var_name(key: &str) -> String {
    format!("PETTY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// A snapshot of the variables a load looks at, taken once, so that a load
/// is a pure function of its inputs (and tests can give any environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, OsString>);

impl Env {
    /// This process's environment.
    pub fn process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
                .collect(),
        )
    }

    /// An environment holding exactly `vars`.
    pub fn from_pairs<K: Into<String>, V: Into<OsString>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&OsString> {
        self.0.get(name).filter(|v| !v.is_empty())
    }

    /// The value of `name` as text, if set, not empty and valid UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str())
    }

    /// Every `PETTY_…` variable, by name.
    pub(crate) fn petty_vars(&self) -> impl Iterator<Item = (&str, &OsString)> {
        self.0
            .iter()
            .filter(|(k, v)| k.starts_with("PETTY_") && !v.is_empty())
            .map(|(k, v)| (k.as_str(), v))
    }

    /// True when `name` is set to something other than empty or `0`.
    pub fn flag(&self, name: &str) -> bool {
        self.text(name).is_some_and(|v| v.trim() != "0")
    }
}
