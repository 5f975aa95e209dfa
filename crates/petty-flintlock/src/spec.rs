//! How a Petty VM maps onto Flintlock's `MicroVMSpec`, and back. Pure, so
//! the mapping is tested without a server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use petty_protocol::tcp::{self, GuestNet};
use petty_vmm::VmConfig;

use crate::config::{FlintlockConfig, InterfaceType};
use crate::proto::types::{
    micro_vm_status::MicroVmState, network_interface::IfaceType, Kernel, MicroVm, MicroVmSpec,
    NetworkInterface, NetworkOverrides, StaticAddress, Volume, VolumeSource,
};

/// The label every MicroVM Petty makes carries, its value the VM's id.
pub const LABEL: &str = "petty.vm";

/// Flintlock's id of the one interface Petty gives a VM. Flintlock matches
/// the guest's device by the MAC Petty sets, so this is only a name
/// (Firecracker keeps `eth0` for Flintlock's own metadata interface).
pub const DEVICE_ID: &str = "eth1";

/// What Petty decides for one guest before asking Flintlock for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPlan {
    /// Its network settings (MAC, address, gateway).
    pub net: GuestNet,
    /// The agent's token.
    pub token: String,
}

/// The MicroVM to create for `vm` under `cfg` with `plan`.
pub fn microvm_spec(cfg: &FlintlockConfig, vm: &VmConfig, plan: &GuestPlan) -> MicroVmSpec {
    let mut cmdline: HashMap<String, String> = HashMap::new();
    for word in &vm.extra_cmdline {
        let (k, v) = word.split_once('=').unwrap_or((word, ""));
        cmdline.insert(k.into(), v.into());
    }
    for (k, v) in [
        ("init", "/sbin/petty-agent".to_string()),
        (tcp::TRANSPORT_ARG, tcp::TRANSPORT_TCP.to_string()),
        (tcp::PORT_ARG, cfg.agent_port.to_string()),
        (tcp::TOKEN_ARG, plan.token.clone()),
        (tcp::NET_ARG, plan.net.to_arg()),
    ] {
        cmdline.insert(k.into(), v);
    }
    MicroVmSpec {
        id: vm.id.clone(),
        namespace: cfg.namespace.clone(),
        labels: HashMap::from([(LABEL.to_string(), vm.id.clone())]),
        vcpu: vm.vcpus as i32,
        memory_in_mb: vm.memory_mib as i32,
        kernel: Some(Kernel {
            image: cfg.kernel_image.clone(),
            cmdline,
            filename: cfg.kernel_filename.clone(),
            // The agent configures its interface from `petty.net`: no
            // cloud-init network-config is wanted.
            add_network_config: false,
        }),
        initrd: None,
        root_volume: Some(Volume {
            id: "root".into(),
            is_read_only: false,
            mount_point: None,
            source: Some(VolumeSource {
                container_source: Some(cfg.root_image.clone()),
            }),
            partition_id: None,
            size_in_mb: vm.disk_size_mib.map(|m| m as i32),
        }),
        additional_volumes: Vec::new(),
        interfaces: vec![NetworkInterface {
            device_id: DEVICE_ID.into(),
            r#type: match cfg.interface_type {
                InterfaceType::Tap => IfaceType::Tap,
                InterfaceType::Macvtap => IfaceType::Macvtap,
            } as i32,
            guest_mac: Some(plan.net.mac.clone()),
            address: Some(StaticAddress {
                address: format!("{}/{}", plan.net.ip, plan.net.prefix),
                gateway: Some(plan.net.gateway.to_string()),
                nameservers: Vec::new(),
            }),
            overrides: cfg.bridge.clone().map(|b| NetworkOverrides {
                bridge_name: Some(b),
            }),
        }],
        metadata: HashMap::new(),
        created_at: None,
        updated_at: None,
        deleted_at: None,
        uid: None,
        provider: cfg.provider.clone(),
    }
}

/// The guest addresses the MicroVMs in `vms` have (their interfaces'
/// static addresses).
pub fn used_addresses(vms: &[MicroVm]) -> HashSet<Ipv4Addr> {
    vms.iter()
        .filter_map(|m| m.spec.as_ref())
        .flat_map(|s| &s.interfaces)
        .filter_map(|i| i.address.as_ref())
        .filter_map(|a| a.address.split('/').next()?.parse().ok())
        .collect()
}

/// A free guest address in `cfg`'s network (not the gateway, not in
/// `used`), picked from `seed` so that two hosts creating at once rarely
/// pick the same one.
pub fn choose_address(
    cfg: &FlintlockConfig,
    used: &HashSet<Ipv4Addr>,
    seed: u64,
) -> Option<Ipv4Addr> {
    let gw = cfg.gateway();
    let free: Vec<Ipv4Addr> = cfg
        .guest_cidr
        .hosts()
        .filter(|ip| *ip != gw && !used.contains(ip))
        .collect();
    (!free.is_empty()).then(|| free[(seed % free.len() as u64) as usize])
}

/// A locally administered unicast MAC address from `bytes`.
pub fn mac_from(bytes: [u8; 5]) -> String {
    let mut mac = String::from("02");
    for b in bytes {
        mac.push_str(&format!(":{b:02x}"));
    }
    mac
}

/// What a MicroVM's status says about whether it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Still being made.
    Pending,
    /// Made and running.
    Created,
    /// Failed, or on its way out.
    Ended(&'static str),
}

