//! A sandbox's egress policy: its mode, its allow rules, and the verdict for
//! a DNS name or a connection.
//!
//! - `none`: no network at all (only the guest's `lo`).
//! - `public`: the internet; never an address in the policy's deny list
//!   ([`DEFAULT_DENY`] unless configured: private networks, CGNAT,
//!   link-local, multicast, IPv6 unique-local and link-local, metadata),
//!   and never loopback or the unspecified address, whatever the list says.
//!   The host's own addresses are refused by the caller, which knows them
//!   ([`Denied::Host`]).
//! - `allow`: only what a rule allows. A name rule (`example.com`, or
//!   `*.example.com` for every name below it, not the name itself) lets the
//!   name resolve, and lets connections go to the public addresses it
//!   resolved to; a CIDR rule lets connections go to its block, whatever the
//!   block is (a user may allow a private service by its address, and only
//!   so). Either may name one port (`example.com:443`, `10.0.0.0/8:5432`).
//!
//! Names resolve through Petty's resolver, which asks [`Policy::name`]
//! before answering; connections are checked with the names the resolver
//! gave out, so an allowed name that resolves to a denied address (DNS
//! rebinding) reaches nothing there.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::addr::{classify, embedded_v4, AddrClass, Cidr};

/// The blocks `public` mode never reaches unless configured otherwise
/// (`network.deny_cidrs`): "this network", RFC 1918, CGNAT, loopback,
/// link-local (where metadata services live), multicast, broadcast,
/// Azure's wire server, and their IPv6 kin (unique-local, link-local,
/// multicast). Documentation and benchmarking ranges are not in it: some
/// hosts' resolvers answer from them.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "168.63.129.16/32",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// [`DEFAULT_DENY`], parsed.
pub fn default_deny() -> Vec<Cidr> {
    DEFAULT_DENY
        .iter()
        .map(|c| c.parse().expect("DEFAULT_DENY holds valid blocks"))
        .collect()
}

/// What a sandbox may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only the guest's loopback.
    #[default]
    None,
    /// The internet, never the host or the networks around it.
    Public,
    /// Only what the rules allow.
    Allow,
}

impl NetworkMode {
    /// The mode's name, as configs and flags spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Public => "public",
            Self::Allow => "allow",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s {
            "none" => Ok(Self::None),
            "public" => Ok(Self::Public),
            "allow" => Ok(Self::Allow),
            _ => Err(RuleError(format!(
                "unknown network mode {s:?}; use none, public or allow"
            ))),
        }
    }
}

/// A rule that did not parse, or a policy that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(String);

impl RuleError {
    /// A refusal saying `message`.
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

/// A DNS name a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// This name only.
    Exact(String),
    /// Every name below this one (`*.example.com`: `a.example.com`,
    /// `a.b.example.com`; not `example.com`).
    Below(String),
}

