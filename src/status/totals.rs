//! Running totals of the kernel's drop counters across re-created rules, and the agent's
//! bounded 24-hour history of samples.
//!
//! # Why totals need carrying
//! Each drop rule has its own counter, and the kernel starts it at zero whenever the rule is
//! created. Our rules are re-created when the table is rebuilt (a schema change on reload)
//! or re-installed after someone flushed it. A Prometheus `_total` must never go backwards,
//! so the agent keeps, per rule (hook × family × set):
//!
//! - `carried`: what earlier incarnations of the rule had counted when they ended;
//! - `last`: the latest sample of the current incarnation.
//!
//! total = carried + current. The agent samples the counters on every status refresh (the
//! dashboard's background snapshot, or a light counters-only read when the web is off), and
//! once more right before it re-applies the table itself. A re-install then moves `last`
//! into `carried`. A sample lower than `last` that nobody announced (the rules were
//! re-created behind our back, e.g. by `nft -f`) is handled the same way. What was counted
//! between the last sample and an external flush is lost with the flushed rules: the kernel
//! keeps it nowhere.
//!
//! # Why epochs
//! The background refresher reads the kernel on a blocking thread while the agent loop may be
//! re-installing the table. A sample taken before or during a re-install must not be folded
//! in after it (that would count the old incarnation twice), so the loop opens a re-install
//! with [`Totals::begin_reinstall`] (which bumps the epoch and refuses samples meanwhile) and
//! closes it with [`Totals::end_reinstall`]; the refresher notes the epoch before it reads
//! and [`Totals::observe`] drops samples of an older epoch.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::nft::{Family, Hook, RuleCounter};

/// The identity of one drop rule's counter.
pub type RuleKey = (Hook, Family, String);

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(self, o: Count) -> Count {
        Count {
            packets: self.packets.saturating_add(o.packets),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }
}

/// What the agent carries for one rule; also how it travels to `fwagent status` over the
/// control socket, so the CLI computes totals from its own, fresher kernel read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub hook: String,
    pub family: String,
    pub set: String,
    /// Counted by earlier incarnations of this rule (since the agent started).
    pub carried: Count,
    /// The latest sample of the current incarnation.
    pub last: Count,
}

impl Carried {
    /// Whether this entry describes the rule `c` counts for.
    pub fn is_for(&self, c: &RuleCounter) -> bool {
        self.hook == c.hook.to_string() && self.family == c.family.to_string() && self.set == c.set
    }

    /// The running total for a current kernel reading of this rule.
    pub fn total(&self, current: Count) -> Count {
        total_of(self.carried, self.last, current)
    }
}

/// carried + current, also when `current` comes from an incarnation we have not been told
/// about (it is then below `last`, and `last` counts as carried too).
pub fn total_of(carried: Count, last: Count, current: Count) -> Count {
    if current.packets < last.packets || current.bytes < last.bytes {
        carried.add(last).add(current)
    } else {
        carried.add(current)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    carried: Count,
    last: Count,
}

/// The running totals (see the module docs).
#[derive(Debug, Default)]
pub struct Totals {
    epoch: u64,
    reinstalling: bool,
    rules: BTreeMap<RuleKey, Entry>,
}

impl Totals {
    pub fn new() -> Totals {
        Totals::default()
    }

    /// The epoch a sampler must note before it reads the kernel.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Folds in a sample read at `epoch`. Returns false (and changes nothing) when the sample
    /// is stale: a re-install began after it was taken, or is under way.
    pub fn observe(&mut self, epoch: u64, sample: &[RuleCounter]) -> bool {
        if epoch != self.epoch || self.reinstalling {
            return false;
        }
        self.fold(sample);
        true
    }

    fn fold(&mut self, sample: &[RuleCounter]) {
        for c in sample {
            let now = Count {
                packets: c.packets,
                bytes: c.bytes,
            };
            let e = self
                .rules
                .entry((c.hook, c.family, c.set.clone()))
                .or_default();
            if now.packets < e.last.packets || now.bytes < e.last.bytes {
                // Re-created without notice: the old incarnation ended at `last`.
                e.carried = e.carried.add(e.last);
            }
            e.last = now;
        }
    }

    /// The agent is about to re-apply the table: from now on, samples taken earlier are
    /// stale and new ones are refused until [`Totals::end_reinstall`].
    pub fn begin_reinstall(&mut self) {
        self.epoch += 1;
        self.reinstalling = true;
    }

    /// The last sample of the old rules, taken by the agent itself after
    /// [`Totals::begin_reinstall`] and before the apply (when the rules are still readable).
    pub fn observe_final(&mut self, sample: &[RuleCounter]) {
        self.fold(sample);
    }

    /// The re-apply is done. `recreated`: the rules were created anew (table created or
    /// rebuilt), so their counters restarted from zero.
    pub fn end_reinstall(&mut self, recreated: bool) {
        if recreated {
            for e in self.rules.values_mut() {
                e.carried = e.carried.add(e.last);
                e.last = Count::default();
            }
        }
        self.epoch += 1;
        self.reinstalling = false;
    }

    /// The state to hand to `fwagent status`.
    pub fn carried(&self) -> Vec<Carried> {
        self.rules
            .iter()
            .map(|((hook, family, set), e)| Carried {
                hook: hook.to_string(),
                family: family.to_string(),
                set: set.clone(),
                carried: e.carried,
                last: e.last,
            })
            .collect()
    }
}

/// One point of the 24-hour history: cumulative figures at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_unix: u64,
    /// Bans the agent made since it started (all rules, manual bans included).
    pub bans: u64,
    /// Dropped packets, running total over both hooks and families.
    pub dropped_packets: u64,
    /// Addresses blocked at that moment.
    pub blocked: u64,
}

