//! End-to-end tests of the kernel commands, run as the real binary inside throwaway network
//! namespaces (`ip netns exec NS fwagent …`), with `nft`, `ip`, `ping` and bash's
//! `/dev/tcp` as independent oracles. Needs root; skips with a visible message otherwise.
//!
//! Addresses: 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32; bulk: 198.18.0.0/15.

mod common;

use std::time::Duration;

use common::netns::{NetNs, root_or_skip, veth, wait_until};
use serde_json::Value;

/// The ruleset `fwagent setup` must produce, written in nft's language.
const GOLDEN: &str = r#"
table inet fwagent {
  comment "fwagent ruleset v1: set_size=1048576 ipv6_prefix=64 priority=-10"
  set banned4 { type ipv4_addr; size 1048576; flags timeout; counter; }
  set nets4 { type ipv4_addr; size 65536; flags interval,timeout; counter; }
  set banned6x { type ipv6_addr; size 1048576; flags timeout; counter; }
  set banned6 { type ipv6_addr; size 1048576; flags timeout; counter; }
  set nets6 { type ipv6_addr; size 65536; flags interval,timeout; counter; }
  chain input { type filter hook input priority -10; policy accept;
    ip saddr @banned4 counter drop
    ip saddr @nets4 counter drop
    ip6 saddr @banned6x counter drop
    ip6 saddr & ffff:ffff:ffff:ffff:: @banned6 counter drop
    ip6 saddr @nets6 counter drop
  }
  chain forward { type filter hook forward priority -10; policy accept;
    ip saddr @banned4 counter drop
    ip saddr @nets4 counter drop
    ip6 saddr @banned6x counter drop
    ip6 saddr & ffff:ffff:ffff:ffff:: @banned6 counter drop
    ip6 saddr @nets6 counter drop
  }
}
"#;

/// `nft -j list ruleset` without handles and version info, for comparisons.
fn ruleset_json(ns: &NetNs) -> Value {
    let text = ns.ok("nft", &["-j", "list", "ruleset"]);
    let mut v: Value = serde_json::from_str(&text).expect("nft json");
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let items = v["nftables"].as_array_mut().expect("nftables array");
    items.retain(|i| i.get("metainfo").is_none());
    strip(&mut v);
    v
}

fn json(ns: &NetNs, env: &[(&str, &str)], args: &[&str]) -> Value {
    serde_json::from_str(&ns.fwagent_ok(env, args)).expect("fwagent json")
}

/// The element of `target` in `fwagent list --json`, if any.
fn element(ns: &NetNs, env: &[(&str, &str)], target: &str) -> Option<Value> {
    let v = json(ns, env, &["list", "--json"]);
    v.as_array()?
        .iter()
        .find(|e| e["target"] == target)
        .cloned()
}

fn drops(status: &Value, hook: &str, family: &str) -> u64 {
    status["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hook"] == hook && d["family"] == family)
        .and_then(|d| d["packets"].as_u64())
        .unwrap_or(0)
}

