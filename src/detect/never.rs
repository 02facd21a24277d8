//! The never-ban policy: which addresses and networks fwagent refuses to count or ban, and
//! how an offender's address becomes a ban [`Key`].
//!
//! Protected, in this order of checks:
//! 1. address classes that are never a remote offender: unspecified, loopback, multicast,
//!    link-local, IPv4 broadcast and `0.0.0.0/8`;
//! 2. the configured allow-list (addresses and CIDRs);
//! 3. every address assigned to a local interface ([`LocalAddrs`], kept current by netlink).
//!
//! IPv6 offenders are aggregated to a prefix (default /64) unless that prefix holds a protected
//! address (an allow-listed network overlapping it, or a local address inside it): then only
//! the offender's own /128 is counted and banned, so a neighbour in a shared /64 never takes
//! the server itself down with it.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::addr::{Key, v6_prefix};
use super::local::LocalAddrs;

/// Default IPv6 aggregation prefix length.
pub const DEFAULT_V6_PREFIX: u8 = 64;

/// Never-ban policy plus the IPv6 aggregation length. Cheap to clone (the local address set is
/// shared).
#[derive(Debug, Clone)]
pub struct NeverBan {
    allow: Vec<IpNet>,
    local: LocalAddrs,
    v6_prefix: u8,
}

impl Default for NeverBan {
    fn default() -> Self {
        NeverBan::new(Vec::new(), LocalAddrs::new(), DEFAULT_V6_PREFIX)
    }
}

impl NeverBan {
    /// `allow` is the configured allow-list, `local` the live set of local addresses,
    /// `v6_prefix` the IPv6 aggregation length (clamped to 1..=128).
    pub fn new(allow: Vec<IpNet>, local: LocalAddrs, v6_prefix: u8) -> Self {
        // Normalise to network addresses once, so the checks below compare like with like.
        let allow = allow.into_iter().map(|n| n.trunc()).collect();
        NeverBan {
            allow,
            local,
            v6_prefix: v6_prefix.clamp(1, 128),
        }
    }

    /// The shared local address set (the agent feeds it from netlink).
    pub fn local(&self) -> &LocalAddrs {
        &self.local
    }

    /// The IPv6 aggregation length in use.
    pub fn v6_prefix(&self) -> u8 {
        self.v6_prefix
    }

    /// True when `ip` must never be counted or banned.
    pub fn is_protected(&self, ip: IpAddr) -> bool {
        self.why_protected(ip).is_some()
    }

    /// Why `ip` must never be counted or banned, or `None` when it may be.
    pub fn why_protected(&self, ip: IpAddr) -> Option<Protection> {
        if special(ip) {
            return Some(Protection::Special);
        }
        if let Some(n) = self.allow.iter().find(|n| n.contains(&ip)) {
            return Some(Protection::AllowListed(*n));
        }
        self.local.contains(ip).then_some(Protection::Local(ip))
    }

    /// The key to count and ban for an offender at `ip`, or `None` when `ip` is protected.
    pub fn key_for(&self, ip: IpAddr) -> Option<Key> {
        if self.is_protected(ip) {
            return None;
        }
        match ip {
            IpAddr::V4(a) => Some(Key::V4(a)),
            IpAddr::V6(a) => {
                let net = v6_prefix(a, self.v6_prefix);
                // A /128 "prefix" is the address itself; a prefix holding a protected
                // address shrinks to the offender's own /128.
                if net.prefix_len() == 128 || self.prefix_holds_protected(net) {
                    Some(Key::V6Exact(a))
                } else {
                    Some(Key::V6Prefix(net.network(), net.prefix_len()))
                }
            }
        }
    }

    /// True when banning `net` would also cover an address we must never ban.
    fn prefix_holds_protected(&self, net: Ipv6Net) -> bool {
        self.why_net_protected(IpNet::V6(net)).is_some()
    }

    /// Why banning the network `net` would hit an address we must never ban: a special
    /// range, an allow-list entry or a local address overlapping it.
    fn why_net_protected(&self, net: IpNet) -> Option<Protection> {
        let special_overlaps = match net {
            IpNet::V4(n) => {
                let special_v4: [Ipv4Net; 5] = [
                    "0.0.0.0/8".parse().expect("static network"),
                    "127.0.0.0/8".parse().expect("static network"),
                    "169.254.0.0/16".parse().expect("static network"),
                    "224.0.0.0/3".parse().expect("static network"),
                    "255.255.255.255/32".parse().expect("static network"),
                ];
                special_v4.iter().any(|s| s.contains(&n) || n.contains(s))
            }
            // Special ranges overlapping the prefix (e.g. a /64 around ::1 or fe80::).
            IpNet::V6(n) => {
                let special_v6: [Ipv6Net; 3] = [
                    Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 127).expect("static prefix"),
                    Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
                        .expect("static prefix"),
                    Ipv6Net::new(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8)
                        .expect("static prefix"),
                ];
                special_v6.iter().any(|s| s.contains(&n) || n.contains(s))
            }
        };
        if special_overlaps {
            return Some(Protection::Special);
        }
        if let Some(a) = self
            .allow
            .iter()
            .find(|a| a.contains(&net) || net.contains(*a))
        {
            return Some(Protection::AllowListed(*a));
        }
        self.local.first_in(&net).map(Protection::Local)
    }
}

