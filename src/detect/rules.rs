//! Rules: specification ([`RuleSpec`], plain data from built-ins and the config), compiled
//! form ([`Rule`]) and host extraction from one line.
//!
//! A pattern is a `regex` crate regex (linear time, no backtracking blow-ups) over bytes with
//! Unicode off, so `.` also crosses invalid UTF-8, and `\d`, `\s`, `\w` are ASCII. It must have
//! a named `host` group, or contain the fail2ban-style `<HOST>` placeholder, which expands to
//! `(?P<host>…)` around a strict address character class. The captured text then goes
//! through [`parse_host`] and the [`glued`] boundary check; text that is not exactly one
//! address is reported as [`Extract::BadHost`] and never counted.
//!
//! Order per line: (prefilter, done by the [`Matcher`](super::Matcher)) → ignore regexes →
//! patterns in order, first match wins.

use std::net::IpAddr;
use std::time::Duration;

use memchr::memmem::FinderRev;
use regex::bytes::{Regex, RegexBuilder};

use super::addr::{AddrError, glued, parse_host};
use super::builtin::{self, ADDR};
use super::timestamp::TimestampFormat;

/// A rule as written: built-in defaults, possibly overridden by the config.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub patterns: Vec<String>,
    /// Optional, per pattern index (built-in rules): a cheaper regex that finds the same
    /// `host` once the full pattern is known to match (see [`Rule::extract`]).
    pub locators: Vec<Option<String>>,
    /// Optional, per pattern index (built-in rules): a marker literal. The address written
    /// after its last occurrence, up to the end of the line (optionally in brackets), must be
    /// the same as the pattern's `host`, or the line is not counted.
    pub confirms: Vec<Option<String>>,
    pub ignore: Vec<String>,
    /// Literals; a line must contain at least one before any regex runs. Empty: no prefilter.
    pub prefilter: Vec<String>,
    /// Hits within `find_time` that make an offence (at least 1).
    pub max_hits: u32,
    pub find_time: Duration,
    /// Base ban time (zero: permanent), escalated for repeat offenders.
    pub ban_time: Duration,
    pub timestamp: TimestampFormat,
}

/// Why a rule could not be built. `location` is `FILE:LINE: key rules.NAME.FIELD` when the
/// rule came from a config file.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{location}: rule {rule:?}: invalid regex #{index}")]
    Regex {
        location: String,
        rule: String,
        index: usize,
        #[source]
        source: Box<regex::Error>,
    },
    #[error(
        "{location}: rule {rule:?}: pattern #{index} has no `host` capture (write (?P<host>...) or <HOST>)"
    )]
    NoHost {
        location: String,
        rule: String,
        index: usize,
    },
    #[error("{location}: rule {rule:?} is not a built-in rule and has no patterns")]
    NoPatterns { location: String, rule: String },
    #[error("{location}: unknown rule {rule:?} (built-in rules: {known})")]
    Unknown {
        location: String,
        rule: String,
        known: String,
    },
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    patterns: Vec<Pattern>,
    ignore: Vec<Regex>,
    pub prefilter: Vec<String>,
    pub max_hits: u32,
    pub find_time: Duration,
    pub ban_time: Duration,
    pub timestamp: TimestampFormat,
}

/// One compiled pattern: the full regex and, optionally, a host locator and a trailer.
#[derive(Debug, Clone)]
struct Pattern {
    full: Regex,
    /// Index of the `host` group in `full`.
    full_host: usize,
    /// A locator and the index of its `host` group.
    locate: Option<(Regex, usize)>,
    /// Finds the marker before the trailing address ([`RuleSpec::confirms`]).
    confirm: Option<FinderRev<'static>>,
}

/// Index of the capture group named `host`.
fn host_group(re: &Regex) -> Option<usize> {
    re.capture_names().position(|n| n == Some("host"))
}

/// The address after the last `marker` in `line`, up to the line's end, optionally in
/// brackets; `None` when there is no marker or the rest is not exactly one address.
fn trailing_address(line: &[u8], marker: &FinderRev<'_>) -> Option<IpAddr> {
    let at = marker.rfind(line)? + marker.needle().len();
    let rest = &line[at..];
    let rest = rest.strip_prefix(b"[").unwrap_or(rest);
    let rest = rest.strip_suffix(b"]").unwrap_or(rest);
    parse_host(rest).ok()
}

/// What a rule makes of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// No pattern matched.
    NoMatch,
    /// An ignore regex matched.
    Ignored,
    /// A pattern matched and captured a valid address.
    Host(IpAddr),
    /// A pattern matched but the capture is not exactly one address.
    BadHost(AddrError),
}

/// Expands `<HOST>` to a named capture around the strict address class.
pub fn expand_host(pattern: &str) -> String {
    pattern.replace("<HOST>", &format!("(?P<host>{ADDR})"))
}

fn compile_one(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&expand_host(pattern))
        .unicode(false)
        // Generous but bounded: a hostile config cannot make us build a huge automaton.
        .size_limit(8 << 20)
        .dfa_size_limit(8 << 20)
        .build()
}

