//! Bounded sliding-window hit counting per (rule, key).
//!
//! Each tracked (rule, key) keeps the times of its recent hits, at most `max_hits` of them.
//! A hit first drops times older than `find_time` before the new one, then appends; reaching
//! `max_hits` is an offence and the entry is removed (the window resets after a ban).
//!
//! The number of tracked entries is capped (`max_tracked`): when full, the entry touched least
//! recently is evicted first. Recency is kept in a queue of (entry, stamp) pairs; a pair whose
//! stamp no longer matches its entry is stale and skipped, and the queue is compacted when
//! stale pairs outnumber live ones, so every operation is amortised O(1) and memory stays
//! proportional to `max_tracked`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::addr::Key;

/// Index of a rule in the detector's rule list.
pub type RuleId = usize;

/// Hit times, oldest first. Up to five (every built-in `max_hits`) live inline, so a new
/// tracked address costs no heap allocation; more spill to a deque.
#[derive(Debug)]
enum Times {
    Inline { len: u8, t: [u64; INLINE] },
    Spill(VecDeque<u64>),
}

const INLINE: usize = 5;

impl Times {
    fn new() -> Self {
        Times::Inline {
            len: 0,
            t: [0; INLINE],
        }
    }

    fn len(&self) -> usize {
        match self {
            Times::Inline { len, .. } => usize::from(*len),
            Times::Spill(v) => v.len(),
        }
    }

    fn front(&self) -> Option<u64> {
        match self {
            Times::Inline { len: 0, .. } => None,
            Times::Inline { t, .. } => Some(t[0]),
            Times::Spill(v) => v.front().copied(),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Times::Inline { len, t } => {
                if *len > 0 {
                    t.copy_within(1..usize::from(*len), 0);
                    *len -= 1;
                }
            }
            Times::Spill(v) => {
                v.pop_front();
            }
        }
    }

    fn push_back(&mut self, x: u64) {
        match self {
            Times::Inline { len, t } if usize::from(*len) < INLINE => {
                t[usize::from(*len)] = x;
                *len += 1;
            }
            Times::Inline { len, t } => {
                let mut v: VecDeque<u64> = t[..usize::from(*len)].iter().copied().collect();
                v.push_back(x);
                *self = Times::Spill(v);
            }
            Times::Spill(v) => v.push_back(x),
        }
    }

