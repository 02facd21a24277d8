//! Tests of the kernel layer's library API, run in-process on a thread that entered a
//! throwaway network namespace (setns). Covers what the CLI never does: table ownership,
//! rebuilds that carry bans over (set size and IPv6 prefix changes), set-full reporting,
//! the generation id and the forced old-kernel paths. Needs root.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::netns::{NetNs, root_or_skip};
use fwagent::nft::{Applied, Features, Nft, NftError, Schema, Target};

fn v4(last: u8) -> Target {
    Target::V4(Ipv4Addr::new(198, 51, 100, last))
}

fn targets(elems: &[fwagent::nft::Element]) -> Vec<(String, String)> {
    let mut v: Vec<_> = elems
        .iter()
        .map(|e| (e.set.clone(), e.target.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn owned_table_resists_flush_and_is_reclaimed() {
    if !root_or_skip("owned_table_resists_flush_and_is_reclaimed") {
        return;
    }
    let ns = NetNs::new();
    let s = Schema::default();
    let s2 = s.clone();
    let persist = ns.enter(move || {
        let mut nft = Nft::open().unwrap();
        if !nft.features().persist {
            return false;
        }
        assert_eq!(nft.apply(&s2, true).unwrap(), Applied::Created);
        nft.ban(&s2, &[(v4(7), Some(Duration::from_secs(3600)))])
            .unwrap();
        // Another socket (another process in real life) may read but not write.
        let mut other = Nft::open().unwrap();
        let err = other.ban(&s2, &[(v4(8), None)]).unwrap_err();
        assert!(err.is_permission(), "{err}");
        assert_eq!(other.elements(&s2).unwrap().len(), 1);
        true
        // `nft` drops here: the owner's socket closes; persist keeps the table.
    });
    if !persist {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIP: kernel without the persist flag");
        return;
    }
    // The owner is gone, the table (persist) and its bans stay. (nft 1.0.6 has no name
    // for the persist flag, so only presence and ownership are checked.)
    let listed = ns.ok("nft", &["list", "table", "inet", "fwagent"]);
    assert!(!listed.contains("owner"), "{listed}");
    assert!(listed.contains("198.51.100.7"));
    // Re-claimed by a new agent: owner again, elements kept; `nft flush ruleset` skips it.
    let s2 = s.clone();
    ns.enter(move || {
        let mut nft = Nft::open().unwrap();
        assert_eq!(nft.apply(&s2, true).unwrap(), Applied::Unchanged);
        let listed = std::process::Command::new("nft")
            .args(["list", "table", "inet", "fwagent"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(listed.contains("owner"), "{listed}");
        let flush = std::process::Command::new("nft")
            .args(["flush", "ruleset"])
            .output()
            .unwrap();
        assert!(flush.status.success());
        assert_eq!(
            nft.elements(&s2).unwrap().len(),
            1,
            "flush skipped our table"
        );
        assert!(nft.teardown(&s2.table).unwrap());
    });
}

#[test]
fn no_ownership_without_persist() {
    if !root_or_skip("no_ownership_without_persist") {
        return;
    }
    let ns = NetNs::new();
    ns.enter(|| {
        let mut nft = Nft::open().unwrap();
        nft.set_features(Features {
            persist: false,
            ..*nft.features()
        });
        nft.apply(&Schema::default(), true).unwrap();
    });
    let listed = ns.ok("nft", &["list", "table", "inet", "fwagent"]);
    assert!(
        !listed.contains("owner") && !listed.contains("persist"),
        "{listed}"
    );
}

#[test]
fn prefix_change_rebuilds_without_widening_or_losing_bans() {
    if !root_or_skip("prefix_change_rebuilds_without_widening_or_losing_bans") {
        return;
    }
    let ns = NetNs::new();
    ns.enter(|| {
        let mut nft = Nft::open().unwrap();
        let s64 = Schema::default();
        nft.apply(&s64, false).unwrap();
        let hour = Some(Duration::from_secs(3600));
        let a: Ipv6Addr = "2001:db8:1:2::5".parse().unwrap();
        nft.ban(
            &s64,
            &[
                (v4(7), hour),
                (Target::V6Prefix(a), hour),
                (Target::V6Exact("2001:db8:7::7".parse().unwrap()), None),
                (Target::Net4("203.0.113.0/24".parse().unwrap()), hour),
            ],
        )
        .unwrap();
        let gen_before = nft.generation().unwrap();

        // /64 → /48: the old /64 key must not become a /48 ban; it moves to nets6.
        let s48 = Schema {
            ipv6_prefix: 48,
            ..s64.clone()
        };
        assert_eq!(
            nft.apply(&s48, false).unwrap(),
            Applied::Rebuilt { carried: 4 }
        );
        assert_ne!(nft.generation().unwrap(), gen_before);
        let el = nft.elements(&s48).unwrap();
        assert_eq!(
            targets(&el),
            vec![
                ("banned4".into(), "198.51.100.7".into()),
                ("banned6x".into(), "2001:db8:7::7".into()),
                ("nets4".into(), "203.0.113.0/24".into()),
                ("nets6".into(), "2001:db8:1:2::/64".into()),
            ]
        );
        let carried = el.iter().find(|e| e.set == "banned4").unwrap();
        let left = carried.expires.unwrap();
        assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3500));
        assert_eq!(
            el.iter().find(|e| e.set == "banned6x").unwrap().timeout,
            None
        );
        // Idempotent again under the new schema.
        assert_eq!(nft.apply(&s48, false).unwrap(), Applied::Unchanged);

        // /48 → /64 with a /48 ban: carried as the /48 CIDR, not narrowed to a /64.
        nft.ban(
            &s48,
            &[(Target::V6Prefix("2001:db8:9:1::1".parse().unwrap()), hour)],
        )
        .unwrap();
        assert!(matches!(
            nft.apply(&s64, false).unwrap(),
            Applied::Rebuilt { carried: 5 }
        ));
        let el = nft.elements(&s64).unwrap();
        let nets6: Vec<_> = targets(&el)
            .into_iter()
            .filter(|(s, _)| s == "nets6")
            .collect();
        assert_eq!(
            nets6,
            vec![
                ("nets6".into(), "2001:db8:1:2::/64".into()),
                ("nets6".into(), "2001:db8:9::/48".into()),
            ]
        );
    });
}

#[test]
fn full_set_is_reported_with_counts_and_changes_nothing() {
    if !root_or_skip("full_set_is_reported_with_counts_and_changes_nothing") {
        return;
    }
    let ns = NetNs::new();
    ns.enter(|| {
        let mut nft = Nft::open().unwrap();
        let small = Schema {
            set_size: 8,
            ..Schema::default()
        };
        nft.apply(&small, false).unwrap();
        let bans: Vec<_> = (1..=8).map(|i| (v4(i), None)).collect();
        nft.ban(&small, &bans).unwrap();
        let more: Vec<_> = (9..=11).map(|i| (v4(i), None)).collect();
        let err = nft.ban(&small, &more).unwrap_err();
        match &err {
            NftError::SetFull {
                set,
                size,
                count,
                rejected,
                ..
            } => {
                assert_eq!(
                    (set.as_str(), *size, *count, *rejected),
                    ("banned4", 8, 8, 3)
                );
            }
            other => panic!("expected SetFull, got {other:?}"),
        }
        assert!(err.to_string().contains("3 bans not applied"), "{err}");
        assert_eq!(nft.elements(&small).unwrap().len(), 8);

        // Shrinking below the content fails loudly and keeps the old ruleset.
        let tiny = Schema {
            set_size: 4,
            ..Schema::default()
        };
        assert!(matches!(
            nft.apply(&tiny, false),
            Err(NftError::SetFull { .. })
        ));
        assert_eq!(nft.apply(&small, false).unwrap(), Applied::Unchanged);
        // Growing carries everything.
        let big = Schema {
            set_size: 1000,
            ..Schema::default()
        };
        assert_eq!(
            nft.apply(&big, false).unwrap(),
            Applied::Rebuilt { carried: 8 }
        );
        nft.ban(&big, &more).unwrap();
        let sizes = nft.set_sizes(&big).unwrap();
        let b4 = sizes.iter().find(|s| s.set == "banned4").unwrap();
        assert_eq!((b4.size, b4.count), (Some(1000), 11));
    });
}

#[test]
fn refresh_keeps_the_counter_where_the_kernel_can() {
    if !root_or_skip("refresh_keeps_the_counter_where_the_kernel_can") {
        return;
    }
    let host = NetNs::new();
    let peer = NetNs::new();
    common::netns::veth(&host, "h0", &peer, "p0");
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", "h0"]);
    peer.ip(&["addr", "add", "198.51.100.2/24", "dev", "p0"]);
    for legacy in [false, true] {
        let s = Schema::default();
        let s2 = s.clone();
        host.enter(move || {
            let mut nft = Nft::open().unwrap();
            if legacy {
                nft.set_features(Features::LINUX_6_1);
            }
            nft.apply(&s2, false).unwrap();
            nft.ban(&s2, &[(v4(2), Some(Duration::from_secs(60)))])
                .unwrap();
        });
        assert!(!peer.ping(&["198.51.100.1"]));
        let s2 = s.clone();
        let (before, after, timeout) = host.enter(move || {
            let mut nft = Nft::open().unwrap();
            if legacy {
                nft.set_features(Features::LINUX_6_1);
            }
            let before = nft.elements(&s2).unwrap()[0].packets;
            nft.ban(&s2, &[(v4(2), Some(Duration::from_secs(7200)))])
                .unwrap();
            let e = nft.elements(&s2).unwrap()[0].clone();
            nft.unban(&s2, &[v4(2)]).unwrap();
            (before, e.packets, e.timeout)
        });
        assert!(before >= 1);
        assert_eq!(timeout, Some(Duration::from_secs(7200)), "legacy={legacy}");
        if legacy {
            assert_eq!(after, 0, "delete + add restarts the counter");
        } else {
            assert_eq!(after, before, "in-place update keeps the counter");
        }
    }
}

#[test]
fn a_batch_planned_at_an_old_generation_is_refused() {
    if !root_or_skip("a_batch_planned_at_an_old_generation_is_refused") {
        return;
    }
    use fwagent::nft::{batch, socket::Socket, table};
    let ns = NetNs::new();
    ns.enter(|| {
        let mut nft = Nft::open().unwrap();
        let genid = nft.generation().unwrap();
        nft.apply(&Schema::default(), false).unwrap(); // moves the generation on
        let mut sock = Socket::open().unwrap();
        let mut b = batch::Batch::with_genid(sock.next_seq(), Some(genid));
        let seq = b.seq(batch::Op::CreateTable {
            table: "stale".into(),
        });
        table::new_table(b.buf(), seq, "stale", 0, None);
        let (bytes, tracker, _) = b.finish();
        let failures = sock.batch(&bytes, tracker).unwrap().into_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].errno, libc::ERESTART);
        assert!(!nft.table_exists("stale").unwrap());
    });
}

#[test]
fn handles_opened_concurrently_probe_independently() {
    if !root_or_skip("handles_opened_concurrently_probe_independently") {
        return;
    }
    let ns = NetNs::new();
    ns.enter(|| {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..10).all(|_| Nft::open().is_ok())))
            .collect();
        // Threads spawned here inherit this thread's network namespace.
        for t in threads {
            assert!(t.join().unwrap(), "every open succeeded");
        }
        let mut nft = Nft::open().unwrap();
        assert!(!nft.table_exists("fwagent").unwrap());
    });
    assert!(
        ns.ok("nft", &["list", "tables"]).trim().is_empty(),
        "no scratch left"
    );
}

