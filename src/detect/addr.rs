//! Strict address parsing and the ban key.
//!
//! Log text is hostile: an address is accepted only when the whole captured text is exactly
//! one address, in one of the forms daemons write:
//!
//! - IPv4 dotted quad, four decimal octets, no leading zeros (`010.1.1.1` could be octal to
//!   some tools), none above 255;
//! - IPv6 in any RFC 4291/5952 form (compressed, embedded IPv4 tail), optionally in brackets,
//!   optionally with a zone id (`fe80::1%eth0`); an IPv4-mapped IPv6 address
//!   (`::ffff:198.51.100.7`) is the IPv4 address;
//! - an IPv4 address in brackets (`[198.51.100.7]`, as Exim writes it).
//!
//! Ports are not part of the host: rules capture `[ip]:port` with the port outside the `host`
//! group. The `ip.port` form (four dots) is ambiguous and rejected.
//!
//! [`glued`] checks the bytes around a capture so that `1198.51.100.7` or `198.51.100.75` is
//! never read as `198.51.100.7` even when a user regex is sloppy about boundaries.
//!
//! [`Key`] is what is counted and banned: an IPv4 address, an IPv6 prefix (default /64, since
//! one host usually owns a whole /64) or, when that prefix holds an address we must never ban,
//! the exact IPv6 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a captured host was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("empty host")]
    Empty,
    #[error("host longer than any address form")]
    TooLong,
    #[error("host is not ASCII")]
    NotAscii,
    #[error("unbalanced brackets")]
    Brackets,
    #[error("invalid zone id")]
    Zone,
    #[error("not a valid IPv4 or IPv6 address")]
    Invalid,
    #[error("address glued to surrounding address characters")]
    Glued,
    #[error("the line names two different addresses where the daemon writes one")]
    Mismatch,
}

/// Longest text we accept: a bracketed full IPv6 address with an IPv4 tail and a zone id.
const MAX_HOST_LEN: usize = 2 + 45 + 1 + 32;

/// Parses one captured host strictly (see the module docs for the accepted forms).
pub fn parse_host(text: &[u8]) -> Result<IpAddr, AddrError> {
    if text.is_empty() {
        return Err(AddrError::Empty);
    }
    if text.len() > MAX_HOST_LEN {
        return Err(AddrError::TooLong);
    }
    if !text.is_ascii() {
        return Err(AddrError::NotAscii);
    }
    // Brackets must come as a pair around the whole text.
    let inner = match (text.first(), text.last()) {
        (Some(b'['), Some(b']')) if text.len() >= 2 => &text[1..text.len() - 1],
        (Some(b'['), _) | (_, Some(b']')) => return Err(AddrError::Brackets),
        _ => text,
    };
    if inner.contains(&b'[') || inner.contains(&b']') {
        return Err(AddrError::Brackets);
    }
    // A zone id (`%eth0`) only follows an IPv6 address; it names an interface, not a host,
    // so it is checked for sanity and dropped.
    let (addr, zone) = match inner.iter().position(|&b| b == b'%') {
        Some(i) => (&inner[..i], Some(&inner[i + 1..])),
        None => (inner, None),
    };
    if let Some(zone) = zone
        && (zone.is_empty()
            || zone.len() > 32
            || !zone
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    {
        return Err(AddrError::Zone);
    }
    if !addr.contains(&b':') {
        if zone.is_some() {
            return Err(AddrError::Zone);
        }
        return parse_v4(addr).map(IpAddr::V4);
    }
    // ASCII was checked above, so this cannot fail.
    let s = std::str::from_utf8(addr).map_err(|_| AddrError::NotAscii)?;
    // std's parser is strict: at most four hex digits per group, one `::`, and the embedded
    // IPv4 tail goes through the strict IPv4 parser (no leading zeros).
    let v6 = Ipv6Addr::from_str(s).map_err(|_| AddrError::Invalid)?;
    Ok(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// IPv4 dotted quad, written out rather than trusting any platform's `inet_aton` leniency
/// (which accepts `1.2.3`, `0x7f.1`, octal and so on).
fn parse_v4(s: &[u8]) -> Result<Ipv4Addr, AddrError> {
    let mut octets = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next().ok_or(AddrError::Invalid)?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return Err(AddrError::Invalid);
        }
        if part.len() > 1 && part[0] == b'0' {
            return Err(AddrError::Invalid);
        }
        let v = part
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        *octet = u8::try_from(v).map_err(|_| AddrError::Invalid)?;
    }
    if parts.next().is_some() {
        return Err(AddrError::Invalid);
    }
    Ok(Ipv4Addr::from(octets))
}

/// True when the capture `line[start..end]` touches more address characters, i.e. the regex
/// cut a longer token: a digit, hex letter, dot or colon right before it, or a digit, hex
/// letter or dot right after it. A colon after an IPv4 capture is a port (`1.2.3.4:25`); a
/// colon after an unbracketed IPv6 capture is ambiguous and counts as glued.
pub fn glued(line: &[u8], start: usize, end: usize, is_v6: bool) -> bool {
    let addr_char = |b: u8| b.is_ascii_hexdigit() || b == b'.' || b == b':';
    let bracketed = line.get(start) == Some(&b'[');
    if start > 0 && addr_char(line[start - 1]) {
        return true;
    }
    match line.get(end) {
        None => false,
        Some(&b':') => is_v6 && !bracketed,
        Some(&b) => b.is_ascii_alphanumeric() || b == b'.' || b == b'%',
    }
}

/// What is counted and banned. The agent maps it to kernel set elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 prefix: the network address (host bits zero) and its length.
    V6Prefix(Ipv6Addr, u8),
    /// One IPv6 address (its prefix holds an address that must never be banned).
    V6Exact(Ipv6Addr),
}

