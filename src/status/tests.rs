//! The model and its renderers, without a kernel: a fixed kernel view and agent figures in,
//! JSON / table / metrics out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use super::totals::{Carried, Count, HistoryJson};
use super::*;
use crate::agent::{LastBan, RuleJson as AgentRule, SourceJson};
use crate::nft::{Element, RuleCounter};

const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
}

fn rc(hook: Hook, family: Family, set: &str, packets: u64) -> RuleCounter {
    RuleCounter {
        hook,
        family,
        set: set.into(),
        packets,
        bytes: packets * 60,
    }
}

/// A full, healthy table: every rule, some drops, two offenders.
fn view() -> KernelView {
    let schema = Schema::default();
    let mut counters = Vec::new();
    for h in Hook::ALL {
        for r in schema.rules() {
            counters.push(rc(h, r.family, r.set, 0));
        }
    }
    counters[0].packets = 7; // input banned4
    counters[0].bytes = 420;
    counters[3].packets = 2; // input banned6
    counters[3].bytes = 160;
    counters[5].packets = 5; // forward banned4
    counters[5].bytes = 300;
    KernelView {
        present: true,
        protected: true,
        counters,
        sets: vec![
            kernel::SetView {
                set: "banned4".into(),
                family: Family::V4,
                size: Some(1_048_576),
                count: 3,
            },
            kernel::SetView {
                set: "banned6".into(),
                family: Family::V6,
                size: Some(1_048_576),
                count: 1,
            },
            kernel::SetView {
                set: "nets4".into(),
                family: Family::V4,
                size: Some(65_536),
                count: 1,
            },
        ],
        top: vec![
            Element {
                set: "banned4".into(),
                target: Target::V4(Ipv4Addr::new(198, 51, 100, 7)),
                timeout: Some(Duration::from_secs(86_400)),
                expires: Some(Duration::from_secs(3_600)),
                packets: 12,
                bytes: 720,
            },
            Element {
                set: "banned6".into(),
                target: Target::V6Prefix("2001:db8:1:2::".parse::<Ipv6Addr>().unwrap()),
                timeout: None,
                expires: None,
                packets: 2,
                bytes: 160,
            },
        ],
        features: Features::default(),
        read_ms: 3,
    }
}

fn figures() -> AgentFigures {
    AgentFigures {
        pid: 42,
        version: "0.1.0",
        uptime_secs: 3_700,
        dry_run: false,
        table_owned: true,
        active_bans: 4,
        reinstalls: 1,
        kernel_errors: 0,
        last_ban: Some(LastBan {
            target: "198.51.100.7/32".into(),
            rule: "exim-ratelimit".into(),
            at_unix: NOW - 90,
        }),
        recent_bans: vec![],
        drop_counters: vec![Carried {
            hook: "input".into(),
            family: "ip".into(),
            set: "banned4".into(),
            carried: Count {
                packets: 100,
                bytes: 6_000,
            },
            last: Count {
                packets: 7,
                bytes: 420,
            },
        }],
        history: HistoryJson::default(),
        rules: vec![AgentRule {
            name: "exim-ratelimit".into(),
            hits: 9,
            bans: 3,
            unbans: 1,
        }],
        sources: vec![SourceJson {
            path: "/var/log/exim4/main\"log".into(),
            rules: vec!["exim-ratelimit".into()],
            lines: 1_000,
            bytes: 120_000,
            lines_cut: 0,
            errors: 0,
            rotations: 1,
            offset: 5_000,
            matched: BTreeMap::from([("exim-ratelimit".to_string(), 9)]),
        }],
    }
}

fn running() -> AgentInput {
    AgentInput::Running {
        figures: Box::new(figures()),
        bans: vec![BanMeta {
            target: "198.51.100.7/32".into(),
            rule: "exim-ratelimit".into(),
            hits: 3,
            times_banned: 2,
            banned_at_unix: Some(NOW - 90),
        }],
    }
}

fn good(v: KernelView) -> KernelInput {
    KernelInput {
        view: Some(v),
        read_at: Some(now()),
        error: None,
    }
}

