//! `petty doctor`: what this host has and lacks, with the command that fixes each gap.

use std::process::ExitCode;

use petty_image::{ImageBuilder, StatusKind};
use petty_vmm::qemu::{find_on_path, QemuVmm};
use petty_vmm::{runtime_root, Accel, AccelChoice};

struct Line {
    ok: bool,
    needed: bool,
    name: String,
    detail: String,
    fix: Option<String>,
}

pub async fn doctor() -> anyhow::Result<ExitCode> {
    let mut lines = Vec::new();
    let vmm = QemuVmm::new(AccelChoice::detect(), runtime_root());

    let qemu = vmm.find_binary();
    lines.push(Line {
        ok: qemu.is_ok(),
        needed: true,
        name: "qemu-system-x86_64".into(),
        detail: match &qemu {
            Ok(p) => format!("{} ({})", p.display(), version_of(&p.display().to_string())),
            Err(_) => "not found: no backend can run VMs".into(),
        },
        fix: qemu
            .is_err()
            .then(|| "apt-get install qemu-system-x86".into()),
    });
    let qemu_img = find_on_path("qemu-img");
    lines.push(Line {
        ok: qemu_img.is_some(),
        needed: true,
        name: "qemu-img".into(),
        detail: qemu_img
            .as_ref()
            .map_or("not found: needed for copy-on-write disks".into(), |p| {
                p.display().to_string()
            }),
        fix: qemu_img
            .is_none()
            .then(|| "apt-get install qemu-utils".into()),
    });
    let accel = vmm.accel();
    lines.push(Line {
        ok: accel.accel == Accel::Kvm,
        needed: false,
        name: format!("accelerator: {}", accel.accel),
        detail: accel.reason.clone(),
        fix: None,
    });
    let fc = petty_vmm::firecracker::FirecrackerVmm::new(runtime_root()).availability();
    lines.push(Line {
        ok: fc.is_ok(),
        needed: false,
        name: "backend: firecracker".into(),
        detail: match &fc {
            Ok(p) => format!("usable ({})", p.display()),
            Err(why) => format!("unusable: {why}"),
        },
        fix: fc
            .is_err()
            .then(|| "install Firecracker 1.16.1 or later on PATH (or set PETTY_FIRECRACKER), on a host with KVM".into()),
    });
    lines.push(Line {
        ok: qemu.is_ok(),
        needed: false,
        name: "backend: qemu".into(),
        detail: match (&qemu, accel.accel) {
            (Ok(_), Accel::Kvm) => "usable, with KVM".into(),
            (Ok(_), Accel::Tcg) => "usable, with TCG software emulation".into(),
            (Err(_), _) => "unusable: no qemu-system-x86_64".into(),
        },
        fix: None,
    });
    let auto = match (fc.is_ok(), qemu.is_ok()) {
        (true, _) => "firecracker",
        (false, true) => "qemu",
        (false, false) => "none",
    };
    lines.push(Line {
        ok: auto != "none",
        needed: true,
        name: format!("backend chosen (auto): {auto}"),
        detail: "PETTY_BACKEND=qemu|firecracker|auto overrides".into(),
        fix: (auto == "none").then(|| "apt-get install qemu-system-x86".into()),
    });

    let builder = ImageBuilder::new(petty_image::cache_dir());
    for s in builder.status() {
        let label = match s.kind {
            StatusKind::Asset => format!("asset: {}", s.name),
            StatusKind::Host => s.name.clone(),
        };
        let mut detail = s
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(d) = &s.detail {
            if !detail.is_empty() {
                detail.push_str(" — ");
            }
            detail.push_str(d);
        }
        lines.push(Line {
            ok: s.present,
            needed: s.needed,
            name: label,
            detail,
            fix: s.fix.clone(),
        });
    }

    let mut blocking = 0;
    for l in &lines {
        let mark = match (l.ok, l.needed) {
            (true, _) => "ok  ",
            (false, true) => {
                blocking += 1;
                "MISS"
            }
            (false, false) => "--  ",
        };
        println!("{mark} {:<24} {}", l.name, l.detail);
        if let (false, Some(fix)) = (l.ok, &l.fix) {
            println!("     {:<24} fix: {fix}", "");
        }
    }
    if blocking == 0 {
        println!("ready: `petty run --python 'print(6*7)'` will work");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{blocking} gap(s) above; `scripts/install-deps` then `petty image build` fix them all"
        );
        Ok(ExitCode::FAILURE)
    }
}

fn version_of(binary: &str) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "version unknown".into())
}
