//! The agent's mirror of its active bans, kept compact.
//!
//! An agent may hold hundreds of thousands of bans (a botnet, or a blocklist banned with
//! `fwagent ban --from-file`), so a ban here is one 48-byte hash-table slot: the target and a
//! fixed-size record with times in milliseconds and the rule as an index into a small table
//! of names. Nothing is allocated per ban, which also keeps the heap free of the scattered
//! small blocks that would otherwise pin freed pages after a burst. [`state::Ban`] stays the
//! stored form; [`BanView`] is the borrowed form handed out.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::state;

/// `expires_at` of a permanent ban.
const PERMANENT: u64 = u64::MAX;

/// Active bans by target network.
#[derive(Debug, Default)]
pub struct Bans {
    map: HashMap<IpNet, Slot>,
    /// Rule names, indexed by [`Slot::rule`]; only grows (one entry per rule name seen).
    rules: Vec<Box<str>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Milliseconds since the Unix epoch.
    banned_at: u64,
    /// Milliseconds since the Unix epoch, or [`PERMANENT`].
    expires_at: u64,
    /// Saturating.
    hits: u32,
    /// Saturating.
    times_banned: u16,
    rule: u16,
}

/// One ban of [`Bans`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanView<'a> {
    pub target: IpNet,
    pub rule: &'a str,
    pub banned_at: SystemTime,
    /// `None` is permanent.
    pub expires_at: Option<SystemTime>,
    pub hits: u64,
    pub times_banned: u32,
}

impl BanView<'_> {
    /// Whether the ban is still in force at `now`.
    pub fn is_active(self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }

    /// Time left at `now`, `None` for a permanent ban, zero once expired.
    pub fn remaining(self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// The stored form.
    pub fn to_ban(self) -> state::Ban {
        state::Ban {
            target: self.target,
            rule: self.rule.to_string(),
            banned_at: self.banned_at,
            expires_at: self.expires_at,
            hits: self.hits,
            times_banned: self.times_banned,
        }
    }
}

fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(PERMANENT - 1))
        .min(PERMANENT - 1)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Bans {
    /// An empty mirror.
    pub fn new() -> Bans {
        Bans::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds or replaces the ban of `ban.target`. Times keep millisecond precision; hits and
    /// the repeat count saturate (at 4 billion and 65,535).
    pub fn insert(&mut self, ban: &state::Ban) {
        let rule = self.rule_index(&ban.rule);
        let slot = Slot {
            banned_at: to_millis(ban.banned_at),
            expires_at: ban.expires_at.map_or(PERMANENT, to_millis),
            hits: u32::try_from(ban.hits).unwrap_or(u32::MAX),
            times_banned: u16::try_from(ban.times_banned).unwrap_or(u16::MAX),
            rule,
        };
        self.map.insert(ban.target, slot);
    }

    pub fn contains(&self, target: &IpNet) -> bool {
        self.map.contains_key(target)
    }

    pub fn get(&self, target: &IpNet) -> Option<BanView<'_>> {
        self.map.get(target).map(|s| self.view(*target, s))
    }

    /// Removes and returns the ban of `target`.
    pub fn remove(&mut self, target: &IpNet) -> Option<state::Ban> {
        let slot = self.map.remove(target)?;
        Some(self.view(*target, &slot).to_ban())
    }

    pub fn iter(&self) -> impl Iterator<Item = BanView<'_>> {
        self.map.iter().map(|(t, s)| self.view(*t, s))
    }

    pub fn keys(&self) -> impl Iterator<Item = &IpNet> {
        self.map.keys()
    }

    pub fn clear(&mut self) {
        self.map = HashMap::new();
    }

    /// Keeps the bans for which `keep` is true; gives memory back once the table is mostly
    /// empty (a burst of bans that expired).
    pub fn retain(&mut self, mut keep: impl FnMut(BanView<'_>) -> bool) {
        let rules = &self.rules;
        self.map.retain(|t, s| keep(view(rules, *t, s)));
        if self.map.capacity() > 1024 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to_fit();
        }
    }

    fn view(&self, target: IpNet, slot: &Slot) -> BanView<'_> {
        view(&self.rules, target, slot)
    }

    fn rule_index(&mut self, name: &str) -> u16 {
        if let Some(i) = self.rules.iter().position(|r| &**r == name) {
            return i as u16;
        }
        // Names come from configured rules and stored bans: a handful. Should 65,535 ever be
        // reached, the last slot is reused (the name shown may then be wrong, nothing else).
        if self.rules.len() < usize::from(u16::MAX) {
            self.rules.push(name.into());
        } else if let Some(last) = self.rules.last_mut() {
            *last = name.into();
        }
        (self.rules.len() - 1) as u16
    }
}

fn view<'a>(rules: &'a [Box<str>], target: IpNet, s: &Slot) -> BanView<'a> {
    BanView {
        target,
        rule: rules.get(usize::from(s.rule)).map_or("", |r| r),
        banned_at: from_millis(s.banned_at),
        expires_at: (s.expires_at != PERMANENT).then(|| from_millis(s.expires_at)),
        hits: u64::from(s.hits),
        times_banned: u32::from(s.times_banned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: &str, rule: &str, expires: Option<u64>) -> state::Ban {
        state::Ban {
            target: target.parse().unwrap(),
            rule: rule.into(),
            banned_at: from_millis(1_700_000_000_123),
            expires_at: expires.map(from_millis),
            hits: 7,
            times_banned: 2,
        }
    }

    #[test]
    fn round_trips_and_stays_small() {
        assert!(std::mem::size_of::<(IpNet, Slot)>() <= 48);
        let mut b = Bans::new();
        let a = ban("198.51.100.7/32", "exim-ratelimit", Some(1_700_000_086_523));
        let p = ban("2001:db8:1::/64", state::MANUAL, None);
        b.insert(&a);
        b.insert(&p);
        b.insert(&ban("203.0.113.0/24", "exim-ratelimit", Some(1)));
        assert_eq!(b.len(), 3);
        assert_eq!(b.rules.len(), 2);
        assert_eq!(b.get(&a.target).unwrap().to_ban(), a);
        assert_eq!(b.get(&p.target).unwrap().to_ban(), p);
        let now = from_millis(1_700_000_000_000);
        b.retain(|v| v.is_active(now));
        assert_eq!(b.len(), 2);
        assert_eq!(b.remove(&a.target), Some(a.clone()));
        assert!(!b.contains(&a.target));
        assert_eq!(b.iter().map(|v| v.target).collect::<Vec<_>>(), [p.target]);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let mut b = Bans::new();
        let mut x = ban("198.51.100.7/32", "r", None);
        x.hits = u64::MAX;
        x.times_banned = 70_000;
        b.insert(&x);
        let v = b.get(&x.target).unwrap();
        assert_eq!((v.hits, v.times_banned), (u64::from(u32::MAX), 65_535));
    }
}
