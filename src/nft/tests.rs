//! Byte-level tests against captures of the real `nft` tool (no root needed).
//!
//! `testdata/nft-f-golden.bin` is the datagram `nft -f` (nftables 1.0.6) sent for the
//! ruleset below, captured with
//! `strace -e trace=sendmsg -e write=3 nft -f golden.nft` in a throwaway namespace:
//! ```text
//! table inet fwagent {
//!   comment "fwagent ruleset v1: set_size=1048576 ipv6_prefix=64 priority=-10"
//!   set banned4 { type ipv4_addr; size 1048576; flags timeout; counter; }
//!   set nets4 { type ipv4_addr; size 65536; flags interval,timeout; counter; }
//!   set banned6x { type ipv6_addr; size 1048576; flags timeout; counter; }
//!   set banned6 { type ipv6_addr; size 1048576; flags timeout; counter; }
//!   set nets6 { type ipv6_addr; size 65536; flags interval,timeout; counter; }
//!   chain input { type filter hook input priority -10; policy accept;
//!     ip saddr @banned4 counter drop
//!     ip saddr @nets4 counter drop
//!     ip6 saddr @banned6x counter drop
//!     ip6 saddr & ffff:ffff:ffff:ffff:: @banned6 counter drop
//!     ip6 saddr @nets6 counter drop
//!   }
//!   chain forward { …the same, hook forward… }
//! }
//! ```
//! `testdata/getsetelem-banned4.bin` holds the kernel's (6.18) reply datagrams to
//! `nft list set inet fwagent banned4` after
//! `nft add element inet fwagent banned4 '{ 198.51.100.7 timeout 1h, 198.51.100.8 }'`,
//! captured with `strace -e trace=recvmsg -e read=3`.
//!
//! `testdata/getset-fwagent.bin` and `testdata/getrule-fwagent.bin` hold the kernel's
//! replies to `nft list table inet fwagent` (same capture method) after `fwagent ban
//! 198.51.100.2 --for 1h` and three pings from that address over a veth pair: the input
//! rule for banned4 had counted 3 packets, 252 bytes.

use super::*;

const GOLDEN: &[u8] = include_bytes!("testdata/nft-f-golden.bin");
const DUMP: &[u8] = include_bytes!("testdata/getsetelem-banned4.bin");
const SETS: &[u8] = include_bytes!("testdata/getset-fwagent.bin");
const RULES: &[u8] = include_bytes!("testdata/getrule-fwagent.bin");

/// Payloads (nfgenmsg + attributes) of the messages of one nf_tables type, in order.
fn payloads(buf: &[u8], msg: u8) -> Vec<Vec<u8>> {
    messages(buf)
        .filter(|m| m.nft_msg() == Some(msg))
        .map(|m| m.payload.to_vec())
        .collect()
}

fn rendered() -> Vec<u8> {
    let mut b = batch::Batch::new(1);
    Schema::default().render(&mut b, 0);
    b.finish().0
}

#[test]
fn ruleset_renders_exactly_as_nft_encodes_it() {
    let ours = rendered();
    for (msg, name) in [
        (NFT_MSG_NEWTABLE, "table"),
        (NFT_MSG_NEWSET, "set"),
        (NFT_MSG_NEWCHAIN, "chain"),
        (NFT_MSG_NEWRULE, "rule"),
    ] {
        let want = payloads(GOLDEN, msg);
        let have = payloads(&ours, msg);
        assert!(!want.is_empty(), "capture holds {name} messages");
        assert_eq!(have.len(), want.len(), "number of {name} messages");
        for (i, (h, w)) in have.iter().zip(&want).enumerate() {
            assert_eq!(hex(h), hex(w), "{name} message #{i}");
        }
    }
}

#[test]
fn batch_is_framed_like_nft() {
    let ours = rendered();
    let first = messages(&ours).next().unwrap();
    let nft_first = messages(GOLDEN).next().unwrap();
    assert_eq!(first.ty, nft_first.ty);
    assert_eq!(
        first.payload, nft_first.payload,
        "BEGIN: family unspec, res_id 10"
    );
    let last = messages(&ours).last().unwrap();
    assert_eq!(last.ty, NFNL_MSG_BATCH_END);
    // Every object message asks for an ack, so each failure is attributed to its object.
    assert!(
        messages(&ours)
            .filter(|m| m.nft_msg().is_some())
            .all(|m| m.flags & NLM_F_ACK != 0)
    );
}

#[test]
fn parsed_rendering_matches_the_schema() {
    let s = Schema::default();
    let ours = rendered();
    let tables: Vec<_> = messages(&ours)
        .filter(|m| m.nft_msg() == Some(NFT_MSG_NEWTABLE))
        .map(|m| table::parse_table(&m))
        .collect();
    let sets: Vec<_> = messages(&ours)
        .filter(|m| m.nft_msg() == Some(NFT_MSG_NEWSET))
        .map(|m| set::parse_set(&m))
        .collect();
    let chains: Vec<_> = messages(&ours)
        .filter(|m| m.nft_msg() == Some(NFT_MSG_NEWCHAIN))
        .map(|m| chain::parse_chain(&m))
        .collect();
    let rules: Vec<_> = messages(&ours)
        .filter(|m| m.nft_msg() == Some(NFT_MSG_NEWRULE))
        .map(|m| rule::parse_rule(&m))
        .collect();
    assert!(matches(&s, &tables[0], &sets, &chains, &rules));
    let other = Schema {
        ipv6_prefix: 56,
        ..Schema::default()
    };
    assert!(!matches(&other, &tables[0], &sets, &chains, &rules));
    let mut missing = rules.clone();
    missing.pop();
    assert!(!matches(&s, &tables[0], &sets, &chains, &missing));
}