#[test]
fn reads_succeed_while_bans_keep_coming() {
    if !root_or_skip("reads_succeed_while_bans_keep_coming") {
        return;
    }
    let ns = NetNs::new();
    ns.enter(|| {
        let s = Schema::default();
        let mut writer = Nft::open().unwrap();
        writer.apply(&s, false).unwrap();
        let bulk: Vec<_> = (0..20_000u32)
            .map(|i| (Target::V4(Ipv4Addr::from(0xc612_0000 + i)), None))
            .collect();
        writer.ban(&s, &bulk).unwrap();
        let mut reader = writer.reader().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let s2 = s.clone();
        // Threads spawned here inherit the namespace. Bounded: at most 20,000 bans.
        let banner = std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let a = Ipv4Addr::from(0xc613_0000 + n);
                writer.ban(&s2, &[(Target::V4(a), None)]).unwrap();
                n += 1;
            }
            n
        });
        for _ in 0..3 {
            let el = reader.elements(&s).unwrap();
            assert!(el.len() >= 20_000, "{}", el.len());
            assert!(!reader.counters(&s).unwrap().is_empty());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(banner.join().unwrap() > 0);
    });
}

#[test]
fn a_second_owner_is_refused() {
    if !root_or_skip("a_second_owner_is_refused") {
        return;
    }
    let ns = NetNs::new();
    ns.enter(|| {
        let s = Schema::default();
        let mut first = Nft::open().unwrap();
        if !first.features().persist {
            return;
        }
        first.apply(&s, true).unwrap();
        let mut second = Nft::open().unwrap();
        let err = second.apply(&s, true).unwrap_err();
        assert!(err.is_permission(), "{err}");
        // A non-owning reader/CLI is fine: the table matches, nothing is written.
        assert_eq!(second.apply(&s, false).unwrap(), Applied::Unchanged);
        // The owner itself can still reshape its table (rebuild in one batch).
        first.ban(&s, &[(v4(9), None)]).unwrap();
        let s48 = Schema {
            ipv6_prefix: 48,
            ..s.clone()
        };
        assert_eq!(
            first.apply(&s48, true).unwrap(),
            Applied::Rebuilt { carried: 1 }
        );
        assert!(
            second
                .ban(&s48, &[(v4(10), None)])
                .unwrap_err()
                .is_permission()
        );
    });
}
