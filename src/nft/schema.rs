//! The desired ruleset as a value ([`Schema`]), what a ban [`Target`] becomes in the kernel,
//! and the pure rendering of both into batch messages.
//!
//! # The ruleset
//! ```text
//! table inet <table>                       comment "fwagent ruleset v1: set_size=… …"
//!   set banned4  { ipv4_addr; size N; flags timeout; counter }            single IPv4
//!   set banned6  { ipv6_addr; size N; flags timeout; counter }            IPv6 /prefix keys
//!   set banned6x { ipv6_addr; size N; flags timeout; counter }            exact IPv6
//!   set nets4    { ipv4_addr; size 65536; flags interval,timeout; counter } manual CIDRs
//!   set nets6    { ipv6_addr; size 65536; flags interval,timeout; counter } manual CIDRs
//!   chain input   { type filter hook input   priority P; policy accept; <rules> }
//!   chain forward { type filter hook forward priority P; policy accept; <rules> }
//! rules (in both chains, each `counter drop`):
//!   ip saddr @banned4 · ip saddr @nets4 · ip6 saddr @banned6x ·
//!   ip6 saddr & <prefix mask> @banned6 · ip6 saddr @nets6
//! ```
//!
//! # Why IPv6 is banned by prefix through a masked lookup
//! An IPv6 host usually owns a whole /64 (often more) and can hop between its addresses at
//! will, so banning one address bans nothing. Interval sets could hold prefixes, but they are
//! rbtrees: slower per packet and per update than the hash sets that carry our bulk bans,
//! and they reject overlapping ranges. Instead `banned6` is a hash set whose keys are
//! addresses already cut to the configured prefix (/48 … /128, default /64), and its rule cuts
//! the packet's source address the same way (`bitwise` with the prefix mask) before the
//! lookup. One element then covers the whole prefix at hash-set speed.
//! When an offender's prefix also holds an address that must never be banned (one of ours,
//! or allow-listed), the caller bans the exact address instead ([`Target::V6Exact`] →
//! `banned6x`, looked up without a mask).
//!
//! # Priority
//! The base chains default to priority -10 ("filter - 10"): after conntrack (-200), mangle
//! (-150) and destination NAT (-100) — so forwarded packets are seen after Docker's DNAT,
//! with their source address unchanged — and before the usual filter chains (0) of
//! iptables-nft, firewalld and Docker. A drop is final whatever other base chains accept, so
//! the priority only decides that banned packets cost no work in later chains.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use super::batch::{Batch, Op};
use super::chain::{self, Hook};
use super::element::{ElemSpec, Key};
use super::error::NftError;
use super::rule::{self, RuleSpec};
use super::set::{self, Family, SetSpec};
use super::table;

pub const BANNED4: &str = "banned4";
pub const BANNED6: &str = "banned6";
pub const BANNED6X: &str = "banned6x";
pub const NETS4: &str = "nets4";
pub const NETS6: &str = "nets6";
/// All our set names, in creation order.
pub const SETS: [&str; 5] = [BANNED4, NETS4, BANNED6X, BANNED6, NETS6];
/// Manual network bans are few; an explicit size avoids any default cap.
pub const NET_SET_SIZE: u32 = 65_536;

/// The desired ruleset. Every field has the agent's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Table name (family `inet`).
    pub table: String,
    /// Capacity of each of banned4/banned6/banned6x.
    pub set_size: u32,
    /// IPv6 offenders are banned by this prefix length (48..=128).
    pub ipv6_prefix: u8,
    /// Priority of the input and forward base chains.
    pub priority: i32,
}

impl Default for Schema {
    fn default() -> Schema {
        Schema {
            table: "fwagent".to_string(),
            set_size: 1_048_576,
            ipv6_prefix: 64,
            priority: -10,
        }
    }
}

