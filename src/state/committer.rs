//! Group commit off the ban path: a thread that owns the writing side of the [`Store`].
//!
//! The agent bans in the kernel first and then [`Committer::submit`]s the matching [`Txn`],
//! which never blocks. The thread wakes on the first submission, takes every transaction
//! queued meanwhile, merges them in order and commits once, so a burst of bans costs one
//! disk flush however many arrive while the previous flush runs. A failed commit (disk full,
//! I/O error) is logged and kept: it is retried with what arrives next, or after
//! [`RETRY_AFTER`], and [`Committer::flush`] reports it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Store, Txn};

/// How long a failed commit waits before the next try when nothing new arrives.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

enum Msg {
    Txn(Txn),
    /// Answered once everything submitted before it is committed (or the commit failed).
    Flush(mpsc::SyncSender<Result<(), String>>),
}

/// Handle to the committing thread. Dropping it commits what is pending and joins the thread.
pub struct Committer {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the thread. Reads can go on through other clones of `store` meanwhile.
    pub fn spawn(store: Arc<Store>) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let thread = std::thread::Builder::new()
            .name("fwagent-store".into())
            .spawn(move || run(&store, &rx, &counter))?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
            commits,
        })
    }

    /// Queues `txn` for the next commit. Never blocks.
    pub fn submit(&self, txn: Txn) {
        if txn.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            // The thread only ends when this handle is dropped, so a send cannot fail here
            // unless the thread panicked; then there is nothing left to commit with.
            if tx.send(Msg::Txn(txn)).is_err() {
                tracing::error!("state store thread is gone; change not stored");
            }
        }
    }

    /// Waits until everything submitted before this call is on disk. `Err` carries the
    /// failed commit's message (the changes stay queued and are retried).
    pub fn flush(&self) -> Result<(), String> {
        let (reply, answer) = mpsc::sync_channel(1);
        let Some(tx) = &self.tx else {
            return Err("state store committer closed".into());
        };
        tx.send(Msg::Flush(reply))
            .map_err(|_| "state store thread is gone".to_string())?;
        answer
            .recv()
            .unwrap_or_else(|_| Err("state store thread is gone".into()))
    }

    /// Number of commits made so far (a burst of submissions shares one).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel tells the thread to commit what is pending and stop.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(store: &Store, rx: &mpsc::Receiver<Msg>, commits: &AtomicU64) {
    let mut pending = Txn::new();
    let mut waiters: Vec<mpsc::SyncSender<Result<(), String>>> = Vec::new();
    let mut closing = false;
    loop {
        // Sleep until there is work; while a failed commit is pending, wake up to retry.
        let first = if pending.is_empty() {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY_AFTER)
        };
        let mut take = |msg: Msg| match msg {
            Msg::Txn(t) => pending.merge(t),
            Msg::Flush(w) => waiters.push(w),
        };
        match first {
            Ok(msg) => take(msg),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => closing = true,
        }
        // Everything queued while the last commit ran goes into this one.
        loop {
            match rx.try_recv() {
                Ok(msg) => take(msg),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        let result = if pending.is_empty() {
            Ok(())
        } else {
            match store.commit(&mut pending) {
                Ok(()) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    pending = Txn::new();
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(error = %e, queued = pending.len(), "state commit failed; will retry");
                    Err(e.to_string())
                }
            }
        };
        for w in waiters.drain(..) {
            let _ = w.send(result.clone());
        }
        if closing {
            if !pending.is_empty() {
                tracing::error!(
                    queued = pending.len(),
                    "state store closing with uncommitted changes"
                );
            }
            return;
        }
    }
}
