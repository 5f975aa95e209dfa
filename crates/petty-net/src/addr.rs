//! CIDR blocks and the address classifier.
//!
//! [`classify`] says what an address is. Only [`AddrClass::Public`] is the
//! internet; everything else is somewhere a sandbox in `public` mode must
//! never reach: the host (loopback, the unspecified address), the networks
//! around it (RFC 1918, CGNAT, IPv6 unique-local), link-local (where the
//! usual metadata service lives), multicast and broadcast, reserved space,
//! and the metadata addresses clouds put in public space. IPv6 forms that
//! carry an IPv4 address (mapped, NAT64, 6to4) are judged by that address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// What an address is, for the egress policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// The internet.
    Public,
    /// `0.0.0.0/8`, `::`: "this host".
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// Carrier-grade NAT, `100.64.0.0/10` (RFC 6598).
    SharedNat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// IPv6 unique-local, `fc00::/7`.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// A cloud's instance metadata or platform service outside the ranges
    /// above (Azure's `168.63.129.16`); the common `169.254.169.254` is
    /// link-local and classed so.
    Metadata,
    /// Space that is not the internet: IETF protocol assignments
    /// (`192.0.0.0/24`), benchmarking (`198.18.0.0/15`), documentation
    /// (`192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`),
    /// `240.0.0.0/4`, IPv6 discard (`100::/64`) and unallocated IPv6 outside
    /// `2000::/3`.
    Reserved,
}

impl AddrClass {
    /// The internet, which `public` mode may reach.
    pub fn is_public(self) -> bool {
        self == Self::Public
    }

    /// A short name for logs and refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Unspecified => "unspecified (this host)",
            Self::Loopback => "loopback",
            Self::Private => "private network (RFC 1918)",
            Self::SharedNat => "carrier-grade NAT (RFC 6598)",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "IPv6 unique-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Metadata => "cloud metadata service",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cloud platform addresses in otherwise public space.
const METADATA_V4: &[Ipv4Addr] = &[
    // Azure's wire server (DHCP, health, the VM agent's metadata).
    Ipv4Addr::new(168, 63, 129, 16),
];

/// The IPv4 table, most specific blocks first where they nest.
const V4: &[(Ipv4Addr, u8, AddrClass)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, AddrClass::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, AddrClass::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, AddrClass::SharedNat),
    (Ipv4Addr::new(127, 0, 0, 0), 8, AddrClass::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, AddrClass::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, AddrClass::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(192, 0, 2, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(192, 168, 0, 0), 16, AddrClass::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, AddrClass::Reserved),
    (Ipv4Addr::new(198, 51, 100, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(203, 0, 113, 0), 24, AddrClass::Reserved),
    (Ipv4Addr::new(224, 0, 0, 0), 4, AddrClass::Multicast),
    (Ipv4Addr::new(255, 255, 255, 255), 32, AddrClass::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, AddrClass::Reserved),
];

/// What `ip` is.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    if METADATA_V4.contains(&ip) {
        return AddrClass::Metadata;
    }
    V4.iter()
        .find(|(net, len, _)| Cidr::V4(*net, *len).contains(IpAddr::V4(ip)))
        .map_or(AddrClass::Public, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    if let Some((v4, form)) = embedded_v4(ip) {
        let inner = classify_v4(v4);
        // A 6to4 address of a public IPv4 address is judged as IPv6.
        if form != V4Form::SixToFour || !inner.is_public() {
            return inner;
        }
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => AddrClass::UniqueLocal,
        s if s & 0xffc0 == 0xfe80 => AddrClass::LinkLocal,
        s if s & 0xff00 == 0xff00 => AddrClass::Multicast,
        0x2001 if seg[1] == 0x0db8 => AddrClass::Reserved,
        0x0100 if seg[1..4] == [0, 0, 0] => AddrClass::Reserved,
        // Global unicast is 2000::/3; the rest is unallocated.
        s if s & 0xe000 == 0x2000 => AddrClass::Public,
        _ => AddrClass::Reserved,
    }
}

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V4Form {
    /// `::ffff:a.b.c.d`, or the old compatible `::a.b.c.d`.
    Mapped,
    /// NAT64, `64:ff9b::/96`.
    Nat64,
    /// 6to4, `2002::/16`, the address in bits 16..48.
    SixToFour,
}

/// The IPv4 address an IPv6 address carries, and how: where a socket to it
/// would go (mapped, NAT64) or be tunnelled (6to4).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, V4Form)> {
    let seg = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return None;
    }
    if let Some(v4) = ip.to_ipv4() {
        return Some((v4, V4Form::Mapped));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((low_v4(&seg), V4Form::Nat64));
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return Some((v4, V4Form::SixToFour));
    }
    None
}

