//! The edge: the settings are loaded once, here, from every source
//! ([`petty_config::load`]), and turned into the typed values the libraries
//! take: the backend's options, the manager's config, the image builder.
//! Nothing below this module reads the environment.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use petty_config::{AccelSetting, BackendKind as KindSetting, Loaded, Override, Settings, Sources};
use petty_core::{BackendKind, ManagerConfig, SandboxManager};
use petty_image::ImageBuilder;
use petty_vmm::firecracker::JailerConfig;
use petty_vmm::{choose_backend, Accel, AccelChoice, BackendOptions, Vmm};

/// Loads the settings: defaults, the system's and the user's files, `file`
/// (`--config`, else `$PETTY_CONFIG`), `PETTY_<SECTION>_<KEY>` variables,
/// then `flags`. Notices (an older variable name, a variable that is no
/// setting) go to stderr, one line each.
pub fn load(file: Option<PathBuf>, flags: Vec<Override>) -> anyhow::Result<Loaded> {
    let mut sources = Sources::process();
    sources.file = file;
    sources.flags = flags;
    let loaded = petty_config::load(&sources)?;
    for n in &loaded.notices {
        eprintln!("{n}");
    }
    Ok(loaded)
}

/// How backends are made under `s`.
pub fn backend_options(s: &Settings) -> BackendOptions {
    let q = &s.backend.qemu;
    let fc = &s.backend.firecracker;
    let accel = match q.accel {
        AccelSetting::Auto => None,
        AccelSetting::Kvm => Some(AccelChoice::forced(Accel::Kvm, "backend.qemu.accel = kvm")),
        AccelSetting::Tcg => Some(AccelChoice::forced(Accel::Tcg, "backend.qemu.accel = tcg")),
    };
    let jailer = JailerConfig::from_settings(|key| match key {
        "backend.firecracker.jailer" => fc.jailer.clone(),
        "backend.firecracker.jailer_uid" => fc.jailer_uid.map(|v| v.to_string()),
        "backend.firecracker.jailer_gid" => fc.jailer_gid.map(|v| v.to_string()),
        "backend.firecracker.jailer_chroot_base" => fc
            .jailer_chroot_base
            .as_ref()
            .map(|p| p.display().to_string()),
        "backend.firecracker.jailer_cgroups" => fc.jailer_cgroups.clone(),
        _ => None,
    });
    BackendOptions {
        search_path: Some(s.paths.search_path.clone()),
        boot_slots: s.limits.max_concurrent_boots,
        accel,
        qemu_binary: Some(q.binary.clone()),
        guest_aslr: q.guest_aslr.forced(),
        firecracker_binary: Some(fc.binary.clone()),
        firecracker_tap: fc.tap.clone(),
        firecracker_diff_snapshots: fc.diff_snapshots,
        jailer,
        flintlock: s
            .backend
            .flintlock
            .endpoint
            .is_some()
            .then(|| petty_flintlock::maker(flintlock_config(s))),
    }
}

/// `[backend.flintlock]` as the Flintlock backend takes it; `Err` names
/// the key that is missing or wrong.
pub fn flintlock_config(s: &Settings) -> Result<petty_flintlock::FlintlockConfig, String> {
    let f = &s.backend.flintlock;
    let need = |key: &str, v: &Option<String>| {
        v.clone().filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            format!("backend.flintlock.{key} is not set; the flintlock backend needs it")
        })
    };
    let guest_cidr = need("guest_cidr", &f.guest_cidr)?
        .parse()
        .map_err(|e| format!("backend.flintlock.guest_cidr: {e}"))?;
    let gateway = match &f.gateway {
        None => None,
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("backend.flintlock.gateway {g:?} is not an IPv4 address"))?,
        ),
    };
    let config = petty_flintlock::FlintlockConfig {
        endpoint: need("endpoint", &f.endpoint)?,
        namespace: f.namespace.clone(),
        kernel_image: need("kernel_image", &f.kernel_image)?,
        kernel_filename: f.kernel_filename.clone(),
        root_image: need("root_image", &f.root_image)?,
        guest_cidr,
        gateway,
        interface_type: f
            .interface_type
            .parse()
            .map_err(|e| format!("backend.flintlock.interface_type: {e}"))?,
        bridge: f.bridge.clone(),
        agent_port: f.agent_port,
        provider: f.provider.clone(),
    };
    config.validate()?;
    Ok(config)
}

