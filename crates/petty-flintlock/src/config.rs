//! What the Flintlock backend is configured with (`backend.flintlock.*`),
//! parsed and checked: the libraries take this, never the environment.

use std::net::Ipv4Addr;

/// The interface type Flintlock gives the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceType {
    /// A TAP device (attached to a bridge on the Flintlock host).
    Tap,
    /// A macvtap device on the host's interface.
    Macvtap,
}

impl std::str::FromStr for InterfaceType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tap" => Ok(Self::Tap),
            "macvtap" => Ok(Self::Macvtap),
            other => Err(format!(
                "{other:?} is no interface type; use tap or macvtap"
            )),
        }
    }
}

/// An IPv4 network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Its first address.
    pub network: Ipv4Addr,
    /// Its prefix length (8 to 30: room for a gateway and guests).
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 network such as 10.100.0.0/24");
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "{s:?}: the prefix must be 8 to 30 (room for a gateway and guests)"
            ));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Self {
            network: Ipv4Addr::from_bits(ip.to_bits() & mask),
            prefix,
        })
    }
}

impl Cidr {
    /// The addresses a host may have: all but the network and broadcast
    /// addresses.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = self.network.to_bits() + 1;
        let last = self.network.to_bits() + (1u32 << (32 - u32::from(self.prefix))) - 2;
        (first..=last).map(Ipv4Addr::from_bits)
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        ip.to_bits() & mask == self.network.to_bits()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The Flintlock backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlintlockConfig {
    /// Flintlock's gRPC endpoint, `http://HOST:PORT`
    /// (`backend.flintlock.endpoint`).
    pub endpoint: String,
    /// The Flintlock namespace Petty's MicroVMs go in
    /// (`backend.flintlock.namespace`).
    pub namespace: String,
    /// OCI reference of the image holding the guest kernel
    /// (`backend.flintlock.kernel_image`).
    pub kernel_image: String,
    /// The kernel's file inside that image (`backend.flintlock.kernel_filename`;
    /// `None`: Flintlock's default).
    pub kernel_filename: Option<String>,
    /// OCI reference of the image whose file system is Petty's rootfs, the
    /// agent at `/sbin/petty-agent` (`backend.flintlock.root_image`).
    pub root_image: String,
    /// The network guests get addresses in (`backend.flintlock.guest_cidr`);
    /// this host must reach it.
    pub guest_cidr: Cidr,
    /// Their default gateway (`backend.flintlock.gateway`; `None`: the
    /// network's first address).
    pub gateway: Option<Ipv4Addr>,
    /// The interface type (`backend.flintlock.interface_type`).
    pub interface_type: InterfaceType,
    /// The bridge Flintlock attaches TAP devices to (`backend.flintlock.bridge`;
    /// `None`: Flintlock's own setting).
    pub bridge: Option<String>,
    /// The TCP port the guest agent listens on (`backend.flintlock.agent_port`).
    pub agent_port: u16,
    /// Flintlock's provider (`backend.flintlock.provider`; `None`: its default).
    pub provider: Option<String>,
}

impl FlintlockConfig {
    /// The gateway guests route through.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from_bits(self.guest_cidr.network.to_bits() + 1))
    }

    /// An error naming the key when a setting cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!(
                "backend.flintlock.endpoint {:?} must be a URL such as http://flintlock-host:9090",
                self.endpoint
            ));
        }
        for (key, v) in [
            ("backend.flintlock.kernel_image", &self.kernel_image),
            ("backend.flintlock.root_image", &self.root_image),
            ("backend.flintlock.namespace", &self.namespace),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{key} is empty; the flintlock backend needs it"));
            }
        }
        if !self.guest_cidr.contains(self.gateway()) {
            return Err(format!(
                "backend.flintlock.gateway {} is outside backend.flintlock.guest_cidr {}",
                self.gateway(),
                self.guest_cidr
            ));
        }
        if self.agent_port == 0 {
            return Err("backend.flintlock.agent_port must not be 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalise_and_bound() {
        let c: Cidr = "10.100.3.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.100.3.0/24");
        assert_eq!(c.hosts().count(), 254);
        assert_eq!(c.hosts().next(), Some(Ipv4Addr::new(10, 100, 3, 1)));
        assert_eq!(c.hosts().last(), Some(Ipv4Addr::new(10, 100, 3, 254)));
        assert!(c.contains(Ipv4Addr::new(10, 100, 3, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 100, 4, 1)));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0.0/4",
            "x/24",
            "10.0.0.0/y",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("tap".parse(), Ok(InterfaceType::Tap));
        assert!("bridge".parse::<InterfaceType>().is_err());
    }
}