fn set_count(status: &Value, set: &str) -> u64 {
    status["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["set"] == set)
        .and_then(|s| s["count"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Regression (found by the Exim lab, where the namespace also holds a DNAT table): the
/// kernel's chain dump is not filtered by table, so other tables' chains made our table look
/// different and every apply rebuilt it (resetting counters, and looping on our own events).
#[test]
fn other_tables_chains_do_not_make_ours_differ() {
    if !root_or_skip("other_tables_chains_do_not_make_ours_differ") {
        return;
    }
    let ns = NetNs::new();
    ns.ok("nft", &["add", "table", "inet", "other"]);
    for (chain, hook) in [("input", "input"), ("prerouting", "prerouting"), ("x", "")] {
        let spec = if hook.is_empty() {
            "{ }".to_string()
        } else {
            format!("{{ type filter hook {hook} priority 0; }}")
        };
        ns.ok("nft", &["add", "chain", "inet", "other", chain, &spec]);
    }
    assert!(ns.fwagent_ok(&[], &["setup"]).contains("created"));
    let before = ns.ok("nft", &["-j", "list", "ruleset"]);
    assert!(ns.fwagent_ok(&[], &["setup"]).contains("up to date"));
    assert_eq!(ns.ok("nft", &["-j", "list", "ruleset"]), before);
}

#[test]
fn setup_matches_golden_ruleset_and_is_idempotent() {
    if !root_or_skip("setup_matches_golden_ruleset_and_is_idempotent") {
        return;
    }
    let ours = NetNs::new();
    let reference = NetNs::new();
    assert!(ours.fwagent_ok(&[], &["setup"]).contains("created"));
    let golden = std::env::temp_dir().join(format!("fwt-golden-{}.nft", std::process::id()));
    std::fs::write(&golden, GOLDEN).unwrap();
    reference.ok("nft", &["-f", golden.to_str().unwrap()]);
    let _ = std::fs::remove_file(&golden);
    assert_eq!(ruleset_json(&ours), ruleset_json(&reference));

    // Twice applied: nothing changes, not even handles.
    let before = ours.ok("nft", &["-j", "list", "ruleset"]);
    assert!(ours.fwagent_ok(&[], &["setup"]).contains("up to date"));
    assert_eq!(ours.ok("nft", &["-j", "list", "ruleset"]), before);

    // Existing elements survive a re-setup.
    ours.fwagent_ok(
        &[],
        &["ban", "198.51.100.7", "2001:db8:1:2::9", "203.0.113.0/24"],
    );
    ours.fwagent_ok(&[], &["setup"]);
    for t in ["198.51.100.7", "2001:db8:1:2::/64", "203.0.113.0/24"] {
        assert!(element(&ours, &[], t).is_some(), "{t} survived");
    }
    // A rule removed behind our back: status says so (exit 1); setup rebuilds, keeping bans.
    ours.ok("nft", &["flush", "chain", "inet", "fwagent", "forward"]);
    let st = ours.fwagent(&["status", "--json"]);
    assert_eq!(st.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["missing_rules"].as_array().unwrap().len(), 5, "{v}");
    let out = ours.fwagent_ok(&[], &["setup"]);
    assert!(
        out.contains("rebuilt") && out.contains("3 bans carried"),
        "{out}"
    );
    assert_eq!(ours.fwagent(&["status"]).status.code(), Some(0));
    assert!(element(&ours, &[], "2001:db8:1:2::/64").is_some());

    // Teardown removes only our table; a second teardown is not an error.
    reference.ok("nft", &["add", "table", "ip", "other"]);
    ours.ok("nft", &["add", "table", "ip", "other"]);
    assert!(ours.fwagent_ok(&[], &["teardown"]).contains("removed"));
    assert!(
        ours.fwagent_ok(&[], &["teardown"])
            .contains("did not exist")
    );
    assert_eq!(ours.ok("nft", &["list", "tables"]).trim(), "table ip other");
    let st = ours.fwagent(&["status"]);
    assert_eq!(st.status.code(), Some(1), "status fails without the table");
}

/// True when a TCP connection attempt from `ns` gets any answer (SYN-ACK or RST) within
/// 2 s; false when the SYN is dropped. Uses bash's /dev/tcp and coreutils' `timeout`
/// (exit 124 = timed out), so no server process is needed: a closed port answers RST.
fn tcp_answers(ns: &NetNs, addr: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port}");
    let out = ns.output("timeout", &["2", "bash", "-c", &script]);
    out.status.code() != Some(124)
}

#[test]
fn ipv4_traffic_is_dropped_counted_and_restored() {
    if !root_or_skip("ipv4_traffic_is_dropped_counted_and_restored") {
        return;
    }
    let host = NetNs::new();
    let peer = NetNs::new();
    veth(&host, "h0", &peer, "p0");
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", "h0"]);
    peer.ip(&["addr", "add", "198.51.100.2/24", "dev", "p0"]);
    assert!(peer.ping(&["198.51.100.1"]), "ping works before the ban");
    assert!(
        tcp_answers(&peer, "198.51.100.1", 8080),
        "TCP works before the ban"
    );

    host.fwagent_ok(&[], &["ban", "198.51.100.2", "--for", "1h"]);
    assert!(!peer.ping(&["198.51.100.1"]), "ping dropped after the ban");
    assert!(!tcp_answers(&peer, "198.51.100.1", 8080), "TCP dropped");

    let st = json(&host, &[], &["status", "--json"]);
    assert!(drops(&st, "input", "ip") >= 2, "input ip counter: {st}");
    assert_eq!(drops(&st, "forward", "ip"), 0);
    let top = &st["top"][0];
    assert_eq!(top["target"], "198.51.100.2");
    assert!(top["packets"].as_u64().unwrap() >= 2);
    let e = element(&host, &[], "198.51.100.2").expect("listed");
    assert!(e["packets"].as_u64().unwrap() >= 2 && e["bytes"].as_u64().unwrap() > 0);
    assert!(e["expires_ms"].as_u64().unwrap() > 3_500_000);

    host.fwagent_ok(&[], &["unban", "198.51.100.2"]);
    assert!(peer.ping(&["198.51.100.1"]), "ping works after unban");
    assert!(
        tcp_answers(&peer, "198.51.100.1", 8080),
        "TCP works after unban"
    );
}

/// Permanent IPv6 neighbour entries both ways, so neighbour discovery (whose packets carry
/// a source address the kernel picks, possibly a banned one) cannot decide a test.
fn static_neighbours(host: &NetNs, host_addrs: &[&str], peer: &NetNs, peer_addrs: &[&str]) {
    let mac = |ns: &NetNs, dev: &str| ns.ok("cat", &[&format!("/sys/class/net/{dev}/address")]);
    let (hmac, pmac) = (mac(host, "h0"), mac(peer, "p0"));
    for a in peer_addrs {
        host.ip(&[
            "-6",
            "neigh",
            "replace",
            a,
            "lladdr",
            pmac.trim(),
            "dev",
            "h0",
            "nud",
            "permanent",
        ]);
    }
    for a in host_addrs {
        peer.ip(&[
            "-6",
            "neigh",
            "replace",
            a,
            "lladdr",
            hmac.trim(),
            "dev",
            "p0",
            "nud",
            "permanent",
        ]);
    }
}

#[test]
fn ipv6_prefix_ban_covers_the_whole_64() {
    if !root_or_skip("ipv6_prefix_ban_covers_the_whole_64") {
        return;
    }
    let host = NetNs::new();
    let peer = NetNs::new();
    veth(&host, "h0", &peer, "p0");
    host.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "h0", "nodad"]);
    for a in ["2001:db8:1::2/64", "2001:db8:1::3/64"] {
        peer.ip(&["addr", "add", a, "dev", "p0", "nodad"]);
    }
    static_neighbours(
        &host,
        &["2001:db8:1::1"],
        &peer,
        &["2001:db8:1::2", "2001:db8:1::3"],
    );
    for src in ["2001:db8:1::2", "2001:db8:1::3"] {
        assert!(
            peer.ping(&["-6", "-I", src, "2001:db8:1::1"]),
            "{src} before"
        );
    }
    // The /64 also holds the host's own 2001:db8:1::1: without --force a ban of a peer
    // address narrows to that address alone, so the host never drops its own prefix.
    let out = host.fwagent_ok(&[], &["ban", "2001:db8:1::3"]);
    assert!(out.contains("2001:db8:1::3/128"), "{out}");
    let st = json(&host, &[], &["status", "--json"]);
    assert_eq!(
        (set_count(&st, "banned6"), set_count(&st, "banned6x")),
        (0, 1)
    );
    assert!(!peer.ping(&["-6", "-I", "2001:db8:1::3", "2001:db8:1::1"]));
    assert!(peer.ping(&["-6", "-I", "2001:db8:1::2", "2001:db8:1::1"]));
    host.fwagent_ok(&[], &["unban", "2001:db8:1::3/128"]);
    // Forced: one address banned → one element for its /64 → both addresses dropped.
    host.fwagent_ok(&[], &["ban", "--force", "2001:db8:1::2"]);
    let st = json(&host, &[], &["status", "--json"]);
    assert_eq!(set_count(&st, "banned6"), 1);
    for src in ["2001:db8:1::2", "2001:db8:1::3"] {
        assert!(
            !peer.ping(&["-6", "-I", src, "2001:db8:1::1"]),
            "{src} dropped"
        );
    }
    let st = json(&host, &[], &["status", "--json"]);
    assert!(drops(&st, "input", "ip6") >= 2, "{st}");
    let e = element(&host, &[], "2001:db8:1::/64").expect("one /64 element");
    assert!(e["packets"].as_u64().unwrap() >= 2);

    host.fwagent_ok(&[], &["unban", "2001:db8:1::3"]); // same /64
    assert!(wait_until(Duration::from_secs(5), || peer.ping(&[
        "-6",
        "-I",
        "2001:db8:1::2",
        "2001:db8:1::1"
    ])));

    // An exact ban (/128) drops only that address.
    host.fwagent_ok(&[], &["ban", "2001:db8:1::3/128"]);
    assert!(!peer.ping(&["-6", "-I", "2001:db8:1::3", "2001:db8:1::1"]));
    assert!(peer.ping(&["-6", "-I", "2001:db8:1::2", "2001:db8:1::1"]));
}

#[test]
fn forwarded_traffic_to_a_dnat_port_is_dropped() {
    if !root_or_skip("forwarded_traffic_to_a_dnat_port_is_dropped") {
        return;
    }
    let client = NetNs::new();
    let router = NetNs::new();
    let container = NetNs::new();
    veth(&client, "c0", &router, "r0");
    veth(&router, "r1", &container, "k0");
    client.ip(&["addr", "add", "198.51.100.2/24", "dev", "c0"]);
    client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    router.ip(&["addr", "add", "198.51.100.1/24", "dev", "r0"]);
    router.ip(&["addr", "add", "203.0.113.1/24", "dev", "r1"]);
    container.ip(&["addr", "add", "203.0.113.2/24", "dev", "k0"]);
    container.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    router.ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    // Docker-style published port: router:8080 → container:80 (DNAT in prerouting).
    router.ok("nft", &["add", "table", "ip", "dockerish"]);
    router.ok(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "dockerish",
            "pre",
            "{ type nat hook prerouting priority dstnat; }",
        ],
    );
    router.ok(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "dockerish",
            "pre",
            "tcp",
            "dport",
            "8080",
            "dnat",
            "to",
            "203.0.113.2:80",
        ],
    );
    // The container's closed port 80 answers RST through the DNAT.
    assert!(
        tcp_answers(&client, "198.51.100.1", 8080),
        "published port answers"
    );

    router.fwagent_ok(&[], &["ban", "198.51.100.2"]);
    assert!(
        !tcp_answers(&client, "198.51.100.1", 8080),
        "forwarded TCP dropped"
    );
    // The DNAT'd SYNs were dropped in the forward hook, not in input.
    let st = json(&router, &[], &["status", "--json"]);
    assert!(drops(&st, "forward", "ip") >= 1, "forward counter: {st}");
    assert_eq!(drops(&st, "input", "ip"), 0, "{st}");
    assert!(!client.ping(&["203.0.113.2"]), "routed ping dropped");
    let st2 = json(&router, &[], &["status", "--json"]);
    assert!(drops(&st2, "forward", "ip") > drops(&st, "forward", "ip"));
    // The other table is untouched.
    assert!(
        router
            .ok("nft", &["list", "table", "ip", "dockerish"])
            .contains("dnat")
    );

    router.fwagent_ok(&[], &["unban", "198.51.100.2"]);
    assert!(
        tcp_answers(&client, "198.51.100.1", 8080),
        "works after unban"
    );
}

