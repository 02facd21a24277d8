//! Status read time for 100,000 bans, side by side with `nft -j list ruleset`.
//!
//! Run (root; creates and deletes its own network namespace):
//!
//! ```text
//! cargo bench --bench status            # 100,000 bans, 10 rounds
//! FWAGENT_BENCH_BANS=200000 cargo bench --bench status
//! ```
//!
//! What is timed, each in the namespace with `banned4` filled from 198.18.0.0/15 through the
//! kernel API (`Nft::ban`):
//! - `kernel read`: `status::kernel::read` — table flags, rule counters, set sizes, every
//!   element (the part that grows with the number of bans);
//! - `full snapshot`: the kernel read + assembling the `Status` + rendering the JSON, the
//!   table and the metrics (what `fwagent status --json` and a dashboard refresh cost);
//! - `nft -j list ruleset`: the reference, the nft binary dumping the same ruleset as JSON.
//!
//! The target (issue 5): reading status for 100,000 bans ≤ 0.6 s.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use fwagent::nft::{Nft, Schema, Target};
use fwagent::status::{self, AgentInput, KernelInput};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<24} min {:>8.1} ms   median {:>8.1} ms   max {:>8.1} ms   ({} rounds)",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Dumps one set's elements with the nft layer's own message builder and parser.
fn raw_dump(table: &str, set: &str) -> usize {
    use fwagent::nft::element::{dump_elements, parse_elements};
    use fwagent::nft::socket::Socket;
    use fwagent::nft::wire::MsgBuf;
    let mut sock = Socket::open().expect("socket");
    let seq = sock.seqs(1);
    let mut b = MsgBuf::new();
    dump_elements(&mut b, seq, table, set);
    let mut out = Vec::new();
    sock.dump(b.as_bytes(), seq, &|| "dump".to_string(), |m| {
        parse_elements(m, &mut out);
    })
    .map_err(|_| ())
    .expect("dump");
    out.len()
}

fn main() {
    // cargo passes `--bench`; nothing else is taken from the command line.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the status benchmark needs root (network namespace, nf_tables)");
        return;
    }
    let bans: u32 = std::env::var("FWAGENT_BENCH_BANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
        .min(131_072); // 198.18.0.0/15 holds 131,072 addresses
    let rounds = 10;
    let ns = Ns(format!("fwb-status-{}", std::process::id()));
    let ok = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip netns add {}", ns.0);
    // This thread (and only it) enters the namespace: every socket below opens there.
    let fd = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("open netns");
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());

    let schema = Schema::default();
    let mut nft = Nft::open().expect("open nf_tables");
    nft.apply(&schema, false).expect("apply");
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
    let targets: Vec<(Target, Option<Duration>)> = (0..bans)
        .map(|i| {
            (
                Target::V4((base + i).into()),
                Some(Duration::from_secs(3600)),
            )
        })
        .collect();
    let t = Instant::now();
    for chunk in targets.chunks(10_000) {
        nft.ban(&schema, chunk).expect("ban");
    }
    println!(
        "filled banned4 with {bans} addresses from 198.18.0.0/15 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let features = *nft.features();
    drop(nft);

    let view = status::kernel::read(&schema, features).expect("read");
    let n = view.sets.iter().find(|s| s.set == "banned4").unwrap().count;
    assert_eq!(n, u64::from(bans), "every ban is counted");

    // Every round times each variant once, in turn, so a busy machine slows them alike.
    let (mut read, mut full, mut layer, mut raw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut size = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(status::kernel::read(&schema, features).expect("read"));
        read.push(t.elapsed());

        let t = Instant::now();
        let v = status::kernel::read(&schema, features).expect("read");
        let k = KernelInput {
            view: Some(v),
            read_at: Some(SystemTime::now()),
            error: None,
        };
        let st = status::assemble(
            &schema,
            &k,
            AgentInput::Absent("bench".into()),
            SystemTime::now(),
            String::new(),
        );
        let json = serde_json::to_vec_pretty(&st).unwrap();
        let mut text = Vec::new();
        status::text::render(&mut text, &st).unwrap();
        let metrics = status::metrics::render(&st);
        size = json.len();
        full.push(t.elapsed());
        std::hint::black_box((json, text, metrics));

        // Where the time goes: the raw dump of the big set (kernel + parse into fixed-size
        // records), and the nft layer's element read that status used to build on.
        let t = Instant::now();
        std::hint::black_box(raw_dump(&schema.table, "banned4"));
        raw.push(t.elapsed());
        let mut nft = Nft::open_with(features).expect("open");
        let t = Instant::now();
        std::hint::black_box(nft.elements(&schema).expect("elements"));
        layer.push(t.elapsed());
    }
    let mut reference = Vec::new();
    for _ in 0..rounds.min(5) {
        let t = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "-j", "list", "ruleset"])
            .output()
            .expect("nft");
        reference.push(t.elapsed());
        assert!(out.status.success());
    }
    println!("status for {bans} bans (JSON {size} bytes):");
    stats("kernel read", read);
    stats("full snapshot", full);
    stats("raw dump of banned4", raw);
    stats("Nft::elements (all sets)", layer);
    stats("nft -j list ruleset", reference);
    println!("peak RSS of this process: {} KiB", rss_kib());
}
