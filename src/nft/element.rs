//! Set elements: adding (with per-element timeouts), deleting or destroying, single-element
//! GET (existence checks on old kernels) and the raw parser of element dumps, which also
//! reads each element's own counter.
//!
//! Elements travel in NEWSETELEM/DELSETELEM messages whose NFTA_SET_ELEM_LIST_ELEMENTS nest
//! must stay below 64 KiB (a u16 length); [`CHUNK`] elements per message keeps a wide margin
//! (an IPv6 element with timeout is 48 bytes, so 1000 of them are ~48 KiB).

use super::counter;
use super::wire::*;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// Element flag: this key closes an interval (interval sets store `[start, end)` as two keys).
pub const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

/// Most elements per NEWSETELEM/DELSETELEM message.
pub const CHUNK: usize = 1000;

/// A set key: 4 bytes (IPv4) or 16 bytes (IPv6), network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    len: u8,
    bytes: [u8; 16],
}

impl Key {
    pub fn new(b: &[u8]) -> Option<Key> {
        if b.len() != 4 && b.len() != 16 {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..b.len()].copy_from_slice(b);
        Some(Key {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl From<std::net::Ipv4Addr> for Key {
    fn from(a: std::net::Ipv4Addr) -> Key {
        Key::new(&a.octets()).expect("4 bytes")
    }
}

impl From<std::net::Ipv6Addr> for Key {
    fn from(a: std::net::Ipv6Addr) -> Key {
        Key::new(&a.octets()).expect("16 bytes")
    }
}

/// One element to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemSpec {
    pub key: Key,
    /// Closes an interval (interval sets only); carries no timeout.
    pub end: bool,
    /// Milliseconds; `None` = never expires.
    pub timeout_ms: Option<u64>,
}

/// The kind of element message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    /// NEWSETELEM with CREATE and without EXCL: an existing key is accepted; 6.10+ kernels
    /// also take its new timeout and keep its counter.
    Add,
    /// DELSETELEM: an absent key fails the whole batch with ENOENT.
    Delete,
    /// DESTROYSETELEM (6.3+): an absent key is not an error.
    Destroy,
}

/// Writes one message with `elems` (at most [`CHUNK`]).
pub fn elements_msg(
    b: &mut MsgBuf,
    seq: u32,
    op: ElemOp,
    table: &str,
    set: &str,
    elems: &[ElemSpec],
) {
    debug_assert!(elems.len() <= CHUNK);
    let (ty, flags) = match op {
        ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
        ElemOp::Delete => (NFT_MSG_DELSETELEM, 0),
        ElemOp::Destroy => (NFT_MSG_DESTROYSETELEM, 0),
    };
    let m = b.begin_msg(
        nft_type(ty),
        NLM_F_REQUEST | NLM_F_ACK | flags,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_SET_ELEM_LIST_TABLE, table);
    b.str(NFTA_SET_ELEM_LIST_SET, set);
    let list = b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for e in elems {
        let n = b.nest(NFTA_LIST_ELEM);
        if e.end {
            b.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        // Only adds carry a timeout, and only on keys that start something: an interval's
        // end holds no data of its own. No timeout attribute = never expires.
        if let (Some(t), ElemOp::Add, false) = (e.timeout_ms, op, e.end) {
            b.u64(NFTA_SET_ELEM_TIMEOUT, t);
        }
        let k = b.nest(NFTA_SET_ELEM_KEY);
        b.bytes(NFTA_DATA_VALUE, e.key.as_bytes());
        b.nest_end(k);
        b.nest_end(n);
    }
    b.nest_end(list);
    b.end_msg(m);
}

/// Dump request for all elements of one set.
pub fn dump_elements(b: &mut MsgBuf, seq: u32, table: &str, set: &str) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_SET_ELEM_LIST_TABLE, table);
    b.str(NFTA_SET_ELEM_LIST_SET, set);
    b.end_msg(m);
}

/// GET of one element: replies with the element, or fails ENOENT when it is absent.
pub fn get_element(b: &mut MsgBuf, seq: u32, table: &str, set: &str, key: &Key) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_SET_ELEM_LIST_TABLE, table);
    b.str(NFTA_SET_ELEM_LIST_SET, set);
    let list = b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    let n = b.nest(NFTA_LIST_ELEM);
    let k = b.nest(NFTA_SET_ELEM_KEY);
    b.bytes(NFTA_DATA_VALUE, key.as_bytes());
    b.nest_end(k);
    b.nest_end(n);
    b.nest_end(list);
    b.end_msg(m);
}

