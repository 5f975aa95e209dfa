//! The agent over a VM's network (the Flintlock backend): what the host
//! tells the guest on its kernel command line, and how the token is
//! compared.
//!
//! A VM whose agent is to be reached over TCP boots with
//! `petty.transport=tcp`, `petty.port=<port>`, `petty.token=<hex>` and
//! `petty.net=<mac>,<address>/<prefix>,<gateway>`: the agent gives the
//! interface with that MAC the address and a default route via the
//! gateway, listens on the port on every address, and serves a
//! connection only once its first frame is [`crate::Request::Auth`] with
//! the token ([`token_matches`]). The kernel command line is what every
//! VMM, Flintlock included, passes to a guest; any process in the guest
//! can read it, so the token keeps the network, not the guest itself
//! (which runs the sandbox's own code anyway), away from the agent. Each
//! VM gets a token of its own.

/// `petty.transport=tcp`: serve TCP rather than virtio-serial or vsock.
pub const TRANSPORT_ARG: &str = "petty.transport";
/// The value of [`TRANSPORT_ARG`] that asks for TCP.
pub const TRANSPORT_TCP: &str = "tcp";
/// `petty.port=<port>`: the TCP port the agent listens on.
pub const PORT_ARG: &str = "petty.port";
/// `petty.token=<hex>`: the per-VM token.
pub const TOKEN_ARG: &str = "petty.token";
/// `petty.net=<mac>,<address>/<prefix>,<gateway>`: the interface to
/// configure (by MAC) and its address.
pub const NET_ARG: &str = "petty.net";

/// The port the agent listens on when none is configured.
pub const DEFAULT_PORT: u16 = 52;

/// Fewest characters a token may have (hex of 16 random bytes); a shorter
/// one is refused by both sides.
pub const MIN_TOKEN_LEN: usize = 32;

/// True when `given` is `expected`, compared in time that depends only on
/// their lengths (never on where they first differ), so a peer cannot
/// find the token a byte at a time by timing refusals. An `expected`
/// shorter than [`MIN_TOKEN_LEN`] matches nothing.
pub fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() < MIN_TOKEN_LEN || a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the comparison from being turned into an early exit.
    std::hint::black_box(diff) == 0
}

/// The guest's network settings from [`NET_ARG`]'s value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// The interface's MAC address, lower case.
    pub mac: String,
    /// Its address.
    pub ip: std::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: std::net::Ipv4Addr,
}

impl GuestNet {
    /// Parses `<mac>,<address>/<prefix>,<gateway>`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(',');
        let (mac, cidr, gw) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let (ip, prefix) = cidr.split_once('/')?;
        let prefix: u8 = prefix.parse().ok()?;
        let octets: Vec<&str> = mac.split(':').collect();
        let mac_ok = octets.len() == 6
            && octets
                .iter()
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        (mac_ok && (1..=32).contains(&prefix)).then_some(())?;
        Some(Self {
            mac: mac.to_ascii_lowercase(),
            ip: ip.parse().ok()?,
            prefix,
            gateway: gw.parse().ok()?,
        })
    }

    /// The [`NET_ARG`] value that parses back to this.
    pub fn to_arg(&self) -> String {
        format!("{},{}/{},{}", self.mac, self.ip, self.prefix, self.gateway)
    }

    /// The netmask of [`prefix`](Self::prefix).
    pub fn netmask(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from_bits(u32::MAX << (32 - u32::from(self.prefix)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_whole_and_long_enough() {
        let t = "0123456789abcdef0123456789abcdef";
        assert!(token_matches(t, t));
        assert!(!token_matches(t, &t[..31]));
        assert!(!token_matches(t, "0123456789abcdef0123456789abcdee"));
        assert!(!token_matches(t, ""));
        assert!(!token_matches("short", "short"), "a short token is refused");
        assert!(!token_matches("", ""));
    }

    #[test]
    fn guest_net_round_trips_and_refuses_junk() {
        let n = GuestNet::parse("02:AB:00:00:00:05,10.1.2.5/24,10.1.2.1").unwrap();
        assert_eq!(n.mac, "02:ab:00:00:00:05");
        assert_eq!(n.ip, std::net::Ipv4Addr::new(10, 1, 2, 5));
        assert_eq!(n.prefix, 24);
        assert_eq!(n.netmask(), std::net::Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(GuestNet::parse(&n.to_arg()), Some(n));
        for bad in [
            "",
            "02:ab:00:00:00:05,10.1.2.5,10.1.2.1",
            "02:ab:00:00:00,10.1.2.5/24,10.1.2.1",
            "02:ab:00:00:00:05,10.1.2.5/33,10.1.2.1",
            "02:ab:00:00:00:05,10.1.2.5/24,gw",
            "02:ab:00:00:00:05,10.1.2.5/24,10.1.2.1,extra",
        ] {
            assert_eq!(GuestNet::parse(bad), None, "{bad:?}");
        }
    }
}
