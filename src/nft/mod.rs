//! The kernel layer: fwagent's own nftables table over raw nfnetlink (no `nft` binary, no C
//! library). [`Nft`] owns one netlink socket and offers the operations the CLI and the agent
//! need; everything below it is named after the kernel's nouns:
//!
//! - [`wire`]     — constants, attribute encoder, zero-copy attribute walker;
//! - [`batch`]    — transactions (BEGIN … END in one datagram) and ack bookkeeping;
//! - [`socket`]   — the netlink socket: batches, dumps, plain requests;
//! - [`table`], [`chain`], [`set`], [`rule`], [`element`] — one file per kernel object;
//! - [`schema`]   — the desired ruleset as a value and its pure rendering; ban targets;
//! - [`features`] — runtime probes and forced old-kernel fallbacks.
//!
//! Order of an apply: read the table; if it matches the schema, change nothing; otherwise
//! read every element and rebuild table + carried elements in ONE batch, so the kernel never
//! runs without the bans.

pub mod batch;
pub mod chain;
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
use ipnet::{Ipv4Net, Ipv6Net};
use schema::{Range, merge_ranges};
pub use schema::{Schema, Target};
pub use set::Family;
use set::{SetInfo, SetSpec};
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

    /// Runs a dump, restarting it (up to 5 times) when the kernel flags it interrupted by a
    /// concurrent change.
    fn dump<T>(
        &mut self,
        op: &dyn Fn() -> String,
        build: impl Fn(&mut MsgBuf, u32),
        mut init: impl FnMut() -> T,
        mut each: impl FnMut(&mut T, &Msg<'_>),
    ) -> Result<T, NftError> {
        for _ in 0..5 {
            let seq = self.sock.seqs(1);
            let mut b = MsgBuf::new();
            build(&mut b, seq);
            let mut acc = init();
            match self.sock.dump(b.as_bytes(), seq, op, |m| each(&mut acc, m)) {
                Ok(()) => return Ok(acc),
                Err(DumpError::Interrupted) => continue,
                Err(DumpError::Failed(e)) => return Err(e),
            }
        }
        Err(NftError::kernel(op(), libc::EINTR, None))
    }

    // ---- probes ---------------------------------------------------------------------

    /// Probes what the kernel supports, without leaving anything behind:
    /// 1. one batch that can never commit (it ends by deleting a table that does not exist)
    ///    tells from per-message errors whether the kernel accepts the persist flag and
    ///    DESTROYTABLE;
    /// 2. a scratch table `fwagent-probe-<pid>` (no chains, so it never sees a packet)
    ///    tells whether re-adding an element updates its timeout, and whether GETSET
    ///    reports the element count; it is deleted right after.
    fn probe(&mut self) -> Result<Features, NftError> {
        let pid = std::process::id();
        let scratch = format!("fwagent-probe-{pid}");
        let missing = format!("fwagent-probe-{pid}-absent");
        let mut f = Features::default();

        let mut b = self.batch();
        let s_persist = b.seq(batch::Op::Probe("the persist table flag"));
        table::new_table(
            b.buf(),
            s_persist,
            &scratch,
            NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
            None,
        );
        let s_destroy = b.seq(batch::Op::Probe("DESTROY messages"));
        table::del_table(b.buf(), s_destroy, &missing, true);
        let s_abort = b.seq(batch::Op::Probe("aborting the probe"));
        table::del_table(b.buf(), s_abort, &missing, false);
        let failures = self.send(b)?;
        for fl in &failures {
            if fl.errno == libc::EPERM {
                return Err(NftError::from_failure(fl.clone()));
            }
        }
        let failed = |what: &str| {
            failures
                .iter()
                .any(|x| matches!(&x.op, batch::Op::Probe(w) if *w == what))
        };
        f.persist = !failed("the persist table flag");
        f.destroy = !failed("DESTROY messages");

        let r = self.probe_scratch(&scratch);
        // Always remove the scratch table, whatever the probe found.
        let mut b = self.batch();
        let seq = b.seq(batch::Op::DeleteTable {
            table: scratch.clone(),
        });
        table::del_table(b.buf(), seq, &scratch, false);
        let _ = self.send(b);
        let (update, count) = r?;
        f.timeout_update = update;
        f.set_count = count;
        Ok(f)
    }

    fn probe_scratch(&mut self, scratch: &str) -> Result<(bool, bool), NftError> {
        let spec = SetSpec {
            name: "probe",
            family: Family::V4,
            interval: false,
            size: 4,
        };
        let key: Key = Ipv4Addr::new(198, 51, 100, 1).into();
        let elem = |t| ElemSpec {
            key,
            end: false,
            timeout_ms: Some(t),
        };
        let mut b = self.batch();
        let seq = b.seq(batch::Op::CreateTable {
            table: scratch.into(),
        });
        table::new_table(b.buf(), seq, scratch, 0, None);
        let seq = b.seq(batch::Op::CreateSet {
            table: scratch.into(),
            set: "probe".into(),
        });
        set::new_set(b.buf(), seq, scratch, &spec, 1);
        b.elements(ElemOp::Add, scratch, "probe", &[elem(600_000)]);
        self.commit(b)?;
        let mut b = self.batch();
        b.elements(ElemOp::Add, scratch, "probe", &[elem(1_200_000)]);
        self.commit(b)?;
        let elems = self.dump_set(scratch, "probe")?;
        let update = elems.first().and_then(|e| e.timeout_ms) == Some(1_200_000);
        let sets = self.read_sets(scratch)?;
        let count = sets.first().is_some_and(|s| s.count.is_some());
        Ok((update, count))
    }

    // ---- reading --------------------------------------------------------------------

    fn read_table(&mut self, name: &str) -> Result<Option<TableInfo>, NftError> {
        let seq = self.sock.seqs(1);
        let mut b = MsgBuf::new();
        table::get_table(&mut b, seq, name);
        let mut t = batch::AckTracker::new();
        let op = format!("reading table inet {name}");
        t.expect(seq, batch::Op::Probe("table"));
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
            |v, m| v.push(chain::parse_chain(m)),
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
        let mut elems = self.dump_set(table, set)?;
        elems.sort_by_key(|e| (schema::key_value(&e.key), !e.end));
        let mut out = Vec::new();
        let mut i = 0;
        while i < elems.len() {
            let e = elems[i];
            i += 1;
            if e.end {
                continue; // an end without a start: nft's leading "0 end" marker
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
                timeout_ms: remaining(&e),
            };
            out.push((range, e));
        }
        Ok(out)
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
            t.expect(seq, batch::Op::Probe("element"));
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

    // ---- apply ----------------------------------------------------------------------

    /// Makes the kernel match `s`. `own` asks for table ownership (the long-running agent
    /// only): taken with the persist flag, and only where the kernel has it.
    pub fn apply(&mut self, s: &Schema, own: bool) -> Result<Applied, NftError> {
        s.validate()?;
        let flags = match (own, self.features.persist) {
            (true, true) => NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST,
            (true, false) => {
                tracing::warn!(
                    "kernel has no persist table flag (< 6.9): not taking ownership of table \
                     inet {}, which would die with this process",
                    s.table
                );
                0
            }
            (false, _) => 0,
        };
        let Some(current) = self.read_table(&s.table)? else {
            let mut b = self.batch();
            s.render(&mut b, flags);
            self.commit(b)?;
            return Ok(Applied::Created);
        };
        let sets = self.read_sets(&s.table)?;
        let chains = self.read_chains(&s.table)?;
        let rules = self.read_rules(&s.table)?;
        if matches(s, &current, &sets, &chains, &rules) {
            let owned = current.flags & NFT_TABLE_F_OWNER != 0;
            if flags != 0 && !owned {
                // Re-claim an orphaned persistent table (or claim a CLI-made one).
                let mut b = self.batch();
                let seq = b.seq(batch::Op::CreateTable {
                    table: s.table.clone(),
                });
                table::new_table(b.buf(), seq, &s.table, flags, Some(&s.fingerprint()));
                if let Err(e) = self.commit(b) {
                    tracing::warn!("could not take ownership of table inet {}: {e}", s.table);
                }
            }
            return Ok(Applied::Unchanged);
        }
        tracing::info!(table = %s.table, "ruleset differs from the configuration: rebuilding");
        let old_prefix = rules
            .iter()
            .find(|r| r.set.as_deref() == Some(schema::BANNED6))
            .and_then(|r| r.mask.as_ref())
            .map(|m| m.iter().map(|b| b.count_ones()).sum::<u32>() as u8);
        let mut carried: Vec<(&'static str, Vec<ElemSpec>)> = Vec::new();
        let mut count = 0;
        let mut nets6 = Vec::new();
        for name in schema::SETS {
            let Some(info) = sets.iter().find(|i| i.name == name) else {
                continue;
            };
            let interval = info.flags & set::NFT_SET_INTERVAL != 0;
            let fam = if info.key_len == 4 {
                Family::V4
            } else {
                Family::V6
            };
            if interval {
                let ranges: Vec<Range> = self
                    .dump_ranges(&s.table, name)?
                    .into_iter()
                    .filter(|(r, e)| r.timeout_ms.is_some() || e.timeout_ms.is_none())
                    .map(|(r, _)| r)
                    .collect();
                count += ranges.len();
                if name == schema::NETS6 {
                    nets6.extend(ranges);
                } else {
                    let elems = ranges.iter().flat_map(|r| r.elems(fam)).collect();
                    carried.push((name, elems));
                }
                continue;
            }
            let live: Vec<ElemInfo> = self
                .dump_set(&s.table, name)?
                .into_iter()
                .filter(|e| e.timeout_ms.is_none() || remaining(e).is_some())
                .collect();
            count += live.len();
            if name == schema::BANNED6 && old_prefix != Some(s.ipv6_prefix) {
                // A prefix change must neither widen nor lose coverage: each old key still
                // stands for its old prefix, so it moves to nets6 as that CIDR.
                let p = old_prefix.unwrap_or(128);
                for e in live {
                    let net = Ipv6Net::new(Ipv6Addr::from(schema::key_value(&e.key)), p)
                        .unwrap_or_else(|_| {
                            Ipv6Net::from(Ipv6Addr::from(schema::key_value(&e.key)))
                        });
                    if let Some((start, end)) = Target::Net6(net).range(s.ipv6_prefix) {
                        nets6.push(Range {
                            start,
                            end,
                            timeout_ms: remaining(&e),
                        });
                    }
                }
                continue;
            }
            let elems = live
                .iter()
                .map(|e| ElemSpec {
                    key: e.key,
                    end: false,
                    timeout_ms: remaining(e),
                })
                .collect();
            carried.push((name, elems));
        }
        let nets6: Vec<ElemSpec> = merge_ranges(nets6)
            .iter()
            .flat_map(|r| r.elems(Family::V6))
            .collect();
        carried.push((schema::NETS6, nets6));

        let mut b = self.batch();
        let seq = b.seq(batch::Op::DeleteTable {
            table: s.table.clone(),
        });
        table::del_table(b.buf(), seq, &s.table, false);
        s.render(&mut b, flags);
        for (set, elems) in &carried {
            b.elements(ElemOp::Add, &s.table, set, elems);
        }
        let failures = self.send(b)?;
        if let Some(f) = failures.into_iter().next() {
            return Err(self.explain(s, f, &carried));
        }
        Ok(Applied::Rebuilt { carried: count })
    }

    /// Turns a failed element add on a full set into [`NftError::SetFull`] with counts.
    fn explain(
        &mut self,
        s: &Schema,
        f: batch::Failure,
        requested: &[(&'static str, Vec<ElemSpec>)],
    ) -> NftError {
        let set_full = f.errno == libc::ENFILE || f.errno == libc::ENOSPC;
        if let (
            true,
            batch::Op::Elements {
                op: ElemOp::Add,
                set,
                ..
            },
        ) = (set_full, &f.op)
        {
            let rejected = requested
                .iter()
                .filter(|(n, _)| n == set)
                .map(|(_, e)| e.iter().filter(|e| !e.end).count())
                .sum();
            let spec_size = s
                .sets()
                .iter()
                .find(|x| x.name == set)
                .map(|x| x.size)
                .unwrap_or(0);
            // The failed batch changed nothing: the set holds what it held before.
            let count = self
                .dump_set(&s.table, set)
                .map(|v| v.iter().filter(|e| !e.end).count() as u32)
                .unwrap_or(0);
            let size = self
                .read_sets(&s.table)
                .ok()
                .and_then(|v| v.into_iter().find(|x| &x.name == set))
                .and_then(|x| x.size)
                .unwrap_or(spec_size);
            return NftError::SetFull {
                table: s.table.clone(),
                set: set.clone(),
                size,
                count,
                rejected,
            };
        }
        NftError::from_failure(f)
    }

    // ---- ban / unban ----------------------------------------------------------------

    /// Bans targets, each with its own duration (`None` or zero = permanent), in one
    /// transaction. Banning an already banned target refreshes its timeout (keeping its
    /// counter on 6.10+; on older kernels by delete + add in the same batch).
    pub fn ban(
        &mut self,
        s: &Schema,
        bans: &[(Target, Option<Duration>)],
    ) -> Result<BanReport, NftError> {
        s.validate()?;
        let p = s.ipv6_prefix;
        // Hash-set keys per set; a key named twice keeps the later expiry.
        let mut keys: BTreeMap<&'static str, HashMap<Key, Option<u64>>> = BTreeMap::new();
        let mut nets: BTreeMap<&'static str, Vec<Range>> = BTreeMap::new();
        for (t, d) in bans {
            let ms = schema::timeout_ms(*d);
            if let Some(k) = t.key(p) {
                let e = keys.entry(t.set()).or_default().entry(k).or_insert(ms);
                *e = schema::later(*e, ms);
            } else if let Some((start, end)) = t.range(p) {
                if start == 0 && end.is_none() {
                    return Err(NftError::Invalid(format!(
                        "refusing to ban everything ({t})"
                    )));
                }
                nets.entry(t.set()).or_default().push(Range {
                    start,
                    end,
                    timeout_ms: ms,
                });
            }
        }
        for attempt in 0..RETRIES {
            let mut report = BanReport::default();
            let mut plan: Vec<(&'static str, ElemOp, Vec<ElemSpec>)> = Vec::new();
            for (set, m) in &keys {
                let mut add: Vec<ElemSpec> = m
                    .iter()
                    .map(|(k, t)| ElemSpec {
                        key: *k,
                        end: false,
                        timeout_ms: *t,
                    })
                    .collect();
                add.sort_by_key(|e| e.key);
                if !self.features.timeout_update {
                    let ks: Vec<Key> = add.iter().map(|e| e.key).collect();
                    let present = self.existing(&s.table, set, &ks)?;
                    let mut del: Vec<ElemSpec> = add
                        .iter()
                        .filter(|e| present.contains(&e.key))
                        .copied()
                        .collect();
                    del.sort_by_key(|e| e.key);
                    plan.push((set, ElemOp::Delete, del));
                }
                report.applied += add.len();
                plan.push((set, ElemOp::Add, add));
            }
            for (set, want) in &nets {
                let (del, add, covered) = self.plan_nets(s, set, want)?;
                report.applied += want.len() - covered;
                report.covered += covered;
                plan.push((set, ElemOp::Delete, del));
                plan.push((set, ElemOp::Add, add));
            }
            let mut b = self.batch();
            for (set, op, elems) in &plan {
                let op = if *op == ElemOp::Delete && self.features.destroy {
                    ElemOp::Destroy
                } else {
                    *op
                };
                b.elements(op, &s.table, set, elems);
            }
            if b.is_empty() {
                return Ok(report);
            }
            let failures = self.send(b)?;
            let Some(f) = failures.into_iter().next() else {
                return Ok(report);
            };
            // ENOENT on a delete: an element expired between our check and the batch.
            let raced = f.errno == libc::ENOENT
                && matches!(
                    f.op,
                    batch::Op::Elements {
                        op: ElemOp::Delete,
                        ..
                    }
                );
            if raced && attempt + 1 < RETRIES {
                continue;
            }
            let requested: Vec<(&'static str, Vec<ElemSpec>)> = plan
                .into_iter()
                .filter(|(_, op, _)| *op == ElemOp::Add)
                .map(|(s, _, e)| (s, e))
                .collect();
            return Err(self.explain(s, f, &requested));
        }
        unreachable!("the last attempt returns")
    }

    /// Plans a network ban against the interval set's current content: existing ranges
    /// inside a new one are replaced by it, a new one already inside an existing range is
    /// skipped (covered), partial overlaps are merged into their union (the later expiry).
    #[allow(clippy::type_complexity)]
    fn plan_nets(
        &mut self,
        s: &Schema,
        set: &str,
        want: &[Range],
    ) -> Result<(Vec<ElemSpec>, Vec<ElemSpec>, usize), NftError> {
        let fam = if set == schema::NETS4 {
            Family::V4
        } else {
            Family::V6
        };
        let existing = self.dump_ranges(&s.table, set)?;
        let mut del = Vec::new();
        let mut add = Vec::new();
        let mut covered = 0;
        let mut removed: HashSet<u128> = HashSet::new();
        for w in merge_ranges(want.to_vec()) {
            let overlapping: Vec<&(Range, ElemInfo)> =
                existing.iter().filter(|(r, _)| r.overlaps(&w)).collect();
            // Strictly wider existing ban: nothing to do (equal ranges are refreshed).
            if overlapping.iter().any(|(r, _)| {
                r.contains(&w)
                    && *r
                        != Range {
                            timeout_ms: r.timeout_ms,
                            ..w
                        }
            }) {
                covered += 1;
                continue;
            }
            let mut union = w;
            for (r, _) in &overlapping {
                if !w.contains(r) {
                    union = merge_ranges(vec![union, *r])[0];
                }
                if removed.insert(r.start) {
                    del.extend(r.elems(fam));
                }
            }
            add.extend(union.elems(fam));
        }
        // Deleting then re-adding the same interval in one batch is fine; on 6.10+ an equal
        // interval could be updated in place, but a uniform plan keeps one code path.
        for d in &mut del {
            d.timeout_ms = None;
        }
        Ok((del, add, covered))
    }

    /// Removes bans. Idempotent: absent or expired targets are counted, never an error, and
    /// never abort the rest of the batch.
    pub fn unban(&mut self, s: &Schema, targets: &[Target]) -> Result<UnbanReport, NftError> {
        s.validate()?;
        let p = s.ipv6_prefix;
        let mut keys: BTreeMap<&'static str, Vec<Key>> = BTreeMap::new();
        let mut nets: BTreeMap<&'static str, Vec<Range>> = BTreeMap::new();
        for t in targets {
            if let Some(k) = t.key(p) {
                keys.entry(t.set()).or_default().push(k);
            } else if let Some((start, end)) = t.range(p) {
                nets.entry(t.set()).or_default().push(Range {
                    start,
                    end,
                    timeout_ms: None,
                });
            }
        }
        for v in keys.values_mut() {
            v.sort();
            v.dedup();
        }
        for attempt in 0..RETRIES {
            let mut report = UnbanReport::default();
            let mut b = self.batch();
            for (set, ks) in &keys {
                let present = self.existing(&s.table, set, ks)?;
                report.removed += present.len();
                report.absent += ks.len() - present.len();
                let (op, list): (ElemOp, Vec<Key>) = if self.features.destroy {
                    (ElemOp::Destroy, ks.clone())
                } else {
                    let mut v: Vec<Key> = present.into_iter().collect();
                    v.sort();
                    (ElemOp::Delete, v)
                };
                let elems: Vec<ElemSpec> = list
                    .into_iter()
                    .map(|key| ElemSpec {
                        key,
                        end: false,
                        timeout_ms: None,
                    })
                    .collect();
                b.elements(op, &s.table, set, &elems);
            }
            for (set, want) in &nets {
                let fam = if *set == schema::NETS4 {
                    Family::V4
                } else {
                    Family::V6
                };
                let existing = self.dump_ranges(&s.table, set)?;
                let mut del = Vec::new();
                for w in want {
                    // Remove the network and any narrower network bans inside it.
                    let inside: Vec<&Range> = existing
                        .iter()
                        .map(|(r, _)| r)
                        .filter(|r| w.contains(r))
                        .collect();
                    if inside.is_empty() {
                        report.absent += 1;
                    } else {
                        report.removed += 1;
                    }
                    for r in inside {
                        del.extend(r.elems(fam));
                    }
                }
                for d in &mut del {
                    d.timeout_ms = None;
                }
                let op = if self.features.destroy {
                    ElemOp::Destroy
                } else {
                    ElemOp::Delete
                };
                b.elements(op, &s.table, set, &del);
            }
            if b.is_empty() {
                return Ok(report);
            }
            let Some(f) = self.send(b)?.into_iter().next() else {
                return Ok(report);
            };
            if f.errno == libc::ENOENT && attempt + 1 < RETRIES {
                // On kernels without DESTROY: an element expired since we looked. Look again
                // and retry without it.
                continue;
            }
            return Err(NftError::from_failure(f));
        }
        unreachable!("the last attempt returns")
    }

    // ---- read-back ------------------------------------------------------------------

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
        t.expect(seq, batch::Op::Probe("the generation id"));
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

/// True when the kernel's table is exactly what `s` renders (besides elements).
fn matches(
    s: &Schema,
    t: &TableInfo,
    sets: &[SetInfo],
    chains: &[chain::ChainInfo],
    rules: &[rule::RuleInfo],
) -> bool {
    const NFT_TABLE_F_DORMANT: u32 = 1;
    if t.flags & NFT_TABLE_F_DORMANT != 0 || t.comment.as_deref() != Some(&s.fingerprint()) {
        return false;
    }
    let want_sets = s.sets();
    if sets.len() != want_sets.len() || !want_sets.iter().all(|w| sets.iter().any(|x| x.matches(w)))
    {
        return false;
    }
    if chains.len() != Hook::ALL.len()
        || !Hook::ALL
            .iter()
            .all(|h| chains.iter().any(|c| c.matches(*h, s.priority)))
    {
        return false;
    }
    let want_rules = s.rules();
    Hook::ALL.iter().all(|h| {
        let have: Vec<&rule::RuleInfo> = rules.iter().filter(|r| r.chain == h.chain()).collect();
        have.len() == want_rules.len() && have.iter().zip(&want_rules).all(|(r, w)| r.matches(w))
    }) && rules.len() == want_rules.len() * Hook::ALL.len()
}

/// Parses an address or network as the CLI and config write them: an IPv4 address, an
/// IPv6 address (banned by prefix), or a CIDR (`/32` and `/128` become single addresses).
pub fn parse_target(text: &str) -> Result<Target, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<Ipv4Addr>() {
        return Ok(Target::V4(a));
    }
    if let Ok(a) = t.parse::<Ipv6Addr>() {
        return Ok(match a.to_ipv4_mapped() {
            Some(v4) => Target::V4(v4),
            None => Target::V6Prefix(a),
        });
    }
    if let Ok(n) = t.parse::<Ipv4Net>() {
        if n.prefix_len() == 32 {
            return Ok(Target::V4(n.addr()));
        }
        if n.prefix_len() == 0 {
            return Err(format!("{t:?}: refusing to ban every IPv4 address"));
        }
        return Ok(Target::Net4(n.trunc()));
    }
    if let Ok(n) = t.parse::<Ipv6Net>() {
        if n.prefix_len() == 128 {
            return Ok(Target::V6Exact(n.addr()));
        }
        if n.prefix_len() == 0 {
            return Err(format!("{t:?}: refusing to ban every IPv6 address"));
        }
        return Ok(Target::Net6(n.trunc()));
    }
    Err(format!("{t:?} is not an IP address or network"))
}

#[cfg(test)]
mod tests;
