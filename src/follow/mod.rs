//! Rotation-safe log followers: turn files that daemons append to into batches of complete
//! lines with checkpoints, losing no line and reading none twice across log rotation.
//!
//! # Shape (how a source plugs into the pipeline)
//! A *source* is anything that yields lines; each runs as its own task and sends [`Event`]s
//! into one bounded `tokio::sync::mpsc` channel shared by all sources. The consumer (the
//! agent) sees only:
//! - [`Event::Batch`]: a [`SourceId`], the [`Lines`] (bytes, not strings: invalid UTF-8 and
//!   NUL pass through; overlong lines arrive cut and flagged) and a [`Checkpoint`] naming the
//!   position just after the batch's last line. The agent persists the checkpoint *after*
//!   processing the batch and hands it back as [`StartAt::Checkpoint`] on the next start.
//! - [`Event::Error`]: a message for the log/status; the source keeps retrying.
//!
//! Files are the only source today ([`spawn_file`]). A journald source fits the same mould:
//! its own `spawn_journal` sending the same events, with a `Checkpoint::Journal { cursor }`
//! variant added to the `#[non_exhaustive]` [`Checkpoint`] — nothing downstream changes.
//! Each source publishes counters in a shared [`SourceStats`] (atomics, cheap to read).
//!
//! # Files
//! - [`FileTail`] holds the rotation logic for one path, synchronously, with the clock
//!   as a parameter (tests drive it step by step).
//! - [`spawn_file`] drives it: inotify (via `notify`) on the *directory* of the path (and of
//!   a symlink's target) wakes the task; a slow tick (default 1 s) is the safety net.
//!   Idle costs nothing: the task sleeps on the wake-up or the tick.
//! - Batches: everything readable now, up to `batch_lines`/`batch_bytes` per batch. A single
//!   appended line is sent as soon as inotify reports it; a burst arrives in a few large
//!   batches. The channel's bound gives backpressure: a slow consumer stops the reads.
//!
//! File reads happen on the async task: reads of regular files are served from the page
//! cache in microseconds and are bounded by the batch size, so they do not stall the runtime.
//!
//! # Known limits
//! - After a rotation by rename/delete/replace, lines of the new file wait up to
//!   `rotate_grace` (2 s) while the old file is drained: one checkpoint names one file.
//! - Lines a daemon writes to the old file after `rotate_grace` are not read.
//! - Two rotations before the follower looks once (milliseconds apart, or a stalled
//!   machine) can skip the generation in between; a held successor covers the common case.
//! - A checkpoint taken while the file was empty has no fingerprint: a copytruncate while
//!   the agent is stopped then loses the lines the copy took.
//! - A rotated file is searched for only next to the log (`name.*`), not in an `olddir`.

mod fingerprint;
mod lines;
mod tail;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use fingerprint::{FINGERPRINT_MAX, Fingerprint};
pub use lines::{Line, Lines};
pub use tail::FileTail;
pub use watch::{SourceHandle, spawn_file};

/// Which source a batch came from (an index chosen by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceId(pub usize);

/// Lines read from one source, in order, and where to resume after them. A batch may hold
/// no line at all: it then only moves the checkpoint (a file was opened or a rotation
/// finished), and the agent should persist it like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub source: SourceId,
    pub lines: Lines,
    /// Position just after the last line of this batch. `None` only if the source cannot
    /// name a position (never for files once a file has been opened).
    pub checkpoint: Option<Checkpoint>,
}

/// What a source sends to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Batch(Batch),
    /// Something went wrong (permission denied, I/O error, watch failure); the source goes on
    /// retrying on its tick. Each distinct error is sent once, not once per retry.
    Error {
        source: SourceId,
        error: String,
    },
}

/// A position in a file: which file (device, inode), how far, and what its first bytes were
/// (so a reused inode or a file truncated and rewritten is not mistaken for ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    pub dev: u64,
    pub ino: u64,
    /// Offset of the first byte not yet handed out (always at a line start).
    pub offset: u64,
    pub fingerprint: Fingerprint,
}

/// A resumable position of any source. Persist it with serde after processing a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Checkpoint {
    File(FilePosition),
}

/// Where a source starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartAt {
    /// At the end: old history is not re-read (the default). A file that does not exist
    /// yet is read from its beginning when it appears.
    #[default]
    End,
    /// From the beginning (`--from-start`).
    Beginning,
    /// Exactly after the last line handed out before: the same file → at the offset; the
    /// file rotated meanwhile → the rest of the rotated file, then the new one from 0; the
    /// file truncated meanwhile → the rest of its rotated copy if found, then from 0.
    Checkpoint(Checkpoint),
}

/// Tunables of a file source. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Longer lines are cut to this many bytes (flagged `truncated`); the rest is skipped.
    pub max_line: usize,
    /// A batch is sent once it holds this many lines…
    pub batch_lines: usize,
    /// …or this many bytes, or when the file has no more to read right now.
    pub batch_bytes: usize,
    /// After the path names another file (rotation), how long the old descriptor is still
    /// drained for lines the daemon writes before it reopens.
    pub rotate_grace: Duration,
    /// Safety-net re-check when no inotify event comes (missed events, watch not possible).
    pub tick: Duration,
    /// Re-check interval while a grace period runs (the old file may have any name then).
    pub grace_tick: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            max_line: 16 * 1024,
            batch_lines: 8192,
            batch_bytes: 1024 * 1024,
            rotate_grace: Duration::from_secs(2),
            tick: Duration::from_secs(1),
            grace_tick: Duration::from_millis(100),
        }
    }
}

/// Counters of one source, shared with status/metrics readers (relaxed atomics).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Lines handed out (including cut ones).
    pub lines: AtomicU64,
    /// Bytes read from files.
    pub bytes: AtomicU64,
    /// Lines cut at `max_line`.
    pub lines_cut: AtomicU64,
    /// Distinct errors met.
    pub errors: AtomicU64,
    /// Files finished after a rotation (rename, delete, replace, symlink change).
    pub rotations: AtomicU64,
    /// In-place truncations seen (copytruncate).
    pub truncations: AtomicU64,
    /// Identity of the file being read.
    pub dev: AtomicU64,
    pub ino: AtomicU64,
    /// Offset of the last checkpoint handed out.
    pub offset: AtomicU64,
}

/// A plain copy of [`SourceStats`] for status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub lines: u64,
    pub bytes: u64,
    pub lines_cut: u64,
    pub errors: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

impl SourceStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            lines: self.lines.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            lines_cut: self.lines_cut.load(Relaxed),
            errors: self.errors.load(Relaxed),
            rotations: self.rotations.load(Relaxed),
            truncations: self.truncations.load(Relaxed),
            dev: self.dev.load(Relaxed),
            ino: self.ino.load(Relaxed),
            offset: self.offset.load(Relaxed),
        }
    }
}

/// A shared handle on a source's counters.
pub type SharedStats = Arc<SourceStats>;

/// The directory to watch for `path` (its parent; `.` for a bare name).
fn parent_dir(path: &std::path::Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
