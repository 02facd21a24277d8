//! Byte layouts of the store's keys and values, format version 1.
//!
//! Kept apart from the database code so every layout is a pure function with its own tests.
//! Little-endian throughout. Times are milliseconds since the Unix epoch (the kernel's
//! element timeouts are milliseconds too), clamped at 0 for times before 1970.
//!
//! - target key (bans, history): 18 bytes = family (4 or 6), prefix length, 16 address bytes
//!   (an IPv4 address in the first 4, the rest zero). Fixed length keeps keys comparable.
//! - ban value: banned_at u64, expires_at u64 (0 = permanent), hits u64, times_banned u32,
//!   rule length u16, rule bytes (UTF-8).
//! - history value: last offence u64, then the caller's value as JSON.
//! - checkpoint key: the source path's bytes; value: the caller's value as JSON.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::Ban;

/// Length of an encoded target key.
pub const TARGET_KEY_LEN: usize = 18;

/// Fixed part of an encoded ban, before the rule name.
const BAN_FIXED_LEN: usize = 8 + 8 + 8 + 4 + 2;

/// Milliseconds since the epoch; earlier times clamp to 0, absurdly late ones to `u64::MAX`.
pub fn to_ms(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub fn target_key(net: &IpNet) -> [u8; TARGET_KEY_LEN] {
    let mut key = [0u8; TARGET_KEY_LEN];
    key[1] = net.prefix_len();
    match net.addr() {
        IpAddr::V4(a) => {
            key[0] = 4;
            key[2..6].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key[0] = 6;
            key[2..].copy_from_slice(&a.octets());
        }
    }
    key
}

/// Decodes a target key; `None` for any layout this version did not write.
pub fn decode_target(key: &[u8]) -> Option<IpNet> {
    if key.len() != TARGET_KEY_LEN {
        return None;
    }
    let prefix = key[1];
    let addr = match key[0] {
        4 if key[6..].iter().all(|&b| b == 0) => {
            IpAddr::V4(Ipv4Addr::new(key[2], key[3], key[4], key[5]))
        }
        6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&key[2..]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    IpNet::new(addr, prefix).ok()
}

pub fn encode_ban(ban: &Ban) -> Vec<u8> {
    // Rule names come from the config (short); cap defensively so the length fits in u16.
    let rule = truncate_utf8(&ban.rule, u16::MAX as usize);
    let mut out = Vec::with_capacity(BAN_FIXED_LEN + rule.len());
    out.extend_from_slice(&to_ms(ban.banned_at).to_le_bytes());
    // A permanent ban is 0; a real expiry at the epoch itself is nudged to 1 ms.
    let expires = ban.expires_at.map_or(0, |t| to_ms(t).max(1));
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(&ban.hits.to_le_bytes());
    out.extend_from_slice(&ban.times_banned.to_le_bytes());
    out.extend_from_slice(&(rule.len() as u16).to_le_bytes());
    out.extend_from_slice(rule.as_bytes());
    out
}

/// Decodes a ban value for `target`; `None` when the bytes are not a version-1 ban.
pub fn decode_ban(target: IpNet, value: &[u8]) -> Option<Ban> {
    if value.len() < BAN_FIXED_LEN {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(value[i..i + 8].try_into().unwrap_or_default());
    let times = u32::from_le_bytes(value[24..28].try_into().ok()?);
    let rule_len = u16::from_le_bytes(value[28..30].try_into().ok()?) as usize;
    if value.len() != BAN_FIXED_LEN + rule_len {
        return None;
    }
    let rule = std::str::from_utf8(&value[BAN_FIXED_LEN..])
        .ok()?
        .to_string();
    let expires = u64_at(8);
    Some(Ban {
        target,
        rule,
        banned_at: from_ms(u64_at(0)),
        expires_at: (expires != 0).then(|| from_ms(expires)),
        hits: u64_at(16),
        times_banned: times,
    })
}

pub fn encode_history(last_offence: SystemTime, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&to_ms(last_offence).to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// Splits a history value into (last offence in ms, JSON bytes).
pub fn decode_history(value: &[u8]) -> Option<(u64, &[u8])> {
    let head: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(head), &value[8..]))
}

pub fn path_key(path: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

pub fn decode_path(key: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(key).into()
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn target_keys_round_trip_and_reject_foreign_bytes() {
        for s in [
            "203.0.113.7/32",
            "198.18.0.0/15",
            "2001:db8:1::/64",
            "2001:db8::1/128",
        ] {
            let key = target_key(&net(s));
            assert_eq!(decode_target(&key), Some(net(s)), "{s}");
        }
        // Same bits, different family or prefix: different keys.
        assert_ne!(target_key(&net("0.0.0.0/0")), target_key(&net("::/0")));
        assert_ne!(
            target_key(&net("2001:db8::/64")),
            target_key(&net("2001:db8::/48"))
        );
        assert_eq!(decode_target(&[4; 17]), None);
        let mut bad = target_key(&net("203.0.113.7/32"));
        bad[1] = 33;
        assert_eq!(decode_target(&bad), None);
        bad = target_key(&net("203.0.113.7/32"));
        bad[10] = 1;
        assert_eq!(
            decode_target(&bad),
            None,
            "stray bytes after an IPv4 address"
        );
        bad[0] = 5;
        assert_eq!(decode_target(&bad), None);
    }

    #[test]
    fn bans_round_trip_at_millisecond_precision() {
        let ban = Ban {
            target: net("2001:db8:1::/64"),
            rule: "sshd-auth".into(),
            banned_at: from_ms(1_764_000_000_123),
            expires_at: Some(from_ms(1_764_086_400_123)),
            hits: 7,
            times_banned: 3,
        };
        let bytes = encode_ban(&ban);
        assert_eq!(decode_ban(ban.target, &bytes), Some(ban.clone()));
        let permanent = Ban {
            expires_at: None,
            rule: "manual".into(),
            ..ban.clone()
        };
        assert_eq!(
            decode_ban(ban.target, &encode_ban(&permanent)),
            Some(permanent)
        );
        // Truncated or padded values are not bans.
        assert_eq!(decode_ban(ban.target, &bytes[..bytes.len() - 1]), None);
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(decode_ban(ban.target, &padded), None);
        assert_eq!(decode_ban(ban.target, &[]), None);
    }

    #[test]
    fn times_before_the_epoch_clamp() {
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(to_ms(from_ms(42)), 42);
    }

    #[test]
    fn history_header() {
        let v = encode_history(from_ms(99), b"[1,2]");
        assert_eq!(decode_history(&v), Some((99, &b"[1,2]"[..])));
        assert_eq!(decode_history(&v[..7]), None);
    }
}
