//! Local addresses are never banned: read over rtnetlink at start and kept current through
//! address notifications. Runs the watcher inside a throwaway network namespace (needs root;
//! skips with a visible message otherwise), adds addresses with `ip` as an independent tool
//! and checks that the detector protects them from then on.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fwagent::detect::{Key, LocalAddrs, NeverBan};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace deleted on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "fwt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn local_addresses_are_protected_including_later_ones() {
    if !is_root() {
        eprintln!("SKIP: local_addresses_are_protected_including_later_ones needs root");
        return;
    }
    let ns = Netns::new();
    let n = ns.0.as_str();
    // A veth pair kept inside the namespace (no dummy driver on every kernel).
    ip(&[
        "-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    ip(&["-n", n, "link", "set", "d0", "up"]);
    ip(&["-n", n, "addr", "add", "198.51.100.5/24", "dev", "d0"]);

    // The watcher runs on its own thread, moved into the namespace with setns(2).
    let (ready_tx, ready_rx) = mpsc::channel::<Result<LocalAddrs, String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let path = format!("/var/run/netns/{n}");
    let thread = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        // SAFETY: a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let _ = ready_tx.send(Err(format!("setns: {}", std::io::Error::last_os_error())));
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let local = LocalAddrs::new();
            match local.watch().await {
                Ok(watch) => {
                    let _ = ready_tx.send(Ok(local));
                    let _ = stop_rx.await;
                    drop(watch);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }
        });
    });
    let local = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("watcher started")
        .expect("watcher ok");

    // Present at start: from the dump.
    let a: IpAddr = "198.51.100.5".parse().unwrap();
    assert!(local.contains(a), "{:?}", local.snapshot());
    // Only this namespace's addresses (the host's are not visible here).
    for addr in local.snapshot() {
        let ok = addr == a
            || addr.is_loopback()
            || matches!(addr, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80);
        assert!(ok, "unexpected address {addr} in {:?}", local.snapshot());
    }

    let never = NeverBan::new(Vec::new(), local.clone(), 64);
    assert_eq!(never.key_for(a), None);
    let b: IpAddr = "203.0.113.77".parse().unwrap();
    let offender6: IpAddr = "2001:db8:1::66".parse().unwrap();
    assert_eq!(
        never.key_for(b),
        Some(Key::V4("203.0.113.77".parse().unwrap()))
    );
    assert_eq!(
        never.key_for(offender6),
        Some(Key::V6Prefix("2001:db8:1::".parse().unwrap(), 64))
    );

    // Added later: protected as soon as the notification arrives.
    ip(&["-n", n, "addr", "add", "203.0.113.77/24", "dev", "d0"]);
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        "2001:db8:1::25/64",
        "dev",
        "d0",
        "nodad",
    ]);
    wait_until("203.0.113.77 to be known", || local.contains(b));
    let c: IpAddr = "2001:db8:1::25".parse().unwrap();
    wait_until("2001:db8:1::25 to be known", || local.contains(c));
    assert_eq!(never.key_for(b), None);
    assert_eq!(never.key_for(c), None);
    // An offender sharing the server's /64 is now banned by its own /128 only.
    assert_eq!(
        never.key_for(offender6),
        Some(Key::V6Exact("2001:db8:1::66".parse().unwrap()))
    );

    let _ = stop_tx.send(());
    thread.join().unwrap();
}
