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
