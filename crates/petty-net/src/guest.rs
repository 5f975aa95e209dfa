//! The addresses every networked guest has: the same in every sandbox, each
//! in its own namespace, so snapshots restore without re-addressing. The
//! guest agent configures them; they are defined once, in
//! `petty_protocol::net`.

pub use petty_protocol::net::*;
