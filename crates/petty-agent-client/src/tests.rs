//! The client against a hostile guest: each test plays the guest on the far
//! end of a `tokio::io::duplex` and feeds it bytes no honest agent sends.
//!
//! Memory is measured as heap bytes live on the test's thread (a counting
//! global allocator). Every test runs on a current-thread runtime, so the
//! client's reader task, the fake guest and the caller all allocate on that
//! one thread, while the other tests of this binary run on threads of their
//! own and cannot disturb the count; the process's resident size could not
//! tell them apart (nor see a buffer that was freed again before it was read).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use petty_protocol::{
    ErrorKind, ExecRequest, ExitStatus, Frame, FrameDecoder, FrameKind, Pong, Request, Response,
    CHUNK_SIZE, HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Counts, per thread, the heap bytes live and their peak.
struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: a thread being torn down may still free memory.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed to `System` unchanged; only counters move.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which we forward.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (we hand out
        // nothing else).
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `fut` and returns its output with the most heap this thread held
/// during it beyond what it held before.
async fn peak_heap<F: Future>(fut: F) -> (F::Output, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = fut.await;
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

const MIB: usize = 1024 * 1024;

/// What the streaming tests push through, far past every cap.
const FLOOD: usize = 1024 * MIB;

/// Most heap a flood may grow the host by. What the client may hold is
/// about 36 MiB: a full per-request channel (32 frames of up to 1 MiB),
/// the decoder's two frames, the read buffer and the collected output.
const HEAP_BOUND: usize = 64 * MIB;

/// Fails a test that hangs instead of letting it hang.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

/// The far end of a client's stream: a guest agent under the test's control.
struct Guest {
    io: DuplexStream,
    decoder: FrameDecoder,
}

impl Guest {
    /// The next frame from the host, or `None` once it closed the stream.
    async fn frame(&mut self) -> Option<Frame> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.decoder.next_frame().expect("host sent a bad frame") {
                return Some(f);
            }
            match self.io.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
            }
        }
    }

    /// The next request from the host, with its id.
    async fn request(&mut self) -> (u32, Request) {
        let f = within("the host's request", self.frame())
            .await
            .expect("host closed the stream before sending a request");
        assert_eq!(f.kind, FrameKind::Request, "expected a request, got {f:?}");
        (f.id, f.parse().expect("host sent a bad request"))
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("writing to the host");
    }

    async fn send(&mut self, kind: FrameKind, id: u32, payload: &[u8]) {
        self.raw(&Frame::new(kind, id, payload.to_vec()).encode())
            .await;
    }

    async fn respond(&mut self, id: u32, r: &Response) {
        self.raw(&Frame::json(FrameKind::Response, id, r).encode())
            .await;
    }

    /// Waits for the host to close its end (it drops both halves of its
    /// stream), reading past whatever it had sent.
    async fn expect_closed(mut self) {
        while within("the host's close", self.frame()).await.is_some() {}
    }
}

fn pair_with(buf: usize, rpc_timeout: Duration) -> (AgentClient, Guest) {
    let (host, guest) = tokio::io::duplex(buf);
    let client = AgentClient::new(host, rpc_timeout);
    let guest = Guest {
        io: guest,
        decoder: FrameDecoder::new(),
    };
    (client, guest)
}

fn pair() -> (AgentClient, Guest) {
    pair_with(256 * 1024, Duration::from_secs(30))
}

fn pong() -> Response {
    Response::Pong(Pong {
        protocol: PROTOCOL_VERSION,
        agent_version: "test".into(),
        kernel: "test".into(),
    })
}

fn exited(code: i32) -> Response {
    Response::Exited(ExitStatus {
        code,
        signal: None,
        timed_out: false,
    })
}

/// A frame header by hand, for lengths and kinds `Frame` cannot express.
fn header(len: u32, kind: u8, id: u32) -> Vec<u8> {
    let mut b = len.to_be_bytes().to_vec();
    b.push(kind);
    b.extend_from_slice(&id.to_be_bytes());
    b
}

