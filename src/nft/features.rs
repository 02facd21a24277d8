//! Kernel features that differ between the kernels users run (Debian 12's 6.1 … current),
//! probed at runtime, and the switch that forces the old-kernel paths for tests.
//!
//! | feature          | kernel | without it                                              |
//! |------------------|--------|---------------------------------------------------------|
//! | `persist`        | 6.9    | never take table ownership (an owned table would die    |
//! |                  |        | with the agent's socket)                                |
//! | `destroy`        | 6.3    | DELSETELEM; on ENOENT retry without the missing keys    |
//! | `timeout_update` | 6.10   | refresh = delete + add in one batch (counter restarts)  |
//! | `set_count`      | recent | count elements by dumping the set                      |

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::batch;
use super::element::{ElemOp, ElemSpec, Key};
use super::set::{self, Family, SetSpec};
use super::table::{self, NFT_TABLE_F_OWNER, NFT_TABLE_F_PERSIST};
use super::{Nft, NftError};

/// What the running kernel supports. `Features::default()` is the most capable set; the
/// probe turns off what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Features {
    /// NFT_TABLE_F_PERSIST: an owned table survives its owner (6.9+).
    pub persist: bool,
    /// DESTROYTABLE/DESTROYSETELEM: deleting a missing object is not an error (6.3+).
    pub destroy: bool,
    /// NEWSETELEM on an existing element updates its timeout, keeping its counter (6.10+).
    pub timeout_update: bool,
    /// GETSET reports the element count (NFTA_SET_COUNT).
    pub set_count: bool,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            persist: true,
            destroy: true,
            timeout_update: true,
            set_count: true,
        }
    }
}

impl Features {
    /// What Debian 12's 6.1 kernel offers.
    pub const LINUX_6_1: Features = Features {
        persist: false,
        destroy: false,
        timeout_update: false,
        set_count: false,
    };

    /// Name of the environment variable read by [`Features::apply_compat_env`].
    pub const COMPAT_ENV: &'static str = "FWAGENT_KERNEL_COMPAT";

    /// Turns features off by name: a comma-separated list of `nopersist`, `nodestroy`,
    /// `noupdate`, `nocount`, or `6.1` for all of them. Features can only be taken away:
    /// forcing one on that the kernel lacks would fail later anyway.
    pub fn with_compat(mut self, spec: &str) -> Result<Features, String> {
        for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "nopersist" => self.persist = false,
                "nodestroy" => self.destroy = false,
                "noupdate" => self.timeout_update = false,
                "nocount" => self.set_count = false,
                "6.1" | "all" => self = Features::LINUX_6_1,
                other => {
                    return Err(format!(
                        "unknown kernel compat flag {other:?} (known: nopersist, nodestroy, \
                         noupdate, nocount, 6.1)"
                    ));
                }
            }
        }
        Ok(self)
    }

    /// Applies `FWAGENT_KERNEL_COMPAT` when set.
    pub fn apply_compat_env(self) -> Result<Features, String> {
        match std::env::var(Self::COMPAT_ENV) {
            Ok(v) => self
                .with_compat(&v)
                .map_err(|e| format!("{}: {e}", Self::COMPAT_ENV)),
            Err(_) => Ok(self),
        }
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "persist={} destroy={} timeout_update={} set_count={}",
            yes(self.persist),
            yes(self.destroy),
            yes(self.timeout_update),
            yes(self.set_count)
        )
    }
}

impl Nft {
    /// Probes what the kernel supports, without leaving anything behind:
    /// 1. one batch that can never commit (it ends by deleting a table that does not exist)
    ///    tells from per-message errors whether the kernel accepts the persist flag and
    ///    DESTROYTABLE;
    /// 2. a scratch table `fwagent-probe-<pid>-<n>` (no chains, so it never sees a packet)
    ///    tells whether re-adding an element updates its timeout, and whether GETSET
    ///    reports the element count; it is deleted right after.
    pub(super) fn probe(&mut self) -> Result<Features, NftError> {
        // Unique per probe, so handles opened at the same time in one process never delete
        // each other's scratch table.
        static PROBES: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        );
        let scratch = format!("fwagent-probe-{id}");
        let missing = format!("fwagent-probe-{id}-absent");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_flags_only_take_away() {
        let f = Features::default()
            .with_compat("nodestroy, noupdate")
            .unwrap();
        assert!(!f.destroy && !f.timeout_update && f.persist && f.set_count);
        assert_eq!(
            Features::default().with_compat("6.1").unwrap(),
            Features::LINUX_6_1
        );
        assert!(Features::default().with_compat("turbo").is_err());
        assert_eq!(
            Features::default().with_compat("").unwrap(),
            Features::default()
        );
    }
}
