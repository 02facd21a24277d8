//! Detector state over time: bounded memory under a flood of distinct addresses, windows that
//! slide and reset after a ban, and escalation that counts bans across rules. Time is a
//! parameter, so nothing here sleeps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fwagent::detect::{
    Detector, Escalation, Key, LocalAddrs, NeverBan, Observation, RuleId, rules,
};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
}

fn detector(max_tracked: usize) -> (Detector, RuleId, RuleId) {
    let det = Detector::new(rules::builtins(), NeverBan::default())
        .with_max_tracked(max_tracked)
        .with_escalation(Escalation {
            factor: 2.0,
            max_time: Duration::from_secs(7 * 86_400),
            history: Duration::from_secs(30 * 86_400),
        });
    let exim = det.rule_id("exim-ratelimit").unwrap();
    let sshd = det.rule_id("sshd").unwrap();
    (det, exim, sshd)
}

fn exim_line(ip: &str) -> Vec<u8> {
    format!(
        "2026-12-03 16:13:57 H=[{ip}] rejected connection in \"connect\" ACL: Rate limited: {ip}"
    )
    .into_bytes()
}

#[test]
fn a_million_distinct_addresses_stay_bounded_and_a_persistent_attacker_is_still_caught() {
    let (mut det, exim, _) = detector(10_000);
    let attacker: IpAddr = "203.0.113.99".parse().unwrap();
    let mut banned = 0;
    for i in 0..1_000_000u32 {
        // Half IPv4 from 198.18.0.0/15, half distinct IPv6 /64s.
        let ip = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(
                (198u32 << 24 | 18 << 16) + (i / 2) % 131_072,
            ))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                (i >> 16) as u16,
                i as u16,
                0,
                0,
                0,
                1,
            ))
        };
        det.count(exim, ip, at(u64::from(i / 1000)));
        // The attacker comes back every 4,000 flood lines: least recently seen entries go
        // first, so it stays tracked and reaches the threshold.
        if i % 4_000 == 0
            && let Observation::Offence(o) = det.count(exim, attacker, at(u64::from(i / 1000)))
        {
            assert_eq!(o.key, Key::V4("203.0.113.99".parse().unwrap()));
            banned += 1;
        }
        assert!(det.windows().len() <= 10_000);
    }
    assert_eq!(det.windows().len(), 10_000);
    assert!(
        det.windows().evicted() >= 980_000,
        "{}",
        det.windows().evicted()
    );
    // It reaches 3 hits and is banned once; its later lines fall inside the 24 h ban, when
    // the firewall drops it, so they are not counted again.
    assert_eq!(banned, 1, "attacker banned {banned} times");
    // Through the line path too (regex + parse), a flood cannot grow the state.
    for i in 0..20_000u32 {
        let ip = Ipv4Addr::from((198u32 << 24 | 18 << 16) + i);
        det.observe(exim, &exim_line(&ip.to_string()), at(2_000));
    }
    assert!(det.windows().len() <= 10_000);
}

#[test]
fn window_slides_and_resets_after_a_ban() {
    let (mut det, exim, _) = detector(1000);
    let line = exim_line("198.51.100.7");
    // exim-ratelimit: 3 hits within 1 h.
    assert!(det.observe(exim, &line, at(0)).is_none());
    assert!(det.observe(exim, &line, at(1800)).is_none());
    // 3601 s after the first hit, the first one has slid out: 2 in the window.
    assert!(det.observe(exim, &line, at(3601)).is_none());
    let o = det
        .observe(exim, &line, at(3700))
        .expect("3 hits within the hour");
    assert_eq!(o.hits, 3);
    assert_eq!(o.ban_time, Duration::from_secs(24 * 3600));
    assert_eq!(o.repeat, 0);
    // The window restarted: the next hit alone is not an offence.
    assert!(det.observe(exim, &line, at(3701)).is_none());
}

