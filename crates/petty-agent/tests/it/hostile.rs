//! Garbage, truncated and oversized frames end the connection with an error
//! frame and exit code 2: no panic, no unbounded allocation.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Child;
use std::time::Duration;

use petty_protocol::{Frame, FrameDecoder, FrameKind, Response};

use crate::spawn_agent;

struct Outcome {
    code: Option<i32>,
    stderr: String,
    reply: Vec<Frame>,
    max_rss_kib: i64,
}

/// Sends `bytes`, closes our write side, and collects what the agent says.
fn feed(bytes: &[u8]) -> Outcome {
    let (child, mut sock) = spawn_agent();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The agent may close before reading everything; a write error is fine.
    let _ = sock.write_all(bytes);
    let _ = sock.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let mut dec = FrameDecoder::new();
    dec.push(&out);
    let mut reply = Vec::new();
    while let Ok(Some(f)) = dec.next_frame() {
        reply.push(f);
    }
    let (code, stderr, max_rss_kib) = wait_with_rusage(child);
    Outcome {
        code,
        stderr,
        reply,
        max_rss_kib,
    }
}

fn wait_with_rusage(mut child: Child) -> (Option<i32>, String, i64) {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a status int and a rusage struct.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    (code, stderr, usage.ru_maxrss)
}

fn assert_connection_error(o: &Outcome, want: &str) {
    assert_eq!(
        o.code,
        Some(2),
        "agent should exit 2 (stderr: {})",
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked"),
        "agent panicked: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains(want),
        "stderr {:?} should mention {want:?}",
        o.stderr
    );
    // The last thing it sent is a connection-level error (id 0).
    let last = o.reply.last().expect("an error frame before closing");
    assert_eq!((last.kind, last.id), (FrameKind::Response, 0));
    match last.parse::<Response>().unwrap() {
        Response::Error { message, .. } => assert!(message.contains(want), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // Far below the 4 GiB a naive reader would try to allocate.
    assert!(
        o.max_rss_kib < 64 * 1024,
        "agent used {} KiB",
        o.max_rss_kib
    );
}

#[test]
fn frame_claiming_4_gib_is_refused_without_allocating() {
    let mut bytes = u32::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0, 1]);
    bytes.extend(std::iter::repeat_n(b'x', 100_000));
    let o = feed(&bytes);
    assert_connection_error(&o, "exceeds");
}

#[test]
fn garbage_bytes_are_a_connection_error() {
    // A plausible length followed by an unknown kind byte, then noise.
    let mut bytes = vec![0, 0, 0, 20, 0xEE];
    bytes.extend((0..10_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let o = feed(&bytes);
    assert_connection_error(&o, "unknown frame kind");
}

#[test]
fn truncated_frame_is_a_connection_error() {
    let frame = Frame::new(FrameKind::Request, 1, br#"{"op":"ping"}"#.to_vec()).encode();
    let o = feed(&frame[..frame.len() - 3]);
    assert_eq!(o.code, Some(2), "stderr: {}", o.stderr);
    assert!(
        o.stderr.contains("stream ended inside a frame"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"));
}

#[test]
fn short_length_is_a_connection_error() {
    let o = feed(&[0, 0, 0, 1, 1]);
    assert_connection_error(&o, "shorter than its 5-byte header");
}

#[test]
fn bad_json_fails_only_that_request() {
    let mut bytes = Frame::new(FrameKind::Request, 7, b"{not json".to_vec()).encode();
    bytes.extend(Frame::new(FrameKind::Request, 8, br#"{"op":"ping"}"#.to_vec()).encode());
    let o = feed(&bytes);
    assert_eq!(
        o.code,
        Some(0),
        "clean end of input after a bad request: {}",
        o.stderr
    );
    let by_id = |id| {
        o.reply
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no reply for {id}"))
            .parse::<Response>()
            .unwrap()
    };
    assert!(matches!(by_id(7), Response::Error { .. }));
    assert!(matches!(by_id(8), Response::Pong(_)));
}

#[test]
fn clean_close_exits_zero() {
    let (child, sock) = spawn_agent();
    drop(sock);
    let (code, stderr, _) = wait_with_rusage(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn hello_ends_execs_an_earlier_client_left_running() {
    use petty_protocol::{ExecRequest, Request};
    let (mut child, mut sock) = spawn_agent();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let exec = Request::Exec(ExecRequest::argv(["sleep", "1000"]));
    sock.write_all(&Frame::json(FrameKind::Request, 5, &exec).encode())
        .unwrap();
    // A new client says hello on the same stream, whether or not the exec
    // has started yet: either way it must end.
    sock.write_all(&Frame::json(FrameKind::Request, 6, &Request::Hello).encode())
        .unwrap();
    let mut dec = FrameDecoder::new();
    let mut got_exit = None;
    let mut got_pong = false;
    let mut buf = [0u8; 4096];
    while got_exit.is_none() || !got_pong {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "agent closed early");
        dec.push(&buf[..n]);
        while let Some(f) = dec.next_frame().unwrap() {
            match (f.id, f.parse::<Response>()) {
                (5, Ok(Response::Exited(st))) => got_exit = Some(st),
                (6, Ok(Response::Pong(_))) => got_pong = true,
                _ => {}
            }
        }
    }
    assert_eq!(
        got_exit.unwrap().signal,
        Some(9),
        "the orphaned exec was not killed"
    );
    drop(sock);
    child.wait().unwrap();
}
