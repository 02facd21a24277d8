//! The persistent store seen from outside: what a restarted agent finds, what happens to
//! damaged files, expiry and pruning. Crash (kill -9) behaviour is in `state_crash.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fwagent::state::{Ban, FILE_NAME, MANUAL, OpenOutcome, StateError, Store, Txn};
use ipnet::IpNet;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

/// A directory of its own for each test, removed on drop (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fwagent-state-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ban(target: &str, rule: &str, at: u64, expires: Option<u64>) -> Ban {
    Ban {
        target: net(target),
        rule: rule.into(),
        banned_at: t(at),
        expires_at: expires.map(t),
        hits: 3,
        times_banned: 1,
    }
}

/// What the follower engineer might store; the store does not care.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    dev: u64,
    inode: u64,
    offset: u64,
    fingerprint: u64,
}

const NOW: u64 = 1_800_000_000;

#[test]
fn everything_committed_is_there_after_reopening() {
    let dir = TempDir::new("roundtrip");
    let bans = [
        ban("203.0.113.7/32", "exim-ratelimit", NOW, Some(NOW + 86_400)),
        ban("2001:db8:1::/64", "sshd", NOW, Some(NOW + 3600)),
        ban("198.51.100.0/24", MANUAL, NOW, None),
    ];
    let cp = Checkpoint {
        dev: 2049,
        inode: 1234,
        offset: 987_654,
        fingerprint: 0xdead_beef,
    };
    {
        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.outcome, OpenOutcome::Created);
        assert_eq!(report.path, Some(dir.path().join(FILE_NAME)));
        let mut txn = Txn::new();
        for b in &bans {
            txn.put_ban(b);
        }
        txn.set_history(net("203.0.113.7/32"), t(NOW), &vec![NOW - 7200, NOW])
            .unwrap();
        txn.set_checkpoint(Path::new("/var/log/exim4/mainlog"), &cp)
            .unwrap();
        store.apply(txn).unwrap();
    }
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.outcome, OpenOutcome::Opened);
    assert_eq!((report.bans, report.history, report.checkpoints), (3, 1, 1));
    let mut found = store.active_bans(t(NOW + 1)).unwrap();
    found.sort_by_key(|b| b.target.to_string());
    let mut expected = bans.to_vec();
    expected.sort_by_key(|b| b.target.to_string());
    assert_eq!(found, expected);
    assert_eq!(
        store.history::<Vec<u64>>(net("203.0.113.7/32")).unwrap(),
        Some((t(NOW), vec![NOW - 7200, NOW]))
    );
    assert_eq!(
        store.history::<Vec<u64>>(net("203.0.113.8/32")).unwrap(),
        None
    );
    assert_eq!(
        store
            .checkpoint::<Checkpoint>(Path::new("/var/log/exim4/mainlog"))
            .unwrap(),
        Some(cp)
    );
    assert_eq!(
        store.checkpoint_sources().unwrap(),
        vec![PathBuf::from("/var/log/exim4/mainlog")]
    );
    // Remaining time is what a reboot restores into the kernel.
    let b = store.ban(net("2001:db8:1::/64")).unwrap().unwrap();
    assert_eq!(b.remaining(t(NOW + 600)), Some(Duration::from_secs(3000)));
    assert_eq!(
        store
            .ban(net("198.51.100.0/24"))
            .unwrap()
            .unwrap()
            .remaining(t(NOW)),
        None
    );
}

