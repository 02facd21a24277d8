//! The TOML configuration: its schema, the embedded default, loading and validation.
//!
//! Every error names the file, the line and the key (`/etc/fwagent/fwagent.toml:12: key
//! firewall.ipv6_prefix: must be between 48 and 128`). Values are checked here once, so the
//! rest of the program can trust them. The embedded default does the classic job: follow
//! Exim's mainlog and ban after 3 `Rate limited` lines within an hour, for 24 hours.
//!
//! Order of lookup: `--config FILE` (must exist) → `/etc/fwagent/fwagent.toml` if it exists →
//! the embedded default ([`DEFAULT_TOML`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Where the agent and the CLI look for their configuration when not told.
pub const DEFAULT_PATH: &str = "/etc/fwagent/fwagent.toml";

/// The configuration used when no file exists. Every value equals the serde defaults below;
/// a test keeps the two in step.
pub const DEFAULT_TOML: &str = r#"# fwagent embedded default configuration
[firewall]
table = "fwagent"
set_size = 1048576
ipv6_prefix = 64
priority = -10
protect = true

[ban]
time = "24h"
allow = []
max_tracked = 100000

[escalation]
factor = 2.0
max_time = "30d"
history = "30d"

[[source]]
path = "/var/log/exim4/mainlog"
rules = ["exim-ratelimit"]

[state]
dir = "/var/lib/fwagent"
run_dir = "/run/fwagent"

[web]
enabled = true
listen = "127.0.0.1:9180"
refresh = "30s"
"#;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub firewall: Firewall,
    pub ban: Ban,
    pub escalation: Escalation,
    /// `[[source]]` tables: files to follow and the rules applied to each.
    #[serde(rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// `[rules.NAME]`: overrides of built-in rules, or custom rules.
    pub rules: BTreeMap<String, RuleConfig>,
    pub state: State,
    pub web: Web,
    /// Where the values came from, for error messages. Not part of the file.
    #[serde(skip)]
    origin: Origin,
}

/// The kernel objects (`[firewall]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Firewall {
    /// Name of our own `inet` table.
    pub table: String,
    /// Maximum elements per ban set (the kernel's implicit cap is 65,535).
    pub set_size: u32,
    /// IPv6 offenders are banned by this prefix length (48..=128).
    pub ipv6_prefix: u8,
    /// Hook priority of our input/forward chains; below 0 runs before the usual filter chains.
    pub priority: i32,
    /// Let the long-running agent own the table (owner + persist flags) where the kernel
    /// supports both, so other tools' `nft flush ruleset` cannot remove it.
    pub protect: bool,
}

/// Ban policy (`[ban]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ban {
    /// Default ban time for `fwagent ban` and for rules without their own.
    #[serde(with = "dur")]
    pub time: Duration,
    /// Addresses and networks that are never banned.
    #[serde(with = "nets")]
    pub allow: Vec<IpNet>,
    /// How many candidate addresses the detector tracks at most (oldest evicted first).
    pub max_tracked: usize,
}

/// Longer bans for repeat offenders (`[escalation]`). `factor = 1` switches it off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Escalation {
    /// Each repeat ban lasts `factor` times the previous one.
    pub factor: f64,
    /// Upper bound of an escalated ban.
    #[serde(with = "dur")]
    pub max_time: Duration,
    /// How long an address's offence history is remembered.
    #[serde(with = "dur")]
    pub history: Duration,
}

/// One followed file (`[[source]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub path: PathBuf,
    pub rules: Vec<String>,
}

/// How a rule reads event time from its lines (used by `scan` on old files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampFormat {
    /// `YYYY-MM-DD HH:MM:SS[.mmm]` (Exim mainlog).
    Exim,
    /// `Mmm dd HH:MM:SS`, no year (traditional syslog).
    Syslog,
    /// RFC 3339 with zone (rsyslog's default on Debian 12).
    Rfc3339,
    /// No timestamp in the line: use arrival time.
    None,
}

/// `[rules.NAME]`. For a built-in name every field is an optional override; a new name
/// defines a custom rule, for which `patterns` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Regexes with a named `host` capture or the `<HOST>` placeholder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patterns: Option<Vec<String>>,
    /// Lines matching any of these are never counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Literal strings; a line must contain one of them before any regex runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hits: Option<u32>,
    #[serde(with = "opt_dur", default, skip_serializing_if = "Option::is_none")]
    pub find_time: Option<Duration>,
    #[serde(with = "opt_dur", default, skip_serializing_if = "Option::is_none")]
    pub ban_time: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimestampFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Where state and the control socket live (`[state]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct State {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
}

/// The dashboard and metrics endpoint (`[web]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// How often the page refreshes itself.
    #[serde(with = "dur")]
    pub refresh: Duration,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall {
            table: "fwagent".into(),
            set_size: 1_048_576,
            ipv6_prefix: 64,
            priority: -10,
            protect: true,
        }
    }
}