impl Rule {
    /// Compiles a specification. `location` prefixes error messages (`FILE:LINE: key ...`).
    pub fn compile(spec: &RuleSpec, location: &dyn Fn(&str) -> String) -> Result<Rule, RuleError> {
        if spec.patterns.is_empty() {
            return Err(RuleError::NoPatterns {
                location: location("patterns"),
                rule: spec.name.clone(),
            });
        }
        let mut patterns = Vec::with_capacity(spec.patterns.len());
        for (index, p) in spec.patterns.iter().enumerate() {
            let re = compile_one(p).map_err(|e| RuleError::Regex {
                location: location("patterns"),
                rule: spec.name.clone(),
                index: index + 1,
                source: Box::new(e),
            })?;
            let locate = match spec.locators.get(index) {
                Some(Some(l)) => Some(compile_one(l).map_err(|e| RuleError::Regex {
                    location: location("patterns"),
                    rule: spec.name.clone(),
                    index: index + 1,
                    source: Box::new(e),
                })?),
                _ => None,
            };
            let confirm = match spec.confirms.get(index) {
                Some(Some(marker)) if !marker.is_empty() => {
                    Some(FinderRev::new(marker.as_bytes()).into_owned())
                }
                _ => None,
            };
            let no_host = || RuleError::NoHost {
                location: location("patterns"),
                rule: spec.name.clone(),
                index: index + 1,
            };
            let full_host = host_group(&re).ok_or_else(no_host)?;
            let locate = match locate {
                Some(l) => {
                    let host = host_group(&l).ok_or_else(no_host)?;
                    Some((l, host))
                }
                None => None,
            };
            patterns.push(Pattern {
                full: re,
                full_host,
                locate,
                confirm,
            });
        }
        let mut ignore = Vec::with_capacity(spec.ignore.len());
        for (index, p) in spec.ignore.iter().enumerate() {
            ignore.push(compile_one(p).map_err(|e| RuleError::Regex {
                location: location("ignore"),
                rule: spec.name.clone(),
                index: index + 1,
                source: Box::new(e),
            })?);
        }
        Ok(Rule {
            name: spec.name.clone(),
            patterns,
            ignore,
            prefilter: spec
                .prefilter
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            max_hits: spec.max_hits.max(1),
            find_time: spec.find_time,
            ban_time: spec.ban_time,
            timestamp: spec.timestamp,
        })
    }

    /// A built-in rule with its defaults.
    pub fn builtin(name: &str) -> Option<Rule> {
        let spec = builtin::builtin(name)?;
        // Built-in patterns are tested to compile; a failure here is a bug, reported as None.
        Rule::compile(&spec, &|_| "<built-in>".into()).ok()
    }

    /// True when the line passes this rule's literal prefilter (or it has none).
    pub fn prefilter_passes(&self, line: &[u8]) -> bool {
        self.prefilter.is_empty()
            || self
                .prefilter
                .iter()
                .any(|lit| memchr::memmem::find(line, lit.as_bytes()).is_some())
    }

    /// Applies ignore regexes and patterns to one line (the prefilter is the caller's job).
    ///
    /// Capturing runs a slower engine than matching, over the whole match. Built-in patterns
    /// that anchor a `.*` against the line end would pay that on every matched line, so they
    /// come with a locator: the full pattern only answers "does it match" (lazy DFA), then the
    /// locator, a short pattern ending the same way (same `$` anchor and trailing classes, so
    /// it can only land on the same address), captures the host.
    pub fn extract(&self, line: &[u8]) -> Extract {
        // `sshd -E` ends its lines with CRLF; `$` anchors must see the message end.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.ignore.iter().any(|re| re.is_match(line)) {
            return Extract::Ignored;
        }
        for p in &self.patterns {
            let (caps, host) = match &p.locate {
                None => (p.full.captures(line), p.full_host),
                Some((loc, host)) if p.full.is_match(line) => (loc.captures(line), *host),
                Some(_) => (None, 0),
            };
            let Some(caps) = caps else {
                continue;
            };
            let Some(m) = caps.get(host) else {
                // An optional host group that did not take part: try the next pattern.
                continue;
            };
            let ip = match parse_host(m.as_bytes()) {
                Ok(ip) if glued(line, m.start(), m.end(), ip.is_ipv6()) => {
                    return Extract::BadHost(AddrError::Glued);
                }
                Ok(ip) => ip,
                Err(e) => return Extract::BadHost(e),
            };
            if let Some(marker) = &p.confirm
                && trailing_address(line, marker) != Some(ip)
            {
                return Extract::BadHost(AddrError::Mismatch);
            }
            return Extract::Host(ip);
        }
        Extract::NoMatch
    }
}

/// Compiled built-in rules, all of them, in [`builtin::NAMES`] order.
pub fn builtins() -> Vec<Rule> {
    builtin::NAMES
        .iter()
        .filter_map(|n| Rule::builtin(n))
        .collect()
}

