//! Kernel-layer benchmark, side by side with `nft` in the same run (median of 5 paired
//! runs). Needs root; runs in its own throwaway network namespace.
//!
//!     cargo bench --bench kernel
//!
//! Measures, with a 100,000-element `banned4` set (addresses from 198.18.0.0/15):
//! 1. adding 100,000 bans with timeouts in one transaction — fwagent vs `nft -f` of a file
//!    with the same elements;
//! 2. one ban into the full set (median of 100 single-element transactions);
//! 3. reading every element with its counter and every rule counter (`elements` +
//!    `counters`) vs a bare netlink dump of the same set (receive only, no parsing: the
//!    kernel's own cost) vs `nft list set`.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fwagent::nft::{Nft, Schema, Target, element, wire};

const N: u32 = 100_000;
const RUNS: usize = 5;
const SINGLE_BANS: usize = 100;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the kernel benchmark needs root (network namespace, nf_tables)");
        return;
    }
    let ns = Ns(format!("fwb-{}", std::process::id()));
    let ok = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip netns add failed");

    // The same elements as an nft script, for the reference runs.
    let addrs: Vec<Ipv4Addr> = (0..N).map(|i| Ipv4Addr::from(0xc612_0000 + i)).collect();
    let script = std::env::temp_dir().join(format!("fwb-{}.nft", std::process::id()));
    let mut text = String::from("add element inet fwagent banned4 {\n");
    for a in &addrs {
        text.push_str(&format!("{a} timeout 1h,\n"));
    }
    text.push_str("}\n");
    std::fs::write(&script, text).expect("write nft script");

    let path = format!("/run/netns/{}", ns.0);
    let script_path = script.to_str().unwrap().to_string();
    let ns_name = ns.0.clone();
    let results = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        run(&ns_name, &addrs, &script_path)
    })
    .join()
    .expect("bench thread");
    let _ = std::fs::remove_file(&script);
    report(&results);
}

#[derive(Default)]
struct Samples {
    ours_100k: Vec<Duration>,
    nft_100k: Vec<Duration>,
    one_ban: Vec<Duration>,
    ours_read: Vec<Duration>,
    bare_dump: Vec<Duration>,
    nft_list: Vec<Duration>,
}

fn run(ns: &str, addrs: &[Ipv4Addr], script: &str) -> Samples {
    let s = Schema::default();
    let mut nft = Nft::open().expect("open nft");
    eprintln!("kernel features: {}", nft.features());
    let bans: Vec<(Target, Option<Duration>)> = addrs
        .iter()
        .map(|a| (Target::V4(*a), Some(Duration::from_secs(3600))))
        .collect();
    let mut out = Samples::default();
    for run in 0..RUNS {
        // fwagent: 100k bans in one transaction into a fresh table.
        nft.teardown(&s.table).unwrap();
        nft.apply(&s, false).unwrap();
        let t = Instant::now();
        nft.ban(&s, &bans).unwrap();
        out.ours_100k.push(t.elapsed());

        // One ban at a time into the full set.
        let mut singles = Vec::with_capacity(SINGLE_BANS);
        for i in 0..SINGLE_BANS {
            let a = Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1);
            let t = Instant::now();
            nft.ban(&s, &[(Target::V4(a), Some(Duration::from_secs(60)))])
                .unwrap();
            singles.push(t.elapsed());
        }
        out.one_ban.push(median(singles));

        // Reading everything back: our parse vs the bare dump vs nft.
        let mut reader = nft.reader().unwrap();
        let t = Instant::now();
        let elems = reader.elements(&s).unwrap();
        let counters = reader.counters(&s).unwrap();
        out.ours_read.push(t.elapsed());
        assert!(elems.len() >= N as usize && !counters.is_empty());

        let t = Instant::now();
        let bytes = bare_dump(&s.table, "banned4");
        out.bare_dump.push(t.elapsed());
        assert!(bytes > 0);

        let t = Instant::now();
        let st = Command::new("ip")
            .args([
                "netns", "exec", ns, "nft", "list", "set", "inet", "fwagent", "banned4",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        out.nft_list.push(t.elapsed());
        assert!(st.success());

        // nft -f with the same 100k elements into a fresh table.
        nft.teardown(&s.table).unwrap();
        nft.apply(&s, false).unwrap();
        let t = Instant::now();
        let st = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", script])
            .status()
            .unwrap();
        out.nft_100k.push(t.elapsed());
        assert!(st.success());
        let count = reader.set_sizes(&s).unwrap()[0].count;
        assert_eq!(count, N, "nft -f loaded everything");
        eprintln!(
            "run {}: ours 100k {:?}, nft -f {:?}, one ban {:?}, read {:?}, bare {:?}, nft list {:?}",
            run + 1,
            out.ours_100k[run],
            out.nft_100k[run],
            out.one_ban[run],
            out.ours_read[run],
            out.bare_dump[run],
            out.nft_list[run]
        );
    }
    nft.teardown(&s.table).unwrap();
    out
}

/// Dumps one set and only receives the datagrams: the kernel's own cost of the read.
fn bare_dump(table: &str, set: &str) -> usize {
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
    sock.bind_auto().unwrap();
    let mut req = wire::MsgBuf::new();
    element::dump_elements(&mut req, 1, table, set);
    sock.send(req.as_bytes(), 0).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "recv");
        let n = n as usize;
        total += n;
        // The dump ends with NLMSG_DONE, alone or at the end of the last datagram.
        if wire::messages(&buf[..n]).any(|m| m.ty == wire::NLMSG_DONE || m.ty == wire::NLMSG_ERROR)
        {
            return total;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median of the per-run ratios a/b: each run's pair shares the machine's load of the
/// moment, so this is steadier than a ratio of medians on a busy machine.
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn report(s: &Samples) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let med = |v: &Vec<Duration>| ms(median(v.clone()));
    println!("fwagent kernel benchmark, median of {RUNS} paired runs, {N} elements");
    println!(
        "  add 100k bans:        fwagent {:8.1} ms   nft -f    {:8.1} ms   paired ratio {:.2}",
        med(&s.ours_100k),
        med(&s.nft_100k),
        paired_ratio(&s.ours_100k, &s.nft_100k)
    );
    println!(
        "  one ban (full set):   fwagent {:8.3} ms   (median of {SINGLE_BANS} per run)",
        med(&s.one_ban)
    );
    println!(
        "  read 100k + counters: fwagent {:8.1} ms   bare dump {:8.1} ms   paired ratio {:.2}",
        med(&s.ours_read),
        med(&s.bare_dump),
        paired_ratio(&s.ours_read, &s.bare_dump)
    );
    println!(
        "                        nft list set {:8.1} ms (paired ratio fwagent/nft {:.2})",
        med(&s.nft_list),
        paired_ratio(&s.ours_read, &s.nft_list)
    );
}