impl Default for Ban {
    fn default() -> Self {
        Ban {
            time: Duration::from_secs(24 * 3600),
            allow: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            factor: 2.0,
            max_time: Duration::from_secs(30 * 86_400),
            history: Duration::from_secs(30 * 86_400),
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: "/var/lib/fwagent".into(),
            run_dir: "/run/fwagent".into(),
        }
    }
}

impl Default for Web {
    fn default() -> Self {
        Web {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            refresh: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            firewall: Firewall::default(),
            ban: Ban::default(),
            escalation: Escalation::default(),
            sources: vec![SourceConfig {
                path: "/var/log/exim4/mainlog".into(),
                rules: vec!["exim-ratelimit".into()],
            }],
            rules: BTreeMap::new(),
            state: State::default(),
            web: Web::default(),
            origin: Origin::default(),
        }
    }
}

/// A configuration error: file, line (when known), key (when known) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}{hint}", path.display())]
    Read {
        path: PathBuf,
        /// Advice for a common cause, or empty.
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

/// serde names Rust types in its messages (`expected usize`); an admin reads numbers.
fn plain_types(message: &str) -> String {
    let mut m = message.to_string();
    for ty in ["usize", "u64", "u32", "u16", "u8", "i64", "i32"] {
        m = m.replace(&format!("expected {ty}"), "expected a whole number");
    }
    m.replace("expected f64", "expected a number")
}

/// The text and path the configuration was read from; used to locate keys for messages.
#[derive(Debug, Clone, Default, PartialEq)]
struct Origin {
    path: Option<PathBuf>,
    text: String,
}

impl Config {
    /// Loads the configuration: `path` if given (it must exist), else [`DEFAULT_PATH`] if it
    /// exists, else the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Config::parse(DEFAULT_TOML, None),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            // The unit runs the agent as an unprivileged user (DynamicUser).
            hint: if source.kind() == std::io::ErrorKind::PermissionDenied {
                " (the service runs as an unprivileged user and must read it: chmod 0644)"
            } else {
                ""
            },
            source,
        })?;
        Config::parse(&text, Some(&path))
    }

    /// Parses and validates configuration text. `path` is only used in messages.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let origin = Origin {
            path: path.map(Path::to_path_buf),
            text: text.to_string(),
        };
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let message = plain_types(e.message().trim_end());
            let location = match e.span() {
                Some(span) => origin.describe_span(span),
                None => origin.file_name(),
            };
            ConfigError::Invalid { location, message }
        })?;
        cfg.origin = origin;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `FILE:LINE: key a.b.c` for a key path, for messages about values that parsed but are
    /// wrong (a bad regex, an unknown rule name). Falls back to the file name alone.
    pub fn locate(&self, key: &[&str]) -> String {
        self.origin.locate(key)
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    fn invalid(&self, key: &[&str], message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.locate(key),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fw = &self.firewall;
        if !is_nft_name(&fw.table) {
            return Err(self.invalid(
                &["firewall", "table"],
                format!(
                    "{:?} is not a valid nftables table name (a letter, then letters, digits or _; at most 64)",
                    fw.table
                ),
            ));
        }
        if fw.set_size == 0 {
            return Err(self.invalid(&["firewall", "set_size"], "must be at least 1"));
        }
        if !(48..=128).contains(&fw.ipv6_prefix) {
            return Err(self.invalid(
                &["firewall", "ipv6_prefix"],
                format!(
                    "{} is out of range: must be between 48 and 128",
                    fw.ipv6_prefix
                ),
            ));
        }
        if !(-400..=400).contains(&fw.priority) {
            return Err(self.invalid(&["firewall", "priority"], "must be between -400 and 400"));
        }
        if !(self.escalation.factor >= 1.0 && self.escalation.factor <= 1000.0) {
            return Err(self.invalid(
                &["escalation", "factor"],
                "must be between 1 (no escalation) and 1000",
            ));
        }
        if self.ban.max_tracked == 0 {
            return Err(self.invalid(&["ban", "max_tracked"], "must be at least 1"));
        }
        if self.web.refresh < Duration::from_secs(1) {
            return Err(self.invalid(&["web", "refresh"], "must be at least 1s"));
        }
        for (i, src) in self.sources.iter().enumerate() {
            if src.path.as_os_str().is_empty() {
                return Err(self.invalid_source(i, "path", "must not be empty"));
            }
            if src.rules.is_empty() {
                return Err(self.invalid_source(i, "rules", "names no rule"));
            }
        }
        for (name, rule) in &self.rules {
            let key = |k: &'static str| ["rules", name.as_str(), k];
            if rule.max_hits == Some(0) {
                return Err(self.invalid(&key("max_hits"), "must be at least 1"));
            }
            if rule.patterns.as_ref().is_some_and(|p| p.is_empty()) {
                return Err(self.invalid(&key("patterns"), "must hold at least one regex"));
            }
        }
        Ok(())
    }

    fn invalid_source(&self, index: usize, field: &str, message: &str) -> ConfigError {
        let idx = index.to_string();
        ConfigError::Invalid {
            location: self.locate(&["source", &idx, field]),
            message: message.into(),
        }
    }
}