fn timeouts_expire_and_refresh(env: &[(&str, &str)]) {
    let ns = NetNs::new();
    ns.fwagent_ok(env, &["setup"]);
    ns.fwagent_ok(env, &["ban", "198.51.100.20", "--for", "2s"]);
    assert!(element(&ns, env, "198.51.100.20").is_some());
    ns.fwagent_ok(
        env,
        &["ban", "198.51.100.21", "203.0.113.0/28", "--for", "30s"],
    );
    // Still under its first timeout when refreshed, so the refresh is a real update.
    assert_eq!(
        element(&ns, env, "198.51.100.21").unwrap()["timeout_ms"],
        30_000
    );
    ns.fwagent_ok(
        env,
        &["ban", "198.51.100.21", "203.0.113.0/28", "--for", "1h"],
    );
    assert!(
        wait_until(Duration::from_secs(8), || element(
            &ns,
            env,
            "198.51.100.20"
        )
        .is_none()),
        "expired element is gone"
    );
    for t in ["198.51.100.21", "203.0.113.0/28"] {
        let e = element(&ns, env, t).unwrap_or_else(|| panic!("{t} refreshed, still banned"));
        assert_eq!(e["timeout_ms"], 3_600_000, "{t}");
        assert!(e["expires_ms"].as_u64().unwrap() > 3_500_000, "{t}");
    }
}

