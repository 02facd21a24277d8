//! Built-in rules against the real daemon logs in ../shared/samples (README there says who is
//! who): every bot is banned, legitimate clients and servers are never even counted.
//!
//! Lines are fed the way `fwagent scan` feeds them: prefilter matcher first, then each
//! candidate rule, with the time read from the line by the rule's timestamp format (arrival
//! time, i.e. one fixed instant, for `sshd -E` lines which carry none).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fwagent::detect::{
    Detector, Extract, Matcher, NeverBan, Observation, Rule, TimeReader, builtin, rules,
};

fn samples() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        here.join("../shared/samples"),
        PathBuf::from("/work/shared/samples"),
    ] {
        if dir.join("README.md").exists() {
            return dir;
        }
    }
    panic!("samples directory not found (expected ../shared/samples)");
}

/// What the detector made of a set of files.
#[derive(Debug, Default)]
struct Outcome {
    /// (rule, ban key) → number of bans.
    banned: BTreeMap<(String, String), u32>,
    /// Every address that was counted at least once, per rule, with its hit count.
    counted: BTreeMap<(String, IpAddr), u32>,
}

impl Outcome {
    fn banned_keys(&self, rule: &str) -> BTreeSet<String> {
        self.banned
            .keys()
            .filter(|(r, _)| r == rule)
            .map(|(_, k)| k.clone())
            .collect()
    }
    fn hits(&self, rule: &str, ip: &str) -> u32 {
        let ip: IpAddr = ip.parse().unwrap();
        self.counted
            .get(&(rule.to_string(), ip))
            .copied()
            .unwrap_or(0)
    }
    fn ever_counted(&self, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        self.counted.keys().any(|(_, a)| *a == ip)
    }
}

