//! The agent's HTTP server in a throwaway namespace with real bans and real drops:
//! HTTP semantics and headers, `/metrics` through a strict Prometheus text-format parser
//! compared with the kernel's counters, and the dashboard in a real headless Chromium driven
//! over WebDriver (chromedriver), compared with the kernel after an in-place refresh.
//! Needs root (skips visibly otherwise); the browser test also needs Debian's `chromium` and
//! `chromium-driver` (skips visibly without them).
//!
//! Artifacts: `target/status-artifacts/dashboard.png` and `dashboard-phone.png`.

mod common;
mod status_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{NetNs, root_or_skip, wait_until};
use serde_json::{Value, json};
use status_support::*;

/// A lab with a running agent that banned the peer's IPv4 address, and dropped pings.
fn banned_lab(name: &str) -> (Lab, Agent) {
    let lab = Lab::new(name);
    lab.write_config("");
    let agent = Agent::start(&lab);
    lab.offend(PEER4, 3);
    let banned = wait_until(Duration::from_secs(10), || {
        kernel_elements(&lab.ns, "fwagent")
            .iter()
            .any(|e| e.target == PEER4)
    });
    assert!(banned, "the agent did not ban {PEER4}: {}", agent.log());
    assert!(
        !lab.ping_from_peer(HOST4, 3),
        "a banned address got through"
    );
    (lab, agent)
}

#[test]
fn http_methods_paths_and_headers() {
    if !root_or_skip("http_methods_paths_and_headers") {
        return;
    }
    let lab = Lab::new("web-http");
    lab.write_config("");
    let _agent = Agent::start(&lab);
    let ns = &lab.ns;
    let get = |p: &str| http(ns, "GET", p).expect("answer");

    let csp_ok = |r: &Resp| {
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    };
    for (path, kind, cache) in [
        ("/", "text/html; charset=utf-8", "no-cache"),
        (
            "/dashboard.js",
            "text/javascript; charset=utf-8",
            "no-cache",
        ),
        ("/dashboard.css", "text/css; charset=utf-8", "no-cache"),
        ("/api/status", "application/json", "no-store"),
        (
            "/metrics",
            "text/plain; version=0.0.4; charset=utf-8",
            "no-store",
        ),
    ] {
        let r = get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(kind), "{path}");
        assert_eq!(r.header("cache-control"), Some(cache), "{path}");
        csp_ok(&r);
        // HEAD: same status and headers, the GET body's length, no body.
        let h = http(ns, "HEAD", path).unwrap();
        assert_eq!(h.status, 200, "HEAD {path}");
        assert!(h.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(h.header("content-type"), Some(kind));
        if path != "/api/status" && path != "/metrics" {
            assert_eq!(
                h.header("content-length").unwrap(),
                r.body.len().to_string(),
                "HEAD {path} length"
            );
        }
    }
    // The page is self-contained: only same-origin, relative references.
    let page = get("/").text();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"));
    assert!(
        page.contains("data-refresh-ms=\"1000\""),
        "refresh from [web] refresh"
    );
    let st = get("/api/status").json();
    assert_eq!(st["format"], 1);
    assert_eq!(st["healthy"], true);

    // Read-only: every other method is refused with Allow.
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for p in ["/", "/api/status", "/metrics"] {
            let r = http(ns, m, p).unwrap();
            assert_eq!(r.status, 405, "{m} {p}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{m} {p}");
            csp_ok(&r);
        }
    }
    for p in [
        "/nope",
        "/api/status/",
        "/metrics.txt",
        "/api",
        "/../etc/passwd",
        "/favicon.ico",
    ] {
        let r = get(p);
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        csp_ok(&r);
    }
    // The query string does not change the route.
    assert_eq!(get("/metrics?x=1").status, 200);
    // Malformed requests get 4xx, not a dropped agent.
    let bad = raw_http(ns, "GARBAGE\r\n\r\n".into()).unwrap();
    assert_eq!(bad.status, 400);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    let r = raw_http(ns, huge).unwrap();
    assert!(r.status == 431 || r.status == 400, "{}", r.status);
    assert_eq!(get("/api/status").status, 200, "still serving");
}

// ---- a strict Prometheus text-format (0.0.4) parser ----------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<(BTreeMap<String, String>, f64)>,
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_' || x == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && !n.starts_with("__")
}

/// Parses `{a="x",b="y"}` (after the metric name); returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((labels, s));
    };
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated label value")?;
            match c {
                '"' => break i,
                '\\' => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    o => return Err(format!("bad escape \\{o}")),
                },
                '\n' => return Err("raw newline in label value".into()),
                c => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} at {rest:?}"));
        }
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}")),
    }
}