/// nftables object names: keep to a conservative, shell- and JSON-safe subset.
fn is_nft_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Origin {
    fn file_name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "<embedded default config>".into(),
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Message location for a serde error's span: the line, and the innermost key whose
    /// key or value covers the span.
    fn describe_span(&self, span: Range<usize>) -> String {
        let line = self.line_of(span.start);
        match toml::de::DeTable::parse(&self.text) {
            Ok(doc) => {
                let mut path = Vec::new();
                if !key_at(doc.get_ref(), &span, &mut path) {
                    path.clear();
                }
                if path.is_empty() {
                    format!("{}:{line}", self.file_name())
                } else {
                    format!("{}:{line}: key {}", self.file_name(), path.join("."))
                }
            }
            Err(_) => format!("{}:{line}", self.file_name()),
        }
    }

    fn locate(&self, key: &[&str]) -> String {
        let dotted = key.join(".");
        let Ok(doc) = toml::de::DeTable::parse(&self.text) else {
            return format!("{}: key {dotted}", self.file_name());
        };
        // Walk as deep as the document goes; report the deepest position found.
        let mut table = doc.get_ref();
        let mut pos: Option<usize> = None;
        let mut value: Option<&toml::de::DeValue> = None;
        for part in key {
            let next = match value {
                None => table.get(*part),
                Some(v) => match (v.as_table(), v.as_array(), part.parse::<usize>()) {
                    (Some(t), _, _) => t.get(*part),
                    (_, Some(a), Ok(i)) => a.get(i),
                    _ => None,
                },
            };
            let Some(next) = next else { break };
            pos = Some(next.span().start);
            if let Some(t) = next.get_ref().as_table() {
                table = t;
            }
            value = Some(next.get_ref());
        }
        match pos {
            Some(p) => format!("{}:{}: key {dotted}", self.file_name(), self.line_of(p)),
            None => format!("{}: key {dotted}", self.file_name()),
        }
    }
}

/// Finds the innermost key path whose key or value span covers `span`. Tables are always
/// searched: a `[table]` header's span does not cover the keys below it.
fn key_at(table: &toml::de::DeTable, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    let covers = |r: Range<usize>| r.start <= span.start && span.start < r.end.max(r.start + 1);
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        if covers(k.span()) || descend(v, span, path, &covers) {
            return true;
        }
        path.pop();
    }
    false
}

fn descend(
    value: &toml::Spanned<toml::de::DeValue>,
    span: &Range<usize>,
    path: &mut Vec<String>,
    covers: &dyn Fn(Range<usize>) -> bool,
) -> bool {
    if let Some(t) = value.get_ref().as_table() {
        return key_at(t, span, path) || covers(value.span());
    }
    if let Some(a) = value.get_ref().as_array() {
        for (i, item) in a.iter().enumerate() {
            path.push(i.to_string());
            if descend(item, span, path, covers) {
                return true;
            }
            path.pop();
        }
    }
    covers(value.span())
}

/// Serde for durations written as `24h`, `30m`, `permanent`.
mod dur {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::duration::exact(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

mod opt_dur {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::dur::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::dur::deserialize(d).map(Some)
    }
}

/// Serde for allow-lists: `"203.0.113.7"` (a host) or `"203.0.113.0/24"`.
mod nets {
    use super::*;

