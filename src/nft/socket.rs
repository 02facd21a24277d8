//! The netlink socket: one `NETLINK_NETFILTER` socket with capped and extended acks, a large
//! receive buffer, a receive timeout (so a lost reply cannot hang the agent), and the three
//! exchanges we need: a batch, a dump, and a run of plain requests.
//!
//! The kernel processes a batch synchronously inside `sendmsg`, so all of its acks are queued
//! on the socket by the time `sendmsg` returns; we then read until every sequence number is
//! accounted for ([`AckTracker`]).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket as NlSocket, protocols::NETLINK_NETFILTER};

use super::batch::{AckTracker, Op};
use super::error::{NftError, op_label};
use super::wire::*;

/// Replies to anything we send arrive well within this; hitting it means a lost reply.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer: room for the acks of big batches and for dump bursts.
const RCVBUF: usize = 8 << 20;
/// Read buffer for one datagram (dump datagrams are at most a few tens of KiB).
const READ_BUF: usize = 1 << 20;

pub struct Socket {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
    sndbuf: usize,
}

/// Result of a dump that the kernel interrupted because the ruleset changed meanwhile.
#[derive(Debug)]
pub enum DumpError {
    Interrupted,
    Failed(NftError),
}

impl Socket {
    pub fn open() -> Result<Socket, NftError> {
        let op = "opening nf_tables netlink socket";
        let mut sock = NlSocket::new(NETLINK_NETFILTER).map_err(|e| NftError::io(op, e))?;
        sock.bind_auto().map_err(|e| NftError::io(op, e))?;
        // Capped acks: errors do not echo our (possibly megabyte-sized) request back.
        sock.set_cap_ack(true).map_err(|e| NftError::io(op, e))?;
        // Extended acks: the kernel's text explaining an error, when it has one.
        sock.set_ext_ack(true).map_err(|e| NftError::io(op, e))?;
        let fd = sock.as_raw_fd();
        // FORCE variants ignore rmem_max/wmem_max but need CAP_NET_ADMIN; fall back quietly,
        // since an unprivileged caller fails on its first request with a clearer message.
        if setsockopt_int(fd, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = setsockopt_int(fd, libc::SO_RCVBUF, RCVBUF);
        }
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: fd is a valid socket owned by `sock`; tv outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NftError::io(op, io::Error::last_os_error()));
        }
        // Start sequence numbers from the clock so replies to a previous process using the
        // same port id can never be mistaken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            sock,
            seq,
            buf: vec![0; READ_BUF],
            sndbuf: 0,
        })
    }

    /// The socket's netlink port id (what the kernel records as a table's owner).
    pub fn port_id(&self) -> Option<u32> {
        let mut addr = netlink_sys::SocketAddr::new(0, 0);
        self.sock.get_address(&mut addr).ok()?;
        Some(addr.port_number())
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub fn seqs(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    pub fn set_next_seq(&mut self, seq: u32) {
        self.seq = seq;
    }

    /// Sends a whole datagram; grows the send buffer first when it is too small (a 100k
    /// element transaction is ~3 MB, far over the default).
    fn send(&mut self, bytes: &[u8], op: &str) -> Result<(), NftError> {
        let need = bytes.len() + 64 * 1024;
        if need > self.sndbuf.max(200 * 1024) {
            let fd = self.sock.as_raw_fd();
            if setsockopt_int(fd, libc::SO_SNDBUFFORCE, need).is_err() {
                let _ = setsockopt_int(fd, libc::SO_SNDBUF, need);
            }
            self.sndbuf = need;
        }
        let n = self.sock.send(bytes, 0).map_err(|e| NftError::io(op, e))?;
        if n != bytes.len() {
            return Err(NftError::io(
                op,
                io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            ));
        }
        Ok(())
    }

    fn recv(&mut self, op: &dyn Fn() -> String) -> Result<usize, NftError> {
        loop {
            // SAFETY: buf is a valid writable region of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(NftError::Timeout {
                        op: op(),
                        secs: RECV_TIMEOUT.as_secs(),
                    });
                }
                _ => return Err(NftError::io(op(), e)),
            }
        }
    }

    /// Sends a batch and waits for every ack. Returns the tracker holding any failures.
    pub fn batch(&mut self, bytes: &[u8], mut tracker: AckTracker) -> Result<AckTracker, NftError> {
        self.send(bytes, &Op::Batch.to_string())?;
        while !tracker.is_done() {
            let n = self.recv(&|| op_label(tracker.first_pending()))?;
            for msg in messages(&self.buf[..n]) {
                if msg.ty == NLMSG_ERROR {
                    let (errno, ext) = parse_error(&msg);
                    tracker.on_reply(msg.seq, errno, ext);
                }
            }
        }
        Ok(tracker)
    }

    /// Sends plain requests (each with NLM_F_ACK) and feeds every data reply to `on_msg`
    /// until each request has its ack or error.
    pub fn requests(
        &mut self,
        bytes: &[u8],
        mut tracker: AckTracker,
        mut on_msg: impl FnMut(&Msg<'_>),
    ) -> Result<AckTracker, NftError> {
        self.send(bytes, &op_label(tracker.first_pending()))?;
        while !tracker.is_done() {
            let n = self.recv(&|| op_label(tracker.first_pending()))?;
            for msg in messages(&self.buf[..n]) {
                if msg.ty == NLMSG_ERROR {
                    let (errno, ext) = parse_error(&msg);
                    tracker.on_reply(msg.seq, errno, ext);
                } else if tracker.owes(msg.seq) {
                    on_msg(&msg);
                }
            }
        }
        Ok(tracker)
    }

    /// Runs one dump request (sequence number `seq`), feeding each message to `on_msg`.
    pub fn dump(
        &mut self,
        bytes: &[u8],
        seq: u32,
        op: &dyn Fn() -> String,
        mut on_msg: impl FnMut(&Msg<'_>),
    ) -> Result<(), DumpError> {
        self.send(bytes, &op()).map_err(DumpError::Failed)?;
        let mut interrupted = false;
        loop {
            let n = self.recv(op).map_err(DumpError::Failed)?;
            for msg in messages(&self.buf[..n]) {
                if msg.seq != seq {
                    continue; // a stale reply of an earlier, abandoned exchange
                }
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.ty {
                    NLMSG_DONE => {
                        return if interrupted {
                            Err(DumpError::Interrupted)
                        } else {
                            Ok(())
                        };
                    }
                    NLMSG_ERROR => {
                        let (errno, ext) = parse_error(&msg);
                        return Err(DumpError::Failed(NftError::kernel(op(), errno, ext)));
                    }
                    _ => on_msg(&msg),
                }
            }
        }
    }
}

/// Reads `nlmsgerr`: a negative errno (0 = ack), the request's header (capped), then the
/// extended-ack TLVs when NLM_F_ACK_TLVS is set.
pub fn parse_error(msg: &Msg<'_>) -> (i32, Option<String>) {
    let p = msg.payload;
    let errno = p
        .get(..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
        .unwrap_or(0);
    let mut ext = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // With capped acks only the 16-byte header of the request follows the errno;
        // otherwise the whole request does (its length is in that header).
        let req_len = if msg.flags & NLM_F_CAPPED != 0 {
            16
        } else {
            p.get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or([0; 4])) as usize)
                .unwrap_or(16)
        };
        let start = (4 + req_len + 3) & !3;
        if let Some(tlvs) = p.get(start..) {
            ext = find(Attrs::new(tlvs), NLMSGERR_ATTR_MSG)
                .map(|m| cstr(m).to_string())
                .filter(|m| !m.is_empty());
        }
    }
    (errno, ext)
}

fn setsockopt_int(fd: i32, opt: libc::c_int, val: usize) -> io::Result<()> {
    let v = val.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: fd is a valid socket; v lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capped_error_with_extended_ack() {
        // nlmsgerr as the kernel sends it with NETLINK_CAP_ACK + NETLINK_EXT_ACK.
        let mut p = Vec::new();
        p.extend_from_slice(&(-28i32).to_ne_bytes());
        p.extend_from_slice(&[0u8; 16]); // the request's header only
        let text = b"set is full\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let msg = Msg {
            ty: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            seq: 1,
            payload: &p,
        };
        assert_eq!(parse_error(&msg), (28, Some("set is full".to_string())));
        let ack = Msg {
            ty: NLMSG_ERROR,
            flags: NLM_F_CAPPED,
            seq: 1,
            payload: &[0; 20],
        };
        assert_eq!(parse_error(&ack), (0, None));
    }
}
