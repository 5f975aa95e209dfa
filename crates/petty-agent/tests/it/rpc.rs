//! The protocol end to end: the real client against the real agent process.
//! (The same paths run inside a VM in the `petty` crate's tests.)

use std::time::Duration;

use petty_agent_client::{AgentClient, ClientError, ExecEvent};
use petty_protocol::{ErrorKind, ExecRequest};
use sha2::{Digest, Sha256};

use crate::spawn_agent;

fn client() -> (std::process::Child, AgentClient) {
    let (child, sock) = spawn_agent();
    sock.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(sock).unwrap();
    (child, AgentClient::new(stream, Duration::from_secs(30)))
}

#[tokio::test]
async fn ping_reports_protocol_and_kernel() {
    let (_child, c) = client();
    let pong = c.handshake(Duration::from_secs(10)).await.unwrap();
    assert_eq!(pong.protocol, petty_protocol::PROTOCOL_VERSION);
    assert!(!pong.kernel.is_empty());
}

#[tokio::test]
async fn stdout_stderr_exit_code_env_cwd_stdin() {
    let (_child, c) = client();
    let mut req = ExecRequest::shell("echo out; echo err >&2; echo $GREETING; pwd; cat; exit 3");
    req.env = vec![("GREETING".into(), "hello".into())];
    req.cwd = Some("/tmp".into());
    let out = c
        .exec_collect(req, Some(b"from stdin\n".to_vec()), 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\nhello\n/tmp\nfrom stdin\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code, 3);
}

