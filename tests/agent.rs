//! `fwagent run` end to end: real sample lines appended to real files, the real kernel in a
//! throwaway network namespace, `nft -j` as the oracle. Needs root; each test skips with a
//! visible message otherwise.
//!
//! Run: `cargo test --test agent` (as root). Timing figures (flush → restore) are printed
//! with `--nocapture`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use common::agent::{Elem, Lab, SOON, peer, poll, rate_limited, sample_rate_limited};
use common::netns::root_or_skip;
use fwagent::control::Request;

const DAY: u64 = 86_400;
/// Remaining-time checks allow this much (nft rounds to seconds; the machine is loaded).
const SLACK: u64 = 2;

/// The bots of the Exim sample as the kernel lists them: IPv4 addresses and the IPv6 /64.
fn sample_bots() -> BTreeSet<(String, String)> {
    [
        ("banned4", "198.51.100.11"),
        ("banned4", "198.51.100.12"),
        ("banned6", "2001:db8:25::"),
    ]
    .iter()
    .map(|(s, v)| (s.to_string(), v.to_string()))
    .collect()
}

fn as_set(els: &[Elem]) -> BTreeSet<(String, String)> {
    els.iter().map(|e| (e.set.clone(), e.val.clone())).collect()
}

/// Appends the whole Exim sample (deliveries, the legitimate client, the bots' rejected
/// RCPTs) in chunks of 20 lines, as Exim would write it over time.
fn append_sample(lab: &Lab) {
    let text = std::fs::read_to_string("/work/shared/samples/exim4-mainlog").expect("sample");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    for chunk in lines.chunks(20) {
        lab.append_main(chunk);
    }
}

/// Waits until exactly the sample's bots are banned, then returns the elements.
fn wait_sample_bans(lab: &Lab) -> Vec<Elem> {
    let mut els = Vec::new();
    let ok = poll(SOON, || {
        els = lab.elements();
        as_set(&els) == sample_bots()
    });
    assert!(
        ok,
        "expected the sample's bots banned, kernel has {:?}\n{}",
        as_set(&els),
        lab.log()
    );
    els
}

/// An interface in the lab's namespace to put "local" addresses on (a veth pair with both
/// ends in the namespace: the dummy module is not available everywhere).
fn local_link(lab: &Lab) {
    lab.ns
        .ip(&["link", "add", "fw0", "type", "veth", "peer", "name", "fw1"]);
    lab.ns.ip(&["link", "set", "fw0", "up"]);
    lab.ns.ip(&["link", "set", "fw1", "up"]);
}

fn elapsed_secs(since: Instant) -> u64 {
    since.elapsed().as_secs()
}

#[test]
fn sample_bots_are_banned_for_24h_and_nobody_else() {
    if !root_or_skip("sample_bots_are_banned_for_24h_and_nobody_else") {
        return;
    }
    let mut lab = Lab::new();
    let clients = peer(&lab);
    let bot_pings = || clients.ping(&["-I", "198.51.100.11", "198.51.100.25"]);
    let client_pings = || clients.ping(&["-I", "203.0.113.20", "203.0.113.25"]);
    assert!(bot_pings() && client_pings(), "lab network does not work");
    // The embedded default configuration (24 h, 3 hits in 1 h), following our file.
    lab.start_default();
    append_sample(&lab);
    let els = wait_sample_bans(&lab);
    // The bot's packets are dropped and counted; the legitimate client still gets through.
    assert!(!bot_pings(), "banned bot still reaches the server");
    assert!(client_pings(), "legitimate client blocked");
    assert!(lab.elem("198.51.100.11").unwrap().packets >= 1);
    // Every line was read, and the three bans were the only ones.
    let lines = std::fs::read_to_string("/work/shared/samples/exim4-mainlog")
        .unwrap()
        .lines()
        .count() as u64;
    assert!(poll(SOON, || lab.source_lines() == lines));
    assert_eq!(
        as_set(&lab.elements()),
        sample_bots(),
        "legitimate client or servers banned"
    );
    for e in &els {
        assert_eq!(e.timeout, Some(DAY), "{e:?}");
        let exp = e.expires.expect("expiry");
        assert!((DAY - 10..=DAY).contains(&exp), "{e:?}");
    }
    assert_eq!(lab.log_count(" banned "), 3, "{}", lab.log());
    let st = lab.status();
    assert_eq!(st["active_bans"], 3);
    assert_eq!(st["rules"][0]["name"], "exim-ratelimit");
    assert_eq!(st["rules"][0]["bans"], 3);
    assert_eq!(st["rules"][0]["hits"], 42, "{st}");
    assert_eq!(st["last_ban"]["rule"], "exim-ratelimit");
}

#[test]
fn only_the_rate_limited_lines_in_order_ban_the_bots() {
    if !root_or_skip("only_the_rate_limited_lines_in_order_ban_the_bots") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    // One line per write: each bot is banned on its third line, not before.
    let lines = sample_rate_limited();
    assert_eq!(lines.len(), 42);
    for (i, l) in lines.iter().enumerate() {
        lab.append_main(std::slice::from_ref(l));
        if i == 1 {
            lab.wait_hits("exim-ratelimit", 2);
            assert!(lab.elements().is_empty(), "banned after two lines");
        }
    }
    wait_sample_bans(&lab);
    lab.wait_hits("exim-ratelimit", 42);
    assert_eq!(as_set(&lab.elements()), sample_bots());
}

#[test]
fn kill9_restart_keeps_kernel_bans_and_resumes_at_checkpoint() {
    if !root_or_skip("kill9_restart_keeps_kernel_bans_and_resumes_at_checkpoint") {
        return;
    }
    let mut lab = Lab::new();
    let bot = peer(&lab);
    lab.start_default();
    append_sample(&lab);
    // Two lines of a fourth address: below the threshold of 3.
    lab.append_main(&rate_limited("203.0.113.77", 2));
    wait_sample_bans(&lab);
    lab.wait_hits("exim-ratelimit", 44);
    // The bot keeps knocking: its element counts dropped packets.
    assert!(!bot.ping(&["-I", "198.51.100.11", "198.51.100.25"]));
    // The checkpoint is committed by the store thread right after the batch (an fsync);
    // give it a moment before the hard kill.
    std::thread::sleep(Duration::from_millis(500));
    let before = lab.elements();
    assert!(before.iter().any(|e| e.packets > 0), "{before:?}");
    let t0 = Instant::now();
    lab.kill9();
    // Bans outlive the agent: the table has persist, and the kernel cleared its owner flag
    // when the owning socket died (so a restarted agent can claim it again).
    assert_eq!(as_set(&lab.elements()), sample_bots());
    let listing = lab.nft(&["list", "table", "inet", "fwagent"]);
    assert!(!listing.contains("owner"), "{listing}");
    // Let time pass so a re-added element (expiry reset) would show.
    std::thread::sleep(Duration::from_secs(3));
    lab.start_default();
    let after = lab.elements();
    let gone = elapsed_secs(t0);
    assert_eq!(as_set(&after), sample_bots(), "{}", lab.log());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.val, a.val);
        // Same element: same configured timeout, and the clock kept running.
        assert_eq!(a.timeout, b.timeout, "element re-added: {b:?} → {a:?}");
        assert!(a.packets >= b.packets, "counter reset: {b:?} → {a:?}");
        let (eb, ea) = (b.expires.unwrap(), a.expires.unwrap());
        assert!(
            ea + gone <= eb + SLACK,
            "expiry reset by the restart: {eb} → {ea} after {gone} s"
        );
    }
    assert!(
        !lab.log().contains("restored bans"),
        "restart re-added bans:\n{}",
        lab.log()
    );
    // The store still knows the bans and why.
    let list = lab.list();
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter().all(|b| b["rule"] == "exim-ratelimit"),
        "{list:?}"
    );
    // Old lines are not read again: 203.0.113.77 had 2 hits before the kill; one more line
    // after the restart must not ban it (the window starts empty), three must.
    lab.append_main(&rate_limited("203.0.113.77", 1));
    lab.wait_hits("exim-ratelimit", 1);
    assert_eq!(lab.source_lines(), 1, "old lines re-read after restart");
    assert!(
        lab.elem("203.0.113.77").is_none(),
        "old lines counted again"
    );
    lab.append_main(&rate_limited("203.0.113.77", 2));
    let e = lab.wait_banned("203.0.113.77");
    assert_eq!(e.timeout, Some(DAY));
    assert_eq!(lab.source_lines(), 3);
}