impl Schema {
    pub fn validate(&self) -> Result<(), NftError> {
        let t = &self.table;
        if t.is_empty() || t.len() > 200 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(NftError::Schema(format!("bad table name {t:?}")));
        }
        if !(48..=128).contains(&self.ipv6_prefix) {
            return Err(NftError::Schema(format!(
                "ipv6_prefix must be between 48 and 128, not {}",
                self.ipv6_prefix
            )));
        }
        if self.set_size == 0 {
            return Err(NftError::Schema("set_size must be above 0".into()));
        }
        Ok(())
    }

    /// The comment stored in the table: the schema in words. Re-applying compares it (and
    /// the objects themselves) to decide whether anything must change.
    pub fn fingerprint(&self) -> String {
        format!(
            "fwagent ruleset v1: set_size={} ipv6_prefix={} priority={}",
            self.set_size, self.ipv6_prefix, self.priority
        )
    }

    pub fn sets(&self) -> [SetSpec; 5] {
        let hash = |name, family| SetSpec {
            name,
            family,
            interval: false,
            size: self.set_size,
        };
        let nets = |name, family| SetSpec {
            name,
            family,
            interval: true,
            size: NET_SET_SIZE,
        };
        [
            hash(BANNED4, Family::V4),
            nets(NETS4, Family::V4),
            hash(BANNED6X, Family::V6),
            hash(BANNED6, Family::V6),
            nets(NETS6, Family::V6),
        ]
    }

    /// The drop rules of each chain, in order.
    pub fn rules(&self) -> [RuleSpec; 5] {
        let r = |family, set, prefix| RuleSpec {
            family,
            set,
            prefix,
        };
        [
            r(Family::V4, BANNED4, None),
            r(Family::V4, NETS4, None),
            r(Family::V6, BANNED6X, None),
            r(Family::V6, BANNED6, Some(self.ipv6_prefix)),
            r(Family::V6, NETS6, None),
        ]
    }

    /// Renders the whole ruleset into `b`: table, sets, chains, rules (in that order, since
    /// each refers to the previous ones). Pure: the same schema gives the same bytes.
    pub fn render(&self, b: &mut Batch, table_flags: u32) {
        let t = self.table.as_str();
        let seq = b.seq(Op::CreateTable { table: t.into() });
        table::new_table(b.buf(), seq, t, table_flags, Some(&self.fingerprint()));
        let sets = self.sets();
        for (i, s) in sets.iter().enumerate() {
            let seq = b.seq(Op::CreateSet {
                table: t.into(),
                set: s.name.into(),
            });
            set::new_set(b.buf(), seq, t, s, i as u32 + 1);
        }
        for hook in Hook::ALL {
            let seq = b.seq(Op::CreateChain {
                table: t.into(),
                chain: hook.chain().into(),
            });
            chain::new_chain(b.buf(), seq, t, hook, self.priority);
            for r in self.rules() {
                let id = sets.iter().position(|s| s.name == r.set).unwrap_or(0) as u32 + 1;
                let seq = b.seq(Op::CreateRule {
                    table: t.into(),
                    chain: hook.chain().into(),
                    set: r.set.into(),
                });
                rule::new_rule(b.buf(), seq, t, hook.chain(), &r, id);
            }
        }
    }
}

/// What to ban or unban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// One IPv4 address (`banned4`).
    V4(Ipv4Addr),
    /// The prefix (of the schema's length) holding this address (`banned6`).
    V6Prefix(Ipv6Addr),
    /// Exactly this IPv6 address (`banned6x`).
    V6Exact(Ipv6Addr),
    /// An IPv4 network (`nets4`).
    Net4(Ipv4Net),
    /// An IPv6 network (`nets6`).
    Net6(Ipv6Net),
}

