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
//! - [`spec`]: what a sandbox asks for (mode, rules, published ports).
//! - [`ruleset`]: the nftables table inside every sandbox's namespace.
//! - [`sandbox`]: a sandbox's network on the host: namespace, TAP device,
//!   ruleset and helper; removal and the sweep.
//! - [`helper`]: the per-sandbox process that carries the traffic and owns
//!   every verdict (proxy, resolver, published ports, caps).
//! - [`guest`]: the addresses every networked guest has.
//!
//! This crate reads no environment (its caller gives it [`NetSettings`]).
//! The policy is data and every verdict a pure function of it; [`netns`]
//! and [`sandbox`] run `ip` and `nft`.

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