#[test]
fn reboot_restores_bans_with_remaining_time() {
    if !root_or_skip("reboot_restores_bans_with_remaining_time") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default(); // protect = true: owner + persist on this kernel
    append_sample(&lab);
    let auto = wait_sample_bans(&lab);
    let r = lab.control(&Request::Ban {
        targets: vec!["198.51.100.99".into()],
        seconds: Some(600),
        force: false,
    });
    assert!(r.ok, "{}", r.message);
    lab.wait_banned("198.51.100.99");
    // What the kernel says just before the "reboot", and when.
    let before = lab.elements();
    let t0 = Instant::now();
    assert_eq!(before.len(), auto.len() + 1);
    lab.stop();
    // With the agent gone the kernel dropped the owner flag (persist keeps the table), so
    // anyone may delete it now: that is our "reboot".
    lab.nft(&["delete", "table", "inet", "fwagent"]);
    assert!(lab.kernel().is_none());
    std::thread::sleep(Duration::from_secs(3));
    lab.start_default();
    let after = lab.elements();
    let passed = t0.elapsed().as_secs_f64();
    assert!(lab.log().contains("restored bans"), "{}", lab.log());
    let mut want = sample_bots();
    want.insert(("banned4".into(), "198.51.100.99".into()));
    assert_eq!(as_set(&after), want);
    let mut worst: f64 = 0.0;
    for b in &before {
        let a = after.iter().find(|a| a.val == b.val).unwrap();
        // nft prints whole seconds: each reading is up to 1 s low.
        let expected = b.expires.unwrap() as f64 - passed;
        let got = a.expires.unwrap() as f64;
        worst = worst.max((got - expected).abs());
        assert!(
            (got - expected).abs() <= SLACK as f64,
            "{}: remaining {got} s, expected {expected:.1} ± {SLACK} (was {} s {passed:.1} s ago)",
            b.val,
            b.expires.unwrap()
        );
        // Restored with the remaining time, not a fresh full ban.
        assert!(a.timeout.unwrap() < b.timeout.unwrap(), "{b:?} → {a:?}");
    }
    println!(
        "reboot: {} bans restored after {passed:.1} s down; remaining time off by at most {worst:.1} s",
        after.len()
    );
}

/// Unix time now, in seconds.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Flushes the namespace's whole ruleset `n` times. For each, returns how long the agent
/// took from the start of `nft flush ruleset` to its log line saying everything is
/// re-installed (its own timestamp: our polling and `nft` listing cost are not in it).
fn flush_and_time(lab: &Lab, table: &str, n: usize) -> Vec<Duration> {
    let elements = || lab.kernel_table(table).unwrap_or_default();
    let mut times = Vec::new();
    for _ in 0..n {
        let before = elements();
        assert!(!before.is_empty());
        let done_before = lab.log_count("re-installed");
        let (t, wall) = (Instant::now(), unix_now());
        lab.nft(&["flush", "ruleset"]);
        let flushed = t.elapsed();
        let back = poll(Duration::from_secs(5), || {
            as_set(&elements()) == as_set(&before)
        });
        let seen = t.elapsed();
        assert!(
            back,
            "bans not back 5 s after nft flush ruleset:\n{}",
            lab.log()
        );
        lab.wait_log("re-installed", done_before + 1, SOON);
        let log = lab.log();
        let line = log
            .lines()
            .filter(|l| l.contains("re-installed"))
            .nth(done_before)
            .unwrap();
        let took = Duration::from_secs_f64((log_time(line) - wall).max(0.0));
        println!(
            "flush ruleset → agent re-installed all {} bans {:.0} ms after the flush started \
             (nft flush took {:.0} ms; seen back by polling after {:.0} ms)",
            before.len(),
            took.as_secs_f64() * 1000.0,
            flushed.as_secs_f64() * 1000.0,
            seen.as_secs_f64() * 1000.0
        );
        times.push(took);
    }
    times
}

#[test]
fn flush_ruleset_without_protection_is_repaired_within_1s() {
    if !root_or_skip("flush_ruleset_without_protection_is_repaired_within_1s") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[firewall]\nprotect = false\n");
    lab.start_config();
    assert_eq!(lab.status()["table_owned"], false);
    append_sample(&lab);
    let before = wait_sample_bans(&lab);
    let times = flush_and_time(&lab, "fwagent", 3);
    let worst = times.iter().max().unwrap();
    // Measured from the start of `nft flush ruleset` (so it includes nft's own work) to the
    // agent's log line; the budget is 1 s.
    assert!(
        *worst < Duration::from_secs(1),
        "restore took {worst:?} (> 1 s)"
    );
    let after = lab.elements();
    for b in &before {
        let a = after.iter().find(|a| a.val == b.val).unwrap();
        // Restored with the remaining time, not a fresh 24 h.
        assert!(a.expires.unwrap() <= b.expires.unwrap(), "{b:?} → {a:?}");
    }
    assert!(lab.status()["reinstalls"].as_u64().unwrap() >= 3);
    assert!(lab.log().contains("re-installed"), "{}", lab.log());
    // Partial damage is repaired too: someone deletes our input chain.
    lab.nft(&["delete", "chain", "inet", "fwagent", "input"]);
    let back = poll(Duration::from_secs(5), || {
        lab.ns
            .output("nft", &["list", "chain", "inet", "fwagent", "input"])
            .status
            .success()
    });
    assert!(back, "input chain not re-created:\n{}", lab.log());
    assert_eq!(as_set(&lab.elements()), sample_bots());
}

