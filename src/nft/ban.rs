//! Banning and unbanning: grouping targets per set, the kernel-version dependent plans
//! (in-place timeout update or delete + add; DESTROY or DELETE with ENOENT retries), and
//! interval-set planning for network bans.

use super::*;

/// Elements per transaction when a plan must be split (~150 KB for IPv4 with timeouts,
/// under the default 208 KiB socket send buffer).
const SPLIT: usize = 4000;

impl Nft {
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
        // Each attempt reads what it must (old kernels: which keys exist; networks: the
        // interval set), plans, and sends one batch. Only a lost race with an expiring
        // element (ENOENT on a plain delete) is retried; anything else is reported.
        for attempt in 0..RETRIES {
            let mut report = BanReport::default();
            // (set, op, elements) in batch order: for each set its deletes come before its
            // adds, because the kernel applies the messages of a batch in order.
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
                // 6.10+: re-adding an element updates its timeout in place (and keeps its
                // counter). Older kernels accept the add but keep the old timeout, so the
                // existing keys are deleted first in the same batch.
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
            // The keys to delete were just seen, but may expire before the batch lands:
            // DESTROY (6.3+) does not mind; DELETE then fails and we retry.
            let destroy = self.features.destroy;
            for (_, op, _) in &mut plan {
                if *op == ElemOp::Delete && destroy {
                    *op = ElemOp::Destroy;
                }
            }
            if plan.iter().all(|(_, _, e)| e.is_empty()) {
                return Ok(report);
            }
            let failures = self.send_plan(&s.table, &plan)?;
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
            // Most likely a full set: the error counts what was refused.
            let requested: Vec<(&'static str, Vec<ElemSpec>)> = plan
                .into_iter()
                .filter(|(_, op, _)| *op == ElemOp::Add)
                .map(|(s, _, e)| (s, e))
                .collect();
            return Err(self.explain(s, f, &requested));
        }
        unreachable!("the last attempt returns")
    }

    /// Sends a plan as one transaction. Only if the socket cannot take a datagram that big
    /// (no CAP_NET_ADMIN for SO_SNDBUFFORCE, e.g. in a user namespace: EMSGSIZE) is it sent
    /// as several transactions of at most [`SPLIT`] elements, in plan order.
    fn send_plan(
        &mut self,
        table: &str,
        plan: &[(&'static str, ElemOp, Vec<ElemSpec>)],
    ) -> Result<Vec<batch::Failure>, NftError> {
        let mut b = self.batch();
        for (set, op, elems) in plan {
            b.elements(*op, table, set, elems);
        }
        match self.send(b) {
            Err(e) if e.errno() == Some(libc::EMSGSIZE) => {
                tracing::warn!("transaction too large for the socket; splitting it");
            }
            other => return other,
        }
        for (set, op, elems) in plan {
            // Interval sets are small and their start/end pairs must stay together.
            let size = if elems.iter().any(|e| e.end) {
                elems.len().max(1)
            } else {
                SPLIT
            };
            for part in elems.chunks(size) {
                let mut b = self.batch();
                b.elements(*op, table, set, part);
                let failures = self.send(b)?;
                if !failures.is_empty() {
                    return Ok(failures);
                }
            }
        }
        Ok(Vec::new())
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
            let same_span = |r: &Range| r.start == w.start && r.end == w.end;
            if overlapping
                .iter()
                .any(|(r, _)| r.contains(&w) && !same_span(r))
            {
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
        // No table, no bans: everything is absent (not an error).
        if !self.table_exists(&s.table)? {
            return Ok(UnbanReport {
                removed: 0,
                absent: targets.len(),
            });
        }
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
                // Two targets may cover the same range: delete it once.
                let mut removed: HashSet<u128> = HashSet::new();
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
                        if removed.insert(r.start) {
                            del.extend(r.elems(fam));
                        }
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
}
