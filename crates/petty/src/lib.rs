//! The `petty` binary's edge, as a library so the benchmarks (`petty-bench`)
//! and the end-to-end tests build what the binary builds: [`settings`]
//! loads the configuration once and turns it into the typed values the
//! libraries take; [`exe`] finds Petty's other binaries; [`process`] is
//! what both binaries do around their command (logging, the runtime, errors).

#![warn(missing_docs)]

pub mod exe;
pub mod process;
pub mod settings;