impl Key {
    /// The network this key stands for (a /32 or /128 for exact keys).
    pub fn net(&self) -> IpNet {
        match *self {
            Key::V4(a) => IpNet::V4(Ipv4Net::from(a)),
            Key::V6Prefix(a, len) => {
                IpNet::V6(Ipv6Net::new(a, len).unwrap_or_else(|_| Ipv6Net::from(a)))
            }
            Key::V6Exact(a) => IpNet::V6(Ipv6Net::from(a)),
        }
    }

    /// True when `ip` falls under this key.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net().contains(&ip)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::V4(a) => write!(f, "{a}"),
            Key::V6Prefix(a, len) => write!(f, "{a}/{len}"),
            Key::V6Exact(a) => write!(f, "{a}"),
        }
    }
}

/// Parses the [`Display`](fmt::Display) form back (used by the persisted history).
impl FromStr for Key {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((addr, len)) = s.split_once('/') {
            let a = Ipv6Addr::from_str(addr).map_err(|_| AddrError::Invalid)?;
            let len: u8 = len.parse().map_err(|_| AddrError::Invalid)?;
            let net = Ipv6Net::new(a, len).map_err(|_| AddrError::Invalid)?;
            return Ok(Key::V6Prefix(net.network(), len));
        }
        match parse_host(s.as_bytes())? {
            IpAddr::V4(a) => Ok(Key::V4(a)),
            IpAddr::V6(a) => Ok(Key::V6Exact(a)),
        }
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Key::from_str(&s).map_err(serde::de::Error::custom)
    }
}

/// The IPv6 prefix of `a` with `len` bits (clamped to 1..=128).
pub fn v6_prefix(a: Ipv6Addr, len: u8) -> Ipv6Net {
    let len = len.clamp(1, 128);
    // new() only fails for len > 128, excluded by the clamp.
    Ipv6Net::new(a, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| Ipv6Net::from(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_host(s.as_bytes())
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .to_string()
    }

    #[test]
    fn accepts_the_forms_daemons_write() {
        let cases = [
            ("198.51.100.7", "198.51.100.7"),
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("[198.51.100.7]", "198.51.100.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
            ("2001:db8:25::66", "2001:db8:25::66"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("::", "::"),
            ("::1", "::1"),
            ("fe80::1%eth0", "fe80::1"),
            ("[fe80::1%br-1a2b.100]", "fe80::1"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            ("[::ffff:203.0.113.9]", "203.0.113.9"),
            ("::FFFF:c633:6407", "198.51.100.7"),
            ("64:ff9b::198.51.100.7", "64:ff9b::c633:6407"),
        ];
        for (input, want) in cases {
            assert_eq!(ok(input), want, "{input}");
        }
    }

    #[test]
    fn rejects_hostile_and_sloppy_forms() {
        let cases = [
            "",
            "198.51.100",
            "198.51.100.7.",
            ".198.51.100.7",
            "198.51.100.7.5",
            "198.51.100.256",
            "198.51.100.07",
            "010.1.1.1",
            "1.2.3.4.5678",
            "0x7f.0.0.1",
            "127.1",
            "2130706433",
            "198.51.100.7:25",
            "[198.51.100.7",
            "198.51.100.7]",
            "[[2001:db8::1]]",
            "2001:db8::1::2",
            "2001:db8:::1",
            "2001:db8::12345",
            "2001:db8:0:0:0:0:0:0:1",
            "::ffff:198.51.100.07",
            "::ffff:198.51.100.256",
            "2001:db8::1%",
            "2001:db8::1%eth 0",
            "198.51.100.7%eth0",
            "gggg::1",
            "1.2.3.4 ",
            " 1.2.3.4",
            "１.2.3.4",
            "198.51.100.7\u{0}",
        ];
        for input in cases {
            assert!(
                parse_host(input.as_bytes()).is_err(),
                "{input:?} should be rejected, got {:?}",
                parse_host(input.as_bytes())
            );
        }
        assert_eq!(parse_host(&[b'1'; 200]), Err(AddrError::TooLong));
        assert_eq!(parse_host(b"\xff\xfe"), Err(AddrError::NotAscii));
    }

    #[test]
    fn glue_detection_keeps_tokens_whole() {
        // (line, capture start, capture end, is_v6, glued?)
        let cases: [(&str, usize, usize, bool, bool); 9] = [
            ("from 198.51.100.7 port", 5, 17, false, false),
            ("from 1198.51.100.7 port", 6, 18, false, true),
            ("from 198.51.100.75 port", 5, 17, false, true),
            ("from 198.51.100.7.5 port", 5, 17, false, true),
            ("[198.51.100.7]:25", 1, 13, false, false),
            ("198.51.100.7:25", 0, 12, false, false),
            ("2001:db8::1:25 x", 0, 11, true, true),
            ("[2001:db8::1]:25", 0, 13, true, false),
            ("rip=2001:db8::1, lip", 4, 15, true, false),
        ];
        for (line, s, e, v6, want) in cases {
            assert_eq!(glued(line.as_bytes(), s, e, v6), want, "{line:?}");
        }
    }

    #[test]
    fn key_round_trips_through_text() {
        for s in ["198.51.100.7", "2001:db8:25::/64", "2001:db8::66"] {
            let k: Key = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
        let k: Key = "2001:db8:25::66/64".parse().unwrap();
        assert_eq!(k, Key::V6Prefix("2001:db8:25::".parse().unwrap(), 64));
        assert!(k.contains("2001:db8:25::1".parse().unwrap()));
        assert!(!k.contains("2001:db8:26::1".parse().unwrap()));
    }
}
