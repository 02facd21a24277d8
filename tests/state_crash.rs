//! `kill -9` at random moments loses no acknowledged commit and never leaves a store that
//! must be moved aside.
//!
//! The test binary re-executes itself as the writer: with `FWAGENT_STATE_CRASH_DIR` set, the
//! `crash_child` test opens the store and commits in a loop, printing `ACK <i>` after each
//! commit returns. The parent kills it with SIGKILL after a random delay (sometimes during the
//! open, sometimes inside a large commit), reopens the store and checks every acknowledged
//! commit, whole and only whole.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fwagent::state::{Ban, OpenOutcome, Store, Txn};
use ipnet::IpNet;

const DIR_ENV: &str = "FWAGENT_STATE_CRASH_DIR";
const START_ENV: &str = "FWAGENT_STATE_CRASH_START";
const ROUNDS: u32 = 20;
/// Every this many commits, one commit also carries a burst of bans.
const BURST_EVERY: u64 = 20;
const BURST: u64 = 2000;
const SOURCE: &str = "/var/log/exim4/mainlog";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The ban committed by commit `i` (from 198.18.0.0/15).
fn target(i: u64) -> IpNet {
    IpNet::from(IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i as u32)))
}

/// The bans of the burst carried by commit `i`.
fn burst_target(i: u64, j: u64) -> IpNet {
    let addr = Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, j as u16);
    IpNet::new(IpAddr::V6(addr), 128).unwrap()
}

fn ban(target: IpNet, i: u64) -> Ban {
    Ban {
        target,
        rule: "exim-ratelimit".into(),
        banned_at: t(1_800_000_000),
        expires_at: Some(t(1_800_086_400 + i)),
        hits: i,
        times_banned: 1,
    }
}

/// The writer. Does nothing unless started by the parent test.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let (store, _) = Store::open(Path::new(&dir)).unwrap();
    let mut out = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in start..start + 100_000 {
        if Instant::now() > deadline {
            break;
        }
        let mut txn = Txn::new();
        txn.put_ban(&ban(target(i), i));
        txn.set_history(target(i), t(1_800_000_000), &[i]).unwrap();
        txn.set_checkpoint(Path::new(SOURCE), &i).unwrap();
        if i >= 5 && i % 3 == 0 {
            // An unban rides along: it must be all-or-nothing with the rest.
            txn.remove_ban(target(i - 5));
        }
        if i % BURST_EVERY == 0 {
            for j in 0..BURST {
                txn.put_ban(&ban(burst_target(i, j), i));
            }
        }
        store.apply(txn).unwrap();
        writeln!(out, "ACK {i}").unwrap();
        out.flush().unwrap();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64: enough randomness for kill timing; the seed is printed to replay a failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill9_loses_no_acknowledged_commit() {
    let dir = TempDir(std::env::temp_dir().join(format!("fwagent-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let seed = std::env::var("FWAGENT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (FWAGENT_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    // Every commit acknowledged so far, over all rounds.
    let mut acked: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut killed_early = 0;

    for round in 0..ROUNDS {
        let delay = Duration::from_millis(rng.next() % 600);
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, &dir.0)
            .env(START_ENV, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // The harness prints `test crash_child ... ` without a newline first, so an
                // ACK may share a line with it.
                .filter_map(|l| {
                    let at = l.find("ACK ")?;
                    l[at + 4..].trim().parse::<u64>().ok()
                })
                .collect::<Vec<u64>>()
        });
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        acked.extend(&acks);

        // Reopen: the store must be the same store, not a replacement.
        let (store, report) = Store::open(&dir.0).unwrap();
        assert!(
            matches!(report.outcome, OpenOutcome::Opened | OpenOutcome::Created),
            "round {round}: {report:?}"
        );
        // Each commit sets the checkpoint to its own number: it names the last commit that
        // reached the disk. That is the last one known before (acknowledged in this round, or
        // on disk after the previous one), or the one after it if the kill came between its
        // commit and its ACK.
        let last = store.checkpoint::<u64>(Path::new(SOURCE)).unwrap();
        let known = acks.last().copied().max(next.checked_sub(1));
        match (last, known) {
            (None, None) => {}
            (Some(l), None) => assert_eq!(l, 0, "round {round}: commit {l} without ACK"),
            (None, Some(k)) => panic!("round {round}: commit {k} lost"),
            (Some(l), Some(k)) => assert!(
                l == k || l == k + 1,
                "round {round}: last commit on disk {l}, last known {k}; this round {acks:?}"
            ),
        }
        if let Some(last) = last {
            // Every commit up to `last` is there whole; none after it left a trace.
            for i in 0..=last {
                let removed = i + 5 <= last && (i + 5) % 3 == 0;
                let b = store.ban(target(i)).unwrap();
                if removed {
                    assert!(b.is_none(), "round {round}: unban in commit {} lost", i + 5);
                } else {
                    assert_eq!(b, Some(ban(target(i), i)), "round {round}: ban {i} lost");
                }
                let h = store.history::<Vec<u64>>(target(i)).unwrap();
                assert_eq!(
                    h.map(|(_, v)| v),
                    Some(vec![i]),
                    "round {round}: history {i}"
                );
                if i % BURST_EVERY == 0 {
                    for j in [0, BURST / 2, BURST - 1] {
                        assert!(
                            store.ban(burst_target(i, j)).unwrap().is_some(),
                            "round {round}: burst of commit {i} incomplete"
                        );
                    }
                }
            }
            assert!(store.ban(target(last + 1)).unwrap().is_none());
            assert!(
                store
                    .history::<Vec<u64>>(target(last + 1))
                    .unwrap()
                    .is_none()
            );
            next = last + 1;
        }
        if acks.is_empty() {
            killed_early += 1;
        }
        drop(store);
        eprintln!(
            "round {round}: killed after {delay:?}, {} commits acknowledged, {next} on disk",
            acks.len()
        );
    }
    assert!(
        acked.len() > 20,
        "too few commits acknowledged ({}) to mean anything",
        acked.len()
    );
    eprintln!(
        "{} rounds, {} commits acknowledged, {killed_early} kills before the first ACK",
        ROUNDS,
        acked.len()
    );
}