#[test]
fn timeouts_expire_and_refresh_extends() {
    if !root_or_skip("timeouts_expire_and_refresh_extends") {
        return;
    }
    timeouts_expire_and_refresh(&[]);
}

#[test]
fn timeouts_without_in_place_update_fallback() {
    if !root_or_skip("timeouts_without_in_place_update_fallback") {
        return;
    }
    timeouts_expire_and_refresh(&[("FWAGENT_KERNEL_COMPAT", "noupdate")]);
}

#[test]
fn bulk_100k_from_file_all_land() {
    if !root_or_skip("bulk_100k_from_file_all_land") {
        return;
    }
    let ns = NetNs::new();
    let path = std::env::temp_dir().join(format!("fwt-bulk-{}.txt", std::process::id()));
    let mut text = String::from("# 100,000 addresses of 198.18.0.0/15\n");
    for i in 0..100_000u32 {
        let a = std::net::Ipv4Addr::from(0xc612_0000 + i);
        text.push_str(&format!("{a}\n"));
    }
    std::fs::write(&path, text).unwrap();
    let out = ns.fwagent_ok(
        &[],
        &["ban", "--from-file", path.to_str().unwrap(), "--for", "1h"],
    );
    let _ = std::fs::remove_file(&path);
    assert!(out.contains("100000"), "{out}");
    let st = json(&ns, &[], &["status", "--json"]);
    assert_eq!(set_count(&st, "banned4"), 100_000);
    // The same count without NFTA_SET_COUNT (6.1 path: counted by dump) and by nft itself.
    let st = json(
        &ns,
        &[("FWAGENT_KERNEL_COMPAT", "nocount")],
        &["status", "--json"],
    );
    assert_eq!(set_count(&st, "banned4"), 100_000);
    let listed = ns.ok("nft", &["-j", "list", "set", "inet", "fwagent", "banned4"]);
    let v: Value = serde_json::from_str(&listed).unwrap();
    let n = v["nftables"][1]["set"]["elem"].as_array().map(|a| a.len());
    assert_eq!(n, Some(100_000));
}

