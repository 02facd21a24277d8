//! One read of our table for status: table flags, rule counters, set capacities and every
//! element (streamed: counted per set, the top offenders kept), on a socket of its own.
//!
//! Blocking: the agent runs it under `spawn_blocking`, so a 100,000-element dump never
//! delays a ban (the kernel actor has its own socket). Order: the table first — when it is
//! absent there is nothing else to read and that is not an error; then rules, sets and
//! elements. A concurrent change may land between two of these reads; each dump is itself
//! consistent (the nft layer restarts interrupted dumps).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::nft::element::ElemInfo;
use crate::nft::table::NFT_TABLE_F_OWNER;
use crate::nft::{Element, Family, Features, Nft, NftError, RuleCounter, Schema, Target, schema};

/// How many offenders status lists.
pub const TOP: usize = 10;

/// One set as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    pub set: String,
    pub family: Family,
    /// Capacity (from the kernel when it reports it, else the configured one).
    pub size: Option<u32>,
    /// Entries as `fwagent list` shows them (an interval counts once per CIDR).
    pub count: u64,
}

/// What one read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelView {
    pub present: bool,
    /// The table carries the owner flag: only its owner (the agent) can change or delete
    /// it, so another tool's `nft flush ruleset` cannot remove the bans.
    pub protected: bool,
    pub counters: Vec<RuleCounter>,
    pub sets: Vec<SetView>,
    /// The entries that dropped the most packets, most first (at most [`TOP`], none idle).
    pub top: Vec<Element>,
    pub features: Features,
    /// How long the read took.
    pub read_ms: u64,
}

impl KernelView {
    /// The view of a kernel without our table.
    pub fn absent(features: Features) -> KernelView {
        KernelView {
            present: false,
            protected: false,
            counters: Vec::new(),
            sets: Vec::new(),
            top: Vec::new(),
            features,
            read_ms: 0,
        }
    }
}

/// Reads everything status shows about table `s.table`, with `nft`'s features, on a socket
/// opened for this read.
pub fn read(s: &Schema, features: Features) -> Result<KernelView, NftError> {
    let started = Instant::now();
    let mut nft = Nft::open_with(features)?;
    let Some(flags) = nft.table_flags(&s.table)? else {
        return Ok(KernelView::absent(features));
    };
    let counters = match nft.counters(s) {
        Ok(c) => c,
        // Deleted between our two reads: report it as absent, as a later read would.
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(KernelView::absent(features)),
        Err(e) => return Err(e),
    };
    // Capacities: cheap from the kernel when it counts elements itself (no hash-set dump),
    // otherwise the configured ones (what `apply` created).
    let sizes: Vec<(String, Option<u32>)> = if features.set_count {
        nft.set_sizes(s)?
            .into_iter()
            .map(|x| (x.set, x.size))
            .collect()
    } else {
        s.sets()
            .iter()
            .map(|x| (x.name.to_string(), Some(x.size)))
            .collect()
    };
    let (counts, top) = scan(&mut nft, s)?;
    let mut sets: Vec<SetView> = schema::SETS
        .iter()
        .filter_map(|name| {
            let size = sizes.iter().find(|(n, _)| n == name)?.1;
            Some(SetView {
                set: name.to_string(),
                family: family_of(name),
                size,
                count: 0,
            })
        })
        .collect();
    for (name, n) in counts {
        if let Some(v) = sets.iter_mut().find(|v| v.set == name) {
            v.count = n;
        }
    }
    Ok(KernelView {
        present: true,
        protected: flags & NFT_TABLE_F_OWNER != 0,
        counters,
        sets,
        top,
        features,
        read_ms: started.elapsed().as_millis() as u64,
    })
}

