//! Applying the schema: compare the kernel's table with the desired one; create it when
//! missing, leave it alone when it matches, otherwise rebuild it in ONE batch that deletes
//! the old table, renders the new one and re-adds every live ban with its remaining time.

use super::*;

impl Nft {
    /// Makes the kernel match `s`. `own` asks for table ownership (the long-running agent
    /// only): taken with the persist flag, and only where the kernel has it.
    pub fn apply(&mut self, s: &Schema, own: bool) -> Result<Applied, NftError> {
        s.validate()?;
        // A rebuild is planned from a read of the kernel; if anything changed the ruleset
        // in between (a ban from another process), the kernel refuses the batch (ERESTART)
        // and we read and plan again.
        let mut attempt = 0;
        loop {
            match self.apply_once(s, own) {
                Err(e) if e.errno() == Some(libc::ERESTART) && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!("ruleset changed while rebuilding; retrying");
                }
                other => return other,
            }
        }
    }

    fn apply_once(&mut self, s: &Schema, own: bool) -> Result<Applied, NftError> {
        let genid = self.generation()?;
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
            if flags != 0 && owned && current.owner != self.sock.port_id() {
                // Owned by a live socket of another process: most likely a second agent.
                // Two would fight over the bans, so this one must not go on.
                return Err(NftError::kernel(
                    format!(
                        "taking ownership of table inet {} (owned by netlink port {}: is another fwagent running, with another --state-dir?)",
                        s.table,
                        current.owner.unwrap_or(0)
                    ),
                    libc::EPERM,
                    None,
                ));
            }
            let ours = owned && current.owner == self.sock.port_id();
            if flags != 0 && owned || flags == 0 && !ours {
                return Ok(Applied::Unchanged);
            }
            if flags == 0 {
                // Protection switched off: the owner flag cannot be cleared in place either,
                // so rebuild our own table unowned (bans carried) and fall through.
                tracing::info!(table = %s.table, "giving up ownership: rebuilding the table unowned");
            } else {
                // Re-claim an orphaned persistent table. A table created without the owner flag
                // (by the CLI, or by an agent with protection off) cannot be given it in place:
                // then rebuild it owned, in one batch that carries every ban.
                let mut b = self.batch();
                let seq = b.seq(batch::Op::CreateTable {
                    table: s.table.clone(),
                });
                table::new_table(b.buf(), seq, &s.table, flags, Some(&s.fingerprint()));
                match self.commit(b) {
                    Ok(()) => return Ok(Applied::Unchanged),
                    Err(e) => tracing::info!(
                        table = %s.table,
                        "table was created without the owner flag ({e}); rebuilding it owned"
                    ),
                }
            }
        }
        tracing::info!(table = %s.table, "ruleset differs from the configuration: rebuilding");
        // The prefix the old banned6 keys stand for: what the old rule masks with, else
        // what the old table's comment says, else /128 (each key only covers itself).
        let old_prefix = rules
            .iter()
            .find(|r| r.set.as_deref() == Some(schema::BANNED6))
            .and_then(|r| r.mask.as_ref())
            .map(|m| m.iter().map(|b| b.count_ones()).sum::<u32>() as u8)
            .or_else(|| {
                let c = current.comment.as_deref()?;
                let v = c.split("ipv6_prefix=").nth(1)?.split(' ').next()?;
                v.parse().ok()
            });
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
            // A set of ours by name but not by key type cannot hand its keys over.
            let want = s
                .sets()
                .into_iter()
                .find(|w| w.name == name)
                .map(|w| w.family);
            if want != Some(fam) || !(info.key_len == 4 || info.key_len == 16) {
                tracing::warn!(
                    set = name,
                    "old set has foreign keys; its elements are dropped"
                );
                continue;
            }
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

        // One batch, in this order: delete the old table (with its sets, chains and
        // rules), create the new one, re-add the carried bans. Valid only at `genid`.
        let mut b = batch::Batch::with_genid(self.sock.next_seq(), Some(genid));
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
    pub(super) fn explain(
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
            // The failed batch changed nothing: the set holds what it held before. Prefer
            // the kernel's count; dumping a million elements on every failed ban would slow
            // the agent exactly when it is under pressure.
            let info = self
                .read_sets(&s.table)
                .ok()
                .and_then(|v| v.into_iter().find(|x| &x.name == set));
            let size = info.as_ref().and_then(|x| x.size).unwrap_or(spec_size);
            let count = match info.and_then(|x| x.count) {
                Some(c) if self.features.set_count => c,
                _ => self
                    .dump_set(&s.table, set)
                    .map(|v| v.iter().filter(|e| !e.end).count() as u32)
                    .unwrap_or(0),
            };
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
}

/// True when the kernel's table is exactly what `s` renders (besides elements).
pub(super) fn matches(
    s: &Schema,
    t: &TableInfo,
    sets: &[SetInfo],
    chains: &[chain::ChainInfo],
    rules: &[rule::RuleInfo],
) -> bool {
    const NFT_TABLE_F_DORMANT: u32 = 1;
    if t.flags & NFT_TABLE_F_DORMANT != 0 {
        return false;
    }
    // The comment only speeds up the verdict: kernels before 5.13 do not keep table
    // userdata, and the structural checks below cover everything it encodes.
    if t.comment.as_deref().is_some_and(|c| c != s.fingerprint()) {
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