/// Parses an exposition strictly: HELP/TYPE before a family's samples, at most once each,
/// a family's samples contiguous, no duplicate series, valid names, labels and values,
/// counters named `_total`, text ends with a newline.
fn parse_exposition(text: &str) -> Result<HashMap<String, Family>, String> {
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    let mut fams: HashMap<String, Family> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(kw @ ("HELP" | "TYPE")), Some(name)) = (kw, name) else {
                continue; // a plain comment
            };
            if !valid_metric_name(name) {
                return Err(err("bad metric name".into()));
            }
            if done.contains(name) {
                return Err(err("family announced after its samples ended".into()));
            }
            if current.as_deref() != Some(name)
                && let Some(c) = current.take()
            {
                done.insert(c);
            }
            current = Some(name.to_string());
            let f = fams.entry(name.to_string()).or_insert(Family {
                kind: String::new(),
                help: String::new(),
                samples: Vec::new(),
            });
            if !f.samples.is_empty() {
                return Err(err("HELP/TYPE after samples".into()));
            }
            let arg = arg.unwrap_or("");
            if kw == "TYPE" {
                if !f.kind.is_empty() {
                    return Err(err("second TYPE".into()));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    return Err(err(format!("unknown type {arg}")));
                }
                if arg == "counter" && !name.ends_with("_total") {
                    return Err(err("counter not named _total".into()));
                }
                f.kind = arg.to_string();
            } else {
                if !f.help.is_empty() {
                    return Err(err("second HELP".into()));
                }
                f.help = arg.to_string();
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(err("bad metric name".into()));
        }
        if current.as_deref() != Some(name) {
            return Err(err(
                "sample outside its family's block (no TYPE before it?)".into(),
            ));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(err)?;
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        let mut vt = rest.split(' ');
        let value = parse_value(vt.next().unwrap()).map_err(err)?;
        if let Some(ts) = vt.next() {
            ts.parse::<i64>()
                .map_err(|e| err(format!("timestamp: {e}")))?;
        }
        if vt.next().is_some() {
            return Err(err("trailing text".into()));
        }
        if !series.insert((name.to_string(), labels.clone())) {
            return Err(err("duplicate series".into()));
        }
        let f = fams.get_mut(name).unwrap();
        if f.kind.is_empty() {
            return Err(err("sample before TYPE".into()));
        }
        if f.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err("negative counter".into()));
        }
        f.samples.push((labels, value));
    }
    Ok(fams)
}

