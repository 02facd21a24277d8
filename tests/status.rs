//! `fwagent status --json` against the kernel's own figures (`nft -j list ruleset`), with real
//! traffic dropped between two throwaway namespaces: without an agent (kernel figures only),
//! and with a running agent (rules joined, totals carried across an external flush).
//! Needs root; skips with a visible message otherwise.
//!
//! Until `fwagent status` is wired to `fwagent::status::cli`, the same code runs in-process
//! inside the namespace (see `status_support::status_json`).

mod common;
mod status_support;

use std::time::Duration;

use common::netns::{root_or_skip, wait_until};
use serde_json::Value;
use status_support::*;

/// Every figure of `st` that the kernel also shows equals the kernel's.
fn assert_matches_kernel(st: &Value, rules: &[KRule], elems: &[KElem]) {
    // Per rule, the interval sets' rules included.
    let st_rules = st["rules"].as_array().unwrap();
    assert_eq!(
        st_rules.len(),
        rules.len(),
        "rules: {st_rules:?} vs {rules:?}"
    );
    for k in rules {
        let r = st_rules
            .iter()
            .find(|r| r["hook"] == k.chain.as_str() && r["set"] == k.set.as_str())
            .unwrap_or_else(|| panic!("no rule {}:{} in status", k.chain, k.set));
        assert_eq!(r["packets"], k.packets, "{}:{} packets", k.chain, k.set);
        assert_eq!(r["bytes"], k.bytes, "{}:{} bytes", k.chain, k.set);
    }
    // Per hook and family.
    for hook in ["input", "forward"] {
        for (fam, v6) in [("ip", false), ("ip6", true)] {
            let (p, b) = kernel_drop(rules, hook, v6);
            let d = drop_of(st, hook, fam);
            assert_eq!(d["packets"], p, "{hook}/{fam} packets");
            assert_eq!(d["bytes"], b, "{hook}/{fam} bytes");
        }
    }
    // Set sizes: what nft lists.
    for s in st["sets"].as_array().unwrap() {
        let n = elems.iter().filter(|e| e.set == s["set"]).count() as u64;
        assert_eq!(s["count"], n, "set {} count", s["set"]);
    }
    let v4 = elems.iter().filter(|e| e.set.ends_with('4')).count() as u64;
    assert_eq!(st["blocked"]["ipv4"], v4);
    assert_eq!(st["blocked"]["ipv6"], elems.len() as u64 - v4);
    // Top offenders: the kernel's per-element counters, biggest first.
    let mut hot: Vec<&KElem> = elems.iter().filter(|e| e.packets > 0).collect();
    hot.sort_by(|a, b| b.packets.cmp(&a.packets).then(b.bytes.cmp(&a.bytes)));
    let top = st["top"].as_array().unwrap();
    assert_eq!(top.len(), hot.len().min(10));
    for o in top {
        let t = o["target"].as_str().unwrap();
        let k = elems
            .iter()
            .find(|e| e.target == t || format!("{}/64", e.target) == t)
            .unwrap_or_else(|| panic!("top offender {t} is not in the kernel: {elems:?}"));
        assert_eq!(o["packets"], k.packets, "{t} packets");
        assert_eq!(o["bytes"], k.bytes, "{t} bytes");
    }
    if let Some(first) = hot.first() {
        assert_eq!(
            top[0]["packets"], first.packets,
            "the top offender drops the most"
        );
    }
}

