//! Choosing between hardware virtualisation (KVM) and software emulation (TCG).
//!
//! `/dev/kvm` existing is not enough: on hosts whose KVM is `kvm_pvm`, only
//! guests built for PVM boot and a stock kernel hangs silently. That is
//! detected here, before any VM starts, so callers fall back to TCG and say why.

use std::fmt;
use std::path::Path;

/// How the VMM runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slower, runs anywhere.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The accelerator picked for this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// What will be used.
    pub accel: Accel,
    /// One line saying why.
    pub reason: String,
}

impl AccelChoice {
    /// Probes the host: KVM when `/dev/kvm` is there and can boot a stock
    /// kernel, else TCG, with the reason.
    pub fn detect() -> Self {
        Self::probe(Path::new("/dev/kvm"), Path::new("/sys/module"))
    }

    /// `accel`, as a setting chose it (`why` names the setting).
    pub fn forced(accel: Accel, why: impl Into<String>) -> Self {
        Self {
            accel,
            reason: why.into(),
        }
    }

    fn tcg(reason: &str) -> Self {
        Self {
            accel: Accel::Tcg,
            reason: reason.into(),
        }
    }

    fn probe(dev: &Path, modules: &Path) -> Self {
        if !dev.exists() {
            return Self::tcg(
                "no /dev/kvm on this host (load kvm_intel or kvm_amd for hardware speed)",
            );
        }
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            return Self::tcg(&format!(
                "/dev/kvm cannot be opened ({e}); add your user to the `kvm` group for hardware speed"
            ));
        }
        if modules.join("kvm_pvm").exists() {
            return Self::tcg(
                "/dev/kvm is kvm_pvm, which boots only PVM-built guest kernels (a stock kernel hangs under it)",
            );
        }
        Self {
            accel: Accel::Kvm,
            reason: "/dev/kvm is usable".into(),
        }
    }

    /// The one-line notice printed when a VM starts.
    pub fn notice(&self) -> String {
        match self.accel {
            Accel::Kvm => "petty: using KVM".into(),
            Accel::Tcg => format!("petty: using TCG software emulation: {}", self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dev_means_tcg() {
        let t = tempdir();
        let d = t.path();
        let c = AccelChoice::probe(&d.join("kvm"), d);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("no /dev/kvm"));
    }

    #[test]
    fn kvm_pvm_module_means_tcg() {
        let t = tempdir();
        let d = t.path();
        std::fs::write(d.join("kvm"), b"").unwrap();
        std::fs::create_dir(d.join("kvm_pvm")).unwrap();
        let c = AccelChoice::probe(&d.join("kvm"), d);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("kvm_pvm"), "{}", c.reason);
    }

    #[test]
    fn openable_dev_without_pvm_means_kvm() {
        let t = tempdir();
        let d = t.path();
        std::fs::write(d.join("kvm"), b"").unwrap();
        assert_eq!(AccelChoice::probe(&d.join("kvm"), d).accel, Accel::Kvm);
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