impl HostPattern {
    /// Whether `name` (any case, with or without its final dot) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize(name);
        match self {
            Self::Exact(n) => name == *n,
            Self::Below(n) => {
                name.len() > n.len() + 1
                    && name.ends_with(n.as_str())
                    && name.as_bytes()[name.len() - n.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => f.write_str(n),
            Self::Below(n) => write!(f, "*.{n}"),
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a DNS name: 1 to 253 characters, labels of 1 to 63 letters,
/// digits, `-` or `_`, not starting or ending with `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What one rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Names, and the public addresses they resolve to.
    Host {
        /// The names.
        pattern: HostPattern,
        /// The one port allowed (every port when `None`).
        port: Option<u16>,
    },
    /// An address block.
    Cidr {
        /// The block.
        cidr: Cidr,
        /// The one port allowed (every port when `None`).
        port: Option<u16>,
    },
}

impl Rule {
    /// `NAME`, `*.NAME`, either with `:PORT`.
    pub fn host(spec: &str) -> Result<Self, RuleError> {
        let (name, port) = split_port(spec, spec.rsplit_once(':'))?;
        let name = normalize(name);
        let pattern = match name.strip_prefix("*.") {
            Some(rest) => HostPattern::Below(rest.to_string()),
            None => HostPattern::Exact(name.clone()),
        };
        let bare = match &pattern {
            HostPattern::Exact(n) | HostPattern::Below(n) => n,
        };
        if !valid_name(bare) || bare.parse::<IpAddr>().is_ok() {
            return Err(RuleError(format!(
                "{spec:?} is not a host name rule; write a DNS name (example.com), \
                 *.example.com for every name below it, optionally :PORT \
                 (an address belongs in --allow-cidr)"
            )));
        }
        Ok(Self::Host { pattern, port })
    }

    /// `ADDR[/LEN]`, either with `:PORT` after the length (`10.0.0.0/8:5432`,
    /// `2001:db8::/32:443`; a bare IPv6 address takes no port).
    pub fn cidr(spec: &str) -> Result<Self, RuleError> {
        let (block, port) = match spec.split_once('/') {
            Some((addr, rest)) => {
                let (len, port) = split_port(rest, rest.split_once(':'))?;
                (format!("{addr}/{len}"), port)
            }
            None if spec.parse::<IpAddr>().is_ok() => (spec.to_string(), None),
            None => {
                let (addr, port) = split_port(spec, spec.rsplit_once(':'))?;
                (addr.to_string(), port)
            }
        };
        let cidr = block
            .parse::<Cidr>()
            .map_err(|e| RuleError(format!("{e} (in the rule {spec:?})")))?;
        Ok(Self::Cidr { cidr, port })
    }

    fn port_allows(port: Option<u16>, wanted: u16) -> bool {
        port.is_none_or(|p| p == wanted)
    }
}

fn split_port<'a>(
    spec: &'a str,
    split: Option<(&'a str, &'a str)>,
) -> Result<(&'a str, Option<u16>), RuleError> {
    match split {
        None => Ok((spec, None)),
        Some((head, port)) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok((head, Some(p))),
            _ => Err(RuleError(format!(
                "{spec:?}: the port {port:?} is not a number from 1 to 65535"
            ))),
        },
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (target, port) = match self {
            Self::Host { pattern, port } => (pattern.to_string(), port),
            Self::Cidr { cidr, port } => (cidr.to_string(), port),
        };
        match port {
            Some(p) => write!(f, "{target}:{p}"),
            None => f.write_str(&target),
        }
    }
}

/// Why a name or a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The sandbox has no network.
    NoNetwork,
    /// `public` mode, and the address is not the internet.
    NotPublic(AddrClass),
    /// `allow` mode, and no rule allows it.
    NotAllowed,
    /// `allow` mode: the name is allowed, but it resolved to an address
    /// that is not the internet, and no CIDR rule allows that address.
    Rebinding(AddrClass),
    /// The host's own address (the caller knows the host's addresses).
    Host,
    /// In a block of the deny list that the classifier calls public or
    /// reserved (a block the user added).
    DenyList(Cidr),
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoNetwork => f.write_str("the sandbox's network mode is none"),
            Self::NotPublic(c) => write!(f, "public mode never reaches {c} addresses"),
            Self::NotAllowed => f.write_str("no allow rule matches"),
            Self::Rebinding(c) => write!(
                f,
                "an allowed name resolved to a {c} address, which only a CIDR rule can allow"
            ),
            Self::Host => f.write_str("the host's own addresses are never reachable"),
            Self::DenyList(c) => write!(f, "{c} is in network.deny_cidrs"),
        }
    }
}

/// A sandbox's egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: NetworkMode,
    /// What `allow` mode allows (other modes take none).
    pub rules: Vec<Rule>,
    /// What `public` mode and allowed names never reach
    /// ([`DEFAULT_DENY`] unless configured).
    pub deny: Vec<Cidr>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: NetworkMode::None,
            rules: Vec::new(),
            deny: default_deny(),
        }
    }
}

