//! Status: one snapshot of what is enforced, read from the kernel's own counters, joined with
//! the running agent's figures, and every view of it.
//!
//! - [`kernel`]  — one read of our table on sockets of its own (flags, rule counters, sets,
//!   elements → counts and top offenders);
//! - [`totals`]  — drop totals carried across re-created rules, and the 24 h history ring;
//! - this file   — the model ([`Status`]) and how it is assembled ([`assemble`]);
//! - [`text`]    — the human table of `fwagent status`;
//! - [`metrics`] — the Prometheus text exposition of `/metrics`;
//! - [`cli`]     — `fwagent status [--json]`: kernel read + the agent over its control socket;
//! - `assets/`   — the dashboard page served by the agent (`crate::agent::web`).
//!
//! Every view renders the same [`Status`]: `status --json` and `GET /api/status` print it
//! as is, the table and `/metrics` are computed from it, so they cannot disagree.
//!
//! # The JSON (`fwagent status --json`, `GET /api/status`), format 1
//! Field names are stable; new fields may be added, none renamed or removed within a format.
//! Counters are integers; times are Unix seconds; durations are named by their unit.
//!
//! | field | meaning |
//! |---|---|
//! | `format` | 1 |
//! | `generated_at_unix` | when this snapshot was assembled |
//! | `host` | the machine's host name |
//! | `table` | our table's name (family `inet`) |
//! | `healthy` | table present, every drop rule present, kernel readable; `fwagent status` exits 1 otherwise |
//! | `problems[]` | what is wrong, in plain words (empty when healthy) |
//! | `kernel_error` | why the kernel could not be read, or null |
//! | `kernel_read_at_unix` | when the kernel figures below were read (older than `generated_at_unix` after a failed read), or null |
//! | `read_ms` | how long that kernel read took |
//! | `present` | our table exists |
//! | `protected` | the table carries the owner flag (only the agent can remove it; kernel ≥ 6.9 with `firewall.protect`) |
//! | `missing_rules[]` | expected drop rules the kernel lacks, as `hook:set` |
//! | `blocked` | `{ipv4, ipv6, total}`: entries in the sets (IPv6 entries are prefixes, exact addresses or networks) |
//! | `sets[]` | `{set, family, size, count}` per set (`family` `ip`/`ip6`, `size` = capacity) |
//! | `drops[]` | `{hook, family, packets, bytes, packets_total, bytes_total}` per hook (`input`/`forward`) and family: `packets`/`bytes` are the kernel's counters **since the rules were installed**; `*_total` are the agent's running totals across re-installs (null without an agent) |
//! | `rules[]` | the same per drop rule: `{hook, family, set, packets, bytes, packets_total, bytes_total}` (the interval-set rules `nets4`/`nets6` included) |
//! | `top[]` | up to 10 entries that dropped the most packets: `{target, set, packets, bytes, timeout_ms, expires_ms, rule, times_banned, hits, banned_at_unix}`; `timeout_ms`/`expires_ms` null = permanent; per-entry counters count since the entry was added; `rule`… null when no agent runs or it does not know the entry |
//! | `features` | what the kernel supports (`persist`, `destroy`, `timeout_update`, `set_count`), or null |
//! | `agent` | the running agent's figures (below), or null |
//! | `agent_note` | why there are no agent figures, in plain words, or null |
//!
//! `agent`: `pid`, `version`, `uptime_secs`, `dry_run`, `table_owned`, `active_bans`,
//! `reinstalls` (re-installs after someone removed or changed our table), `kernel_errors`,
//! `last_ban` and `recent_bans[]` (`{target, rule, at_unix}`, newest last),
//! `rules[]` (`{name, hits, bans, unbans}` since the agent started: matching lines, bans made,
//! bans lifted by unban/allow-list/expiry), `sources[]` (`{path, rules, lines, bytes, lines_cut,
//! errors, rotations, offset, matched}`: lines read, position, `matched` = lines per rule),
//! `drop_counters[]` (`{hook, family, set, carried, last}`: what the agent carries across
//! re-created rules, see [`totals`]), `history` (`{interval_secs, samples[]}` with samples
//! `{at_unix, bans, dropped_packets, blocked}`, cumulative, oldest first, 24 h).

pub mod cli;
pub mod kernel;
pub mod metrics;
pub mod text;
pub mod totals;

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::agent::AgentFigures;
use crate::nft::{Element, Family, Features, Hook, Schema, Target};
pub use kernel::KernelView;
use totals::Count;

/// Version of the JSON format.
pub const FORMAT: u32 = 1;

