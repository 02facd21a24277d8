//! The kernel layer: fwagent's own nftables table over raw nfnetlink (no `nft` binary, no C
//! library). [`Nft`] owns one netlink socket and offers the operations the CLI and the agent
//! need; everything below it is named after the kernel's nouns:
//!
//! - [`wire`]     — constants, attribute encoder, zero-copy attribute walker;
//! - [`batch`]    — transactions (BEGIN … END in one datagram) and ack bookkeeping;
//! - [`socket`]   — the netlink socket: batches, dumps, plain requests;
//! - [`table`], [`chain`], [`set`], [`rule`], [`element`], [`counter`] — one file per kernel
//!   object;
//! - [`schema`]   — the desired ruleset as a value and its pure rendering; ban targets;
//! - [`features`] — runtime probes and forced old-kernel fallbacks;
//! - `apply.rs`, `ban.rs` — the [`Nft`] operations that change the kernel.
//!
//! Order of an apply: read the table; if it matches the schema, change nothing; otherwise
//! read every element and rebuild table + carried elements in ONE batch, so the kernel never
//! runs without the bans.

mod apply;
mod ban;
pub mod batch;
pub mod chain;
pub mod counter;
pub mod element;
pub mod error;
pub mod features;
pub mod rule;
pub mod schema;
pub mod set;
pub mod socket;
pub mod table;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use chain::Hook;
use element::{ElemInfo, ElemOp, ElemSpec, Key};
pub use error::NftError;
pub use features::Features;
use ipnet::Ipv6Net;
use schema::{Range, merge_ranges};
pub use schema::{Schema, Target, parse_target};
pub use set::Family;
use set::SetInfo;
use socket::{DumpError, Socket};
use table::{NFT_TABLE_F_OWNER, NFT_TABLE_F_PERSIST, TableInfo};
use wire::*;

/// Outcome of [`Nft::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table did not exist and was created.
    Created,
    /// The kernel already matched the schema; nothing was changed.
    Unchanged,
    /// The table differed and was rebuilt in one batch, carrying `carried` active bans.
    Rebuilt { carried: usize },
}

/// Outcome of [`Nft::ban`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanReport {
    /// Targets added or refreshed in the kernel.
    pub applied: usize,
    /// Network targets skipped because a wider network ban already covers them.
    pub covered: usize,
}

/// Outcome of [`Nft::unban`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnbanReport {
    /// Targets that were banned and are now removed.
    pub removed: usize,
    /// Targets that were not banned (absent or already expired): not an error.
    pub absent: usize,
}

/// One banned entry as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub set: String,
    pub target: Target,
    /// The length of the ban; `None` = permanent.
    pub timeout: Option<Duration>,
    /// Time left; `None` = permanent.
    pub expires: Option<Duration>,
    pub packets: u64,
    pub bytes: u64,
}

/// The counter of one drop rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub hook: Hook,
    pub family: Family,
    pub set: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Capacity and use of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSize {
    pub set: String,
    pub size: Option<u32>,
    pub count: u32,
}

/// Bans with more keys than this are checked against a dump of the set instead of one GET
/// per key (only on the old-kernel paths that need to know what exists).
const GET_LIMIT: usize = 256;
/// Retries of a batch that lost a race with expiring elements (ENOENT on old kernels).
const RETRIES: usize = 3;

/// A blocking handle on the kernel. Owns one netlink socket; run it on one thread. Open a
/// second one (see [`Nft::reader`]) for dumps, so a long read never delays a ban.
pub struct Nft {
    sock: Socket,
    features: Features,
}

impl Nft {
    /// Opens a socket and probes the kernel's features (then applies
    /// `FWAGENT_KERNEL_COMPAT`, which can force old-kernel paths).
    pub fn open() -> Result<Nft, NftError> {
        let mut nft = Nft {
            sock: Socket::open()?,
            features: Features::default(),
        };
        nft.features = nft.probe()?;
        nft.features = nft.features.apply_compat_env().map_err(NftError::Invalid)?;
        tracing::debug!(features = %nft.features, "nf_tables features");
        Ok(nft)
    }

    /// Opens a socket with known features (no probe).
    pub fn open_with(features: Features) -> Result<Nft, NftError> {
        Ok(Nft {
            sock: Socket::open()?,
            features,
        })
    }

