//! Offender detection: turns log lines into offences (who to ban, for how long).
//!
//! Pipeline for one line of a source (the agent and `fwagent scan` both do this):
//!
//! 1. [`Matcher::candidates`] — which of the source's rules have a prefilter literal in the
//!    line (one Aho-Corasick scan; no regex runs for the ~95 % of lines without one);
//! 2. [`Detector::observe`] for each candidate rule, with the event time `now` (the agent's
//!    clock when following live, the line's own timestamp in `scan`):
//!    ignore regexes → patterns → strict address parsing ([`addr`]) → never-ban policy and
//!    IPv6 aggregation ([`NeverBan`]) → sliding window per (rule, [`Key`]) ([`window`]) →
//!    at `max_hits`, an [`Offence`] with the ban time escalated by the key's history across
//!    all rules ([`history`]). The key's window then restarts.
//!
//! ```no_run
//! # use fwagent::detect::*;
//! # use std::time::SystemTime;
//! let rules = rules::builtins();
//! let matcher = Matcher::all(&rules);
//! let mut det = Detector::new(rules, NeverBan::default());
//! let mut ids = Vec::new();
//! let line = b"2026-12-03 16:13:57 H=[198.51.100.12] rejected connection in \"connect\" ACL: Rate limited: 198.51.100.12";
//! matcher.candidates(line, &mut ids);
//! for &id in &ids {
//!     if let Some(offence) = det.observe(id, line, SystemTime::now()) {
//!         println!("ban {} for {:?}", offence.key, offence.ban_time);
//!     }
//! }
//! ```
//!
//! Everything here is pure and synchronous except [`local`], whose watcher runs on tokio.

pub mod addr;
pub mod builtin;
pub mod history;
pub mod local;
pub mod matcher;
pub mod never;
pub mod rules;
pub mod timestamp;
pub mod window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

pub use addr::{AddrError, Key, parse_host};
pub use history::{Escalation, History};
pub use local::LocalAddrs;
pub use matcher::Matcher;
pub use never::{NeverBan, Protection};
pub use rules::{Extract, Rule, RuleError, RuleSpec};
pub use timestamp::{TimeReader, TimestampFormat};
pub use window::{RuleId, Windows};

/// Default cap on tracked (rule, key) entries.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// A ban with less than this left no longer silences its address: its lines count again,
/// and an offence completed now is a new ban (the agent refreshes the kernel element).
/// The kernel expires elements by jiffies and the agent by the wall clock; the two differ
/// by milliseconds (or seconds over a day of clock slewing). Without this slack a bot
/// that returns the moment the kernel drops its ban could go uncounted for that gap. Lines
/// still on their way when a ban is made arrive within milliseconds of it, far from its end.
pub const EXPIRY_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// A decision to ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offence {
    /// What to ban (an IPv4 address, an IPv6 prefix or exact IPv6 address).
    pub key: Key,
    /// The address in the line that completed the offence.
    pub addr: IpAddr,
    /// The rule whose threshold was reached.
    pub rule: RuleId,
    /// Hits inside the window when the threshold was reached.
    pub hits: u32,
    /// Ban time after escalation (zero: permanent).
    pub ban_time: Duration,
    /// Earlier bans of this key inside the history window (0 for a first offence).
    pub repeat: u32,
}

/// What one line did, for callers that report more than offences (`scan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// No pattern of the rule matched.
    NoMatch,
    /// An ignore regex matched.
    Ignored,
    /// A pattern matched but captured something that is not exactly one address.
    BadHost(AddrError),
    /// The address is never banned (loopback, allow-list, local...).
    Protected(IpAddr),
    /// Counted, threshold not reached yet.
    Counted { key: Key, addr: IpAddr, hits: u32 },
    /// The key is banned right now: a line written before the ban took effect (or read in
    /// the same burst). Not counted, so it can neither ban again nor inflate escalation.
    Banned { key: Key, addr: IpAddr },
    /// Threshold reached.
    Offence(Offence),
}

/// The detector: compiled rules, never-ban policy, windows and history.
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    never: NeverBan,
    windows: Windows,
    history: History,
    escalation: Escalation,
    /// Keys banned until (ms since the epoch; `u64::MAX` = permanent).
    banned: HashMap<Key, u64>,
}

impl Detector {
    /// A detector with [`DEFAULT_MAX_TRACKED`] and default [`Escalation`].
    pub fn new(rules: Vec<Rule>, never: NeverBan) -> Detector {
        Detector {
            rules,
            never,
            windows: Windows::new(DEFAULT_MAX_TRACKED),
            history: History::new(),
            banned: HashMap::new(),
            escalation: Escalation::default(),
        }
    }

    /// Builds rules, never-ban policy and limits from the configuration. `local` is the live
    /// local address set (empty for `scan`).
    pub fn from_config(
        cfg: &crate::config::Config,
        local: LocalAddrs,
    ) -> Result<Detector, RuleError> {
        let rules = rules::build(cfg)?;
        rules::check_names(cfg, &rules)?;
        let never = NeverBan::new(cfg.ban.allow.clone(), local, cfg.firewall.ipv6_prefix);
        Ok(Detector::new(rules, never)
            .with_max_tracked(cfg.ban.max_tracked)
            .with_escalation(Escalation {
                factor: cfg.escalation.factor,
                max_time: cfg.escalation.max_time,
                history: cfg.escalation.history,
            }))
    }

    /// Caps the number of tracked (rule, key) entries (clears current windows).
    pub fn with_max_tracked(mut self, max: usize) -> Self {
        self.windows = Windows::new(max);
        self
    }