    pub fn serialize<S: serde::Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        items
            .iter()
            .map(|s| parse_net(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// Parses `ADDR` or `ADDR/LEN` strictly (no leading zeros, no host bits outside the prefix).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or network"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_equals_serde_defaults() {
        let parsed = Config::parse(DEFAULT_TOML, None).unwrap();
        let expected = Config {
            origin: parsed.origin.clone(),
            ..Config::default()
        };
        assert_eq!(parsed, expected);
        assert_eq!(parsed.sources[0].path, Path::new("/var/log/exim4/mainlog"));
        assert_eq!(parsed.ban.time, Duration::from_secs(86_400));
    }

    #[test]
    fn empty_file_is_the_default() {
        let cfg = Config::parse("", None).unwrap();
        assert_eq!(cfg.firewall, Firewall::default());
        assert_eq!(cfg.sources.len(), 1);
    }

    #[test]
    fn effective_config_round_trips() {
        let cfg = Config::parse(DEFAULT_TOML, None).unwrap();
        let again = Config::parse(&cfg.to_toml(), None).unwrap();
        assert_eq!(cfg.firewall, again.firewall);
        assert_eq!(cfg.ban, again.ban);
        assert_eq!(cfg.escalation, again.escalation);
        assert_eq!(cfg.web, again.web);
    }

    fn err(text: &str) -> String {
        Config::parse(text, Some(Path::new("/etc/fwagent/test.toml")))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[firewall]\ntable = \"x\"\nipv6_prefix = 40\n");
        assert_eq!(
            e,
            "/etc/fwagent/test.toml:3: key firewall.ipv6_prefix: 40 is out of range: must be between 48 and 128"
        );
        let e = err("[ban]\n\ntime = \"3 fortnights\"\n");
        assert!(
            e.starts_with("/etc/fwagent/test.toml:3: key ban.time: invalid duration"),
            "{e}"
        );
        let e = err("[firewall]\ntabel = \"x\"\n");
        assert!(
            e.starts_with("/etc/fwagent/test.toml:2: key firewall.tabel:"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[ban]\nallow = [\"10.0.0.1\", \"203.0.113.7/24\"]\n");
        assert!(
            e.starts_with("/etc/fwagent/test.toml:2: key ban.allow"),
            "{e}"
        );
        assert!(e.contains("did you mean 203.0.113.0/24"), "{e}");
        let e = err("[[source]]\npath = \"/var/log/a\"\nrules = []\n");
        assert_eq!(
            e,
            "/etc/fwagent/test.toml:3: key source.0.rules: names no rule"
        );
        let e = err("[rules.my]\nmax_hits = 0\n");
        assert_eq!(
            e,
            "/etc/fwagent/test.toml:2: key rules.my.max_hits: must be at least 1"
        );
        let e = err("this is not toml");
        assert!(e.starts_with("/etc/fwagent/test.toml:1"), "{e}");
    }

    #[test]
    fn custom_rules_and_overrides_parse() {
        let cfg = Config::parse(
            r#"
[rules.exim-ratelimit]
max_hits = 5
[rules.my-app]
patterns = ['login failed from <HOST>$']
find_time = "10m"
ban_time = "permanent"
timestamp = "rfc3339"
"#,
            None,
        )
        .unwrap();
        assert_eq!(cfg.rules["exim-ratelimit"].max_hits, Some(5));
        let my = &cfg.rules["my-app"];
        assert_eq!(my.ban_time, Some(Duration::ZERO));
        assert_eq!(my.timestamp, Some(TimestampFormat::Rfc3339));
        assert_eq!(
            cfg.locate(&["rules", "my-app", "patterns"]),
            "<embedded default config>:5: key rules.my-app.patterns"
        );
    }

    #[test]
    fn type_errors_speak_of_numbers_not_rust_types() {
        let e = Config::parse("[ban]\nmax_tracked = \"lots\"\n", None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("expected a whole number"), "{msg}");
        assert!(msg.contains("key ban.max_tracked"), "{msg}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Some(Path::new("/nonexistent/fwagent.toml"))).unwrap_err();
        assert_eq!(e.to_string(), "reading config /nonexistent/fwagent.toml");
    }

    #[test]
    fn allow_list_parses_hosts_and_networks() {
        let cfg = Config::parse(
            "[ban]\nallow = [\"203.0.113.7\", \"2001:db8::/48\"]\n",
            None,
        )
        .unwrap();
        assert_eq!(cfg.ban.allow[0].to_string(), "203.0.113.7/32");
        assert_eq!(cfg.ban.allow[1].to_string(), "2001:db8::/48");
        assert!(parse_net("010.0.0.1").is_err());
    }
}
