//! One read of our table for status: table flags, rule counters, set capacities and every
//! element (for the per-family counts and the top offenders), on sockets of its own.
//!
//! Blocking: the agent runs it under `spawn_blocking`, so a 100,000-element dump never
//! delays a ban (the kernel actor has its own socket). Order: the table first — when it is
//! absent there is nothing else to read and that is not an error; then rules, sets and
//! elements. A concurrent change may land between two of these reads; each dump is itself
//! consistent (the nft layer restarts interrupted dumps).

use std::time::Instant;

use crate::nft::batch::{AckTracker, Op};
use crate::nft::socket::Socket;
use crate::nft::table::{NFT_TABLE_F_OWNER, get_table, parse_table};
use crate::nft::wire::{MsgBuf, NFT_MSG_NEWTABLE};
use crate::nft::{Element, Family, Features, Nft, NftError, RuleCounter, Schema, schema};

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

/// Reads everything status shows about table `s.table`, with `nft`'s features, on sockets
/// opened for this read.
pub fn read(s: &Schema, features: Features) -> Result<KernelView, NftError> {
    let started = Instant::now();
    let Some(flags) = table_flags(&s.table)? else {
        return Ok(KernelView::absent(features));
    };
    let mut nft = Nft::open_with(features)?;
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
    let elements = nft.elements(s)?;
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
    for e in &elements {
        if let Some(v) = sets.iter_mut().find(|v| v.set == e.set) {
            v.count += 1;
        }
    }
    Ok(KernelView {
        present: true,
        protected: flags & NFT_TABLE_F_OWNER != 0,
        counters,
        sets,
        top: top(elements, TOP),
        features,
        read_ms: started.elapsed().as_millis() as u64,
    })
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

/// The table's flags, or `None` when it does not exist. `Nft` keeps its table read private,
/// so this is the one GETTABLE request status needs, on a socket of its own.
fn table_flags(table: &str) -> Result<Option<u32>, NftError> {
    let mut sock = Socket::open()?;
    let seq = sock.seqs(1);
    let mut b = MsgBuf::new();
    get_table(&mut b, seq, table);
    let mut tracker = AckTracker::new();
    tracker.expect(seq, Op::Probe("the table"));
    let mut flags = None;
    let tracker = sock.requests(b.as_bytes(), tracker, |m| {
        if m.nft_msg() == Some(NFT_MSG_NEWTABLE) {
            flags = Some(parse_table(m).flags);
        }
    })?;
    match tracker.failures().first() {
        None => Ok(flags),
        Some(f) if f.errno == libc::ENOENT => Ok(None),
        Some(f) => Err(NftError::kernel(
            format!("reading table inet {table}"),
            f.errno,
            f.ext.clone(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Target;
    use std::net::Ipv4Addr;

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

    #[test]
    fn families_by_set_name() {
        assert_eq!(family_of("banned4"), Family::V4);
        assert_eq!(family_of("nets4"), Family::V4);
        assert_eq!(family_of("banned6x"), Family::V6);
        assert_eq!(family_of("nets6"), Family::V6);
    }
}
