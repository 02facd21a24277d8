//! The persistent store under the state dir (default `/var/lib/fwagent/state.redb`): active
//! bans, per-target offence history for escalation, and follower checkpoints.
//!
//! # Choice: redb
//!
//! One embedded [`redb`] database file (pure Rust, ACID, copy-on-write B-trees, checksummed
//! pages, one `fsync` per commit). A [`Txn`] bundles everything a burst changes, so one burst is
//! one commit; when [`Store::apply`] returns `Ok`, the commit is on disk and survives `kill -9`
//! and power loss. An interrupted commit is simply not there after reopening (redb keeps two
//! commit slots and picks the newest valid one).
//!
//! Measured side by side with the floor of the alternative (an append-only journal: one
//! `write` + `fdatasync` per commit, interleaved with the redb commits so both see the same
//! disk), release build, `cargo bench --bench state`, on this machine's virtio disk shared
//! with other jobs (load average ~10); figures from four runs:
//!
//! | what                                  | redb store                  | journal floor       |
//! |---------------------------------------|-----------------------------|---------------------|
//! | one ban + checkpoint, durable: median | 0.54 / 0.68 / 4.0 / 5.5 ms  | 0.35 / 0.43 / 4.0 / 4.9 ms |
//! | same, p99                             | 12–16 ms                    | 11–14 ms            |
//! | 100,000 bans in one commit            | 260–390 ms (+35–57 ms Txn)  | 29–250 ms (8 MB)    |
//! | open with 100,000 bans, full check    | 40–80 ms; after kill -9 40–160 ms | (replay, not built) |
//! | stream 100,000 active bans            | 25–45 ms                    | —                   |
//! | VmRSS bare / 500 bans / 100,000 bans  | 2.1 / 3.0 / 7.3 MiB         | —                   |
//! | VmHWM during a 100,000-ban commit     | 16 MiB (5.4 MiB after)      | —                   |
//!
//! The disk flush dominates a single commit either way (a hand-written journal would save
//! 0.1–0.6 ms at the median and nothing at the tail); the burst costs redb more but stays well
//! under the 0.5 s burst budget and is off the ban path (below). redb brings crash recovery,
//! checksums, a lock against a second writer, and compaction that a journal would have to
//! re-earn in tests; its page cache is capped ([`CACHE_BYTES`]) so RSS does not grow with the
//! file. The file is ~90 bytes per ban (8.9 MB for 100,000).
//!
//! # Where the store sits in the ban path
//!
//! A commit waits for the disk (median 0.5–5 ms here, p99 12–16 ms, worse on a busy VPS), so it
//! must **not** sit between a log line and the kernel ban. The agent's order is: kernel write
//! first, then queue the change in a [`Txn`] with [`Committer::submit`] (never blocks); the
//! committer thread takes everything queued and commits it as one transaction
//! ([`Txn::merge`]), so a burst costs one commit. A crash between the two loses at most the
//! last few bans from the store, never from the kernel; on restart the agent adopts
//! kernel elements it does not know (as the issue requires), so nothing is added twice and
//! nothing is lost while the table persists (an adopted ban is `manual`: its rule, hits and
//! one history entry are lost). Only a reboot inside that window of milliseconds forgets
//! those bans. Checkpoints must go in the same commit as (or after) the bans their
//! lines produced, so a restart never skips lines whose bans were not stored.
//!
//! # Bad files are never fatal
//!
//! [`Store::open`] verifies the whole file. A file that is not a redb database, is truncated,
//! fails its checksums, or carries an unknown format version is moved aside
//! (`state.redb.corrupt-<UTC>`, or `.unsupported-<UTC>` for a newer format) with a
//! `tracing::error!` naming the path and cause, and a fresh store is created. If the state dir
//! itself cannot be written, the store runs in memory and says so in the [`OpenReport`]. The
//! one error returned is [`StateError::Locked`]: another process (a second agent) has the file
//! open, and two writers must never share it.

