//! Cost of the state store, side by side with the floor of the alternative design.
//!
//! Run: `cargo bench --bench state` (release build; data in `$FWAGENT_BENCH_DIR` or the temp
//! dir, which should be on the same disk as `/var/lib`).
//!
//! Measures, for the redb store:
//! - one-ban commit latency (ban + checkpoint, durable), 500 commits: median / p99 / max;
//! - a 100,000-ban burst as one commit;
//! - open time with 100,000 bans, after a clean close and after `kill -9` of the writer;
//! - reading all 100,000 active bans back (what a reboot restore does);
//! - VmRSS of a fresh process: before opening, after opening the 100,000-ban store, and after
//!   a 100,000-ban burst commit (VmHWM = peak);
//!
//! and, as the reference, the floor of an append-only journal: one 80-byte `write` +
//! `fdatasync` per commit, and one 8 MB write + `fdatasync` for the burst.
//!
//! Child processes (this binary re-executed with `--child ...`) give each RSS figure a clean
//! process and let the "after kill -9" open be real.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fwagent::state::{Ban, Store, Txn};
use ipnet::IpNet;

const BURST: u32 = 100_000;
const SINGLES: usize = 500;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], Path::new(&args[i + 2]));
        return;
    }
    let base = std::env::var_os("FWAGENT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("fwagent-bench-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    println!("state store bench, data in {}", base.display());

    // 1. Single commits, redb and the journal floor interleaved so both see the same disk
    //    weather (this machine's disk is shared with other jobs).
    let dir = base.join("single");
    let (store, _) = Store::open(&dir).unwrap();
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("journal"))
        .unwrap();
    let record = [0x5Au8; 80];
    let (mut redb_lat, mut journal_lat) = (Vec::new(), Vec::new());
    for i in 0..SINGLES as u32 {
        let mut txn = Txn::new();
        txn.put_ban(&ban(i));
        txn.set_checkpoint(Path::new("/var/log/exim4/mainlog"), &(i as u64 * 120))
            .unwrap();
        let t0 = Instant::now();
        store.apply(txn).unwrap();
        redb_lat.push(t0.elapsed());
        let t0 = Instant::now();
        journal.write_all(&record).unwrap();
        journal.sync_data().unwrap();
        journal_lat.push(t0.elapsed());
    }
    drop(store);
    report("redb: one ban + checkpoint, durable commit", &mut redb_lat);
    report(
        "journal floor: 80-byte append + fdatasync",
        &mut journal_lat,
    );

    // 2. The burst: 100,000 bans in one commit, in a child to also get its peak RSS.
    let big = base.join("big");
    let out = run_child("burst", &big);
    print!("{out}");
    let t0 = Instant::now();
    let mut f = File::create(base.join("journal-burst")).unwrap();
    f.write_all(&vec![0x5Au8; 80 * BURST as usize]).unwrap();
    f.sync_data().unwrap();
    println!(
        "journal floor: 100,000 records (8 MB) write + fdatasync: {:.1} ms",
        ms(t0.elapsed())
    );
    println!(
        "file size with 100,000 bans: {:.1} MB",
        std::fs::metadata(big.join(fwagent::state::FILE_NAME))
            .unwrap()
            .len() as f64
            / 1e6
    );

    // 3. Open after a clean close, and after kill -9 of a process that had it open.
    print!("{}", run_child("open", &big));
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--child", "hold"])
        .arg(&big)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "holding", "holder did not start");
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    print!("after kill -9 — {}", run_child("open", &big));

    // 4. Idle: a small store (the 500 bans of step 1), and this binary without the store.
    print!("small store — {}", run_child("open", &dir));
    print!("{}", run_child("baseline", &big));
    let _ = std::fs::remove_dir_all(&base);
}

fn run_child(what: &str, dir: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", what])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs in a fresh process; prints its figures.
fn child(what: &str, dir: &Path) {
    let rss0 = rss_kib("VmRSS");
    match what {
        "baseline" => println!("baseline process: VmRSS {rss0} KiB"),
        "burst" => {
            let (store, _) = Store::open(dir).unwrap();
            let t0 = Instant::now();
            let mut txn = Txn::new();
            for i in 0..BURST {
                txn.put_ban(&ban(i));
            }
            let build = t0.elapsed();
            let t1 = Instant::now();
            store.apply(txn).unwrap();
            let commit = t1.elapsed();
            println!(
                "redb: 100,000-ban burst: build Txn {:.1} ms, commit {:.1} ms",
                ms(build),
                ms(commit)
            );
            println!(
                "  RSS: start {rss0} KiB, after commit {} KiB, peak (VmHWM) {} KiB",
                rss_kib("VmRSS"),
                rss_kib("VmHWM")
            );
        }
        "open" => {
            let t0 = Instant::now();
            let (store, report) = Store::open(dir).unwrap();
            let open = t0.elapsed();
            let rss_open = rss_kib("VmRSS");
            // Streaming first, so its RSS is not inflated by the Vec freed below.
            let t3 = Instant::now();
            let mut streamed = 0;
            store.for_each_active_ban(now(), |_| streamed += 1).unwrap();
            let stream = t3.elapsed();
            let rss_stream = rss_kib("VmRSS");
            let t1 = Instant::now();
            let bans = store.active_bans(now()).unwrap();
            let read = t1.elapsed();
            let rss_read = rss_kib("VmRSS");
            let n = bans.len();
            drop(bans);
            let t2 = Instant::now();
            for i in (0..BURST).step_by(97) {
                store.ban(target(i)).unwrap();
            }
            let lookups = (BURST as usize).div_ceil(97);
            let point = t2.elapsed() / lookups as u32;
            println!(
                "redb: open with {} bans ({:?}): {:.1} ms; active_bans() -> {n} in {:.1} ms; point lookup {:.1} µs",
                report.bans,
                report.outcome,
                ms(open),
                ms(read),
                point.as_secs_f64() * 1e6
            );
            println!(
                "  RSS: start {rss0} KiB, after open {rss_open} KiB, holding Vec<Ban> of {n} {rss_read} KiB, peak {} KiB",
                rss_kib("VmHWM")
            );
            println!(
                "  for_each_active_ban: {streamed} in {:.1} ms, RSS after it {rss_stream} KiB",
                ms(stream)
            );
        }
        "hold" => {
            // Open, commit, then wait to be killed with the file open.
            let (store, _) = Store::open(dir).unwrap();
            let mut txn = Txn::new();
            txn.put_ban(&ban(BURST + 1));
            store.apply(txn).unwrap();
            println!("holding");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child {other}"),
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn target(i: u32) -> IpNet {
    IpNet::from(IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i))) // 198.18.0.0/15
}

fn ban(i: u32) -> Ban {
    Ban {
        target: target(i),
        rule: "exim-ratelimit".into(),
        banned_at: now(),
        expires_at: Some(now() + Duration::from_secs(86_400)),
        hits: 3,
        times_banned: 1,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, lat: &mut [Duration]) {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        lat.len(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(lat[lat.len() - 1])
    );
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}