#[test]
fn later_changes_in_a_merged_burst_win() {
    let dir = TempDir::new("merge");
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut first = Txn::new();
    first.put_ban(&ban("203.0.113.1/32", "r", NOW, Some(NOW + 60)));
    first.put_ban(&ban("203.0.113.2/32", "r", NOW, Some(NOW + 60)));
    let mut second = Txn::new();
    second.remove_ban(net("203.0.113.1/32"));
    let mut refreshed = ban("203.0.113.2/32", "r", NOW, Some(NOW + 120));
    refreshed.times_banned = 2;
    second.put_ban(&refreshed);
    first.merge(second);
    assert_eq!(first.len(), 4);
    store.apply(first).unwrap();
    assert_eq!(store.active_bans(t(NOW)).unwrap(), vec![refreshed.clone()]);
    // Remove then re-add in one burst: the re-add wins, whatever the key order.
    let mut txn = Txn::new();
    let back = ban("203.0.113.1/32", "r2", NOW, None);
    txn.remove_ban(net("203.0.113.1/32")).put_ban(&back);
    txn.put_ban(&ban("203.0.113.0/32", "r", NOW, None))
        .remove_ban(net("203.0.113.0/32"));
    store.apply(txn).unwrap();
    assert_eq!(store.active_bans(t(NOW)).unwrap(), vec![back, refreshed]);
    // Removing and clearing absent keys is not an error.
    let mut txn = Txn::new();
    txn.remove_ban(net("203.0.113.99/32"))
        .clear_history(net("203.0.113.99/32"))
        .remove_checkpoint(Path::new("/nope"));
    store.apply(txn).unwrap();
    store.apply(Txn::new()).unwrap();
}

#[test]
fn expired_bans_are_not_active_and_prune_removes_them_and_old_history() {
    let dir = TempDir::new("prune");
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut txn = Txn::new();
    txn.put_ban(&ban("203.0.113.1/32", "r", NOW - 100, Some(NOW - 1)))
        .put_ban(&ban("203.0.113.2/32", "r", NOW - 100, Some(NOW)))
        .put_ban(&ban("203.0.113.3/32", "r", NOW - 100, Some(NOW + 1)))
        .put_ban(&ban("2001:db8::/64", MANUAL, NOW - 100, None));
    let day = 86_400;
    txn.set_history(net("203.0.113.1/32"), t(NOW - 31 * day), &[1])
        .unwrap();
    txn.set_history(net("203.0.113.2/32"), t(NOW - 29 * day), &[2])
        .unwrap();
    store.apply(txn).unwrap();

    let active: Vec<String> = store
        .active_bans(t(NOW))
        .unwrap()
        .iter()
        .map(|b| b.target.to_string())
        .collect();
    assert_eq!(active, ["203.0.113.3/32", "2001:db8::/64"]);

    let report = store.prune(t(NOW), Duration::from_secs(30 * day)).unwrap();
    assert_eq!((report.expired_bans, report.old_history), (2, 1));
    assert_eq!(store.counts().unwrap(), (2, 1, 0));
    assert!(store.ban(net("203.0.113.1/32")).unwrap().is_none());
    assert!(
        store
            .history::<Vec<u32>>(net("203.0.113.1/32"))
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .history::<Vec<u32>>(net("203.0.113.2/32"))
            .unwrap()
            .is_some()
    );
    // Nothing left to prune: no commit, nothing removed; the permanent ban stays forever.
    let again = store.prune(t(NOW), Duration::from_secs(30 * day)).unwrap();
    assert_eq!((again.expired_bans, again.old_history), (0, 0));
    let far = store
        .prune(t(NOW + 400 * day), Duration::from_secs(30 * day))
        .unwrap();
    assert_eq!((far.expired_bans, far.old_history), (1, 1));
    assert_eq!(store.active_bans(t(NOW + 400 * day)).unwrap().len(), 1);
}

