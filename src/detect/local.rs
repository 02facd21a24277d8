//! Addresses assigned to this host's interfaces, which must never be banned.
//!
//! [`LocalAddrs`] is a shared set (`Arc<RwLock<HashSet>>`): the detector reads it on every
//! counted line, the watcher writes it rarely. [`LocalAddrs::watch`] fills it over rtnetlink
//! and keeps it current, in this order so that no address can slip between the two steps:
//!
//! 1. open a socket subscribed to `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR` (the
//!    notifications `ip monitor address` shows) — from now on every new address is queued;
//! 2. dump all current addresses on a second socket (`ip address show`) and insert them;
//! 3. a task applies queued and later `RTM_NEWADDR` notifications, and re-dumps every few
//!    minutes in case the kernel dropped notifications (socket buffer overrun).
//!
//! Addresses are only ever added: an address removed from an interface stays protected until
//! the agent restarts (when in doubt, do not ban; a DHCP lease may come back). Both the local
//! address and the peer address of point-to-point links are protected, for the same reason.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{Handle, MulticastGroup};

/// How often the watcher re-reads every address as a safety net.
const REDUMP_EVERY: Duration = Duration::from_secs(300);

/// Errors of the rtnetlink address watcher.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("opening a netlink route socket subscribed to address notifications")]
    Subscribe(#[source] std::io::Error),
    #[error("opening a netlink route socket to dump addresses")]
    Socket(#[source] std::io::Error),
    #[error("dumping interface addresses over netlink (ip address show)")]
    Dump(#[source] rtnetlink::Error),
}

/// The shared set of local addresses. Clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct LocalAddrs {
    inner: Arc<RwLock<HashSet<IpAddr>>>,
}

impl LocalAddrs {
    /// An empty set (nothing local known yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an address; returns true when it was new.
    pub fn insert(&self, ip: IpAddr) -> bool {
        // A poisoned lock only means a writer panicked mid-insert; the set is still usable.
        let mut set = self.inner.write().unwrap_or_else(|e| e.into_inner());
        set.insert(normalise(ip))
    }

    /// True when `ip` is (or was, since start) assigned to a local interface.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let set = self.inner.read().unwrap_or_else(|e| e.into_inner());
        set.contains(&normalise(ip))
    }

    /// The smallest local address inside `net`, if any.
    pub fn first_in(&self, net: &IpNet) -> Option<IpAddr> {
        let set = self.inner.read().unwrap_or_else(|e| e.into_inner());
        set.iter().filter(|a| net.contains(*a)).min().copied()
    }

    /// A copy of the current set, sorted.
    pub fn snapshot(&self) -> Vec<IpAddr> {
        let set = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<IpAddr> = set.iter().copied().collect();
        v.sort();
        v
    }

    /// Number of known local addresses.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no local address is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads every address of the current network namespace and keeps the set current (see
    /// the module docs for the order). Returns once the initial dump is in; the returned
    /// [`LocalWatch`] stops the background task when dropped. Needs a tokio runtime.
    pub async fn watch(&self) -> Result<LocalWatch, LocalError> {
        // 1. Subscribe first, so nothing added during the dump is missed.
        let (mconn, _mhandle, mut notices) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(LocalError::Subscribe)?;
        let mconn_task = tokio::spawn(mconn);
        // 2. Dump on a second connection.
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LocalError::Socket)?;
        let conn_task = tokio::spawn(conn);
        let n = dump(&handle, self).await.map_err(LocalError::Dump)?;
        tracing::debug!(addresses = n, "local addresses loaded");
        // 3. Apply notifications as they come; re-dump now and then.
        let set = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REDUMP_EVERY);
            tick.tick().await; // the first tick is immediate; the dump just ran
            loop {
                tokio::select! {
                    msg = notices.next() => {
                        let Some((msg, _)) = msg else { break };
                        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) =
                            msg.payload
                        {
                            for ip in addresses_of(&m) {
                                if set.insert(ip) {
                                    tracing::info!(%ip, "new local address: never banned");
                                }
                            }
                        }
                    }
                    _ = tick.tick() => {
                        if let Err(err) = dump(&handle, &set).await {
                            tracing::warn!(error = %err, "re-reading local addresses failed");
                        }
                    }
                }
            }
            tracing::warn!("address notification socket closed; local address set frozen");
        });
        Ok(LocalWatch {
            tasks: vec![task, mconn_task, conn_task],
        })
    }
}

/// Keeps the watcher running; dropping it stops the tasks.
#[derive(Debug)]
pub struct LocalWatch {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LocalWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Dumps every address into `set`; returns how many were seen.
async fn dump(handle: &Handle, set: &LocalAddrs) -> Result<usize, rtnetlink::Error> {
    let mut n = 0;
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await? {
        for ip in addresses_of(&msg) {
            set.insert(ip);
            n += 1;
        }
    }
    Ok(n)
}

/// The addresses an `RTM_NEWADDR` message carries (`IFA_ADDRESS` and `IFA_LOCAL`).
fn addresses_of(msg: &AddressMessage) -> impl Iterator<Item = IpAddr> + '_ {
    msg.attributes.iter().filter_map(|a| match a {
        AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    })
}

/// IPv4-mapped IPv6 is stored and looked up as IPv4.
fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
        v4 => v4,
    }
}
