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
//! `petty-agent --tcp ADDR` serves TCP on `ADDR` (port 0: any) as a VM
//! reached over its network does, the token read from stdin's first line;
//! it prints `listening on <address>` once bound. Tests only.
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
mod tcp;
mod user;
mod watch;
mod workers;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--stdio") => server::serve_stdio(),
        Some("--run-as") => user::run_as(&args[1..]),
        Some("--tcp") => serve_tcp_here(args.get(1).map(String::as_str)),
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

/// `--tcp ADDR`: the TCP transport on this host, for tests. A power-off
/// request ends the process (never the host).
fn serve_tcp_here(addr: Option<&str>) -> ExitCode {
    use std::io::{BufRead, Write};
    let Some(addr) = addr.and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
        eprintln!("petty-agent: --tcp takes an address, e.g. 127.0.0.1:0");
        return ExitCode::from(2);
    };
    let mut token = String::new();
    if std::io::stdin().lock().read_line(&mut token).is_err() {
        return ExitCode::from(2);
    }
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("petty-agent: listening on {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {bound}").and_then(|()| out.flush());
    tcp::serve_listener(listener, token.trim().to_string(), || std::process::exit(0));
    ExitCode::SUCCESS
}
