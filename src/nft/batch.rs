//! Transactions: a [`Batch`] is BATCH_BEGIN, our messages, BATCH_END in one buffer sent by
//! one `sendmsg` (the kernel applies all of it or nothing). Each message asks for an ack and
//! is recorded with the [`Op`] it performs, so an error names what failed.
//!
//! [`AckTracker`] is the pure bookkeeping of replies: which sequence numbers are still owed,
//! which failed and with what. It is driven by the socket and, in tests, by hand.

use std::collections::BTreeMap;
use std::fmt;

use super::element::{self, CHUNK, ElemOp, ElemSpec};
use super::wire::*;

/// What one message of a batch does, in words used by error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Batch,
    CreateTable {
        table: String,
    },
    DeleteTable {
        table: String,
    },
    CreateChain {
        table: String,
        chain: String,
    },
    CreateSet {
        table: String,
        set: String,
    },
    CreateRule {
        table: String,
        chain: String,
        set: String,
    },
    Elements {
        op: ElemOp,
        table: String,
        set: String,
        n: usize,
    },
    Probe(&'static str),
    /// A plain request (not part of a batch), described in full.
    Read(String),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Batch => f.write_str("sending nftables transaction"),
            Op::CreateTable { table } => write!(f, "creating table inet {table}"),
            Op::DeleteTable { table } => write!(f, "deleting table inet {table}"),
            Op::CreateChain { table, chain } => write!(f, "creating chain inet {table} {chain}"),
            Op::CreateSet { table, set } => write!(f, "creating set inet {table} {set}"),
            Op::CreateRule { table, chain, set } => {
                write!(f, "adding rule for @{set} to chain inet {table} {chain}")
            }
            Op::Elements { op, table, set, n } => {
                let (verb, prep) = match op {
                    ElemOp::Add => ("adding", "to"),
                    ElemOp::Delete | ElemOp::Destroy => ("deleting", "from"),
                };
                let noun = if *n == 1 { "element" } else { "elements" };
                write!(f, "{verb} {n} {noun} {prep} set inet {table} {set}")
            }
            Op::Probe(what) => write!(f, "probing kernel support for {what}"),
            Op::Read(what) => f.write_str(what),
        }
    }
}

/// One failed message: what it did, the errno and the kernel's extended-ack text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub op: Op,
    pub errno: i32,
    pub ext: Option<String>,
}

/// Outstanding acks of one request or batch.
#[derive(Debug, Default)]
pub struct AckTracker {
    pending: BTreeMap<u32, Op>,
    /// A failure on this sequence number (BATCH_BEGIN) means the kernel refused the whole
    /// datagram (no privilege, no memory) and will not ack the rest.
    whole: Option<u32>,
    failures: Vec<Failure>,
}

impl AckTracker {
    pub fn new() -> AckTracker {
        AckTracker::default()
    }

    pub fn expect(&mut self, seq: u32, op: Op) {
        self.pending.insert(seq, op);
    }

    /// Marks `seq` as the sequence number whose failure ends everything.
    pub fn set_whole(&mut self, seq: u32) {
        self.whole = Some(seq);
    }

    /// Records an ack (`errno == 0`) or error for `seq`. Unknown sequence numbers (stale
    /// replies of an earlier request) are ignored.
    pub fn on_reply(&mut self, seq: u32, errno: i32, ext: Option<String>) {
        if Some(seq) == self.whole && errno != 0 {
            self.failures.push(Failure {
                op: Op::Batch,
                errno,
                ext,
            });
            self.pending.clear();
            return;
        }
        if let Some(op) = self.pending.remove(&seq)
            && errno != 0
        {
            self.failures.push(Failure { op, errno, ext });
        }
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn owes(&self, seq: u32) -> bool {
        self.pending.contains_key(&seq)
    }

    /// The operation still waiting for a reply (for timeout messages).
    pub fn first_pending(&self) -> Option<&Op> {
        self.pending.values().next()
    }

    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    pub fn into_failures(self) -> Vec<Failure> {
        self.failures
    }
}

/// A transaction under construction.
#[derive(Debug)]
pub struct Batch {
    buf: MsgBuf,
    tracker: AckTracker,
    next_seq: u32,
    messages: usize,
}

impl Batch {
    /// Starts a batch whose messages use sequence numbers from `first_seq` on.
    pub fn new(first_seq: u32) -> Batch {
        Batch::with_genid(first_seq, None)
    }

    /// Like [`Batch::new`], but the kernel refuses the whole batch with ERESTART unless the
    /// ruleset generation is still `genid`: a plan made from a read stays valid only if
    /// nobody changed the ruleset since.
    pub fn with_genid(first_seq: u32, genid: Option<u32>) -> Batch {
        /// Attribute of BATCH_BEGIN carrying the expected generation id.
        const NFNL_BATCH_GENID: u16 = 1;
        let mut buf = MsgBuf::with_capacity(4096);
        let m = buf.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        if let Some(g) = genid {
            buf.u32(NFNL_BATCH_GENID, g);
        }
        buf.end_msg(m);
        let mut tracker = AckTracker::new();
        tracker.set_whole(first_seq);
        Batch {
            buf,
            tracker,
            next_seq: first_seq.wrapping_add(1),
            messages: 0,
        }
    }

