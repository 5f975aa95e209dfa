//! The agent run as a normal process (`petty-agent --stdio`) over a socket
//! pair: hostile input, and the protocol end to end through the real client.

mod hostile;
mod rpc;
mod tcp;
mod vsock;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

/// Starts the agent with one end of a socket pair as its stdin and stdout.
pub fn spawn_agent() -> (Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let fd_in: OwnedFd = theirs.try_clone().unwrap().into();
    let fd_out: OwnedFd = theirs.into();
    let child = Command::new(env!("CARGO_BIN_EXE_petty-agent"))
        .arg("--stdio")
        .stdin(Stdio::from(fd_in))
        .stdout(Stdio::from(fd_out))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn petty-agent");
    (child, ours)
}
