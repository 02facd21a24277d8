//! `/metrics`: the status snapshot in the Prometheus text exposition format (0.0.4).
//!
//! Names follow the Prometheus conventions: `fwagent_` prefix, base units (seconds, bytes),
//! `_total` for counters, one family per meaning with labels for the dimensions. Labels:
//! `hook` (`input`, `forward`), `family` (`ipv4`, `ipv6`), `set`, `rule`, `file`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `fwagent_build_info` | gauge | `version` | always 1 |
//! | `fwagent_up` | gauge | | 1 while the agent answers its loop |
//! | `fwagent_uptime_seconds` | gauge | | since the agent started |
//! | `fwagent_kernel_readable` | gauge | | 1 when the latest kernel read succeeded |
//! | `fwagent_table_present` | gauge | | our table exists |
//! | `fwagent_table_protected` | gauge | | our table carries the owner flag |
//! | `fwagent_drop_rules_missing` | gauge | | expected drop rules the kernel lacks |
//! | `fwagent_status_read_duration_seconds` | gauge | | how long the latest kernel read took |
//! | `fwagent_status_read_timestamp_seconds` | gauge | | when the kernel figures were read |
//! | `fwagent_blocked_addresses` | gauge | `family` | entries in the sets (IPv6: prefixes, addresses, networks) |
//! | `fwagent_set_entries` | gauge | `set` | entries per set |
//! | `fwagent_set_capacity` | gauge | `set` | capacity per set |
//! | `fwagent_dropped_packets_total` | counter | `hook`, `family` | packets dropped, carried across re-installs |
//! | `fwagent_dropped_bytes_total` | counter | `hook`, `family` | bytes dropped, carried across re-installs |
//! | `fwagent_active_bans` | gauge | | bans the agent holds |
//! | `fwagent_bans_total` | counter | `rule` | bans made since start |
//! | `fwagent_unbans_total` | counter | `rule` | bans lifted (unban, allow-list, expiry seen at the hourly prune) |
//! | `fwagent_rule_hits_total` | counter | `rule` | matching log lines, all files |
//! | `fwagent_log_lines_read_total` | counter | `file` | complete lines read |
//! | `fwagent_log_bytes_read_total` | counter | `file` | bytes read |
//! | `fwagent_log_lines_matched_total` | counter | `file`, `rule` | lines that counted towards a rule |
//! | `fwagent_log_lines_cut_total` | counter | `file` | over-long lines cut |
//! | `fwagent_log_rotations_total` | counter | `file` | rotations and truncations followed |
//! | `fwagent_follower_errors_total` | counter | `file` | read/watch errors |
//! | `fwagent_log_position_bytes` | gauge | `file` | offset the next read starts from |
//! | `fwagent_kernel_errors_total` | counter | | failed kernel transactions |
//! | `fwagent_table_reinstalls_total` | counter | | re-installs after someone removed or changed our table |
//! | `fwagent_last_ban_timestamp_seconds` | gauge | | time of the newest ban |

use std::fmt::Write;

use super::Status;
use crate::nft::Family;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn family_label(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family: HELP and TYPE once, then its samples.
struct Fam<'a> {
    out: &'a mut String,
}

impl Fam<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn b(v: bool) -> u8 {
    u8::from(v)
}

