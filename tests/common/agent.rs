//! A lab for end-to-end tests of `fwagent run`: one throwaway network namespace, one
//! temporary directory (state, followed logs, config, the agent's own log), and at most one
//! running agent at a time.
//!
//! The agent runs as `ip netns exec NS fwagent run --state-dir DIR ...`, so its netlink
//! sockets and its table live in the namespace. [`Lab`]'s drop kills the agent (SIGKILL),
//! then removes the directory, then the namespace — in that order, so nothing outlives a
//! failed test. The kernel is read with `nft -j` inside the namespace, an independent oracle.
//! Every wait polls with a bound; nothing sleeps for a fixed time except where time itself
//! must pass (expiry, remaining-time checks).
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::NetNs;
use fwagent::control::{self, Request, Response};

/// How long an agent may take to come up (debug build, loaded 2-core machine).
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// Default bound for "this should happen soon" waits.
pub const SOON: Duration = Duration::from_secs(10);

static DIRS: AtomicU32 = AtomicU32::new(0);

/// One ban as the kernel lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Elem {
    /// The set: banned4, banned6 (by prefix), banned6x (exact), nets4, nets6.
    pub set: String,
    /// The element as nft prints it: `198.51.100.11`, `2001:db8:25::`, `198.18.0.0/16`.
    pub val: String,
    /// Configured timeout in seconds (None: permanent).
    pub timeout: Option<u64>,
    /// Remaining seconds.
    pub expires: Option<u64>,
    pub packets: u64,
}

/// The running agent of a lab.
struct Running {
    child: Child,
    log: PathBuf,
}