/// The violation a hostile guest's `bytes` cause, checked the same for a
/// request in flight when they arrive and for a call made after; with
/// `close`, the guest then closes its end (as a truncated frame needs),
/// without it the test checks the host closes the stream. The host must
/// handle it all in well under one frame's worth of heap: a length prefix
/// is judged before anything is buffered for it.
async fn violation(bytes: Vec<u8>, close: bool) -> Violation {
    let (client, mut guest) = pair();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/etc").await }
    });
    let (_, req) = guest.request().await;
    assert!(matches!(req, Request::Stat { .. }), "{req:?}");
    let (what, heap) = peak_heap(async {
        // The host may hang up before it has read everything.
        let _ = guest.io.write_all(&bytes).await;
        let guest = if close {
            drop(guest);
            None
        } else {
            Some(guest)
        };
        let err = within("the request in flight", in_flight)
            .await
            .unwrap()
            .unwrap_err();
        let ClientError::Hostile { what } = err else {
            panic!("want Hostile, got {err:?}")
        };
        let later = client.ping().await.unwrap_err();
        assert!(
            matches!(&later, ClientError::Hostile { what: w } if w.to_string() == what.to_string()),
            "a later call should fail the same way, got {later:?}"
        );
        assert_eq!(client.dead_reason(), Some(what.to_string()));
        if let Some(guest) = guest {
            guest.expect_closed().await;
        }
        what
    })
    .await;
    assert!(heap < MIB / 2, "handling {what} took {heap} bytes of heap");
    what
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_before_buffering() {
    let what = violation(header(u32::MAX, FrameKind::Stdout as u8, 1), false).await;
    assert!(matches!(what, Violation::TooLong(u32::MAX)), "{what:?}");
    assert_eq!(
        what.to_string(),
        "guest agent sent a frame of 4294967295 bytes, over the 1048581-byte limit"
    );
    // One byte over, followed by that much payload.
    let mut bytes = header(MAX_FRAME_LEN + 1, FrameKind::Stdout as u8, 1);
    bytes.resize(4 + MAX_FRAME_LEN as usize + 1, b'x');
    let what = violation(bytes, false).await;
    assert!(
        matches!(what, Violation::TooLong(n) if n == MAX_FRAME_LEN + 1),
        "{what:?}"
    );
}

#[tokio::test]
async fn length_too_short_for_the_header_is_refused() {
    for len in [0, 4] {
        let what = violation(header(len, FrameKind::Stdout as u8, 1), false).await;
        assert!(
            matches!(what, Violation::TooShort(n) if n == len),
            "{what:?}"
        );
        assert_eq!(
            what.to_string(),
            format!("guest agent sent a frame of {len} bytes, too short for the 5 bytes of its kind and request id")
        );
    }
}

#[tokio::test]
async fn stream_ending_inside_a_header_is_hostile() {
    let whole = header(5 + 3, FrameKind::Stdout as u8, 7);
    for cut in [1, 3, 4, 6] {
        let what = violation(whole[..cut].to_vec(), true).await;
        assert!(
            matches!(what, Violation::TruncatedHeader { received } if received == cut),
            "{what:?}"
        );
        assert_eq!(
            what.to_string(),
            format!("guest agent's stream ended inside a frame header, after {cut} of its {HEADER_LEN} bytes")
        );
    }
}

#[tokio::test]
async fn stream_ending_inside_a_payload_is_hostile() {
    let whole = Frame::new(FrameKind::Stdout, 7, vec![b'x'; 1000]).encode();
    let what = violation(whole[..HEADER_LEN + 400].to_vec(), true).await;
    assert!(
        matches!(what, Violation::TruncatedFrame { received, len } if received == HEADER_LEN + 400 && len == whole.len()),
        "{what:?}"
    );
    assert_eq!(
        what.to_string(),
        "guest agent's stream ended inside a frame, after 409 of its 1009 bytes"
    );
}