fn run_rules(rules: Vec<Rule>, files: &[&str]) -> Outcome {
    let matcher = Matcher::all(&rules);
    let mut det = Detector::new(rules, NeverBan::default());
    let arrival = SystemTime::now();
    let mut out = Outcome::default();
    let mut ids = Vec::new();
    for f in files {
        let path = samples().join(f);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut times = TimeReader::new(mtime);
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            matcher.candidates(line, &mut ids);
            for &id in &ids {
                let rule = det.rules()[id].clone();
                let Extract::Host(ip) = rule.extract(line) else {
                    continue;
                };
                let now = times.read(rule.timestamp, line).unwrap_or(arrival);
                let name = rule.name.clone();
                match det.count(id, ip, now) {
                    // Lines during a ban still count as hits of the address; they just
                    // cannot ban it again.
                    Observation::Counted { .. } | Observation::Banned { .. } => {
                        *out.counted.entry((name, ip)).or_default() += 1;
                    }
                    Observation::Offence(o) => {
                        *out.counted.entry((name.clone(), ip)).or_default() += 1;
                        *out.banned.entry((name, o.key.to_string())).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn run(files: &[&str]) -> Outcome {
    run_rules(rules::builtins(), files)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const EXIM_SERVERS: [&str; 3] = ["198.51.100.25", "203.0.113.25", "2001:db8:25::25"];
const SSH_SERVERS: [&str; 3] = ["198.51.100.22", "203.0.113.22", "2001:db8:22::22"];
const IMAP_SERVERS: [&str; 3] = ["198.51.100.26", "203.0.113.26", "2001:db8:26::26"];

fn exim_case(file: &str, ratelimit_lines_per_bot: u32, auth_per_bot: u32) {
    let out = run(&[file]);
    assert_eq!(
        out.banned_keys("exim-ratelimit"),
        set(&["198.51.100.11", "198.51.100.12", "2001:db8:25::/64"]),
        "{file}"
    );
    for bot in ["198.51.100.11", "198.51.100.12", "2001:db8:25::66"] {
        assert_eq!(
            out.hits("exim-ratelimit", bot),
            ratelimit_lines_per_bot,
            "{file} {bot}"
        );
        // One AUTH LOGIN failure per ten messages per bot.
        assert_eq!(out.hits("exim-auth", bot), auth_per_bot, "{file} {bot}");
    }
    assert!(
        !out.ever_counted("203.0.113.20"),
        "{file}: legitimate client counted"
    );
    for s in EXIM_SERVERS {
        assert!(!out.ever_counted(s), "{file}: server {s} counted");
    }
    // Nothing but the Exim rules fires on an Exim log.
    assert!(
        out.counted
            .keys()
            .all(|(r, _)| r == "exim-ratelimit" || r == "exim-auth")
    );
}

#[test]
fn exim_mainlog_bans_the_three_bots_only() {
    exim_case("exim4-mainlog", 14, 3);
}

#[test]
fn exim_stock_selector_bans_the_three_bots_only() {
    exim_case("exim4-mainlog-stock-selector", 6, 2);
}

#[test]
fn exim_pid_millisec_ports_bans_the_three_bots_only() {
    exim_case("exim4-mainlog-pid-millisec", 6, 2);
}

#[test]
fn exim_auth_failures_reach_a_lowered_threshold() {
    // With the default 5 in 10 min, 3 failures per bot are not enough; at 3 they are.
    let mut spec = builtin::builtin("exim-auth").unwrap();
    spec.max_hits = 3;
    let rule = Rule::compile(&spec, &|_| String::new()).unwrap();
    let out = run_rules(vec![rule], &["exim4-mainlog"]);
    assert_eq!(
        out.banned_keys("exim-auth"),
        set(&["198.51.100.11", "198.51.100.12", "2001:db8:25::/64"])
    );
}

fn sshd_case(files: &[&str], hits_per_bot: u32) {
    let out = run(files);
    assert_eq!(
        out.banned_keys("sshd"),
        set(&["198.51.100.31", "198.51.100.32", "2001:db8:22::/64"]),
        "{files:?}"
    );
    for bot in ["198.51.100.31", "198.51.100.32", "2001:db8:22::66"] {
        assert_eq!(out.hits("sshd", bot), hits_per_bot, "{files:?} {bot}");
    }
    // The legitimate client: one wrong password per run (two runs), then key logins.
    assert_eq!(out.hits("sshd", "203.0.113.40"), 2, "{files:?}");
    assert!(!out.banned.keys().any(|(_, k)| k == "203.0.113.40"));
    for s in SSH_SERVERS {
        assert!(!out.ever_counted(s), "{files:?}: server {s} counted");
    }
}

#[test]
fn sshd_auth_log_rfc3339() {
    // Per bot: 10 root + 6 invalid-user + 2 www-data passwords, 4 Invalid user
    // connections, 2 banner exchanges, 2 old-KEX negotiations.
    sshd_case(&["sshd-auth.log"], 26);
}

#[test]
fn sshd_traditional_syslog_verbose() {
    sshd_case(&["sshd-auth-traditional-verbose.log"], 13);
}

#[test]
fn sshd_dash_e_bare_messages() {
    sshd_case(&["sshd-E.log"], 13);
}

#[test]
fn sshd_pam_lines_never_add_to_the_count() {
    // The same attempts logged by sshd (-E file) and PAM (syslog companion): each counts once.
    sshd_case(&["sshd-E.log", "sshd-E-companion-pam-auth.log"], 13);
    let pam_only = run(&["sshd-E-companion-pam-auth.log"]);
    assert!(pam_only.counted.is_empty(), "{:?}", pam_only.counted);
}

#[test]
fn dovecot_bans_both_bots_not_alice() {
    let out = run(&["dovecot.log"]);
    assert_eq!(
        out.banned_keys("dovecot"),
        set(&["198.51.100.41", "2001:db8:26::/64"])
    );
    // 20 attempts each, one summary line per failed connection (auth: lines not counted).
    assert_eq!(out.hits("dovecot", "198.51.100.41"), 20);
    assert_eq!(out.hits("dovecot", "2001:db8:26::66"), 19);
    assert!(!out.ever_counted("203.0.113.50"));
    for s in IMAP_SERVERS {
        assert!(!out.ever_counted(s), "server {s} counted");
    }
}

#[test]
fn prefilter_never_hides_a_matching_line() {
    // Every line any built-in pattern matches must also pass that rule's prefilter.
    let rules = rules::builtins();
    let matcher = Matcher::all(&rules);
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(samples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        for line in data.split(|&b| b == b'\n') {
            matcher.candidates(line, &mut ids);
            for (id, rule) in rules.iter().enumerate() {
                if rule.extract(line) != Extract::NoMatch {
                    assert!(
                        ids.contains(&id),
                        "{}: {} matches but is filtered: {}",
                        path.display(),
                        rule.name,
                        String::from_utf8_lossy(line)
                    );
                }
            }
        }
    }
}