/// Writes `bytes` as the store file, opens, and checks the file was moved aside with a clear
/// cause and that a working empty store took its place.
fn assert_replaced(name: &str, bytes: &[u8], tag: &str, cause_has: &str) {
    let exact = !matches!(name, "newer" | "foreign");
    let dir = TempDir::new(name);
    fs::create_dir_all(dir.path()).unwrap();
    let file = dir.path().join(FILE_NAME);
    fs::write(&file, bytes).unwrap();
    let now = t(NOW);
    let (store, report) = Store::open_at(dir.path(), now).unwrap();
    let OpenOutcome::Replaced { moved_to, cause } = &report.outcome else {
        panic!("{name}: expected the file to be moved aside, got {report:?}");
    };
    assert!(
        cause.contains(cause_has),
        "{name}: cause {cause:?} lacks {cause_has:?}"
    );
    let expected = dir
        .path()
        .join(format!("{FILE_NAME}.{tag}-20270115T080000Z"));
    assert_eq!(moved_to, &expected, "{name}");
    // Damaged files are kept byte for byte. A valid database of another format was written to
    // by the integrity check of the open (a commit), so only its contents can be compared:
    // the `newer` case below does that.
    let kept = fs::read(moved_to).unwrap();
    if exact {
        assert!(kept == bytes, "{name}: old file not kept as is");
    } else {
        assert!(!kept.is_empty(), "{name}: old file not kept");
    }
    assert_eq!((report.bans, report.history, report.checkpoints), (0, 0, 0));
    assert!(store.is_persistent());
    // The fresh store works and persists.
    let mut txn = Txn::new();
    txn.put_ban(&ban("203.0.113.9/32", "r", NOW, None));
    store.apply(txn).unwrap();
    drop(store);
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.outcome, OpenOutcome::Opened, "{name}");
    assert_eq!(store.active_bans(now).unwrap().len(), 1);
}

/// A store with a few thousand bans, as bytes, to damage.
fn real_store_bytes(name: &str) -> Vec<u8> {
    let dir = TempDir::new(name);
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut txn = Txn::new();
    for i in 0..5000u32 {
        let ip = std::net::Ipv4Addr::from(0xC612_0000 | i); // 198.18.x.y
        txn.put_ban(&Ban {
            target: IpNet::from(std::net::IpAddr::V4(ip)),
            rule: "exim-ratelimit".into(),
            banned_at: t(NOW),
            expires_at: Some(t(NOW + 86_400)),
            hits: 3,
            times_banned: 1,
        });
    }
    store.apply(txn).unwrap();
    drop(store);
    fs::read(dir.path().join(FILE_NAME)).unwrap()
}

// 2027-01-15 08:00:00 UTC is NOW (1_800_000_000).
#[test]
fn garbage_file_is_moved_aside() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_replaced("garbage", &garbage, "corrupt", "not a valid database");
    assert_replaced(
        "text",
        b"[bans]\n203.0.113.7 = 1\n",
        "corrupt",
        "not a valid database",
    );
}

#[test]
fn zero_length_file_is_moved_aside() {
    assert_replaced("empty", b"", "corrupt", "not a valid database");
}

#[test]
fn truncated_file_is_moved_aside() {
    let bytes = real_store_bytes("trunc-src");
    assert!(bytes.len() > 8192, "store is {} bytes", bytes.len());
    assert_replaced(
        "trunc-half",
        &bytes[..bytes.len() / 2],
        "corrupt",
        "not a valid database",
    );
    assert_replaced(
        "trunc-head",
        &bytes[..100],
        "corrupt",
        "not a valid database",
    );
}

#[test]
fn flipped_bytes_in_data_pages_are_caught() {
    let mut bytes = real_store_bytes("flip-src");
    // Damage every data page past the header region; checksums must notice.
    for i in (8192..bytes.len()).step_by(512) {
        bytes[i] ^= 0x5A;
    }
    assert_replaced("flip", &bytes, "corrupt", "not a valid database");
}

#[test]
fn newer_or_missing_format_version_is_moved_aside_explicitly() {
    // A store written by a hypothetical newer fwagent: same database, format 2.
    let src = TempDir::new("newer-src");
    drop(Store::open(src.path()).unwrap());
    {
        let db = redb::Database::open(src.path().join(FILE_NAME)).unwrap();
        let w = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            w.open_table(meta).unwrap().insert("format", 2).unwrap();
        }
        w.commit().unwrap();
    }
    let bytes = fs::read(src.path().join(FILE_NAME)).unwrap();
    assert_replaced(
        "newer",
        &bytes,
        "unsupported",
        "format version 2 is newer than this build's 1",
    );
    // Kept for a newer build: still a database that says format 2.
    let dir = TempDir::new("newer-kept");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
    let (_, report) = Store::open_at(dir.path(), t(NOW)).unwrap();
    let OpenOutcome::Replaced { moved_to, .. } = report.outcome else {
        panic!("not replaced")
    };
    let db = redb::Database::open(moved_to).unwrap();
    let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let r = db.begin_read().unwrap();
    let table = r.open_table(meta).unwrap();
    assert_eq!(table.get("format").unwrap().unwrap().value(), 2);

    // A valid redb file that fwagent never wrote.
    let foreign = TempDir::new("foreign-src");
    fs::create_dir_all(foreign.path()).unwrap();
    {
        let db = redb::Database::create(foreign.path().join("x.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let other: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("other");
            w.open_table(other).unwrap().insert(1, 2).unwrap();
        }
        w.commit().unwrap();
    }
    let bytes = fs::read(foreign.path().join("x.redb")).unwrap();
    assert_replaced("foreign", &bytes, "corrupt", "no format version recorded");
}