    /// Sets the escalation policy.
    pub fn with_escalation(mut self, e: Escalation) -> Self {
        self.escalation = e;
        self
    }

    /// The rules, indexed by [`RuleId`].
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The id of the rule called `name`.
    pub fn rule_id(&self, name: &str) -> Option<RuleId> {
        self.rules.iter().position(|r| r.name == name)
    }

    /// A prefilter matcher for the named rules (unknown names are skipped).
    pub fn matcher(&self, names: &[String]) -> Matcher {
        let ids: Vec<RuleId> = names.iter().filter_map(|n| self.rule_id(n)).collect();
        Matcher::new(&self.rules, &ids)
    }

    /// The never-ban policy (its local address set is shared with the watcher).
    pub fn never(&self) -> &NeverBan {
        &self.never
    }

    /// The offence history, to persist it.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Replaces the offence history (restored from disk).
    pub fn set_history(&mut self, h: History) {
        self.history = h;
    }

    /// Forgets a key's windows and history (a manual unban that should not count as a
    /// previous offence).
    pub fn forgive(&mut self, key: Key) {
        self.windows.forget(key);
        self.history.forget(key);
        self.banned.remove(&key);
    }

    /// Records that `key` is banned until `until` (`None`: permanently), so lines already on
    /// their way are not counted. Offences mark their key themselves; the agent calls this
    /// for manual bans and for bans restored at start-up.
    pub fn mark_banned(&mut self, key: Key, until: Option<SystemTime>) {
        let until = until.map_or(u64::MAX, window::millis);
        self.banned.insert(key, until);
    }

    /// Forgets that `key` is banned (it was unbanned) without touching its history.
    pub fn lift(&mut self, key: Key) {
        self.banned.remove(&key);
    }

    fn is_banned(&self, key: Key, now: SystemTime) -> bool {
        self.banned
            .get(&key)
            .is_some_and(|&until| until > window::millis(now + EXPIRY_SLACK))
    }

    /// Drops history older than the escalation window; call now and then (hourly).
    pub fn prune(&mut self, now: SystemTime) {
        self.history.prune(now, self.escalation.history);
        let t = window::millis(now);
        self.banned.retain(|_, until| *until > t);
    }

    /// The counting state (for metrics).
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Runs rule `rule` on `line` at time `now`; `Some` when it completes an offence.
    pub fn observe(&mut self, rule: RuleId, line: &[u8], now: SystemTime) -> Option<Offence> {
        match self.observe_detail(rule, line, now) {
            Observation::Offence(o) => Some(o),
            _ => None,
        }
    }

    /// Like [`observe`](Self::observe), reporting what happened to the line.
    pub fn observe_detail(&mut self, rule: RuleId, line: &[u8], now: SystemTime) -> Observation {
        let Some(r) = self.rules.get(rule) else {
            return Observation::NoMatch;
        };
        match r.extract(line) {
            Extract::NoMatch => Observation::NoMatch,
            Extract::Ignored => Observation::Ignored,
            Extract::BadHost(e) => {
                tracing::debug!(rule = %r.name, error = %e, line = %String::from_utf8_lossy(line),
                    "pattern matched but the host is not a valid address: not counted");
                Observation::BadHost(e)
            }
            Extract::Host(ip) => self.count(rule, ip, now),
        }
    }

    /// Counts one hit of `ip` for `rule` at `now` (the line was already matched elsewhere).
    pub fn count(&mut self, rule: RuleId, ip: IpAddr, now: SystemTime) -> Observation {
        let Some(r) = self.rules.get(rule) else {
            return Observation::NoMatch;
        };
        let Some(key) = self.never.key_for(ip) else {
            tracing::debug!(rule = %r.name, %ip, "never-ban address: not counted");
            return Observation::Protected(ip);
        };
        if self.is_banned(key, now) {
            return Observation::Banned { key, addr: ip };
        }
        match self.windows.hit(rule, key, now, r.max_hits, r.find_time) {
            None => Observation::Counted {
                key,
                addr: ip,
                hits: self.windows.current(rule, key, now, r.find_time),
            },
            Some(hits) => {
                let repeat = self.history.record(key, now, self.escalation.history);
                let ban_time = self.escalation.ban_time(r.ban_time, repeat);
                let until = (!ban_time.is_zero()).then(|| now + ban_time);
                // Expired entries go when the map doubles, so a flood of offenders cannot
                // grow it beyond the bans actually in force.
                if self.banned.len() >= 1024 && self.banned.len().is_power_of_two() {
                    let t = window::millis(now);
                    self.banned.retain(|_, u| *u > t);
                }
                self.mark_banned(key, until);
                Observation::Offence(Offence {
                    key,
                    addr: ip,
                    rule,
                    hits,
                    ban_time,
                    repeat,
                })
            }
        }
    }
}

/// History plumbing for the agent (persistence, unban, reload).
impl Detector {
    /// The ban times of `key`, to persist them after a ban.
    pub fn history_of(&self, key: Key) -> Option<&[u64]> {
        self.history.times(key)
    }

    /// Takes back the history entry of an offence that led to no ban (the agent found the
    /// key already banned under another form).
    pub fn unrecord(&mut self, key: Key) {
        self.history.unrecord(key);
    }

    /// Restores the ban times of `key` read from the store.
    pub fn restore_history(&mut self, key: Key, times: Vec<u64>) {
        self.history.restore(key, times);
    }
}