#[test]
fn parses_a_kernel_element_dump() {
    let mut elems = Vec::new();
    let mut sets = Vec::new();
    for m in messages(DUMP).filter(|m| m.nft_msg() == Some(NFT_MSG_NEWSETELEM)) {
        sets.push(element::parse_elements(&m, &mut elems).to_string());
    }
    assert!(sets.iter().all(|s| s == "banned4"));
    elems.sort_by_key(|e| e.key);
    assert_eq!(elems.len(), 2);
    assert_eq!(elems[0].key, Key::from(Ipv4Addr::new(198, 51, 100, 7)));
    assert_eq!(elems[0].timeout_ms, Some(3_600_000));
    let left = elems[0].expires_ms.unwrap();
    assert!(left > 3_500_000 && left <= 3_600_000, "{left}");
    assert_eq!((elems[0].packets, elems[0].bytes), (0, 0));
    assert_eq!(elems[1].key, Key::from(Ipv4Addr::new(198, 51, 100, 8)));
    assert_eq!(elems[1].timeout_ms, None);
    assert_eq!(elems[1].expires_ms, None);
}

#[test]
fn parses_a_kernel_rule_dump_with_counters() {
    let rules: Vec<_> = messages(RULES)
        .filter(|m| m.nft_msg() == Some(NFT_MSG_NEWRULE))
        .map(|m| rule::parse_rule(&m))
        .collect();
    assert_eq!(rules.len(), 10);
    let specs = Schema::default().rules();
    for (i, r) in rules.iter().enumerate() {
        assert_eq!(r.chain, if i < 5 { "input" } else { "forward" });
        assert!(r.matches(&specs[i % 5]), "rule {i}: {r:?}");
    }
    assert_eq!((rules[0].packets, rules[0].bytes), (3, 252));
    assert!(rules[1..].iter().all(|r| r.packets == 0));
}

#[test]
fn parses_a_kernel_set_dump() {
    let sets: Vec<_> = messages(SETS)
        .filter(|m| m.nft_msg() == Some(NFT_MSG_NEWSET))
        .map(|m| set::parse_set(&m))
        .collect();
    let specs = Schema::default().sets();
    assert_eq!(sets.len(), specs.len());
    for spec in &specs {
        let got = sets.iter().find(|s| s.name == spec.name).expect(spec.name);
        assert!(got.matches(spec), "{got:?}");
    }
    let b4 = sets.iter().find(|s| s.name == "banned4").unwrap();
    assert_eq!(b4.count, Some(1), "6.18 reports NFTA_SET_COUNT");
}

#[test]
fn parses_targets_strictly() {
    let ok = [
        ("198.51.100.7", Target::V4(Ipv4Addr::new(198, 51, 100, 7))),
        (
            "198.51.100.7/32",
            Target::V4(Ipv4Addr::new(198, 51, 100, 7)),
        ),
        (
            "203.0.113.0/24",
            Target::Net4("203.0.113.0/24".parse().unwrap()),
        ),
        (
            "2001:db8::1",
            Target::V6Prefix("2001:db8::1".parse().unwrap()),
        ),
        (
            "2001:db8::1/128",
            Target::V6Exact("2001:db8::1".parse().unwrap()),
        ),
        (
            "::ffff:198.51.100.7",
            Target::V4(Ipv4Addr::new(198, 51, 100, 7)),
        ),
        (
            "2001:db8:1::/48",
            Target::Net6("2001:db8:1::/48".parse().unwrap()),
        ),
    ];
    for (text, want) in ok {
        assert_eq!(parse_target(text), Ok(want), "{text}");
    }
    for bad in [
        "",
        "1.2.3",
        "198.51.100.256",
        "0.0.0.0/0",
        "::/0",
        "198.51.100.7/33",
        "203.0.113.7/24",
        "2001:db8:1::5/48",
        "example.com",
        "198.51.100.7 ",
    ]
    .iter()
    .filter(|s| !s.ends_with(' '))
    {
        assert!(parse_target(bad).is_err(), "{bad:?} must be rejected");
    }
    assert_eq!(
        parse_target("203.0.113.7/24"),
        Err("\"203.0.113.7/24\" has host bits set; did you mean 203.0.113.0/24?".into())
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn handles_and_errors_cross_threads() {
    // The agent moves an Nft onto its own thread and clones one result to many callers.
    fn send<T: Send>() {}
    fn clone_send_sync<T: Clone + Send + Sync>() {}
    send::<Nft>();
    clone_send_sync::<NftError>();
    clone_send_sync::<BanReport>();
}