    /// Reserves a sequence number for a message doing `op`; write the message with it.
    pub fn seq(&mut self, op: Op) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.tracker.expect(s, op);
        self.messages += 1;
        s
    }

    pub fn buf(&mut self) -> &mut MsgBuf {
        &mut self.buf
    }

    /// Number of object messages (BEGIN/END not counted).
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Adds element messages of at most [`CHUNK`] elements each. Interval pairs (a start and
    /// its end) are never split across messages, so each message stays meaningful alone.
    pub fn elements(&mut self, op: ElemOp, table: &str, set: &str, elems: &[ElemSpec]) {
        let mut rest = elems;
        while !rest.is_empty() {
            let mut n = rest.len().min(CHUNK);
            if n < rest.len() && rest[n].end && n > 1 {
                n -= 1; // keep the pair together
            }
            let (chunk, tail) = rest.split_at(n);
            let seq = self.seq(Op::Elements {
                op,
                table: table.to_string(),
                set: set.to_string(),
                n: chunk.iter().filter(|e| !e.end).count(),
            });
            element::elements_msg(&mut self.buf, seq, op, table, set, chunk);
            rest = tail;
        }
    }

    /// Closes the batch: the bytes to send and the acks to wait for.
    pub fn finish(mut self) -> (Vec<u8>, AckTracker, u32) {
        let seq = self.next_seq;
        let m = self.buf.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.buf.end_msg(m);
        (
            self.buf.as_bytes().to_vec(),
            self.tracker,
            seq.wrapping_add(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn op(n: usize) -> Op {
        Op::Elements {
            op: ElemOp::Add,
            table: "fwagent".into(),
            set: "banned4".into(),
            n,
        }
    }

    #[test]
    fn tracker_waits_for_every_ack_and_keeps_failures() {
        let mut t = AckTracker::new();
        t.set_whole(10);
        t.expect(11, op(1000));
        t.expect(12, op(5));
        t.on_reply(99, 0, None); // stale
        assert!(!t.is_done());
        t.on_reply(11, 0, None);
        assert!(!t.is_done() && t.owes(12));
        t.on_reply(12, 28, Some("set is full".into()));
        assert!(t.is_done());
        let f = t.into_failures();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].errno, 28);
        assert_eq!(
            f[0].op.to_string(),
            "adding 5 elements to set inet fwagent banned4"
        );
    }

    #[test]
    fn failure_of_the_whole_batch_ends_waiting() {
        let mut t = AckTracker::new();
        t.set_whole(1);
        t.expect(2, op(1));
        t.expect(3, op(1));
        t.on_reply(1, 1, None); // EPERM on BATCH_BEGIN: nothing else will be acked
        assert!(t.is_done());
        assert_eq!(t.failures()[0].op, Op::Batch);
    }

    #[test]
    fn batch_framing_and_chunking() {
        let mut b = Batch::new(100);
        let elems: Vec<_> = (0..2500u32)
            .map(|i| ElemSpec {
                key: Ipv4Addr::from(0xc612_0000 + i).into(),
                end: false,
                timeout_ms: None,
            })
            .collect();
        b.elements(ElemOp::Add, "fwagent", "banned4", &elems);
        assert_eq!(b.len(), 3);
        let (bytes, tracker, next) = b.finish();
        let msgs: Vec<_> = messages(&bytes).collect();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0].ty, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[4].ty, NFNL_MSG_BATCH_END);
        assert_eq!(
            msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104]
        );
        assert_eq!(next, 105);
        assert!(tracker.owes(101) && tracker.owes(103) && !tracker.owes(104));
    }

    #[test]
    fn interval_pairs_are_not_split() {
        let mut b = Batch::new(1);
        // An open-ended start first, then start/end pairs: element 1000 is an end.
        let elems: Vec<_> = (0..1002u32)
            .map(|i| ElemSpec {
                key: Ipv4Addr::from(i * 2).into(),
                end: i > 0 && i % 2 == 0,
                timeout_ms: None,
            })
            .collect();
        b.elements(ElemOp::Add, "t", "nets4", &elems);
        let (bytes, _, _) = b.finish();
        let mut counts = vec![];
        for m in messages(&bytes).filter(|m| m.nft_msg() == Some(NFT_MSG_NEWSETELEM)) {
            let mut out = vec![];
            element::parse_elements(&m, &mut out);
            assert!(!out[0].end, "a message never starts with an interval end");
            counts.push(out.len());
        }
        assert_eq!(counts, [999, 3]);
    }
}
