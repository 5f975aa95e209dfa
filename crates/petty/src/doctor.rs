//! `petty doctor`: what this host has and lacks, with the command that fixes each gap.

use std::process::ExitCode;

use petty_config::Settings;
use petty_image::StatusKind;
use petty_vmm::find_on_path;
use petty_vmm::Accel;

struct Line {
    ok: bool,
    needed: bool,
    name: String,
    detail: String,
    fix: Option<String>,
}

pub async fn doctor(s: &Settings) -> anyhow::Result<ExitCode> {
    let mut lines = Vec::new();
    let options = petty::settings::backend_options(s);
    let (vmm, _) = options.qemu(s.paths.run_dir.clone());

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
    let qemu_img = find_on_path("qemu-img", &s.paths.search_path);
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
    let fc_vmm = options.firecracker(s.paths.run_dir.clone());
    let fc = fc_vmm.availability();
    lines.push(Line {
        ok: fc.is_ok(),
        needed: false,
        name: "backend: firecracker".into(),
        detail: match &fc {
            Ok(p) => format!(
                "usable ({}, {})",
                p.display(),
                version_of(&p.display().to_string())
            ),
            Err(why) => format!("unusable: {why}"),
        },
        // A setting that is wrong is said (and fixed) on the jailer's line.
        fix: (fc.is_err() && fc_vmm.settings_error().is_none())
            .then(|| "install Firecracker 1.16.1 or later on PATH (or set backend.firecracker.binary), on a host with KVM".into()),
    });
    lines.extend(firecracker_settings(&fc_vmm, &s.paths.search_path));
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
    lines.extend(flintlock_lines(s).await);
    let auto = match (fc.is_ok(), qemu.is_ok()) {
        (true, _) => "firecracker",
        (false, true) => "qemu",
        (false, false) => "none",
    };
    lines.push(Line {
        ok: auto != "none",
        needed: true,
        name: format!("backend chosen (auto): {auto}"),
        detail: format!(
            "backend.kind = {} (PETTY_BACKEND_KIND=qemu|firecracker|flintlock|auto overrides; auto never picks flintlock)",
            petty::settings::configured_backend(s).map_or("auto", |k| k.as_str())
        ),
        fix: (auto == "none").then(|| "apt-get install qemu-system-x86".into()),
    });

    let root = s.paths.run_dir.clone();
    let private = petty_vmm::ensure_run_root(&root);
    lines.push(Line {
        ok: private.is_ok(),
        needed: true,
        name: "run directory root".into(),
        detail: match &private {
            Ok(()) => format!("{} (private to this user)", root.display()),
            Err(e) => e.to_string(),
        },
        fix: private.is_err().then(|| {
            format!(
                "remove or fix {} as the message says, or set paths.run_dir (PETTY_PATHS_RUN_DIR) to a private directory",
                root.display()
            )
        }),
    });

    let builder = petty::settings::image_builder(s);
    let image_mib = builder
        .locate()
        .ok()
        .and_then(|a| petty_vmm::disk_image_size(&a.rootfs).ok())
        .map(|b| b.div_ceil(1 << 20));
    lines.push(Line {
        ok: true,
        needed: false,
        name: "sandbox root disk".into(),
        detail: format!(
            "{}+ {} MiB free by default (defaults.disk_free_mb; --disk-mib N for a size); sparse, so host disk is spent only as the guest writes",
            image_mib.map_or(String::new(), |m| format!("the image's {m} MiB ")),
            s.defaults.disk_free_mb
        ),
        fix: None,
    });
    for st in builder.status() {
        let label = match st.kind {
            StatusKind::Asset => format!("asset: {}", st.name),
            StatusKind::Host => st.name.clone(),
        };
        let mut detail = st
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(d) = &st.detail {
            if !detail.is_empty() {
                detail.push_str(" — ");
            }
            detail.push_str(d);
        }
        lines.push(Line {
            ok: st.present,
            needed: st.needed,
            name: label,
            detail,
            fix: st.fix.clone(),
        });
    }

    // Networks: which modes this host can give sandboxes.
    let net = petty::settings::net_settings(s);
    let why = net.unavailable();
    lines.push(Line {
        ok: why.is_none(),
        needed: false,
        name: "network modes".into(),
        detail: match &why {
            None => format!(
                "none, public and allow (namespaces by {}, rules by {}; resolvers: {})",
                net.ip.display(),
                net.nft.display(),
                if net.upstreams.is_empty() {
                    "none found".to_string()
                } else {
                    net.upstreams
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Some(why) => format!("none only: {why}"),
        },
        fix: why.map(|_| "run as root; apt-get install iproute2 nftables".into()),
    });

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

/// The Flintlock backend: configured or not, its endpoint answering a
/// `ListMicroVMs`, and what it lacks.
async fn flintlock_lines(s: &Settings) -> Vec<Line> {
    let Some(endpoint) = s.backend.flintlock.endpoint.clone() else {
        return vec![Line {
            ok: true,
            needed: false,
            name: "backend: flintlock".into(),
            detail:
                "not configured (backend.flintlock.endpoint puts sandboxes on a Flintlock host)"
                    .into(),
            fix: None,
        }];
    };
    let config = match petty::settings::flintlock_config(s) {
        Ok(c) => c,
        Err(why) => {
            return vec![Line {
                ok: false,
                needed: false,
                name: "backend: flintlock".into(),
                detail: format!("misconfigured: {why}"),
                fix: Some(
                    "set the [backend.flintlock] keys (petty.example.toml lists them)".into(),
                ),
            }]
        }
    };
    let vmm = petty_flintlock::FlintlockVmm::new(config, s.paths.run_dir.clone());
    let listed = tokio::time::timeout(std::time::Duration::from_secs(10), vmm.list()).await;
    let namespace = &vmm.config().namespace;
    let (ok, detail) = match listed {
        Ok(Ok(vms)) => (
            true,
            format!(
                "{endpoint} answers (ListMicroVMs: {} MicroVM(s) in namespace {namespace})",
                vms.len()
            ),
        ),
        Ok(Err(e)) => (false, format!("unreachable: {e}")),
        Err(_) => (
            false,
            format!("{endpoint} did not answer ListMicroVMs within 10 s"),
        ),
    };
    vec![
        Line {
            ok,
            needed: false,
            name: "backend: flintlock".into(),
            detail,
            fix: (!ok).then(|| {
                "start flintlockd there, or fix backend.flintlock.endpoint (and the network to it)"
                    .into()
            }),
        },
        Line {
            ok: false,
            needed: false,
            name: "flintlock: snapshots".into(),
            detail: "none: no snapshots, forks, hibernation, templates, pause or stop/start on this backend (use qemu or firecracker for them)".into(),
            fix: None,
        },
    ]
}

/// What the Firecracker backend would do with its settings: snapshots,
/// jailer, network.
fn firecracker_settings(
    fc: &petty_vmm::firecracker::FirecrackerVmm,
    search_path: &[std::path::PathBuf],
) -> Vec<Line> {
    let mut lines = vec![Line {
        ok: true,
        needed: false,
        name: "firecracker: snapshots".into(),
        detail: if fc.diff_snapshots() {
            "restore, fork and templates; Diff snapshots of restored VMs (backend.firecracker.diff_snapshots)"
                .into()
        } else {
            "restore, fork and templates; Full snapshots (backend.firecracker.diff_snapshots = true for Diffs)"
                .into()
        },
        fix: None,
    }];
    let jailer = match (fc.settings_error(), fc.jailer()) {
        (Some(e), _) => Err((e.to_string(), None)),
        (None, None) => Ok(
            "off: VMs run unjailed (backend.firecracker.jailer, jailer_uid and jailer_gid turn it on)"
                .to_string(),
        ),
        (None, Some(j)) => {
            let cgroups = if j.cgroups.is_empty() {
                "no cgroup limits".to_string()
            } else {
                j.cgroups
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            match find_on_path(&j.binary, search_path) {
                None => Err((
                    format!("backend.firecracker.jailer is {} but it is not on the search path", j.binary),
                    Some("install the jailer of the same release as firecracker".to_string()),
                )),
                Some(_) if !root => Err((
                    "the jailer needs petty to run as root".to_string(),
                    Some("run petty as root, or unset backend.firecracker.jailer".to_string()),
                )),
                Some(p) => Ok(format!(
                    "on: {} as uid {} gid {}, jails under {}, {cgroups}",
                    p.display(),
                    j.uid,
                    j.gid,
                    j.chroot_base.display()
                )),
            }
        }
    };
    lines.push(match jailer {
        Ok(detail) => Line {
            ok: true,
            needed: false,
            name: "firecracker: jailer".into(),
            detail,
            fix: None,
        },
        Err((detail, fix)) => Line {
            ok: false,
            needed: false,
            name: "firecracker: jailer".into(),
            detail,
            fix,
        },
    });
    lines.push(Line {
        ok: true,
        needed: false,
        name: "firecracker: network".into(),
        detail: match fc.tap() {
            Some(tap) => format!("eth0 on TAP device {tap} (one VM at a time)"),
            None => "none (backend.firecracker.tap gives VMs eth0 on a TAP device)".into(),
        },
        fix: None,
    });
    lines
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