/// The snapshot every view renders. See the module docs for the meaning of each field.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub format: u32,
    pub generated_at_unix: u64,
    pub host: String,
    pub table: String,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub kernel_error: Option<String>,
    pub kernel_read_at_unix: Option<u64>,
    pub read_ms: u64,
    pub present: bool,
    pub protected: bool,
    pub missing_rules: Vec<String>,
    pub blocked: Blocked,
    pub sets: Vec<SetJson>,
    pub drops: Vec<DropJson>,
    pub rules: Vec<RuleJson>,
    pub top: Vec<Offender>,
    pub features: Option<Features>,
    pub agent: Option<AgentFigures>,
    pub agent_note: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub ipv4: u64,
    pub ipv6: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetJson {
    pub set: String,
    pub family: Family,
    pub size: Option<u32>,
    pub count: u64,
}

/// Drops of one hook and family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropJson {
    pub hook: Hook,
    pub family: Family,
    /// Since the rules were installed (the kernel's counters).
    pub packets: u64,
    pub bytes: u64,
    /// Running totals across re-installs (the agent's); null without an agent.
    pub packets_total: Option<u64>,
    pub bytes_total: Option<u64>,
}

/// The counter of one drop rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleJson {
    pub hook: Hook,
    pub family: Family,
    pub set: String,
    pub packets: u64,
    pub bytes: u64,
    pub packets_total: Option<u64>,
    pub bytes_total: Option<u64>,
}

/// One of the top offenders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offender {
    /// As users write it (`198.51.100.7`, `2001:db8:1:2::/64`, `203.0.113.0/24`).
    pub target: String,
    pub set: String,
    pub packets: u64,
    pub bytes: u64,
    /// Ban length in ms; null = permanent.
    pub timeout_ms: Option<u64>,
    /// Time left in ms; null = permanent.
    pub expires_ms: Option<u64>,
    /// From the agent: the rule that banned it (`manual` for CLI bans).
    pub rule: Option<String>,
    pub times_banned: Option<u32>,
    pub hits: Option<u64>,
    pub banned_at_unix: Option<u64>,
}

/// What the agent knows about one ban (its `list` entry), for joining with the kernel's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanMeta {
    /// The ban's network as the agent stores it (`198.51.100.7/32`, `2001:db8:1:2::/64`).
    pub target: String,
    pub rule: String,
    #[serde(default)]
    pub hits: u64,
    #[serde(default)]
    pub times_banned: u32,
    #[serde(default)]
    pub banned_at_unix: Option<u64>,
}

/// The kernel side of a snapshot: the latest good read, and the latest error if the newest
/// attempt failed (then `view` is older, or absent).
#[derive(Debug, Clone, Default)]
pub struct KernelInput {
    pub view: Option<KernelView>,
    pub read_at: Option<SystemTime>,
    pub error: Option<String>,
}

/// The agent side of a snapshot.
#[derive(Debug, Clone)]
pub enum AgentInput {
    /// The agent answered: its figures, and what it knows of the top offenders' bans.
    Running {
        figures: Box<AgentFigures>,
        bans: Vec<BanMeta>,
    },
    /// No agent figures; the text says why (`no agent is running …`).
    Absent(String),
}

/// A target as users write it: IPv6 prefix bans with their length.
pub fn show_target(t: &Target, ipv6_prefix: u8) -> String {
    match t.normalize(ipv6_prefix) {
        Target::V6Prefix(a) => format!("{a}/{ipv6_prefix}"),
        other => other.to_string(),
    }
}

/// The agent's key for a kernel entry (an `IpNet` as text, `/32` and `/128` included).
pub fn ban_key(t: &Target, ipv6_prefix: u8) -> String {
    crate::agent::target_net(*t, ipv6_prefix).to_string()
}

/// The machine's host name (for the page title and the JSON); empty when unreadable.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds the snapshot. Pure: every input is a parameter, so the views are tested without a
/// kernel.
pub fn assemble(
    schema: &Schema,
    kernel: &KernelInput,
    agent: AgentInput,
    now: SystemTime,
    host: String,
) -> Status {
    let mut st = Status {
        format: FORMAT,
        generated_at_unix: unix(now),
        host,
        table: schema.table.clone(),
        healthy: false,
        problems: Vec::new(),
        kernel_error: kernel.error.clone(),
        kernel_read_at_unix: kernel.read_at.map(unix),
        read_ms: 0,
        present: false,
        protected: false,
        missing_rules: Vec::new(),
        blocked: Blocked::default(),
        sets: Vec::new(),
        drops: Vec::new(),
        rules: Vec::new(),
        top: Vec::new(),
        features: None,
        agent: None,
        agent_note: None,
    };
    let (figures, bans) = match agent {
        AgentInput::Running { figures, bans } => (Some(*figures), bans),
        AgentInput::Absent(note) => {
            st.agent_note = Some(note);
            (None, Vec::new())
        }
    };
    if let Some(e) = &kernel.error {
        st.problems.push(format!("cannot read the kernel: {e}"));
    }
    if let Some(v) = &kernel.view {
        st.read_ms = v.read_ms;
        st.features = Some(v.features);
        st.present = v.present;
        st.protected = v.protected;
        if v.present {
            fill_kernel(&mut st, schema, v, figures.as_ref(), &bans);
        } else {
            st.problems.push(format!(
                "table inet {} is missing: nothing is blocked (run `fwagent setup` or start the agent)",
                schema.table
            ));
        }
    }
    for r in &st.missing_rules {
        st.problems.push(format!("drop rule {r} is missing"));
    }
    st.healthy = kernel.error.is_none() && st.present && st.missing_rules.is_empty();
    st.agent = figures;
    st
}

