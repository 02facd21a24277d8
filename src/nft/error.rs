//! Errors of the kernel layer. Each names the operation and the object it was done to, and
//! keeps the kernel's errno (and extended-ack text, when the kernel gives one) as the cause.

use std::fmt;
use std::sync::Arc;

use super::batch::{Failure, Op};

/// An errno from the kernel, displayed as its text without the `(os error N)` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_string();
        f.write_str(&text)?;
        if self.0 == libc::EPERM {
            // Without CAP_NET_ADMIN every nf_tables request fails EPERM; as root it means
            // that another process (the agent) owns the table.
            if unsafe { libc::geteuid() } != 0 {
                f.write_str(" (CAP_NET_ADMIN or root is needed)")?;
            } else {
                f.write_str(
                    " (the table is owned by another process, e.g. the running agent; if it \
                     runs with --state-dir DIR, pass the same --state-dir DIR)",
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Errno {}

/// Cloneable, so one kernel result can answer several merged requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NftError {
    /// The kernel refused an operation.
    #[error("{op}{}", ext.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: String,
        ext: Option<String>,
        #[source]
        errno: Errno,
    },
    /// Bans that did not fit in a full set: never silently dropped.
    #[error(
        "set inet {table} {set} is full ({count} of {size} elements used): {rejected} bans \
         not applied; raise firewall.set_size"
    )]
    SetFull {
        table: String,
        set: String,
        size: u32,
        count: u32,
        rejected: usize,
    },
    /// Socket-level failures (open, send, receive).
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{op}: no reply from the kernel within {secs} s")]
    Timeout { op: String, secs: u64 },
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("{0}")]
    Invalid(String),
    /// The thread owning the kernel socket has stopped (used by the agent's actor).
    #[error("the kernel actor has stopped")]
    Gone,
}

impl NftError {
    pub fn from_failure(f: Failure) -> NftError {
        NftError::Kernel {
            op: f.op.to_string(),
            ext: f.ext,
            errno: Errno(f.errno),
        }
    }

    pub fn kernel(op: impl fmt::Display, errno: i32, ext: Option<String>) -> NftError {
        NftError::Kernel {
            op: op.to_string(),
            ext,
            errno: Errno(errno),
        }
    }

    pub fn io(op: impl fmt::Display, source: std::io::Error) -> NftError {
        NftError::Io {
            op: op.to_string(),
            source: Arc::new(source),
        }
    }

    /// The errno behind this error, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(errno.0),
            NftError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the error means "no privilege".
    pub fn is_permission(&self) -> bool {
        self.errno() == Some(libc::EPERM)
    }
}

/// Operation label for timeouts on a batch.
pub fn op_label(op: Option<&Op>) -> String {
    op.map(ToString::to_string)
        .unwrap_or_else(|| Op::Batch.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_operation_object_and_cause() {
        let e = NftError::kernel(
            "adding 1000 elements to set inet fwagent banned4",
            libc::ENOSPC,
            None,
        );
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            chain,
            "adding 1000 elements to set inet fwagent banned4: No space left on device"
        );
    }
}
