//! Base chains: `input` and `forward`, type filter, policy accept, and their read-back.

use super::wire::*;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

/// Netfilter hook numbers (`enum nf_inet_hooks`).
pub const NF_INET_LOCAL_IN: u32 = 1;
pub const NF_INET_FORWARD: u32 = 2;
const NF_ACCEPT: u32 = 1;

/// The hooks fwagent attaches to. `Forward` is what Docker's DOCKER-USER chain is to
/// iptables: published container ports are reached by forwarding (DNAT in prerouting keeps
/// the source address), so a drop here protects them whatever Docker's chains accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Input,
    Forward,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Input, Hook::Forward];

    /// Chain name in our table (also the nft hook keyword).
    pub fn chain(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
        }
    }

    pub fn hooknum(self) -> u32 {
        match self {
            Hook::Input => NF_INET_LOCAL_IN,
            Hook::Forward => NF_INET_FORWARD,
        }
    }

    pub fn from_chain(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.chain() == name)
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.chain())
    }
}

pub fn new_chain(b: &mut MsgBuf, seq: u32, table: &str, hook: Hook, priority: i32) {
    // CREATE without EXCL: an identical existing chain is accepted as is.
    let m = b.begin_msg(
        nft_type(NFT_MSG_NEWCHAIN),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_CHAIN_TABLE, table);
    b.str(NFTA_CHAIN_NAME, hook.chain());
    b.str(NFTA_CHAIN_TYPE, "filter");
    // Policy accept: our chains only ever drop what is banned; everything else goes on
    // to the other tables' chains exactly as if fwagent were not there.
    b.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
    let h = b.nest(NFTA_CHAIN_HOOK);
    b.u32(NFTA_HOOK_HOOKNUM, hook.hooknum());
    // Priorities are signed; the wire carries their two's complement as a be32.
    b.u32(NFTA_HOOK_PRIORITY, priority as u32);
    b.nest_end(h);
    b.end_msg(m);
}

/// Dump request for every chain of one table.
pub fn dump_chains(b: &mut MsgBuf, seq: u32, table: &str) {
    let m = b.begin_msg(
        nft_type(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
    );
    b.str(NFTA_CHAIN_TABLE, table);
    b.end_msg(m);
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainInfo {
    pub table: String,
    pub name: String,
    pub hooknum: Option<u32>,
    pub priority: Option<i32>,
    pub policy: Option<u32>,
    pub kind: String,
}

pub fn parse_chain(msg: &Msg<'_>) -> ChainInfo {
    let mut c = ChainInfo::default();
    for (ty, p) in msg.attrs() {
        match ty {
            NFTA_CHAIN_TABLE => c.table = cstr(p).to_string(),
            NFTA_CHAIN_NAME => c.name = cstr(p).to_string(),
            NFTA_CHAIN_TYPE => c.kind = cstr(p).to_string(),
            NFTA_CHAIN_POLICY => c.policy = be_u32(p),
            NFTA_CHAIN_HOOK => {
                for (t, q) in Attrs::new(p) {
                    match t {
                        NFTA_HOOK_HOOKNUM => c.hooknum = be_u32(q),
                        NFTA_HOOK_PRIORITY => c.priority = be_u32(q).map(|v| v as i32),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    c
}

impl ChainInfo {
    /// True when this chain is exactly our base chain for `hook` at `priority`.
    pub fn matches(&self, hook: Hook, priority: i32) -> bool {
        self.name == hook.chain()
            && self.kind == "filter"
            && self.hooknum == Some(hook.hooknum())
            && self.priority == Some(priority)
            && self.policy == Some(NF_ACCEPT)
    }
}