#[test]
fn flush_ruleset_with_protection_leaves_the_table_alone() {
    if !root_or_skip("flush_ruleset_with_protection_leaves_the_table_alone") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    assert_eq!(lab.status()["table_owned"], true);
    append_sample(&lab);
    let before = wait_sample_bans(&lab);
    let listing = lab.nft(&["list", "table", "inet", "fwagent"]);
    assert!(listing.contains("flags owner"), "{listing}");
    // Someone else's firewall reload: succeeds, and skips our table.
    lab.nft(&["flush", "ruleset"]);
    let after = lab.elements();
    assert_eq!(as_set(&after), as_set(&before));
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.timeout, b.timeout, "element replaced: {b:?} → {a:?}");
    }
    // Nor can anyone else delete it or touch its elements.
    for args in [
        &["delete", "table", "inet", "fwagent"][..],
        &[
            "delete",
            "element",
            "inet",
            "fwagent",
            "banned4",
            "{ 198.51.100.11 }",
        ][..],
    ] {
        let out = lab.ns.output("nft", args);
        assert!(
            !out.status.success(),
            "nft {args:?} succeeded on an owned table"
        );
    }
    assert_eq!(as_set(&lab.elements()), sample_bots());
    // The agent had nothing to repair.
    assert_eq!(lab.status()["reinstalls"], 0);
}

#[test]
fn sighup_reload_unbans_newly_allow_listed_and_applies_max_hits() {
    if !root_or_skip("sighup_reload_unbans_newly_allow_listed_and_applies_max_hits") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[firewall]\nprotect = false\n");
    lab.start_config();
    lab.append_main(&rate_limited("198.51.100.11", 3));
    lab.append_main(&rate_limited("198.51.100.12", 3));
    lab.wait_banned("198.51.100.11");
    let kept = lab.wait_banned("198.51.100.12");
    // New config: .11 allow-listed, 5 hits needed.
    lab.write_config(
        "[firewall]\nprotect = false\n[ban]\nallow = [\"198.51.100.11\"]\n\
         [rules.exim-ratelimit]\nmax_hits = 5\n",
    );
    lab.hup();
    lab.wait_log("configuration reloaded", 1, SOON);
    lab.wait_unbanned("198.51.100.11", SOON);
    assert!(
        lab.log().contains("now allow-listed or local"),
        "{}",
        lab.log()
    );
    // The other ban is untouched (same element, clock running).
    let still = lab.elem("198.51.100.12").expect("other ban kept");
    assert_eq!(still.timeout, kept.timeout);
    assert!(lab.list().iter().all(|b| b["target"] != "198.51.100.11/32"));
    // max_hits = 5: four lines are not enough, the fifth is.
    let hits = lab.rule_hits("exim-ratelimit");
    lab.append_main(&rate_limited("203.0.113.5", 4));
    lab.wait_hits("exim-ratelimit", hits + 4);
    assert!(lab.elem("203.0.113.5").is_none(), "banned after 4 of 5");
    lab.append_main(&rate_limited("203.0.113.5", 1));
    lab.wait_banned("203.0.113.5");
    // The allow-listed address floods: never banned.
    lab.append_main(&rate_limited("198.51.100.11", 20));
    lab.append_main(&rate_limited("203.0.113.6", 5)); // a marker processed after the flood
    lab.wait_banned("203.0.113.6");
    assert!(lab.elem("198.51.100.11").is_none());
    // A broken config on reload is reported and changes nothing.
    std::fs::write(lab.config_path(), "[firewall]\nipv6_prefix = 7\n").unwrap();
    lab.hup();
    lab.wait_log("reload failed", 1, SOON);
    assert!(
        lab.log().contains("key firewall.ipv6_prefix"),
        "{}",
        lab.log()
    );
    assert!(lab.try_wait().is_none(), "agent died on a bad reload");
    assert_eq!(
        lab.banned(),
        ["198.51.100.12", "203.0.113.5", "203.0.113.6"]
    );
}

#[test]
fn repeat_offenders_get_longer_bans_and_unban_forgives() {
    if !root_or_skip("repeat_offenders_get_longer_bans_and_unban_forgives") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config(
        "[firewall]\nprotect = false\n[escalation]\nfactor = 2.0\n\
         [rules.exim-ratelimit]\nban_time = \"2s\"\n",
    );
    lab.start_config();
    let a = "198.51.100.11";
    // Like the sample's bots: more lines than the threshold arrive at once (a ban only
    // takes effect after them). That is one ban, not two.
    lab.append_main(&rate_limited(a, 6));
    let first = lab.wait_banned(a);
    assert_eq!(first.timeout, Some(2));
    lab.wait_hits("exim-ratelimit", 6);
    lab.wait_unbanned(a, SOON);
    // Expired: no longer counted or listed as active. The kernel's expiry (jiffies) and the
    // agent's clock can differ by a few milliseconds, so allow a short bounded wait.
    assert!(
        poll(Duration::from_secs(1), || lab.status()["active_bans"] == 0),
        "expired ban still active: {}",
        lab.status()
    );
    assert!(lab.list().is_empty());
    // Second offence: twice as long.
    lab.append_main(&rate_limited(a, 3));
    let second = lab.wait_banned(a);
    assert_eq!(
        second.timeout,
        Some(4),
        "second ban should be 2 s × 2 (one earlier ban)"
    );
    let listed = lab.list();
    assert_eq!(listed[0]["times_banned"], 2, "{listed:?}");
    // The history survives a restart (it is in the store).
    lab.stop();
    lab.start_config();
    lab.wait_unbanned(a, SOON);
    lab.append_main(&rate_limited(a, 3));
    let third = lab.wait_banned(a);
    assert_eq!(
        third.timeout,
        Some(8),
        "third ban should be 2 s × 2² (history kept across the restart)"
    );
    // Unban through the agent: lifted, and the history is forgiven.
    let r = lab.control(&Request::Unban {
        targets: vec![a.into()],
    });
    assert!(r.ok, "{}", r.message);
    assert!(lab.elem(a).is_none(), "unban did not remove the element");
    lab.append_main(&rate_limited(a, 3));
    let fourth = lab.wait_banned(a);
    assert_eq!(fourth.timeout, Some(2), "unban should clear the history");
}

#[test]
fn dry_run_touches_neither_kernel_nor_state() {
    if !root_or_skip("dry_run_touches_neither_kernel_nor_state") {
        return;
    }
    let mut lab = Lab::new();
    let cfg = lab.write_config("");
    let cfg = cfg.display().to_string();
    // A table with one ban made by the CLI, as an admin might have.
    lab.ns.fwagent_ok(
        &[],
        &["ban", "--config", &cfg, "198.51.100.99", "--for", "1h"],
    );
    let before = lab.nft(&["-j", "list", "ruleset"]);
    let before_els = lab.elements();
    lab.start(&["-c", &cfg, "--dry-run"]);
    append_sample(&lab);
    lab.wait_log("would ban", 3, SOON);
    // The bot goes on in a later batch: a real run would have banned it already.
    lab.append_main(&rate_limited("198.51.100.11", 3));
    // A marker bot last: once it is reported, every earlier line was processed.
    lab.append_main(&rate_limited("203.0.113.9", 3));
    lab.wait_log("203.0.113.9/32", 1, SOON);
    let log = lab.log();
    // Each bot once, for what a real run would give it (1 day, first offence): the
    // sample's 14 lines per bot are one ban, not four escalating ones.
    for bot in [
        "198.51.100.11/32",
        "198.51.100.12/32",
        "2001:db8:25::/64",
        "203.0.113.9/32",
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("would ban") && l.contains(bot))
            .collect();
        assert_eq!(lines.len(), 1, "{bot}:\n{log}");
        assert!(
            lines[0].contains("duration=1d") && lines[0].contains("repeat=0"),
            "{}",
            lines[0]
        );
    }
    assert_eq!(lab.log_count("would ban"), 4, "{log}");
    assert_eq!(lab.elements().len(), before_els.len());
    let after_els = lab.elements();
    for (b, a) in before_els.iter().zip(&after_els) {
        assert_eq!((&a.val, a.timeout), (&b.val, b.timeout));
    }
    lab.stop();
    assert!(
        lab.log().contains("dry run: nothing was banned"),
        "{}",
        lab.log()
    );
    // Same ruleset except the running expiry clocks.
    let strip = |s: &str| {
        s.split("\"expires\": ")
            .map(|p| p.trim_start_matches(|c: char| c.is_ascii_digit()))
            .collect::<String>()
    };
    assert_eq!(strip(&lab.nft(&["-j", "list", "ruleset"])), strip(&before));
    assert!(
        !lab.state_dir().exists(),
        "dry run created the state dir {}",
        lab.state_dir().display()
    );
}

