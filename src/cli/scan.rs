//! `fwagent scan FILE... [--rule NAME] [--config FILE] [--json]`: the detector over files,
//! like `fail2ban-regex`, without touching the kernel.
//!
//! Rules: `--rule` names (repeatable) pick rules; `--config` takes rules, overrides, the
//! allow-list, IPv6 prefix and escalation from a config file; with neither, every built-in
//! rule runs and each line is tried by every rule whose prefilter literal it contains.
//! Local interface addresses are not consulted (scan looks at files, not at this host).
//!
//! Time: each matched line's time is read with its rule's timestamp format; a line without one
//! takes the last time read in that file, or the scan's start time (`sshd -E` files).
//!
//! Reading: 256 KiB reads (small enough that the newline count and the prefilter pass both find
//! the buffer still in L2 cache); newlines are counted with memchr over the whole buffer, and
//! when every rule has a prefilter, the Aho-Corasick prefilter also runs over the whole buffer,
//! so only the lines around a literal hit are cut out and looked at. A line longer than the
//! buffer is examined by its first 256 KiB and counted once; invalid UTF-8 is just bytes.
//!
//! "hits" of an offender counts the hits in the window that led to its first ban, plus every
//! later matching line (exact totals for every address seen would cost memory proportional to
//! the number of distinct addresses).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::Config;
use crate::detect::{
    Detector, Extract, Key, LocalAddrs, Matcher, NeverBan, Observation, RuleId, TimeReader, rules,
};

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Log files to read.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Run only this rule (repeatable). Default: every built-in rule (or every rule of --config).
    #[arg(long = "rule", value_name = "NAME")]
    rules: Vec<String>,
    /// Take rules, allow-list and limits from this config file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Read size (see the module docs).
const CHUNK: usize = 256 << 10;
/// Longest line examined; longer lines are cut here.
const MAX_LINE: usize = CHUNK;

/// Per-rule counters.
#[derive(Debug, Default, Clone, Serialize)]
struct RuleStats {
    rule: String,
    lines: u64,
    /// Lines that passed the prefilter and were given to the regexes.
    candidates: u64,
    /// Lines a pattern matched with a valid, countable address.
    matched: u64,
    ignored: u64,
    /// Matched, but the captured host was not exactly one address.
    invalid: u64,
    /// Matched a never-ban address (loopback, allow-list, ...).
    protected: u64,
    offenders: u64,
}

#[derive(Debug, Clone, Serialize)]
struct OffenderOut {
    address: String,
    rule: String,
    hits: u64,
    bans: u32,
    /// Ban time of the last ban, seconds (0: permanent).
    ban_time: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    files: Vec<String>,
    lines: u64,
    bytes: u64,
    seconds: f64,
    lines_per_second: f64,
    rules: Vec<RuleStats>,
    offenders: Vec<OffenderOut>,
}

#[derive(Debug, Default)]
struct OffenderStat {
    hits: u64,
    bans: u32,
    ban_time: Duration,
}

/// The scan run: detector plus counters.
struct Scan {
    det: Detector,
    matcher: Matcher,
    stats: Vec<RuleStats>,
    offenders: HashMap<(RuleId, Key), OffenderStat>,
    start: SystemTime,
    ids: Vec<RuleId>,
    lines: u64,
    bytes: u64,
}