impl Target {
    /// The set this target lives in.
    pub fn set(&self) -> &'static str {
        match self {
            Target::V4(_) => BANNED4,
            Target::V6Prefix(_) => BANNED6,
            Target::V6Exact(_) => BANNED6X,
            Target::Net4(_) => NETS4,
            Target::Net6(_) => NETS6,
        }
    }

    /// The canonical form under `prefix`: V6Prefix masked, networks truncated.
    pub fn normalize(self, prefix: u8) -> Target {
        match self {
            Target::V6Prefix(a) => Target::V6Prefix(mask6(a, prefix)),
            Target::Net4(n) => Target::Net4(n.trunc()),
            Target::Net6(n) => Target::Net6(n.trunc()),
            t => t,
        }
    }

    /// The half-open key range `[start, end)` of a network target; `end == None` means
    /// "to the top of the address space". `None` for single-address targets (see `key`).
    pub fn range(&self, prefix: u8) -> Option<(u128, Option<u128>)> {
        match self.normalize(prefix) {
            Target::Net4(n) => Some((
                u128::from(u32::from(n.network())),
                u32::from(n.broadcast()).checked_add(1).map(u128::from),
            )),
            Target::Net6(n) => Some((
                u128::from(n.network()),
                u128::from(n.broadcast()).checked_add(1),
            )),
            _ => None,
        }
    }

    /// The key of a single-address target (hash sets).
    pub fn key(&self, prefix: u8) -> Option<Key> {
        match self.normalize(prefix) {
            Target::V4(a) => Some(a.into()),
            Target::V6Prefix(a) | Target::V6Exact(a) => Some(a.into()),
            _ => None,
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Target::V4(_) | Target::Net4(_) => Family::V4,
            _ => Family::V6,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::V4(a) => write!(f, "{a}"),
            // A V6Prefix value is shown as its (already masked) address; callers that know
            // the prefix length print `addr/len`.
            Target::V6Prefix(a) => write!(f, "{a}"),
            Target::V6Exact(a) => write!(f, "{a}"),
            Target::Net4(n) => write!(f, "{n}"),
            Target::Net6(n) => write!(f, "{n}"),
        }
    }
}

/// The first `prefix` bits of `a`.
pub fn mask6(a: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(a) & u128::from_be_bytes(rule::prefix_mask(prefix)))
}

/// Kernel timeout in ms for a ban duration: `None`/zero = permanent; never rounds to zero.
pub fn timeout_ms(d: Option<Duration>) -> Option<u64> {
    match d {
        None => None,
        Some(d) if d.is_zero() => None,
        Some(d) => Some((d.as_millis().min(u64::MAX as u128) as u64).max(1)),
    }
}

/// A key of `family` from the low bits of `v`.
pub fn key_of(family: Family, v: u128) -> Key {
    match family {
        Family::V4 => Ipv4Addr::from(v as u32).into(),
        Family::V6 => Ipv6Addr::from(v).into(),
    }
}

pub fn key_value(k: &Key) -> u128 {
    let b = k.as_bytes();
    if b.len() == 4 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u128
    } else {
        u128::from_be_bytes(b.try_into().unwrap_or([0; 16]))
    }
}

/// An interval of an interval set: `[start, end)`, `end == None` to the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u128,
    pub end: Option<u128>,
    pub timeout_ms: Option<u64>,
}

impl Range {
    /// The elements that represent it: the start (with the timeout) and, unless the range
    /// runs to the top of the address space, the end flagged INTERVAL_END.
    pub fn elems(&self, family: Family) -> Vec<ElemSpec> {
        let mut v = vec![ElemSpec {
            key: key_of(family, self.start),
            end: false,
            timeout_ms: self.timeout_ms,
        }];
        if let Some(e) = self.end {
            v.push(ElemSpec {
                key: key_of(family, e),
                end: true,
                timeout_ms: None,
            });
        }
        v
    }

    fn end_or_max(&self) -> u128 {
        self.end.unwrap_or(u128::MAX)
    }

    pub fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end_or_max() && o.start < self.end_or_max()
    }

    pub fn contains(&self, o: &Range) -> bool {
        self.start <= o.start && o.end_or_max() <= self.end_or_max()
    }

    /// The CIDRs covering this range exactly.
    pub fn cidrs(&self, family: Family) -> Vec<Target> {
        match family {
            Family::V4 => {
                let last = self.end.map(|e| e - 1).unwrap_or(u32::MAX as u128) as u32;
                ipnet::Ipv4Subnets::new(Ipv4Addr::from(self.start as u32), Ipv4Addr::from(last), 0)
                    .map(Target::Net4)
                    .collect()
            }
            Family::V6 => {
                let last = self.end.map(|e| e - 1).unwrap_or(u128::MAX);
                ipnet::Ipv6Subnets::new(Ipv6Addr::from(self.start), Ipv6Addr::from(last), 0)
                    .map(Target::Net6)
                    .collect()
            }
        }
    }
}

/// The later of two expiries (`None` = permanent wins).
pub fn later(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        _ => None,
    }
}

