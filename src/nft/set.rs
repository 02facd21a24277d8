//! Sets: the five ban sets of our table, their creation and read-back (flags, key type,
//! size and, on kernels that report it, the element count).
//!
//! Every set has `flags timeout` (each element carries its own expiry) and a `counter` set
//! expression, which the kernel clones into every element added without expressions: that is
//! what gives each banned address its own packet/byte counter.

use super::wire::*;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_EXPR: u16 = 17;
/// Element count, reported by recent kernels only (absent on 6.1).
const NFTA_SET_COUNT: u16 = 20;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_TIMEOUT: u32 = 0x10;

/// nft's data types for set keys (`ipv4_addr`, `ipv6_addr`).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

/// libnftnl set userdata: key byte order = big endian, so `nft list` prints addresses.
const UDATA_KEY_BYTEORDER_BE: [u8; 6] = [0, 4, 2, 0, 0, 0];

/// Address family of a set's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Family {
    #[serde(rename = "ip")]
    V4,
    #[serde(rename = "ip6")]
    V6,
}

impl Family {
    pub fn key_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    fn key_type(self) -> u32 {
        match self {
            Family::V4 => TYPE_IPADDR,
            Family::V6 => TYPE_IP6ADDR,
        }
    }

    /// nft's keyword for the family (`ip`, `ip6`).
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.keyword())
    }
}

/// The desired shape of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: &'static str,
    pub family: Family,
    /// Interval sets hold ranges (our manual network bans); hash sets hold single keys.
    pub interval: bool,
    pub size: u32,
}

impl SetSpec {
    pub fn flags(&self) -> u32 {
        NFT_SET_TIMEOUT | if self.interval { NFT_SET_INTERVAL } else { 0 }
    }
}

pub fn new_set(b: &mut MsgBuf, seq: u32, table: &str, set: &SetSpec, id: u32) {
    // CREATE without EXCL: an identical set is accepted, one with another key, flags or
    // expression fails EEXIST (which apply() avoids by comparing first).
    let m = b.begin_msg(
        nft_type(NFT_MSG_NEWSET),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_SET_TABLE, table);
    b.str(NFTA_SET_NAME, set.name);
    b.u32(NFTA_SET_FLAGS, set.flags());
    b.u32(NFTA_SET_KEY_TYPE, set.family.key_type());
    b.u32(NFTA_SET_KEY_LEN, set.family.key_len() as u32);
    // The id is how rules of the same batch refer to a set that does not exist yet.
    b.u32(NFTA_SET_ID, id);
    // An explicit size: without it the kernel stops dynamic adds at 65,535 elements.
    let d = b.nest(NFTA_SET_DESC);
    b.u32(NFTA_SET_DESC_SIZE, set.size);
    b.nest_end(d);
    b.bytes(NFTA_SET_USERDATA, &UDATA_KEY_BYTEORDER_BE);
    // The set expression: an empty `counter`, cloned into each new element.
    let e = b.nest(NFTA_SET_EXPR);
    b.str(NFTA_EXPR_NAME, "counter");
    let data = b.nest(NFTA_EXPR_DATA);
    b.nest_end(data);
    b.nest_end(e);
    b.end_msg(m);
}

/// Dump request for every set of one table.
pub fn dump_sets(b: &mut MsgBuf, seq: u32, table: &str) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_GETSET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_SET_TABLE, table);
    b.end_msg(m);
}

/// What we read back of a set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetInfo {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub size: Option<u32>,
    pub count: Option<u32>,
    pub expr: Option<String>,
}

pub fn parse_set(msg: &Msg<'_>) -> SetInfo {
    let mut s = SetInfo::default();
    for (ty, p) in msg.attrs() {
        match ty {
            NFTA_SET_NAME => s.name = cstr(p).to_string(),
            NFTA_SET_FLAGS => s.flags = be_u32(p).unwrap_or(0),
            NFTA_SET_KEY_TYPE => s.key_type = be_u32(p).unwrap_or(0),
            NFTA_SET_KEY_LEN => s.key_len = be_u32(p).unwrap_or(0),
            NFTA_SET_DESC => s.size = find(Attrs::new(p), NFTA_SET_DESC_SIZE).and_then(be_u32),
            NFTA_SET_COUNT => s.count = be_u32(p),
            NFTA_SET_EXPR => {
                s.expr = find(Attrs::new(p), NFTA_EXPR_NAME).map(|n| cstr(n).to_string())
            }
            _ => {}
        }
    }
    s
}

impl SetInfo {
    /// True when the kernel's set is exactly `spec` (key, flags, size, counter expression).
    pub fn matches(&self, spec: &SetSpec) -> bool {
        self.name == spec.name
            && self.flags == spec.flags()
            && self.key_type == spec.family.key_type()
            && self.key_len == spec.family.key_len() as u32
            && self.size == Some(spec.size)
            && self.expr.as_deref() == Some("counter")
    }
}
