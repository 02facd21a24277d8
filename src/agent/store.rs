//! The task that owns the state store. A commit waits for the disk (an fsync, ~1–3 ms), so it
//! never sits between a log line and its kernel ban: the agent bans first, then queues the
//! change here. Transactions that queue up while a commit runs are merged into the next one,
//! so a burst costs one fsync. `flush` waits until everything queued so far is on disk.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::state::{Store, Txn};

enum Cmd {
    Commit(Txn),
    Flush(oneshot::Sender<()>),
    Prune(SystemTime, Duration),
}

/// A cloneable handle to the store task.
#[derive(Clone)]
pub struct StoreHandle {
    tx: std_mpsc::Sender<Cmd>,
}

impl StoreHandle {
    /// Moves `store` onto its own thread.
    pub fn start(store: Store) -> std::io::Result<StoreHandle> {
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("fwagent-store".into())
            .spawn(move || actor(store, rx))?;
        Ok(StoreHandle { tx })
    }

    /// Queues `txn` for the next commit (failures are logged by the task).
    pub fn commit(&self, txn: Txn) {
        if !txn.is_empty() && self.tx.send(Cmd::Commit(txn)).is_err() {
            tracing::error!("state store task has stopped; change not saved");
        }
    }

    /// Drops expired bans and histories older than `window` (after pending commits).
    pub fn prune(&self, now: SystemTime, window: Duration) {
        let _ = self.tx.send(Cmd::Prune(now, window));
    }

    /// Waits until everything queued before this call is committed (or has failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn actor(mut store: Store, rx: std_mpsc::Receiver<Cmd>) {
    while let Ok(first) = rx.recv() {
        let mut txn = Txn::new();
        let mut waiters = Vec::new();
        let mut prune = None;
        let mut next = Some(first);
        // Take everything already queued: one commit for the lot.
        while let Some(cmd) = next {
            match cmd {
                Cmd::Commit(t) => txn.merge(t),
                Cmd::Flush(w) => waiters.push(w),
                Cmd::Prune(now, window) => prune = Some((now, window)),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = store.apply(txn) {
            tracing::error!(error = %e, "saving state failed; bans stay in the kernel");
        }
        if let Some((now, window)) = prune {
            match store.prune(now, window) {
                Ok(r) => tracing::debug!(report = ?r, "state pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning state failed"),
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}