pub struct Lab {
    pub ns: NetNs,
    pub dir: PathBuf,
    agent: Option<Running>,
    runs: u32,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = std::env::temp_dir().join(format!(
            "fwt-agent-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create lab dir");
        let lab = Lab {
            ns: NetNs::new(),
            dir,
            agent: None,
            runs: 0,
        };
        File::create(lab.mainlog()).expect("create mainlog");
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The followed file of the default source.
    pub fn mainlog(&self) -> PathBuf {
        self.dir.join("mainlog")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("fwagent.toml")
    }

    /// Writes `fwagent.toml` with a `[[source]]` following [`mainlog`](Self::mainlog) with
    /// `exim-ratelimit`, followed by `extra` (tables such as `[firewall]`, `[ban]`).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let text = format!(
            "{extra}\n[[source]]\npath = \"{}\"\nrules = [\"exim-ratelimit\"]\n",
            self.mainlog().display()
        );
        std::fs::write(self.config_path(), text).expect("write config");
        self.config_path()
    }

    /// The arguments every agent run gets: its private state dir (which also holds the
    /// control socket).
    fn base_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
        ]
    }

    /// Spawns `fwagent run --state-dir DIR ARGS...` in the namespace without waiting.
    pub fn spawn(&mut self, args: &[&str]) -> u32 {
        assert!(self.agent.is_none(), "an agent already runs in this lab");
        self.runs += 1;
        let log = self.dir.join(format!("agent-{}.log", self.runs));
        let err = File::create(&log).expect("create agent log");
        let out = err.try_clone().expect("clone log fd");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns.name,
            env!("CARGO_BIN_EXE_fwagent"),
        ])
        .args(self.base_args())
        .args(args)
        .env("FWAGENT_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("FWAGENT_KERNEL_COMPAT")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
        // `ip netns exec` execs the binary, so the child's pid is the agent's.
        let child = cmd.spawn().expect("spawn fwagent run");
        let pid = child.id();
        self.agent = Some(Running { child, log });
        pid
    }

    /// Starts the agent and waits until it logs that it runs (panics with its log if it
    /// exits or does not come up in time).
    pub fn start(&mut self, args: &[&str]) -> u32 {
        let pid = self.spawn(args);
        let start = Instant::now();
        loop {
            if self.log().contains("fwagent running") {
                return pid;
            }
            if let Some(st) = self.try_wait() {
                panic!("agent exited during start-up ({st}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < START_LIMIT,
                "agent did not come up within {START_LIMIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent following `mainlog` with the default rule (`--log`).
    pub fn start_default(&mut self) -> u32 {
        let log = self.mainlog().display().to_string();
        self.start(&["--log", &log])
    }

    /// Starts the agent with the lab's config file.
    pub fn start_config(&mut self) -> u32 {
        let cfg = self.config_path().display().to_string();
        self.start(&["-c", &cfg])
    }

    /// Exit status if the agent has exited (and forgets it), else None.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let run = self.agent.as_mut()?;
        run.child.try_wait().expect("try_wait")
    }

    /// Waits for the agent to exit by itself (bounded); returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "agent did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.agent.as_ref().expect("no agent").child.id()
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid() as i32;
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill {pid} {sig}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL: the agent gets no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let st = self.wait_exit(SOON);
        assert!(!st.success());
        self.agent = None;
    }

    /// SIGTERM and wait; asserts a clean exit (code 0).
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(SOON);
        assert!(
            st.success(),
            "agent exited with {st} on SIGTERM:\n{}",
            self.log()
        );
        self.agent = None;
    }

    /// Forgets an agent that has exited (after [`wait_exit`](Self::wait_exit)).
    pub fn reap(&mut self) {
        self.agent = None;
    }

    pub fn hup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// The current (or last) run's log, ANSI colours stripped.
    pub fn log(&self) -> String {
        let path = match &self.agent {
            Some(r) => r.log.clone(),
            None => self.dir.join(format!("agent-{}.log", self.runs)),
        };
        strip_ansi(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// Lines of the current run's log that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until the log holds at least `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize, limit: Duration) {
        let ok = poll(limit, || self.log_count(needle) >= n);
        assert!(
            ok,
            "no {n}× {needle:?} in the agent log within {limit:?}:\n{}",
            self.log()
        );
    }

    /// Appends lines to a file as a daemon would (one write per call, O_APPEND).
    pub fn append(&self, path: &Path, lines: &[String]) {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("open log for append");
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).expect("append");
    }

    pub fn append_main(&self, lines: &[String]) {
        self.append(&self.mainlog(), lines);
    }

    /// One request to the running agent over its control socket.
    pub fn control(&self, req: &Request) -> Response {
        let path = control::socket_path(&self.state_dir());
        control::call(&path, req, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("control {req:?}: {e}\n{}", self.log()))
    }

    /// The agent's `status` figures (JSON).
    pub fn status(&self) -> Value {
        let r = self.control(&Request::Status);
        assert!(r.ok, "status failed: {}", r.message);
        r.data
    }

    /// The agent's `list` (JSON array of bans).
    pub fn list(&self) -> Vec<Value> {
        let r = self.control(&Request::List);
        assert!(r.ok, "list failed: {}", r.message);
        r.data.as_array().cloned().unwrap_or_default()
    }

    /// Hits the agent counted for `rule` since it started.
    pub fn rule_hits(&self, rule: &str) -> u64 {
        self.status()["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == rule)
            .and_then(|r| r["hits"].as_u64())
            .unwrap_or(0)
    }

    /// Lines the agent read from its first source since it started.
    pub fn source_lines(&self) -> u64 {
        self.status()["sources"][0]["lines"].as_u64().unwrap_or(0)
    }

    /// Waits until the agent has counted at least `n` hits for `rule` (so a negative check
    /// after it is about lines that were certainly processed).
    pub fn wait_hits(&self, rule: &str, n: u64) {
        let ok = poll(SOON, || self.rule_hits(rule) >= n);
        assert!(
            ok,
            "agent counted {} hits for {rule}, expected {n}:\n{}",
            self.rule_hits(rule),
            self.log()
        );
    }

    /// Every element of our table, or None when the table does not exist.
    pub fn kernel(&self) -> Option<Vec<Elem>> {
        self.kernel_table("fwagent")
    }

    pub fn kernel_table(&self, table: &str) -> Option<Vec<Elem>> {
        let out = self
            .ns
            .output("nft", &["-j", "list", "table", "inet", table]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("nft -j output is JSON");
        Some(parse_elements(&v))
    }

    /// Elements, empty when the table is missing.
    pub fn elements(&self) -> Vec<Elem> {
        self.kernel().unwrap_or_default()
    }

    /// The element whose value is `val`, if banned.
    pub fn elem(&self, val: &str) -> Option<Elem> {
        self.elements().into_iter().find(|e| e.val == val)
    }

    /// Sorted element values.
    pub fn banned(&self) -> Vec<String> {
        let mut v: Vec<String> = self.elements().into_iter().map(|e| e.val).collect();
        v.sort();
        v
    }

    /// Waits until `val` is in the kernel; returns the element.
    pub fn wait_banned(&self, val: &str) -> Elem {
        let mut found = None;
        poll(SOON, || {
            found = self.elem(val);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "{val} not banned within {SOON:?}; kernel: {:?}\n{}",
                self.banned(),
                self.log()
            )
        })
    }

    /// Waits until `val` is no longer in the kernel.
    pub fn wait_unbanned(&self, val: &str, limit: Duration) {
        let ok = poll(limit, || self.elem(val).is_none());
        assert!(ok, "{val} still banned after {limit:?}:\n{}", self.log());
    }

    /// `nft` in the namespace; panics on failure.
    pub fn nft(&self, args: &[&str]) -> String {
        self.ns.ok("nft", args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut run) = self.agent.take() {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("lab dir kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The namespace (self.ns) is deleted by its own drop, after this.
    }
}

/// Polls `f` every 10 ms until it is true or `limit` passes.
pub fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`) in case the subscriber ignores NO_COLOR.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Elements of every set in an `nft -j list table` document.
pub fn parse_elements(doc: &Value) -> Vec<Elem> {
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set") else { continue };
        let name = set["name"].as_str().unwrap_or("?").to_string();
        for e in set["elem"].as_array().into_iter().flatten() {
            // With timeouts or counters nft wraps the value: {"elem": {"val": ...}}.
            let (val, meta) = match e.get("elem") {
                Some(inner) => (&inner["val"], inner),
                None => (e, &Value::Null),
            };
            out.push(Elem {
                set: name.clone(),
                val: value_text(val),
                timeout: meta["timeout"].as_u64(),
                expires: meta["expires"].as_u64(),
                packets: meta["counter"]["packets"].as_u64().unwrap_or(0),
            });
        }
    }
    out
}

fn value_text(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if let Some(p) = v.get("prefix") {
        return format!("{}/{}", p["addr"].as_str().unwrap_or("?"), p["len"]);
    }
    v.to_string()
}

/// The real `Rate limited` lines of the Exim sample, in file order.
pub fn sample_rate_limited() -> Vec<String> {
    let text = std::fs::read_to_string("/work/shared/samples/exim4-mainlog")
        .expect("read /work/shared/samples/exim4-mainlog");
    text.lines()
        .filter(|l| l.contains("Rate limited: "))
        .map(str::to_string)
        .collect()
}

/// `n` Exim `Rate limited` lines for `addr`, shaped like the sample's (a real line with the
/// address replaced).
pub fn rate_limited(addr: &str, n: usize) -> Vec<String> {
    let host = if addr.contains(':') {
        format!("[{addr}] I=[2001:db8:25::25]:25")
    } else {
        format!("[{addr}] I=[198.51.100.25]:25")
    };
    (0..n)
        .map(|i| {
            format!(
                "2026-12-03 16:13:58 H=(bot.example.net) {host} F=<bot@example.net> rejected RCPT <user{i}@lab.example>: Rate limited: {addr}"
            )
        })
        .collect()
}

/// A second namespace joined to the lab's by a veth pair: the lab side holds the Exim
/// server's IPv4 addresses (local to the agent), the peer side a bot's (198.51.100.11) and
/// the legitimate client's (203.0.113.20). Dropped (deleted) by the caller.
pub fn peer(lab: &Lab) -> NetNs {
    let peer = NetNs::new();
    super::netns::veth(&lab.ns, "srv0", &peer, "cli0");
    lab.ns
        .ip(&["addr", "add", "198.51.100.25/24", "dev", "srv0"]);
    lab.ns
        .ip(&["addr", "add", "203.0.113.25/24", "dev", "srv0"]);
    peer.ip(&["addr", "add", "198.51.100.11/24", "dev", "cli0"]);
    peer.ip(&["addr", "add", "203.0.113.20/24", "dev", "cli0"]);
    peer
}
