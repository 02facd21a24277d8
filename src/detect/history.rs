//! Offence history for escalation: one list of ban times per key, across all rules.
//!
//! A repeat offender's ban lasts `ban_time × factor^repeats`, where `repeats` is the number of
//! earlier bans of the same key still inside the history window (30 days by default), capped
//! at `max_time`. The history is plain data (serde) so the agent can persist it across
//! restarts; it is pruned as it goes and bounded in size.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::addr::Key;
use super::window::millis;

/// Escalation policy (from `[escalation]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Escalation {
    /// Each repeat ban lasts `factor` times the previous one (1: no escalation).
    pub factor: f64,
    /// Upper bound of an escalated ban (zero: no bound).
    pub max_time: Duration,
    /// How long a key's bans are remembered.
    pub history: Duration,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            factor: 2.0,
            max_time: Duration::from_secs(30 * 86_400),
            history: Duration::from_secs(30 * 86_400),
        }
    }
}

impl Escalation {
    /// Ban time for a key banned `repeats` times before. A permanent (zero) base stays
    /// permanent; the result never exceeds `max_time` unless the base already does.
    pub fn ban_time(&self, base: Duration, repeats: u32) -> Duration {
        if base.is_zero() || repeats == 0 || self.factor <= 1.0 || !self.factor.is_finite() {
            return base;
        }
        let scaled = base.as_secs_f64() * self.factor.powi(repeats.min(64) as i32);
        let cap = if self.max_time.is_zero() {
            f64::MAX
        } else {
            self.max_time.as_secs_f64().max(base.as_secs_f64())
        };
        // Clamp before converting: from_secs_f64 panics on overflow.
        Duration::from_secs_f64(scaled.min(cap).min(1e15))
    }
}

/// Most keys remembered (about 100 bytes each); beyond this the keys with the oldest last
/// ban are dropped, which only shortens some repeat offenders' next ban.
const MAX_KEYS: usize = 262_144;

/// Most ban times kept per key: enough to escalate to any cap; keeps a hostile flood from
/// growing one entry.
const MAX_TIMES: usize = 64;

/// Ban times per key, milliseconds since the Unix epoch, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    bans: HashMap<Key, Times>,
}

/// The ban times of one key, oldest first. Nearly every key has been banned once, so one
/// time is kept inline: a key costs one 40-byte table slot and no allocation of its own
/// (100,000 keys: ~5 MiB instead of ~10 MiB in scattered small blocks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
enum Times {
    One(u64),
    /// Any other number, sorted (empty only when a prune or pop emptied it: the key is then
    /// removed at once).
    Many(Box<[u64]>),
}

impl Times {
    fn as_slice(&self) -> &[u64] {
        match self {
            Times::One(t) => std::slice::from_ref(t),
            Times::Many(v) => v,
        }
    }

    /// Keeps the times at or after `horizon`; false when none is left.
    fn keep_since(&mut self, horizon: u64) -> bool {
        match self {
            Times::One(t) => *t >= horizon,
            Times::Many(v) => {
                if v.iter().any(|&b| b < horizon) {
                    *self = Times::from(
                        v.iter()
                            .copied()
                            .filter(|&b| b >= horizon)
                            .collect::<Vec<_>>(),
                    );
                }
                !self.as_slice().is_empty()
            }
        }
    }

    /// Drops the times before `horizon`, appends `t`; returns how many were kept.
    fn record(&mut self, t: u64, horizon: u64) -> u32 {
        let mut v: Vec<u64> = self
            .as_slice()
            .iter()
            .copied()
            .filter(|&b| b >= horizon)
            .collect();
        let kept = v.len() as u32;
        v.push(t);
        if v.len() > MAX_TIMES {
            v.remove(0);
        }
        *self = Times::from(v);
        kept
    }

    /// Removes the newest time; false when none is left.
    fn pop(&mut self) -> bool {
        match self {
            Times::One(_) => false,
            Times::Many(v) => {
                *self = Times::from(v[..v.len().saturating_sub(1)].to_vec());
                !self.as_slice().is_empty()
            }
        }
    }
}

impl From<Vec<u64>> for Times {
    fn from(v: Vec<u64>) -> Times {
        match v.as_slice() {
            [t] => Times::One(*t),
            _ => Times::Many(v.into_boxed_slice()),
        }
    }
}

