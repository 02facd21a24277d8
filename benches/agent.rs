//! End-to-end benchmark of `fwagent run` (release build), side by side with sshguard and
//! fail2ban when they are installed. Needs root; every run lives in its own throwaway
//! network namespace (`fwb-agent-<pid>-<n>`, deleted on every exit path).
//!
//!     cargo bench --bench agent
//!     FWB_QUICK=1 cargo bench --bench agent     # one run per figure, fewer latency bans
//!     FWB_REFS=0 cargo bench --bench agent      # skip the references
//!     FWB_ONLY=idle,refs cargo bench --bench agent  # a subset: latency,burst,sustained,idle,refs
//!     FWB_BIN=/tmp/other/fwagent cargo bench --bench agent  # measure another build
//!
//! The agent is the real binary (`fwagent run --log FILE --state-dir DIR`) started with
//! `ip netns exec`; the bench appends to the followed file and watches the kernel:
//! 1. latency line → element in the set: a thread that entered the namespace listens to the
//!    nftables multicast group and timestamps each NEWSETELEM (no `nft` process polled);
//! 2. a 100,000-line burst (`gen-logs.py exim -n 100000 --seed 2`): time to the last
//!    expected ban and to the last line counted by the detector (control socket `status`);
//! 3. 50,000 offending lines/s for 10 s in 10 ms chunks: backlog each second, CPU;
//! 4. idle CPU ticks over 10 s, RSS after start-up, RSS with 100,000 bans (control socket).
//!
//! The references get the same treatment where it applies: the same followed file, the
//! same namespace set-up, the same multicast listener on their own nftables set.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use fwagent::control::{self, Request};
use fwagent::nft::wire;

const GEN: &str = "/work/shared/tools/gen-logs.py";
/// The release binary `cargo bench` built; `FWB_BIN=/path/to/fwagent` measures another
/// build (e.g. one made with other profile settings) with the same harness.
fn bin() -> String {
    std::env::var("FWB_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fwagent").to_string())
}
/// nfnetlink multicast group of nftables events.
const NFNLGRP_NFTABLES: u32 = 7;
/// NEWSETELEM attributes: the set name, the element list; in an element its key and flags.
const ATTR_LIST_TABLE: u16 = 1;
const ATTR_LIST_SET: u16 = 2;
const ATTR_LIST_ELEMENTS: u16 = 3;
const ATTR_ELEM_KEY: u16 = 1;
const ATTR_ELEM_FLAGS: u16 = 3;
const ATTR_DATA_VALUE: u16 = 1;
const ELEM_INTERVAL_END: u32 = 1;

static NS_COUNTER: AtomicU64 = AtomicU64::new(0);

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the agent benchmark needs root (network namespaces, nf_tables)");
        return;
    }
    let quick = std::env::var_os("FWB_QUICK").is_some();
    let refs = std::env::var("FWB_REFS").map_or(true, |v| v != "0");
    let runs = if quick { 1 } else { 3 };
    let work = TempDir::new("fwb-agent");
    println!("fwagent agent benchmark — {}", load());
    println!("binary: {}", bin());

    // FWB_ONLY=latency,burst,sustained,idle,refs runs a subset (all by default).
    let only = std::env::var("FWB_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let mut table = Table::default();
    if want("latency") {
        latency_ours(&work, runs, if quick { 100 } else { 150 }, &mut table);
    }
    if want("burst") {
        burst_ours(&work, runs, &mut table);
    }
    if want("sustained") {
        sustained_ours(&work, &mut table);
    }
    if want("idle") {
        idle_ours(&work, &mut table);
    }
    if refs && want("refs") {
        references(&work, quick, &mut table);
    }
    table.print();
}

// ---------------------------------------------------------------------------------------
// Plumbing: namespaces, processes, temp dirs, /proc
// ---------------------------------------------------------------------------------------

