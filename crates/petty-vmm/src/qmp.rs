//! A minimal QMP (QEMU Machine Protocol) client: JSON lines over a unix socket.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::VmmError;

/// Longest QMP line we accept; QEMU's replies are far shorter.
const MAX_LINE: usize = 1 << 20;

/// One QMP session, past the capabilities negotiation.
pub struct Qmp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and enters command mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let fut = async {
            // QEMU creates the socket file (bind) a moment before it listens:
            // a refused connect in that window is retried.
            let stream = loop {
                match UnixStream::connect(path).await {
                    Ok(s) => break s,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                        ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    Err(e) => return Err(VmmError::QmpIo(e)),
                }
            };
            let (rd, wr) = stream.into_split();
            let mut qmp = Self {
                rd: BufReader::new(rd),
                wr,
            };
            let greeting = qmp.read_message().await?;
            if greeting.get("QMP").is_none() {
                return Err(VmmError::Qmp {
                    command: "greeting".into(),
                    message: format!("unexpected greeting {greeting}"),
                });
            }
            qmp.execute("qmp_capabilities", None).await?;
            Ok(qmp)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| VmmError::Qmp {
                command: "connect".into(),
                message: format!("no greeting within {timeout:?}"),
            })?
    }

    async fn read_message(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        let n = (&mut self.rd)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(VmmError::QmpIo)?;
        if n == 0 {
            return Err(VmmError::QmpIo(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Qmp {
            command: "read".into(),
            message: format!("unparseable reply: {e}"),
        })
    }

    /// Runs `command` and returns its `return` value; events that arrive
    /// meanwhile are skipped.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(b'\n');
        self.wr.write_all(&bytes).await.map_err(VmmError::QmpIo)?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(VmmError::Qmp {
                    command: command.into(),
                    message: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                });
            }
        }
    }
}

impl Qmp {
    /// Waits for the next asynchronous event (`{"event": ..., "data": ...}`).
    pub async fn next_event(&mut self) -> Result<Value, VmmError> {
        loop {
            let msg = self.read_message().await?;
            if msg.get("event").is_some() {
                return Ok(msg);
            }
        }
    }
}