/// `backend.kind` as a choice (`None`: auto).
pub fn configured_backend(s: &Settings) -> Option<BackendKind> {
    match s.backend.kind {
        KindSetting::Auto => None,
        KindSetting::Qemu => Some(BackendKind::Qemu),
        KindSetting::Firecracker => Some(BackendKind::Firecracker),
        KindSetting::Flintlock => Some(BackendKind::Flintlock),
    }
}

/// The backend `choice` names, else `backend.kind`, with its run
/// directories under `paths.run_dir`, and the line saying which it is.
pub fn backend(
    s: &Settings,
    choice: Option<BackendKind>,
) -> anyhow::Result<(Box<dyn Vmm>, String)> {
    let kind = choice.or_else(|| configured_backend(s));
    Ok(choose_backend(
        kind,
        s.paths.run_dir.clone(),
        &backend_options(s),
    )?)
}

/// The manager's config under `s`: state in `paths.data_dir`, assets from
/// `paths.cache_dir`, `limits.max_concurrent_sandboxes`, templates and
/// standby VMMs as `backend.*` says.
pub fn manager_config(s: &Settings) -> ManagerConfig {
    let mut mc = ManagerConfig::new(s.paths.data_dir.clone());
    mc.assets_dir = Some(s.paths.cache_dir.clone());
    mc.backends = backend_options(s);
    mc.max_sandboxes = s.limits.max_concurrent_sandboxes;
    mc.templates = s.backend.templates;
    mc.on_idle = idle_action(s.limits.on_idle);
    mc.max_kept_bytes =
        (s.limits.max_kept_disk_mib > 0).then_some(s.limits.max_kept_disk_mib << 20);
    mc.standby = s.backend.standby;
    if let Some(n) = s.limits.max_concurrent_boots {
        mc.max_concurrent_boots = n;
    }
    mc.network = Some(net_settings(s));
    mc
}

/// The manager's name for `limits.on_idle`'s value.
pub fn idle_action(v: petty_config::OnIdle) -> petty_core::IdleAction {
    use petty_config::OnIdle;
    use petty_core::IdleAction;
    match v {
        OnIdle::Destroy => IdleAction::Destroy,
        OnIdle::Stop => IdleAction::Stop,
        OnIdle::Hibernate => IdleAction::Hibernate,
    }
}

/// How sandbox networks are made under `s`: `ip` and `nft` from
/// `paths.search_path`, the helper (the `petty` binary, found beside this
/// executable or on the search path), state under `paths.run_dir`, and
/// the `network.*` keys; the resolvers are `network.dns`, else the host's
/// `/etc/resolv.conf`.
pub fn net_settings(s: &Settings) -> petty_net::NetSettings {
    let find = |name: &str| {
        petty_vmm::find_on_path(name, &s.paths.search_path)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin").join(name))
    };
    let n = &s.network;
    let upstreams = if n.dns.is_empty() {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| petty_net::sandbox::resolv_conf_servers(&t))
            .unwrap_or_default()
    } else {
        n.dns
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, 53))
            .collect()
    };
    petty_net::NetSettings {
        ip: find("ip"),
        nft: find("nft"),
        helper: crate::exe::find("petty", &s.paths.search_path),
        state_root: s.paths.run_dir.join(".net"),
        deny: n.deny_cidrs.clone(),
        upstreams,
        bandwidth_mbit: n.bandwidth_mbit,
        max_connections: n.max_connections,
        publish_address: n.publish_address,
    }
}

/// Opens the manager on the configured backend and paths (recovering what
/// earlier processes left). `standby: false` for a CLI command, which ends
/// right after its create: a standby VMM would die unused with it.
pub async fn manager(s: &Settings, standby: bool) -> anyhow::Result<(SandboxManager, String)> {
    let mut mc = manager_config(s);
    mc.standby &= standby;
    manager_with(s, mc).await
}

/// The sandbox manager `mc` describes, over the backend `s` chooses (see
/// [`manager`]).
pub async fn manager_with(
    s: &Settings,
    mc: ManagerConfig,
) -> anyhow::Result<(SandboxManager, String)> {
    let (vmm, notice) = backend(s, None)?;
    let manager = SandboxManager::new(mc, Arc::from(vmm))
        .await
        .context("opening the sandbox manager")?;
    Ok((manager, notice))
}