/// A throwaway network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!(
            "fwb-agent-{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed");
        // Loopback up, as on a real host (some tools look at local addresses).
        let _ = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status();
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create sub dir");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child started in its own process group; SIGTERM to the group on drop, SIGKILL after 5 s.
struct Proc(Child);

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        cmd.process_group(0);
        Proc(cmd.spawn().expect("spawn"))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pg = -(self.0.id() as i32);
        unsafe { libc::kill(pg, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                // The leader is gone; make sure the rest of its group is too.
                unsafe { libc::kill(pg, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(pg, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn load() -> String {
    let l = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let f: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load average {}", f.join(" "))
}

/// utime + stime of one process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ")": state(0) ppid(1) … utime(11) stime(12).
    n(11) + n(12)
}

/// Sum of cpu_ticks over a process group (a reference pipeline).
fn group_pids(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // pgrp is field 2 after ")".
        if f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// CPU of a process group, including the children its members have waited for (the `nft`
/// processes a reference spawns per ban end up in their parent's cutime/cstime).
fn group_cpu(pgid: u32) -> u64 {
    group_pids(pgid)
        .into_iter()
        .map(|p| cpu_ticks(p) + child_ticks(p))
        .sum()
}

fn child_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // cutime(13) cstime(14) after ")".
    n(13) + n(14)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// VmRSS with its parts: anonymous memory (heap, stacks) and file pages (mostly the
/// binary's own code, which depends on its size, not on what the agent does).
fn rss_parts(pid: u32) -> String {
    format!(
        "VmRSS {} KiB (anon {} KiB, file {} KiB; peak VmHWM {} KiB)",
        rss_kib(pid),
        status_kib(pid, "RssAnon:"),
        status_kib(pid, "RssFile:"),
        status_kib(pid, "VmHWM:")
    )
}

fn group_rss(pgid: u32) -> u64 {
    group_pids(pgid).into_iter().map(rss_kib).sum()
}

/// Voluntary + involuntary context switches of every thread: wake-ups while idle.
fn ctx_switches(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let s = fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    total += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    total
}

/// CPU time of every thread in nanoseconds (schedstat: exact, unlike the 10 ms ticks of
/// /proc/PID/stat, which charge a whole tick to whoever runs when the timer fires).
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let s = fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn clk_tck() -> u64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

// ---------------------------------------------------------------------------------------
// The kernel listener: NEWSETELEM events of one namespace, timestamped on arrival
// ---------------------------------------------------------------------------------------

/// One NEWSETELEM message: when it arrived, which table and set, the element keys.
struct Ev {
    at: Instant,
    table: String,
    set: String,
    keys: Vec<Vec<u8>>,
}

/// A thread inside the namespace that forwards every NEWSETELEM; stops on drop.
struct Watcher {
    rx: mpsc::Receiver<Ev>,
    stop: Arc<AtomicBool>,
    overflows: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(ns: &Ns) -> Watcher {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let overflows = Arc::new(AtomicU64::new(0));
        let path = format!("/run/netns/{}", ns.0);
        let (st, ov) = (stop.clone(), overflows.clone());
        let thread = std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let mut sock =
                netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
            sock.bind(&netlink_sys::SocketAddr::new(0, 0)).unwrap();
            sock.add_membership(NFNLGRP_NFTABLES).unwrap();
            force_rcvbuf(sock.as_raw_fd(), 64 << 20);
            // A receive timeout so the stop flag is seen within 100 ms.
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            let _ = ready_tx.send(());
            let mut buf = vec![0u8; 1 << 20];
            while !st.load(Ordering::Relaxed) {
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let at = Instant::now();
                if n < 0 {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                        ov.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                for m in wire::messages(&buf[..n as usize]) {
                    if m.nft_msg() != Some(wire::NFT_MSG_NEWSETELEM) {
                        continue;
                    }
                    if tx.send(parse_setelem(&m, at)).is_err() {
                        return;
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("watcher ready");
        Watcher {
            rx,
            stop,
            overflows,
            thread: Some(thread),
        }
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SO_RCVBUFFORCE (root): a burst of element events must not overflow the socket.
fn force_rcvbuf(fd: i32, bytes: i32) {
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            4,
        )
    };
}

fn parse_setelem(m: &wire::Msg<'_>, at: Instant) -> Ev {
    let mut ev = Ev {
        at,
        table: String::new(),
        set: String::new(),
        keys: Vec::new(),
    };
    for (ty, p) in m.attrs() {
        match ty {
            ATTR_LIST_TABLE => ev.table = wire::cstr(p).to_string(),
            ATTR_LIST_SET => ev.set = wire::cstr(p).to_string(),
            ATTR_LIST_ELEMENTS => {
                for (_, el) in wire::Attrs::new(p) {
                    let attrs = wire::Attrs::new(el);
                    let end = wire::find(attrs.clone(), ATTR_ELEM_FLAGS)
                        .and_then(wire::be_u32)
                        .is_some_and(|f| f & ELEM_INTERVAL_END != 0);
                    if end {
                        continue;
                    }
                    if let Some(k) = wire::find(attrs, ATTR_ELEM_KEY)
                        .and_then(|k| wire::find(wire::Attrs::new(k), ATTR_DATA_VALUE))
                    {
                        ev.keys.push(k.to_vec());
                    }
                }
            }
            _ => {}
        }
    }
    ev
}

fn key_of(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

// ---------------------------------------------------------------------------------------
// The agent under test
// ---------------------------------------------------------------------------------------

struct Agent {
    // Field order is drop order: the process before its watcher, both before the namespace.
    proc: Proc,
    watcher: Watcher,
    _ns: Ns,
    log: File,
    socket: PathBuf,
    dir: PathBuf,
}

impl Agent {
    fn start(work: &TempDir, tag: &str) -> Agent {
        let ns = Ns::new();
        let dir = work.sub(tag);
        let log_path = dir.join("mainlog");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create followed file");
        let state = dir.join("state");
        let watcher = Watcher::start(&ns);
        let err = File::create(dir.join("agent.log")).expect("agent log");
        let proc = Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", &ns.0, &bin(), "run", "--log"])
                .arg(&log_path)
                .arg("--state-dir")
                .arg(&state)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err),
        );
        let socket = control::socket_path(&state);
        let a = Agent {
            proc,
            watcher,
            _ns: ns,
            log,
            socket,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while a.status().is_none() {
            assert!(
                Instant::now() < deadline,
                "agent did not answer on its control socket; see {}",
                a.dir.join("agent.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        a
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs the agent: same pid.
        self.proc.pid()
    }

    fn status(&self) -> Option<serde_json::Value> {
        let r = control::call(&self.socket, &Request::Status, Duration::from_secs(5)).ok()?;
        r.ok.then_some(r.data)
    }

    /// Offending lines the detector has counted (processed, not merely read).
    fn hits(&self) -> u64 {
        self.status()
            .and_then(|s| s["rules"][0]["hits"].as_u64())
            .unwrap_or(0)
    }

    fn append(&mut self, bytes: &[u8]) {
        self.log.write_all(bytes).expect("append to followed file");
    }
}

fn exim_line(a: IpAddr) -> String {
    format!(
        "2026-12-03 10:00:00 H=(User) [{a}] F=<spam@user.invalid> rejected RCPT <info@example.org>: Rate limited: {a}\n"
    )
}

// ---------------------------------------------------------------------------------------
// 1. Latency
// ---------------------------------------------------------------------------------------

/// Times `n` bans: two lines per address, let them be processed (`settle`), then the third
/// line and the wait for its element. Returns the latencies (misses are counted apart).
#[allow(clippy::too_many_arguments)]
fn latency_loop(
    log: &mut File,
    watcher: &Watcher,
    n: usize,
    first: u32,
    line: &dyn Fn(IpAddr) -> String,
    mut settle: impl FnMut(usize),
    set_prefix: &str,
    timeout: Duration,
) -> (Vec<Duration>, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut missed = 0;
    for i in 0..n {
        let a = IpAddr::V4(Ipv4Addr::from(first + i as u32));
        let l = line(a);
        log.write_all(format!("{l}{l}").as_bytes()).unwrap();
        settle(i);
        watcher.drain();
        let t0 = Instant::now();
        log.write_all(l.as_bytes()).unwrap();
        let key = key_of(a);
        let deadline = t0 + timeout;
        let mut got = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match watcher.rx.recv_timeout(left) {
                Ok(ev) if ev.set.starts_with(set_prefix) && ev.keys.contains(&key) => {
                    got = Some(ev.at - t0);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match got {
            Some(d) => lat.push(d),
            None => missed += 1,
        }
    }
    (lat, missed)
}

fn latency_ours(work: &TempDir, runs: usize, n: usize, t: &mut Table) {
    println!("\n== 1. latency line → element in the kernel set ({n} bans per run, {runs} runs) ==");
    let mut best: Option<Stats> = None;
    for run in 0..runs {
        let agent = Agent::start(work, &format!("lat{run}"));
        // 198.19.x.y: inside 198.18.0.0/15, away from the generator's 198.18.0.x.
        let first = u32::from(Ipv4Addr::new(198, 19, run as u8 * 8, 1));
        let mut expect = 0u64;
        let socket = agent.socket.clone();
        let mut log = agent.log.try_clone().unwrap();
        let (lat, missed) = latency_loop(
            &mut log,
            &agent.watcher,
            n,
            first,
            &exim_line,
            |_| {
                // Wait (bounded) until the detector counted the two lines.
                expect += 2;
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    let h = control::call(&socket, &Request::Status, Duration::from_secs(2))
                        .ok()
                        .and_then(|r| r.data["rules"][0]["hits"].as_u64())
                        .unwrap_or(0);
                    if h >= expect {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                expect += 1;
            },
            "banned4",
            Duration::from_secs(2),
        );
        let bans = agent.status().and_then(|s| s["active_bans"].as_u64());
        let s = Stats::of(&lat, missed);
        println!(
            "  run {}: {}  (agent reports {} active bans; {})",
            run + 1,
            s.show(),
            bans.unwrap_or(0),
            load()
        );
        if best.as_ref().is_none_or(|b| s.median < b.median) {
            best = Some(s);
        }
    }
    let s = best.unwrap();
    t.row(
        "latency median (best run)",
        "fwagent",
        ms(s.median),
        "≤ 2 ms",
        s.median <= Duration::from_millis(2),
    );
    t.row("latency p90", "fwagent", ms(s.p90), "", true);
    t.row(
        "latency p99",
        "fwagent",
        ms(s.p99),
        "≤ 20 ms",
        s.p99 <= Duration::from_millis(20),
    );
    t.row("latency max", "fwagent", ms(s.max), "", true);
    if s.missed > 0 {
        t.row(
            "latency: bans missed (> 2 s)",
            "fwagent",
            s.missed.to_string(),
            "0",
            false,
        );
    }
}

struct Stats {
    n: usize,
    missed: usize,
    median: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    fn of(v: &[Duration], missed: usize) -> Stats {
        let mut v = v.to_vec();
        v.sort();
        let q = |p: f64| {
            if v.is_empty() {
                Duration::MAX
            } else {
                v[((v.len() - 1) as f64 * p).round() as usize]
            }
        };
        Stats {
            n: v.len(),
            missed,
            median: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        }
    }
    fn show(&self) -> String {
        format!(
            "n={} missed={} median {} p90 {} p99 {} max {}",
            self.n,
            self.missed,
            ms(self.median),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX {
        return "—".into();
    }
    let m = d.as_secs_f64() * 1000.0;
    if m < 10.0 {
        format!("{m:.2} ms")
    } else if m < 10_000.0 {
        format!("{m:.0} ms")
    } else {
        format!("{:.1} s", m / 1000.0)
    }
}

// ---------------------------------------------------------------------------------------
// 2. Burst
// ---------------------------------------------------------------------------------------

/// The generator's 100,000-line Exim log (seed 2) and the kernel keys its truth implies
/// (IPv4 exactly, IPv6 by the default /64 prefix).
fn burst_input(work: &TempDir) -> (Vec<u8>, HashSet<Vec<u8>>, u64) {
    let dir = work.sub("burst-input");
    let (log, truth) = (dir.join("exim.log"), dir.join("exim.truth"));
    let ok = Command::new("python3")
        .args([GEN, "exim", "-n", "100000", "--seed", "2", "-o"])
        .arg(&log)
        .arg("--truth")
        .arg(&truth)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{GEN} failed");
    let bytes = fs::read(&log).unwrap();
    let offending = bytes
        .split(|&b| b == b'\n')
        .filter(|l| l.windows(14).any(|w| w == b"Rate limited: "))
        .count() as u64;
    let mut keys = HashSet::new();
    for l in fs::read_to_string(&truth).unwrap().lines() {
        match l.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => {
                keys.insert(a.octets().to_vec());
            }
            Ok(IpAddr::V6(a)) => {
                let s = a.segments();
                let p = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                keys.insert(p.octets().to_vec());
            }
            Err(_) => {}
        }
    }
    (bytes, keys, offending)
}

fn burst_ours(work: &TempDir, runs: usize, t: &mut Table) {
    let (bytes, expected, offending) = burst_input(work);
    println!(
        "\n== 2. burst: 100,000 lines ({:.1} MiB, {offending} offending, {} expected bans) appended at once, {runs} runs ==",
        bytes.len() as f64 / 1048576.0,
        expected.len()
    );
    let mut results = Vec::new();
    for run in 0..runs {
        let mut agent = Agent::start(work, &format!("burst{run}"));
        let cpu0 = cpu_ticks(agent.pid());
        let t0 = Instant::now();
        agent.append(&bytes);
        let written = t0.elapsed();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut last_ban = None;
        let mut processed = None;
        let deadline = t0 + Duration::from_secs(60);
        // Events first (exact times), then the detector's count polled every 2 ms.
        while Instant::now() < deadline && (last_ban.is_none() || processed.is_none()) {
            while let Ok(ev) = agent.watcher.rx.try_recv() {
                for k in ev.keys {
                    if expected.contains(&k) && seen.insert(k) && seen.len() == expected.len() {
                        last_ban = Some(ev.at - t0);
                    }
                }
            }
            if processed.is_none() && agent.hits() >= offending {
                processed = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let cpu = cpu_ticks(agent.pid()) - cpu0;
        let bans = agent.status().and_then(|s| s["active_bans"].as_u64());
        println!(
            "  run {}: written in {}, last expected ban at {}, all lines counted by {} (±2 ms), {}/{} expected in the set, agent reports {} bans, agent CPU {} ms; {}",
            run + 1,
            ms(written),
            last_ban.map_or("—".into(), ms),
            processed.map_or("—".into(), ms),
            seen.len(),
            expected.len(),
            bans.unwrap_or(0),
            cpu * 1000 / clk_tck(),
            load()
        );
        if agent.watcher.overflows.load(Ordering::Relaxed) > 0 {
            println!("    (listener overflowed: some element events were lost)");
        }
        results.push((
            last_ban
                .unwrap_or(Duration::MAX)
                .max(processed.unwrap_or(Duration::MAX)),
            cpu,
            seen.len() == expected.len(),
        ));
    }
    results.sort();
    let (best, cpu, complete) = results[0];
    let median = results[results.len() / 2].0;
    t.row(
        "burst 100k lines → all banned (best)",
        "fwagent",
        ms(best),
        "≤ 0.5 s",
        complete && best <= Duration::from_millis(500),
    );
    t.row(
        "burst 100k lines (median of runs)",
        "fwagent",
        ms(median),
        "",
        true,
    );
    t.row(
        "burst CPU (best run)",
        "fwagent",
        format!("{} ms", cpu * 1000 / clk_tck()),
        "",
        true,
    );
}

// ---------------------------------------------------------------------------------------
// 3. Sustained
// ---------------------------------------------------------------------------------------

const RATE: usize = 50_000;
const SECONDS: usize = 10;
const CHUNK_MS: usize = 10;
/// Lines per address: the third bans, the rest are counted as "already banned".
const PER_ADDR: usize = 5;

fn sustained_ours(work: &TempDir, t: &mut Table) {
    let per_chunk = RATE * CHUNK_MS / 1000;
    let chunks = SECONDS * 1000 / CHUNK_MS;
    println!(
        "\n== 3. sustained: {RATE} offending lines/s for {SECONDS} s ({per_chunk} lines every {CHUNK_MS} ms, {PER_ADDR} lines per address → {} bans/s) ==",
        RATE / PER_ADDR
    );
    let mut agent = Agent::start(work, "sustained");
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    let pid = agent.pid();
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut max_backlog = 0u64;
    let mut late_chunks = 0;
    let mut buf = String::with_capacity(per_chunk * 140);
    let mut samples = Vec::new();
    for c in 0..chunks {
        let due = t0 + Duration::from_millis((c * CHUNK_MS) as u64);
        match due.checked_duration_since(Instant::now()) {
            Some(d) => std::thread::sleep(d),
            None if Instant::now() - due > Duration::from_millis(CHUNK_MS as u64) => {
                late_chunks += 1
            }
            None => {}
        }
        buf.clear();
        for i in 0..per_chunk {
            let line = written as usize + i;
            // Interleave 100 addresses per chunk so each gets its lines spread a little.
            let addr = base
                + (line / per_chunk * (per_chunk / PER_ADDR) + line % (per_chunk / PER_ADDR))
                    as u32;
            buf.push_str(&exim_line(IpAddr::V4(Ipv4Addr::from(addr))));
        }
        agent.append(buf.as_bytes());
        written += per_chunk as u64;
        if (c + 1) % (1000 / CHUNK_MS) == 0 {
            let hits = agent.hits();
            let backlog = written.saturating_sub(hits);
            max_backlog = max_backlog.max(backlog);
            let cpu = cpu_ticks(pid) - cpu0;
            samples.push((t0.elapsed(), written, hits, backlog, cpu));
        }
    }
    let write_end = t0.elapsed();
    // Drain: how long after the last chunk until every line is counted.
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    let mut hits = agent.hits();
    while hits < written && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(5));
        hits = agent.hits();
    }
    let drained = t0.elapsed().saturating_sub(write_end);
    let cpu = cpu_ticks(pid) - cpu0;
    let bans = agent
        .status()
        .and_then(|s| s["active_bans"].as_u64())
        .unwrap_or(0);
    println!(
        "  right after the run ({bans} bans made from the log): {}",
        rss_parts(pid)
    );
    // The agent hands freed heap back on its 10 s tick: the steady figure is after one.
    std::thread::sleep(Duration::from_secs(11));
    let steady = rss_kib(pid);
    println!("  11 s later: {}", rss_parts(pid));
    t.row(
        "RSS with 100,000 bans made from the log (steady)",
        "fwagent",
        mib(steady),
        "≤ 30 MiB",
        steady <= 30 * 1024,
    );
    println!("    t        written    counted    backlog   agent CPU (cumulative)");
    for (at, w, h, b, c) in &samples {
        println!(
            "  {:5.2} s  {w:9}  {h:9}  {b:9}   {} ms",
            at.as_secs_f64(),
            c * 1000 / clk_tck()
        );
    }
    let cpu_share = cpu as f64 / clk_tck() as f64 / write_end.as_secs_f64();
    println!(
        "  writing took {:.2} s ({late_chunks} chunks late), all {written} lines counted {} after the last chunk; {bans} bans; agent CPU {:.0}% of one core; {}",
        write_end.as_secs_f64(),
        ms(drained),
        cpu_share * 100.0,
        load()
    );
    // "Not growing": the last second's backlog is no larger than one second's worth, and
    // everything is counted shortly after the writer stops.
    let last = samples.last().map(|s| s.3).unwrap_or(u64::MAX);
    let ok = hits >= written && last <= RATE as u64 && drained < Duration::from_secs(1);
    t.row(
        "sustained 50k lines/s × 10 s: backlog at 10 s / max",
        "fwagent",
        format!("{last} / {max_backlog} lines"),
        "not growing",
        ok,
    );
    t.row(
        "sustained: drained after the writer stopped",
        "fwagent",
        ms(drained),
        "",
        true,
    );
    t.row(
        "sustained: agent CPU",
        "fwagent",
        format!("{:.0}% of a core", cpu_share * 100.0),
        "",
        true,
    );
}

// ---------------------------------------------------------------------------------------
// 4. Idle and memory
// ---------------------------------------------------------------------------------------

fn idle_ours(work: &TempDir, t: &mut Table) {
    println!("\n== 4. idle CPU and RSS (default config, --log FILE) ==");
    let agent = Agent::start(work, "idle");
    let pid = agent.pid();
    // Let start-up settle (first ticks, allocator) before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let rss_start = rss_kib(pid);
    let (c0, n0, s0) = (cpu_ticks(pid), cpu_ns(pid), ctx_switches(pid));
    std::thread::sleep(Duration::from_secs(10));
    let (idle, idle_ns, wakes) = (
        cpu_ticks(pid) - c0,
        cpu_ns(pid) - n0,
        ctx_switches(pid) - s0,
    );
    println!(
        "  idle 10 s: {:.2} ms CPU (schedstat; {idle} ticks of {} ms), {wakes} context switches; after start-up {}; {}",
        idle_ns as f64 / 1e6,
        1000 / clk_tck(),
        rss_parts(pid),
        load()
    );
    // "~0": under 0.1% of a core (10 ms in 10 s).
    t.row(
        "idle CPU over 10 s",
        "fwagent",
        format!("{:.2} ms, {wakes} wake-ups", idle_ns as f64 / 1e6),
        "~0",
        idle_ns < 10_000_000,
    );
    t.row(
        "RSS after start-up",
        "fwagent",
        mib(rss_start),
        "≤ 8 MiB",
        rss_start <= 8 * 1024,
    );

    // 100,000 bans through the control socket, as `fwagent ban --from-file` sends them.
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    let targets: Vec<String> = (0..100_000u32)
        .map(|i| Ipv4Addr::from(base + i).to_string())
        .collect();
    let t0 = Instant::now();
    let r = control::call(
        &agent.socket,
        &Request::Ban {
            targets,
            seconds: None,
            force: false,
        },
        Duration::from_secs(120),
    )
    .expect("ban 100k through the control socket");
    assert!(r.ok, "ban refused: {}", r.message);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let bans = agent
        .status()
        .and_then(|s| s["active_bans"].as_u64())
        .unwrap_or(0);
    let rss_bans = rss_kib(pid);
    let (n0, s0) = (cpu_ns(pid), ctx_switches(pid));
    std::thread::sleep(Duration::from_secs(10));
    let (idle2, wakes2) = (cpu_ns(pid) - n0, ctx_switches(pid) - s0);
    println!(
        "  100,000 bans via the control socket in {}; agent reports {bans}; {}; then idle 10 s: {:.2} ms CPU, {wakes2} context switches",
        ms(took),
        rss_parts(pid),
        idle2 as f64 / 1e6
    );
    // After the idle window the agent has passed a tick (and released its freed heap).
    let steady = rss_kib(pid);
    println!("  after the idle window: {}", rss_parts(pid));
    t.row(
        "RSS with 100,000 active bans (2 s after the ban)",
        "fwagent",
        mib(rss_bans),
        "",
        true,
    );
    t.row(
        "RSS with 100,000 active bans (steady, 12 s after)",
        "fwagent",
        mib(steady),
        "≤ 30 MiB",
        bans >= 100_000 && steady <= 30 * 1024,
    );
    t.row(
        "idle CPU over 10 s with 100,000 bans",
        "fwagent",
        format!("{:.2} ms, {wakes2} wake-ups", idle2 as f64 / 1e6),
        "~0",
        idle2 < 10_000_000,
    );
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------
// 5. References
// ---------------------------------------------------------------------------------------

fn references(work: &TempDir, quick: bool, t: &mut Table) {
    sshguard(work, quick, t);
    fail2ban(work, quick, t);
}

/// Places the reference figures from the issue when a tool could not be measured.
fn from_issue(t: &mut Table, tool: &str, why: &str) {
    println!("  {tool}: not measured ({why}); the issue's figures are shown instead");
    let label = format!("{tool} (from the issue, not re-measured)");
    let (lat, rss, burst) = match tool {
        "sshguard" => ("6 ms", "8 MiB", "5.4 s CPU"),
        _ => ("479 ms", "37 MiB", "9.5 s CPU"),
    };
    t.row("latency median", &label, lat.into(), "", true);
    t.row("RSS after start-up", &label, rss.into(), "", true);
    t.row("burst 100k lines", &label, burst.into(), "", true);
}

fn sshd_line(a: IpAddr) -> String {
    format!(
        "2026-12-03T10:00:00.000000+00:00 mx1 sshd[4242]: Invalid user admin from {a} port 50000\n"
    )
}

fn sshguard(work: &TempDir, quick: bool, t: &mut Table) {
    const LIB: &str = "/usr/libexec/sshguard";
    println!("\n== 5a. sshguard (tail -F | sshg-parser | sshg-blocker | sshg-fw-nft-sets) ==");
    if !Path::new(LIB).join("sshg-blocker").exists() {
        return from_issue(t, "sshguard", "not installed: apt-get install sshguard");
    }
    let ns = Ns::new();
    let dir = work.sub("sshguard");
    let log_path = dir.join("auth.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let watcher = Watcher::start(&ns);
    // The pipeline the `sshguard` script builds, without its journalctl reader: threshold
    // 30 points (3 attacks of 10), block 120 s, no whitelist.
    let pipeline = format!(
        "exec tail -F -n 0 {log} | {LIB}/sshg-parser | {LIB}/sshg-blocker -a 30 -p 120 -s 1800 | {LIB}/sshg-fw-nft-sets",
        log = log_path.display()
    );
    let proc = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "sh", "-c", &pipeline])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("sshguard.err")).unwrap()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let pg = proc.pid();
    let rss = group_rss(pg);
    let c0 = group_cpu(pg);
    std::thread::sleep(Duration::from_secs(5));
    let idle = group_cpu(pg) - c0;
    println!(
        "  RSS after start-up (all {} processes) {} KiB; idle 5 s: {idle} ticks",
        group_pids(pg).len(),
        rss
    );
    let n = if quick { 50 } else { 100 };
    let first = u32::from(Ipv4Addr::new(198, 19, 64, 1));
    let (lat, missed) = latency_loop(
        &mut log,
        &watcher,
        n,
        first,
        &sshd_line,
        |i| std::thread::sleep(Duration::from_millis(30 + (i as u64 * 7) % 20)),
        "attackers",
        Duration::from_secs(3),
    );
    let s = Stats::of(&lat, missed);
    println!("  latency: {}; {}", s.show(), load());
    if s.n == 0 {
        drop(proc);
        return from_issue(t, "sshguard", "no ban seen; see sshguard.err");
    }
    t.row("latency median", "sshguard", ms(s.median), "", true);
    t.row("latency p99", "sshguard", ms(s.p99), "", true);
    t.row(
        "RSS after start-up (whole pipeline)",
        "sshguard",
        mib(rss),
        "",
        true,
    );

    // Burst: 100,000 sshd lines from the generator; time until the pipeline's CPU stops.
    let generated = dir.join("auth-burst.log");
    let ok = Command::new("python3")
        .args([GEN, "sshd", "-n", "100000", "--seed", "2", "-o"])
        .arg(&generated)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let bytes = fs::read(&generated).unwrap();
        watcher.drain();
        let (elapsed, cpu) = until_quiet(pg, || log.write_all(&bytes).unwrap());
        println!(
            "  burst 100k sshd lines: busy for {}, {} ms CPU (whole pipeline, nft children included), {} addresses banned; {}",
            ms(elapsed),
            cpu * 1000 / clk_tck(),
            banned_since_drain(&watcher, "attackers"),
            load()
        );
        t.row(
            "burst 100k lines: busy time / CPU",
            "sshguard",
            format!("{} / {} ms CPU", ms(elapsed), cpu * 1000 / clk_tck()),
            "",
            true,
        );
    }
    drop(proc);
}

/// Distinct element keys added to sets named `prefix…` since the last drain.
fn banned_since_drain(w: &Watcher, prefix: &str) -> usize {
    let mut keys = HashSet::new();
    while let Ok(ev) = w.rx.try_recv() {
        if ev.set.starts_with(prefix) {
            keys.extend(ev.keys);
        }
    }
    keys.len()
}

/// Runs `act`, then waits until the process group used no CPU for 1 s (bounded 120 s).
/// Returns the time until the last busy sample and the CPU used.
fn until_quiet(pg: u32, act: impl FnOnce()) -> (Duration, u64) {
    let c0 = group_cpu(pg);
    let t0 = Instant::now();
    act();
    let mut last = c0;
    let mut last_busy = t0.elapsed();
    let mut quiet_since = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let c = group_cpu(pg);
        if c != last {
            last = c;
            last_busy = t0.elapsed();
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    (last_busy, last - c0)
}

fn fail2ban(work: &TempDir, quick: bool, t: &mut Table) {
    println!("\n== 5b. fail2ban (pyinotify backend, nftables-allports action) ==");
    if !Path::new("/usr/bin/fail2ban-server").exists() || !Path::new("/etc/fail2ban").exists() {
        return from_issue(t, "fail2ban", "not installed: apt-get install fail2ban");
    }
    let ns = Ns::new();
    let dir = work.sub("fail2ban");
    let log_path = dir.join("mainlog");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let conf = dir.join("conf");
    // The stock configuration (actions, filters) with our own server settings and one jail.
    let ok = Command::new("cp")
        .args(["-r", "/etc/fail2ban"])
        .arg(&conf)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "copy /etc/fail2ban");
    for sub in ["jail.d", "fail2ban.d"] {
        let _ = fs::remove_dir_all(conf.join(sub));
        fs::create_dir_all(conf.join(sub)).unwrap();
    }
    let _ = fs::remove_file(conf.join("jail.local"));
    fs::write(
        conf.join("fail2ban.local"),
        format!(
            "[Definition]\nloglevel = INFO\nlogtarget = {d}/fail2ban.log\nsocket = {d}/f2b.sock\npidfile = {d}/f2b.pid\ndbfile = {d}/f2b.sqlite3\n",
            d = dir.display()
        ),
    )
    .unwrap();
    fs::write(
        conf.join("filter.d").join("fwb-exim-ratelimit.conf"),
        "[Definition]\nfailregex = Rate limited: <HOST>$\nignoreregex =\ndatepattern = {NONE}\n",
    )
    .unwrap();
    fs::write(
        conf.join("jail.local"),
        format!(
            "[DEFAULT]\nignoreself = false\nignoreip =\n\n[fwb]\nenabled = true\nbackend = pyinotify\nlogpath = {}\nfilter = fwb-exim-ratelimit\nmaxretry = 3\nfindtime = 3600\nbantime = 86400\nbanaction = nftables-allports\naction = nftables-allports[name=fwb]\n",
            log_path.display()
        ),
    )
    .unwrap();
    let watcher = Watcher::start(&ns);
    let proc = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "fail2ban-server", "-f", "-x", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("f2b.sock"))
            .arg("-p")
            .arg(dir.join("f2b.pid"))
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("fail2ban.out")).unwrap())
            .stderr(File::create(dir.join("fail2ban.err")).unwrap()),
    );
    std::thread::sleep(Duration::from_secs(5));
    let pg = proc.pid();
    let rss = group_rss(pg);
    let c0 = group_cpu(pg);
    std::thread::sleep(Duration::from_secs(5));
    let idle = group_cpu(pg) - c0;
    // Which backend the jail really got (fail2ban falls back silently when one is missing).
    let backend = fs::read_to_string(dir.join("fail2ban.log"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("backend"))
        .map(|l| l.split_once("fail2ban.").map_or(l, |(_, r)| r).to_string())
        .unwrap_or_else(|| "backend not reported in fail2ban.log".into());
    println!("  {backend}");
    println!("  RSS after start-up {} KiB; idle 5 s: {idle} ticks", rss);
    let n = if quick { 20 } else { 40 };
    let first = u32::from(Ipv4Addr::new(198, 19, 128, 1));
    let (lat, missed) = latency_loop(
        &mut log,
        &watcher,
        n,
        first,
        &exim_line,
        // fail2ban's ban thread wakes on its own schedule: spread the third line over a
        // whole second of phase (150–1150 ms after the first two), deterministically.
        |i| std::thread::sleep(Duration::from_millis(150 + (i as u64 * 379) % 1000)),
        "addr-set",
        Duration::from_secs(5),
    );
    let s = Stats::of(&lat, missed);
    println!("  latency: {}; {}", s.show(), load());
    if s.n == 0 {
        drop(proc);
        return from_issue(
            t,
            "fail2ban",
            &format!("no ban seen; see {}", dir.join("fail2ban.log").display()),
        );
    }
    t.row("latency median", "fail2ban", ms(s.median), "", true);
    t.row("latency p99", "fail2ban", ms(s.p99), "", true);
    t.row("RSS after start-up", "fail2ban", mib(rss), "", true);
    let (bytes, expected, _) = burst_input(work);
    watcher.drain();
    let (elapsed, cpu) = until_quiet(pg, || log.write_all(&bytes).unwrap());
    println!(
        "  burst 100k exim lines: busy for {}, {} ms CPU (nft children included), {} addresses banned (truth: {}); {}",
        ms(elapsed),
        cpu * 1000 / clk_tck(),
        banned_since_drain(&watcher, "addr"),
        expected.len(),
        load()
    );
    t.row(
        "burst 100k lines: busy time / CPU",
        "fail2ban",
        format!("{} / {} ms CPU", ms(elapsed), cpu * 1000 / clk_tck()),
        "",
        true,
    );
    drop(proc);
}

// ---------------------------------------------------------------------------------------
// The summary table
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Table(Vec<(String, String, String, String, bool)>);

impl Table {
    fn row(&mut self, what: &str, who: &str, value: String, target: &str, ok: bool) {
        self.0
            .push((what.into(), who.into(), value, target.into(), ok));
    }

    fn print(&self) {
        println!("\n== summary ({}) ==", load());
        println!(
            "{:<52} {:<40} {:>26}  {:<12} met?",
            "measure", "who", "value", "target"
        );
        for (what, who, value, target, ok) in &self.0 {
            let mark = if target.is_empty() {
                ""
            } else if *ok {
                "met"
            } else {
                "MISSED"
            };
            println!("{what:<52} {who:<40} {value:>26}  {target:<12} {mark}");
        }
    }
}
