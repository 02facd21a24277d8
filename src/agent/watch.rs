//! Notices when someone else removes our table or part of it (`nft flush ruleset`,
//! an nftables.service restart, a firewalld reload) so the agent can re-install it at once.
//!
//! A dedicated netlink socket listens to the nftables multicast group. Only deletions that
//! name our table matter; element events (one per element, thousands in a burst) are skipped
//! without parsing further. If the socket overflows (ENOBUFS) we may have missed a deletion,
//! so that also asks for a check. The agent's periodic generation check is the safety net.

use std::sync::{Arc, RwLock};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use tokio::sync::mpsc;

/// nfnetlink multicast group of nftables events.
const NFNLGRP_NFTABLES: u32 = 7;
/// nfnetlink subsystem id of nftables (high byte of the message type).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
/// In table, chain, rule and set messages, attribute 1 is the table name.
const ATTR_TABLE: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Starts the watcher thread. Every relevant event sends a unit on `tx` (coalesced: the
/// channel has room for one pending check). `table` is shared with the agent, which renames
/// it when a reload moves the bans to another table.
pub fn start(table: Arc<RwLock<String>>, tx: mpsc::Sender<()>) -> std::io::Result<()> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind(&SocketAddr::new(0, 0))?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    // Room for bursts of element events; overflow is handled anyway.
    let _ = sock.set_rx_buf_sz(1 << 20);
    std::thread::Builder::new()
        .name("fwagent-watch".into())
        .spawn(move || run(sock, table, tx))?;
    Ok(())
}

fn run(sock: Socket, table: Arc<RwLock<String>>, tx: mpsc::Sender<()>) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match sock.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::debug!("nftables event socket overflowed; checking the table");
                if tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "nftables event socket failed; relying on periodic checks");
                return;
            }
        };
        // Read the name per datagram: after a rename, deletions of the new table count.
        let ours = {
            let name = table.read().unwrap_or_else(|e| e.into_inner());
            touches_table(&buf[..n], name.as_bytes())
        };
        if ours && tx.try_send(()).is_err() && tx.is_closed() {
            return;
        }
    }
}

/// True when the datagram holds a deletion of `table` or of one of its objects.
pub fn touches_table(mut buf: &[u8], table: &[u8]) -> bool {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return false;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg = &buf[NLMSG_HDRLEN..len];
        if ty >> 8 == NFNL_SUBSYS_NFTABLES
            && matches!(
                ty & 0xff,
                NFT_MSG_DELTABLE | NFT_MSG_DELCHAIN | NFT_MSG_DELRULE | NFT_MSG_DELSET
            )
            && msg.len() >= NFGENMSG_LEN
            && table_attr(&msg[NFGENMSG_LEN..]) == Some(table)
        {
            return true;
        }
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
    }
    false
}

/// The NUL-trimmed value of the table-name attribute.
fn table_attr(mut attrs: &[u8]) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == ATTR_TABLE {
            let v = &attrs[4..len];
            return Some(v.strip_suffix(&[0]).unwrap_or(v));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, table: &str) -> Vec<u8> {
        let mut name = table.as_bytes().to_vec();
        name.push(0);
        let attr_len = 4 + name.len();
        let mut m = Vec::new();
        let total = NLMSG_HDRLEN + NFGENMSG_LEN + attr_len.div_ceil(4) * 4;
        m.extend((total as u32).to_ne_bytes());
        m.extend(((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([1, 0, 0, 0]);
        m.extend((attr_len as u16).to_ne_bytes());
        m.extend(ATTR_TABLE.to_ne_bytes());
        m.extend(name);
        m.resize(total, 0);
        m
    }

    #[test]
    fn only_deletions_of_our_table_count() {
        assert!(touches_table(&msg(NFT_MSG_DELTABLE, "fwagent"), b"fwagent"));
        assert!(touches_table(&msg(NFT_MSG_DELRULE, "fwagent"), b"fwagent"));
        assert!(!touches_table(&msg(NFT_MSG_DELTABLE, "filter"), b"fwagent"));
        assert!(!touches_table(
            &msg(NFT_MSG_DELTABLE, "fwagent2"),
            b"fwagent"
        ));
        // NEWSETELEM (12) and DELSETELEM (14): our own bans and expiries.
        assert!(!touches_table(&msg(12, "fwagent"), b"fwagent"));
        assert!(!touches_table(&msg(14, "fwagent"), b"fwagent"));
        let mut two = msg(14, "fwagent");
        two.extend(msg(NFT_MSG_DELSET, "fwagent"));
        assert!(touches_table(&two, b"fwagent"));
        assert!(!touches_table(&[1, 2, 3], b"fwagent"));
        assert!(!touches_table(&[255; 40], b"fwagent"));
    }
}