pub fn scan(args: ScanArgs) -> Result<ExitCode> {
    let det = build_detector(&args)?;
    // Check every file up front, so a typo fails before minutes of scanning.
    for f in &args.files {
        std::fs::metadata(f).with_context(|| format!("{}: cannot read", f.display()))?;
    }
    let wanted: Vec<String> = if args.rules.is_empty() {
        det.rules().iter().map(|r| r.name.clone()).collect()
    } else {
        args.rules.clone()
    };
    let matcher = det.matcher(&wanted);
    let stats = det
        .rules()
        .iter()
        .map(|r| RuleStats {
            rule: r.name.clone(),
            ..Default::default()
        })
        .collect();
    let mut run = Scan {
        det,
        matcher,
        stats,
        offenders: HashMap::new(),
        start: SystemTime::now(),
        ids: Vec::new(),
        lines: 0,
        bytes: 0,
    };
    let t0 = Instant::now();
    for f in &args.files {
        run.file(f)
            .with_context(|| format!("{}: reading", f.display()))?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let report = run.report(&args.files, &wanted, elapsed);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn build_detector(args: &ScanArgs) -> Result<Detector> {
    let det = match &args.config {
        Some(path) => {
            let cfg = Config::load(Some(path))?;
            Detector::from_config(&cfg, LocalAddrs::new())?
        }
        None => Detector::new(rules::builtins(), NeverBan::default()),
    };
    for name in &args.rules {
        if det.rule_id(name).is_none() {
            let known: Vec<&str> = det.rules().iter().map(|r| r.name.as_str()).collect();
            bail!("unknown rule {name:?} (known: {})", known.join(", "));
        }
    }
    Ok(det)
}

impl Scan {
    fn file(&mut self, path: &Path) -> Result<()> {
        let mut f = File::open(path)?;
        // Syslog lines have no year: the file's modification time anchors it.
        let mtime = f
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(self.start);
        let mut times = FileTimes {
            reader: TimeReader::new(mtime),
            last: None,
            fallback: self.start,
        };
        let mut buf = vec![0u8; CHUNK];
        // buf[..filled] is not yet examined: the incomplete last line of the previous read,
        // carried to the front, followed by newly read bytes.
        let mut filled = 0usize;
        // True while skipping the rest of an over-long line.
        let mut skipping = false;
        loop {
            let n = read_full(&mut f, &mut buf[filled..])?;
            let eof = n == 0;
            filled += n;
            self.bytes += n as u64;
            let data = &buf[..filled];
            // Complete lines end at the last newline; at EOF the remainder is a line too.
            let end = match memchr::memrchr(b'\n', data) {
                Some(i) => i + 1,
                None if eof => filled,
                None if filled == buf.len() => {
                    // One line fills the whole buffer: examine its head, skip the rest.
                    if !skipping {
                        let head = &data[..MAX_LINE.min(filled)];
                        self.lines += 1;
                        self.line(head, &mut times, false);
                    }
                    skipping = true;
                    filled = 0;
                    continue;
                }
                None => continue,
            };
            let mut region = &data[..end];
            if skipping {
                // The tail of an over-long line, already counted.
                let nl = memchr::memchr(b'\n', region).map_or(region.len(), |i| i + 1);
                region = &region[nl..];
                skipping = false;
            }
            self.region(region, &mut times);
            // Carry the incomplete tail to the front for the next read.
            buf.copy_within(end..filled, 0);
            filled -= end;
            if eof {
                break;
            }
        }
        Ok(())
    }

    /// Complete lines (each ending in `\n`, except possibly the last at EOF).
    fn region(&mut self, region: &[u8], times: &mut FileTimes) {
        let newlines = memchr::memchr_iter(b'\n', region).count() as u64;
        let unterminated = u64::from(region.last().is_some_and(|&b| b != b'\n'));
        self.lines += newlines + unterminated;
        if self.matcher.filters_every_line() {
            // Bulk path: only lines around a prefilter hit are cut out.
            let mut pos = 0;
            while let Some(hit) = self.matcher.next_hit(region, pos) {
                let start = memchr::memrchr(b'\n', &region[..hit]).map_or(0, |i| i + 1);
                let end = memchr::memchr(b'\n', &region[hit..]).map_or(region.len(), |i| hit + i);
                self.line(&region[start..end], times, true);
                pos = end + 1;
                if pos >= region.len() {
                    break;
                }
            }
        } else {
            for line in region.split(|&b| b == b'\n') {
                if !line.is_empty() {
                    self.line(line, times, false);
                }
            }
        }
    }

    /// One line; `hit` when the bulk prefilter already found a literal in it.
    fn line(&mut self, line: &[u8], times: &mut FileTimes, hit: bool) {
        let line = &line[..line.len().min(MAX_LINE)];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut ids = std::mem::take(&mut self.ids);
        if hit {
            self.matcher.candidates_after_hit(line, &mut ids);
        } else {
            self.matcher.candidates(line, &mut ids);
        }
        for &id in &ids {
            let rule = &self.det.rules()[id];
            let stats = &mut self.stats[id];
            stats.candidates += 1;
            let ip = match rule.extract(line) {
                Extract::NoMatch => continue,
                Extract::Ignored => {
                    stats.ignored += 1;
                    continue;
                }
                Extract::BadHost(_) => {
                    stats.invalid += 1;
                    continue;
                }
                Extract::Host(ip) => ip,
            };
            let now = times.at(rule.timestamp, line);
            match self.det.count(id, ip, now) {
                Observation::Protected(_) => self.stats[id].protected += 1,
                Observation::Counted { key, .. } => {
                    self.stats[id].matched += 1;
                    if let Some(o) = self.offenders.get_mut(&(id, key)) {
                        o.hits += 1;
                    }
                }
                // A line from an address banned at that moment: the firewall would have
                // dropped it; it adds to the address's hits, never to a new ban.
                Observation::Banned { key, .. } => {
                    self.stats[id].matched += 1;
                    if let Some(o) = self.offenders.get_mut(&(id, key)) {
                        o.hits += 1;
                    }
                }
                Observation::Offence(off) => {
                    self.stats[id].matched += 1;
                    let o = self.offenders.entry((id, off.key)).or_default();
                    // First ban: the hits of its window; later: this one line.
                    o.hits += if o.bans == 0 { u64::from(off.hits) } else { 1 };
                    o.bans += 1;
                    o.ban_time = off.ban_time;
                }
                _ => {}
            }
        }
        self.ids = ids;
    }

    fn report(&self, files: &[PathBuf], wanted: &[String], seconds: f64) -> Report {
        let mut rules: Vec<RuleStats> = self
            .stats
            .iter()
            .filter(|s| wanted.contains(&s.rule))
            .cloned()
            .collect();
        for s in &mut rules {
            s.lines = self.lines;
            s.offenders = self
                .offenders
                .keys()
                .filter(|(id, _)| self.det.rules()[*id].name == s.rule)
                .count() as u64;
        }
        let mut offenders: Vec<(RuleId, Key, &OffenderStat)> = self
            .offenders
            .iter()
            .map(|((r, k), o)| (*r, *k, o))
            .collect();
        offenders.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.2.hits.cmp(&a.2.hits))
                .then(a.1.cmp(&b.1))
        });
        Report {
            files: files.iter().map(|f| f.display().to_string()).collect(),
            lines: self.lines,
            bytes: self.bytes,
            seconds,
            lines_per_second: if seconds > 0.0 {
                self.lines as f64 / seconds
            } else {
                0.0
            },
            rules,
            offenders: offenders
                .into_iter()
                .map(|(r, k, o)| OffenderOut {
                    address: k.to_string(),
                    rule: self.det.rules()[r].name.clone(),
                    hits: o.hits,
                    bans: o.bans,
                    ban_time: o.ban_time.as_secs(),
                })
                .collect(),
        }
    }
}

