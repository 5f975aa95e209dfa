//! The agent over TCP: a VM whose host reaches it over the VM's network
//! (the Flintlock backend), where anyone on that network could connect.
//!
//! Each connection gets a thread. Its first frame must be an auth request
//! carrying the VM's token ([`server::authenticate`]: one frame of at most
//! 4 KiB, within [`AUTH_DEADLINE`]); a connection that fails is closed
//! before anything else is read or done. At most [`MAX_CONNECTIONS`] are
//! served at once, so peers without the token cannot use up the guest's
//! threads.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::server::{self, End, Writer};

/// How long a new connection has to authenticate.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);

/// Connections served at once (authenticated or not); more are closed at
/// once.
pub const MAX_CONNECTIONS: usize = 32;

fn log(msg: &str) {
    eprintln!("petty-agent: {msg}");
}

/// Listens on `addr` and serves every connection that gives `token` first,
/// forever; `on_shutdown` runs when a host asks for power-off.
pub fn serve(addr: SocketAddr, token: String, on_shutdown: fn()) {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("listening on TCP {addr}: {e}"));
            return;
        }
    };
    serve_listener(listener, token, on_shutdown);
}

/// [`serve`] on a listener already bound.
pub fn serve_listener(listener: TcpListener, token: String, on_shutdown: fn()) {
    let token: Arc<str> = token.into();
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            continue;
        }
        let (token, open) = (token.clone(), open.clone());
        std::thread::spawn(move || {
            let end = serve_one(stream, &token);
            open.fetch_sub(1, Ordering::AcqRel);
            if matches!(end, Some(End::Shutdown)) {
                on_shutdown();
            }
        });
    }
}

/// Serves one connection: `None` when it did not authenticate.
fn serve_one(mut stream: TcpStream, token: &str) -> Option<End> {
    let _ = stream.set_nodelay(true);
    let output = stream.try_clone().ok()?;
    let writer = Writer::new(Box::new(output));
    let _ = stream.set_read_timeout(Some(AUTH_DEADLINE));
    if !server::authenticate(&mut stream, &writer, token) {
        writer.close();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return None;
    }
    let _ = stream.set_read_timeout(None);
    Some(server::serve(stream, writer))
}
