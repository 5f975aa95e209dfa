//! `petty-agent`: the guest side of Petty.
//!
//! Started by the kernel as PID 1 (`init=/sbin/petty-agent`), it mounts the
//! pseudo filesystems, configures its network interface if it has one,
//! grows `/` to fill its disk, reaps orphans, finds its
//! channel to the host (the `petty.agent` virtio-serial port under QEMU,
//! vsock port 52 under Firecracker) and serves framed requests on it: exec
//! with streamed output, file operations, ping, clock and power-off.
//!
//! `petty-agent --stdio` serves one connection on stdin/stdout instead; the
//! host-side tests run it that way to feed it hostile input without a VM.
//!
//! It depends only on `petty-protocol` and is linked statically, so it runs on
//! any root filesystem.

#![warn(missing_docs)]

mod disk;
mod exec;
mod files;
mod init;
mod net;
mod reaper;
mod server;
mod user;
mod watch;
mod workers;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--stdio") => server::serve_stdio(),
        Some("--run-as") => user::run_as(&args[1..]),
        Some("--version") => {
            println!("petty-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ if std::process::id() == 1 => init::run_as_init(),
        _ => {
            eprintln!(
                "petty-agent: runs as PID 1 inside a Petty VM; use `petty-agent --stdio` to serve \
                 one connection on stdin/stdout"
            );
            ExitCode::from(2)
        }
    }
}