mod aside;
mod codec;
mod committer;

pub use committer::Committer;

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// File name of the database inside the state dir.
pub const FILE_NAME: &str = "state.redb";

/// The store format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// redb's page cache. The default (1 GiB) would let RSS grow with the file; 100,000 bans are
/// a ~10 MB file and the agent's hot data (history lookups) is small, so 4 MiB keeps the
/// process within its memory budget at the price of a disk read on a cold history lookup.
pub const CACHE_BYTES: usize = 4 << 20;

/// The rule name stored for bans made by hand (`fwagent ban`) or adopted from the kernel.
pub const MANUAL: &str = "manual";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bans");
const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
const CHECKPOINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("checkpoints");
const FORMAT_KEY: &str = "format";

/// One active ban as the agent records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// An address (`/32`, `/128`), an IPv6 prefix such as `2001:db8:1::/64`, or a CIDR.
    pub target: IpNet,
    /// The rule that banned it, or [`MANUAL`].
    pub rule: String,
    pub banned_at: SystemTime,
    /// `None` is permanent.
    pub expires_at: Option<SystemTime>,
    /// Matching lines that led to this ban.
    pub hits: u64,
    /// How many times this target has been banned, this ban included.
    pub times_banned: u32,
}

impl Ban {
    /// Whether the ban is still in force at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }

    /// Time left at `now`, `None` for a permanent ban, zero once expired. The kernel timeout
    /// to restore after a reboot.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

/// Everything one burst changes, committed atomically by [`Store::apply`]. Operations apply in
/// the order given, so where two touch the same key the later one wins, also across
/// [`Txn::merge`].
///
/// Stored as an operation log over one byte arena rather than a map of small allocations: a
/// 100,000-ban burst is two vectors (~11 MB) instead of 200,000 heap blocks, which matters
/// for the agent's memory budget (see `benches/state.rs`).
#[derive(Debug, Default, Clone)]
pub struct Txn {
    ops: Vec<Change>,
    /// Keys and encoded values, referenced by `ops`.
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Bans,
    History,
    Checkpoints,
}

#[derive(Debug, Clone)]
struct Change {
    table: Table,
    key: Range<usize>,
    /// `None` removes the key.
    value: Option<Range<usize>>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    fn push(&mut self, table: Table, key: &[u8], value: Option<&[u8]>) {
        let k = self.data.len()..self.data.len() + key.len();
        self.data.extend_from_slice(key);
        let value = value.map(|v| {
            let r = self.data.len()..self.data.len() + v.len();
            self.data.extend_from_slice(v);
            r
        });
        self.ops.push(Change {
            table,
            key: k,
            value,
        });
    }

    /// Records a new or refreshed ban (keyed by its target).
    pub fn put_ban(&mut self, ban: &Ban) -> &mut Txn {
        let key = codec::target_key(&ban.target);
        self.push(Table::Bans, &key, Some(&codec::encode_ban(ban)));
        self
    }

    /// Forgets the ban of `target` (unban or expiry); absent targets are fine.
    pub fn remove_ban(&mut self, target: IpNet) -> &mut Txn {
        self.push(Table::Bans, &codec::target_key(&target), None);
        self
    }

    /// Replaces the offence history of `key`. `value` is the detector's own type (stored as
    /// JSON); `last_offence` is its newest entry, which [`Store::prune`] compares with the
    /// history window.
    pub fn set_history<T: Serialize + ?Sized>(
        &mut self,
        key: IpNet,
        last_offence: SystemTime,
        value: &T,
    ) -> Result<&mut Txn, StateError> {
        let json = serde_json::to_vec(value).map_err(|source| StateError::Encode {
            what: format!("offence history of {key}"),
            source,
        })?;
        let record = codec::encode_history(last_offence, &json);
        self.push(Table::History, &codec::target_key(&key), Some(&record));
        Ok(self)
    }