#[test]
fn the_parser_is_strict() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\\\"\"} 1\n";
    assert!(parse_exposition(ok).is_ok());
    for bad in [
        "a 1\n",                                      // no TYPE
        "# TYPE a counter\na 1\n",                    // counter without _total
        "# TYPE a gauge\na{l=\"x} 1\n",               // unterminated
        "# TYPE a gauge\na 1\na 2\n",                 // duplicate series
        "# TYPE a gauge\na one\n",                    // bad value
        "# TYPE a gauge\n# TYPE b gauge\nb 1\na 1\n", // a's samples after b
        "# TYPE a gauge\na 1",                        // no final newline
        "# TYPE a gauge\na{1x=\"v\"} 1\n",            // bad label name
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",      // second TYPE
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

fn value(f: &HashMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let fam = f.get(name).unwrap_or_else(|| panic!("no family {name}"));
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    fam.samples
        .iter()
        .find(|(l, _)| *l == want)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {:?}", fam.samples))
        .1
}

#[test]
fn metrics_parse_strictly_and_equal_the_kernel() {
    if !root_or_skip("metrics_parse_strictly_and_equal_the_kernel") {
        return;
    }
    let (lab, agent) = banned_lab("web-metrics");
    // Wait for a snapshot that holds what the kernel holds now.
    let (rules, elems, ()) = between_stable_reads(&lab.ns, || {
        std::thread::sleep(Duration::from_millis(100));
    });
    let (k4, kb4) = kernel_drop(&rules, "input", false);
    assert!(k4 >= 3, "{rules:?}");
    wait_status(&lab.ns, Duration::from_secs(10), |s| {
        drop_of(s, "input", "ip")["packets"] == k4
    });
    let r = http(&lab.ns, "GET", "/metrics").unwrap();
    assert_eq!(r.status, 200);
    let fams = parse_exposition(&r.text()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));

    assert_eq!(
        value(
            &fams,
            "fwagent_dropped_packets_total",
            &[("hook", "input"), ("family", "ipv4")]
        ),
        k4 as f64
    );
    assert_eq!(
        value(
            &fams,
            "fwagent_dropped_bytes_total",
            &[("hook", "input"), ("family", "ipv4")]
        ),
        kb4 as f64
    );
    let (f4, _) = kernel_drop(&rules, "forward", false);
    assert_eq!(
        value(
            &fams,
            "fwagent_dropped_packets_total",
            &[("hook", "forward"), ("family", "ipv4")]
        ),
        f4 as f64
    );
    assert_eq!(fams["fwagent_dropped_packets_total"].kind, "counter");
    assert_eq!(
        value(&fams, "fwagent_blocked_addresses", &[("family", "ipv4")]),
        elems.iter().filter(|e| e.set.ends_with('4')).count() as f64
    );
    assert_eq!(
        value(&fams, "fwagent_blocked_addresses", &[("family", "ipv6")]),
        0.0
    );
    assert_eq!(
        value(&fams, "fwagent_set_entries", &[("set", "banned4")]),
        1.0
    );
    assert_eq!(
        value(&fams, "fwagent_bans_total", &[("rule", "exim-ratelimit")]),
        1.0
    );
    assert_eq!(
        value(
            &fams,
            "fwagent_rule_hits_total",
            &[("rule", "exim-ratelimit")]
        ),
        3.0
    );
    let log = lab.log();
    let file = path_str(&log);
    assert_eq!(
        value(&fams, "fwagent_log_lines_read_total", &[("file", file)]),
        3.0
    );
    assert_eq!(
        value(
            &fams,
            "fwagent_log_lines_matched_total",
            &[("file", file), ("rule", "exim-ratelimit")]
        ),
        3.0
    );
    assert_eq!(
        value(&fams, "fwagent_log_position_bytes", &[("file", file)]),
        std::fs::metadata(&log).unwrap().len() as f64
    );
    assert_eq!(
        value(&fams, "fwagent_follower_errors_total", &[("file", file)]),
        0.0
    );
    assert_eq!(value(&fams, "fwagent_kernel_errors_total", &[]), 0.0);
    assert_eq!(value(&fams, "fwagent_table_reinstalls_total", &[]), 0.0);
    assert_eq!(value(&fams, "fwagent_table_present", &[]), 1.0);
    assert_eq!(value(&fams, "fwagent_table_protected", &[]), 1.0);
    assert_eq!(kernel_owned(&lab.ns, "fwagent"), Some(true));
    assert_eq!(value(&fams, "fwagent_up", &[]), 1.0);
    assert!(value(&fams, "fwagent_uptime_seconds", &[]) >= 0.0);
    assert_eq!(
        value(
            &fams,
            "fwagent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    drop(agent);
}

// ---- the dashboard in a real browser --------------------------------------------------------

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WD_PORT: u16 = 9515;

/// chromedriver inside the namespace; killed when dropped.
struct Driver {
    child: Child,
    ns: String,
}

impl Driver {
    fn start(ns: &NetNs) -> Driver {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, CHROMEDRIVER])
            .arg(format!("--port={WD_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let d = Driver {
            child,
            ns: ns.name.clone(),
        };
        let ready = wait_until(Duration::from_secs(20), || {
            raw_http_port(
                ns,
                WD_PORT,
                "GET /status HTTP/1.1\r\nHost: 127.0.0.1:9515\r\nConnection: close\r\n\r\n".into(),
            )
            .is_some_and(|r| r.status == 200)
        });
        assert!(ready, "chromedriver did not start");
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // chromedriver's browsers belong to the namespace; end any it left behind, by pid.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.to_string_lossy().contains("chromium") {
                    // SAFETY: kill(2) on a browser process this test started in its namespace.
                    unsafe {
                        libc::kill(pid.parse().unwrap_or(0), libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// A WebDriver session.
struct Session<'a> {
    ns: &'a NetNs,
    id: String,
}

impl<'a> Session<'a> {
    fn new(ns: &'a NetNs, profile: &std::path::Path) -> Session<'a> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1200,1500",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let r = json_request(ns, WD_PORT, "POST", "/session", &caps).expect("new session");
        let v = r.json();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Session { ns, id }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let r = json_request(
            self.ns,
            WD_PORT,
            method,
            &format!("/session/{}{path}", self.id),
            &body,
        )
        .expect("webdriver answer");
        let v = r.json();
        assert_eq!(r.status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    fn screenshot(&self, to: &std::path::Path) {
        let b64 = self.call("GET", "/screenshot", Value::Null);
        std::fs::write(to, base64_decode(b64.as_str().unwrap())).unwrap();
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = json_request(
            self.ns,
            WD_PORT,
            "DELETE",
            &format!("/session/{}", self.id),
            &Value::Null,
        );
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..data.len().saturating_sub(1)]);
    }
    out
}

/// What the page shows, read from the DOM (raw numbers from `data-value`).
const READ_PAGE: &str = r#"
const v = (id) => { const e = document.getElementById(id); return e ? e.dataset.value : null; };
const t = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
const row = document.getElementById('top-0');
return {
  refreshes: parseInt(document.body.dataset.refreshes || '0', 10),
  marker: window.__fwt_marker || null,
  blocked: v('blocked-total'),
  blocked_text: t('blocked-total'),
  dropped: v('dropped-packets'),
  dropped_text: t('dropped-packets'),
  input: v('dropped-input-packets'),
  top_target: t('top-0-target'),
  top_packets: v('top-0-packets'),
  top_rule: row ? row.children[4].textContent : null,
  top_times: row ? row.children[5].textContent : null,
  banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner').textContent,
  state: t('state'),
  overflow: document.documentElement.scrollWidth > window.innerWidth,
};
"#;

/// Whether a `data-value` read from the page holds the number `n`.
fn shows(v: &Value, n: u64) -> bool {
    v.as_str() == Some(n.to_string().as_str())
}

fn artifacts() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn dashboard_in_a_real_browser_shows_the_kernels_figures() {
    if !root_or_skip("dashboard_in_a_real_browser_shows_the_kernels_figures") {
        return;
    }
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "SKIP: dashboard_in_a_real_browser_shows_the_kernels_figures needs chromium and \
             chromium-driver (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let (lab, agent) = banned_lab("web-browser");
    let driver = Driver::start(&lab.ns);
    let profile = lab.dir.join("chromium-profile");
    let s = Session::new(&lab.ns, &profile);
    s.call("POST", "/url", json!({"url": "http://127.0.0.1:9180/"}));
    // A marker that a reload would wipe out.
    s.js("window.__fwt_marker = 'still here'; return true;");

    // The page's figures must equal the kernel's; traffic makes them move, then the page
    // must follow by itself (refresh every 1 s, no reload).
    let check = |round: &str| -> Value {
        let (rules, elems, ()) =
            between_stable_reads(&lab.ns, || std::thread::sleep(Duration::from_millis(100)));
        let want_dropped: u64 = rules.iter().map(|r| r.packets).sum();
        let want_blocked = elems.len() as u64;
        let hot = elems.iter().max_by_key(|e| e.packets).unwrap();
        let started = Instant::now();
        let mut page = Value::Null;
        while started.elapsed() < Duration::from_secs(20) {
            page = s.js(READ_PAGE);
            if shows(&page["dropped"], want_dropped)
                && shows(&page["blocked"], want_blocked)
                && shows(&page["top_packets"], hot.packets)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(
            page["dropped"],
            want_dropped.to_string(),
            "{round}: {page:#}"
        );
        assert_eq!(
            page["blocked"],
            want_blocked.to_string(),
            "{round}: {page:#}"
        );
        assert_eq!(page["top_target"], hot.target.as_str(), "{round}: {page:#}");
        assert_eq!(
            page["top_packets"],
            hot.packets.to_string(),
            "{round}: {page:#}"
        );
        assert_eq!(page["top_rule"], "exim-ratelimit", "{round}: {page:#}");
        assert_eq!(page["top_times"], "1", "{round}: {page:#}");
        assert_eq!(page["marker"], "still here", "{round}: the page reloaded");
        assert_eq!(page["banner"], "", "{round}: {page:#}");
        page
    };
    let first = check("first load");
    assert!(!lab.ping_from_peer(HOST4, 4));
    let second = check("after more drops");
    assert!(
        second["refreshes"].as_i64().unwrap() > first["refreshes"].as_i64().unwrap(),
        "refreshed in place"
    );
    assert_ne!(first["dropped"], second["dropped"], "the figure moved");
    assert_eq!(
        second["dropped_text"].as_str().unwrap().replace(',', ""),
        second["dropped"].as_str().unwrap(),
        "the visible text shows the same number"
    );
    let dir = artifacts();
    s.screenshot(&dir.join("dashboard.png"));

    // Readable on a phone: no sideways scrolling of the page itself.
    s.call(
        "POST",
        "/window/rect",
        json!({"width": 390, "height": 1300}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let phone = s.js(READ_PAGE);
    s.screenshot(&dir.join("dashboard-phone.png"));
    let widths = s.js(
        "return [...document.querySelectorAll('body *')]\
           .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)\
           .map(e => e.tagName + '#' + e.id + '.' + e.className + ':' + Math.round(e.getBoundingClientRect().right))\
           .slice(0, 10).concat(['inner:' + window.innerWidth]);",
    );
    assert_eq!(
        phone["overflow"], false,
        "the page is wider than a phone: {widths}"
    );

    // The agent goes away: the page says so and keeps the last figures.
    drop(agent);
    let started = Instant::now();
    let mut page = Value::Null;
    while started.elapsed() < Duration::from_secs(15) {
        page = s.js(READ_PAGE);
        if page["banner"]
            .as_str()
            .unwrap_or("")
            .contains("Cannot reach the agent")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        page["banner"]
            .as_str()
            .unwrap()
            .contains("Cannot reach the agent"),
        "{page:#}"
    );
    assert_eq!(page["dropped"], second["dropped"], "last figures kept");
    s.screenshot(&dir.join("dashboard-agent-gone.png"));
    drop(s);
    drop(driver);
}