#[test]
fn config_errors_name_file_line_key_and_exit_2() {
    if !root_or_skip("config_errors_name_file_line_key_and_exit_2") {
        return;
    }
    let mut lab = Lab::new();
    let cases: [(&str, &str); 4] = [
        // (config body, expected text after the path)
        (
            "[firewall]\nprotect = false\nipv6_prefix = 40\n",
            ":3: key firewall.ipv6_prefix",
        ),
        ("[ban]\n\ntime = \"3 fortnights\"\n", ":3: key ban.time"),
        (
            "[[source]]\npath = \"/tmp/x\"\nrules = [\"exim-ratelimitt\"]\n",
            ":3: key source.0.rules",
        ),
        (
            "[rules.my]\npatterns = ['from (?P<host>\\S+']\n\
             [[source]]\npath = \"/tmp/x\"\nrules = [\"my\"]\n",
            ":2: key rules.my.patterns",
        ),
    ];
    let cfg = lab.config_path().display().to_string();
    for (body, want) in cases {
        std::fs::write(lab.config_path(), body).unwrap();
        lab.spawn(&["-c", &cfg]);
        let st = lab.wait_exit(SOON);
        let log = lab.log();
        lab.reap();
        assert_eq!(st.code(), Some(2), "{body:?} → {st}:\n{log}");
        // One message, first line naming file, line and key (a regex error then shows
        // the pattern with a caret below).
        assert!(
            log.starts_with(&format!("fwagent: {cfg}{want}: ")),
            "{body:?}: message should start with {cfg}{want}:\n{log}"
        );
        assert_eq!(log.matches("fwagent: ").count(), 1, "one message:\n{log}");
        assert!(lab.kernel().is_none(), "a bad config created the table");
    }
    // A missing file names itself.
    lab.spawn(&["-c", "/nonexistent/fwagent.toml"]);
    let st = lab.wait_exit(SOON);
    let log = lab.log();
    lab.reap();
    assert!(log.contains("/nonexistent/fwagent.toml"), "{log}");
    assert_ne!(st.code(), Some(0));
}