/// Why an address or network is never banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Unspecified, loopback, multicast, link-local or broadcast (or overlapping such a range).
    Special,
    /// Inside, or holding, this allow-list entry.
    AllowListed(IpNet),
    /// This address of a local interface is, or is inside, the target.
    Local(IpAddr),
}

impl NeverBan {
    /// True when banning `net` (an address, an IPv6 prefix or a manual network ban) would
    /// also cover an address we must never ban. Used for manual bans and when a reload
    /// allow-lists part of an existing ban.
    pub fn covers_protected(&self, net: IpNet) -> bool {
        self.why_covered(net).is_some()
    }

    /// Why banning `net` would hit an address we must never ban, or `None`.
    pub fn why_covered(&self, net: IpNet) -> Option<Protection> {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => self.why_protected(IpAddr::V4(n.addr())),
            IpNet::V6(n) if n.prefix_len() == 128 => self.why_protected(IpAddr::V6(n.addr())),
            IpNet::V6(n) => self.why_net_protected(IpNet::V6(n.trunc())),
            IpNet::V4(n) => self.why_net_protected(IpNet::V4(n.trunc())),
        }
    }
}

/// Address classes that are never a remote offender.
fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_link_local()
                || a.is_broadcast()
                || a.octets()[0] == 0
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return special(IpAddr::V4(v4));
            }
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(allow: &[&str]) -> NeverBan {
        NeverBan::new(
            allow.iter().map(|s| s.parse().unwrap()).collect(),
            LocalAddrs::new(),
            64,
        )
    }

    #[test]
    fn special_classes_are_protected() {
        let n = never(&[]);
        for s in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "169.254.1.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(n.key_for(s.parse().unwrap()).is_none(), "{s}");
        }
        for s in ["198.51.100.7", "2001:db8::1", "fec0::1"] {
            assert!(n.key_for(s.parse().unwrap()).is_some(), "{s}");
        }
    }

    #[test]
    fn reasons_name_the_class_the_entry_or_the_local_address() {
        let n = never(&["203.0.113.20/32", "2001:db8:feed::/48"]);
        n.local().insert("198.51.100.77".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(n.why_protected(ip("127.0.0.1")), Some(Protection::Special));
        assert_eq!(
            n.why_protected(ip("203.0.113.20")),
            Some(Protection::AllowListed(net("203.0.113.20/32")))
        );
        assert_eq!(
            n.why_protected(ip("198.51.100.77")),
            Some(Protection::Local(ip("198.51.100.77")))
        );
        assert_eq!(n.why_protected(ip("198.51.100.78")), None);
        assert_eq!(
            n.why_covered(net("198.51.100.0/24")),
            Some(Protection::Local(ip("198.51.100.77")))
        );
        assert_eq!(
            n.why_covered(net("203.0.113.0/24")),
            Some(Protection::AllowListed(net("203.0.113.20/32")))
        );
        assert_eq!(
            n.why_covered(net("2001:db8:feed:1::/64")),
            Some(Protection::AllowListed(net("2001:db8:feed::/48")))
        );
        assert_eq!(n.why_covered(net("fe80::/64")), Some(Protection::Special));
        assert_eq!(n.why_covered(net("0.0.0.0/0")), Some(Protection::Special));
        assert_eq!(n.why_covered(net("198.18.0.0/15")), None);
        assert_eq!(n.why_covered(net("2001:db8:1::/64")), None);
    }

    #[test]
    fn allow_list_addresses_and_cidrs() {
        let n = never(&["203.0.113.20/32", "198.51.100.128/25", "2001:db8:feed::/48"]);
        assert!(n.is_protected("203.0.113.20".parse().unwrap()));
        assert!(!n.is_protected("203.0.113.21".parse().unwrap()));
        assert!(n.is_protected("198.51.100.200".parse().unwrap()));
        assert!(!n.is_protected("198.51.100.127".parse().unwrap()));
        assert!(n.is_protected("2001:db8:feed:1::9".parse().unwrap()));
    }

    #[test]
    fn v6_aggregates_to_prefix_unless_it_holds_a_protected_address() {
        let n = never(&["2001:db8:1::10/128"]);
        assert_eq!(
            n.key_for("2001:db8:2::66".parse().unwrap()),
            Some(Key::V6Prefix("2001:db8:2::".parse().unwrap(), 64))
        );
        // Same /64 as an allow-listed host: only the offender's /128.
        assert_eq!(
            n.key_for("2001:db8:1::66".parse().unwrap()),
            Some(Key::V6Exact("2001:db8:1::66".parse().unwrap()))
        );
        // A local address in the /64 has the same effect, as soon as it is known.
        n.local().insert("2001:db8:2::25".parse().unwrap());
        assert_eq!(
            n.key_for("2001:db8:2::66".parse().unwrap()),
            Some(Key::V6Exact("2001:db8:2::66".parse().unwrap()))
        );
        assert_eq!(n.key_for("2001:db8:2::25".parse().unwrap()), None);
        // Mapped IPv4 never reaches here as IPv6 (the parser converts it) but is handled.
        assert_eq!(
            n.key_for("198.51.100.7".parse().unwrap()),
            Some(Key::V4("198.51.100.7".parse().unwrap()))
        );
    }
}
