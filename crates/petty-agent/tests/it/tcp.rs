//! The agent's TCP transport (a VM reached over its network: the
//! Flintlock backend), run on this host with `petty-agent --tcp`: a
//! connection is served only once its first frame carries the token.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use petty_agent_client::AgentClient;
use petty_protocol::{ExecRequest, Frame, FrameDecoder, FrameKind, Request, Response};
use petty_vmm::tcp::{connect, TcpAgentError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "5f0c3a9e2b7d41c8a6e3f1029b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c";

struct Agent {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_tcp_agent() -> Agent {
    let mut child = Command::new(env!("CARGO_BIN_EXE_petty-agent"))
        .args(["--tcp", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn petty-agent --tcp");
    writeln!(child.stdin.take().unwrap(), "{TOKEN}").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Agent { child, addr }
}

#[tokio::test]
async fn the_right_token_opens_the_agent() {
    let agent = spawn_tcp_agent();
    let stream = connect(agent.addr, TOKEN, Duration::from_secs(10))
        .await
        .expect("the right token is accepted");
    let client = AgentClient::new(stream, Duration::from_secs(30));
    client.handshake(Duration::from_secs(30)).await.unwrap();
    let out = client
        .exec_collect(ExecRequest::shell("echo over-tcp"), None, 1 << 16)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tcp\n");
    // Several connections at once, each authenticated on its own.
    let other = connect(agent.addr, TOKEN, Duration::from_secs(10))
        .await
        .unwrap();
    let other = AgentClient::new(other, Duration::from_secs(30));
    other.ping().await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_connection_closed() {
    let agent = spawn_tcp_agent();
    let mut wrong = TOKEN.to_string();
    wrong.replace_range(63.., "d");
    let e = connect(agent.addr, &wrong, Duration::from_secs(10))
        .await
        .expect_err("a wrong token is refused");
    assert!(matches!(e, TcpAgentError::Refused { .. }), "{e}");
    for short in ["", &TOKEN[..32]] {
        let e = connect(agent.addr, short, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, TcpAgentError::Refused { .. }), "{e}");
    }
    // The agent still serves the right one after refusals.
    connect(agent.addr, TOKEN, Duration::from_secs(10))
        .await
        .unwrap();
}

/// Reads frames until the peer closes; returns them.
async fn frames_until_close(stream: &mut tokio::net::TcpStream) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let mut frames = Vec::new();
    loop {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return frames;
        }
        decoder.push(&buf[..n]);
        while let Ok(Some(f)) = decoder.next_frame() {
            frames.push(f);
        }
    }
}

#[tokio::test]
async fn requests_before_the_token_are_refused_and_never_run() {
    let agent = spawn_tcp_agent();
    let marker = tempfile::tempdir().unwrap();
    let file = marker.path().join("ran");
    let mut s = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    // An exec first, then the right token: neither is served.
    let exec = Request::Exec(ExecRequest::shell(format!("touch {}", file.display())));
    let mut bytes = Frame::json(FrameKind::Request, 1, &exec).encode();
    bytes.extend(
        Frame::json(
            FrameKind::Request,
            2,
            &Request::Auth {
                token: TOKEN.into(),
            },
        )
        .encode(),
    );
    s.write_all(&bytes).await.unwrap();
    let frames = frames_until_close(&mut s).await;
    assert_eq!(frames.len(), 1, "one refusal, then the agent hangs up");
    match frames[0].parse::<Response>().unwrap() {
        Response::Error { message, .. } => assert!(message.contains("token"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!file.exists(), "the exec before the token must not run");

    // A huge first frame is refused without reading it.
    let mut s = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    s.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let frames = frames_until_close(&mut s).await;
    assert_eq!(frames.len(), 1);
    assert!(matches!(
        frames[0].parse::<Response>().unwrap(),
        Response::Error { .. }
    ));
}