#[test]
fn allow_listed_loopback_and_local_addresses_are_never_banned() {
    if !root_or_skip("allow_listed_loopback_and_local_addresses_are_never_banned") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config(
        "[firewall]\nprotect = false\n\
         [ban]\nallow = [\"203.0.113.20\", \"2001:db8:aa::/48\"]\n",
    );
    lab.start_config();
    // Addresses assigned while the agent runs.
    local_link(&lab);
    lab.ns
        .ip(&["addr", "add", "198.51.100.77/24", "dev", "fw0"]);
    lab.ns
        .ip(&["addr", "add", "2001:db8:77::1/64", "dev", "fw0", "nodad"]);
    let protected = [
        "203.0.113.20",
        "2001:db8:aa:1::5",
        "127.0.0.1",
        "::1",
        "198.51.100.77",
        "2001:db8:77::1",
    ];
    for a in protected {
        lab.append_main(&rate_limited(a, 20));
    }
    // A bot inside the local /64: banned by its own /128, never the /64 holding ours.
    lab.append_main(&rate_limited("2001:db8:77::99", 3));
    // And an ordinary bot, last, so that once it is banned everything before was read.
    lab.append_main(&rate_limited("198.51.100.11", 3));
    lab.wait_banned("198.51.100.11");
    lab.wait_banned("2001:db8:77::99");
    assert_eq!(lab.source_lines(), 20 * protected.len() as u64 + 6);
    let got = as_set(&lab.elements());
    let want: BTreeSet<_> = [
        ("banned4".to_string(), "198.51.100.11".to_string()),
        ("banned6x".to_string(), "2001:db8:77::99".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
}

#[test]
fn control_socket_ban_unban_status_and_refusals() {
    if !root_or_skip("control_socket_ban_unban_status_and_refusals") {
        return;
    }
    let mut lab = Lab::new();
    local_link(&lab);
    lab.ns
        .ip(&["addr", "add", "198.51.100.77/24", "dev", "fw0"]);
    lab.write_config("[ban]\nallow = [\"203.0.113.20\"]\n");
    let pid = lab.start_config();
    // Root only: the socket file is mode 0600, owned by root.
    let sock = fwagent::control::socket_path(&lab.state_dir());
    let meta = std::fs::metadata(&sock).expect("control socket");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    // A garbage request gets a clear refusal, and the agent carries on.
    {
        use std::io::{BufRead, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.set_read_timeout(Some(SOON)).unwrap();
        c.write_all(b"\xff{not json\n").unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(c).read_line(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], false, "{answer}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("unreadable request")
        );
    }
    let ban = |t: &str, seconds: Option<u64>, force: bool| {
        lab.control(&Request::Ban {
            targets: vec![t.into()],
            seconds,
            force,
        })
    };
    // A manual ban lands in the kernel with the configured ban time.
    let r = ban("198.51.100.99", None, false);
    assert!(r.ok, "{}", r.message);
    assert_eq!(lab.wait_banned("198.51.100.99").timeout, Some(DAY));
    let r = ban("2001:db8:5::1", Some(600), false);
    assert!(r.ok, "{}", r.message);
    assert_eq!(lab.wait_banned("2001:db8:5::").timeout, Some(600));
    let r = ban("198.18.0.0/16", Some(0), false);
    assert!(r.ok, "{}", r.message);
    let net = lab.wait_banned("198.18.0.0/16");
    assert_eq!((net.set.as_str(), net.timeout), ("nets4", None));
    // Local, allow-listed and loopback addresses are refused without force, saying why.
    for (t, why) in [
        ("198.51.100.77", "198.51.100.77 is an address of this host"),
        (
            "203.0.113.20",
            "203.0.113.20 is allow-listed (allow entry 203.0.113.20/32)",
        ),
        (
            "127.0.0.1",
            "127.0.0.1 is a loopback, link-local, multicast",
        ),
        ("::1", "::1 is a loopback"),
        ("198.51.100.0/24", "198.51.100.0/24 holds 198.51.100."),
    ] {
        let r = ban(t, None, false);
        assert!(!r.ok, "{t} was banned without force");
        assert!(r.message.contains("refusing"), "{t}: {}", r.message);
        assert!(r.message.contains(why), "{t}: {}", r.message);
    }
    assert_eq!(lab.elements().len(), 3, "{:?}", lab.banned());
    // With force the admin gets what they asked for.
    let r = ban("203.0.113.20", Some(60), true);
    assert!(r.ok, "{}", r.message);
    lab.wait_banned("203.0.113.20");
    // Garbage is refused and changes nothing.
    let r = ban("198.51.100.300", None, false);
    assert!(!r.ok);
    assert_eq!(lab.elements().len(), 4);
    // status: the agent's own figures.
    let st = lab.status();
    assert_eq!(st["pid"], pid);
    assert_eq!(st["active_bans"], 4);
    assert_eq!(st["dry_run"], false);
    assert_eq!(st["table_owned"], true);
    assert_eq!(st["kernel_errors"], 0);
    assert_eq!(
        st["sources"][0]["path"],
        lab.mainlog().display().to_string()
    );
    // Lift the forced one: a restart would lift it anyway (start-up unbans every ban that
    // covers a protected address; `force` is not remembered — see the report).
    let r = lab.control(&Request::Unban {
        targets: vec!["203.0.113.20".into()],
    });
    assert!(r.ok, "{}", r.message);
    // A restart keeps the others, known as manual bans.
    lab.stop();
    lab.start_config();
    let list = lab.list();
    let rules: Vec<(&str, &str)> = list
        .iter()
        .map(|b| (b["target"].as_str().unwrap(), b["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rules,
        [
            ("198.18.0.0/16", "manual"),
            ("198.51.100.99/32", "manual"),
            ("2001:db8:5::/64", "manual"),
        ]
    );
    // unban removes from kernel and store.
    let r = lab.control(&Request::Unban {
        targets: vec!["198.51.100.99".into(), "2001:db8:5::1".into()],
    });
    assert!(r.ok, "{}", r.message);
    assert!(r.message.starts_with("unbanned 2"), "{}", r.message);
    assert!(
        r.message.contains("lifted 198.51.100.99, 2001:db8:5::/64"),
        "{}",
        r.message
    );
    assert_eq!(lab.banned(), ["198.18.0.0/16"]);
    // Unbanning one address inside a manual network lifts nothing, IPv4 and IPv6 alike:
    // a network is lifted by naming it.
    let r = lab.control(&Request::Ban {
        targets: vec!["2001:db8:9::/48".into()],
        seconds: Some(600),
        force: false,
    });
    assert!(r.ok, "{}", r.message);
    lab.wait_banned("2001:db8:9::/48");
    for inside in ["198.18.3.4", "2001:db8:9:1::5"] {
        let r = lab.control(&Request::Unban {
            targets: vec![inside.into()],
        });
        assert!(r.ok, "{}", r.message);
        assert!(
            r.message.starts_with("unbanned 0"),
            "{inside}: {}",
            r.message
        );
    }
    assert_eq!(lab.banned(), ["198.18.0.0/16", "2001:db8:9::/48"]);
    let r = lab.control(&Request::Unban {
        targets: vec!["2001:db8:9::/48".into()],
    });
    assert!(r.message.starts_with("unbanned 1"), "{}", r.message);
    assert_eq!(lab.banned(), ["198.18.0.0/16"]);
    lab.stop();
    lab.start_config();
    assert_eq!(lab.list().len(), 1);
    assert_eq!(lab.banned(), ["198.18.0.0/16"]);
}

#[test]
fn kernel_bans_made_while_no_agent_ran_are_adopted_as_manual() {
    if !root_or_skip("kernel_bans_made_while_no_agent_ran_are_adopted_as_manual") {
        return;
    }
    let mut lab = Lab::new();
    let cfg = lab.write_config("").display().to_string();
    lab.start_config();
    lab.stop();
    // While no agent runs: bans with nft in every set, and one with the CLI.
    for (set, elem) in [
        ("banned4", "{ 198.51.100.44 timeout 1h }"),
        ("banned4", "{ 198.51.100.46 }"),
        ("nets4", "{ 198.18.0.0/16 timeout 1h }"),
        ("banned6", "{ 2001:db8:7:: timeout 1h }"),
        ("banned6x", "{ 2001:db8:8::1 timeout 1h }"),
    ] {
        lab.nft(&["add", "element", "inet", "fwagent", set, elem]);
    }
    lab.ns.fwagent_ok(
        &[],
        &["ban", "--config", &cfg, "198.51.100.45", "--for", "2h"],
    );
    let before = lab.elements();
    let t0 = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    lab.start_config();
    assert_eq!(lab.log_count("adopted a ban"), 6, "{}", lab.log());
    let list = lab.list();
    let got: Vec<(String, Option<u64>)> = list
        .iter()
        .map(|b| {
            assert_eq!(b["rule"], "manual", "{b}");
            let left = b["expires_at_unix"].as_u64().map(|e| e - t0);
            (b["target"].as_str().unwrap().to_string(), left)
        })
        .collect();
    let want = [
        ("198.18.0.0/16", Some(3600)),
        ("198.51.100.44/32", Some(3600)),
        ("198.51.100.45/32", Some(7200)),
        ("198.51.100.46/32", None),
        ("2001:db8:7::/64", Some(3600)),
        ("2001:db8:8::1/128", Some(3600)),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((t, left), (wt, wleft)) in got.iter().zip(want) {
        assert_eq!(t, wt);
        match (left, wleft) {
            (Some(l), Some(w)) => assert!(l.abs_diff(w) <= 5, "{t}: {l} s left, want {w}"),
            (l, w) => assert_eq!(*l, w, "{t}"),
        }
    }
    // Adopted, not re-added: the kernel elements are the same ones.
    for (b, a) in before.iter().zip(lab.elements().iter()) {
        assert_eq!((&a.val, a.timeout), (&b.val, b.timeout));
    }
    // Known from now on: another restart adopts nothing and keeps them.
    lab.stop();
    lab.start_config();
    assert_eq!(lab.log_count("adopted a ban"), 0, "{}", lab.log());
    assert_eq!(lab.list().len(), 6);
    // And the restarted agent owns the table again.
    let out = lab
        .ns
        .output("nft", &["delete", "table", "inet", "fwagent"]);
    assert!(!out.status.success(), "table not re-claimed by the agent");
}

/// Seconds since the Unix epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-12-03T18:12:32.661587Z ...`).
fn log_time(line: &str) -> f64 {
    let ts = line.split_whitespace().next().expect("timestamp");
    let num = |r: std::ops::Range<usize>| ts[r].parse::<i64>().expect("digits");
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from civil date (proleptic Gregorian), 1970-01-01 = 0.
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs: f64 = ts[17..ts.len() - 1].parse().expect("seconds");
    (days * 86_400 + num(11..13) * 3600 + num(14..16) * 60) as f64 + secs
}

#[test]
fn lines_written_after_ready_are_never_skipped() {
    if !root_or_skip("lines_written_after_ready_are_never_skipped") {
        return;
    }
    let mut lab = Lab::new();
    // A writer appends a line every 200 µs from before the agent starts until well after
    // it is up, noting when each write began.
    let path = lab.mainlog();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open mainlog");
        let mut started = Vec::new();
        let t = Instant::now();
        let mut i = 0u64;
        // Bounded even if the main thread never says stop.
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed)
            && t.elapsed() < Duration::from_secs(60)
        {
            let at = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            std::io::Write::write_all(&mut f, format!("filler line {i}\n").as_bytes())
                .expect("append");
            started.push(at);
            i += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        started
    });
    std::thread::sleep(Duration::from_millis(100));
    lab.start_default();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let started = writer.join().expect("writer");
    let log = lab.log();
    let ready = log
        .lines()
        .find(|l| l.contains("fwagent running"))
        .map(log_time)
        .expect("ready line");
    let after = started.iter().filter(|&&t| t > ready).count() as u64;
    assert!(after > 100, "writer too slow: {after} lines after READY");
    let mut read = 0;
    poll(SOON, || {
        read = lab.source_lines();
        read >= after
    });
    assert!(
        read >= after,
        "{after} lines were written after READY but the agent read {read}"
    );
    println!(
        "READY: {after} lines written after it, {read} read ({} written in all)",
        started.len()
    );
}

#[test]
fn sighup_schema_change_carries_bans_into_the_new_table() {
    if !root_or_skip("sighup_schema_change_carries_bans_into_the_new_table") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[firewall]\nprotect = false\n");
    lab.start_config();
    append_sample(&lab);
    let before = wait_sample_bans(&lab);
    // Another table name and set size: the agent builds the new table with every ban, then
    // removes the old one.
    lab.write_config("[firewall]\nprotect = false\ntable = \"fwagent2\"\nset_size = 4096\n");
    lab.hup();
    lab.wait_log("configuration reloaded", 1, SOON);
    let ok = poll(SOON, || lab.kernel().is_none());
    assert!(ok, "old table still there:\n{}", lab.log());
    let after = lab.kernel_table("fwagent2").expect("new table");
    assert_eq!(as_set(&after), sample_bots());
    for b in &before {
        let a = after.iter().find(|a| a.val == b.val).unwrap();
        assert!(
            a.expires.unwrap() <= b.expires.unwrap(),
            "ban restarted: {b:?} → {a:?}"
        );
    }
    let listing = lab.nft(&["list", "set", "inet", "fwagent2", "banned4"]);
    assert!(listing.contains("size 4096"), "{listing}");
    // New bans go to the new table.
    lab.append_main(&rate_limited("203.0.113.9", 3));
    let ok = poll(SOON, || {
        lab.kernel_table("fwagent2")
            .unwrap_or_default()
            .iter()
            .any(|e| e.val == "203.0.113.9")
    });
    assert!(ok, "new ban not in the new table:\n{}", lab.log());
    // And the new table is the one watched: someone flushes the ruleset → back within 1 s.
    let took = flush_and_time(&lab, "fwagent2", 1)[0];
    assert!(
        took < Duration::from_secs(1),
        "renamed table restored only after {took:?} (events still watch the old name?)"
    );
    assert!(lab.kernel().is_none(), "old table came back");
}

#[test]
fn teardown_through_the_agent_removes_table_and_bans_and_stops_it() {
    if !root_or_skip("teardown_through_the_agent_removes_table_and_bans_and_stops_it") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    append_sample(&lab);
    wait_sample_bans(&lab);
    let r = lab.control(&Request::Teardown);
    assert!(r.ok, "{}", r.message);
    assert!(
        r.message.contains("removed table inet fwagent"),
        "{}",
        r.message
    );
    let st = lab.wait_exit(SOON);
    assert!(st.success(), "{st}:\n{}", lab.log());
    lab.reap();
    assert!(lab.kernel().is_none(), "table still there after teardown");
    assert!(
        !fwagent::control::socket_path(&lab.state_dir()).exists(),
        "control socket left behind"
    );
    // The bans are gone from the store too: a new start restores nothing.
    lab.start_default();
    assert!(lab.elements().is_empty(), "{:?}", lab.banned());
    assert!(lab.list().is_empty());
}

#[test]
fn corrupt_store_is_moved_aside_and_kernel_bans_are_kept() {
    if !root_or_skip("corrupt_store_is_moved_aside_and_kernel_bans_are_kept") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    append_sample(&lab);
    let before = wait_sample_bans(&lab);
    lab.stop();
    let store = lab.state_dir().join(fwagent::state::FILE_NAME);
    assert!(store.exists(), "no store at {}", store.display());
    std::fs::write(&store, b"this is not a redb file\n\xff\xfe garbage").unwrap();
    lab.start_default();
    // Not fatal; the bad file is kept beside, a fresh store is used; the kernel's bans are
    // adopted (now as manual: their rule was in the lost store) and not re-added.
    let aside: Vec<_> = std::fs::read_dir(lab.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != fwagent::state::FILE_NAME && n != "control.sock")
        .collect();
    assert!(!aside.is_empty(), "corrupt store not kept aside");
    let after = lab.elements();
    assert_eq!(as_set(&after), sample_bots());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.timeout, b.timeout, "re-added: {b:?} → {a:?}");
    }
    let list = lab.list();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(lab.log_count("adopted a ban"), 3, "{}", lab.log());
    println!("corrupt store moved aside as {aside:?}");
}

#[test]
fn a_second_agent_on_the_same_state_is_refused() {
    if !root_or_skip("a_second_agent_on_the_same_state_is_refused") {
        return;
    }
    let mut lab = Lab::new();
    let first = lab.start_default();
    // A second agent with the same state dir, in the same namespace.
    let out = lab.ns.fwagent(&[
        "run",
        "--state-dir",
        &lab.state_dir().display().to_string(),
        "--log",
        &lab.mainlog().display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&lab.state_dir().display().to_string()),
        "message should name the state: {err}"
    );
    // The first one is unharmed and still answers.
    assert!(lab.try_wait().is_none());
    assert_eq!(lab.status()["pid"], first);
    lab.append_main(&rate_limited("198.51.100.11", 3));
    lab.wait_banned("198.51.100.11");
}

#[test]
fn a_followed_file_created_after_start_is_read_whole() {
    if !root_or_skip("a_followed_file_created_after_start_is_read_whole") {
        return;
    }
    let mut lab = Lab::new();
    let later = lab.path("later.log");
    lab.start(&["--log", &later.display().to_string()]);
    lab.append(&later, &rate_limited("198.51.100.11", 3));
    lab.wait_banned("198.51.100.11");
}

#[test]
fn restart_with_a_new_allow_list_lifts_those_bans() {
    if !root_or_skip("restart_with_a_new_allow_list_lifts_those_bans") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("");
    lab.start_config();
    append_sample(&lab);
    wait_sample_bans(&lab);
    lab.stop();
    // While stopped, the admin allow-lists one bot and a whole IPv6 /48.
    lab.write_config("[ban]\nallow = [\"198.51.100.11\", \"2001:db8:25::/48\"]\n");
    lab.start_config();
    assert_eq!(lab.banned(), ["198.51.100.12"], "{}", lab.log());
    assert_eq!(lab.list().len(), 1);
}

#[test]
fn sighup_adding_an_sshd_source_bans_its_bots() {
    if !root_or_skip("sighup_adding_an_sshd_source_bans_its_bots") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[firewall]\nprotect = false\n");
    lab.start_config();
    lab.append_main(&rate_limited("198.51.100.11", 2));
    lab.wait_hits("exim-ratelimit", 2);
    let auth = lab.path("auth.log");
    std::fs::write(&auth, "").unwrap();
    let extra = format!(
        "[firewall]\nprotect = false\n[[source]]\npath = \"{}\"\nrules = [\"sshd\"]\n",
        auth.display()
    );
    lab.write_config(&extra);
    lab.hup();
    lab.wait_log("configuration reloaded", 1, SOON);
    // The new source is followed from its end: lines written now count.
    let sample = std::fs::read_to_string("/work/shared/samples/sshd-auth.log").unwrap();
    let lines: Vec<String> = sample.lines().map(str::to_string).collect();
    lab.append(&auth, &lines);
    for bot in ["198.51.100.31", "198.51.100.32", "2001:db8:22::"] {
        lab.wait_banned(bot);
    }
    // The Exim source kept its place (nothing re-read). Its counting windows did not
    // survive: the reload builds a new detector and carries only the escalation history,
    // so .11 needs three fresh lines (see the report).
    lab.append_main(&rate_limited("198.51.100.11", 3));
    lab.wait_banned("198.51.100.11");
    let st = lab.status();
    let main = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == lab.mainlog().display().to_string())
        .expect("mainlog source")
        .clone();
    assert_eq!(main["lines"], 3, "mainlog re-read after reload: {main}");
    // Nobody else: not the legitimate client 203.0.113.40, not the server.
    let want = [
        "198.51.100.11",
        "198.51.100.31",
        "198.51.100.32",
        "2001:db8:22::",
    ];
    assert_eq!(lab.banned(), want);
}

