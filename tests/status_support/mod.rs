//! Shared by `tests/status.rs` and `tests/web.rs`: a lab of two namespaces joined by a veth
//! pair (the host `ns` runs fwagent, the `peer` sends traffic from test addresses), a running
//! agent as a child process with a Drop guard, a raw HTTP/1.1 client that runs inside the
//! namespace, and readers of the kernel's own figures from `nft -j list ruleset` (the
//! independent oracle).
//!
//! Addresses: host 198.51.100.1 / 2001:db8:ff::1, peer 198.51.100.2 / 2001:db8:ff::2.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::netns::{NetNs, veth, wait_until};

pub const HOST4: &str = "198.51.100.1";
pub const PEER4: &str = "198.51.100.2";
pub const HOST6: &str = "2001:db8:ff::1";
pub const PEER6: &str = "2001:db8:ff::2";

/// Two namespaces, a veth pair, a private directory for config, log and state.
pub struct Lab {
    pub ns: NetNs,
    pub peer: NetNs,
    pub dir: PathBuf,
}

impl Lab {
    pub fn new(name: &str) -> Lab {
        let ns = NetNs::new();
        let peer = NetNs::new();
        veth(&ns, "h0", &peer, "p0");
        ns.ip(&["addr", "add", &format!("{HOST4}/24"), "dev", "h0"]);
        peer.ip(&["addr", "add", &format!("{PEER4}/24"), "dev", "p0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST6}/64"),
            "dev",
            "h0",
            "nodad",
        ]);
        peer.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{PEER6}/64"),
            "dev",
            "p0",
            "nodad",
        ]);
        let dir = std::env::temp_dir().join(format!("fwt-{name}-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mainlog"), "").unwrap();
        Lab { ns, peer, dir }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("mainlog")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("fwagent.toml")
    }

    /// Writes the configuration: follow our log with the default rule, refresh every second.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[[source]]\npath = \"{}\"\nrules = [\"exim-ratelimit\"]\n\n[web]\nrefresh = \"1s\"\n{extra}\n",
            self.log().display()
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// Appends `n` Exim "Rate limited" lines for `addr` (3 make a ban).
    pub fn offend(&self, addr: &str, n: usize) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log())
            .unwrap();
        for i in 0..n {
            writeln!(
                f,
                "2026-12-03 16:13:{:02} H=(bot.example) [{addr}] I=[{HOST4}]:25 F=<bot@example.net> \
                 rejected RCPT <nobody{i}@lab.example>: Rate limited: {addr}",
                i % 60
            )
            .unwrap();
        }
    }

    /// Pings the host from the peer `count` times (each answer or not within 1 s).
    pub fn ping_from_peer(&self, dest: &str, count: u32) -> bool {
        let c = count.to_string();
        let flag = if dest.contains(':') { "-6" } else { "-4" };
        self.peer
            .output(
                "ping",
                &[flag, "-c", &c, "-i", "0.2", "-W", "1", "-w", "5", dest],
            )
            .status
            .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `fwagent run` inside the lab's namespace; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Agent {
    child: Child,
    pub stderr: PathBuf,
}