fn build(k: KernelInput, a: AgentInput) -> Status {
    assemble(&Schema::default(), &k, a, now(), "vps1".into())
}

#[test]
fn a_full_table_is_healthy_and_its_figures_add_up() {
    let st = build(good(view()), running());
    assert!(st.healthy, "{:?}", st.problems);
    assert!(st.problems.is_empty());
    assert_eq!(st.blocked.ipv4, 4);
    assert_eq!(st.blocked.ipv6, 1);
    assert_eq!(st.blocked.total, 5);
    let d = |h: Hook, f: Family| {
        st.drops
            .iter()
            .find(|d| d.hook == h && d.family == f)
            .unwrap()
            .clone()
    };
    assert_eq!(d(Hook::Input, Family::V4).packets, 7);
    assert_eq!(d(Hook::Input, Family::V6).packets, 2);
    assert_eq!(d(Hook::Forward, Family::V4).packets, 5);
    // Totals: the agent carried 100 packets from an earlier incarnation of input/banned4.
    assert_eq!(d(Hook::Input, Family::V4).packets_total, Some(107));
    assert_eq!(d(Hook::Input, Family::V4).bytes_total, Some(6_420));
    assert_eq!(d(Hook::Forward, Family::V4).packets_total, Some(5));
    assert_eq!(st.rules.len(), 10, "every rule, interval sets included");
}

#[test]
fn top_offenders_are_joined_with_the_agents_bans() {
    let st = build(good(view()), running());
    let o = &st.top[0];
    assert_eq!(o.target, "198.51.100.7");
    assert_eq!(o.packets, 12);
    assert_eq!(o.expires_ms, Some(3_600_000));
    assert_eq!(o.rule.as_deref(), Some("exim-ratelimit"));
    assert_eq!(o.times_banned, Some(2));
    let v6 = &st.top[1];
    assert_eq!(
        v6.target, "2001:db8:1:2::/64",
        "IPv6 bans show their prefix"
    );
    assert_eq!(v6.rule, None, "unknown to the agent: no rule");
    assert_eq!(v6.expires_ms, None, "permanent");
}

#[test]
fn without_an_agent_the_totals_are_unknown_and_it_says_why() {
    let st = build(
        good(view()),
        AgentInput::Absent("no agent is running".into()),
    );
    assert!(st.healthy);
    assert!(st.agent.is_none());
    assert_eq!(st.agent_note.as_deref(), Some("no agent is running"));
    assert!(st.drops.iter().all(|d| d.packets_total.is_none()));
    assert!(st.top.iter().all(|o| o.rule.is_none()));
    let mut text = Vec::new();
    text::render(&mut text, &st).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("agent: no agent is running"), "{text}");
    assert!(!text.contains("packets total"), "{text}");
}

#[test]
fn a_missing_table_or_rule_is_unhealthy() {
    let st = build(
        good(KernelView::absent(Features::default())),
        AgentInput::Absent("x".into()),
    );
    assert!(!st.healthy);
    assert!(st.problems[0].contains("table inet fwagent is missing"));

    let mut v = view();
    v.counters
        .retain(|c| !(c.hook == Hook::Forward && c.set == "nets6"));
    let st = build(good(v), running());
    assert!(!st.healthy);
    assert_eq!(st.missing_rules, vec!["forward:nets6".to_string()]);
    assert!(st.problems.iter().any(|p| p.contains("forward:nets6")));
}

#[test]
fn a_deleted_rule_keeps_its_carried_total() {
    let mut v = view();
    v.counters
        .retain(|c| !(c.hook == Hook::Input && c.set == "banned4"));
    let st = build(good(v), running());
    let d = st
        .drops
        .iter()
        .find(|d| d.hook == Hook::Input && d.family == Family::V4)
        .unwrap();
    assert_eq!(d.packets, 0);
    assert_eq!(d.packets_total, Some(107), "carried 100 + last sample 7");
}