    /// Forgets the offence history of `key` (`fwagent unban` does this).
    pub fn clear_history(&mut self, key: IpNet) -> &mut Txn {
        self.push(Table::History, &codec::target_key(&key), None);
        self
    }

    /// Replaces the follower checkpoint of `source` (the configured path). `value` is the
    /// follower's own type (dev, inode, offset, fingerprint), stored as JSON.
    pub fn set_checkpoint<T: Serialize + ?Sized>(
        &mut self,
        source: &Path,
        value: &T,
    ) -> Result<&mut Txn, StateError> {
        let json = serde_json::to_vec(value).map_err(|e| StateError::Encode {
            what: format!("checkpoint of {}", source.display()),
            source: e,
        })?;
        self.push(Table::Checkpoints, &codec::path_key(source), Some(&json));
        Ok(self)
    }

    /// Forgets the checkpoint of a source that is no longer configured.
    pub fn remove_checkpoint(&mut self, source: &Path) -> &mut Txn {
        self.push(Table::Checkpoints, &codec::path_key(source), None);
        self
    }

    /// Appends a later transaction to this one; `later` wins where both touch a key.
    pub fn merge(&mut self, later: Txn) {
        let shift = self.data.len();
        let moved = |r: Range<usize>| r.start + shift..r.end + shift;
        self.data.extend_from_slice(&later.data);
        self.ops.extend(later.ops.into_iter().map(|c| Change {
            table: c.table,
            key: moved(c.key),
            value: c.value.map(moved),
        }));
    }

    /// Number of operations (puts and removals) queued.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What [`Store::open`] found and did. Log it once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The database file, or `None` when the store fell back to memory.
    pub path: Option<PathBuf>,
    pub outcome: OpenOutcome,
    /// Entries found (zero for a fresh store).
    pub bans: u64,
    pub history: u64,
    pub checkpoints: u64,
    /// Time spent opening and verifying.
    pub elapsed: Duration,
}

/// How the store came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// An existing store was verified and opened.
    Opened,
    /// No store existed; a new one was created.
    Created,
    /// The old file was unusable and moved to `moved_to`; a new one was created.
    Replaced {
        moved_to: PathBuf,
        /// Why, e.g. `not a valid database: ...` or `format version 7 is newer than 1`.
        cause: String,
    },
    /// The state dir cannot be used; this store lives in memory and is lost on exit.
    InMemory { cause: String },
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub expired_bans: u64,
    pub old_history: u64,
}

/// A failure with the operation and the path it concerned.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state store {} is in use by another process (is another fwagent running?)",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("{op} state store {}: {source}", path.display())]
    Db {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("decoding {what} from state store {}: {source}", path.display())]
    Decode {
        what: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The open store. One writer: the agent owns it; everything else asks the agent.
pub struct Store {
    db: Database,
    /// For messages; `<memory>` when in memory.
    path: PathBuf,
    persistent: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("persistent", &self.persistent)
            .finish()
    }
}

/// Why an existing file could not be used as it is.
enum Unusable {
    Locked,
    /// Not ours, damaged, or unreadable: move aside as `corrupt`.
    Corrupt(String),
    /// A format this build does not read: move aside as `unsupported`, keep for a newer build.
    Unsupported(String),
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating `dir` with mode 0700 if needed.
    ///
    /// Never fails because of the file's contents: see the module doc. Returns
    /// [`StateError::Locked`] if another process holds the store.
    pub fn open(dir: &Path) -> Result<(Store, OpenReport), StateError> {
        Store::open_at(dir, SystemTime::now())
    }

