//! The agent's end of the control socket: accept root-only connections, read one request
//! line, hand it to the agent loop, write the answer back.
//!
//! The loop owns all state; this module only moves requests. Each connection gets a short
//! deadline so a stuck client cannot pin a task.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::{MAX_LINE, Request, Response};

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// How long one client may take to send its request and receive the answer.
const DEADLINE: Duration = Duration::from_secs(60);

/// Binds the socket at `path` (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating run directory {}", dir.display()))?;
    }
    // A socket file left by a killed agent would make bind fail with EADDRINUSE. Only remove
    // it when nothing answers there, so a second agent cannot steal a live agent's socket.
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "another fwagent is already running (its control socket {} answers)",
                path.display()
            ),
            Err(_) => std::fs::remove_file(path)
                .with_context(|| format!("removing stale control socket {}", path.display()))?,
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting control socket {} to root", path.display()))?;
    Ok(listener)
}

/// Accepts connections forever, forwarding requests to `calls`.
pub async fn serve(listener: UnixListener, path: PathBuf, calls: mpsc::Sender<Call>) {
    let me = effective_uid();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The file mode already keeps others out; the peer check is the second lock.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), "control socket: refused non-root peer");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot read peer credentials");
                continue;
            }
        }
        let calls = calls.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(DEADLINE, handle(stream, calls))
                .await
                .is_err()
            {
                tracing::warn!("control socket: client timed out");
            }
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    let mut line = Vec::new();
    let answer = match reader.read_until(b'\n', &mut line).await {
        Err(e) => Response::err(format!("reading request: {e}")),
        Ok(_) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::err(format!("unreadable request: {e}")),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    Response::err("the agent is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::err("the agent dropped the request"))
                }
            }
        },
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// Our effective uid: the owner of our own /proc entry (no libc call needed). If procfs is
/// unreadable, fall back to 0 so only root is let in.
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}