/// The history as `status --json` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryJson {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// Oldest first; the chart draws the differences between neighbours.
    pub samples: Vec<Sample>,
}

/// A bounded ring of samples, at most one per `interval` (default 5 min → 288 for 24 h).
#[derive(Debug)]
pub struct History {
    interval_secs: u64,
    cap: usize,
    samples: VecDeque<Sample>,
}

impl History {
    /// Keeps `span_secs` worth of samples taken every `interval_secs`.
    pub fn new(interval_secs: u64, span_secs: u64) -> History {
        let interval_secs = interval_secs.max(1);
        let cap = (span_secs / interval_secs).max(1) as usize + 1;
        History {
            interval_secs,
            cap,
            samples: VecDeque::with_capacity(cap),
        }
    }

    /// Records `s` if the newest sample is at least one interval old (or there is none);
    /// the oldest sample falls out when the ring is full. Returns whether it was recorded.
    pub fn offer(&mut self, s: Sample) -> bool {
        if let Some(last) = self.samples.back()
            && s.at_unix < last.at_unix.saturating_add(self.interval_secs)
        {
            return false;
        }
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        true
    }

    pub fn json(&self) -> HistoryJson {
        HistoryJson {
            interval_secs: self.interval_secs,
            samples: self.samples.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(hook: Hook, set: &str, packets: u64) -> RuleCounter {
        RuleCounter {
            hook,
            family: Family::V4,
            set: set.into(),
            packets,
            bytes: packets * 100,
        }
    }

    fn total(t: &Totals, c: &RuleCounter) -> u64 {
        let e = t.carried().into_iter().find(|e| e.is_for(c)).unwrap();
        e.total(Count {
            packets: c.packets,
            bytes: c.bytes,
        })
        .packets
    }

    #[test]
    fn totals_follow_the_kernel_while_nothing_is_recreated() {
        let mut t = Totals::new();
        assert!(t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 5)]));
        assert!(t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 9)]));
        assert_eq!(total(&t, &rc(Hook::Input, "banned4", 12)), 12);
    }

    #[test]
    fn a_reinstall_carries_the_last_sample_and_totals_never_go_back() {
        let mut t = Totals::new();
        t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 40)]);
        // External flush: the table is gone, nothing to read before the re-install.
        t.begin_reinstall();
        t.end_reinstall(true);
        assert_eq!(total(&t, &rc(Hook::Input, "banned4", 0)), 40);
        t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 3)]);
        assert_eq!(total(&t, &rc(Hook::Input, "banned4", 3)), 43);
        // Our own rebuild: the final sample counts too.
        t.begin_reinstall();
        t.observe_final(&[rc(Hook::Input, "banned4", 10)]);
        t.end_reinstall(true);
        assert_eq!(total(&t, &rc(Hook::Input, "banned4", 1)), 51);
    }

    #[test]
    fn an_unchanged_apply_carries_nothing() {
        let mut t = Totals::new();
        t.observe(t.epoch(), &[rc(Hook::Forward, "nets4", 7)]);
        t.begin_reinstall();
        t.end_reinstall(false);
        t.observe(t.epoch(), &[rc(Hook::Forward, "nets4", 8)]);
        assert_eq!(total(&t, &rc(Hook::Forward, "nets4", 8)), 8);
    }

    #[test]
    fn samples_from_before_or_during_a_reinstall_are_refused() {
        let mut t = Totals::new();
        t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 40)]);
        let old = t.epoch();
        t.begin_reinstall();
        // During: refused whatever its epoch.
        assert!(!t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 2)]));
        t.end_reinstall(true);
        // Read before the re-install (old incarnation), folded in after: refused.
        assert!(!t.observe(old, &[rc(Hook::Input, "banned4", 45)]));
        assert_eq!(total(&t, &rc(Hook::Input, "banned4", 0)), 40);
    }

    #[test]
    fn an_unannounced_reset_is_carried_too() {
        let mut t = Totals::new();
        t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 30)]);
        t.observe(t.epoch(), &[rc(Hook::Input, "banned4", 4)]);
        assert_eq!(total(&t, &rc(Hook::Input, "banned4", 4)), 34);
        // The CLI's fresher reading may itself be below the agent's last sample.
        let e = t.carried()[0].clone();
        assert_eq!(
            e.total(Count {
                packets: 1,
                bytes: 100
            })
            .packets,
            35
        );
    }

    #[test]
    fn history_keeps_one_sample_per_interval_and_a_bounded_span() {
        let mut h = History::new(300, 24 * 3600);
        let s = |at| Sample {
            at_unix: at,
            bans: at / 300,
            dropped_packets: at,
            blocked: 1,
        };
        assert!(h.offer(s(1_000)));
        assert!(!h.offer(s(1_100)), "too soon");
        assert!(h.offer(s(1_300)));
        for i in 2..400 {
            h.offer(s(1_000 + i * 300));
        }
        let j = h.json();
        assert_eq!(j.samples.len(), 289);
        assert_eq!(j.samples.last().unwrap().at_unix, 1_000 + 399 * 300);
        assert!(j.samples.windows(2).all(|w| w[0].at_unix < w[1].at_unix));
    }
}