#[test]
fn sighup_ipv6_prefix_change_neither_widens_nor_loses_bans() {
    if !root_or_skip("sighup_ipv6_prefix_change_neither_widens_nor_loses_bans") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[firewall]\nprotect = false\n");
    lab.start_config();
    append_sample(&lab);
    wait_sample_bans(&lab);
    lab.write_config("[firewall]\nprotect = false\nipv6_prefix = 48\n");
    lab.hup();
    lab.wait_log("configuration reloaded", 1, SOON);
    // The /64 ban stays a /64 (as a network), it does not become 2001:db8::/48.
    let ok = poll(SOON, || {
        lab.banned() == ["198.51.100.11", "198.51.100.12", "2001:db8:25::/64"]
    });
    assert!(ok, "kernel after prefix change: {:?}", lab.banned());
    // New IPv6 offenders are banned by /48.
    lab.append_main(&rate_limited("2001:db8:99:1::7", 3));
    let e = lab.wait_banned("2001:db8:99::");
    assert_eq!(e.set, "banned6");
    // Unbanning the bot's address lifts the /64 ban that covers it.
    let r = lab.control(&Request::Unban {
        targets: vec!["2001:db8:25::66".into()],
    });
    assert!(r.ok, "{}", r.message);
    assert!(
        lab.elem("2001:db8:25::/64").is_none(),
        "unban of an address in a /64 ban after the prefix became 48: {} — kernel {:?}",
        r.message,
        lab.banned()
    );
}

