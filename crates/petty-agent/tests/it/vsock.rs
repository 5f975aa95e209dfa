//! Firecracker's hybrid vsock handshake, host side, against a unix-socket
//! peer that speaks the documented protocol (`CONNECT <port>\n` answered by
//! `OK <port>\n`). The peer stands in for Firecracker only in these tests;
//! after the handshake it relays to a real agent process.

use std::path::PathBuf;
use std::time::Duration;

use petty_agent_client::AgentClient;
use petty_vmm::vsock::{connect, VsockError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// How the stand-in behaves for each accepted connection, in order; after
/// the list runs out it keeps doing the last thing.
#[derive(Clone, Copy)]
enum Peer {
    /// Close right after reading the request (guest not listening yet).
    CloseEarly,
    /// Answer garbage.
    Garbage,
    /// Read the request and never answer.
    Silent,
    /// Answer OK and relay to a fresh `petty-agent --stdio`.
    OkRelay,
}

fn socket_path(tag: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(format!("{tag}.vsock"));
    (dir, p)
}

fn spawn_peer(path: PathBuf, script: Vec<Peer>) {
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let mut i = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let behaviour = script[i.min(script.len() - 1)];
            i += 1;
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut rd = BufReader::new(rd);
                let mut line = String::new();
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                assert_eq!(line, "CONNECT 52\n", "the client must ask for port 52");
                match behaviour {
                    Peer::CloseEarly => {}
                    Peer::Garbage => {
                        let _ = wr.write_all(b"NOPE what is this\n").await;
                    }
                    Peer::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
                    Peer::OkRelay => {
                        wr.write_all(b"OK 1073741824\n").await.unwrap();
                        let mut agent =
                            tokio::process::Command::new(env!("CARGO_BIN_EXE_petty-agent"))
                                .arg("--stdio")
                                .stdin(std::process::Stdio::piped())
                                .stdout(std::process::Stdio::piped())
                                .kill_on_drop(true)
                                .spawn()
                                .unwrap();
                        let mut to_agent = agent.stdin.take().unwrap();
                        let mut from_agent = agent.stdout.take().unwrap();
                        let up = tokio::io::copy(&mut rd, &mut to_agent);
                        let down = tokio::io::copy(&mut from_agent, &mut wr);
                        let _ = tokio::join!(up, down);
                    }
                }
            });
        }
    });
}

#[tokio::test]
async fn handshake_then_the_agent_protocol_runs_over_it() {
    let (_dir, path) = socket_path("ok");
    // Twice "not listening yet", then up: the client retries through it.
    spawn_peer(
        path.clone(),
        vec![Peer::CloseEarly, Peer::CloseEarly, Peer::OkRelay],
    );
    let stream = connect(&path, 52, Duration::from_secs(10)).await.unwrap();
    let client = AgentClient::new(stream, Duration::from_secs(10));
    client.handshake(Duration::from_secs(10)).await.unwrap();
    let out = client
        .exec_collect(
            petty_protocol::ExecRequest::shell("echo through vsock"),
            None,
            1 << 16,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"through vsock\n");
}

#[tokio::test]
async fn garbage_answer_is_an_error_naming_it() {
    let (_dir, path) = socket_path("garbage");
    spawn_peer(path.clone(), vec![Peer::Garbage]);
    match connect(&path, 52, Duration::from_secs(10)).await {
        Err(VsockError::BadAnswer { answer, .. }) => assert_eq!(answer, "NOPE what is this"),
        other => panic!("expected BadAnswer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    let (_dir, path) = socket_path("silent");
    spawn_peer(path.clone(), vec![Peer::Silent]);
    match connect(&path, 52, Duration::from_millis(500)).await {
        Err(e @ VsockError::Timeout { .. }) => assert!(e.to_string().contains("no answer"), "{e}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_always_closes_times_out_with_the_reason() {
    let (_dir, path) = socket_path("closing");
    spawn_peer(path.clone(), vec![Peer::CloseEarly]);
    match connect(&path, 52, Duration::from_millis(500)).await {
        Err(e @ VsockError::Timeout { .. }) => {
            assert!(e.to_string().contains("closed before answering"), "{e}")
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn no_socket_at_all_times_out() {
    let (_dir, path) = socket_path("absent");
    match connect(&path, 52, Duration::from_millis(300)).await {
        Err(e @ VsockError::Timeout { .. }) => assert!(e.to_string().contains("connect"), "{e}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
}