#[tokio::test]
async fn unknown_kind_byte_is_hostile() {
    for kind in [0u8, 7, 255] {
        let mut bytes = header(5 + 2, kind, 1);
        bytes.extend_from_slice(b"{}");
        let what = violation(bytes, false).await;
        assert!(
            matches!(what, Violation::UnknownKind(k) if k == kind),
            "{what:?}"
        );
        assert_eq!(
            what.to_string(),
            format!("guest agent sent a frame of unknown kind {kind}")
        );
    }
}

#[tokio::test]
async fn request_or_stdin_frame_from_the_guest_is_hostile() {
    let req = Frame::json(FrameKind::Request, 9, &Request::Shutdown).encode();
    let what = violation(req, false).await;
    assert!(
        matches!(
            what,
            Violation::HostOnlyKind {
                kind: FrameKind::Request,
                id: 9
            }
        ),
        "{what:?}"
    );
    assert_eq!(
        what.to_string(),
        "guest agent sent a Request frame (request 9), a kind only the host sends"
    );
    let stdin = Frame::new(FrameKind::Stdin, 9, b"rm -rf /\n".to_vec()).encode();
    let what = violation(stdin, false).await;
    assert!(
        matches!(
            what,
            Violation::HostOnlyKind {
                kind: FrameKind::Stdin,
                id: 9
            }
        ),
        "{what:?}"
    );
}

#[tokio::test]
async fn unparseable_response_is_hostile() {
    for payload in [&b"{not json"[..], br#"{"result":"format_disk"}"#, b""] {
        let bytes = Frame::new(FrameKind::Response, 5, payload.to_vec()).encode();
        let what = violation(bytes, false).await;
        assert!(
            matches!(what, Violation::BadResponse { id: 5, .. }),
            "{what:?}"
        );
        let text = what.to_string();
        assert!(
            text.starts_with("guest agent sent a Response for request 5 that does not parse: "),
            "{text}"
        );
    }
}

#[tokio::test]
async fn frame_for_request_zero_is_hostile_unless_it_is_the_closing_error() {
    let what = violation(
        Frame::new(FrameKind::Stdout, 0, b"hi".to_vec()).encode(),
        false,
    )
    .await;
    assert!(
        matches!(
            what,
            Violation::RequestZero {
                kind: FrameKind::Stdout
            }
        ),
        "{what:?}"
    );
    assert_eq!(
        what.to_string(),
        "guest agent sent a Stdout frame for request 0 that is not its closing error"
    );
    let what = violation(
        Frame::json(FrameKind::Response, 0, &Response::Ok).encode(),
        false,
    )
    .await;
    assert!(
        matches!(
            what,
            Violation::RequestZero {
                kind: FrameKind::Response
            }
        ),
        "{what:?}"
    );

    // The agent's own goodbye is a close, not an attack.
    let (client, mut guest) = pair();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/etc").await }
    });
    guest.request().await;
    let bye = Response::Error {
        kind: ErrorKind::InvalidRequest,
        message: "protocol error: unknown frame kind 9".into(),
    };
    guest.respond(0, &bye).await;
    let err = within("the request in flight", in_flight)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected(why) if why.contains("unknown frame kind 9")),
        "{err:?}"
    );
    let later = client.ping().await.unwrap_err();
    assert!(matches!(later, ClientError::Disconnected(_)), "{later:?}");
}

#[test]
fn host_error_names_the_violation_and_what_to_do() {
    let err = ClientError::Hostile {
        what: Violation::UnknownKind(9),
    };
    let text = err.to_string();
    assert!(
        text.starts_with("guest agent sent a frame of unknown kind 9; "),
        "{text}"
    );
    assert!(text.contains("remove this sandbox"), "{text}");
}