impl Policy {
    /// A policy, checked: rules only in `allow` mode.
    pub fn new(mode: NetworkMode, rules: Vec<Rule>) -> Result<Self, RuleError> {
        if mode != NetworkMode::Allow && !rules.is_empty() {
            return Err(RuleError(format!(
                "allow rules ({}) need network mode allow, not {mode}",
                rules
                    .iter()
                    .map(Rule::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Self {
            mode,
            rules,
            deny: default_deny(),
        })
    }

    /// The same policy with another deny list (`network.deny_cidrs`).
    pub fn with_deny(mut self, deny: Vec<Cidr>) -> Self {
        self.deny = deny;
        self
    }

    /// Why `public` mode may not reach `ip`, if it may not: loopback and
    /// the unspecified address always, else a block of the deny list.
    pub fn denied_address(&self, ip: IpAddr) -> Option<Denied> {
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, |(v4, _)| IpAddr::V4(v4)),
            IpAddr::V4(_) => ip,
        };
        let class = classify(ip);
        if matches!(class, AddrClass::Loopback | AddrClass::Unspecified) {
            return Some(Denied::NotPublic(class));
        }
        let block = self
            .deny
            .iter()
            .find(|c| c.contains(ip) || c.contains(inner))?;
        Some(match class {
            AddrClass::Public | AddrClass::Reserved => Denied::DenyList(*block),
            class => Denied::NotPublic(class),
        })
    }

    /// Whether the guest gets a network interface at all.
    pub fn has_network(&self) -> bool {
        self.mode != NetworkMode::None
    }

    /// Whether the resolver answers `name` (else NXDOMAIN).
    pub fn name(&self, name: &str) -> Result<(), Denied> {
        match self.mode {
            NetworkMode::None => Err(Denied::NoNetwork),
            NetworkMode::Public => Ok(()),
            NetworkMode::Allow => self
                .rules
                .iter()
                .any(|r| matches!(r, Rule::Host { pattern, .. } if pattern.matches(name)))
                .then_some(())
                .ok_or(Denied::NotAllowed),
        }
    }

    /// Whether a connection to `ip:port` may go. `names` are the names the
    /// resolver answered with `ip` for this sandbox (empty when the guest
    /// used the address directly).
    pub fn connect(&self, ip: IpAddr, port: u16, names: &[&str]) -> Result<(), Denied> {
        let denied = self.denied_address(ip);
        match self.mode {
            NetworkMode::None => Err(Denied::NoNetwork),
            NetworkMode::Public => denied.map_or(Ok(()), Err),
            NetworkMode::Allow => {
                let by_cidr = self.rules.iter().any(|r| {
                    matches!(r, Rule::Cidr { cidr, port: p }
                        if cidr.contains(ip) && Rule::port_allows(*p, port))
                });
                if by_cidr {
                    return Ok(());
                }
                let by_name = self.rules.iter().any(|r| {
                    matches!(r, Rule::Host { pattern, port: p }
                        if Rule::port_allows(*p, port)
                            && names.iter().any(|n| pattern.matches(n)))
                });
                match (by_name, denied) {
                    (true, None) => Ok(()),
                    (true, Some(_)) => Err(Denied::Rebinding(classify(ip))),
                    (false, _) => Err(Denied::NotAllowed),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn allow(rules: &[&str]) -> Policy {
        let rules = rules
            .iter()
            .map(|r| {
                if r.contains('/')
                    || r.parse::<IpAddr>().is_ok()
                    || r.starts_with(|c: char| c.is_ascii_digit())
                {
                    Rule::cidr(r)
                } else {
                    Rule::host(r)
                }
                .unwrap()
            })
            .collect();
        Policy::new(NetworkMode::Allow, rules).unwrap()
    }

    #[test]
    fn modes_parse_and_print_as_configs_spell_them() {
        for m in [NetworkMode::None, NetworkMode::Public, NetworkMode::Allow] {
            assert_eq!(m.as_str().parse::<NetworkMode>().unwrap(), m);
        }
        let e = "open".parse::<NetworkMode>().unwrap_err().to_string();
        assert!(e.contains("none, public or allow"), "{e}");
        assert_eq!(NetworkMode::default(), NetworkMode::None);
    }

    #[test]
    fn host_patterns_match_exact_names_and_names_below() {
        let exact = HostPattern::Exact("example.com".into());
        assert!(exact.matches("example.com") && exact.matches("EXAMPLE.com."));
        assert!(!exact.matches("a.example.com") && !exact.matches("badexample.com"));
        let below = HostPattern::Below("example.com".into());
        assert!(below.matches("a.example.com") && below.matches("a.b.example.com."));
        assert!(!below.matches("example.com") && !below.matches("badexample.com"));
    }

    #[test]
    fn rules_parse_with_and_without_ports_and_refuse_with_what_to_write() {
        assert_eq!(
            Rule::host("*.PyPI.org:443").unwrap(),
            Rule::Host {
                pattern: HostPattern::Below("pypi.org".into()),
                port: Some(443)
            }
        );
        assert_eq!(
            Rule::host("example.com").unwrap().to_string(),
            "example.com"
        );
        assert_eq!(
            Rule::cidr("10.0.0.0/8:5432").unwrap().to_string(),
            "10.0.0.0/8:5432"
        );
        assert_eq!(
            Rule::cidr("2001:db8::/32:443").unwrap().to_string(),
            "2001:db8::/32:443"
        );
        assert_eq!(
            Rule::cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            Rule::cidr("8.8.8.8:53").unwrap().to_string(),
            "8.8.8.8/32:53"
        );
        for bad in [
            "",
            "exa mple.com",
            "-a.com",
            "10.0.0.1",
            "a.com:0",
            "a.com:http",
            "*.",
        ] {
            let e = Rule::host(bad).unwrap_err().to_string();
            assert!(e.contains("DNS name") || e.contains("port"), "{bad}: {e}");
        }
        for bad in ["example.com", "10.0.0.1/8", "10.0.0.0/8:99999"] {
            assert!(Rule::cidr(bad).is_err(), "{bad}");
        }
        let e = Policy::new(NetworkMode::Public, vec![Rule::host("a.com").unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("need network mode allow"), "{e}");
    }

    #[test]
    fn none_mode_reaches_nothing() {
        let p = Policy::default();
        assert!(!p.has_network());
        assert_eq!(p.name("example.com"), Err(Denied::NoNetwork));
        assert_eq!(p.connect(ip("1.1.1.1"), 443, &[]), Err(Denied::NoNetwork));
    }

    #[test]
    fn public_mode_reaches_the_internet_and_never_the_host_or_the_networks_around_it() {
        let p = Policy::new(NetworkMode::Public, vec![]).unwrap();
        assert_eq!(p.name("anything.example"), Ok(()));
        assert_eq!(p.connect(ip("1.1.1.1"), 443, &[]), Ok(()));
        assert_eq!(p.connect(ip("2606:4700:4700::1111"), 53, &[]), Ok(()));
        for (addr, class) in [
            ("127.0.0.1", AddrClass::Loopback),
            ("10.0.2.2", AddrClass::Private),
            ("192.168.0.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::SharedNat),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("168.63.129.16", AddrClass::Metadata),
            ("fd00:ec2::254", AddrClass::UniqueLocal),
            ("::ffff:192.168.0.1", AddrClass::Private),
            ("224.0.0.1", AddrClass::Multicast),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("fe80::1", AddrClass::LinkLocal),
            ("0.0.0.0", AddrClass::Unspecified),
        ] {
            assert_eq!(
                p.connect(ip(addr), 80, &[]),
                Err(Denied::NotPublic(class)),
                "{addr}"
            );
        }
    }

    #[test]
    fn the_deny_list_is_configurable_but_never_opens_loopback() {
        let p = Policy::new(NetworkMode::Public, vec![]).unwrap();
        // Documentation space is not denied by default (some hosts'
        // resolvers answer from it).
        assert_eq!(p.connect(ip("203.0.113.7"), 80, &[]), Ok(()));
        let block: Cidr = "203.0.113.0/24".parse().unwrap();
        let p = p.with_deny(vec![block]);
        assert_eq!(
            p.connect(ip("203.0.113.7"), 80, &[]),
            Err(Denied::DenyList(block))
        );
        assert_eq!(p.connect(ip("10.0.0.1"), 80, &[]), Ok(()));
        assert_eq!(
            p.connect(ip("127.0.0.1"), 80, &[]),
            Err(Denied::NotPublic(AddrClass::Loopback))
        );
        assert_eq!(
            p.connect(ip("::"), 80, &[]),
            Err(Denied::NotPublic(AddrClass::Unspecified))
        );
    }

    #[test]
    fn allow_mode_reaches_only_what_a_rule_allows() {
        let p = allow(&["pypi.org", "*.pythonhosted.org:443", "10.1.0.0/16:5432"]);
        assert_eq!(p.name("pypi.org"), Ok(()));
        assert_eq!(p.name("files.pythonhosted.org"), Ok(()));
        assert_eq!(p.name("pythonhosted.org"), Err(Denied::NotAllowed));
        assert_eq!(p.name("evil.example"), Err(Denied::NotAllowed));
        // A name's answers, on the rule's ports.
        assert_eq!(p.connect(ip("151.101.0.223"), 443, &["pypi.org"]), Ok(()));
        assert_eq!(p.connect(ip("151.101.0.223"), 22, &["pypi.org"]), Ok(()));
        let files = ["files.pythonhosted.org"];
        assert_eq!(p.connect(ip("151.101.1.63"), 443, &files), Ok(()));
        assert_eq!(
            p.connect(ip("151.101.1.63"), 80, &files),
            Err(Denied::NotAllowed)
        );
        // An address no allowed name resolved to.
        assert_eq!(
            p.connect(ip("151.101.0.223"), 443, &[]),
            Err(Denied::NotAllowed)
        );
        // A CIDR, private or not, on its port.
        assert_eq!(p.connect(ip("10.1.2.3"), 5432, &[]), Ok(()));
        assert_eq!(p.connect(ip("10.1.2.3"), 22, &[]), Err(Denied::NotAllowed));
        assert_eq!(
            p.connect(ip("10.2.0.1"), 5432, &[]),
            Err(Denied::NotAllowed)
        );
    }

    #[test]
    fn an_allowed_name_that_resolves_to_a_denied_address_reaches_nothing_there() {
        let p = allow(&["rebind.example"]);
        for (addr, class) in [
            ("127.0.0.1", AddrClass::Loopback),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("192.168.1.1", AddrClass::Private),
        ] {
            assert_eq!(
                p.connect(ip(addr), 80, &["rebind.example"]),
                Err(Denied::Rebinding(class)),
                "{addr}"
            );
        }
        // Unless the user allowed that address by its block.
        let p = allow(&["db.internal.example", "192.168.1.0/24"]);
        assert_eq!(
            p.connect(ip("192.168.1.1"), 80, &["db.internal.example"]),
            Ok(())
        );
    }
}