#[test]
fn permanent_bans_stay_permanent_across_reboot() {
    if !root_or_skip("permanent_bans_stay_permanent_across_reboot") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[rules.exim-ratelimit]\nban_time = \"permanent\"\n");
    lab.start_config();
    lab.append_main(&rate_limited("198.51.100.11", 3));
    let e = lab.wait_banned("198.51.100.11");
    assert_eq!((e.timeout, e.expires), (None, None), "{e:?}");
    assert!(lab.list()[0]["expires_at_unix"].is_null());
    lab.stop();
    lab.nft(&["delete", "table", "inet", "fwagent"]);
    lab.start_config();
    let e = lab.wait_banned("198.51.100.11");
    assert_eq!((e.timeout, e.expires), (None, None), "{e:?}");
}

/// With no agent running, a CLI unban is recorded in the agent's store too (one writer at a
/// time), so the agent does not mistake the missing element for a reboot and restore it.
#[test]
fn cli_unban_while_no_agent_ran_is_respected() {
    if !root_or_skip("cli_unban_while_no_agent_ran_is_respected") {
        return;
    }
    let mut lab = Lab::new();
    let cfg = lab.write_config("").display().to_string();
    lab.start_config();
    lab.append_main(&rate_limited("198.51.100.11", 3));
    lab.wait_banned("198.51.100.11");
    lab.stop();
    let dir = lab.state_dir().display().to_string();
    lab.ns.fwagent_ok(
        &[],
        &[
            "unban",
            "--config",
            &cfg,
            "--state-dir",
            &dir,
            "198.51.100.11",
        ],
    );
    assert!(lab.elem("198.51.100.11").is_none());
    lab.start_config();
    assert!(
        lab.elem("198.51.100.11").is_none(),
        "the agent re-banned an address the admin unbanned while it was down:\n{}",
        lab.log()
    );
}