#[test]
fn bad_input_names_itself_and_changes_nothing() {
    if !root_or_skip("bad_input_names_itself_and_changes_nothing") {
        return;
    }
    let ns = NetNs::new();
    ns.fwagent_ok(&[], &["setup"]);
    let out = ns.fwagent(&["ban", "198.51.100.7", "198.51.100.300"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("198.51.100.300"));
    let path = std::env::temp_dir().join(format!("fwt-bad-{}.txt", std::process::id()));
    std::fs::write(&path, b"198.51.100.8\n\xff\xfe\n").unwrap();
    let out = ns.fwagent(&["ban", "--from-file", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2: not valid UTF-8"));
    let out = ns.fwagent(&["ban", "198.51.100.7", "--for", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        json(&ns, &[], &["list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was banned"
    );
}

#[test]
fn unprivileged_user_is_told_what_is_needed() {
    if !root_or_skip("unprivileged_user_is_told_what_is_needed") {
        return;
    }
    let ns = NetNs::new();
    let out = ns.output(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            env!("CARGO_BIN_EXE_fwagent"),
            "setup",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(ns.ok("nft", &["list", "ruleset"]).is_empty());
}

/// Unban stays idempotent and never aborts its batch, with DESTROY (6.3+) and without.
fn unban_is_idempotent(env: &[(&str, &str)]) {
    let ns = NetNs::new();
    ns.fwagent_ok(
        env,
        &[
            "ban",
            "198.51.100.7",
            "198.51.100.8",
            "2001:db8:5::1",
            "203.0.113.0/24",
        ],
    );
    let out = ns.fwagent_ok(
        env,
        &[
            "unban",
            "198.51.100.7",
            "198.51.100.99",
            "198.51.100.8",
            "2001:db8:5::77",
            "2001:db8:6::1",
            "203.0.113.0/24",
            "198.51.100.0/28",
        ],
    );
    assert!(out.contains("unbanned 4; 3 not banned"), "{out}");
    assert_eq!(
        json(&ns, env, &["list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let out = ns.fwagent_ok(env, &["unban", "198.51.100.7"]);
    assert!(out.contains("unbanned 0; 1 not banned"), "{out}");
}

#[test]
fn unban_is_idempotent_with_destroy() {
    if !root_or_skip("unban_is_idempotent_with_destroy") {
        return;
    }
    unban_is_idempotent(&[]);
}

#[test]
fn unban_is_idempotent_without_destroy_fallback() {
    if !root_or_skip("unban_is_idempotent_without_destroy_fallback") {
        return;
    }
    unban_is_idempotent(&[("FWAGENT_KERNEL_COMPAT", "nodestroy")]);
}

#[test]
fn whole_cli_on_the_6_1_paths() {
    if !root_or_skip("whole_cli_on_the_6_1_paths") {
        return;
    }
    let env = [("FWAGENT_KERNEL_COMPAT", "6.1")];
    let ns = NetNs::new();
    ns.fwagent_ok(&env, &["setup"]);
    ns.fwagent_ok(
        &env,
        &[
            "ban",
            "198.51.100.7",
            "2001:db8:1::5",
            "203.0.113.0/25",
            "--for",
            "10m",
        ],
    );
    ns.fwagent_ok(
        &env,
        &[
            "ban",
            "198.51.100.7",
            "2001:db8:1::5",
            "203.0.113.0/25",
            "--for",
            "2h",
        ],
    );
    let st = json(&ns, &env, &["status", "--json"]);
    assert_eq!(st["features"]["destroy"], false);
    for (set, n) in [("banned4", 1), ("banned6", 1), ("nets4", 1), ("nets6", 0)] {
        assert_eq!(set_count(&st, set), n, "{set}");
    }
    for t in ["198.51.100.7", "2001:db8:1::/64", "203.0.113.0/25"] {
        let e = element(&ns, &env, t).expect(t);
        assert_eq!(e["timeout_ms"], 7_200_000, "{t} refreshed by delete + add");
    }
    let out = ns.fwagent_ok(
        &env,
        &["unban", "198.51.100.7", "198.51.100.8", "2001:db8:1::9"],
    );
    assert!(out.contains("unbanned 2; 1 not banned"), "{out}");
}

#[test]
fn network_bans_drop_inside_and_only_inside() {
    if !root_or_skip("network_bans_drop_inside_and_only_inside") {
        return;
    }
    let host = NetNs::new();
    let peer = NetNs::new();
    veth(&host, "h0", &peer, "p0");
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", "h0"]);
    peer.ip(&["addr", "add", "198.51.100.2/24", "dev", "p0"]);
    peer.ip(&["addr", "add", "198.51.100.77/24", "dev", "p0"]);
    host.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "h0", "nodad"]);
    peer.ip(&["addr", "add", "2001:db8:1::2/64", "dev", "p0", "nodad"]);
    peer.ip(&["addr", "add", "2001:db8:1::8002/64", "dev", "p0", "nodad"]);
    static_neighbours(
        &host,
        &["2001:db8:1::1"],
        &peer,
        &["2001:db8:1::2", "2001:db8:1::8002"],
    );
    // Networks holding .2 and 2001:db8:1::2 (but not .77 or ::8002), plus networks
    // elsewhere, so the interval sets have ranges below and above the peer's addresses.
    // Two of them hold the host's own addresses: refused without --force, nothing banned.
    let out = host.fwagent(&["ban", "198.51.100.0/28", "203.0.113.0/24"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("198.51.100.0/28 holds 198.51.100."),
        "{out:?}"
    );
    let ruleset = host.output("nft", &["list", "ruleset"]);
    assert!(
        !String::from_utf8_lossy(&ruleset.stdout).contains("203.0.113.0/24"),
        "nothing may be banned after a refusal"
    );
    host.fwagent_ok(
        &[],
        &[
            "ban",
            "--force",
            "198.51.100.0/28",
            "198.51.100.128/25",
            "203.0.113.0/24",
            "2001:db8:1::/113",
            "2001:db8:2::/48",
        ],
    );
    assert!(!peer.ping(&["-I", "198.51.100.2", "198.51.100.1"]));
    assert!(peer.ping(&["-I", "198.51.100.77", "198.51.100.1"]));
    assert!(!peer.ping(&["-6", "-I", "2001:db8:1::2", "2001:db8:1::1"]));
    assert!(peer.ping(&["-6", "-I", "2001:db8:1::8002", "2001:db8:1::1"]));
    let st = json(&host, &[], &["status", "--json"]);
    let rule = |set: &str| {
        st["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["hook"] == "input" && r["set"] == set)
            .and_then(|r| r["packets"].as_u64())
            .unwrap()
    };
    assert!(rule("nets4") >= 1 && rule("nets6") >= 1, "{st}");
    let e = element(&host, &[], "198.51.100.0/28").unwrap();
    assert!(e["packets"].as_u64().unwrap() >= 1);
    host.fwagent_ok(&[], &["unban", "198.51.100.0/24"]); // lifts the /28 and the /25
    assert!(peer.ping(&["-I", "198.51.100.2", "198.51.100.1"]));
    assert!(element(&host, &[], "203.0.113.0/24").is_some());
}