#[tokio::test]
async fn clean_close_is_disconnected_not_hostile() {
    let (client, mut guest) = pair();
    let (answered, ()) = tokio::join!(client.ping(), async {
        let (id, _) = guest.request().await;
        guest.respond(id, &pong()).await;
    });
    answered.unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.list_dir("/").await }
    });
    guest.request().await;
    drop(guest);
    for err in [
        within("the request in flight", in_flight)
            .await
            .unwrap()
            .unwrap_err(),
        client.ping().await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, ClientError::Disconnected(why) if why == "the agent closed the stream"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn wrong_answer_fails_only_its_request() {
    let (client, mut guest) = pair();
    let (wrong, ()) = tokio::join!(client.ping(), async {
        let (id, _) = guest.request().await;
        guest.respond(id, &Response::Ok).await;
    });
    let err = wrong.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    let (right, ()) = tokio::join!(client.ping(), async {
        let (id, _) = guest.request().await;
        guest.respond(id, &pong()).await;
    });
    right.expect("the connection should survive a wrong answer");
}

/// All events of an exec, up to and including its exit.
async fn events(stream: &mut ExecStream) -> Vec<ExecEvent> {
    let mut out = Vec::new();
    loop {
        let e = within("the exec's events", stream.next()).await.unwrap();
        let last = matches!(e, ExecEvent::Exit(_));
        out.push(e);
        if last {
            return out;
        }
    }
}

#[tokio::test]
async fn interleaved_ids_reach_their_own_requests_and_strays_are_dropped() {
    let (client, mut guest) = pair();
    let (answered, ()) = tokio::join!(client.ping(), async {
        let (id, _) = guest.request().await;
        guest.respond(id, &pong()).await;
    });
    answered.unwrap();
    let mut a = client.exec(ExecRequest::shell("a")).await.unwrap();
    let (ida, _) = guest.request().await;
    let mut b = client.exec(ExecRequest::shell("b")).await.unwrap();
    let (idb, _) = guest.request().await;
    // The ping's id has finished; this one was never issued.
    let finished = ida - 1;
    let unknown = ida.wrapping_add(1_000_000);
    guest.send(FrameKind::Stdout, ida, b"a1").await;
    guest.send(FrameKind::Stdout, idb, b"b1").await;
    guest
        .send(FrameKind::Stdout, unknown, b"never issued")
        .await;
    guest.send(FrameKind::Stderr, ida, b"a2").await;
    guest.send(FrameKind::Stdout, finished, b"too late").await;
    guest.respond(finished, &pong()).await;
    guest.respond(idb, &exited(3)).await;
    guest.send(FrameKind::Stdout, ida, b"a3").await;
    guest.respond(unknown, &exited(9)).await;
    guest.respond(ida, &exited(0)).await;
    guest.send(FrameKind::Stdout, idb, b"after its exit").await;
    guest.respond(idb, &exited(4)).await;

    assert_eq!(
        events(&mut a).await,
        [
            ExecEvent::Stdout(b"a1".to_vec()),
            ExecEvent::Stderr(b"a2".to_vec()),
            ExecEvent::Stdout(b"a3".to_vec()),
            ExecEvent::Exit(ExitStatus::default()),
        ]
    );
    assert_eq!(
        events(&mut b).await,
        [
            ExecEvent::Stdout(b"b1".to_vec()),
            ExecEvent::Exit(match exited(3) {
                Response::Exited(s) => s,
                _ => unreachable!(),
            }),
        ]
    );
    // Nothing stray reached the next request either, and the connection is up.
    let mut c = client.exec(ExecRequest::shell("c")).await.unwrap();
    let (idc, _) = guest.request().await;
    guest.send(FrameKind::Stdout, idc, b"c1").await;
    guest.respond(idc, &exited(0)).await;
    assert_eq!(
        events(&mut c).await,
        [
            ExecEvent::Stdout(b"c1".to_vec()),
            ExecEvent::Exit(ExitStatus::default()),
        ]
    );
    assert_eq!(client.dead_reason(), None);
    assert!(
        lock(&client.inner.pending).map.is_empty(),
        "finished requests still have routes"
    );
}

#[tokio::test]
async fn frames_after_a_response_are_dropped() {
    let (client, mut guest) = pair();
    let mut first = Vec::new();
    let (read, first_id) = tokio::join!(client.read_file_into("/a", &mut first, 1024), async {
        let (id, _) = guest.request().await;
        guest.send(FrameKind::Data, id, b"hello").await;
        guest.respond(id, &Response::Done { size: 5 }).await;
        id
    });
    assert_eq!(read.unwrap(), 5);
    assert_eq!(first, b"hello");

    // More for the finished id while another read is in flight: data and a
    // second answer, neither of which may reach the new read.
    let mut second = Vec::new();
    let (read, ()) = tokio::join!(client.read_file_into("/b", &mut second, 1024), async {
        let (id, _) = guest.request().await;
        guest.send(FrameKind::Data, first_id, b"smuggled").await;
        guest.respond(first_id, &Response::Done { size: 13 }).await;
        guest.send(FrameKind::Data, id, b"world").await;
        guest.respond(id, &Response::Done { size: 5 }).await;
    });
    assert_eq!(read.unwrap(), 5);
    assert_eq!(second, b"world");
    assert!(
        lock(&client.inner.pending).map.is_empty(),
        "finished requests still have routes"
    );
}

/// Serialises the floods so that each has the machine's memory bandwidth.
static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Streams `total` bytes for `id` as frames of `kind` with `chunk`-byte payloads.
async fn flood(guest: &mut Guest, kind: FrameKind, id: u32, chunk: usize, total: usize) {
    let frame = Frame::new(kind, id, vec![b'x'; chunk]).encode();
    for _ in 0..total / chunk {
        guest.raw(&frame).await;
    }
}

#[tokio::test]
async fn endless_output_is_capped_in_bounded_memory() {
    let _serial = FLOODS.lock().await;
    let (client, mut guest) = pair_with(2 * MIB, Duration::from_secs(300));
    let cap = 64 * 1024;
    let ((collected, ()), heap) = peak_heap(async {
        tokio::join!(
            client.exec_collect(ExecRequest::shell("yes"), None, cap),
            async {
                let (id, _) = guest.request().await;
                flood(&mut guest, FrameKind::Stdout, id, MAX_PAYLOAD, FLOOD).await;
                flood(&mut guest, FrameKind::Stderr, id, CHUNK_SIZE, 64 * MIB).await;
                guest.respond(id, &exited(0)).await;
            }
        )
    })
    .await;
    let out = collected.unwrap();
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), cap);
    assert_eq!(out.stderr.len(), cap);
    assert!(out.status.success());
    assert!(
        heap < HEAP_BOUND,
        "streaming {FLOOD} bytes grew the heap by {heap} bytes"
    );
}