#[test]
fn escalation_counts_bans_across_rules_and_caps() {
    let (mut det, exim, sshd) = detector(1000);
    let ip = "198.51.100.8";
    let ssh = format!("Dec  3 16:20:01 h sshd[1]: Invalid user x from {ip} port 4444");
    let mut t = 0;
    // Each offence is followed by its whole ban: lines during a ban are not counted.
    let mut offend = |det: &mut Detector, rule: RuleId, line: &[u8], n: u32| {
        let mut last = None;
        for _ in 0..n {
            t += 1;
            last = det.observe(rule, line, at(t));
        }
        let o = last.expect("offence");
        t += o.ban_time.as_secs();
        o
    };
    let first = offend(&mut det, exim, &exim_line(ip), 3);
    assert_eq!(
        (first.repeat, first.ban_time),
        (0, Duration::from_secs(86_400))
    );
    // Same address, other rule: a repeat offender, sshd's 1 h doubled.
    let second = offend(&mut det, sshd, ssh.as_bytes(), 5);
    assert_eq!(
        (second.repeat, second.ban_time),
        (1, Duration::from_secs(2 * 3600))
    );
    let third = offend(&mut det, exim, &exim_line(ip), 3);
    assert_eq!(
        (third.repeat, third.ban_time),
        (2, Duration::from_secs(4 * 86_400))
    );
    // Capped at max_time (7 days).
    let fourth = offend(&mut det, exim, &exim_line(ip), 3);
    assert_eq!(fourth.ban_time, Duration::from_secs(7 * 86_400));
    // The history survives a round trip through JSON (the agent persists it).
    let json = serde_json::to_string(det.history()).unwrap();
    let (mut fresh, exim2, _) = detector(1000);
    fresh.set_history(serde_json::from_str(&json).unwrap());
    let again = offend(&mut fresh, exim2, &exim_line(ip), 3);
    assert_eq!(again.repeat, 4);
    // Forgiven: the next offence is a first one again.
    fresh.forgive(again.key);
    let after = offend(&mut fresh, exim2, &exim_line(ip), 3);
    assert_eq!(
        (after.repeat, after.ban_time),
        (0, Duration::from_secs(86_400))
    );
    // Pruned long after (history window 30 days): history gone.
    fresh.prune(at(90 * 86_400));
    assert!(fresh.history().is_empty());
}

#[test]
fn lines_during_a_ban_are_not_counted_and_cannot_escalate() {
    let (mut det, exim, _) = detector(1000);
    let line = exim_line("198.51.100.9");
    let mut offences = 0;
    // A burst of 14 lines (as Exim writes them before the ban reaches the kernel).
    for i in 0..14 {
        match det.observe_detail(exim, &line, at(i)) {
            Observation::Offence(o) => {
                offences += 1;
                assert_eq!(o.repeat, 0);
            }
            Observation::Banned { .. } => assert!(i >= 3, "line {i} reported banned"),
            other => assert!(i < 3, "line {i}: {other:?}"),
        }
    }
    assert_eq!(offences, 1);
    // After the 24 h ban: a new first window, and the repeat is one, not eleven.
    let mut last = None;
    for i in 0..3 {
        last = det.observe(exim, &line, at(86_400 + 10 + i));
    }
    let o = last.expect("second offence");
    assert_eq!((o.repeat, o.ban_time), (1, Duration::from_secs(2 * 86_400)));
    // In the ban's last second the kernel may already have dropped it (its clock is not
    // the agent's): lines count again, a second before the end but not two.
    let end = 86_400 + 10 + 2 + 2 * 86_400;
    assert!(matches!(
        det.observe_detail(exim, &line, at(end - 2)),
        Observation::Banned { .. }
    ));
    assert!(matches!(
        det.observe_detail(exim, &line, at(end - 1)),
        Observation::Counted { .. }
    ));
    // Lifted early (unban): counted again at once.
    det.lift(o.key);
    assert!(matches!(
        det.observe_detail(exim, &line, at(86_400 + 20)),
        Observation::Counted { .. }
    ));
}

#[test]
fn ipv6_offenders_share_a_prefix_unless_it_holds_a_protected_address() {
    let local = LocalAddrs::new();
    local.insert("2001:db8:25::25".parse().unwrap());
    let never = NeverBan::new(vec!["2001:db8:77::10/128".parse().unwrap()], local, 64);
    let mut det = Detector::new(rules::builtins(), never);
    let exim = det.rule_id("exim-ratelimit").unwrap();
    // Three different addresses of one /64: one offender, banned as the /64.
    let mut last = None;
    for (i, ip) in ["2001:db8:66::1", "2001:db8:66::2", "2001:db8:66::3"]
        .iter()
        .enumerate()
    {
        last = det.observe(exim, &exim_line(ip), at(i as u64));
    }
    assert_eq!(
        last.unwrap().key,
        Key::V6Prefix("2001:db8:66::".parse().unwrap(), 64)
    );
    // In the server's own /64: counted per address, banned as a /128.
    for (i, ip) in ["2001:db8:25::66", "2001:db8:25::67", "2001:db8:25::66"]
        .iter()
        .enumerate()
    {
        assert!(
            det.observe(exim, &exim_line(ip), at(10 + i as u64))
                .is_none()
        );
    }
    let o = det
        .observe(exim, &exim_line("2001:db8:25::66"), at(20))
        .unwrap();
    assert_eq!(o.key, Key::V6Exact("2001:db8:25::66".parse().unwrap()));
    // Allow-listed /128 inside another /64: same.
    for i in 0..3 {
        let r = det.observe(exim, &exim_line("2001:db8:77::66"), at(30 + i));
        if i == 2 {
            assert_eq!(
                r.unwrap().key,
                Key::V6Exact("2001:db8:77::66".parse().unwrap())
            );
        }
    }
    // The protected addresses themselves are never counted.
    for ip in ["2001:db8:25::25", "2001:db8:77::10", "::1", "127.0.0.1"] {
        let obs = det.observe_detail(exim, &exim_line(ip), at(40));
        assert!(matches!(obs, Observation::Protected(_)), "{ip}: {obs:?}");
    }
}