#[test]
fn status_without_an_agent_equals_the_kernel() {
    if !root_or_skip("status_without_an_agent_equals_the_kernel") {
        return;
    }
    let lab = Lab::new("status-cli");
    lab.write_config("");
    let cfg = lab.config();
    let cfg = path_str(&cfg);
    // A second peer address inside a network ban, so the interval set's rule drops too.
    lab.peer
        .ip(&["addr", "add", "198.51.100.66/24", "dev", "p0"]);
    lab.ns.fwagent_ok(
        &[],
        &["ban", "--config", cfg, PEER4, PEER6, "198.51.100.64/26"],
    );

    assert!(!lab.ping_from_peer(HOST4, 3), "banned IPv4 got through");
    assert!(
        !lab.peer
            .output(
                "ping",
                &[
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-I",
                    "198.51.100.66",
                    HOST4
                ]
            )
            .status
            .success(),
        "the banned network got through"
    );
    assert!(!lab.ping_from_peer(HOST6, 2), "banned IPv6 got through");

    let (rules, elems, (st, healthy)) = between_stable_reads(&lab.ns, || status_json(&lab));
    assert!(healthy, "status: {st:#}");
    assert_eq!(st["present"], true);
    assert_eq!(st["protected"], false, "a CLI-made table has no owner");
    assert_eq!(kernel_owned(&lab.ns, "fwagent"), Some(false));
    assert!(st["agent"].is_null());
    assert!(
        st["agent_note"]
            .as_str()
            .unwrap()
            .contains("no agent is running"),
        "{st:#}"
    );
    assert!(
        st["drops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["packets_total"].is_null()),
        "no totals without an agent"
    );
    let (p4, _) = kernel_drop(&rules, "input", false);
    assert!(p4 >= 5, "pings were dropped: {rules:?}");
    let nets = rules
        .iter()
        .find(|r| r.chain == "input" && r.set == "nets4")
        .unwrap();
    assert!(
        nets.packets >= 2,
        "the interval-set rule counted: {rules:?}"
    );
    assert_matches_kernel(&st, &rules, &elems);
    assert_eq!(st["top"][0]["target"], PEER4);

    // One drop rule removed behind our back: unhealthy, and it says which.
    let listing = lab.ns.ok(
        "nft",
        &["-a", "list", "chain", "inet", "fwagent", "forward"],
    );
    let handle = listing
        .lines()
        .find(|l| l.contains("@nets6"))
        .and_then(|l| l.rsplit("handle ").next())
        .unwrap()
        .trim()
        .to_string();
    lab.ns.ok(
        "nft",
        &[
            "delete", "rule", "inet", "fwagent", "forward", "handle", &handle,
        ],
    );
    let (st, healthy) = status_json(&lab);
    assert!(!healthy);
    assert_eq!(st["missing_rules"], serde_json::json!(["forward:nets6"]));

    // No table at all: unhealthy, nothing blocked.
    lab.ns.fwagent_ok(&[], &["teardown", "--config", cfg]);
    let (st, healthy) = status_json(&lab);
    assert!(!healthy);
    assert_eq!(st["present"], false);
    assert!(st["problems"][0].as_str().unwrap().contains("missing"));
}

#[test]
fn status_with_an_agent_joins_its_bans_and_keeps_totals_across_a_flush() {
    if !root_or_skip("status_with_an_agent_joins_its_bans_and_keeps_totals_across_a_flush") {
        return;
    }
    let lab = Lab::new("status-agent");
    // Unprotected, so that an external `nft delete table` can remove it.
    lab.write_config("[firewall]\nprotect = false\n");
    let agent = Agent::start(&lab);

    lab.offend(PEER4, 3);
    lab.offend(PEER6, 3);
    let banned = wait_until(Duration::from_secs(10), || {
        let e = kernel_elements(&lab.ns, "fwagent");
        e.iter().any(|e| e.target == PEER4) && e.iter().any(|e| e.target == PEER6)
    });
    assert!(banned, "agent did not ban: {}", agent.log());
    assert!(!lab.ping_from_peer(HOST4, 4));
    assert!(!lab.ping_from_peer(HOST6, 2));

    let (rules, elems, (st, healthy)) = between_stable_reads(&lab.ns, || status_json(&lab));
    assert!(healthy, "{st:#}");
    assert_matches_kernel(&st, &rules, &elems);
    // Joined with the agent: rule and times banned of the top offender, per-rule figures.
    let top = &st["top"][0];
    assert_eq!(top["target"], PEER4);
    assert_eq!(top["rule"], "exim-ratelimit");
    assert_eq!(top["times_banned"], 1);
    let a = &st["agent"];
    assert_eq!(a["pid"], agent.pid());
    let rule = &a["rules"][0];
    assert_eq!(rule["name"], "exim-ratelimit");
    assert_eq!(rule["hits"], 6);
    assert_eq!(rule["bans"], 2);
    assert_eq!(a["sources"][0]["lines"], 6);
    assert_eq!(a["sources"][0]["matched"]["exim-ratelimit"], 6);
    // The local prefix is never banned whole: the exact address went to banned6x.
    assert!(
        elems
            .iter()
            .any(|e| e.set == "banned6x" && e.target == PEER6)
    );
    let before = drop_of(&st, "input", "ip").clone();
    assert_eq!(
        before["packets_total"], before["packets"],
        "no re-install yet"
    );
    let before_total = before["packets_total"].as_u64().unwrap();
    assert!(before_total >= 4);

    // Let the agent sample the final counters, then flush its table from outside.
    wait_status(&lab.ns, Duration::from_secs(10), |s| {
        drop_of(s, "input", "ip")["packets_total"] == before_total
    });
    lab.ns.ok("nft", &["delete", "table", "inet", "fwagent"]);
    let back = wait_status(&lab.ns, Duration::from_secs(15), |s| {
        s["agent"]["reinstalls"] == 1 && s["present"] == true && s["blocked"]["total"] == 2
    });
    assert_eq!(
        drop_of(&back, "input", "ip")["packets"],
        0,
        "rules re-created"
    );
    assert_eq!(
        drop_of(&back, "input", "ip")["packets_total"],
        before_total,
        "the total survives the flush"
    );
    assert!(!lab.ping_from_peer(HOST4, 2));
    let (rules, elems, (st, _)) = between_stable_reads(&lab.ns, || status_json(&lab));
    assert_matches_kernel(&st, &rules, &elems);
    let now = drop_of(&st, "input", "ip");
    let since = now["packets"].as_u64().unwrap();
    assert!(since >= 2, "{now}");
    assert_eq!(
        now["packets_total"].as_u64().unwrap(),
        before_total + since,
        "total = before the flush + since the re-install"
    );
}