impl Agent {
    pub fn start(lab: &Lab) -> Agent {
        let stderr = lab.dir.join("agent.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns.name,
                env!("CARGO_BIN_EXE_fwagent"),
                "run",
            ])
            .arg("--config")
            .arg(lab.config())
            .arg("--state-dir")
            .arg(lab.state())
            .env_remove("FWAGENT_KERNEL_COMPAT")
            .env("FWAGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn fwagent run");
        let agent = Agent { child, stderr };
        let up = wait_until(Duration::from_secs(20), || {
            http(&lab.ns, "GET", "/api/status").is_some_and(|r| r.status == 200)
        });
        assert!(
            up,
            "the agent's web server never answered:\n{}",
            agent.log()
        );
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1:9180 inside `ns` (`Connection: close`) and reads
/// the whole answer; `None` when nothing listens yet.
pub fn http(ns: &NetNs, method: &str, path: &str) -> Option<Resp> {
    raw_http(
        ns,
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends raw request bytes; the answer is parsed strictly enough for the tests' needs.
pub fn raw_http(ns: &NetNs, request: String) -> Option<Resp> {
    raw_http_port(ns, 9180, request)
}

/// A request with a JSON body to `port` inside `ns` (for WebDriver).
pub fn json_request(ns: &NetNs, port: u16, method: &str, path: &str, body: &Value) -> Option<Resp> {
    if body.is_null() {
        // GET and DELETE carry no body at all (WebDriver rejects `null` as parameters).
        return raw_http_port(
            ns,
            port,
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        );
    }
    let text = body.to_string();
    raw_http_port(
        ns,
        port,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        ),
    )
}

/// Sends raw request bytes to `port` inside `ns` and reads the whole answer.
pub fn raw_http_port(ns: &NetNs, port: u16, request: String) -> Option<Resp> {
    let head_only = request.starts_with("HEAD ");
    ns.enter(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let buf = read_answer(&mut s, head_only)?;
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let status: u16 = parts.next()?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut body = buf[end + 4..].to_vec();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked {
            body = dechunk(&body)?;
        }
        let resp = Resp {
            status,
            headers,
            body,
        };
        if !head_only && let Some(len) = resp.header("content-length") {
            assert_eq!(
                len.parse::<usize>().unwrap(),
                resp.body.len(),
                "body length"
            );
        }
        Some(resp)
    })
}

/// Reads one answer: the head, then the body by its length, its last chunk, or EOF (some
/// servers keep the connection open despite `Connection: close`).
fn read_answer(s: &mut TcpStream, head_only: bool) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).ok()?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = buf.len() - end - 4;
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = if head_only {
                true
            } else if let Some(len) = len {
                body >= len
            } else if head.contains("transfer-encoding: chunked") {
                buf.ends_with(b"0\r\n\r\n")
            } else {
                n == 0
            };
            if done {
                return Some(buf);
            }
        }
        if n == 0 {
            return Some(buf);
        }
    }
}

/// Decodes a chunked body (sizes in hex, each chunk followed by CRLF, a zero-size chunk last).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// `nft -j list ruleset` inside `ns`.
pub fn ruleset(ns: &NetNs) -> Value {
    serde_json::from_str(&ns.ok("nft", &["-j", "list", "ruleset"])).expect("nft json")
}

/// One drop rule's counter as nft shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KRule {
    pub chain: String,
    pub set: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The counters of our table's rules: the set each rule looks up (`@name` anywhere in its
/// match) and its `counter` statement.
pub fn kernel_rules(ns: &NetNs, table: &str) -> Vec<KRule> {
    let v = ruleset(ns);
    let mut out = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(r) = item.get("rule") else { continue };
        if r["table"] != table || r["family"] != "inet" {
            continue;
        }
        let text = r["expr"].to_string();
        let set = text
            .split("\"@")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        let counter = r["expr"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("counter"))
            .expect("a counter statement");
        out.push(KRule {
            chain: r["chain"].as_str().unwrap().to_string(),
            set,
            packets: counter["packets"].as_u64().unwrap(),
            bytes: counter["bytes"].as_u64().unwrap(),
        });
    }
    out
}

/// One element with its counter as nft shows it (`addr` or `addr/len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KElem {
    pub set: String,
    pub target: String,
    pub packets: u64,
    pub bytes: u64,
}

pub fn kernel_elements(ns: &NetNs, table: &str) -> Vec<KElem> {
    let v = ruleset(ns);
    let mut out = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(s) = item.get("set") else { continue };
        if s["table"] != table {
            continue;
        }
        let name = s["name"].as_str().unwrap();
        for e in s["elem"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
            let inner = e.get("elem").unwrap_or(e);
            let val = inner.get("val").unwrap_or(inner);
            let target = match val {
                Value::String(a) => a.clone(),
                v if v.get("prefix").is_some() => format!(
                    "{}/{}",
                    v["prefix"]["addr"].as_str().unwrap(),
                    v["prefix"]["len"]
                ),
                v if v.get("range").is_some() => v["range"].to_string(),
                other => other.to_string(),
            };
            let c = inner.get("counter");
            out.push(KElem {
                set: name.to_string(),
                target,
                packets: c.and_then(|c| c["packets"].as_u64()).unwrap_or(0),
                bytes: c.and_then(|c| c["bytes"].as_u64()).unwrap_or(0),
            });
        }
    }
    out
}

