//! Netlink framing for nf_tables: the kernel's constants, a small attribute encoder and a
//! zero-copy attribute walker.
//!
//! Why our own encoder rather than the typed `netlink-packet-netfilter` messages: the crate
//! has no counter expression, no drop verdict, no DESTROY messages and no element timeouts,
//! its emit panics on nested attributes over 64 KiB, and its parser formats the whole buffer
//! on every attribute (≈70× slower on a 100k-element dump, and it drops per-element counters;
//! see DESIGN.md). The header flags come from `netlink-packet-core`; everything nf_tables
//! specific is spelled out here with the kernel's own names, so a reader can check each value
//! against `include/uapi/linux/netfilter/nf_tables.h`.

pub use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};

/// Netlink message types shared by every protocol.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// Flag on an error message: extended-ack TLVs follow the (capped) request header.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// Flag on an error message: the original request was not echoed (NETLINK_CAP_ACK).
pub const NLM_F_CAPPED: u16 = 0x100;
/// Extended-ack TLV carrying the kernel's human-readable message.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// nfnetlink: batch delimiters and the nf_tables subsystem id.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNETLINK_V0: u8 = 0;

/// Address families in `nfgenmsg`.
pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// nf_tables message types (low byte; the high byte is the subsystem).
pub const NFT_MSG_NEWTABLE: u8 = 0;
pub const NFT_MSG_GETTABLE: u8 = 1;
pub const NFT_MSG_DELTABLE: u8 = 2;
pub const NFT_MSG_NEWCHAIN: u8 = 3;
pub const NFT_MSG_GETCHAIN: u8 = 4;
pub const NFT_MSG_NEWRULE: u8 = 6;
pub const NFT_MSG_GETRULE: u8 = 7;
pub const NFT_MSG_NEWSET: u8 = 9;
pub const NFT_MSG_GETSET: u8 = 10;
pub const NFT_MSG_NEWSETELEM: u8 = 12;
pub const NFT_MSG_GETSETELEM: u8 = 13;
pub const NFT_MSG_DELSETELEM: u8 = 14;
pub const NFT_MSG_NEWGEN: u8 = 15;
pub const NFT_MSG_GETGEN: u8 = 16;
/// Kernel 6.3+: like DELTABLE / DELSETELEM but a missing object is not an error.
pub const NFT_MSG_DESTROYTABLE: u8 = 26;
pub const NFT_MSG_DESTROYSETELEM: u8 = 30;

/// Full 16-bit message type of an nf_tables message.
pub const fn nft_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg as u16
}

/// Builds netlink messages into one contiguous buffer (one datagram). Every message carries an
/// `nfgenmsg` after the header; attributes are appended with 4-byte alignment.
#[derive(Debug, Default, Clone)]
pub struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    pub fn new() -> MsgBuf {
        MsgBuf::default()
    }

    pub fn with_capacity(n: usize) -> MsgBuf {
        MsgBuf {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Opens a message; close it with [`MsgBuf::end_msg`] once its attributes are written.
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end_msg
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    pub fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn bytes(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        debug_assert!(len <= u16::MAX as usize);
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute, as the kernel's NLA_STRING policies expect.
    pub fn str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// nf_tables integers are big-endian on the wire.
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.bytes(ty, &v.to_be_bytes());
    }

    pub fn u64(&mut self, ty: u16, v: u64) {
        self.bytes(ty, &v.to_be_bytes());
    }

    /// Opens a nested attribute; returns its offset for [`MsgBuf::nest_end`].
    pub fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes a nested attribute. Callers keep nests below 64 KiB by chunking (≤ 1000
    /// elements per message); exceeding it would corrupt the message, so it is a bug.
    pub fn nest_end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        assert!(len <= u16::MAX as usize, "nested attribute over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// One netlink message inside a received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the 16-byte header (for nf_tables: nfgenmsg, then attributes).
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// Attributes after the 4-byte nfgenmsg.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.payload.get(4..).unwrap_or(&[]))
    }

    /// The nf_tables message type (low byte) if this is an nf_tables message.
    pub fn nft_msg(&self) -> Option<u8> {
        (self.ty >> 8 == NFNL_SUBSYS_NFTABLES).then_some(self.ty as u8)
    }
}

/// Walks the messages of one datagram; stops at the first truncated header.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes(rest[8..12].try_into().ok()?),
            payload: &rest[16..len],
        };
        rest = &rest[align(len).min(rest.len())..];
        Some(msg)
    })
}

const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Zero-copy iterator over `(type, payload)` of a run of attributes. Malformed trailing bytes
/// end the walk rather than panic: the kernel is trusted, but a short read must not crash us.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { rest: buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let ty = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let payload = &self.rest[4..len];
        self.rest = &self.rest[align(len).min(self.rest.len())..];
        Some((ty, payload))
    }
}

/// Big-endian integer and string readers for attribute payloads.
pub fn be_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn be_u64(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

/// A NUL-terminated string attribute (the NUL and anything after it dropped).
pub fn cstr(p: &[u8]) -> &str {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).unwrap_or("")
}

/// Finds the first attribute of type `ty`.
pub fn find(attrs: Attrs<'_>, ty: u16) -> Option<&[u8]> {
    attrs.into_iter().find(|(t, _)| *t == ty).map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_walks_attributes() {
        let mut b = MsgBuf::new();
        let m = b.begin_msg(
            nft_type(NFT_MSG_NEWTABLE),
            NLM_F_REQUEST,
            7,
            NFPROTO_INET,
            0,
        );
        b.str(1, "fwagent");
        b.u32(2, 0);
        let n = b.nest(4);
        b.u64(1, 0x0102_0304_0506_0708);
        b.nest_end(n);
        b.end_msg(m);
        let msgs: Vec<_> = messages(b.as_bytes()).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(msgs[0].nft_msg(), Some(NFT_MSG_NEWTABLE));
        let attrs: Vec<_> = msgs[0].attrs().collect();
        assert_eq!(attrs[0], (1, &b"fwagent\0"[..]));
        assert_eq!(be_u32(attrs[1].1), Some(0));
        assert_eq!(attrs[2].0, 4, "nested flag is masked off");
        let inner: Vec<_> = Attrs::new(attrs[2].1).collect();
        assert_eq!(be_u64(inner[0].1), Some(0x0102_0304_0506_0708));
    }

    #[test]
    fn truncated_input_ends_the_walk() {
        assert_eq!(Attrs::new(&[8, 0, 1, 0, 1]).count(), 0);
        assert_eq!(Attrs::new(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(messages(&[0u8; 15]).count(), 0);
        let mut huge = vec![0u8; 16];
        huge[0] = 200;
        assert_eq!(messages(&huge).count(), 0);
    }
}