impl From<Times> for Vec<u64> {
    fn from(t: Times) -> Vec<u64> {
        match t {
            Times::One(t) => vec![t],
            Times::Many(v) => v.into_vec(),
        }
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of earlier bans of `key` inside `keep` before `now`.
    pub fn repeats(&self, key: Key, now: SystemTime, keep: Duration) -> u32 {
        let horizon = millis(now).saturating_sub(keep.as_millis() as u64);
        self.bans
            .get(&key)
            .map(|v| v.as_slice().iter().filter(|&&t| t >= horizon).count() as u32)
            .unwrap_or(0)
    }

    /// Records a ban of `key` at `now`; returns the number of earlier bans inside `keep`.
    pub fn record(&mut self, key: Key, now: SystemTime, keep: Duration) -> u32 {
        let t = millis(now);
        let horizon = t.saturating_sub(keep.as_millis() as u64);
        if !self.bans.contains_key(&key) && self.bans.len() >= MAX_KEYS {
            self.prune(now, keep);
            if self.bans.len() >= MAX_KEYS {
                self.drop_oldest(MAX_KEYS / 10);
            }
        }
        match self.bans.get_mut(&key) {
            Some(times) => times.record(t, horizon),
            None => {
                self.bans.insert(key, Times::One(t));
                0
            }
        }
    }

    /// Drops bans older than `keep` and keys left without any.
    pub fn prune(&mut self, now: SystemTime, keep: Duration) {
        let horizon = millis(now).saturating_sub(keep.as_millis() as u64);
        self.bans.retain(|_, v| v.keep_since(horizon));
        if self.bans.capacity() > 1024 && self.bans.len() < self.bans.capacity() / 4 {
            self.bans.shrink_to_fit();
        }
    }

    /// Forgets a key (manual unban with "forgive").
    pub fn forget(&mut self, key: Key) {
        self.bans.remove(&key);
    }

    /// Number of keys with history.
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// True when no key has history.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    fn drop_oldest(&mut self, n: usize) {
        let mut last: Vec<(u64, Key)> = self
            .bans
            .iter()
            .map(|(k, v)| (v.as_slice().last().copied().unwrap_or(0), *k))
            .collect();
        last.sort_unstable();
        for (_, k) in last.into_iter().take(n) {
            self.bans.remove(&k);
        }
    }
}

impl History {
    /// The ban times of `key` (ms since the epoch, oldest first), to persist them.
    pub fn times(&self, key: Key) -> Option<&[u64]> {
        self.bans.get(&key).map(Times::as_slice)
    }

    /// Takes back the newest ban time of `key` (an offence that led to no ban).
    pub fn unrecord(&mut self, key: Key) {
        if let Some(v) = self.bans.get_mut(&key)
            && !v.pop()
        {
            self.bans.remove(&key);
        }
    }

    /// Restores the ban times of `key` from disk.
    pub fn restore(&mut self, key: Key, mut times: Vec<u64>) {
        times.sort_unstable();
        if times.len() > MAX_TIMES {
            times.drain(..times.len() - MAX_TIMES);
        }
        if !times.is_empty() {
            self.bans.insert(key, Times::from(times));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + days * 86_400)
    }

    #[test]
    fn escalates_per_repeat_and_caps() {
        let e = Escalation {
            factor: 2.0,
            max_time: Duration::from_secs(5 * 86_400),
            history: Duration::from_secs(30 * 86_400),
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(e.ban_time(day, 0), day);
        assert_eq!(e.ban_time(day, 1), 2 * day);
        assert_eq!(e.ban_time(day, 2), 4 * day);
        assert_eq!(e.ban_time(day, 3), 5 * day);
        assert_eq!(e.ban_time(day, 1000), 5 * day);
        assert_eq!(e.ban_time(Duration::ZERO, 3), Duration::ZERO);
        let off = Escalation { factor: 1.0, ..e };
        assert_eq!(off.ban_time(day, 3), day);
    }

    #[test]
    fn history_counts_within_window_and_round_trips() {
        let keep = Duration::from_secs(30 * 86_400);
        let k: Key = "198.51.100.7".parse().unwrap();
        let mut h = History::new();
        assert_eq!(h.record(k, at(0), keep), 0);
        assert_eq!(h.record(k, at(10), keep), 1);
        assert_eq!(h.record(k, at(20), keep), 2);
        // Day 35: the day-0 ban is older than 30 days.
        assert_eq!(h.record(k, at(35), keep), 2);
        let json = serde_json::to_string(&h).unwrap();
        let back: History = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.repeats(k, at(36), keep), 3);
        let v6: Key = "2001:db8:25::/64".parse().unwrap();
        h.record(v6, at(36), keep);
        let back: History = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back.repeats(v6, at(36), keep), 1);
        h.prune(at(100), keep);
        assert!(h.is_empty());
    }

    #[test]
    fn one_time_inline_many_in_order_and_bounded() {
        assert!(std::mem::size_of::<(Key, Times)>() <= 40);
        let keep = Duration::from_secs(30 * 86_400);
        let k: Key = "198.51.100.7".parse().unwrap();
        let mut h = History::new();
        h.record(k, at(0), keep);
        assert!(matches!(h.bans[&k], Times::One(_)));
        h.record(k, at(1), keep);
        assert_eq!(h.times(k).unwrap().len(), 2);
        h.unrecord(k);
        assert!(matches!(h.bans[&k], Times::One(_)));
        h.unrecord(k);
        assert!(h.times(k).is_none());
        for d in 0..100 {
            h.record(k, at(0) + Duration::from_secs(d), keep);
        }
        let t = h.times(k).unwrap();
        assert_eq!(t.len(), MAX_TIMES);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*t.last().unwrap(), millis(at(0) + Duration::from_secs(99)));
        // Day 31: every one of them is older than the 30-day window.
        h.prune(at(31), keep);
        assert!(h.is_empty());
        h.restore(k, vec![5, 3]);
        assert_eq!(h.times(k), Some(&[3u64, 5][..]));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
    }
}