fn fill_kernel(
    st: &mut Status,
    schema: &Schema,
    v: &KernelView,
    figures: Option<&AgentFigures>,
    bans: &[BanMeta],
) {
    for h in Hook::ALL {
        for r in schema.rules() {
            if !v.counters.iter().any(|c| c.hook == h && c.set == r.set) {
                st.missing_rules.push(format!("{h}:{}", r.set));
            }
        }
    }
    // Per rule: the kernel's counter, and the running total when an agent carries one.
    // Rules the agent carried but the kernel lost still count towards the totals, so a
    // deleted rule never makes a total go backwards.
    let carried = figures.map(|f| f.drop_counters.as_slice());
    for c in &v.counters {
        let current = Count {
            packets: c.packets,
            bytes: c.bytes,
        };
        let total = carried.map(|cs| match cs.iter().find(|e| e.is_for(c)) {
            Some(e) => e.total(current),
            None => current,
        });
        st.rules.push(RuleJson {
            hook: c.hook,
            family: c.family,
            set: c.set.clone(),
            packets: c.packets,
            bytes: c.bytes,
            packets_total: total.map(|t| t.packets),
            bytes_total: total.map(|t| t.bytes),
        });
    }
    for h in Hook::ALL {
        for fam in [Family::V4, Family::V6] {
            let mine = || v.counters.iter().filter(|c| c.hook == h && c.family == fam);
            let packets = mine().map(|c| c.packets).sum();
            let bytes = mine().map(|c| c.bytes).sum();
            let total = carried.map(|cs| {
                let mut t = Count::default();
                for r in st.rules.iter().filter(|r| r.hook == h && r.family == fam) {
                    t.packets += r.packets_total.unwrap_or(r.packets);
                    t.bytes += r.bytes_total.unwrap_or(r.bytes);
                }
                let (hs, fs) = (h.to_string(), fam.to_string());
                for e in cs.iter().filter(|e| e.hook == hs && e.family == fs) {
                    if !v.counters.iter().any(|c| e.is_for(c)) {
                        let gone = e.total(Count::default());
                        t.packets += gone.packets;
                        t.bytes += gone.bytes;
                    }
                }
                t
            });
            st.drops.push(DropJson {
                hook: h,
                family: fam,
                packets,
                bytes,
                packets_total: total.map(|t| t.packets),
                bytes_total: total.map(|t| t.bytes),
            });
        }
    }
    for s in &v.sets {
        match s.family {
            Family::V4 => st.blocked.ipv4 += s.count,
            Family::V6 => st.blocked.ipv6 += s.count,
        }
        st.sets.push(SetJson {
            set: s.set.clone(),
            family: s.family,
            size: s.size,
            count: s.count,
        });
    }
    st.blocked.total = st.blocked.ipv4 + st.blocked.ipv6;
    st.top = v
        .top
        .iter()
        .map(|e| offender(e, schema.ipv6_prefix, bans))
        .collect();
}

fn offender(e: &Element, prefix: u8, bans: &[BanMeta]) -> Offender {
    let key = ban_key(&e.target, prefix);
    let meta = bans.iter().find(|b| same_net(&b.target, &key));
    Offender {
        target: show_target(&e.target, prefix),
        set: e.set.clone(),
        packets: e.packets,
        bytes: e.bytes,
        timeout_ms: e.timeout.map(|d| d.as_millis() as u64),
        expires_ms: e.expires.map(|d| d.as_millis() as u64),
        rule: meta.map(|m| m.rule.clone()),
        times_banned: meta.map(|m| m.times_banned),
        hits: meta.map(|m| m.hits),
        banned_at_unix: meta.and_then(|m| m.banned_at_unix),
    }
}

/// Whether two network texts name the same network (tolerates `/32`-less addresses).
fn same_net(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        s.parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
    };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.trunc() == y.trunc(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
