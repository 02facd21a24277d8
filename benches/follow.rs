//! Follower benchmark: `cargo bench --bench follow` (release build).
//!
//! Measures, on the same input and side by side with references:
//! 1. bulk read of a 1,000,000-line Exim mainlog (`gen-logs.py exim -n 1000000 --seed 1`):
//!    `FileTail` alone, and `spawn_file` end to end through the channel — vs `wc -l`;
//! 2. a live burst of 100,000 appended lines: time to the last line, number of batches;
//! 3. append→delivery latency of single lines (one every 2 ms): fwagent's follower vs
//!    coreutils `tail -F` reading the same file (inotify too) through a pipe;
//! 4. CPU used by an idle follower over 5 s (all threads of this process).
//!
//! Benches may run other programs (references, the log generator); the product never does.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fwagent::follow::{Event, FileTail, FollowOptions, SourceId, SourceStats, StartAt, spawn_file};
use tokio::sync::{mpsc, oneshot};

const GEN: &str = "/work/shared/tools/gen-logs.py";

fn main() {
    let dir = std::env::temp_dir().join(format!("fwagent-follow-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let big = dir.join("exim-1m.log");
    generate(&big, 1_000_000);
    let size = fs::metadata(&big).unwrap().len();
    println!(
        "input: {} ({:.1} MiB)",
        big.display(),
        size as f64 / 1048576.0
    );
    bulk(&rt, &big, size);
    burst(&rt, &dir);
    latency(&rt, &dir);
    idle(&rt, &dir);
    let _ = fs::remove_dir_all(&dir);
}

/// The shared generator when present (same bytes as the other benchmarks), else
/// synthetic Exim-like lines.
fn generate(path: &Path, n: usize) {
    let ok = Command::new("python3")
        .args([GEN, "exim", "-n", &n.to_string(), "--seed", "1", "-o"])
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("(gen-logs.py unavailable: synthetic lines)");
        let mut f = std::io::BufWriter::new(File::create(path).unwrap());
        for i in 0..n {
            writeln!(f, "2026-12-03 10:00:00 1tXYZ-{i:08}-AB H=(x) [203.0.113.9] F=<a@b.example> rejected RCPT <c@d.example>: Rate limited: 203.0.113.9").unwrap();
        }
    }
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> (Duration, T)) -> (Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let r = f();
        if best.as_ref().is_none_or(|b| r.0 < b.0) {
            best = Some(r);
        }
    }
    best.unwrap()
}

fn bulk(rt: &tokio::runtime::Runtime, big: &Path, size: u64) {
    println!("\n== bulk read, 1,000,000 lines (best of 5; page cache warm) ==");
    let (d, (lines, batches)) = best_of(5, || {
        let mut t = FileTail::new(
            SourceId(0),
            big.to_path_buf(),
            StartAt::Beginning,
            FollowOptions::default(),
            Arc::new(SourceStats::default()),
        );
        let t0 = Instant::now();
        let (mut n, mut b) = (0usize, 0usize);
        while let Some(batch) = t.next_batch(Instant::now()) {
            n += batch.lines.len();
            b += 1;
        }
        (t0.elapsed(), (n, b))
    });
    report("FileTail::next_batch", d, lines, size);
    println!("  batches: {batches}");

    let (d, lines) = best_of(5, || {
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(16);
            let (stop, stopped) = oneshot::channel::<()>();
            let t0 = Instant::now();
            let h = spawn_file(
                SourceId(0),
                big.to_path_buf(),
                StartAt::Beginning,
                FollowOptions::default(),
                tx,
                async move {
                    let _ = stopped.await;
                },
            );
            let mut n = 0usize;
            while n < 1_000_000 {
                match rx.recv().await {
                    Some(Event::Batch(b)) => n += b.lines.len(),
                    Some(Event::Error { error, .. }) => panic!("{error}"),
                    None => break,
                }
            }
            let d = t0.elapsed();
            let _ = stop.send(());
            let _ = h.task.await;
            (d, n)
        })
    });
    report("spawn_file → channel (cap 16)", d, lines, size);

    let (d, out) = best_of(5, || {
        let t0 = Instant::now();
        let o = Command::new("wc").arg("-l").arg(big).output().unwrap();
        (
            t0.elapsed(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    });
    let n: usize = out.split_whitespace().next().unwrap().parse().unwrap();
    report("reference: wc -l (process incl.)", d, n, size);
}

fn report(what: &str, d: Duration, lines: usize, bytes: u64) {
    println!(
        "  {what:34} {:>8.1} ms  {:>6.2} M lines/s  {:>7.1} MiB/s  ({lines} lines)",
        d.as_secs_f64() * 1e3,
        lines as f64 / d.as_secs_f64() / 1e6,
        bytes as f64 / d.as_secs_f64() / 1048576.0
    );
}

fn burst(rt: &tokio::runtime::Runtime, dir: &Path) {
    println!("\n== live burst: 100,000 lines appended while following (StartAt::End) ==");
    let src = dir.join("burst-src.log");
    generate(&src, 100_000);
    let data = fs::read(&src).unwrap();
    let path = dir.join("burst.log");
    File::create(&path).unwrap();
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        let h = spawn_file(
            SourceId(0),
            path.clone(),
            StartAt::End,
            FollowOptions::default(),
            tx,
            async move {
                let _ = stopped.await;
            },
        );
        // Wait for the open (position-only batch).
        let _ = rx.recv().await;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let t0 = Instant::now();
        // Appended in 64 KiB writes, as a busy daemon's buffered writes would be.
        for chunk in data.chunks(64 * 1024) {
            f.write_all(chunk).unwrap();
        }
        let written = t0.elapsed();
        let (mut n, mut batches) = (0usize, 0usize);
        while n < 100_000 {
            if let Some(Event::Batch(b)) = rx.recv().await {
                n += b.lines.len();
                batches += 1;
            }
        }
        let d = t0.elapsed();
        println!(
            "  writes took {:.1} ms; last line delivered after {:.1} ms; {batches} batches",
            written.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3
        );
        let _ = stop.send(());
        let _ = h.task.await;
    });
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    format!(
        "median {:>7.0} µs  p90 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    )
}