    /// A second handle with its own socket and the same features, for dumps.
    pub fn reader(&self) -> Result<Nft, NftError> {
        Nft::open_with(self.features)
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn set_features(&mut self, f: Features) {
        self.features = f;
    }

    // ---- plumbing -------------------------------------------------------------------

    fn batch(&mut self) -> batch::Batch {
        batch::Batch::new(self.sock.next_seq())
    }

    /// Sends a batch; returns the failures (empty = committed).
    fn send(&mut self, b: batch::Batch) -> Result<Vec<batch::Failure>, NftError> {
        let (bytes, tracker, next) = b.finish();
        self.sock.set_next_seq(next);
        Ok(self.sock.batch(&bytes, tracker)?.into_failures())
    }

    /// Sends a batch; any failure becomes the error (the first one, which caused the abort).
    fn commit(&mut self, b: batch::Batch) -> Result<(), NftError> {
        match self.send(b)?.into_iter().next() {
            None => Ok(()),
            Some(f) => Err(NftError::from_failure(f)),
        }
    }

    /// Runs a dump. When the kernel flags it interrupted (the ruleset changed meanwhile) it
    /// is run again, twice at most; a third interrupted result is returned as it is, since
    /// under a steady stream of bans a long dump may never see a quiet moment, and a
    /// slightly stale listing beats none. (Rebuild plans made from reads are protected by
    /// the generation id instead, see `apply`.)
    fn dump<T>(
        &mut self,
        op: &dyn Fn() -> String,
        build: impl Fn(&mut MsgBuf, u32),
        mut init: impl FnMut() -> T,
        mut each: impl FnMut(&mut T, &Msg<'_>),
    ) -> Result<T, NftError> {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let seq = self.sock.seqs(1);
            let mut b = MsgBuf::new();
            build(&mut b, seq);
            let mut acc = init();
            match self.sock.dump(b.as_bytes(), seq, op, |m| each(&mut acc, m)) {
                Ok(()) => return Ok(acc),
                Err(DumpError::Interrupted) if attempt < ATTEMPTS => continue,
                Err(DumpError::Interrupted) => {
                    tracing::debug!("{}: ruleset kept changing; returning the last read", op());
                    return Ok(acc);
                }
                Err(DumpError::Failed(e)) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    // ---- reading --------------------------------------------------------------------

    fn read_table(&mut self, name: &str) -> Result<Option<TableInfo>, NftError> {
        let seq = self.sock.seqs(1);
        let mut b = MsgBuf::new();
        table::get_table(&mut b, seq, name);
        let mut t = batch::AckTracker::new();
        let op = format!("reading table inet {name}");
        t.expect(seq, batch::Op::Read(op.clone()));
        let mut info = None;
        let t = self.sock.requests(b.as_bytes(), t, |m| {
            if m.nft_msg() == Some(NFT_MSG_NEWTABLE) {
                info = Some(table::parse_table(m));
            }
        })?;
        match t.failures().first() {
            None => Ok(info),
            Some(f) if f.errno == libc::ENOENT => Ok(None),
            Some(f) => Err(NftError::kernel(op, f.errno, f.ext.clone())),
        }
    }

    fn read_sets(&mut self, table: &str) -> Result<Vec<SetInfo>, NftError> {
        let op = || format!("reading sets of table inet {table}");
        self.dump(
            &op,
            |b, seq| set::dump_sets(b, seq, table),
            Vec::new,
            |v, m| v.push(set::parse_set(m)),
        )
    }

    fn read_chains(&mut self, table: &str) -> Result<Vec<chain::ChainInfo>, NftError> {
        let op = || format!("reading chains of table inet {table}");
        self.dump(
            &op,
            |b, seq| chain::dump_chains(b, seq, table),
            Vec::new,
            // The kernel filters set and rule dumps by table, but a chain dump returns the
            // chains of every table of the family: keep ours only.
            |v, m| {
                let c = chain::parse_chain(m);
                if c.table == table {
                    v.push(c);
                }
            },
        )
    }

    fn read_rules(&mut self, table: &str) -> Result<Vec<rule::RuleInfo>, NftError> {
        let op = || format!("reading rules of table inet {table}");
        self.dump(
            &op,
            |b, seq| rule::dump_rules(b, seq, table),
            Vec::new,
            |v, m| v.push(rule::parse_rule(m)),
        )
    }

    /// Every element of one set, parsed from raw attributes.
    /// The flags of table `name`, `None` when it does not exist.
    pub fn table_flags(&mut self, name: &str) -> Result<Option<u32>, NftError> {
        Ok(self.read_table(name)?.map(|t| t.flags))
    }

    /// Streams the elements of one set a netlink message at a time, so a reader that keeps
    /// little (counts, a top ten) holds a few KiB however big the set. `init` gives a fresh
    /// state for each attempt (a dump the kernel interrupts is restarted). `None` when the
    /// set does not exist.
    pub fn for_each_element<T>(
        &mut self,
        table: &str,
        set: &str,
        init: impl FnMut() -> T,
        mut each: impl FnMut(&mut T, &[ElemInfo]),
    ) -> Result<Option<T>, NftError> {
        let op = || format!("listing elements of set inet {table} {set}");
        let mut batch = Vec::new();
        let r = self.dump(
            &op,
            |b, seq| element::dump_elements(b, seq, table, set),
            init,
            |acc, m| {
                batch.clear();
                element::parse_elements(m, &mut batch);
                each(acc, &batch);
            },
        );
        match r {
            Ok(acc) => Ok(Some(acc)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn dump_set(&mut self, table: &str, set: &str) -> Result<Vec<ElemInfo>, NftError> {
        let op = || format!("listing elements of set inet {table} {set}");
        self.dump(
            &op,
            |b, seq| element::dump_elements(b, seq, table, set),
            Vec::new,
            |v, m| {
                element::parse_elements(m, v);
            },
        )
    }

    /// Interval set contents as ranges. The kernel lists an interval as its start element
    /// (with timeout and counter) and its end element (flagged, no data); sorted by key, each
    /// start is followed by its end unless the range runs to the top.
    fn dump_ranges(&mut self, table: &str, set: &str) -> Result<Vec<(Range, ElemInfo)>, NftError> {
        Ok(pair_ranges(self.dump_set(table, set)?, remaining))
    }

    /// Which of `keys` are in `set` (hash sets): one GET per key when few, else a dump.
    fn existing(&mut self, table: &str, set: &str, keys: &[Key]) -> Result<HashSet<Key>, NftError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        if keys.len() > GET_LIMIT {
            let all: HashSet<Key> = self
                .dump_set(table, set)?
                .into_iter()
                .map(|e| e.key)
                .collect();
            return Ok(keys.iter().filter(|k| all.contains(k)).copied().collect());
        }
        let first = self.sock.seqs(keys.len() as u32);
        let mut b = MsgBuf::new();
        let mut t = batch::AckTracker::new();
        let mut by_seq = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let seq = first.wrapping_add(i as u32);
            element::get_element(&mut b, seq, table, set, k);
            t.expect(
                seq,
                batch::Op::Read(format!("looking up an element of set inet {table} {set}")),
            );
            by_seq.insert(seq, *k);
        }
        let mut found = HashSet::new();
        let t = self.sock.requests(b.as_bytes(), t, |m| {
            if m.nft_msg() == Some(NFT_MSG_NEWSETELEM)
                && let Some(k) = by_seq.get(&m.seq)
            {
                found.insert(*k);
            }
        })?;
        if let Some(f) = t.failures().iter().find(|f| f.errno != libc::ENOENT) {
            return Err(NftError::kernel(
                format!(
                    "looking up {} elements in set inet {table} {set}",
                    keys.len()
                ),
                f.errno,
                f.ext.clone(),
            ));
        }
        Ok(found)
    }

    // ---- read-back ------------------------------------------------------------------

    /// True when `table` exists in the kernel.
    pub fn table_exists(&mut self, table: &str) -> Result<bool, NftError> {
        Ok(self.read_table(table)?.is_some())
    }

    fn require_table(&mut self, table: &str) -> Result<(), NftError> {
        if self.read_table(table)?.is_none() {
            return Err(NftError::kernel(
                format!("table inet {table} does not exist (run `fwagent setup`)"),
                libc::ENOENT,
                None,
            ));
        }
        Ok(())
    }

    /// Every banned entry with its remaining time and counter.
    pub fn elements(&mut self, s: &Schema) -> Result<Vec<Element>, NftError> {
        let sets = self.read_sets(&s.table)?;
        if sets.is_empty() {
            self.require_table(&s.table)?;
        }
        let mut out = Vec::new();
        for name in schema::SETS {
            let Some(info) = sets.iter().find(|i| i.name == name) else {
                continue;
            };
            let fam = if info.key_len == 4 {
                Family::V4
            } else {
                Family::V6
            };
            if info.flags & set::NFT_SET_INTERVAL != 0 {
                for (r, e) in self.dump_ranges(&s.table, name)? {
                    for t in r.cidrs(fam) {
                        out.push(element_of(name, t, &e));
                    }
                }
                continue;
            }
            for e in self.dump_set(&s.table, name)? {
                let a = schema::key_value(&e.key);
                let t = match name {
                    schema::BANNED4 => Target::V4(Ipv4Addr::from(a as u32)),
                    schema::BANNED6 => Target::V6Prefix(Ipv6Addr::from(a)),
                    _ => Target::V6Exact(Ipv6Addr::from(a)),
                };
                out.push(element_of(name, t, &e));
            }
        }
        Ok(out)
    }

    /// Packets and bytes dropped by each of our rules.
    pub fn counters(&mut self, s: &Schema) -> Result<Vec<RuleCounter>, NftError> {
        let rules = self.read_rules(&s.table)?;
        if rules.is_empty() {
            self.require_table(&s.table)?;
        }
        Ok(rules
            .into_iter()
            .filter_map(|r| {
                let hook = Hook::from_chain(&r.chain)?;
                let set = r.set?;
                let family = match r.nfproto? {
                    NFPROTO_IPV4 => Family::V4,
                    _ => Family::V6,
                };
                Some(RuleCounter {
                    hook,
                    family,
                    set,
                    packets: r.packets,
                    bytes: r.bytes,
                })
            })
            .collect())
    }

    /// Capacity and number of elements of each of our sets (intervals count once).
    pub fn set_sizes(&mut self, s: &Schema) -> Result<Vec<SetSize>, NftError> {
        let sets = self.read_sets(&s.table)?;
        if sets.is_empty() {
            self.require_table(&s.table)?;
        }
        let mut out = Vec::new();
        for name in schema::SETS {
            let Some(info) = sets.iter().find(|i| i.name == name) else {
                continue;
            };
            let interval = info.flags & set::NFT_SET_INTERVAL != 0;
            let count = match info.count {
                Some(c) if self.features.set_count && !interval => c,
                _ if interval => self.dump_ranges(&s.table, name)?.len() as u32,
                _ => self.dump_set(&s.table, name)?.len() as u32,
            };
            out.push(SetSize {
                set: name.to_string(),
                size: info.size,
                count,
            });
        }
        Ok(out)
    }

    /// Removes our table and everything in it. Returns false when it did not exist.
    /// Never touches any other table.
    pub fn teardown(&mut self, table: &str) -> Result<bool, NftError> {
        let mut b = self.batch();
        let seq = b.seq(batch::Op::DeleteTable {
            table: table.to_string(),
        });
        table::del_table(b.buf(), seq, table, false);
        match self.send(b)?.into_iter().next() {
            None => Ok(true),
            Some(f) if f.errno == libc::ENOENT => Ok(false),
            Some(f) => Err(NftError::from_failure(f)),
        }
    }

    /// The ruleset generation id: it changes on every committed transaction, ours or
    /// anyone's, so a poller notices an external flush without listening to events.
    pub fn generation(&mut self) -> Result<u32, NftError> {
        const NFTA_GEN_ID: u16 = 1;
        let seq = self.sock.seqs(1);
        let mut b = MsgBuf::new();
        let m = b.begin_msg(
            nft_type(NFT_MSG_GETGEN),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_UNSPEC,
            0,
        );
        b.end_msg(m);
        let mut t = batch::AckTracker::new();
        t.expect(
            seq,
            batch::Op::Read("reading the ruleset generation".into()),
        );
        let mut gen_id = None;
        let t = self.sock.requests(b.as_bytes(), t, |m| {
            if m.nft_msg() == Some(NFT_MSG_NEWGEN) {
                gen_id = find(m.attrs(), NFTA_GEN_ID).and_then(be_u32);
            }
        })?;
        if let Some(f) = t.into_failures().into_iter().next() {
            return Err(NftError::kernel(
                "reading the ruleset generation",
                f.errno,
                f.ext,
            ));
        }
        gen_id.ok_or_else(|| NftError::Invalid("the kernel sent no generation id".into()))
    }
}

/// Time left of an element with a timeout, `None` when permanent or already expired
/// (callers tell those apart by `timeout_ms`).
/// Pairs the elements of an interval set into ranges: sorted by key (an end before a start
/// at the same key, where one range ends and the next begins), each start is followed by its
/// end unless the range runs to the top; an end without a start is nft's leading "0 end"
/// marker and is skipped. `timeout_ms` picks the range's timeout (remaining or configured).
pub fn pair_ranges(
    mut elems: Vec<ElemInfo>,
    timeout_ms: fn(&ElemInfo) -> Option<u64>,
) -> Vec<(Range, ElemInfo)> {
    elems.sort_by_key(|e| (schema::key_value(&e.key), !e.end));
    let mut out = Vec::new();
    let mut i = 0;
    while i < elems.len() {
        let e = elems[i];
        i += 1;
        if e.end {
            continue;
        }
        let end = match elems.get(i) {
            Some(n) if n.end => {
                i += 1;
                Some(schema::key_value(&n.key))
            }
            _ => None,
        };
        let range = Range {
            start: schema::key_value(&e.key),
            end,
            timeout_ms: timeout_ms(&e),
        };
        out.push((range, e));
    }
    out
}

fn remaining(e: &ElemInfo) -> Option<u64> {
    e.timeout_ms?;
    e.expires_ms.filter(|ms| *ms > 0)
}

fn element_of(set: &str, target: Target, e: &ElemInfo) -> Element {
    Element {
        set: set.to_string(),
        target,
        timeout: e.timeout_ms.map(Duration::from_millis),
        expires: e
            .timeout_ms
            .map(|_| Duration::from_millis(e.expires_ms.unwrap_or(0))),
        packets: e.packets,
        bytes: e.bytes,
    }
}

#[cfg(test)]
use apply::matches;
#[cfg(test)]
mod tests;
