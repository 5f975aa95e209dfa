//! Sandbox networking: what a sandbox may reach, decided in one place.
//!
//! - [`addr`]: CIDR blocks and the address classifier — which addresses are
//!   the public internet and which are the host, loopback, private networks,
//!   link-local, multicast or a cloud's metadata service.
//! - [`dns`]: a small DNS message codec for the filtering resolver between
//!   a guest and the host's upstream resolver: a query's one question, a
//!   reply carrying only a response code, an answer's addresses and CNAME
//!   targets, DNS-over-TCP framing.
//! - [`policy`]: a sandbox's network mode (`none`, `public`, `allow`), its
//!   allow rules (names exact or `*.suffix`, CIDRs, optional ports) and the
//!   verdict for a name or a connection.
//! - [`netns`]: named network namespaces (iproute2's), joined to the host by
//!   veth pairs, removed with everything inside them when dropped.
//!
//! This crate reads no environment. Deciding runs no program: the policy is
//! data, and every verdict is a pure function of it; [`netns`] runs `ip`.

pub mod addr;
pub mod dns;
pub mod guest;
pub mod helper;
pub mod netns;
pub mod policy;
pub mod ruleset;
pub mod sandbox;
pub mod spec;

pub use addr::{classify, AddrClass, Cidr};
pub use netns::NetError;
pub use policy::{Denied, HostPattern, NetworkMode, Policy, Rule, RuleError};
pub use sandbox::{NetSettings, SandboxNet};
pub use spec::{NetworkSpec, Publish};
