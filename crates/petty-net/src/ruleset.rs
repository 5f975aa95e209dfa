//! The nftables ruleset inside a sandbox's namespace.
//!
//! The same for every sandbox and every mode: the namespace itself forwards
//! nothing (its `ip_forward` is off and its forward hook drops), so the only
//! ways out are Petty's per-sandbox helper, which owns every verdict:
//!
//! - every TCP connection the guest opens, to any address but the gateway,
//!   is redirected to the helper's proxy port, which reads the original
//!   destination (`SO_ORIGINAL_DST`), checks the policy, and either
//!   connects from the host or resets the guest's connection (counted and
//!   logged with the destination);
//! - DNS (UDP and TCP port 53, to any address) is redirected to the
//!   helper's resolver;
//! - anything else the guest sends (other UDP, ICMP, IPv6) is rejected at
//!   once, so it fails fast, and counted in the `refused` counter.

use std::fmt::Write;

use crate::guest::{GATEWAY_IP, TAP_NAME};

/// The helper's transparent proxy port, on the gateway address.
pub const PROXY_PORT: u16 = 15001;
/// The helper's resolver port, on the gateway address.
pub const DNS_PORT: u16 = 53;
/// The nftables table Petty makes in each sandbox's namespace.
pub const TABLE: &str = "petty";

/// The ruleset, as `nft -f -` reads it.
pub fn ruleset() -> String {
    let mut s = String::new();
    let tap = TAP_NAME;
    let gw = GATEWAY_IP;
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(s, "  counter refused {{ }}");
    // Before DNAT: what may go on at all.
    let _ = writeln!(
        s,
        "  chain guard {{\n    type filter hook prerouting priority -150; policy accept;\n    \
         iifname != \"{tap}\" accept\n    \
         meta nfproto ipv6 drop\n    \
         meta nfproto ipv4 meta l4proto tcp accept\n    \
         meta nfproto ipv4 udp dport {DNS_PORT} accept\n    \
         meta nfproto ipv4 ip daddr {gw} icmp type echo-request accept\n    \
         counter name refused reject with icmpx type admin-prohibited\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain divert {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         iifname \"{tap}\" meta l4proto {{ tcp, udp }} th dport {DNS_PORT} redirect to :{DNS_PORT}\n    \
         iifname \"{tap}\" ip daddr != {gw} meta l4proto tcp redirect to :{PROXY_PORT}\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain local_in {{\n    type filter hook input priority filter; policy accept;\n    \
         iifname != \"{tap}\" accept\n    \
         ct state established,related accept\n    \
         meta l4proto {{ tcp, udp }} th dport {DNS_PORT} accept\n    \
         tcp dport {PROXY_PORT} accept\n    \
         icmp type echo-request accept\n    \
         meta l4proto tcp counter name refused reject with tcp reset\n    \
         counter name refused reject with icmpx type port-unreachable\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain no_forward {{\n    type filter hook forward priority filter; policy drop;\n    \
         counter name refused reject with icmpx type admin-prohibited\n  }}"
    );
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_redirects_tcp_and_dns_and_refuses_the_rest() {
        let r = ruleset();
        assert!(r.contains("redirect to :15001"), "{r}");
        assert!(r.contains("th dport 53 redirect to :53"), "{r}");
        assert!(r.contains("policy drop"), "{r}");
        assert!(r.contains("counter name refused reject"), "{r}");
        assert_eq!(r.matches('{').count(), r.matches('}').count(), "{r}");
    }
}