#[tokio::test]
async fn missing_command_is_127_and_signal_is_128_plus_n() {
    let (_child, c) = client();
    let out = c
        .exec_collect(ExecRequest::argv(["no-such-command-xyz"]), None, 1 << 20)
        .await
        .unwrap();
    assert_eq!(out.status.code, 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
    let out = c
        .exec_collect(ExecRequest::shell("kill -TERM $$"), None, 1 << 20)
        .await
        .unwrap();
    assert_eq!((out.status.code, out.status.signal), (128 + 15, Some(15)));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let (_child, c) = client();
    // A duration no other process on this host is sleeping for.
    let marker = format!("sleep {}", 1_000_000 + std::process::id());
    let mut req = ExecRequest::shell(format!("{marker} & {marker}"));
    req.timeout_ms = Some(300);
    let out = c.exec_collect(req, None, 1 << 20).await.unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(9));
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[tokio::test]
async fn files_write_read_list_stat_rename_remove() {
    let (_child, c) = client();
    let dir = std::env::temp_dir().join(format!("petty-agent-files-{}", std::process::id()));
    let d = dir.display().to_string();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = format!("{d}/sub/dir/blob.bin");
    assert_eq!(
        c.write_file(&path, &data, Some(0o600)).await.unwrap(),
        data.len() as u64
    );
    let back = c.read_file(&path).await.unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    let st = c.stat(&path).await.unwrap();
    assert_eq!(
        (st.size, st.mode, st.is_dir),
        (data.len() as u64, 0o600, false)
    );
    c.mkdir(&format!("{d}/sub/empty")).await.unwrap();
    let names: Vec<_> = c
        .list_dir(&format!("{d}/sub"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(names, [("dir".into(), true), ("empty".into(), true)]);
    c.rename(&path, &format!("{d}/moved.bin")).await.unwrap();
    match c.read_file(&path).await {
        Err(ClientError::Remote {
            kind: ErrorKind::NotFound,
            message,
        }) => {
            assert!(message.contains("blob.bin"), "{message}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    match c.remove(&format!("{d}/sub"), false).await {
        Err(ClientError::Remote {
            kind: ErrorKind::NotEmpty,
            ..
        }) => {}
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    c.remove(&d, true).await.unwrap();
    assert!(!dir.exists());
}

#[tokio::test]
async fn twenty_execs_in_flight_on_one_stream() {
    let (_child, c) = client();
    let dir = std::env::temp_dir().join(format!("petty-agent-barrier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    // Each exec checks in, then waits until all 20 have: it can only finish
    // if all 20 run at the same time on the one stream.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = ExecRequest::shell(format!(
                "touch {d}/{i}; while [ $(ls {d} | wc -l) -lt 20 ]; do sleep 0.05; done; echo {i}"
            ));
            req.timeout_ms = Some(60_000);
            c.exec_collect(req, None, 1 << 20).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap();
        assert!(!out.status.timed_out, "exec {i} never saw the others");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{i}\n"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn output_streams_as_it_comes() {
    let (_child, c) = client();
    let go = std::env::temp_dir().join(format!("petty-agent-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    // The command prints, then waits for a file we create only after we saw
    // that print: if output were held back until exit, this would time out.
    let mut req = ExecRequest::shell(format!(
        "echo first; while [ ! -e {0} ]; do sleep 0.05; done; echo second",
        go.display()
    ));
    req.timeout_ms = Some(60_000);
    let mut s = c.exec(req).await.unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        ExecEvent::Stdout(b"first\n".to_vec())
    );
    std::fs::write(&go, b"").unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        ExecEvent::Stdout(b"second\n".to_vec())
    );
    match s.next().await.unwrap() {
        ExecEvent::Exit(st) => assert!(st.code == 0 && !st.timed_out, "{st:?}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&go).unwrap();
}

fn expect_not_regular<T: std::fmt::Debug>(r: Result<T, ClientError>, want: &str) {
    match r {
        Err(ClientError::Remote {
            kind: ErrorKind::NotARegularFile,
            message,
        }) => assert!(message.contains(want), "{message:?} should say {want:?}"),
        other => panic!("expected NotARegularFile, got {other:?}"),
    }
}

#[tokio::test]
async fn reads_refuse_devices_fifos_and_sockets_at_once() {
    let (_child, c) = client();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
    let fifo = std::ffi::CString::new(format!("{d}/fifo")).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
    std::fs::write(dir.path().join("real"), b"abc").unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();

    // Each answers at once: no stream of zeros, no open blocked on a FIFO.
    let mut sink = Vec::new();
    let zero = format!("{d}/zero");
    expect_not_regular(
        c.read_file_into(&zero, &mut sink, 1 << 20).await,
        &format!("{zero} is a character device, not a regular file"),
    );
    assert!(sink.is_empty());
    expect_not_regular(c.read_file(&format!("{d}/fifo")).await, "is a FIFO");
    expect_not_regular(c.read_file(&format!("{d}/sock")).await, "is a socket");
    assert_eq!(c.read_file(&format!("{d}/link")).await.unwrap(), b"abc");

    let st = c.stat_target(&format!("{d}/zero")).await.unwrap();
    assert_eq!(st.file_type, petty_protocol::FileType::CharDevice);
    let st = c.stat(&format!("{d}/zero")).await.unwrap();
    assert_eq!(st.file_type, petty_protocol::FileType::Symlink);
    let st = c.stat_target(&format!("{d}/link")).await.unwrap();
    assert_eq!((st.file_type, st.size), (petty_protocol::FileType::File, 3));

    // Writes refuse them too, rather than replace them or block on them.
    expect_not_regular(
        c.write_file(&format!("{d}/fifo"), b"x", None).await,
        "is a FIFO",
    );
    expect_not_regular(
        c.write_file(&format!("{d}/zero"), b"x", None).await,
        "is a character device",
    );
}

/// Names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_write_lands_whole_or_not_at_all() {
    let (_child, c) = client();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let target = dir.path().join("f");
    std::fs::write(&target, b"old").unwrap();

    // A source that fails midway (an upload over its limit, a client gone):
    // the old content stays and no temporary file is left.
    let source = tokio::io::AsyncReadExt::chain(&[7u8; 300_000][..], FailingReader);
    let e = c.write_file_from(&format!("{d}/f"), source, None).await;
    assert!(matches!(e, Err(ClientError::Io(_))), "{e:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["f"]);

    // A dropped write (its future cancelled midway) cleans up as well.
    let pending = tokio::io::AsyncReadExt::chain(&[7u8; 300_000][..], NeverReader);
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        c.write_file_from(&format!("{d}/f"), pending, None),
    )
    .await;
    // The cancel goes out from a task of its own: wait for it to land.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while names(dir.path()) != ["f"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            names(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"old");

    // Through a symlink, the file it points to is replaced, the link kept.
    std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
    c.write_file(&format!("{d}/l"), b"new", Some(0o600))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert!(std::fs::symlink_metadata(dir.path().join("l"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(names(dir.path()), ["f", "l"]);
}

struct FailingReader;

impl tokio::io::AsyncRead for FailingReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("upload over its limit")))
    }
}

struct NeverReader;

impl tokio::io::AsyncRead for NeverReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

/// Every data frame the agent sends fits one 32 KiB write to a virtio-serial
/// port, so a host that goes away mid-file never leaves half a frame for the
/// next one.
#[test]
fn data_frames_fit_one_port_write() {
    use petty_protocol::{Frame, FrameDecoder, FrameKind, Request, Response};
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![5u8; 300_000]).unwrap();
    let (_child, mut sock) = crate::spawn_agent();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let req = Request::ReadFile {
        path: path.display().to_string(),
    };
    sock.write_all(&Frame::json(FrameKind::Request, 9, &req).encode())
        .unwrap();
    let (mut dec, mut buf, mut got) = (FrameDecoder::new(), vec![0u8; 65536], 0);
    loop {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "the agent closed before answering");
        dec.push(&buf[..n]);
        while let Some(f) = dec.next_frame().unwrap() {
            assert!(
                f.encode().len() <= 32 * 1024,
                "a frame of {} bytes",
                f.encode().len()
            );
            match f.kind {
                FrameKind::Data => got += f.payload.len(),
                _ => {
                    assert_eq!(
                        f.parse::<Response>().unwrap(),
                        Response::Done { size: 300_000 }
                    );
                    assert_eq!(got, 300_000);
                    return;
                }
            }
        }
    }
}

/// Output of a terminal exec until `want` shows up (or it ends).
async fn read_until(stream: &mut petty_agent_client::ExecStream, seen: &mut String, want: &str) {
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} on the terminal; it showed {seen:?}"))
            .unwrap()
        {
            ExecEvent::Stdout(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            ExecEvent::Stderr(b) => panic!("a terminal has one output; stderr got {b:?}"),
            ExecEvent::Exit(s) => panic!("ended ({s:?}) before {want:?}; it showed {seen:?}"),
        }
    }
}

#[tokio::test]
async fn a_pty_exec_is_a_terminal_session_that_resizes_and_takes_typing() {
    let (_child, c) = client();
    let mut req = ExecRequest::shell(
        "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-terminals; \
         echo sid=$(ps -o sid= -p $$ | tr -d ' ') pid=$$; stty size; \
         read line; echo got:$line; stty size; exit 7",
    );
    req.pty = Some(petty_protocol::PtySize {
        rows: 30,
        cols: 100,
    });
    req.stdin = true;
    let mut stream = c.exec(req).await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "30 100").await;
    assert!(seen.contains("/dev/pts/"), "{seen}");
    assert!(seen.contains("all-terminals"), "{seen}");
    // Its own session: the shell leads it.
    let sid = seen
        .split("sid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let pid = seen
        .split("pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(sid, pid, "{seen}");
    stream
        .stdin()
        .resize(petty_protocol::PtySize { rows: 12, cols: 40 })
        .await
        .unwrap();
    stream.write_stdin(b"typed\r").await.unwrap();
    read_until(&mut stream, &mut seen, "12 40").await;
    // The terminal echoes what was typed, and the shell read it.
    assert!(seen.contains("got:typed"), "{seen}");
    loop {
        if let ExecEvent::Exit(status) = stream.next().await.unwrap() {
            assert_eq!(status.code, 7);
            break;
        }
    }
    // A piped exec has no terminal to resize.
    let mut req = ExecRequest::shell("sleep 5");
    req.stdin = true;
    let piped = c.exec(req).await.unwrap();
    let err = piped
        .stdin()
        .resize(petty_protocol::PtySize { rows: 1, cols: 1 })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no terminal"), "{err}");
}

#[tokio::test]
async fn a_watch_reports_creates_writes_renames_removes_and_new_subdirectories() {
    use petty_protocol::WatchEvent as E;
    let (_child, c) = client();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    std::fs::create_dir(dir.path().join("old")).unwrap();
    let mut watch = c.watch(&root, true).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("an event")
            .unwrap()
            .expect("the watch runs")
    };
    std::fs::write(dir.path().join("a.txt"), b"1").unwrap();
    assert_eq!(
        next().await,
        E::Create {
            name: "a.txt".into()
        }
    );
    assert_eq!(
        next().await,
        E::Write {
            name: "a.txt".into()
        }
    );
    std::fs::rename(dir.path().join("a.txt"), dir.path().join("b.txt")).unwrap();
    assert_eq!(
        next().await,
        E::Rename {
            name: "a.txt".into()
        }
    );
    assert_eq!(
        next().await,
        E::Create {
            name: "b.txt".into()
        }
    );
    // A directory that was there, and one made since, are watched too.
    std::fs::write(dir.path().join("old/x"), b"").unwrap();
    assert_eq!(
        next().await,
        E::Create {
            name: "old/x".into()
        }
    );
    std::fs::create_dir(dir.path().join("new")).unwrap();
    assert_eq!(next().await, E::Create { name: "new".into() });
    std::fs::write(dir.path().join("new/y"), b"").unwrap();
    assert_eq!(
        next().await,
        E::Create {
            name: "new/y".into()
        }
    );
    std::fs::remove_file(dir.path().join("b.txt")).unwrap();
    assert_eq!(
        next().await,
        E::Remove {
            name: "b.txt".into()
        }
    );
    drop(watch);

    // Not a directory, or nothing there: refused at once.
    let err = c
        .watch(&format!("{root}/old/x"), false)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("is not a directory"), "{err}");
    let err = c.watch(&format!("{root}/none"), false).await.err().unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // The watched directory going ends the watch.
    let sub = dir.path().join("gone");
    std::fs::create_dir(&sub).unwrap();
    let mut watch = c.watch(sub.to_str().unwrap(), false).await.unwrap();
    std::fs::remove_dir(&sub).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if watch.next().await.unwrap().is_none() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the watch of a removed directory did not end");
}

/// Waits (at most 20 s, else fails) until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process's state letter from `/proc/PID/stat` (`None` once it is gone).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, which may hold anything.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[tokio::test]
async fn a_detached_exec_answers_with_its_pid_and_outlives_its_connection() {
    let (mut first, c) = client();
    c.handshake(Duration::from_secs(10)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    // The shell writes what it was given, then becomes `sleep`: the pid
    // answered is the sleep's.
    let mut req = ExecRequest::shell(format!(
        "echo \"$DETACHED $(pwd)\" > {}; exec sleep 30",
        out.display()
    ));
    req.env = vec![("DETACHED".into(), "yes".into())];
    req.cwd = Some(dir.path().display().to_string());
    let pid = c.exec_detached(req).await.unwrap();
    assert!(pid > 1, "{pid}");
    wait_for("the detached command to write its file", || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("yes {}\n", dir.path().display())
    );

    // The connection ends: the agent ends its attached execs, not this one.
    c.abort("the test is done with this connection");
    drop(c);
    wait_for("the first agent to see its connection end", || {
        first.try_wait().unwrap().is_some()
    })
    .await;

    // A second connection (a new client saying hello) sees it running, on
    // /dev/null, leading a session of its own.
    let (_second, c) = client();
    c.handshake(Duration::from_secs(10)).await.unwrap();
    let probe = format!(
        "cat /proc/{pid}/comm; readlink /proc/{pid}/fd/0 /proc/{pid}/fd/1 /proc/{pid}/fd/2; \
         cut -d' ' -f6 /proc/{pid}/stat"
    );
    let seen = c
        .exec_collect(ExecRequest::shell(probe), None, 1 << 20)
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
    assert_eq!(
        seen,
        format!("sleep\n/dev/null\n/dev/null\n/dev/null\n{pid}\n"),
        "the detached command, seen from a second connection"
    );
    assert_eq!(proc_state(pid).map(|s| s != 'Z'), Some(true));
    // SAFETY: signalling the sleep this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };

    // Its timeout still ends it (the agent reaps it then).
    let mut req = ExecRequest::argv(["sleep", "30"]);
    req.timeout_ms = Some(300);
    let timed = c.exec_detached(req).await.unwrap();
    wait_for("the detached command's timeout to end it", || {
        proc_state(timed).is_none_or(|s| s == 'Z')
    })
    .await;

    // What cannot start is an error, not a pid.
    match c
        .exec_detached(ExecRequest::argv(["no-such-command-xyz"]))
        .await
    {
        Err(ClientError::Remote {
            kind: ErrorKind::NotFound,
            message,
        }) => assert!(message.contains("command not found"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let mut req = ExecRequest::argv(["cat"]);
    req.stdin = true;
    match c.exec_detached(req).await {
        Err(ClientError::Remote {
            kind: ErrorKind::InvalidRequest,
            message,
        }) => assert!(message.contains("neither stdin nor a pty"), "{message}"),
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[tokio::test]
async fn a_signal_sent_right_after_the_start_is_not_lost() {
    let (_child, c) = client();
    // The signal follows the exec request at once, so it often reaches the
    // agent while the command is still being spawned: it must wait for
    // the command's group rather than be refused.
    for _ in 0..20 {
        let mut stream = c.exec(ExecRequest::argv(["sleep", "30"])).await.unwrap();
        stream.signal(libc::SIGKILL).await.unwrap();
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("the killed command ends")
                .unwrap()
            {
                ExecEvent::Exit(s) => break s,
                _ => continue,
            }
        };
        assert_eq!(status.signal, Some(libc::SIGKILL), "{status:?}");
    }
}
