//! `fwagent scan` side by side with the seed's shell pipeline, `grep -c` and (when installed)
//! `fail2ban-regex`, on the same generated Exim mainlog; and peak memory with a million
//! distinct offender addresses.
//!
//! Run (release build of the binary, one core per command):
//!
//! ```text
//! cargo bench --bench scan
//! FWAGENT_BENCH_DIR=/var/tmp/fwagent-bench FWAGENT_BENCH_RUNS=5 cargo bench --bench scan
//! FWAGENT_BENCH_F2B=0 cargo bench --bench scan      # skip fail2ban-regex (slow)
//! FWAGENT_BENCH_BIN=target/dist/fwagent cargo bench --bench scan   # the shipped build
//! ```
//!
//! Inputs, created on first run in `$FWAGENT_BENCH_DIR` (default `/var/tmp/fwagent-bench`):
//! - `exim-1m.log`: `../shared/tools/gen-logs.py exim -n 1000000 --seed 1 -o exim-1m.log`;
//! - `distinct-1m.log`: 1,000,000 `Rate limited` lines from 1,000,000 distinct sources
//!   (all of 198.18.0.0/15, then one address in each of 868,928 IPv6 /64s of 2001:db8::/32).
//!
//! Every command runs under `/usr/bin/time`; the table shows the best of N runs by wall time
//! with its CPU time (user + sys) and peak RSS. On a shared machine the CPU column is the fair
//! comparison: wall time includes waiting for a core.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Measure {
    wall: f64,
    cpu: f64,
    rss_kb: u64,
}

fn main() {
    let dir = PathBuf::from(
        std::env::var("FWAGENT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/fwagent-bench".into()),
    );
    let runs: usize = std::env::var("FWAGENT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let exim = dir.join("exim-1m.log");
    if !exim.exists() {
        generate_exim(&exim);
    }
    let distinct = dir.join("distinct-1m.log");
    if !distinct.exists() {
        generate_distinct(&distinct).expect("write distinct-1m.log");
    }
    // FWAGENT_BENCH_BIN=target/dist/fwagent measures another build (the shipped one).
    let bin_override = std::env::var("FWAGENT_BENCH_BIN").ok();
    let bin = bin_override
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_fwagent"));
    let e = exim.display().to_string();
    let d = distinct.display().to_string();
    let lines = 1_000_000f64;

    let mut cases: Vec<(String, String)> = vec![
        (
            "fwagent scan (all built-in rules)".into(),
            format!("{bin} scan --json {e} > /dev/null"),
        ),
        (
            "fwagent scan --rule exim-ratelimit".into(),
            format!("{bin} scan --json --rule exim-ratelimit {e} > /dev/null"),
        ),
        (
            "seed: grep | awk | sort | uniq -c".into(),
            format!("grep 'Rate limited' {e} | awk '{{print $NF}}' | sort | uniq -c > /dev/null"),
        ),
        (
            "grep -c 'Rate limited:' | cat".into(),
            format!("grep -c 'Rate limited:' {e} | cat > /dev/null"),
        ),
    ];
    let f2b = std::env::var("FWAGENT_BENCH_F2B").map_or(true, |v| v != "0");
    if f2b && Path::new("/usr/bin/fail2ban-regex").exists() {
        cases.push((
            "fail2ban-regex 'Rate limited: <HOST>$'".into(),
            format!("fail2ban-regex {e} 'Rate limited: <HOST>$' > /dev/null"),
        ));
    }

    println!(
        "input: {e} ({:.1} MB, 1,000,000 lines); best of {runs} runs",
        std::fs::metadata(&exim).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    println!();
    println!(
        "{:<40} {:>8} {:>8} {:>14} {:>14} {:>9}",
        "command", "wall s", "CPU s", "lines/s wall", "lines/s CPU", "RSS MB"
    );
    let mut grep_cpu = None;
    let mut fw_cpu = None;
    for (name, cmd) in &cases {
        // fail2ban-regex takes minutes: one run is enough.
        let n = if name.starts_with("fail2ban") {
            1
        } else {
            runs
        };
        let Some(m) = best(cmd, n) else {
            println!("{name:<40} failed");
            continue;
        };
        if name.starts_with("grep -c") {
            grep_cpu = Some(m.cpu);
        }
        if name.starts_with("fwagent scan (all") {
            fw_cpu = Some(m.cpu);
        }
        let rss = if name.starts_with("fwagent") || name.starts_with("fail2ban") {
            format!("{:.1}", m.rss_kb as f64 / 1024.0)
        } else {
            "-".into()
        };
        println!(
            "{:<40} {:>8.3} {:>8.3} {:>14.0} {:>14.0} {:>9}",
            name,
            m.wall,
            m.cpu,
            lines / m.wall,
            lines / m.cpu.max(1e-3),
            rss
        );
    }
    if let (Some(g), Some(f)) = (grep_cpu, fw_cpu) {
        println!();
        println!("fwagent scan / grep -c, CPU time: {:.2}x", f / g.max(1e-3));
    }
    println!();
    if let Some(m) = best(&format!("{bin} scan --json {d} > /dev/null"), 1) {
        println!(
            "distinct-1m.log (1,000,000 distinct sources): fwagent scan peak RSS {:.1} MB, {:.3} s wall, {:.3} s CPU",
            m.rss_kb as f64 / 1024.0,
            m.wall,
            m.cpu
        );
    }
}

/// Runs `cmd` under /usr/bin/time `n` times; returns the run with the best wall time.
fn best(cmd: &str, n: usize) -> Option<Measure> {
    let mut best: Option<Measure> = None;
    for _ in 0..n.max(1) {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "FWBENCH %e %U %S %M", "bash", "-c", cmd])
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("FWBENCH "))?;
        let v: Vec<f64> = line[8..]
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() != 4 || !out.status.success() {
            eprintln!("{cmd}: {err}");
            return None;
        }
        let m = Measure {
            wall: v[0],
            cpu: v[1] + v[2],
            rss_kb: v[3] as u64,
        };
        if best.as_ref().is_none_or(|b| m.wall < b.wall) {
            best = Some(m);
        }
    }
    best
}

fn generate_exim(out: &Path) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = [
        here.join("../shared/tools/gen-logs.py"),
        PathBuf::from("/work/shared/tools/gen-logs.py"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("gen-logs.py not found (../shared/tools)");
    eprintln!("generating {} ...", out.display());
    let status = Command::new("python3")
        .arg(&script)
        .args(["exim", "-n", "1000000", "--seed", "1", "-o"])
        .arg(out)
        .status()
        .expect("run gen-logs.py");
    assert!(status.success(), "gen-logs.py failed");
}

/// 1,000,000 rate-limit lines, each from a different source, 20 per second of log time.
fn generate_distinct(out: &Path) -> std::io::Result<()> {
    eprintln!("generating {} ...", out.display());
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let base = 1_714_521_600u64; // 2024-05-01 00:00:00 UTC
    for i in 0..1_000_000u64 {
        let addr = if i < 131_072 {
            let n = (198u32 << 24 | 18 << 16) + i as u32;
            std::net::Ipv4Addr::from(n).to_string()
        } else {
            let j = i - 131_072;
            format!("2001:db8:{:x}:{:x}::1", j >> 16, j & 0xffff)
        };
        let t = base + i / 20;
        let (h, m, s) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
        let day = 1 + (t - base) / 86_400;
        writeln!(
            w,
            "2024-05-{day:02} {h:02}:{m:02}:{s:02} H=[{addr}] rejected connection in \"connect\" ACL: Rate limited: {addr}"
        )?;
    }
    w.flush()
}
