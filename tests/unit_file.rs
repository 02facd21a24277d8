//! `dist/fwagent.service`: the hardening an admin is promised is really in the file, systemd
//! accepts the file without a warning, and its exposure score stays at or below 2.0.
//!
//! The systemd checks run `systemd-analyze` (offline; no running systemd needed) and skip with
//! a visible message where it is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = include_str!("../dist/fwagent.service");

/// `Key=value` lines of the unit, comments and blank lines dropped.
fn directives() -> Vec<(&'static str, &'static str)> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn values(key: &str) -> Vec<&'static str> {
    directives()
        .into_iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn key_hardening_directives_are_present() {
    let expect = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", "CAP_NET_ADMIN"),
        ("AmbientCapabilities", "CAP_NET_ADMIN"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "fwagent"),
        ("RuntimeDirectory", "fwagent"),
        ("RuntimeDirectoryMode", "0700"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_NETLINK AF_UNIX AF_INET AF_INET6",
        ),
        ("MemoryDenyWriteExecute", "yes"),
        ("SupplementaryGroups", "adm"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("ProtectProc", "invisible"),
    ];
    for (key, value) in expect {
        assert_eq!(values(key), [value], "{key}");
    }
    assert!(
        values("SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter"
    );
    let watchdog = values("WatchdogSec");
    assert_eq!(watchdog.len(), 1, "WatchdogSec must be set once");
    // Capabilities: exactly CAP_NET_ADMIN (asserted above), nothing that reads every file.
    assert!(
        directives().iter().all(|(_, v)| !v.contains("CAP_DAC")),
        "a CAP_DAC_* capability is granted"
    );
    assert_eq!(values("DynamicUser"), ["yes"], "runs as root");
    // Things that would break nftables on the host or be pointless here.
    for (key, forbidden) in [("PrivateNetwork", "yes"), ("PrivateUsers", "yes")] {
        assert!(!values(key).contains(&forbidden), "{key}={forbidden}");
    }
    // A config error (exit 2) must not become a restart loop.
    assert_eq!(values("RestartPreventExitStatus"), ["2"]);
}

/// The unit with ExecStart pointing at the binary this test run built, so `verify` can check
/// that the command exists without anything installed under /usr/local.
fn unit_for_verify(dir: &Path) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_fwagent");
    let text = UNIT.replace("/usr/local/bin/fwagent", bin);
    assert_ne!(
        text, UNIT,
        "ExecStart no longer names /usr/local/bin/fwagent"
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("fwagent.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn systemd_analyze() -> Option<&'static str> {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some("systemd-analyze")
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    let Some(tool) = systemd_analyze() else {
        eprintln!("SKIP: systemd-analyze not installed (apt-get install systemd)");
        return;
    };
    let dir = TempDir(std::env::temp_dir().join(format!("fwagent-unit-{}", std::process::id())));
    let unit = unit_for_verify(&dir.0);
    let out = Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // verify exits 0 on unknown or misspelt keys; it only warns. Warnings fail this test.
    assert!(stderr.trim().is_empty(), "verify warned: {stderr}");
}

#[test]
fn exposure_level_is_at_most_2() {
    let Some(tool) = systemd_analyze() else {
        eprintln!("SKIP: systemd-analyze not installed (apt-get install systemd)");
        return;
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/fwagent.service");
    let out = Command::new(tool)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Unknown option") || stderr.contains("unrecognized option") {
        eprintln!("SKIP: this systemd-analyze has no --offline (systemd < 250): {stderr}");
        return;
    }
    let level = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for fwagent.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in output:\n{stdout}\n{stderr}"));
    eprintln!("systemd-analyze security --offline=true: exposure {level}");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{stdout}");
}

/// The service runs as a dynamic unprivileged user: every install step that README and the
/// unit's header give for a file the service reads must leave it readable by others.
#[test]
fn installed_files_the_service_reads_are_readable_by_its_user() {
    let readme = include_str!("../README.md");
    let mut checked = 0;
    for line in readme.lines().chain(UNIT.lines()) {
        let line = line.trim_start_matches('#').trim();
        let Some(rest) = line.split("install -D -m ").nth(1) else {
            continue;
        };
        let mode = rest.split_whitespace().next().unwrap_or("");
        let mode = u32::from_str_radix(mode, 8).unwrap_or_else(|_| panic!("mode in {line:?}"));
        if line.contains("/etc/fwagent/fwagent.toml") || line.contains("/usr/local/bin/fwagent") {
            assert_eq!(
                mode & 0o004,
                0o004,
                "not readable by the service user: {line:?}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "install steps for the binary and the config not found"
    );
}
