//! Throwaway network namespaces for kernel tests. Each [`NetNs`] has a unique name
//! (`fwt-<pid>-<n>`) and is deleted when dropped, even when the test panics. Nothing here
//! touches the root namespace's network or ruleset.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when running as root; otherwise prints the SKIP line the brief asks for.
pub fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // Written to the stderr handle directly: the test harness captures `eprintln!`, and
    // a skip must be visible in a normal `cargo test` run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: {test} needs root (network namespaces, nf_tables)"
    );
    false
}

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        let name = format!(
            "fwt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and returns its output (never panics).
    pub fn output(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("spawn ip netns exec")
    }

    /// Runs a command inside the namespace; panics with its stderr when it fails.
    pub fn ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.output(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self, args: &[&str]) -> String {
        self.ok("ip", args)
    }

    /// Runs the fwagent binary in the namespace with extra environment.
    pub fn fwagent_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_fwagent")]);
        c.args(args);
        c.env_remove("FWAGENT_KERNEL_COMPAT");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("spawn fwagent")
    }

    pub fn fwagent(&self, args: &[&str]) -> Output {
        self.fwagent_env(&[], args)
    }

    /// Runs fwagent and requires success; returns stdout.
    pub fn fwagent_ok(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.fwagent_env(env, args);
        assert!(
            out.status.success(),
            "fwagent {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ping` once with a short deadline: true when a reply came back.
    pub fn ping(&self, args: &[&str]) -> bool {
        let mut a = vec!["-c", "1", "-W", "1", "-w", "2"];
        a.extend_from_slice(args);
        self.output("ping", &a).status.success()
    }

    /// Runs `f` on a fresh thread that has entered this namespace (setns), so library code
    /// opens its netlink socket there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects a veth pair between two namespaces: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}