    /// [`Store::open`] with the clock as a parameter (it only names moved-aside files).
    pub fn open_at(dir: &Path, now: SystemTime) -> Result<(Store, OpenReport), StateError> {
        let started = Instant::now();
        let path = dir.join(FILE_NAME);
        let (store, outcome) = match Store::open_or_replace(dir, &path, now)? {
            Ok(pair) => pair,
            Err(cause) => {
                tracing::error!(
                    path = %path.display(),
                    cause = %cause,
                    "state store unusable; keeping bans in memory only until restart"
                );
                (Store::in_memory()?, OpenOutcome::InMemory { cause })
            }
        };
        let (bans, history, checkpoints) = store.counts()?;
        let report = OpenReport {
            path: store.persistent.then(|| path.clone()),
            outcome,
            bans,
            history,
            checkpoints,
            elapsed: started.elapsed(),
        };
        Ok((store, report))
    }

    /// A store that lives in memory only (tests, `--dry-run`, or an unusable state dir).
    pub fn in_memory() -> Result<Store, StateError> {
        let path = PathBuf::from("<memory>");
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .or_state(&Op("creating", &path))?;
        let store = Store {
            db,
            path,
            persistent: false,
        };
        store.init_format()?;
        Ok(store)
    }

    /// The outer `Result` is the one fatal case (locked); the inner `Err` means "cannot use
    /// the disk at all" and carries the cause for the in-memory fallback.
    #[allow(clippy::type_complexity)]
    fn open_or_replace(
        dir: &Path,
        path: &Path,
        now: SystemTime,
    ) -> Result<Result<(Store, OpenOutcome), String>, StateError> {
        if let Err(e) = create_private_dir(dir) {
            return Ok(Err(format!("creating state dir {}: {e}", dir.display())));
        }
        let mut outcome = OpenOutcome::Created;
        if path.symlink_metadata().is_ok() {
            let (tag, cause) = match Store::open_existing(path) {
                Ok(store) => return Ok(Ok((store, OpenOutcome::Opened))),
                Err(Unusable::Locked) => {
                    return Err(StateError::Locked {
                        path: path.to_path_buf(),
                    });
                }
                Err(Unusable::Corrupt(c)) => ("corrupt", c),
                Err(Unusable::Unsupported(c)) => ("unsupported", c),
            };
            // Keep the bad file for inspection; a fresh store takes its place.
            let moved_to = match aside::move_aside(path, tag, now) {
                Ok(p) => p,
                Err(e) => {
                    return Ok(Err(format!("{cause}; moving it aside failed: {e}")));
                }
            };
            tracing::error!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                cause = %cause,
                "state store unusable; moved aside, starting with an empty store"
            );
            outcome = OpenOutcome::Replaced { moved_to, cause };
        }
        match Store::create_new(dir, path) {
            Ok(store) => Ok(Ok((store, outcome))),
            Err(cause) => Ok(Err(cause)),
        }
    }

    /// Opens an existing file with a full integrity check and checks our format version.
    fn open_existing(path: &Path) -> Result<Store, Unusable> {
        let opened = catch_unwind(AssertUnwindSafe(|| {
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .open(path)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch)) => {
                return Err(Unusable::Locked);
            }
            Ok(Err(DatabaseError::UpgradeRequired(v))) => {
                return Err(Unusable::Unsupported(format!(
                    "database file format {v} is too old for this build"
                )));
            }
            Ok(Err(e)) => return Err(Unusable::Corrupt(format!("not a valid database: {e}"))),
            // redb asserts on some impossible layouts in debug builds; a damaged file is
            // still only a damaged file.
            Err(_) => {
                return Err(Unusable::Corrupt(
                    "not a valid database (the reader gave up on its layout)".into(),
                ));
            }
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
            persistent: true,
        };
        match store.read_format() {
            Ok(Some(FORMAT_VERSION)) => {}
            Ok(Some(v)) if v > FORMAT_VERSION => {
                return Err(Unusable::Unsupported(format!(
                    "format version {v} is newer than this build's {FORMAT_VERSION}"
                )));
            }
            Ok(Some(v)) => {
                return Err(Unusable::Unsupported(format!(
                    "format version {v} is not one this build reads ({FORMAT_VERSION})"
                )));
            }
            Ok(None) => {
                return Err(Unusable::Corrupt("no format version recorded".into()));
            }
            Err(e) => return Err(Unusable::Corrupt(format!("{e}"))),
        }
        Ok(store)
    }

    fn create_new(dir: &Path, path: &Path) -> Result<Store, String> {
        // Create the file root-only first; redb initialises an empty file in place.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            persistent: true,
        };
        store.init_format().map_err(|e| e.to_string())?;
        // The file's directory entry must survive a crash as well as its contents.
        aside::sync_dir(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))?;
        Ok(store)
    }

    /// Writes the format version and creates every table, so readers never meet a missing one.
    fn init_format(&self) -> Result<(), StateError> {
        let op = Op("initialising", &self.path);
        let w = self.db.begin_write().or_state(&op)?;
        {
            let mut meta = w.open_table(META).or_state(&op)?;
            meta.insert(FORMAT_KEY, FORMAT_VERSION).or_state(&op)?;
            w.open_table(BANS).or_state(&op)?;
            w.open_table(HISTORY).or_state(&op)?;
            w.open_table(CHECKPOINTS).or_state(&op)?;
        }
        w.commit().or_state(&op)
    }

    fn read_format(&self) -> Result<Option<u64>, StateError> {
        let op = Op("reading format of", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let meta = match r.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(Err::<(), _>(e).or_state(&op).unwrap_err()),
        };
        Ok(meta.get(FORMAT_KEY).or_state(&op)?.map(|v| v.value()))
    }

    /// The database file, or `<memory>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether commits reach the disk (false after the in-memory fallback).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Commits `txn` atomically and durably: when this returns `Ok`, every change in it
    /// survives `kill -9` and power loss; on `Err`, none of it was applied.
    ///
    /// Takes `&self` so a store shared in an `Arc` can be read while a commit waits for the
    /// disk (redb runs readers beside the one writer); concurrent commits queue up in order.
    pub fn apply(&self, mut txn: Txn) -> Result<(), StateError> {
        self.commit(&mut txn)
    }

    /// [`Store::apply`] without giving up the transaction, so a failed commit can be retried.
    /// Sorts `txn` in place (which keeps its meaning).
    fn commit(&self, txn: &mut Txn) -> Result<(), StateError> {
        if txn.is_empty() {
            return Ok(());
        }
        let op = Op("committing to", &self.path);
        let Txn { ops, data } = txn;
        // Visit keys in order: B-tree inserts then touch each page once. The sort is stable,
        // so for equal keys the later operation still comes last and wins.
        ops.sort_by(|a, b| (a.table, &data[a.key.clone()]).cmp(&(b.table, &data[b.key.clone()])));
        let w = self.db.begin_write().or_state(&op)?;
        {
            let mut bans = w.open_table(BANS).or_state(&op)?;
            let mut history = w.open_table(HISTORY).or_state(&op)?;
            let mut checkpoints = w.open_table(CHECKPOINTS).or_state(&op)?;
            for o in ops.iter() {
                let table = match o.table {
                    Table::Bans => &mut bans,
                    Table::History => &mut history,
                    Table::Checkpoints => &mut checkpoints,
                };
                let key = &data[o.key.clone()];
                match &o.value {
                    Some(v) => table.insert(key, &data[v.clone()]).map(drop),
                    None => table.remove(key).map(drop),
                }
                .or_state(&op)?;
            }
        }
        w.commit().or_state(&op)
    }

    /// All bans still in force at `now`, in target order. Records this build cannot decode
    /// are logged and skipped. Holds every ban in memory at once (~120 bytes each); to restore
    /// 100,000 bans into the kernel prefer [`Store::for_each_active_ban`].
    pub fn active_bans(&self, now: SystemTime) -> Result<Vec<Ban>, StateError> {
        let mut out = Vec::new();
        self.for_each_active_ban(now, |ban| out.push(ban))?;
        Ok(out)
    }

    /// Calls `f` with each ban in force at `now`, in target order, without collecting them:
    /// the caller batches them into kernel transactions as it goes.
    pub fn for_each_active_ban(
        &self,
        now: SystemTime,
        mut f: impl FnMut(Ban),
    ) -> Result<(), StateError> {
        let op = Op("reading bans from", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let table = r.open_table(BANS).or_state(&op)?;
        for entry in table.iter().or_state(&op)? {
            let (k, v) = entry.or_state(&op)?;
            match self.decode_ban(k.value(), v.value()) {
                Some(ban) if ban.is_active(now) => f(ban),
                _ => {}
            }
        }
        Ok(())
    }

    /// The stored ban of exactly `target`, expired or not.
    pub fn ban(&self, target: IpNet) -> Result<Option<Ban>, StateError> {
        let op = Op("reading a ban from", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let table = r.open_table(BANS).or_state(&op)?;
        let key = codec::target_key(&target);
        let value = table.get(key.as_slice()).or_state(&op)?;
        Ok(value.and_then(|v| self.decode_ban(&key, v.value())))
    }

    /// The offence history of `key` and its last offence time, as stored by
    /// [`Txn::set_history`].
    pub fn history<T: DeserializeOwned>(
        &self,
        key: IpNet,
    ) -> Result<Option<(SystemTime, T)>, StateError> {
        let op = Op("reading history from", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let table = r.open_table(HISTORY).or_state(&op)?;
        let Some(v) = table
            .get(codec::target_key(&key).as_slice())
            .or_state(&op)?
        else {
            return Ok(None);
        };
        let Some((last, json)) = codec::decode_history(v.value()) else {
            tracing::error!(path = %self.path.display(), key = %key, "undecodable history record");
            return Ok(None);
        };
        let value = serde_json::from_slice(json).map_err(|source| StateError::Decode {
            what: format!("offence history of {key}"),
            path: self.path.clone(),
            source,
        })?;
        Ok(Some((codec::from_ms(last), value)))
    }

    /// Calls `f` with every stored offence history (key, last offence, value), to load the
    /// detector's escalation memory at start-up. An entry that does not decode as `T` is
    /// logged and skipped: a lost history only shortens one repeat offender's next ban.
    pub fn for_each_history<T: DeserializeOwned>(
        &self,
        mut f: impl FnMut(IpNet, SystemTime, T),
    ) -> Result<(), StateError> {
        let op = Op("reading history from", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let table = r.open_table(HISTORY).or_state(&op)?;
        for entry in table.iter().or_state(&op)? {
            let (k, v) = entry.or_state(&op)?;
            let decoded = codec::decode_target(k.value()).and_then(|key| {
                let (last, json) = codec::decode_history(v.value())?;
                match serde_json::from_slice(json) {
                    Ok(value) => Some((key, codec::from_ms(last), value)),
                    Err(e) => {
                        tracing::error!(path = %self.path.display(), key = %key, error = %e,
                            "skipping an undecodable offence history");
                        None
                    }
                }
            });
            match decoded {
                Some((key, last, value)) => f(key, last, value),
                None => {
                    tracing::error!(path = %self.path.display(), "skipping a bad history record")
                }
            }
        }
        Ok(())
    }

    /// The checkpoint of `source`, as stored by [`Txn::set_checkpoint`].
    pub fn checkpoint<T: DeserializeOwned>(&self, source: &Path) -> Result<Option<T>, StateError> {
        let op = Op("reading a checkpoint from", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let table = r.open_table(CHECKPOINTS).or_state(&op)?;
        let Some(v) = table
            .get(codec::path_key(source).as_slice())
            .or_state(&op)?
        else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StateError::Decode {
                what: format!("checkpoint of {}", source.display()),
                path: self.path.clone(),
                source: e,
            })
    }

    /// The paths that have a checkpoint (to drop those of sources no longer configured).
    pub fn checkpoint_sources(&self) -> Result<Vec<PathBuf>, StateError> {
        let op = Op("listing checkpoints in", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let table = r.open_table(CHECKPOINTS).or_state(&op)?;
        let mut out = Vec::new();
        for entry in table.iter().or_state(&op)? {
            out.push(codec::decode_path(entry.or_state(&op)?.0.value()));
        }
        Ok(out)
    }

    /// Removes bans expired at `now` and histories whose last offence is older than
    /// `history_window` (the config's `escalation.history`), in one commit.
    pub fn prune(
        &self,
        now: SystemTime,
        history_window: Duration,
    ) -> Result<PruneReport, StateError> {
        let op = Op("pruning", &self.path);
        let now_ms = codec::to_ms(now);
        let horizon = codec::to_ms(
            now.checked_sub(history_window)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let w = self.db.begin_write().or_state(&op)?;
        let mut report = PruneReport::default();
        {
            let mut bans = w.open_table(BANS).or_state(&op)?;
            // Undecodable records are dropped too: nothing could ever restore them.
            let removed = bans
                .extract_if(.., |k, v| {
                    self.decode_ban(k, v)
                        .is_none_or(|b| b.expires_at.is_some_and(|t| codec::to_ms(t) <= now_ms))
                })
                .or_state(&op)?;
            for entry in removed {
                entry.or_state(&op)?;
                report.expired_bans += 1;
            }
            let mut history = w.open_table(HISTORY).or_state(&op)?;
            let removed = history
                .extract_if(.., |_, v| {
                    codec::decode_history(v).is_none_or(|(last, _)| last < horizon)
                })
                .or_state(&op)?;
            for entry in removed {
                entry.or_state(&op)?;
                report.old_history += 1;
            }
        }
        if report == PruneReport::default() {
            w.abort().or_state(&op)?;
        } else {
            w.commit().or_state(&op)?;
        }
        Ok(report)
    }

    /// Gives the space of removed entries back to the file system. redb reuses freed pages on
    /// its own, so the file only needs this after a large shrink (a 100,000-ban wave that has
    /// expired); call it after [`Store::prune`] removed many entries, off the ban path.
    /// Returns the file size before and after.
    pub fn compact(&mut self) -> Result<(u64, u64), StateError> {
        let size = || std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let op = Op("compacting", &self.path);
        // Each call compacts a bounded amount; a few rounds reach the minimum.
        for _ in 0..8 {
            if !self
                .db
                .compact(redb::CompactionMode::Balanced)
                .or_state(&op)?
            {
                break;
            }
        }
        Ok((before, size()))
    }

    /// (bans, history entries, checkpoints) currently stored.
    pub fn counts(&self) -> Result<(u64, u64, u64), StateError> {
        let op = Op("counting entries in", &self.path);
        let r = self.db.begin_read().or_state(&op)?;
        let n = |t: redb::ReadOnlyTable<&[u8], &[u8]>| t.len().or_state(&op);
        Ok((
            n(r.open_table(BANS).or_state(&op)?)?,
            n(r.open_table(HISTORY).or_state(&op)?)?,
            n(r.open_table(CHECKPOINTS).or_state(&op)?)?,
        ))
    }

    fn decode_ban(&self, key: &[u8], value: &[u8]) -> Option<Ban> {
        let ban = codec::decode_target(key).and_then(|t| codec::decode_ban(t, value));
        if ban.is_none() {
            tracing::error!(path = %self.path.display(), "skipping an undecodable ban record");
        }
        ban
    }
}

/// An operation on the store file, to put in front of redb's errors.
struct Op<'a>(&'static str, &'a Path);

trait OrState<T> {
    fn or_state(self, op: &Op) -> Result<T, StateError>;
}

impl<T, E: Into<redb::Error>> OrState<T> for Result<T, E> {
    fn or_state(self, op: &Op) -> Result<T, StateError> {
        self.map_err(|e| StateError::Db {
            op: op.0,
            path: op.1.to_path_buf(),
            source: e.into(),
        })
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