/// One element as read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemInfo {
    pub key: Key,
    pub end: bool,
    /// The timeout the element was added with (ms); `None` = permanent.
    pub timeout_ms: Option<u64>,
    /// Remaining time (ms).
    pub expires_ms: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
}

/// Parses one NEWSETELEM message of a dump into `out`; returns the set name it belongs to.
/// This is the hot loop of a 100k-element read: no allocation per element.
pub fn parse_elements<'a>(msg: &Msg<'a>, out: &mut Vec<ElemInfo>) -> &'a str {
    let mut set = "";
    for (ty, p) in msg.attrs() {
        match ty {
            NFTA_SET_ELEM_LIST_SET => set = cstr(p),
            NFTA_SET_ELEM_LIST_ELEMENTS => {
                for (_, e) in Attrs::new(p) {
                    if let Some(el) = parse_element(e) {
                        out.push(el);
                    }
                }
            }
            _ => {}
        }
    }
    set
}

fn parse_element(e: &[u8]) -> Option<ElemInfo> {
    let mut key = None;
    let mut el = ElemInfo {
        key: Key::new(&[0; 4])?,
        end: false,
        timeout_ms: None,
        expires_ms: None,
        packets: 0,
        bytes: 0,
    };
    for (ty, p) in Attrs::new(e) {
        match ty {
            NFTA_SET_ELEM_KEY => key = find(Attrs::new(p), NFTA_DATA_VALUE).and_then(Key::new),
            NFTA_SET_ELEM_FLAGS => el.end = be_u32(p).unwrap_or(0) & NFT_SET_ELEM_INTERVAL_END != 0,
            NFTA_SET_ELEM_TIMEOUT => el.timeout_ms = be_u64(p),
            NFTA_SET_ELEM_EXPIRATION => el.expires_ms = be_u64(p),
            // One expression is sent as EXPR; several as EXPRESSIONS (a list of EXPR).
            NFTA_SET_ELEM_EXPR => read_counter(p, &mut el),
            NFTA_SET_ELEM_EXPRESSIONS => {
                for (_, x) in Attrs::new(p) {
                    read_counter(x, &mut el);
                }
            }
            _ => {}
        }
    }
    el.key = key?;
    Some(el)
}

fn read_counter(expr: &[u8], el: &mut ElemInfo) {
    let mut is_counter = false;
    let mut data: &[u8] = &[];
    for (t, q) in Attrs::new(expr) {
        match t {
            NFTA_EXPR_NAME => is_counter = cstr(q) == "counter",
            NFTA_EXPR_DATA => data = q,
            _ => {}
        }
    }
    if is_counter {
        let c = counter::parse(data);
        (el.packets, el.bytes) = (c.packets, c.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn elements_round_trip() {
        let mut b = MsgBuf::new();
        let elems = [
            ElemSpec {
                key: Ipv4Addr::new(198, 51, 100, 7).into(),
                end: false,
                timeout_ms: Some(3_600_000),
            },
            ElemSpec {
                key: Ipv4Addr::new(198, 51, 100, 8).into(),
                end: true,
                timeout_ms: Some(5),
            },
        ];
        elements_msg(&mut b, 3, ElemOp::Add, "fwagent", "nets4", &elems);
        let msg = messages(b.as_bytes()).next().unwrap();
        let mut out = Vec::new();
        assert_eq!(parse_elements(&msg, &mut out), "nets4");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, elems[0].key);
        assert_eq!(out[0].timeout_ms, Some(3_600_000));
        assert!(out[1].end);
        assert_eq!(out[1].timeout_ms, None, "interval ends carry no timeout");
    }

    #[test]
    fn a_full_chunk_fits_one_message() {
        let elems: Vec<_> = (0..CHUNK as u128)
            .map(|i| ElemSpec {
                key: std::net::Ipv6Addr::from(i).into(),
                end: false,
                timeout_ms: Some(1),
            })
            .collect();
        let mut b = MsgBuf::new();
        elements_msg(&mut b, 1, ElemOp::Add, "fwagent", "banned6", &elems);
        assert!(b.len() < 65_000);
    }
}
