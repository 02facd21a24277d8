//! Rules and their expressions: `<family> saddr [& mask] @set counter drop`, and the rule
//! dump from which rule counters are read.
//!
//! A rule is a list of expressions run in order over registers. For `ip saddr @banned4
//! counter drop` in an `inet` table that is (the same sequence `nft` emits):
//! `meta nfproto → reg1`, `cmp reg1 == 2`, `payload network[12..16] → reg1`,
//! `lookup reg1 in banned4`, `counter`, `immediate verdict drop`. The IPv6 prefix rule adds
//! `bitwise reg1 = reg1 & mask ^ 0` between payload and lookup, so the source address is cut
//! to the configured prefix before it is looked up (see `schema.rs` for why).

use super::counter;
use super::set::Family;
use super::wire::*;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
const NFT_BITWISE_MASK_XOR: u32 = 0;

const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_DROP: u32 = 0;

/// Register 0 holds the verdict; register 1 is the first 16-byte data register.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

/// One drop rule: which set it looks up, and for IPv6 prefix bans the mask length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub family: Family,
    pub set: &'static str,
    /// `Some(p)`: mask the source address to /p before the lookup.
    pub prefix: Option<u8>,
}

pub fn new_rule(b: &mut MsgBuf, seq: u32, table: &str, chain: &str, r: &RuleSpec, set_id: u32) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_NEWRULE),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    // Attributes and expressions in the order nft 1.0.6 sends them, so the golden test
    // can compare bytes (the kernel itself does not care about attribute order).
    b.str(NFTA_RULE_TABLE, table);
    b.str(NFTA_RULE_CHAIN, chain);
    let list = b.nest(NFTA_RULE_EXPRESSIONS);
    let (nfproto, offset) = match r.family {
        Family::V4 => (NFPROTO_IPV4, 12), // iphdr.saddr
        Family::V6 => (NFPROTO_IPV6, 8),  // ipv6hdr.saddr
    };
    let len = r.family.key_len() as u32;

    // In an inet table a packet may be IPv4 or IPv6: check the family before reading the
    // address, or an IPv6 header's bytes 12..16 would be looked up as an IPv4 address.
    expr(b, "meta", |b| {
        b.u32(NFTA_META_KEY, NFT_META_NFPROTO);
        b.u32(NFTA_META_DREG, NFT_REG_1);
    });
    expr(b, "cmp", |b| {
        b.u32(NFTA_CMP_SREG, NFT_REG_1);
        b.u32(NFTA_CMP_OP, NFT_CMP_EQ);
        let d = b.nest(NFTA_CMP_DATA);
        b.bytes(NFTA_DATA_VALUE, &[nfproto]);
        b.nest_end(d);
    });
    expr(b, "payload", |b| {
        b.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        b.u32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        b.u32(NFTA_PAYLOAD_OFFSET, offset);
        b.u32(NFTA_PAYLOAD_LEN, len);
    });
    if let Some(p) = r.prefix {
        expr(b, "bitwise", |b| {
            b.u32(NFTA_BITWISE_SREG, NFT_REG_1);
            b.u32(NFTA_BITWISE_DREG, NFT_REG_1);
            b.u32(NFTA_BITWISE_OP, NFT_BITWISE_MASK_XOR);
            b.u32(NFTA_BITWISE_LEN, len);
            let mk = b.nest(NFTA_BITWISE_MASK);
            b.bytes(NFTA_DATA_VALUE, &prefix_mask(p));
            b.nest_end(mk);
            let x = b.nest(NFTA_BITWISE_XOR);
            b.bytes(NFTA_DATA_VALUE, &[0u8; 16]);
            b.nest_end(x);
        });
    }
    // Lookup by name; the set id lets the kernel resolve sets created in the same batch.
    expr(b, "lookup", |b| {
        b.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
        b.str(NFTA_LOOKUP_SET, r.set);
        b.u32(NFTA_LOOKUP_SET_ID, set_id);
    });
    // The counter sits after the lookup, so it counts exactly the packets this rule drops.
    expr(b, "counter", |_| {});
    expr(b, "immediate", |b| {
        b.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        let d = b.nest(NFTA_IMMEDIATE_DATA);
        let v = b.nest(NFTA_DATA_VERDICT);
        b.u32(NFTA_VERDICT_CODE, NF_DROP);
        b.nest_end(v);
        b.nest_end(d);
    });
    b.nest_end(list);
    b.end_msg(m);
}

