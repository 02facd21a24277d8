//! The control socket: how the CLI talks to a running agent, so there is one writer.
//!
//! While `fwagent run` is up, `ban`, `unban`, `teardown` and `status` go through a root-only
//! Unix socket (`<run_dir>/control.sock`) instead of writing to the kernel themselves; the
//! agent's store and the kernel then never drift. The protocol is one JSON request line and
//! one JSON response line per connection — easy to debug with `socat`, easy to version.
//!
//! The client side is blocking (the CLI is synchronous); the server side is tokio.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// File name of the socket inside the run directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Largest request or response line accepted (a bulk ban list fits easily).
pub const MAX_LINE: usize = 64 << 20;

/// A request from the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Ban addresses or networks (as typed by the user). `seconds` None = configured ban time,
    /// Some(0) = permanent. `force` overrides the never-ban protections.
    Ban {
        targets: Vec<String>,
        seconds: Option<u64>,
        #[serde(default)]
        force: bool,
    },
    /// Lift bans and forget the addresses' escalation history.
    Unban { targets: Vec<String> },
    /// The status snapshot (kernel figures plus the agent's own).
    Status,
    /// Every ban with remaining time and counters.
    List,
    /// The `list` entries of just these bans (networks as the agent stores them, e.g.
    /// `198.51.100.7/32`); unknown ones are left out. Status joins its top offenders with it
    /// without fetching every ban.
    Bans { targets: Vec<String> },
    /// Remove our table and every ban, and stop enforcing until the agent restarts.
    Teardown,
}

/// The agent's answer. `data` carries the command's JSON result when `ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Response {
        Response {
            ok: true,
            message: message.into(),
            data,
        }
    }

    pub fn err(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
}

/// Why the CLI could not get an answer from an agent.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No agent listens: the caller should act on the kernel directly.
    #[error("no agent is running (no socket at {}; an agent started with --state-dir DIR listens in DIR: pass the same --state-dir)", .0.display())]
    NoAgent(PathBuf),
    #[error("talking to the agent at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {} sent an unreadable answer: {source}", path.display())]
    Protocol {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The socket path for a run directory.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// Sends one request to the agent listening at `path` and waits for its answer.
///
/// Returns [`ControlError::NoAgent`] when nothing listens there (no socket file, or a stale
/// one left by a killed agent), so the CLI can fall back to writing to the kernel.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoAgent(path.to_path_buf()));
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests always serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(io)?;
    serde_json::from_slice(&answer).map_err(|source| ControlError::Protocol {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let req = Request::Ban {
            targets: vec!["203.0.113.9".into()],
            seconds: Some(90),
            force: false,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"op":"ban","targets":["203.0.113.9"],"seconds":90,"force":false}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn no_socket_means_no_agent() {
        let dir = std::env::temp_dir().join(format!("fwagent-ctl-{}", std::process::id()));
        let err = call(
            &dir.join("control.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::NoAgent(_)), "{err}");
    }
}