    fn count_since(&self, horizon: u64) -> usize {
        match self {
            Times::Inline { len, t } => t[..usize::from(*len)]
                .iter()
                .filter(|&&x| x >= horizon)
                .count(),
            Times::Spill(v) => v.iter().filter(|&&x| x >= horizon).count(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// Hit times in milliseconds since the Unix epoch, oldest first.
    times: Times,
    /// Recency stamp; matches the newest queue pair for this entry.
    stamp: u64,
}

/// The counting state.
#[derive(Debug)]
pub struct Windows {
    slots: HashMap<(u32, Key), Slot>,
    queue: VecDeque<((u32, Key), u64)>,
    next_stamp: u64,
    max_tracked: usize,
    evicted: u64,
}

/// Milliseconds since the epoch (times before 1970 count as 0).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

impl Windows {
    /// Tracks at most `max_tracked` (rule, key) entries (at least 1).
    pub fn new(max_tracked: usize) -> Self {
        Windows {
            slots: HashMap::new(),
            queue: VecDeque::new(),
            next_stamp: 0,
            max_tracked: max_tracked.max(1),
            evicted: 0,
        }
    }

    /// Records one hit; returns `Some(hits)` when it completes an offence (the entry is then
    /// cleared), else `None`. `hits` is the number of hits inside the window.
    pub fn hit(
        &mut self,
        rule: RuleId,
        key: Key,
        now: SystemTime,
        max_hits: u32,
        find_time: Duration,
    ) -> Option<u32> {
        match self.record(rule, key, now, max_hits, find_time) {
            (hits, true) => Some(hits),
            (_, false) => None,
        }
    }

    /// Records one hit; returns the hits inside the window and whether they reach
    /// `max_hits` (the entry is then cleared).
    pub fn record(
        &mut self,
        rule: RuleId,
        key: Key,
        now: SystemTime,
        max_hits: u32,
        find_time: Duration,
    ) -> (u32, bool) {
        let id = (rule as u32, key);
        let t = millis(now);
        let horizon = t.saturating_sub(find_time.as_millis().min(u128::from(u64::MAX)) as u64);
        // Only a full table needs the extra lookup (one hash per hit otherwise).
        if self.slots.len() >= self.max_tracked && !self.slots.contains_key(&id) {
            while self.slots.len() >= self.max_tracked {
                self.evict_one();
            }
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            times: Times::new(),
            stamp,
        });
        slot.stamp = stamp;
        while slot.times.front().is_some_and(|old| old < horizon) {
            slot.times.pop_front();
        }
        slot.times.push_back(t);
        let max = max_hits.max(1) as usize;
        // Keep the newest `max` only (a lower max_hits after a reload, or clock jumps).
        while slot.times.len() > max {
            slot.times.pop_front();
        }
        let hits = slot.times.len() as u32;
        if slot.times.len() >= max {
            self.slots.remove(&id);
            return (hits, true);
        }
        self.queue.push_back((id, stamp));
        self.compact_if_needed();
        (hits, false)
    }

    /// Hits currently counted for (rule, key) within the window ending at `now`.
    pub fn current(&self, rule: RuleId, key: Key, now: SystemTime, find_time: Duration) -> u32 {
        let horizon = millis(now).saturating_sub(find_time.as_millis() as u64);
        self.slots
            .get(&(rule as u32, key))
            .map(|s| s.times.count_since(horizon) as u32)
            .unwrap_or(0)
    }

    /// Forgets every window of `key` (e.g. after a manual ban or unban).
    pub fn forget(&mut self, key: Key) {
        self.slots.retain(|(_, k), _| *k != key);
    }

    /// Number of tracked entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entries evicted so far because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn evict_one(&mut self) {
        while let Some((id, stamp)) = self.queue.pop_front() {
            if self.slots.get(&id).is_some_and(|s| s.stamp == stamp) {
                self.slots.remove(&id);
                self.evicted += 1;
                return;
            }
        }
        // Queue exhausted without a live pair: cannot happen while slots are non-empty, but
        // never loop forever on a broken invariant.
        if let Some(id) = self.slots.keys().next().copied() {
            self.slots.remove(&id);
            self.evicted += 1;
        }
    }

    fn compact_if_needed(&mut self) {
        if self.queue.len() > 2 * self.slots.len() + 1024 {
            let slots = &self.slots;
            self.queue
                .retain(|(id, stamp)| slots.get(id).is_some_and(|s| s.stamp == *stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn k(n: u32) -> Key {
        Key::V4(Ipv4Addr::from(0xc633_6400 + n))
    }
    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn threshold_within_window_then_reset() {
        let mut w = Windows::new(100);
        let ft = Duration::from_secs(3600);
        assert_eq!(w.hit(0, k(1), at(0), 3, ft), None);
        assert_eq!(w.hit(0, k(1), at(10), 3, ft), None);
        assert_eq!(w.hit(0, k(1), at(20), 3, ft), Some(3));
        // The window restarted after the offence.
        assert_eq!(w.current(0, k(1), at(20), ft), 0);
        assert_eq!(w.hit(0, k(1), at(30), 3, ft), None);
    }

    #[test]
    fn old_hits_slide_out() {
        let mut w = Windows::new(100);
        let ft = Duration::from_secs(600);
        assert_eq!(w.hit(0, k(1), at(0), 3, ft), None);
        assert_eq!(w.hit(0, k(1), at(300), 3, ft), None);
        // 601 s after the first hit: it no longer counts.
        assert_eq!(w.hit(0, k(1), at(601), 3, ft), None);
        assert_eq!(w.current(0, k(1), at(601), ft), 2);
        assert_eq!(w.hit(0, k(1), at(700), 3, ft), Some(3));
    }

    #[test]
    fn more_hits_than_fit_inline() {
        let mut w = Windows::new(100);
        let ft = Duration::from_secs(600);
        for s in 0..9 {
            assert_eq!(w.hit(0, k(1), at(s), 10, ft), None);
        }
        assert_eq!(w.current(0, k(1), at(9), ft), 9);
        assert_eq!(w.hit(0, k(1), at(9), 10, ft), Some(10));
        // Sliding with a spilled list.
        for s in 0..8 {
            w.hit(0, k(2), at(s * 100), 10, ft);
        }
        assert_eq!(w.current(0, k(2), at(700), ft), 7);
    }

    #[test]
    fn rules_count_separately() {
        let mut w = Windows::new(100);
        let ft = Duration::from_secs(600);
        assert_eq!(w.hit(0, k(1), at(0), 2, ft), None);
        assert_eq!(w.hit(1, k(1), at(1), 2, ft), None);
        assert_eq!(w.hit(0, k(1), at(2), 2, ft), Some(2));
    }

    #[test]
    fn bounded_with_least_recent_evicted_first() {
        let mut w = Windows::new(3);
        let ft = Duration::from_secs(600);
        w.hit(0, k(1), at(0), 5, ft);
        w.hit(0, k(2), at(1), 5, ft);
        w.hit(0, k(3), at(2), 5, ft);
        // Touch 1 again: 2 is now the least recently hit.
        w.hit(0, k(1), at(3), 5, ft);
        w.hit(0, k(4), at(4), 5, ft);
        assert_eq!(w.len(), 3);
        assert_eq!(w.current(0, k(2), at(4), ft), 0);
        assert_eq!(w.current(0, k(1), at(4), ft), 2);
        assert_eq!(w.evicted(), 1);
    }

    #[test]
    fn a_million_distinct_addresses_stay_bounded() {
        let mut w = Windows::new(1000);
        let ft = Duration::from_secs(600);
        for n in 0..1_000_000u32 {
            w.hit(0, k(n), at(u64::from(n / 1000)), 3, ft);
        }
        assert_eq!(w.len(), 1000);
        assert!(w.queue.len() <= 2 * 1000 + 1025);
        assert_eq!(w.evicted(), 999_000);
    }
}