fn expr(b: &mut MsgBuf, name: &str, data: impl FnOnce(&mut MsgBuf)) {
    let e = b.nest(NFTA_LIST_ELEM);
    b.str(NFTA_EXPR_NAME, name);
    let d = b.nest(NFTA_EXPR_DATA);
    data(b);
    b.nest_end(d);
    b.nest_end(e);
}

/// The 16-byte mask of an IPv6 /p prefix.
pub fn prefix_mask(p: u8) -> [u8; 16] {
    let bits = u128::MAX
        .checked_shl(128 - u32::from(p.min(128)))
        .unwrap_or(0);
    let bits = if p == 0 { 0 } else { bits };
    bits.to_be_bytes()
}

/// Dump request for every rule of one table.
pub fn dump_rules(b: &mut MsgBuf, seq: u32, table: &str) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_RULE_TABLE, table);
    b.end_msg(m);
}

/// What we read back of a rule: enough to recognise our own rules and read their counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleInfo {
    pub chain: String,
    /// Expression names in order (`meta`, `cmp`, `payload`, …).
    pub exprs: Vec<String>,
    pub nfproto: Option<u8>,
    pub set: Option<String>,
    pub mask: Option<Vec<u8>>,
    pub packets: u64,
    pub bytes: u64,
}

pub fn parse_rule(msg: &Msg<'_>) -> RuleInfo {
    let mut r = RuleInfo::default();
    for (ty, p) in msg.attrs() {
        match ty {
            NFTA_RULE_CHAIN => r.chain = cstr(p).to_string(),
            NFTA_RULE_EXPRESSIONS => {
                for (_, e) in Attrs::new(p) {
                    parse_expr(&mut r, e);
                }
            }
            _ => {}
        }
    }
    r
}

fn parse_expr(r: &mut RuleInfo, e: &[u8]) {
    let name = find(Attrs::new(e), NFTA_EXPR_NAME).map(cstr).unwrap_or("");
    let data = find(Attrs::new(e), NFTA_EXPR_DATA).unwrap_or(&[]);
    match name {
        "cmp" if r.nfproto.is_none() => {
            r.nfproto = find(Attrs::new(data), NFTA_CMP_DATA)
                .and_then(|d| find(Attrs::new(d), NFTA_DATA_VALUE))
                .and_then(|v| v.first().copied());
        }
        "bitwise" => {
            r.mask = find(Attrs::new(data), NFTA_BITWISE_MASK)
                .and_then(|d| find(Attrs::new(d), NFTA_DATA_VALUE))
                .map(<[u8]>::to_vec);
        }
        "lookup" => {
            r.set = find(Attrs::new(data), NFTA_LOOKUP_SET).map(|s| cstr(s).to_string());
        }
        "counter" => {
            let c = counter::parse(data);
            (r.packets, r.bytes) = (c.packets, c.bytes);
        }
        _ => {}
    }
    r.exprs.push(name.to_string());
}

impl RuleInfo {
    /// True when this rule is exactly `spec` (same expressions, set and mask).
    pub fn matches(&self, spec: &RuleSpec) -> bool {
        let mut want = vec!["meta", "cmp", "payload"];
        if spec.prefix.is_some() {
            want.push("bitwise");
        }
        want.extend(["lookup", "counter", "immediate"]);
        let nfproto = match spec.family {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        };
        self.exprs == want
            && self.nfproto == Some(nfproto)
            && self.set.as_deref() == Some(spec.set)
            && self.mask.as_deref() == spec.prefix.map(prefix_mask).as_ref().map(|m| &m[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(64)[..8], [0xff; 8]);
        assert_eq!(prefix_mask(64)[8..], [0; 8]);
        assert_eq!(prefix_mask(48)[5..7], [0xff, 0]);
        assert_eq!(prefix_mask(128), [0xff; 16]);
        assert_eq!(prefix_mask(0), [0; 16]);
        assert_eq!(prefix_mask(57)[7], 0x80);
    }
}