#[tokio::test]
async fn endless_file_read_fails_too_large_in_bounded_memory() {
    let _serial = FLOODS.lock().await;
    let (client, mut guest) = pair_with(2 * MIB, Duration::from_secs(300));
    let limit = MIB as u64;
    let mut sink = Vec::new();
    let ((results, ()), heap) = peak_heap(async {
        tokio::join!(
            async {
                let read = client.read_file_into("/dev/zero", &mut sink, limit).await;
                // The guest floods on after the host gave up on the file; the
                // connection must carry a ping past all of it.
                (read, client.ping().await)
            },
            async {
                let (id, _) = guest.request().await;
                flood(&mut guest, FrameKind::Data, id, CHUNK_SIZE, FLOOD).await;
                guest
                    .respond(id, &Response::Done { size: FLOOD as u64 })
                    .await;
                // The host gave up on the file and said so; it waits for no
                // answer to that.
                let (_, cancel) = guest.request().await;
                assert_eq!(cancel, Request::Cancel { request_id: id }, "{cancel:?}");
                let (ping, _) = guest.request().await;
                guest.respond(ping, &pong()).await;
            }
        )
    })
    .await;
    let (read, ping) = results;
    let err = read.unwrap_err();
    assert!(
        matches!(&err, ClientError::TooLarge { path, limit: l } if path == "/dev/zero" && *l == limit),
        "{err:?}"
    );
    assert!(
        sink.len() as u64 <= limit,
        "{} bytes reached the sink",
        sink.len()
    );
    ping.expect("the connection should outlast the abandoned read");
    assert!(
        heap < HEAP_BOUND,
        "streaming {FLOOD} bytes grew the heap by {heap} bytes"
    );
}