/// The "one writer": while the agent runs, `fwagent ban/unban/status` go through its
/// control socket (found through the config's run_dir, or --run-dir); the agent's table is
/// owned, so a direct kernel write would be refused.
#[test]
fn cli_commands_go_through_the_running_agent() {
    if !root_or_skip("cli_commands_go_through_the_running_agent") {
        return;
    }
    let mut lab = Lab::new();
    let dir = lab.state_dir().display().to_string();
    let cfg = lab
        .write_config(&format!("[state]\ndir = \"{dir}\"\nrun_dir = \"{dir}\"\n"))
        .display()
        .to_string();
    lab.start_config();
    let out = lab
        .ns
        .fwagent(&["ban", "--config", &cfg, "198.51.100.50", "--for", "1h"]);
    assert!(
        out.status.success(),
        "fwagent ban with a running agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.wait_banned("198.51.100.50").timeout, Some(3600));
    let list = lab.list();
    assert_eq!(
        list.len(),
        1,
        "the agent does not know the CLI's ban: {list:?}"
    );
    assert_eq!(list[0]["rule"], "manual");
    let out = lab
        .ns
        .fwagent(&["unban", "--config", &cfg, "198.51.100.50"]);
    assert!(out.status.success());
    assert!(lab.list().is_empty());
    assert!(lab.elem("198.51.100.50").is_none());
    // --run-dir finds the socket without the config; status shows the agent's figures.
    let out = lab.ns.fwagent(&["status", "--json", "--run-dir", &dir]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert!(st["agent"]["pid"].as_u64().is_some(), "{st}");
    // The never-ban protection holds through the agent too.
    let out = lab.ns.fwagent(&["ban", "--run-dir", &dir, "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(lab.list().is_empty());
}

#[test]
fn a_burst_of_15000_lines_bans_all_5000_offenders() {
    if !root_or_skip("a_burst_of_15000_lines_bans_all_5000_offenders") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    // 5,000 addresses from 198.18.0.0/15, three lines each, interleaved (every address's
    // first line, then every second, then every third), appended in one write.
    let addrs: Vec<String> = (0..5000u32)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let mut lines = Vec::with_capacity(15_000);
    for round in 0..3 {
        for a in &addrs {
            lines.push(rate_limited(a, 1)[0].replace("user0", &format!("user{round}")));
        }
    }
    let t = Instant::now();
    lab.append_main(&lines);
    let mut n = 0;
    let ok = poll(Duration::from_secs(60), || {
        n = lab.status()["active_bans"].as_u64().unwrap_or(0);
        n == 5000
    });
    let took = t.elapsed();
    assert!(ok, "{n} of 5000 banned after {took:?}:\n{}", lab.log());
    let els = lab.elements();
    assert_eq!(els.len(), 5000);
    let want: BTreeSet<&str> = addrs.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = els.iter().map(|e| e.val.as_str()).collect();
    assert_eq!(got, want);
    assert!(els.iter().all(|e| e.timeout == Some(DAY)));
    assert_eq!(lab.source_lines(), 15_000);
    assert_eq!(lab.status()["kernel_errors"], 0);
    println!(
        "burst: 15,000 lines → 5,000 bans in the kernel in {:.0} ms (debug build, incl. polling)",
        took.as_secs_f64() * 1000.0
    );
}

#[test]
fn garbage_huge_and_odd_lines_ban_nobody_and_do_not_stop_the_agent() {
    if !root_or_skip("garbage_huge_and_odd_lines_ban_nobody_and_do_not_stop_the_agent") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.mainlog())
        .unwrap();
    let good = rate_limited("198.51.100.13", 1)[0].clone();
    let mut junk: Vec<u8> = Vec::new();
    for _ in 0..5 {
        // Invalid UTF-8 and NULs around a real line's text.
        junk.extend_from_slice(b"\xff\xfe\x00garbage \xc3\x28 ");
        junk.extend_from_slice(good.as_bytes());
        junk.extend_from_slice(b" \xff\n");
        // A line far over the 16 KiB limit whose end would match: cut, so never counted.
        junk.extend_from_slice(
            good.replace("Rate limited", &"x".repeat(100_000))
                .as_bytes(),
        );
        junk.extend_from_slice(b" Rate limited: 198.51.100.13\n");
        // Odd address forms: leading zeros, out of range, a name, an empty bracket.
        for host in ["198.051.100.13", "198.51.100.300", "mail.example", ""] {
            junk.extend_from_slice(
                format!(
                    "2026-12-03 16:13:58 H=(x) [{host}] F=<a@b> rejected RCPT <c@d>: Rate limited: {host}\n"
                )
                .as_bytes(),
            );
        }
        junk.extend_from_slice(b"\n\n\r\n");
    }
    std::io::Write::write_all(&mut f, &junk).unwrap();
    // A real bot afterwards: once it is banned, everything before was read.
    lab.append_main(&rate_limited("198.51.100.11", 3));
    lab.wait_banned("198.51.100.11");
    assert_eq!(lab.banned(), ["198.51.100.11"], "{}", lab.log());
    assert!(lab.try_wait().is_none(), "agent died");
    let st = lab.status();
    assert!(st["sources"][0]["lines_cut"].as_u64().unwrap() >= 5, "{st}");
}

/// The kernel refuses to add the owner flag to an existing table that was created without
/// it, so switching protection on rebuilds the table owned, in one batch carrying every ban
/// with its remaining time.
#[test]
fn sighup_switching_protection_on_and_off() {
    if !root_or_skip("sighup_switching_protection_on_and_off") {
        return;
    }
    let mut lab = Lab::new();
    lab.write_config("[firewall]\nprotect = false\n");
    lab.start_config();
    append_sample(&lab);
    let before = wait_sample_bans(&lab);
    // On: the agent takes ownership of its table, bans carried with their remaining time.
    lab.write_config("[firewall]\nprotect = true\n");
    lab.hup();
    lab.wait_log("configuration reloaded", 1, SOON);
    assert_eq!(lab.status()["table_owned"], true, "{}", lab.log());
    let listing = lab.nft(&["list", "table", "inet", "fwagent"]);
    assert!(listing.contains("flags owner"), "{listing}");
    let after = lab.elements();
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.val, b.val, "ban replaced");
        let (ta, tb) = (a.timeout.unwrap_or(0), b.timeout.unwrap_or(0));
        assert!(
            tb.abs_diff(ta) <= 5,
            "remaining time not carried: {b:?} -> {a:?}"
        );
    }
    lab.nft(&["flush", "ruleset"]);
    assert_eq!(as_set(&lab.elements()), sample_bots());
    assert_eq!(lab.status()["reinstalls"], 0);
    // Off again: a flush removes the table and the agent puts it back.
    lab.write_config("[firewall]\nprotect = false\n");
    lab.hup();
    lab.wait_log("configuration reloaded", 2, SOON);
    assert_eq!(lab.status()["table_owned"], false, "{}", lab.log());
    let took = flush_and_time(&lab, "fwagent", 1)[0];
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(lab.status()["reinstalls"].as_u64().unwrap() >= 1);
}

/// After a reboot an admin's `fwagent ban` (no agent yet) creates the table without owner
/// flags; the agent started next must still end up owning it. Same cause as above.
#[test]
fn agent_owns_a_table_the_cli_created() {
    if !root_or_skip("agent_owns_a_table_the_cli_created") {
        return;
    }
    let mut lab = Lab::new();
    let cfg = lab.write_config("").display().to_string();
    lab.ns.fwagent_ok(
        &[],
        &["ban", "--config", &cfg, "198.51.100.45", "--for", "2h"],
    );
    lab.start_config();
    assert_eq!(lab.status()["table_owned"], true);
    let listing = lab.nft(&["list", "table", "inet", "fwagent"]);
    assert!(listing.contains("flags owner"), "not owned:\n{}", lab.log());
    lab.nft(&["flush", "ruleset"]);
    assert_eq!(lab.banned(), ["198.51.100.45"]);
}

#[test]
fn log_rotation_while_running_and_while_stopped_loses_no_line() {
    if !root_or_skip("log_rotation_while_running_and_while_stopped_loses_no_line") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_default();
    let main = lab.mainlog();
    // Running: two lines before a logrotate-style rename + create, one after.
    lab.append_main(&rate_limited("198.51.100.11", 2));
    lab.wait_hits("exim-ratelimit", 2);
    std::fs::rename(&main, lab.path("mainlog.1")).unwrap();
    let t = Instant::now();
    lab.append_main(&rate_limited("198.51.100.11", 1));
    lab.wait_banned("198.51.100.11");
    // The follower drains the old file for a grace period before it switches; a line in
    // the new file waits for that (reported, not asserted).
    println!(
        "rotation: first line of the new file banned after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    // Stopped: lines written while the agent is down, then a rotation, then more lines.
    lab.stop();
    lab.append_main(&rate_limited("198.51.100.12", 2));
    std::fs::rename(lab.path("mainlog.1"), lab.path("mainlog.2")).unwrap();
    std::fs::rename(&main, lab.path("mainlog.1")).unwrap();
    lab.append_main(&rate_limited("198.51.100.12", 1));
    lab.start_default();
    // The rest of the rotated file and the new one are read: .12 has its three lines.
    lab.wait_banned("198.51.100.12");
    assert_eq!(lab.banned(), ["198.51.100.11", "198.51.100.12"]);
}
