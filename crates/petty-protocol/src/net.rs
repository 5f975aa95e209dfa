//! The addresses of a sandbox's network, the same in every sandbox.
//!
//! A VM with a network has one interface, on a TAP device inside a network
//! namespace of its own (one per sandbox), so identical addresses in every
//! sandbox never meet, and a snapshot restores into another namespace with
//! nothing to re-address: the guest's address, route and ARP entry for the
//! gateway stay right because the new namespace's TAP device has the same
//! address and MAC as the old one. The host side sets up the namespace and
//! the TAP device with these values; the guest agent configures the
//! guest's interface with them at boot.

use std::net::Ipv4Addr;

/// The TAP device inside the sandbox's network namespace that the VMM
/// attaches the guest's interface to.
pub const TAP_NAME: &str = "tap0";

/// The guest's interface, as its kernel names the first network device.
pub const GUEST_IFACE: &str = "eth0";

/// The guest's address (on [`GUEST_IFACE`]). Link-local (169.254.0.0/16),
/// so it is never an address on the internet.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);

/// The TAP device's address inside the namespace: the guest's default
/// gateway, and the DNS server the guest's `/etc/resolv.conf` names.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);

/// Prefix length of the link between guest and TAP device: a /30
/// (169.254.0.20/30) holding exactly [`GUEST_IP`] and [`GATEWAY_IP`].
pub const PREFIX_LEN: u8 = 30;

/// The guest interface's MAC address: locally administered, unicast (the
/// last byte is 21, as the address's).
pub const GUEST_MAC: &str = "02:50:54:00:00:15";

/// The TAP device's MAC address (the last byte is 22, as the address's).
/// The same in every namespace, so a restored guest's ARP entry for its
/// gateway stays right.
pub const GATEWAY_MAC: &str = "02:50:54:00:00:16";

/// The netmask [`PREFIX_LEN`] stands for (255.255.255.252).
pub const fn netmask() -> Ipv4Addr {
    Ipv4Addr::from_bits(u32::MAX << (32 - PREFIX_LEN as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_and_gateway_share_one_slash_30() {
        assert_eq!(netmask(), Ipv4Addr::new(255, 255, 255, 252));
        let mask = netmask().to_bits();
        assert_eq!(GUEST_IP.to_bits() & mask, GATEWAY_IP.to_bits() & mask);
        assert_ne!(GUEST_IP, GATEWAY_IP);
        // Neither is the /30's network or broadcast address.
        for ip in [GUEST_IP, GATEWAY_IP] {
            let host = ip.to_bits() & !mask;
            assert!(host != 0 && host != !mask, "{ip}");
            assert!(ip.is_link_local(), "{ip}");
        }
        for mac in [GUEST_MAC, GATEWAY_MAC] {
            let bytes: Vec<u8> = mac
                .split(':')
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            assert_eq!(bytes.len(), 6, "{mac}");
            // Locally administered, unicast.
            assert_eq!(bytes[0] & 0b11, 0b10, "{mac}");
        }
        assert_ne!(GUEST_MAC, GATEWAY_MAC);
    }
}