fn low_v4(seg: &[u16; 8]) -> Ipv4Addr {
    Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    )
}

/// An address block, `ADDR/LEN` (a bare address is its own block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cidr {
    /// An IPv4 block.
    V4(Ipv4Addr, u8),
    /// An IPv6 block.
    V6(Ipv6Addr, u8),
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a CIDR block: {why}; write ADDRESS/LENGTH, e.g. 203.0.113.0/24 or 2001:db8::/32")]
pub struct CidrError {
    input: String,
    why: &'static str,
}

impl Cidr {
    /// The block's length in bits.
    pub fn prefix_len(self) -> u8 {
        match self {
            Self::V4(_, l) | Self::V6(_, l) => l,
        }
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address is
    /// its IPv4 address).
    pub fn contains(self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self, ip) {
            (Self::V4(net, len), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(net) & mask
            }
            (Self::V6(net, len), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(a) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }

    /// The block's first address.
    pub fn network(self) -> IpAddr {
        match self {
            Self::V4(a, _) => IpAddr::V4(a),
            Self::V6(a, _) => IpAddr::V6(a),
        }
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = |why| CidrError {
            input: s.to_string(),
            why,
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| err("the address does not parse"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| err("the length is not a number"))?,
            None => max,
        };
        if len > max {
            return Err(err("the length is longer than the address"));
        }
        let block = match addr {
            IpAddr::V4(a) => Cidr::V4(a, len),
            IpAddr::V6(a) => Cidr::V6(a, len),
        };
        // Host bits set (10.0.0.1/8) is almost always a typo for another
        // block; say so rather than guess.
        if block.masked() != block {
            return Err(err("it has host bits set past its length"));
        }
        Ok(block)
    }
}

impl Cidr {
    fn masked(self) -> Self {
        match self {
            Self::V4(a, len) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Self::V4(Ipv4Addr::from(u32::from(a) & mask), len)
            }
            Self::V6(a, len) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Self::V6(Ipv6Addr::from(u128::from(a) & mask), len)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a, l) => write!(f, "{a}/{l}"),
            Self::V6(a, l) => write!(f, "{a}/{l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn the_ranges_public_mode_denies_are_classed_as_such() {
        for (addr, want) in [
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.0.9", AddrClass::Loopback),
            ("10.0.0.1", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::SharedNat),
            ("100.127.255.254", AddrClass::SharedNat),
            // Alibaba's metadata service sits in CGNAT space.
            ("100.100.100.200", AddrClass::SharedNat),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("169.254.170.2", AddrClass::LinkLocal),
            ("168.63.129.16", AddrClass::Metadata),
            ("224.0.0.251", AddrClass::Multicast),
            ("239.255.255.250", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Broadcast),
            ("240.0.0.1", AddrClass::Reserved),
            ("192.0.0.170", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
            ("203.0.113.7", AddrClass::Reserved),
            ("::", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("fe80::1", AddrClass::LinkLocal),
            ("fd00:ec2::254", AddrClass::UniqueLocal),
            ("fc00::1", AddrClass::UniqueLocal),
            ("ff02::1", AddrClass::Multicast),
            ("2001:db8::1", AddrClass::Reserved),
            ("100::1", AddrClass::Reserved),
            ("4000::1", AddrClass::Reserved),
            // IPv6 spellings of denied IPv4 addresses are denied with them.
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:169.254.169.254", AddrClass::LinkLocal),
            ("::10.0.0.1", AddrClass::Private),
            ("64:ff9b::a9fe:a9fe", AddrClass::LinkLocal),
            ("64:ff9b::c0a8:0101", AddrClass::Private),
            ("2002:7f00:0001::", AddrClass::Loopback),
            ("2002:a9fe:a9fe::1", AddrClass::LinkLocal),
        ] {
            assert_eq!(class(addr), want, "{addr}");
        }
    }

    #[test]
    fn the_internet_is_public() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "168.63.129.15",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "::ffff:8.8.4.4",
        ] {
            assert_eq!(class(addr), AddrClass::Public, "{addr}");
        }
    }

    #[test]
    fn cidrs_parse_contain_and_refuse_what_is_wrong() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.0".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("2001::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("255.1.2.3".parse().unwrap()));
        let one: Cidr = "8.8.8.8".parse().unwrap();
        assert_eq!(one, Cidr::V4(Ipv4Addr::new(8, 8, 8, 8), 32));
        let v6: Cidr = "2606:4700::/32".parse().unwrap();
        assert!(v6.contains("2606:4700:4700::1111".parse().unwrap()));
        assert_eq!(v6.to_string(), "2606:4700::/32");
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "nope/8",
            "10.0.0.0/x",
            "::/129",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("ADDRESS/LENGTH"), "{e}");
        }
    }
}
