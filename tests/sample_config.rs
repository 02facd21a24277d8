//! `dist/fwagent.toml`, the sample configuration admins start from: it loads, its active
//! lines are exactly the built-in defaults it claims to show, it mentions every option, and
//! its commented examples still parse when uncommented.

use std::path::Path;
use std::time::Duration;

use fwagent::config::Config;

fn sample_path() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/fwagent.toml"))
}

fn sample_text() -> String {
    std::fs::read_to_string(sample_path()).unwrap()
}

#[test]
fn sample_loads_and_its_active_lines_are_the_defaults() {
    let cfg = Config::load(Some(sample_path())).unwrap();
    let def = Config::default();
    assert_eq!(cfg.firewall, def.firewall);
    assert_eq!(cfg.ban, def.ban);
    assert_eq!(cfg.escalation, def.escalation);
    assert_eq!(cfg.sources, def.sources);
    assert_eq!(cfg.rules, def.rules);
    assert_eq!(cfg.state, def.state);
    assert_eq!(cfg.web, def.web);
    // And the embedded default says the same.
    let embedded = Config::parse(fwagent::config::DEFAULT_TOML, None).unwrap();
    assert_eq!(embedded.to_toml(), cfg.to_toml());
}

#[test]
fn sample_documents_every_option() {
    let text = sample_text();
    // Every key of the effective default config is set, active, in the sample.
    let rendered: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
    for (section, value) in &rendered {
        let table = match value {
            toml::Value::Table(t) => t.clone(),
            toml::Value::Array(a) => a[0].as_table().unwrap().clone(),
            _ => panic!("top-level key {section} outside a table"),
        };
        for key in table.keys() {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "option {section}.{key} not set in the sample"
            );
        }
    }
    // Every per-rule key is explained and shown in an example.
    for key in [
        "patterns",
        "ignore",
        "prefilter",
        "max_hits",
        "find_time",
        "ban_time",
        "timestamp",
        "enabled",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("#   {key} "))),
            "rule key {key} not explained"
        );
    }
    for rule in ["exim-ratelimit", "exim-auth", "sshd", "dovecot", "postfix"] {
        assert!(
            text.contains(&format!("#   {rule} ")),
            "rule {rule} not listed"
        );
    }
}

/// Removes the `#` of commented-out TOML lines (`#key = value`, `#[table]`), keeping prose
/// (`# text`, a lone `#`).
fn uncomment_examples(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| !c.is_whitespace()) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn commented_examples_parse_when_uncommented() {
    let text = uncomment_examples(&sample_text());
    let cfg = Config::parse(&text, Some(Path::new("dist/fwagent.toml (examples)")))
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    let sources: Vec<(String, Vec<String>)> = cfg
        .sources
        .iter()
        .map(|s| (s.path.display().to_string(), s.rules.clone()))
        .collect();
    let expect = |p: &str, r: &[&str]| (p.to_string(), r.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        sources,
        vec![
            expect("/var/log/exim4/mainlog", &["exim-ratelimit"]),
            expect("/var/log/auth.log", &["sshd"]),
            expect("/var/log/mail.log", &["postfix", "dovecot"]),
            expect("/var/log/myapp.log", &["myapp-login"]),
        ]
    );
    let sshd = &cfg.rules["sshd"];
    assert_eq!(sshd.max_hits, Some(3));
    assert_eq!(sshd.find_time, Some(Duration::from_secs(1800)));
    assert_eq!(sshd.ban_time, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(
        cfg.rules["exim-ratelimit"].ban_time,
        Some(Duration::from_secs(2 * 86_400))
    );
    let custom = &cfg.rules["myapp-login"];
    assert_eq!(custom.patterns.as_ref().unwrap().len(), 1);
    assert!(custom.patterns.as_ref().unwrap()[0].contains("<HOST>"));
    for p in custom.patterns.iter().chain(custom.ignore.iter()).flatten() {
        regex::Regex::new(&p.replace("<HOST>", "(?P<host>[0-9A-Fa-f:.]+)"))
            .unwrap_or_else(|e| panic!("example regex {p:?}: {e}"));
    }
    assert_eq!(
        custom.prefilter.as_deref(),
        Some(&["login failed".to_string()][..])
    );
}

#[test]
fn prose_examples_in_comments_are_valid_values() {
    // Values the sample suggests in prose must be accepted where they are suggested.
    let cfg = Config::parse(
        "[firewall]\nipv6_prefix = 56\n[ban]\nallow = [\"203.0.113.7\", \"198.51.100.0/24\", \"2001:db8:1::/48\"]\n\
         [escalation]\nmax_time = \"permanent\"\n[[source]]\npath = \"/var/log/exim4/mainlog\"\n\
         rules = [\"exim-ratelimit\", \"exim-auth\"]\n",
        None,
    )
    .unwrap();
    assert_eq!(cfg.firewall.ipv6_prefix, 56);
    assert_eq!(cfg.ban.allow.len(), 3);
    assert_eq!(cfg.escalation.max_time, Duration::ZERO);
    assert!(Config::parse("[ban]\nallow = [\"203.0.113.7/24\"]\n", None).is_err());
}
