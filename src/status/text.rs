//! The human table of `fwagent status`: what is enforced first (table, blocked, drops, top
//! offenders), then what the agent did (rules, files, last ban). Plain columns, no colour,
//! so it reads the same in a terminal, a mail from cron and a ticket.

use std::io::{self, Write};
use std::time::Duration;

use super::Status;
use crate::duration::Human;

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn remaining(ms: Option<u64>) -> String {
    match ms {
        None => "permanent".into(),
        Some(ms) => Human(Duration::from_secs((ms / 1000).max(1))).to_string(),
    }
}

fn ago(now: u64, then: u64) -> String {
    format!(
        "{} ago",
        Human(Duration::from_secs(now.saturating_sub(then).max(1)))
    )
}

/// Writes the table.
pub fn render(out: &mut impl Write, st: &Status) -> io::Result<()> {
    let state = if !st.present {
        "MISSING".to_string()
    } else if st.protected {
        "present, protected (owned by the agent)".to_string()
    } else {
        "present, not protected (any nftables tool can remove it)".to_string()
    };
    writeln!(out, "table inet {}: {state}", st.table)?;
    for p in &st.problems {
        writeln!(out, "  PROBLEM: {p}")?;
    }
    if !st.present {
        render_agent(out, st)?;
        return Ok(());
    }
    writeln!(
        out,
        "blocked: {} (IPv4 {}, IPv6 {} prefixes/addresses/networks)",
        thousands(st.blocked.total),
        thousands(st.blocked.ipv4),
        thousands(st.blocked.ipv6)
    )?;
    for s in &st.sets {
        let size = s
            .size
            .map(|v| thousands(u64::from(v)))
            .unwrap_or_else(|| "-".into());
        writeln!(out, "  {:<9} {:>11} of {size}", s.set, thousands(s.count))?;
    }
    let totals = st.drops.iter().any(|d| d.packets_total.is_some());
    writeln!(out)?;
    if totals {
        writeln!(
            out,
            "dropped       {:>14} {:>16}   {:>14} {:>16}",
            "packets", "bytes", "packets total", "bytes total"
        )?;
        writeln!(
            out,
            "              {:>31}   {:>31}",
            "(since the rules were installed)", "(kept by the agent across re-installs)"
        )?;
    } else {
        writeln!(
            out,
            "dropped       {:>14} {:>16}   (since the rules were installed)",
            "packets", "bytes"
        )?;
    }
    for d in &st.drops {
        write!(
            out,
            "  {:<8} {:<3} {:>14} {:>16}",
            d.hook.to_string(),
            d.family.to_string(),
            thousands(d.packets),
            thousands(d.bytes)
        )?;
        if let (Some(p), Some(b)) = (d.packets_total, d.bytes_total) {
            write!(out, "   {:>14} {:>16}", thousands(p), thousands(b))?;
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    if st.top.is_empty() {
        writeln!(out, "top offenders: none has dropped a packet yet")?;
    } else {
        writeln!(out, "top offenders by dropped packets:")?;
        writeln!(
            out,
            "  {:<42} {:>12} {:>14} {:>10} {:<16} {:>5}",
            "ADDRESS", "PACKETS", "BYTES", "REMAINING", "RULE", "TIMES"
        )?;
        for o in &st.top {
            writeln!(
                out,
                "  {:<42} {:>12} {:>14} {:>10} {:<16} {:>5}",
                o.target,
                thousands(o.packets),
                thousands(o.bytes),
                remaining(o.expires_ms),
                o.rule.as_deref().unwrap_or("-"),
                o.times_banned
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into())
            )?;
        }
    }
    render_agent(out, st)
}

fn render_agent(out: &mut impl Write, st: &Status) -> io::Result<()> {
    writeln!(out)?;
    let Some(a) = &st.agent else {
        writeln!(
            out,
            "agent: {}",
            st.agent_note.as_deref().unwrap_or("no figures")
        )?;
        return Ok(());
    };
    writeln!(
        out,
        "agent: running{} (pid {}, version {}, up {})",
        if a.dry_run { " in dry-run mode" } else { "" },
        a.pid,
        a.version,
        Human(Duration::from_secs(a.uptime_secs.max(1)))
    )?;
    writeln!(
        out,
        "  bans it holds: {}   re-installs after external changes: {}   kernel errors: {}",
        thousands(a.active_bans as u64),
        a.reinstalls,
        a.kernel_errors
    )?;
    match &a.last_ban {
        Some(b) => writeln!(
            out,
            "  last ban: {} by {} ({})",
            b.target,
            b.rule,
            ago(st.generated_at_unix, b.at_unix)
        )?,
        None => writeln!(out, "  last ban: none since the agent started")?,
    }
    if !a.rules.is_empty() {
        writeln!(out, "  since the agent started:")?;
        writeln!(
            out,
            "    {:<20} {:>10} {:>8} {:>8}",
            "RULE", "HITS", "BANS", "UNBANS"
        )?;
        for r in &a.rules {
            writeln!(
                out,
                "    {:<20} {:>10} {:>8} {:>8}",
                r.name,
                thousands(r.hits),
                thousands(r.bans),
                thousands(r.unbans)
            )?;
        }
    }
    if !a.sources.is_empty() {
        writeln!(out, "  followed files:")?;
        writeln!(
            out,
            "    {:<40} {:>12} {:>14} {:>7}",
            "PATH", "LINES", "POSITION", "ERRORS"
        )?;
        for s in &a.sources {
            writeln!(
                out,
                "    {:<40} {:>12} {:>14} {:>7}",
                s.path,
                thousands(s.lines),
                thousands(s.offset),
                s.errors
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
