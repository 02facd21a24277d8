//! The async driver of a file source: inotify wake-ups (through `notify`) on the watched
//! directories, a slow tick, the grace-period deadline, shutdown — and the bounded channel.
//!
//! Loop order: drain the `FileTail` batch by batch into the channel (waiting for room:
//! backpressure); then (re)sync the directory watches with where the path now resolves
//! (re-reading once if a watch was just placed); sleep until a relevant inotify event, the
//! tick, or the end of a grace period.
//!
//! One `notify` watcher (one inotify instance and its thread) per source: simple and
//! isolated; the default limit of 128 inotify instances per user bounds the number of
//! files one agent can follow.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use notify::event::EventKind;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::debug;

use super::{Event, FileTail, FollowOptions, SourceId, SourceStats, StartAt, parent_dir};

/// A running source: its counters and its task (ends on shutdown or when the receiver is
/// dropped).
#[derive(Debug)]
pub struct SourceHandle {
    pub stats: Arc<SourceStats>,
    pub task: JoinHandle<()>,
}

/// Follows `path` like `tail -F`, sending batches on `tx` until `shutdown` completes or the
/// receiver is gone. Must be called within a tokio runtime.
pub fn spawn_file(
    id: SourceId,
    path: PathBuf,
    start: StartAt,
    opts: FollowOptions,
    tx: mpsc::Sender<Event>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> SourceHandle {
    let stats = Arc::new(SourceStats::default());
    let tail = FileTail::new(id, path, start, opts.clone(), stats.clone());
    let task = tokio::spawn(run(tail, opts, tx, shutdown));
    SourceHandle { stats, task }
}

/// What the notify callback wakes us for.
#[derive(Default)]
struct Filter {
    /// Full paths of interest (the followed path, its symlink target), as notify reports
    /// them (watched directory joined with the entry name).
    files: Vec<PathBuf>,
    /// The watched directories themselves (removed or moved: re-place the watch).
    dirs: Vec<PathBuf>,
    /// During a grace period the old file has some other name: any event counts.
    any: bool,
}

/// The inotify watches of one source.
struct DirWatch {
    watcher: Option<RecommendedWatcher>,
    /// Watched directories with the (dev, inode) they had when the watch was placed.
    dirs: Vec<(PathBuf, (u64, u64))>,
    filter: Arc<Mutex<Filter>>,
    last_error: Option<String>,
    /// A watch was placed by the last `sync`.
    placed: bool,
}

impl DirWatch {
    fn new(wake: Arc<Notify>) -> (Self, Option<String>) {
        let filter = Arc::new(Mutex::new(Filter::default()));
        let f = filter.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let ev = match res {
                Ok(ev) => ev,
                // An error from the watcher (e.g. queue overflow): re-check to be safe.
                Err(_) => return wake.notify_one(),
            };
            // Our own opens and reads show up as access events: never wake on them, or each
            // poll would wake the next one.
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let relevant = ev.need_rescan() || {
                let f = f.lock().unwrap_or_else(|p| p.into_inner());
                f.any
                    || ev
                        .paths
                        .iter()
                        .any(|p| f.files.contains(p) || f.dirs.contains(p))
            };
            if relevant {
                wake.notify_one();
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => (
                Self {
                    watcher: Some(w),
                    dirs: Vec::new(),
                    filter,
                    last_error: None,
                    placed: false,
                },
                None,
            ),
            Err(e) => (
                Self {
                    watcher: None,
                    dirs: Vec::new(),
                    filter,
                    last_error: None,
                    placed: false,
                },
                Some(format!("starting inotify (falling back to the tick): {e}")),
            ),
        }
    }

    /// Watches the directories of `paths` (and only those); returns a new error, if any.
    fn sync(&mut self, paths: &[PathBuf], any: bool) -> Option<String> {
        let want: Vec<PathBuf> = {
            let mut v: Vec<PathBuf> = paths.iter().map(|p| parent_dir(p)).collect();
            v.dedup();
            v
        };
        {
            let mut f = self.filter.lock().unwrap_or_else(|p| p.into_inner());
            f.files = paths.to_vec();
            f.dirs = want.clone();
            f.any = any;
        }
        let w = self.watcher.as_mut()?;
        let mut err = None;
        // Drop watches we no longer need, and those whose directory was removed or
        // replaced (the kernel dropped that watch; it must be placed on the new one).
        self.dirs.retain(|(d, id)| {
            if want.contains(d) && dir_id(d) == Some(*id) {
                return true;
            }
            let _ = w.unwatch(d);
            false
        });
        for d in want {
            if self.dirs.iter().any(|(x, _)| *x == d) {
                continue;
            }
            let Some(id) = dir_id(&d) else {
                // A missing directory is retried on the tick; not worth an error event.
                continue;
            };
            match w.watch(&d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    debug!(dir = %d.display(), "watching");
                    self.dirs.push((d, id));
                    self.placed = true;
                }
                Err(e) => err = Some(format!("watching {}: {e}", d.display())),
            }
        }
        if err.is_some() && err == self.last_error {
            return None;
        }
        if err.is_some() {
            self.last_error = err.clone();
        }
        err
    }
}

fn dir_id(d: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(d)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

async fn run(
    mut tail: FileTail,
    opts: FollowOptions,
    tx: mpsc::Sender<Event>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let id = tail.id();
    let wake = Arc::new(Notify::new());
    let (mut watch, err) = DirWatch::new(wake.clone());
    tokio::pin!(shutdown);
    let mut errors: Vec<String> = err.into_iter().collect();
    loop {
        // Drain everything readable now, one batch at a time.
        loop {
            let batch = tail.next_batch(Instant::now());
            errors.extend(tail.take_errors());
            for error in errors.drain(..) {
                let ev = Event::Error { source: id, error };
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return,
                    r = tx.send(ev) => if r.is_err() { return },
                }
            }
            let Some(batch) = batch else { break };
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                r = tx.send(Event::Batch(batch)) => if r.is_err() { return },
            }
        }
        // Watches follow where the path resolves now. Done after the reads (off the
        // latency path); a newly placed watch means a change may have slipped in between
        // the last read and the watch, so read once more before sleeping.
        errors.extend(watch.sync(&tail.watch_paths(), tail.in_grace()));
        if std::mem::take(&mut watch.placed) || !errors.is_empty() {
            continue;
        }
        // Sleep until something may have changed.
        let now = Instant::now();
        let mut deadline = now + opts.tick;
        if tail.in_grace() {
            deadline = deadline.min(now + opts.grace_tick);
        }
        if let Some(d) = tail.grace_deadline() {
            deadline = deadline.min(d);
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}