/// Merges overlapping ranges into their union, keeping the later expiry, so an interval
/// set (which rejects overlaps) can take them. Coverage never shrinks.
pub fn merge_ranges(mut v: Vec<Range>) -> Vec<Range> {
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        if let Some(last) = out.last_mut()
            && last.overlaps(&r)
        {
            if r.end_or_max() > last.end_or_max() {
                last.end = r.end;
            }
            last.timeout_ms = later(last.timeout_ms, r.timeout_ms);
            continue;
        }
        out.push(r);
    }
    out
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
        if n != n.trunc() {
            return Err(host_bits(t, n.trunc()));
        }
        return Ok(Target::Net4(n));
    }
    if let Ok(n) = t.parse::<Ipv6Net>() {
        if n.prefix_len() == 128 {
            return Ok(Target::V6Exact(n.addr()));
        }
        if n.prefix_len() == 0 {
            return Err(format!("{t:?}: refusing to ban every IPv6 address"));
        }
        if n != n.trunc() {
            return Err(host_bits(t, n.trunc()));
        }
        return Ok(Target::Net6(n));
    }
    Err(format!("{t:?} is not an IP address or network"))
}

/// The refusal for a network written with host bits (`203.0.113.7/24`): it may be a typo
/// for the address or for the network, so neither is guessed (as in the config's allow-list).
fn host_bits(text: &str, net: impl std::fmt::Display) -> String {
    format!("{text:?} has host bits set; did you mean {net}?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_prefix_targets_are_masked() {
        let a: Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(
            Target::V6Prefix(a).normalize(64),
            Target::V6Prefix("2001:db8:1:2::".parse().unwrap())
        );
        assert_eq!(
            Target::V6Prefix(a).normalize(48),
            Target::V6Prefix("2001:db8:1::".parse().unwrap())
        );
        assert_eq!(Target::V6Exact(a).normalize(48), Target::V6Exact(a));
    }

    #[test]
    fn net_ranges_and_cidrs() {
        let n: Ipv4Net = "203.0.113.0/24".parse().unwrap();
        let (s, e) = Target::Net4(n).range(64).unwrap();
        assert_eq!(s, 0xcb00_7100);
        assert_eq!(e, Some(0xcb00_7200));
        let top: Ipv4Net = "255.255.255.0/24".parse().unwrap();
        assert_eq!(Target::Net4(top).range(64).unwrap().1, None);
        let r = Range {
            start: s,
            end: e,
            timeout_ms: None,
        };
        assert_eq!(r.cidrs(Family::V4), vec![Target::Net4(n)]);
        let n6: Ipv6Net = "2001:db8:1::/48".parse().unwrap();
        let (s, e) = Target::Net6(n6).range(64).unwrap();
        let r6 = Range {
            start: s,
            end: e,
            timeout_ms: Some(5),
        };
        assert_eq!(r6.cidrs(Family::V6), vec![Target::Net6(n6)]);
        assert_eq!(r6.elems(Family::V6).len(), 2);
    }

    #[test]
    fn merging_never_shrinks_and_keeps_the_later_expiry() {
        let r = |s, e, t| Range {
            start: s,
            end: Some(e),
            timeout_ms: t,
        };
        let merged = merge_ranges(vec![
            r(10, 20, Some(5)),
            r(0, 100, Some(1)),
            r(200, 300, None),
        ]);
        assert_eq!(merged, vec![r(0, 100, Some(5)), r(200, 300, None)]);
        let merged = merge_ranges(vec![r(0, 10, Some(1)), r(5, 15, None)]);
        assert_eq!(merged, vec![r(0, 15, None)]);
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_ms(None), None);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), None);
        assert_eq!(timeout_ms(Some(Duration::from_micros(10))), Some(1));
        assert_eq!(timeout_ms(Some(Duration::from_secs(2))), Some(2000));
    }

    #[test]
    fn schema_validation() {
        assert!(Schema::default().validate().is_ok());
        for bad in [
            Schema {
                ipv6_prefix: 47,
                ..Schema::default()
            },
            Schema {
                table: String::new(),
                ..Schema::default()
            },
            Schema {
                set_size: 0,
                ..Schema::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