/// Entries per set, by set name.
type SetCounts = Vec<(&'static str, u64)>;

/// Counts the entries of each of our sets and keeps the top offenders, streaming the
/// element dumps: a hash set's elements are looked at one netlink message at a time, so a
/// 100,000-ban read holds a few KiB instead of 100,000 records it would throw away but ten.
/// Interval sets (manual network bans, few) are collected whole, because an interval's
/// start and end elements must be paired; each interval counts once per CIDR, as
/// `fwagent list` shows it. A set the kernel lacks counts zero (it shows as a missing rule).
fn scan(nft: &mut Nft, s: &Schema) -> Result<(SetCounts, Vec<Element>), NftError> {
    let mut counts = Vec::new();
    let mut top = Top::new(TOP);
    for name in schema::SETS {
        let family = family_of(name);
        if name == schema::NETS4 || name == schema::NETS6 {
            let Some(all) = nft.for_each_element(&s.table, name, Vec::new, |v, batch| {
                v.extend_from_slice(batch)
            })?
            else {
                continue;
            };
            let mut n = 0;
            for (range, e) in crate::nft::pair_ranges(all, |e| e.timeout_ms) {
                for t in range.cidrs(family) {
                    n += 1;
                    top.offer(name, t, &e);
                }
            }
            counts.push((name, n));
            continue;
        }
        let found = nft.for_each_element(
            &s.table,
            name,
            || (0u64, Top::new(TOP)),
            |(n, t), batch| {
                for e in batch {
                    *n += 1;
                    if t.wants(e) {
                        let a = schema::key_value(&e.key);
                        let target = match name {
                            schema::BANNED4 => Target::V4(Ipv4Addr::from(a as u32)),
                            schema::BANNED6 => Target::V6Prefix(Ipv6Addr::from(a)),
                            _ => Target::V6Exact(Ipv6Addr::from(a)),
                        };
                        t.offer(name, target, e);
                    }
                }
            },
        )?;
        if let Some((n, t)) = found {
            counts.push((name, n));
            for e in t.0 {
                top.push(e);
            }
        }
    }
    Ok((counts, top.0))
}

/// The best `n` entries by dropped packets, kept as they stream by.
struct Top(Vec<Element>, usize);

impl Top {
    fn new(n: usize) -> Top {
        Top(Vec::with_capacity(n + 1), n)
    }

    /// Whether an entry with these counters could enter (cheap, before building it).
    fn wants(&self, e: &ElemInfo) -> bool {
        e.packets > 0
            && (self.0.len() < self.1
                || self
                    .0
                    .last()
                    .is_none_or(|m| (e.packets, e.bytes) >= (m.packets, m.bytes)))
    }

    fn offer(&mut self, set: &str, target: Target, e: &ElemInfo) {
        if self.wants(e) {
            self.push(Element {
                set: set.to_string(),
                target,
                timeout: e.timeout_ms.map(Duration::from_millis),
                expires: e
                    .timeout_ms
                    .map(|_| Duration::from_millis(e.expires_ms.unwrap_or(0))),
                packets: e.packets,
                bytes: e.bytes,
            });
        }
    }

    fn push(&mut self, e: Element) {
        self.0.push(e);
        let n = self.1;
        self.0 = top(std::mem::take(&mut self.0), n);
    }
}

/// The family of one of our sets, by name.
pub fn family_of(set: &str) -> Family {
    match set {
        schema::BANNED4 | schema::NETS4 => Family::V4,
        _ => Family::V6,
    }
}

/// The `n` entries that dropped the most packets (then bytes; ties by set and target so
/// the order is stable), leaving out those that dropped nothing.
pub fn top(mut elements: Vec<Element>, n: usize) -> Vec<Element> {
    elements.retain(|e| e.packets > 0);
    let order = |a: &Element, b: &Element| {
        b.packets
            .cmp(&a.packets)
            .then(b.bytes.cmp(&a.bytes))
            .then_with(|| a.set.cmp(&b.set))
            .then_with(|| a.target.to_string().cmp(&b.target.to_string()))
    };
    // Partial selection first: sorting 100,000 entries to keep ten is wasted work.
    if elements.len() > n && n > 0 {
        elements.select_nth_unstable_by(n - 1, order);
        elements.truncate(n);
    }
    elements.sort_by(order);
    elements.truncate(n);
    elements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(last: u8, packets: u64, bytes: u64) -> Element {
        Element {
            set: "banned4".into(),
            target: Target::V4(Ipv4Addr::new(198, 51, 100, last)),
            timeout: None,
            expires: None,
            packets,
            bytes,
        }
    }

    #[test]
    fn top_keeps_the_biggest_droppers_in_order_and_skips_idle_entries() {
        let mut all: Vec<Element> = (0..200u8).map(|i| el(i, u64::from(i) % 50, 1)).collect();
        all.push(el(250, 49, 9_999));
        let t = top(all, 10);
        assert_eq!(t.len(), 10);
        assert_eq!(t[0].packets, 49);
        assert_eq!(t[0].bytes, 9_999, "bytes break ties");
        assert!(t.windows(2).all(|w| w[0].packets >= w[1].packets));
        assert!(top(vec![el(1, 0, 0)], 10).is_empty());
        assert_eq!(top(vec![el(1, 3, 0), el(2, 5, 0)], 10)[0].packets, 5);
    }

    fn info(key: [u8; 4], end: bool, packets: u64) -> ElemInfo {
        ElemInfo {
            key: crate::nft::element::Key::new(&key).unwrap(),
            end,
            timeout_ms: None,
            expires_ms: None,
            packets,
            bytes: packets * 10,
        }
    }

    #[test]
    fn interval_elements_pair_into_ranges() {
        // 203.0.113.0/24 and 198.51.100.0/28, as the kernel lists them (unordered), with
        // nft's leading end marker at 0.0.0.0.
        let elems = vec![
            info([203, 0, 114, 0], true, 0),
            info([198, 51, 100, 0], false, 4),
            info([0, 0, 0, 0], true, 0),
            info([203, 0, 113, 0], false, 9),
            info([198, 51, 100, 16], true, 0),
        ];
        let r = crate::nft::pair_ranges(elems, |e| e.timeout_ms);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0.cidrs(Family::V4).len(), 1);
        assert_eq!(r[0].0.cidrs(Family::V4)[0].to_string(), "198.51.100.0/28");
        assert_eq!(r[1].0.cidrs(Family::V4)[0].to_string(), "203.0.113.0/24");
        assert_eq!(r[1].1.packets, 9, "the counter rides on the start element");
    }

    #[test]
    fn streamed_top_equals_the_sorted_top() {
        let mut t = Top::new(3);
        let all: Vec<ElemInfo> = (1..=50u8)
            .map(|i| info([198, 18, 0, i], false, u64::from(i % 7)))
            .collect();
        for e in &all {
            t.offer(
                "banned4",
                Target::V4(Ipv4Addr::new(198, 18, 0, e.key.as_bytes()[3])),
                e,
            );
        }
        let got: Vec<u64> = t.0.iter().map(|e| e.packets).collect();
        assert_eq!(got, vec![6, 6, 6]);
        assert_eq!(
            t.0[0].target.to_string(),
            "198.18.0.13",
            "ties in a stable order"
        );
    }

    #[test]
    fn families_by_set_name() {
        assert_eq!(family_of("banned4"), Family::V4);
        assert_eq!(family_of("nets4"), Family::V4);
        assert_eq!(family_of("banned6x"), Family::V6);
        assert_eq!(family_of("nets6"), Family::V6);
    }
}
