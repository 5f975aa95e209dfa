//! What a sandbox asks of the network: its mode, its allow rules and its
//! published ports, as the CLI, REST and MCP take them and the store keeps
//! them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::addr::Cidr;
use crate::policy::{NetworkMode, Policy, Rule, RuleError};

/// A guest port forwarded from a host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Publish {
    /// The port in the guest.
    pub guest: u16,
    /// The host's port; 0 until one is chosen.
    #[serde(default)]
    pub host: u16,
}

impl FromStr for Publish {
    type Err = RuleError;

    /// `GUEST_PORT[:HOST_PORT]`, as `--publish` takes it.
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let port = |p: &str, zero: bool| match p.parse::<u16>() {
            Ok(n) if n > 0 || zero => Ok(n),
            _ => Err(RuleError::new(format!(
                "--publish {s:?}: write GUEST_PORT[:HOST_PORT], ports 1 to 65535"
            ))),
        };
        match s.split_once(':') {
            Some((g, h)) => Ok(Self {
                guest: port(g, false)?,
                host: port(h, true)?,
            }),
            None => Ok(Self {
                guest: port(s, false)?,
                host: 0,
            }),
        }
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            0 => write!(f, "{}", self.guest),
            h => write!(f, "{}:{h}", self.guest),
        }
    }
}

/// A sandbox's network, as asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The mode.
    #[serde(default)]
    pub mode: NetworkMode,
    /// `allow` mode: names that may resolve (`example.com`,
    /// `*.example.com`, optionally `:PORT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// `allow` mode: blocks that may be reached (`10.0.0.0/8`, optionally
    /// `:PORT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<String>,
    /// Guest ports reachable from the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
}

impl NetworkSpec {
    /// A spec of `mode` with nothing else.
    pub fn mode(mode: NetworkMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// Whether the guest gets an interface.
    pub fn has_network(&self) -> bool {
        self.mode != NetworkMode::None
    }

    /// The policy these rules make, with `deny` as the deny list; refuses
    /// rules that do not parse, rules outside `allow` mode, and ports
    /// published from a sandbox without network.
    pub fn policy(&self, deny: &[Cidr]) -> Result<Policy, RuleError> {
        if !self.has_network() && !self.publish.is_empty() {
            return Err(RuleError::new(
                "published ports need a network: add --network public or --network allow"
                    .to_string(),
            ));
        }
        let mut rules = Vec::new();
        for h in &self.allow_hosts {
            rules.push(Rule::host(h)?);
        }
        for c in &self.allow_cidrs {
            rules.push(Rule::cidr(c)?);
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.publish {
            if !seen.insert(p.guest) {
                return Err(RuleError::new(format!(
                    "guest port {} is published twice",
                    p.guest
                )));
            }
        }
        Ok(Policy::new(self.mode, rules)?.with_deny(deny.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_parses_guest_and_optional_host_ports() {
        assert_eq!(
            "8000".parse::<Publish>().unwrap(),
            Publish {
                guest: 8000,
                host: 0
            }
        );
        assert_eq!(
            "80:8080".parse::<Publish>().unwrap(),
            Publish {
                guest: 80,
                host: 8080
            }
        );
        for bad in ["", "0", "x", "80:", "80:99999", "70000"] {
            let e = bad.parse::<Publish>().unwrap_err().to_string();
            assert!(e.contains("GUEST_PORT[:HOST_PORT]"), "{bad}: {e}");
        }
    }

    #[test]
    fn specs_make_policies_and_refuse_what_does_not_hold_together() {
        let spec = NetworkSpec {
            mode: NetworkMode::Allow,
            allow_hosts: vec!["example.com".into()],
            allow_cidrs: vec!["10.1.0.0/16:5432".into()],
            publish: vec!["8000".parse().unwrap()],
        };
        let p = spec.policy(&crate::policy::default_deny()).unwrap();
        assert_eq!(p.rules.len(), 2);
        let e = NetworkSpec {
            publish: vec!["8000".parse().unwrap()],
            ..NetworkSpec::default()
        }
        .policy(&[])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--network public"), "{e}");
        let e = NetworkSpec {
            mode: NetworkMode::Public,
            allow_hosts: vec!["example.com".into()],
            ..NetworkSpec::default()
        }
        .policy(&[])
        .unwrap_err()
        .to_string();
        assert!(e.contains("need network mode allow"), "{e}");
        let e = NetworkSpec {
            mode: NetworkMode::Public,
            publish: vec!["80".parse().unwrap(), "80:81".parse().unwrap()],
            ..NetworkSpec::default()
        }
        .policy(&[])
        .unwrap_err()
        .to_string();
        assert!(e.contains("published twice"), "{e}");
    }
}