const LAT_LINES: usize = 2000;

fn latency(rt: &tokio::runtime::Runtime, dir: &Path) {
    println!("\n== append→delivery latency, {LAT_LINES} single lines, one every 2 ms ==");
    // fwagent's follower.
    let path = dir.join("lat.log");
    File::create(&path).unwrap();
    let ours = rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        let h = spawn_file(
            SourceId(0),
            path.clone(),
            StartAt::End,
            FollowOptions::default(),
            tx,
            async move {
                let _ = stopped.await;
            },
        );
        let _ = rx.recv().await;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut lat = Vec::with_capacity(LAT_LINES);
        for i in 0..LAT_LINES {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let line =
                format!("2026-12-03 10:00:00 H=(x) [203.0.113.9] Rate limited: 203.0.113.9 #{i}\n");
            let t0 = Instant::now();
            f.write_all(line.as_bytes()).unwrap();
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("line delivered within 10 s");
                if let Some(Event::Batch(b)) = ev
                    && !b.lines.is_empty()
                {
                    break;
                }
            }
            lat.push(t0.elapsed());
        }
        let _ = stop.send(());
        let _ = h.task.await;
        lat
    });
    println!("  fwagent follow:   {}", percentiles(ours));

    // Reference: coreutils tail -F.
    let path = dir.join("lat-tail.log");
    File::create(&path).unwrap();
    // `-n +1`: lines written before tail is up are printed too, so the probe cannot be
    // missed. A reader thread timestamps each line; the main thread never blocks forever.
    let mut child = Command::new("tail")
        .args(["-n", "+1", "-F"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (seen, lines) = std::sync::mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        for l in out.lines() {
            if l.is_err() || seen.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    let wait = Duration::from_secs(10);
    f.write_all(b"probe\n").unwrap();
    let mut lat = Vec::with_capacity(LAT_LINES);
    if lines.recv_timeout(wait).is_ok() {
        for i in 0..LAT_LINES {
            std::thread::sleep(Duration::from_millis(2));
            let line =
                format!("2026-12-03 10:00:00 H=(x) [203.0.113.9] Rate limited: 203.0.113.9 #{i}\n");
            let t0 = Instant::now();
            f.write_all(line.as_bytes()).unwrap();
            match lines.recv_timeout(wait) {
                Ok(t) => lat.push(t.duration_since(t0)),
                Err(_) => break,
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if lat.len() == LAT_LINES {
        println!("  tail -F:          {}", percentiles(lat));
    } else {
        println!("  tail -F: did not deliver every line within 10 s (reference skipped)");
    }
}

/// CPU time (ns) used so far by all threads of this process.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for t in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p: PathBuf = t.path().join("schedstat");
        if let Ok(s) = fs::read_to_string(p) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn idle(rt: &tokio::runtime::Runtime, dir: &Path) {
    println!("\n== idle: 4 followed files, nothing written, 5 s ==");
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(16);
        let mut stops = Vec::new();
        let mut handles = Vec::new();
        for i in 0..4 {
            let p = dir.join(format!("idle{i}.log"));
            File::create(&p).unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            handles.push(spawn_file(
                SourceId(i),
                p,
                StartAt::End,
                FollowOptions::default(),
                tx.clone(),
                async move {
                    let _ = stopped.await;
                },
            ));
        }
        for _ in 0..4 {
            let _ = rx.recv().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c0 = cpu_ns();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let used = cpu_ns() - c0;
        println!(
            "  CPU used by the whole process: {:.2} ms over 5 s ({:.4} % of one core)",
            used as f64 / 1e6,
            used as f64 / 5e9 * 100.0
        );
        for s in stops {
            let _ = s.send(());
        }
        for h in handles {
            let _ = h.task.await;
        }
    });
}