/// The image builder for `paths.cache_dir`, looking for its tools on
/// `paths.search_path` and using `image.debian_mirror`.
pub fn image_builder(s: &Settings) -> ImageBuilder {
    ImageBuilder::new(s.paths.cache_dir.clone())
        .with_search_path(s.paths.search_path.clone())
        .with_debian_mirror(s.image.debian_mirror.clone())
}

/// Builds any missing guest asset (progress on stderr when `progress`) and
/// returns them all.
pub async fn ensure_assets(s: &Settings, progress: bool) -> anyhow::Result<petty_image::Assets> {
    let builder = image_builder(s).with_progress(progress);
    let assets = tokio::task::spawn_blocking(move || builder.ensure())
        .await
        .context("image build task")??;
    Ok(assets)
}

/// The template builder over `manager` under `s`: layers kept in
/// `<paths.data_dir>/layers`, pulls and their limits as `image.*` says,
/// builds as `templates.*` says, `qemu-img` from `paths.search_path`.
pub fn template_builder(s: &Settings, manager: SandboxManager) -> petty_build::Builder {
    let i = &s.image;
    let t = &s.templates;
    let pull = petty_oci::PullOptions {
        default_registry: i.default_registry.clone(),
        insecure_registries: i.insecure_registries.clone(),
        ca_file: i.ca_file.clone(),
        registry_credentials: i
            .auth_file
            .as_deref()
            .map(registry_logins)
            .unwrap_or_default(),
        limits: petty_oci::Limits {
            max_image_bytes: i.max_image_mib << 20,
            max_layers: i.max_layers,
            max_unpacked_bytes: i.max_unpacked_mib << 20,
        },
        ..Default::default()
    };
    let settings = petty_build::BuildSettings {
        memory_mib: t.build_memory_mb,
        network: t.build_network,
        step_timeout: std::time::Duration::from_secs(t.step_timeout_secs),
        cache_max_bytes: t.cache_max_mib << 20,
        qemu_img: petty_vmm::find_on_path("qemu-img", &s.paths.search_path)
            .unwrap_or_else(|| PathBuf::from("qemu-img")),
    };
    petty_build::Builder::new(
        manager,
        image_builder(s),
        petty_oci::Store::new(s.paths.data_dir.join("layers")),
        pull,
        settings,
    )
}

/// The registry logins in `file`, an `auth.json` as `skopeo login` and
/// `podman login` write it (Docker's `config.json` has the same `auths`):
/// `{"auths": {"HOST[:PORT]": {"auth": base64("USER:PASSWORD")}}}`. A file
/// that cannot be read is said on stderr and gives none: pulls are then
/// anonymous, and a registry that wants a login says so.
pub fn registry_logins(
    file: &std::path::Path,
) -> std::collections::BTreeMap<String, (String, String)> {
    match parse_logins(file) {
        Ok(logins) => logins,
        Err(why) => {
            eprintln!(
                "petty: warning: not using the registry logins in {}: {why}",
                file.display()
            );
            Default::default()
        }
    }
}

fn parse_logins(
    file: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, (String, String)>, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut out = std::collections::BTreeMap::new();
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(out);
    };
    for (key, entry) in auths {
        // Docker names some registries by URL (`https://index.docker.io/v1/`).
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("the login of {key} is not base64: {e}"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| format!("the login of {key} is not UTF-8"))?;
        let Some((user, password)) = decoded.split_once(':') else {
            return Err(format!("the login of {key} is not USER:PASSWORD"));
        };
        out.insert(host, (user.to_string(), password.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_logins_are_read_per_host_from_auth_json() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        // "user:pa:ss" and "u2:p2", base64.
        std::fs::write(
            &file,
            r#"{"auths": {"registry.test:5000": {"auth": "dXNlcjpwYTpzcw=="},
                          "https://index.docker.io/v1/": {"auth": "dTI6cDI="},
                          "helper.test": {}}, "credsStore": "x"}"#,
        )
        .unwrap();
        let logins = registry_logins(&file);
        assert_eq!(
            logins.get("registry.test:5000"),
            Some(&("user".to_string(), "pa:ss".to_string()))
        );
        assert_eq!(
            logins.get("index.docker.io"),
            Some(&("u2".to_string(), "p2".to_string()))
        );
        assert_eq!(logins.len(), 2);
        std::fs::write(&file, r#"{"auths": {"a": {"auth": "!!"}}}"#).unwrap();
        assert!(parse_logins(&file).unwrap_err().contains("base64"));
        assert!(registry_logins(&dir.path().join("missing")).is_empty());
    }
}