#[test]
fn a_failed_read_keeps_the_last_figures_and_says_so() {
    let k = KernelInput {
        view: Some(view()),
        read_at: Some(now() - Duration::from_secs(60)),
        error: Some("reading rules of table inet fwagent: Operation not permitted".into()),
    };
    let st = build(k, running());
    assert!(!st.healthy);
    assert_eq!(st.kernel_read_at_unix, Some(NOW - 60));
    assert!(st.problems[0].starts_with("cannot read the kernel"));
    assert_eq!(st.blocked.total, 5, "last good figures still shown");
}

#[test]
fn json_field_names_are_the_documented_ones() {
    let v = serde_json::to_value(build(good(view()), running())).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for k in [
        "format",
        "generated_at_unix",
        "host",
        "table",
        "healthy",
        "problems",
        "kernel_error",
        "kernel_read_at_unix",
        "read_ms",
        "present",
        "protected",
        "missing_rules",
        "blocked",
        "sets",
        "drops",
        "rules",
        "top",
        "features",
        "agent",
        "agent_note",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(keys.len(), 20, "undocumented field in {keys:?}");
    assert_eq!(v["format"], 1);
    assert_eq!(v["drops"][0]["hook"], "input");
    assert_eq!(v["drops"][0]["family"], "ip");
    for k in ["packets", "bytes", "packets_total", "bytes_total"] {
        assert!(v["drops"][0].get(k).is_some(), "drops.{k}");
    }
    for k in [
        "target",
        "set",
        "packets",
        "bytes",
        "timeout_ms",
        "expires_ms",
        "rule",
        "times_banned",
        "hits",
        "banned_at_unix",
    ] {
        assert!(v["top"][0].get(k).is_some(), "top.{k}");
    }
    for k in [
        "recent_bans",
        "drop_counters",
        "history",
        "rules",
        "sources",
        "uptime_secs",
    ] {
        assert!(v["agent"].get(k).is_some(), "agent.{k}");
    }
    // The agent's part survives the trip over the control socket.
    let back: AgentFigures = serde_json::from_value(v["agent"].clone()).unwrap();
    assert_eq!(back.drop_counters, figures().drop_counters);
    assert_eq!(back.sources[0].matched["exim-ratelimit"], 9);
}

#[test]
fn the_table_names_since_installed_and_totals() {
    let st = build(good(view()), running());
    let mut out = Vec::new();
    text::render(&mut out, &st).unwrap();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "table inet fwagent: present, protected",
        "blocked: 5 (IPv4 4, IPv6 1",
        "since the rules were installed",
        "kept by the agent across re-installs",
        "198.51.100.7",
        "exim-ratelimit",
        "1h",
        "last ban: 198.51.100.7/32 by exim-ratelimit (1m30s ago)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let input_v4 = text
        .lines()
        .find(|l| l.trim_start().starts_with("input    ip "))
        .unwrap();
    let cols: Vec<&str> = input_v4.split_whitespace().collect();
    assert_eq!(cols[2..], ["7", "420", "107", "6,420"], "{input_v4}");
}

#[test]
fn metrics_carry_totals_and_escape_labels() {
    let st = build(good(view()), running());
    let m = metrics::render(&st);
    let line = |prefix: &str| {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
            .to_string()
    };
    assert_eq!(
        line("fwagent_dropped_packets_total{hook=\"input\",family=\"ipv4\"}"),
        "fwagent_dropped_packets_total{hook=\"input\",family=\"ipv4\"} 107"
    );
    assert_eq!(
        line("fwagent_blocked_addresses{family=\"ipv6\"}"),
        "fwagent_blocked_addresses{family=\"ipv6\"} 1"
    );
    assert!(
        m.contains("fwagent_log_lines_read_total{file=\"/var/log/exim4/main\\\"log\"} 1000"),
        "{m}"
    );
    assert!(m.contains("fwagent_bans_total{rule=\"exim-ratelimit\"} 3"));
    // Every family is announced once, before its samples.
    let mut seen = std::collections::HashSet::new();
    for l in m.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(seen.insert(l.split(' ').nth(2).unwrap().to_string()), "{l}");
    }
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(
            seen.contains(name),
            "{name} has no TYPE line before its sample"
        );
    }
}