/// The liveness of `vm` from its status.
pub fn liveness(vm: &MicroVm) -> Liveness {
    let state = vm
        .status
        .as_ref()
        .and_then(|s| MicroVmState::try_from(s.state).ok());
    match state {
        Some(MicroVmState::Created) => Liveness::Created,
        Some(MicroVmState::Failed) => Liveness::Ended("Flintlock reports it FAILED"),
        Some(MicroVmState::Deleting) => Liveness::Ended("Flintlock is deleting it"),
        Some(MicroVmState::Pending) | None => Liveness::Pending,
    }
}

/// The kernel command line of a spec as words (`k=v`, or `k` alone), in
/// a stable order: what a provider passes to the guest.
pub fn cmdline_words(spec: &MicroVmSpec) -> Vec<String> {
    let map: BTreeMap<&String, &String> = spec
        .kernel
        .as_ref()
        .map(|k| k.cmdline.iter().collect())
        .unwrap_or_default();
    map.into_iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FlintlockConfig {
        FlintlockConfig {
            endpoint: "http://127.0.0.1:9090".into(),
            namespace: "petty".into(),
            kernel_image: "example/petty-kernel:1".into(),
            kernel_filename: Some("boot/vmlinux".into()),
            root_image: "example/petty-rootfs:1".into(),
            guest_cidr: "10.9.0.0/29".parse().unwrap(),
            gateway: None,
            interface_type: InterfaceType::Tap,
            bridge: Some("br-petty".into()),
            agent_port: 52,
            provider: None,
        }
    }

    fn plan() -> GuestPlan {
        GuestPlan {
            net: GuestNet::parse("02:01:02:03:04:05,10.9.0.3/29,10.9.0.1").unwrap(),
            token: "ab".repeat(32),
        }
    }

    #[test]
    fn a_vm_maps_onto_a_microvm_spec() {
        let vm = VmConfig {
            memory_mib: 512,
            vcpus: 1,
            disk_size_mib: Some(2048),
            extra_cmdline: vec!["quiet".into(), "random.trust_cpu=on".into()],
            ..VmConfig::new("sb-1", "/unused/kernel", "/unused/rootfs")
        };
        let s = microvm_spec(&cfg(), &vm, &plan());
        assert_eq!((s.id.as_str(), s.namespace.as_str()), ("sb-1", "petty"));
        assert_eq!((s.vcpu, s.memory_in_mb), (1, 512));
        assert_eq!(s.labels.get(LABEL).map(String::as_str), Some("sb-1"));
        let k = s.kernel.as_ref().unwrap();
        assert_eq!(k.image, "example/petty-kernel:1");
        assert_eq!(k.filename.as_deref(), Some("boot/vmlinux"));
        assert!(!k.add_network_config);
        let words = cmdline_words(&s);
        for w in [
            "init=/sbin/petty-agent",
            "petty.transport=tcp",
            "petty.port=52",
            "petty.net=02:01:02:03:04:05,10.9.0.3/29,10.9.0.1",
            "quiet",
            "random.trust_cpu=on",
        ] {
            assert!(words.contains(&w.to_string()), "{w} in {words:?}");
        }
        assert!(words.contains(&format!("petty.token={}", "ab".repeat(32))));
        let root = s.root_volume.as_ref().unwrap();
        assert_eq!(
            root.source.as_ref().unwrap().container_source.as_deref(),
            Some("example/petty-rootfs:1")
        );
        assert_eq!(root.size_in_mb, Some(2048));
        let i = &s.interfaces[0];
        assert_eq!(i.r#type, IfaceType::Tap as i32);
        assert_eq!(i.guest_mac.as_deref(), Some("02:01:02:03:04:05"));
        let a = i.address.as_ref().unwrap();
        assert_eq!(a.address, "10.9.0.3/29");
        assert_eq!(a.gateway.as_deref(), Some("10.9.0.1"));
        assert_eq!(
            i.overrides.as_ref().unwrap().bridge_name.as_deref(),
            Some("br-petty")
        );
    }

    #[test]
    fn addresses_skip_the_gateway_and_those_in_use() {
        let c = cfg();
        // 10.9.0.0/29: hosts .1 to .6, .1 the gateway.
        let spec = microvm_spec(&c, &VmConfig::new("a", "k", "r"), &plan());
        let vms = vec![MicroVm {
            version: 1,
            spec: Some(spec),
            status: None,
        }];
        let used = used_addresses(&vms);
        assert_eq!(used, HashSet::from([Ipv4Addr::new(10, 9, 0, 3)]));
        let picked: HashSet<Ipv4Addr> = (0..50)
            .filter_map(|seed| choose_address(&c, &used, seed))
            .collect();
        let want: HashSet<Ipv4Addr> = [2, 4, 5, 6].map(|h| Ipv4Addr::new(10, 9, 0, h)).into();
        assert_eq!(picked, want);
        let full: HashSet<Ipv4Addr> = c.guest_cidr.hosts().collect();
        assert_eq!(choose_address(&c, &full, 7), None);
        assert_eq!(mac_from([1, 2, 3, 4, 0xab]), "02:01:02:03:04:ab");
    }

    #[test]
    fn status_states_map_to_liveness() {
        use crate::proto::types::MicroVmStatus;
        let with = |state: MicroVmState| MicroVm {
            version: 1,
            spec: None,
            status: Some(MicroVmStatus {
                state: state as i32,
                ..Default::default()
            }),
        };
        assert_eq!(liveness(&with(MicroVmState::Created)), Liveness::Created);
        assert_eq!(liveness(&with(MicroVmState::Pending)), Liveness::Pending);
        assert!(matches!(
            liveness(&with(MicroVmState::Failed)),
            Liveness::Ended(_)
        ));
        assert!(matches!(
            liveness(&with(MicroVmState::Deleting)),
            Liveness::Ended(_)
        ));
    }
}