#[test]
fn a_second_writer_is_refused_and_the_file_left_alone() {
    let dir = TempDir::new("locked");
    let (first, _) = Store::open(dir.path()).unwrap();
    let mut txn = Txn::new();
    txn.put_ban(&ban("203.0.113.5/32", "r", NOW, None));
    first.apply(txn).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another fwagent"), "{err}");
    // Nothing was moved aside; the first store still works.
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
    assert_eq!(first.active_bans(t(NOW)).unwrap().len(), 1);
}

#[test]
fn unusable_state_dir_falls_back_to_memory() {
    // A regular file where the directory should be: cannot create the dir, as root too.
    let dir = TempDir::new("notadir");
    fs::create_dir_all(dir.path()).unwrap();
    let blocker = dir.path().join("state");
    fs::write(&blocker, b"x").unwrap();
    let (store, report) = Store::open(&blocker).unwrap();
    let OpenOutcome::InMemory { cause } = &report.outcome else {
        panic!("expected in-memory fallback, got {report:?}");
    };
    assert!(cause.contains("creating state dir"), "{cause}");
    assert!(cause.contains(&blocker.display().to_string()), "{cause}");
    assert_eq!(report.path, None);
    assert!(!store.is_persistent());
    let mut txn = Txn::new();
    txn.put_ban(&ban("203.0.113.5/32", "r", NOW, None));
    store.apply(txn).unwrap();
    assert_eq!(store.active_bans(t(NOW)).unwrap().len(), 1);
    assert_eq!(fs::read(&blocker).unwrap(), b"x");
}

#[test]
fn state_dir_and_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("perm");
    let nested = dir.path().join("a/b");
    drop(Store::open(&nested).unwrap());
    let mode = fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "state dir mode {mode:o}");
    let file = fs::metadata(nested.join(FILE_NAME)).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
}

#[test]
fn undecodable_history_value_is_an_error_with_context() {
    let dir = TempDir::new("decode");
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut txn = Txn::new();
    txn.set_history(net("203.0.113.4/32"), t(NOW), "not a list")
        .unwrap();
    store.apply(txn).unwrap();
    let err = store
        .history::<Vec<u64>>(net("203.0.113.4/32"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("offence history of 203.0.113.4/32"), "{msg}");
    assert!(msg.contains(FILE_NAME), "{msg}");
}

#[test]
fn compaction_gives_space_back_after_a_wave_expires() {
    let dir = TempDir::new("compact");
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let mut txn = Txn::new();
    for i in 0..20_000u32 {
        let ip = std::net::Ipv4Addr::from(0xC612_0000 | i);
        txn.put_ban(&Ban {
            target: IpNet::from(std::net::IpAddr::V4(ip)),
            rule: "exim-ratelimit".into(),
            banned_at: t(NOW),
            expires_at: Some(t(NOW + 60)),
            hits: 3,
            times_banned: 1,
        });
    }
    store.apply(txn).unwrap();
    let mut keep = Txn::new();
    keep.put_ban(&ban("203.0.113.1/32", "r", NOW, None));
    store.apply(keep).unwrap();
    let pruned = store
        .prune(t(NOW + 61), Duration::from_secs(86_400))
        .unwrap();
    assert_eq!(pruned.expired_bans, 20_000);
    let (before, after) = store.compact().unwrap();
    assert!(
        after < before / 2,
        "file {before} -> {after} bytes after compaction"
    );
    drop(store);
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.outcome, OpenOutcome::Opened);
    assert_eq!(store.active_bans(t(NOW + 61)).unwrap().len(), 1);
}

