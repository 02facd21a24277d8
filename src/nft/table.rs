//! Tables: create (with our fingerprint as a comment in the table's userdata), delete, and
//! read back flags and userdata.

use super::wire::*;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USERDATA: u16 = 6;
/// Netlink port id of the owning socket (owned tables only).
const NFTA_TABLE_OWNER: u16 = 7;

/// Table flag (5.12+): only the creating socket may change the table; `nft flush ruleset`
/// from other processes skips it.
pub const NFT_TABLE_F_OWNER: u32 = 0x2;
/// Table flag (6.9+): an owned table outlives its owner's socket.
pub const NFT_TABLE_F_PERSIST: u32 = 0x4;

/// libnftnl's userdata TLV type for a table comment; `nft list` shows it as `comment "…"`.
const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;

pub fn new_table(b: &mut MsgBuf, seq: u32, name: &str, flags: u32, comment: Option<&str>) {
    // CREATE without EXCL: an existing table is accepted (flags are updated, userdata kept).
    let m = b.begin_msg(
        nft_type(NFT_MSG_NEWTABLE),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_TABLE_NAME, name);
    // Always sent, also as 0: nft does the same, and it keeps the golden bytes equal.
    b.u32(NFTA_TABLE_FLAGS, flags);
    if let Some(c) = comment {
        b.bytes(NFTA_TABLE_USERDATA, &comment_udata(c));
    }
    b.end_msg(m);
}

/// DELTABLE, or DESTROYTABLE (6.3+) when a missing table must not fail the batch.
pub fn del_table(b: &mut MsgBuf, seq: u32, name: &str, destroy: bool) {
    let ty = if destroy {
        NFT_MSG_DESTROYTABLE
    } else {
        NFT_MSG_DELTABLE
    };
    let m = b.begin_msg(
        nft_type(ty),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_TABLE_NAME, name);
    b.end_msg(m);
}

/// GETTABLE for one table (not a dump): the reply is one NEWTABLE or ENOENT.
pub fn get_table(b: &mut MsgBuf, seq: u32, name: &str) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_TABLE_NAME, name);
    b.end_msg(m);
}

/// What we read back of a table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableInfo {
    pub name: String,
    pub flags: u32,
    pub comment: Option<String>,
    pub owner: Option<u32>,
}

pub fn parse_table(msg: &Msg<'_>) -> TableInfo {
    let mut t = TableInfo::default();
    for (ty, p) in msg.attrs() {
        match ty {
            NFTA_TABLE_NAME => t.name = cstr(p).to_string(),
            NFTA_TABLE_FLAGS => t.flags = be_u32(p).unwrap_or(0),
            NFTA_TABLE_USERDATA => t.comment = parse_comment_udata(p),
            NFTA_TABLE_OWNER => t.owner = be_u32(p),
            _ => {}
        }
    }
    t
}

/// libnftnl TLV: type u8, length u8, value (comment strings include their NUL).
fn comment_udata(c: &str) -> Vec<u8> {
    let c = &c.as_bytes()[..c.len().min(250)];
    let mut v = vec![NFTNL_UDATA_TABLE_COMMENT, (c.len() + 1) as u8];
    v.extend_from_slice(c);
    v.push(0);
    v
}

fn parse_comment_udata(mut p: &[u8]) -> Option<String> {
    while p.len() >= 2 {
        let (ty, len) = (p[0], p[1] as usize);
        let val = p.get(2..2 + len)?;
        if ty == NFTNL_UDATA_TABLE_COMMENT {
            return Some(cstr(val).to_string());
        }
        p = &p[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_round_trips() {
        let mut b = MsgBuf::new();
        new_table(
            &mut b,
            1,
            "fwagent",
            NFT_TABLE_F_OWNER,
            Some("fwagent v1 abc"),
        );
        let msg = messages(b.as_bytes()).next().unwrap();
        let t = parse_table(&msg);
        assert_eq!(t.name, "fwagent");
        assert_eq!(t.flags, NFT_TABLE_F_OWNER);
        assert_eq!(t.comment.as_deref(), Some("fwagent v1 abc"));
    }
}