/// Merges the config's `[rules.NAME]` tables over the built-in rules and compiles every
/// enabled rule: built-ins first (in their order), then custom rules by name. A bad regex is
/// reported with `FILE:LINE: key rules.NAME.patterns`.
pub fn build(cfg: &crate::config::Config) -> Result<Vec<Rule>, RuleError> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = builtin::NAMES.to_vec();
    names.extend(
        cfg.rules
            .keys()
            .map(String::as_str)
            .filter(|n| !builtin::NAMES.contains(n)),
    );
    for name in names {
        let over = cfg.rules.get(name);
        let location = |field: &str| cfg.locate(&["rules", name, field]);
        let mut spec = match builtin::builtin(name) {
            Some(s) => s,
            None => {
                let Some(patterns) = over.and_then(|o| o.patterns.clone()) else {
                    return Err(RuleError::NoPatterns {
                        location: location("patterns"),
                        rule: name.to_string(),
                    });
                };
                RuleSpec {
                    name: name.to_string(),
                    patterns,
                    locators: Vec::new(),
                    confirms: Vec::new(),
                    ignore: Vec::new(),
                    prefilter: Vec::new(),
                    max_hits: 5,
                    find_time: Duration::from_secs(600),
                    ban_time: cfg.ban.time,
                    timestamp: TimestampFormat::Auto,
                }
            }
        };
        if let Some(o) = over {
            if o.enabled == Some(false) {
                continue;
            }
            if let Some(p) = &o.patterns {
                spec.patterns = p.clone();
                spec.locators.clear();
                spec.confirms.clear();
                // New patterns make the built-in prefilter meaningless unless restated.
                if o.prefilter.is_none() {
                    spec.prefilter.clear();
                }
            }
            if let Some(v) = &o.ignore {
                spec.ignore = v.clone();
            }
            if let Some(v) = &o.prefilter {
                spec.prefilter = v.clone();
            }
            if let Some(v) = o.max_hits {
                spec.max_hits = v;
            }
            if let Some(v) = o.find_time {
                spec.find_time = v;
            }
            if let Some(v) = o.ban_time {
                spec.ban_time = v;
            }
            if let Some(v) = o.timestamp {
                spec.timestamp = v.into();
            }
        }
        out.push(Rule::compile(&spec, &location)?);
    }
    Ok(out)
}

/// Checks that every rule a source names exists.
pub fn check_names(cfg: &crate::config::Config, rules: &[Rule]) -> Result<(), RuleError> {
    for (i, src) in cfg.sources.iter().enumerate() {
        for name in &src.rules {
            if !rules.iter().any(|r| &r.name == name) {
                let idx = i.to_string();
                return Err(RuleError::Unknown {
                    location: cfg.locate(&["source", &idx, "rules"]),
                    rule: name.clone(),
                    known: builtin::NAMES.join(", "),
                });
            }
        }
    }
    Ok(())
}

impl From<crate::config::TimestampFormat> for TimestampFormat {
    fn from(f: crate::config::TimestampFormat) -> Self {
        use crate::config::TimestampFormat as C;
        match f {
            C::Exim => TimestampFormat::Exim,
            C::Syslog => TimestampFormat::Syslog,
            C::Rfc3339 => TimestampFormat::Rfc3339,
            C::None => TimestampFormat::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_compiles_with_a_prefilter() {
        let rules = builtins();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, builtin::NAMES);
        assert!(rules.iter().all(|r| !r.prefilter.is_empty()));
        assert_eq!(builtin::DEFAULT_RULE, "exim-ratelimit");
        let d = &rules[0];
        assert_eq!(
            (d.max_hits, d.find_time.as_secs(), d.ban_time.as_secs()),
            (3, 3600, 86_400)
        );
        for r in &rules[1..] {
            assert_eq!(
                (r.max_hits, r.find_time.as_secs(), r.ban_time.as_secs()),
                (5, 600, 3600)
            );
        }
    }

    #[test]
    fn host_placeholder_and_errors() {
        let spec = |p: &str| RuleSpec {
            name: "t".into(),
            patterns: vec![p.into()],
            locators: vec![],
            confirms: vec![],
            ignore: vec![r"from 198\.51\.100\.1 ".into()],
            prefilter: vec![],
            max_hits: 1,
            find_time: Duration::from_secs(60),
            ban_time: Duration::from_secs(60),
            timestamp: TimestampFormat::None,
        };
        let loc = |k: &str| format!("f.toml:7: key rules.t.{k}");
        let r = Rule::compile(&spec("login failed from <HOST> "), &loc).unwrap();
        assert_eq!(
            r.extract(b"login failed from 2001:db8::5 x"),
            Extract::Host("2001:db8::5".parse().unwrap())
        );
        assert_eq!(
            r.extract(b"login failed from 198.51.100.1 x"),
            Extract::Ignored
        );
        assert_eq!(r.extract(b"login ok from 198.51.100.2 x"), Extract::NoMatch);
        let e = Rule::compile(&spec("from (<HOST>"), &loc).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f.toml:7: key rules.t.patterns: rule \"t\": invalid regex #1"),
            "{e}"
        );
        let e = Rule::compile(&spec(r"from (\S+)"), &loc).unwrap_err();
        assert!(e.to_string().contains("no `host` capture"), "{e}");
    }
}