/// Event times of one file.
struct FileTimes {
    reader: TimeReader,
    last: Option<SystemTime>,
    fallback: SystemTime,
}

impl FileTimes {
    fn at(&mut self, format: crate::detect::TimestampFormat, line: &[u8]) -> SystemTime {
        match self.reader.read(format, line) {
            Some(t) => {
                self.last = Some(t);
                t
            }
            None => self.last.unwrap_or(self.fallback),
        }
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read (0 only at EOF).
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn print_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "Scanned {} lines ({:.1} MB) in {} file(s) in {:.3} s: {:.0} lines/s",
        r.lines,
        r.bytes as f64 / 1e6,
        r.files.len(),
        r.seconds,
        r.lines_per_second
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
        "rule", "lines", "matched", "ignored", "invalid", "protected", "offenders"
    )?;
    for s in &r.rules {
        writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
            s.rule, s.lines, s.matched, s.ignored, s.invalid, s.protected, s.offenders
        )?;
    }
    writeln!(out)?;
    if r.offenders.is_empty() {
        writeln!(out, "No offender reached a threshold.")?;
        return Ok(());
    }
    writeln!(out, "Offenders that would be banned:")?;
    for o in &r.offenders {
        let ban = crate::duration::Human(Duration::from_secs(o.ban_time));
        writeln!(
            out,
            "  {:<16} {:<40} {:>6} hits {:>4} ban(s), last for {}",
            o.rule, o.address, o.hits, o.bans, ban
        )?;
    }
    Ok(())
}