#[tokio::test]
async fn a_consumer_that_falls_behind_stalls_the_guest_not_the_host() {
    let _serial = FLOODS.lock().await;
    let (client, mut guest) = pair_with(2 * MIB, Duration::from_secs(30));
    let mut exec = client.exec(ExecRequest::shell("yes")).await.unwrap();
    let (id, _) = guest.request().await;
    let written = Arc::new(AtomicU32::new(0));
    let (flooder, heap) = peak_heap(async {
        let flooder = tokio::spawn({
            let written = written.clone();
            async move {
                let frame = Frame::new(FrameKind::Stdout, id, vec![b'x'; MAX_PAYLOAD]).encode();
                for _ in 0..FLOOD / MAX_PAYLOAD {
                    guest.raw(&frame).await;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Nobody reads the exec: the guest writes until the host stops taking.
        let mut last = u32::MAX;
        while written.load(Ordering::Relaxed) != last {
            last = written.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        flooder.abort_handle()
    })
    .await;
    let frames = written.load(Ordering::Relaxed) as usize;
    assert!(
        frames * MAX_PAYLOAD < HEAP_BOUND,
        "the host took {frames} MiB from a guest nobody reads"
    );
    assert!(
        heap < HEAP_BOUND,
        "a stalled consumer let the heap grow by {heap} bytes"
    );
    // Reading again lets the guest go on.
    for _ in 0..frames + 8 {
        let event = within("the exec's output", exec.next()).await;
        assert!(matches!(event, Ok(ExecEvent::Stdout(_))), "{event:?}");
    }
    assert!(written.load(Ordering::Relaxed) as usize >= frames + 8);
    flooder.abort();
}

#[tokio::test]
async fn abort_fails_an_exec_in_flight_with_its_cause() {
    let (client, mut guest) = pair();
    let mut silent = client.exec(ExecRequest::shell("sleep 1000")).await.unwrap();
    guest.request().await;
    let waiting = tokio::spawn(async move { silent.next().await });
    let mut chatty = client.exec(ExecRequest::shell("yes")).await.unwrap();
    let (id, _) = guest.request().await;
    // Received but not yet read when the abort comes: dropped with the rest.
    guest.send(FrameKind::Stdout, id, b"partial").await;
    let stat = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/").await }
    });
    guest.request().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished() && !stat.is_finished());

    let t0 = Instant::now();
    client.abort("the VM powered off");
    let errs = [
        within("the silent exec", waiting)
            .await
            .unwrap()
            .unwrap_err(),
        chatty.next().await.unwrap_err(),
        within("the stat", stat).await.unwrap().unwrap_err(),
        client.ping().await.unwrap_err(),
    ];
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    for err in errs {
        assert!(
            matches!(&err, ClientError::Disconnected(why) if why == "the VM powered off"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "connection to the guest agent lost: the VM powered off"
        );
    }
    // The reader stopped and the writer is gone: the guest sees the close.
    guest.expect_closed().await;
    // A later abort does not replace the first cause.
    client.abort("again");
    assert_eq!(client.dead_reason().as_deref(), Some("the VM powered off"));
}

#[tokio::test]
async fn abort_unblocks_a_write_the_guest_never_reads() {
    let (client, guest) = pair_with(64 * 1024, Duration::from_secs(30));
    let data = vec![b'x'; 8 * MIB];
    let write = tokio::spawn({
        let client = client.clone();
        async move { client.write_file("/big", &data, None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !write.is_finished(),
        "the write should be stuck on the guest"
    );
    client.abort("the VMM exited");
    let err = within("the write", write).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected(why) if why == "the VMM exited"),
        "{err:?}"
    );
    guest.expect_closed().await;
}
