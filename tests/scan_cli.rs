//! `fwagent scan` run as a user runs it: the built binary on the real samples, checking the
//! JSON report and exit codes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

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
    panic!("samples directory not found");
}

/// A fresh directory per test under the target dir.
fn tempdir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("scan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fwagent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fwagent"))
        .args(args)
        .env("FWAGENT_LOG", "warn")
        .output()
        .expect("run fwagent")
}

fn scan_json(args: &[&str]) -> Value {
    let mut all = vec!["scan", "--json"];
    all.extend_from_slice(args);
    let out = fwagent(&all);
    assert!(
        out.status.success(),
        "fwagent {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn offenders(v: &Value) -> BTreeSet<(String, String, u64)> {
    v["offenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["rule"].as_str().unwrap().to_string(),
                o["address"].as_str().unwrap().to_string(),
                o["hits"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn rule<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {v}"))
}

fn sample(name: &str) -> String {
    samples().join(name).display().to_string()
}

#[test]
fn exim_mainlog_json() {
    let v = scan_json(&[&sample("exim4-mainlog")]);
    let want: BTreeSet<_> = [
        ("exim-ratelimit", "198.51.100.11", 14),
        ("exim-ratelimit", "198.51.100.12", 14),
        ("exim-ratelimit", "2001:db8:25::/64", 14),
    ]
    .iter()
    .map(|(r, a, h)| (r.to_string(), a.to_string(), *h))
    .collect();
    assert_eq!(offenders(&v), want);
    assert_eq!(v["lines"], 336);
    let r = rule(&v, "exim-ratelimit");
    assert_eq!(r["lines"], 336);
    assert_eq!(r["matched"], 42);
    assert_eq!(r["offenders"], 3);
    assert_eq!(rule(&v, "exim-auth")["matched"], 9);
    assert_eq!(rule(&v, "sshd")["matched"], 0);
}

#[test]
fn all_samples_together_ban_bots_only() {
    let files: Vec<String> = [
        "exim4-mainlog",
        "exim4-mainlog-stock-selector",
        "exim4-mainlog-pid-millisec",
        "sshd-auth.log",
        "sshd-auth-traditional-verbose.log",
        "sshd-E.log",
        "sshd-E-companion-pam-auth.log",
        "dovecot.log",
    ]
    .iter()
    .map(|f| sample(f))
    .collect();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let v = scan_json(&args);
    let got: BTreeSet<(String, String)> =
        offenders(&v).into_iter().map(|(r, a, _)| (r, a)).collect();
    let want: BTreeSet<(String, String)> = [
        ("exim-ratelimit", "198.51.100.11"),
        ("exim-ratelimit", "198.51.100.12"),
        ("exim-ratelimit", "2001:db8:25::/64"),
        // The three Exim captures were minutes apart: 3 + 2 + 2 AUTH failures per bot would
        // reach exim-auth's 5 in 10 minutes, but exim-ratelimit banned the bots first (24 h),
        // and lines from a banned address are not counted again by any rule.
        ("sshd", "198.51.100.31"),
        ("sshd", "198.51.100.32"),
        ("sshd", "2001:db8:22::/64"),
        ("dovecot", "198.51.100.41"),
        ("dovecot", "2001:db8:26::/64"),
    ]
    .iter()
    .map(|(r, a)| (r.to_string(), a.to_string()))
    .collect();
    assert_eq!(got, want);
    let total: u64 = 336 + 102 + 238 + 214 + 156 + 80 + 38 + 87;
    assert_eq!(v["lines"], total);
}

#[test]
fn rule_selection_and_human_output() {
    let v = scan_json(&["--rule", "sshd", &sample("exim4-mainlog")]);
    assert!(offenders(&v).is_empty());
    assert_eq!(v["rules"].as_array().unwrap().len(), 1);
    let out = fwagent(&["scan", &sample("dovecot.log")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lines/s"), "{text}");
    assert!(text.contains("198.51.100.41"), "{text}");
    assert!(!text.contains("203.0.113.50"), "{text}");
    let out = fwagent(&["scan", "--rule", "nope", &sample("dovecot.log")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown rule \"nope\""));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = fwagent(&["scan", "/nonexistent/fwagent-test.log"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/fwagent-test.log"), "{err}");
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn config_allow_list_custom_rule_and_bad_regex() {
    let dir = tempdir("config");
    let cfg = dir.join("fwagent.toml");
    std::fs::write(
        &cfg,
        r#"
[ban]
allow = ["198.51.100.11", "2001:db8:25::/48"]

[rules.exim-ratelimit]
max_hits = 20

[rules.my-app]
patterns = ['^\S+ \S+ myapp: login failed from <HOST>$']
max_hits = 2
"#,
    )
    .unwrap();
    let log = dir.join("mixed.log");
    let mut text = std::fs::read_to_string(samples().join("exim4-mainlog")).unwrap();
    for _ in 0..2 {
        text.push_str("2026-12-03 16:20:00 myapp: login failed from 203.0.113.66\n");
    }
    std::fs::write(&log, text).unwrap();
    let v = scan_json(&["--config", cfg.to_str().unwrap(), log.to_str().unwrap()]);
    let got: BTreeSet<(String, String)> =
        offenders(&v).into_iter().map(|(r, a, _)| (r, a)).collect();
    // Allow-listed bots are protected; the others are under max_hits 20 (14 hits each)...
    assert_eq!(
        got,
        [("my-app".to_string(), "203.0.113.66".to_string())]
            .into_iter()
            .collect()
    );
    assert_eq!(rule(&v, "exim-ratelimit")["protected"], 28);

    // A bad regex names the file, line and key.
    std::fs::write(
        &cfg,
        "[rules.broken]\nmax_hits = 2\npatterns = ['from (<HOST>']\n",
    )
    .unwrap();
    let out = fwagent(&[
        "scan",
        "--config",
        cfg.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3: key rules.broken.patterns", cfg.display())),
        "{err}"
    );
}

#[test]
fn hostile_bytes_and_huge_lines() {
    let dir = tempdir("hostile");
    let log = dir.join("garbage.log");
    let mut data: Vec<u8> = Vec::new();
    data.extend_from_slice(b"\xff\xfe\x00 binary\n");
    // 20 MiB without a newline, then a normal offending line.
    data.extend(std::iter::repeat_n(b'A', 20 << 20));
    data.push(b'\n');
    for _ in 0..3 {
        data.extend_from_slice(
            b"2026-12-03 16:13:57 H=[198.51.100.9] rejected connection in \"connect\" ACL: Rate limited: 198.51.100.9\n",
        );
    }
    // Last line without a newline.
    data.extend_from_slice(
        b"2026-12-03 16:13:58 H=[198.51.100.9] rejected x: Rate limited: 198.51.100.9",
    );
    std::fs::write(&log, &data).unwrap();
    let v = scan_json(&[log.to_str().unwrap()]);
    assert_eq!(v["lines"], 6);
    assert_eq!(rule(&v, "exim-ratelimit")["matched"], 4);
    let o = offenders(&v);
    assert_eq!(
        o.into_iter().map(|(_, a, h)| (a, h)).collect::<Vec<_>>(),
        vec![("198.51.100.9".to_string(), 4)]
    );
}

#[test]
fn offenders_match_the_generators_truth() {
    // gen-logs.py writes the addresses with >= 3 "Rate limited" lines; with a window wider
    // than the log, exim-ratelimit must find exactly those (IPv6 by /64).
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(script) = [
        here.join("../shared/tools/gen-logs.py"),
        PathBuf::from("/work/shared/tools/gen-logs.py"),
    ]
    .into_iter()
    .find(|p| p.exists()) else {
        eprintln!("SKIP: offenders_match_the_generators_truth needs ../shared/tools/gen-logs.py");
        return;
    };
    let dir = tempdir("truth");
    let log = dir.join("exim.log");
    let truth = dir.join("exim.truth");
    let status = Command::new("python3")
        .arg(&script)
        .args(["exim", "-n", "200000", "--seed", "7", "-o"])
        .arg(&log)
        .arg("--truth")
        .arg(&truth)
        .stdout(std::process::Stdio::null())
        .status();
    let Ok(status) = status else {
        eprintln!("SKIP: offenders_match_the_generators_truth needs python3");
        return;
    };
    assert!(status.success());
    let cfg = dir.join("wide.toml");
    std::fs::write(&cfg, "[rules.exim-ratelimit]\nfind_time = \"30d\"\n").unwrap();
    let v = scan_json(&[
        "--config",
        cfg.to_str().unwrap(),
        "--rule",
        "exim-ratelimit",
        log.to_str().unwrap(),
    ]);
    let got: BTreeSet<String> = offenders(&v).into_iter().map(|(_, a, _)| a).collect();
    let want: BTreeSet<String> = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|a| match a.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => {
                let net = ipnet::Ipv6Net::new(v6, 64).unwrap().trunc();
                net.to_string()
            }
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    assert_eq!(v["lines"], 200_000);
}
