//! Dockerfiles for Petty template builds: the parser, variable
//! substitution, the build plan, build contexts and `.dockerignore`.
//!
//! - [`parse`](mod@parse): the Dockerfile parser — directives, comments,
//!   continuations, instructions as written. Single-stage builds only.
//! - [`subst`]: `$VAR` substitution and quote removal as Docker's shell
//!   lexer does it.
//! - [`plan`](mod@plan): each instruction's substituted action (run, copy,
//!   mkdir, config only) with the environment, workdir, user and shell it
//!   runs with, and the final image configuration.
//! - [`pattern`]: Go `filepath.Match` globs and `.dockerignore` patterns.
//! - [`ignore`]: `.dockerignore` files: patterns, `!` exceptions, later
//!   patterns win.
//! - [`context`]: a build context directory — which files a COPY takes,
//!   where they land, and the digest that is the COPY step's cache input.
//!
//! Nothing here does I/O except [`context`] reading the context directory.
//! Every error names the Dockerfile line (a continued instruction reports
//! its first line) and says what to do.

#![warn(missing_docs)]

pub mod context;
pub mod error;
pub mod ignore;
pub mod parse;
pub mod pattern;
pub mod plan;
pub mod subst;

pub use context::{Context, ContextEntry, ContextError, EntryKind};
pub use error::DockerfileError;
pub use ignore::{DockerIgnore, IgnoreError};
pub use parse::{parse, Command, Copy, Dockerfile, From, Instruction, Kind};
pub use plan::{plan, plan_on, Action, CopySpec, ImageDefaults, Plan, Step};