#[test]
fn all_histories_load_at_start_and_bad_ones_are_skipped() {
    let dir = TempDir::new("histories");
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut txn = Txn::new();
    txn.set_history(net("203.0.113.1/32"), t(NOW), &vec![NOW * 1000])
        .unwrap();
    txn.set_history(net("2001:db8:5::/64"), t(NOW - 10), &vec![1u64, 2])
        .unwrap();
    txn.set_history(net("203.0.113.2/32"), t(NOW), "written by another version")
        .unwrap();
    store.apply(txn).unwrap();
    let mut seen = Vec::new();
    store
        .for_each_history(|key, last, value: Vec<u64>| seen.push((key.to_string(), last, value)))
        .unwrap();
    assert_eq!(
        seen,
        vec![
            ("203.0.113.1/32".to_string(), t(NOW), vec![NOW * 1000]),
            ("2001:db8:5::/64".to_string(), t(NOW - 10), vec![1, 2]),
        ]
    );
}

#[test]
fn store_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Store>();
    let dir = TempDir::new("threads");
    let (store, _) = Store::open(dir.path()).unwrap();
    let store = std::sync::Arc::new(store);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..50u32 {
                let mut txn = Txn::new();
                txn.put_ban(&ban(&format!("198.18.0.{i}/32"), "r", NOW, None));
                store.apply(txn).unwrap();
            }
        })
    };
    // Reads go on while commits wait for the disk; each sees a consistent count.
    let mut last = 0;
    while !writer.is_finished() {
        let n = store.active_bans(t(NOW)).unwrap().len();
        assert!(n >= last, "count went back from {last} to {n}");
        last = n;
    }
    writer.join().unwrap();
    assert_eq!(store.active_bans(t(NOW)).unwrap().len(), 50);
}

#[test]
fn committer_groups_a_burst_into_few_commits_and_flush_waits_for_disk() {
    use fwagent::state::Committer;
    let dir = TempDir::new("committer");
    let (store, _) = Store::open(dir.path()).unwrap();
    let store = std::sync::Arc::new(store);
    let committer = Committer::spawn(store.clone()).unwrap();
    for i in 0..1000u32 {
        let ip = std::net::Ipv4Addr::from(0xC612_0000 | i);
        let mut txn = Txn::new();
        txn.put_ban(&Ban {
            target: IpNet::from(std::net::IpAddr::V4(ip)),
            rule: "exim-ratelimit".into(),
            banned_at: t(NOW),
            expires_at: None,
            hits: 3,
            times_banned: 1,
        });
        committer.submit(txn);
    }
    committer.flush().unwrap();
    assert_eq!(store.active_bans(t(NOW)).unwrap().len(), 1000);
    let commits = committer.commits();
    eprintln!("1000 submissions: {commits} commits");
    assert!(
        (1..=500).contains(&commits),
        "1000 submissions took {commits} commits"
    );
    // Later submissions win over earlier ones for the same key, across commits too.
    let mut unban = Txn::new();
    unban.remove_ban(net("198.18.0.0/32"));
    committer.submit(unban);
    let mut again = Txn::new();
    again.put_ban(&ban("198.18.0.0/32", "manual", NOW, None));
    committer.submit(again);
    // Dropping the handle commits what is pending before the thread ends.
    let mut last = Txn::new();
    last.put_ban(&ban("203.0.113.200/32", "r", NOW, None));
    committer.submit(last);
    drop(committer);
    drop(store);
    let (store, _) = Store::open(dir.path()).unwrap();
    assert_eq!(store.active_bans(t(NOW)).unwrap().len(), 1001);
    assert_eq!(
        store.ban(net("198.18.0.0/32")).unwrap().unwrap().rule,
        "manual"
    );
}