/// Whether the table carries the owner flag, per nft.
pub fn kernel_owned(ns: &NetNs, table: &str) -> Option<bool> {
    let v = ruleset(ns);
    v["nftables"].as_array().unwrap().iter().find_map(|i| {
        let t = i.get("table")?;
        (t["name"] == table).then(|| t["flags"].to_string().contains("owner"))
    })
}

/// Reads the kernel, runs `f`, reads again; retries (bounded) until the two kernel reads
/// agree, so `f`'s reading is known to have seen exactly those figures.
pub fn between_stable_reads<T>(
    ns: &NetNs,
    mut f: impl FnMut() -> T,
) -> (Vec<KRule>, Vec<KElem>, T) {
    for _ in 0..20 {
        let (r1, e1) = (kernel_rules(ns, "fwagent"), kernel_elements(ns, "fwagent"));
        let got = f();
        let (r2, e2) = (kernel_rules(ns, "fwagent"), kernel_elements(ns, "fwagent"));
        if r1 == r2 && e1 == e2 {
            return (r1, e1, got);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the kernel's counters never held still");
}

/// Whether the wired `fwagent status` is this module's (`--run-dir` is ours).
pub fn status_cli_is_wired() -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_fwagent"))
        .args(["status", "--help"])
        .output()
        .expect("fwagent status --help");
    String::from_utf8_lossy(&out.stdout).contains("--run-dir")
}

/// `fwagent status --json` for the lab: the binary when `status` is wired to
/// `fwagent::status::cli`, else the same code in-process in the namespace. Returns the JSON
/// and whether the status was healthy (exit code 0).
pub fn status_json(lab: &Lab) -> (Value, bool) {
    if status_cli_is_wired() {
        let cfg = lab.config();
        let state = lab.state();
        let out = lab.ns.fwagent(&[
            "status",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        return (v, out.status.success());
    }
    let cfg = lab.config();
    let state = lab.state();
    lab.ns.enter(move || {
        let opts = fwagent::agent::RunOptions {
            config: Some(cfg),
            state_dir: Some(state),
            ..Default::default()
        };
        let c = opts.load_config().unwrap();
        let schema = fwagent::nft::Schema {
            table: c.firewall.table.clone(),
            set_size: c.firewall.set_size,
            ipv6_prefix: c.firewall.ipv6_prefix,
            priority: c.firewall.priority,
        };
        let st = fwagent::status::cli::read(&schema, &c.state.run_dir).unwrap();
        (serde_json::to_value(&st).unwrap(), st.healthy)
    })
}

/// The `drops` entry of a status JSON for one hook and family (`ip`/`ip6`).
pub fn drop_of<'a>(st: &'a Value, hook: &str, family: &str) -> &'a Value {
    st["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hook"] == hook && d["family"] == family)
        .unwrap_or_else(|| panic!("no drops entry {hook}/{family} in {st}"))
}

/// Sum of the kernel's rule counters for one chain and family (by set name).
pub fn kernel_drop(rules: &[KRule], chain: &str, v6: bool) -> (u64, u64) {
    rules
        .iter()
        .filter(|r| r.chain == chain && r.set.ends_with('4') != v6)
        .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
}

/// Waits (bounded) until `f` holds on the agent's /api/status.
pub fn wait_status(ns: &NetNs, limit: Duration, mut f: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(limit, || {
        if let Some(r) = http(ns, "GET", "/api/status")
            && r.status == 200
        {
            last = r.json();
            return f(&last);
        }
        false
    });
    assert!(
        ok,
        "the agent's status never reached the expected state: {last:#}"
    );
    last
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