/// Renders the exposition.
pub fn render(st: &Status) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let mut m = Fam { out: &mut out };
    let version = st
        .agent
        .as_ref()
        .map(|a| a.version)
        .unwrap_or(env!("CARGO_PKG_VERSION"));
    m.head("fwagent_build_info", "gauge", "Build information.");
    m.sample("fwagent_build_info", &[("version", version)], 1);
    m.one(
        "fwagent_kernel_readable",
        "gauge",
        "1 when the latest read of the kernel succeeded.",
        b(st.kernel_error.is_none() && st.kernel_read_at_unix.is_some()),
    );
    m.one(
        "fwagent_table_present",
        "gauge",
        "1 when fwagent's nftables table exists.",
        b(st.present),
    );
    m.one(
        "fwagent_table_protected",
        "gauge",
        "1 when the table carries the owner flag (only the agent can remove it).",
        b(st.protected),
    );
    m.one(
        "fwagent_drop_rules_missing",
        "gauge",
        "Expected drop rules the kernel lacks.",
        st.missing_rules.len(),
    );
    m.one(
        "fwagent_status_read_duration_seconds",
        "gauge",
        "How long the latest kernel read took.",
        st.read_ms as f64 / 1000.0,
    );
    if let Some(t) = st.kernel_read_at_unix {
        m.one(
            "fwagent_status_read_timestamp_seconds",
            "gauge",
            "When the kernel figures were read.",
            t,
        );
    }
    if st.present {
        m.head(
            "fwagent_blocked_addresses",
            "gauge",
            "Entries in the ban sets by family (IPv6 entries are prefixes, exact addresses or networks).",
        );
        m.sample(
            "fwagent_blocked_addresses",
            &[("family", "ipv4")],
            st.blocked.ipv4,
        );
        m.sample(
            "fwagent_blocked_addresses",
            &[("family", "ipv6")],
            st.blocked.ipv6,
        );
        m.head("fwagent_set_entries", "gauge", "Entries per ban set.");
        for s in &st.sets {
            m.sample("fwagent_set_entries", &[("set", &s.set)], s.count);
        }
        m.head("fwagent_set_capacity", "gauge", "Capacity per ban set.");
        for s in &st.sets {
            if let Some(size) = s.size {
                m.sample("fwagent_set_capacity", &[("set", &s.set)], size);
            }
        }
        m.head(
            "fwagent_dropped_packets_total",
            "counter",
            "Packets dropped by fwagent's rules, carried across re-installed rules.",
        );
        for d in &st.drops {
            m.sample(
                "fwagent_dropped_packets_total",
                &[("hook", d.hook.chain()), ("family", family_label(d.family))],
                d.packets_total.unwrap_or(d.packets),
            );
        }
        m.head(
            "fwagent_dropped_bytes_total",
            "counter",
            "Bytes dropped by fwagent's rules, carried across re-installed rules.",
        );
        for d in &st.drops {
            m.sample(
                "fwagent_dropped_bytes_total",
                &[("hook", d.hook.chain()), ("family", family_label(d.family))],
                d.bytes_total.unwrap_or(d.bytes),
            );
        }
    }
    let Some(a) = &st.agent else {
        m.one("fwagent_up", "gauge", "1 while the agent answers.", 0);
        return out;
    };
    m.one("fwagent_up", "gauge", "1 while the agent answers.", 1);
    m.one(
        "fwagent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        a.uptime_secs,
    );
    m.one(
        "fwagent_active_bans",
        "gauge",
        "Bans the agent holds.",
        a.active_bans,
    );
    m.head(
        "fwagent_bans_total",
        "counter",
        "Bans made since the agent started.",
    );
    for r in &a.rules {
        m.sample("fwagent_bans_total", &[("rule", &r.name)], r.bans);
    }
    m.head(
        "fwagent_unbans_total",
        "counter",
        "Bans lifted since the agent started (unban, allow-list, expiry noticed at the hourly prune).",
    );
    for r in &a.rules {
        m.sample("fwagent_unbans_total", &[("rule", &r.name)], r.unbans);
    }
    m.head(
        "fwagent_rule_hits_total",
        "counter",
        "Log lines that counted towards a rule, all files.",
    );
    for r in &a.rules {
        m.sample("fwagent_rule_hits_total", &[("rule", &r.name)], r.hits);
    }
    type Get = fn(&crate::agent::SourceJson) -> u64;
    let per_file: [(&str, &str, &str, Get); 6] = [
        (
            "fwagent_log_lines_read_total",
            "counter",
            "Complete log lines read.",
            |s| s.lines,
        ),
        (
            "fwagent_log_bytes_read_total",
            "counter",
            "Log bytes read.",
            |s| s.bytes,
        ),
        (
            "fwagent_log_lines_cut_total",
            "counter",
            "Over-long log lines cut.",
            |s| s.lines_cut,
        ),
        (
            "fwagent_log_rotations_total",
            "counter",
            "Rotations and truncations followed.",
            |s| s.rotations,
        ),
        (
            "fwagent_follower_errors_total",
            "counter",
            "Errors reading or watching a followed file.",
            |s| s.errors,
        ),
        (
            "fwagent_log_position_bytes",
            "gauge",
            "Offset in the followed file the next read starts from.",
            |s| s.offset,
        ),
    ];
    for (name, kind, help, get) in per_file {
        m.head(name, kind, help);
        for s in &a.sources {
            m.sample(name, &[("file", &s.path)], get(s));
        }
    }
    m.head(
        "fwagent_log_lines_matched_total",
        "counter",
        "Log lines that counted towards a rule, per file.",
    );
    for s in &a.sources {
        for (rule, n) in &s.matched {
            m.sample(
                "fwagent_log_lines_matched_total",
                &[("file", &s.path), ("rule", rule)],
                n,
            );
        }
    }
    m.one(
        "fwagent_kernel_errors_total",
        "counter",
        "Kernel transactions that failed.",
        a.kernel_errors,
    );
    m.one(
        "fwagent_table_reinstalls_total",
        "counter",
        "Re-installs of the table after someone removed or changed it.",
        a.reinstalls,
    );
    if let Some(last) = &a.last_ban {
        m.one(
            "fwagent_last_ban_timestamp_seconds",
            "gauge",
            "Time of the newest ban.",
            last.at_unix,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
