//! The built-in rules: Exim rate limit (the default) and authentication failures, sshd,
//! Dovecot and Postfix.
//!
//! **Injection-proofing.** Each pattern names the address only at a place the daemon itself
//! controls, so attacker-chosen text (SSH user names, HELO names, AUTH ids, sender and
//! recipient addresses, IMAP user names) can never supply it:
//! - the line prefix (timestamp, host, program and pid) is anchored at `^`;
//! - when the address comes *before* any attacker text (Exim `H=`, Postfix `name[addr]`,
//!   sshd's pre-auth messages), every field before it is matched with a strict token class
//!   (no spaces, no brackets or parentheses where the daemon cannot write them) — a line that
//!   does not fit is not counted rather than guessed;
//! - when the address comes *after* attacker text (sshd `for USER from ADDR port N ssh2`,
//!   Dovecot `user=<USER>, … rip=ADDR, lip=…, session=<…>`), the pattern is anchored at `$`
//!   and everything between the address and the end is matched with classes the attacker
//!   text cannot satisfy, so only the daemon's own trailing fields can follow the capture.
//!
//! **Counting once.** sshd: one hit per failed password (sshd's `Failed …` line; PAM's
//! `authentication failure` lines for the same attempt are not counted), one per `Invalid user`
//! connection, and one per pre-auth disconnect that carries no user (`Connection closed by
//! ADDR port N [preauth]`, `Disconnected from ADDR port N [preauth]`, `banner exchange`,
//! `Unable to negotiate`). A successful login is
//! never counted, nor are the `authenticating user` closings and `maximum authentication
//! attempts` lines that only repeat failures already counted. The bare TCP connect-and-close
//! (`Connection closed by ADDR port N` without `[preauth]`) is what load-balancer health checks
//! do and is not counted. Dovecot: the login process's one summary line per failed connection
//! (`auth failed, N attempts`, or `client didn't finish SASL auth`); the `auth:` process's
//! per-attempt lines (only written with `auth_verbose`) are not counted, so the count is the
//! same with and without `auth_verbose`.

use std::time::Duration;

use super::rules::RuleSpec;
use super::timestamp::TimestampFormat;

/// The rule applied when the configuration names none.
pub const DEFAULT_RULE: &str = "exim-ratelimit";

/// Names of all built-in rules, in evaluation order.
pub const NAMES: [&str; 5] = ["exim-ratelimit", "exim-auth", "sshd", "dovecot", "postfix"];

/// Exim line start: time, optional zone (`log_timezone`), optional `[pid]` (`+pid`).
const EXIM: &str = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})? (?:[+-]\d{4} )?(?:\[\d+\] )?";

/// Exim's `H=` host field up to and including the bracketed address: optional verified
/// reverse name, optional `(HELO)`, then `[ADDR]`. HELO is printed in parentheses and may be
/// an address literal; neither part may contain a space or a parenthesis.
const EXIM_HOST: &str =
    r"(?:[^\s()\[\]]+ )?(?:\([^\s()]*\) )?\[(?P<host>[0-9A-Fa-f:.]+)\](?::\d{1,5})?";

/// An RFC 3339 or traditional syslog timestamp.
const SYSLOG_TIME: &str = r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)|[A-Z][a-z]{2} [ 0-3]\d \d\d:\d\d:\d\d)";

/// The address pattern used for `<HOST>` and inside built-in rules.
pub(crate) const ADDR: &str = r"[0-9A-Fa-f:.]+(?:%[0-9A-Za-z_.\-]+)?";

fn spec(
    name: &str,
    patterns: Vec<String>,
    prefilter: &[&str],
    max_hits: u32,
    find_time: Duration,
    ban_time: Duration,
    timestamp: TimestampFormat,
) -> RuleSpec {
    RuleSpec {
        name: name.to_string(),
        patterns,
        locators: Vec::new(),
        confirms: Vec::new(),
        ignore: Vec::new(),
        prefilter: prefilter.iter().map(|s| s.to_string()).collect(),
        max_hits,
        find_time,
        ban_time,
        timestamp,
    }
}

const MIN: u64 = 60;
const HOUR: u64 = 3600;

/// The specification of built-in rule `name`, or `None` when there is no such rule.
pub fn builtin(name: &str) -> Option<RuleSpec> {
    let default_window = Duration::from_secs(10 * MIN);
    let default_ban = Duration::from_secs(HOUR);
    let mut s = match name {
        // `H=... rejected ...: Rate limited: ADDR` as the ratelimit ACL's log_message writes
        // it (RCPT, MAIL or connect ACL; `H=... Warning: Rate limited: ADDR` from a `warn`
        // verb). The address is taken from Exim's own H= field at the
        // start of the message and must equal the one at the end (see `confirms` below).
        "exim-ratelimit" => spec(
            name,
            vec![format!(
                r"{EXIM}H={EXIM_HOST} (?:.* )?(?:rejected .*|Warning): Rate limited: \S+$"
            )],
            &["Rate limited: "],
            3,
            Duration::from_secs(HOUR),
            Duration::from_secs(24 * HOUR),
            TimestampFormat::Exim,
        ),
        // `DRIVER authenticator failed for [NAME ](HELO) [ADDR]:PORT I=[..]:25: 535 ...
        // (set_id=ID)`: the set_id comes after the address; 435 (temporary server trouble)
        // is not the client's fault and not counted.
        "exim-auth" => spec(
            name,
            vec![format!(
                r"{EXIM}[\w.\-]+ authenticator failed for (?:H=)?{EXIM_HOST}(?: I=\[[0-9A-Fa-f:.]+\](?::\d{{1,5}})?)?(?: U=\S*)?: 535 "
            )],
            &["authenticator failed for "],
            5,
            default_window,
            default_ban,
            TimestampFormat::Exim,
        ),
        "sshd" => {
            // Syslog prefix (RFC 3339 or traditional) or nothing at all (`sshd -E` writes
            // bare messages). OpenSSH 9.8+ logs as sshd-session / sshd-auth.
            let p =
                format!(r"^(?:{SYSLOG_TIME} \S+ sshd(?:-session|-auth)?\[\d+\]: )?(?:error: )?");
            spec(
                name,
                vec![
                    // User text sits before the address: anchored at the end.
                    format!(
                        r"{p}Failed (?:password|keyboard-interactive/pam) for .* from (?P<host>{ADDR}) port \d{{1,5}} ssh2$"
                    ),
                    format!(r"{p}Invalid user .* from (?P<host>{ADDR})(?: port \d{{1,5}})?$"),
                    // No user text before the address: anchored at the start.
                    format!(
                        r"{p}(?:Connection (?:closed|reset) by|Disconnected from) (?P<host>{ADDR}) port \d{{1,5}} \[preauth\]$"
                    ),
                    format!(
                        r"{p}banner exchange: Connection from (?P<host>{ADDR}) port \d{{1,5}}: "
                    ),
                    format!(
                        r"{p}Unable to negotiate with (?P<host>{ADDR}) port \d{{1,5}}: no matching "
                    ),
                    format!(
                        r"{p}Did not receive identification string from (?P<host>{ADDR})(?: port \d{{1,5}})?$"
                    ),
                ],
                &[
                    "Failed ",
                    "Invalid user ",
                    "[preauth]",
                    "banner exchange: ",
                    "Unable to negotiate ",
                    "Did not receive identification",
                ],
                5,
                default_window,
                default_ban,
                TimestampFormat::Auto,
            )
        }
        // Login process summary line, e.g. `imap-login: Info: Disconnected: Connection closed
        // (auth failed, 3 attempts in 4 secs): user=<u>, method=PLAIN, rip=ADDR, lip=ADDR,
        // session=<..>`. The user name comes before rip=: the pattern is anchored at `$`,
        // and the fields after rip= may not contain `<`, `>` or `,` except session=<..>.
        "dovecot" => spec(
            name,
            vec![format!(
                r"^(?:{SYSLOG_TIME} (?:\S+ dovecot(?:\[\d+\])?: )?)?(?:imap|pop3|submission|managesieve)-login: (?:Info: )?(?:Disconnected|Aborted login|Login aborted)(?:: [^()]*)? \((?:auth failed, \d+ attempts? in \d+ secs?|client didn't finish SASL auth, waited \d+ secs?)\)(?: \([a-z_]+\))?: user=<.*>(?:, method=[^,\s]+)?, rip=(?P<host>{ADDR}), lip=[0-9A-Fa-f:.]+(?:, [^,<>]*)*, session=<[^<>]*>$"
            )],
            &["auth failed, ", "didn't finish SASL auth"],
            5,
            default_window,
            default_ban,
            TimestampFormat::Auto,
        ),
        // smtpd's `warning: NAME[ADDR]: SASL MECH authentication failed: ...` and
        // `QUEUEID: reject: RCPT from unknown[ADDR]: 5xx ...`. NAME is a validated host name
        // or `unknown`; sender, recipient and HELO all come after the address.
        "postfix" => {
            let p =
                format!(r"^{SYSLOG_TIME} \S+ postfix(?:-[\w.\-]+)?/(?:[\w.\-]+/)?smtpd\[\d+\]: ");
            spec(
                name,
                vec![
                    format!(
                        r"{p}warning: [A-Za-z0-9.\-]+\[(?P<host>{ADDR})\](?::\d{{1,5}})?: SASL [\w\-]+ authentication failed"
                    ),
                    format!(
                        r"{p}(?:NOQUEUE|[0-9A-Za-z]+): reject: RCPT from unknown\[(?P<host>{ADDR})\](?::\d{{1,5}})?: [45]\d\d "
                    ),
                ],
                &[" authentication failed", "reject: RCPT from unknown["],
                5,
                default_window,
                default_ban,
                TimestampFormat::Auto,
            )
        }
        _ => return None,
    };
    // Host locators (see `Rule::extract`), by pattern index: for patterns with a `.*` that
    // the capture engine would otherwise walk on every matched line. Each ends exactly like
    // its pattern, so it can only find the address the full pattern captures.
    s.locators = match name {
        "exim-ratelimit" => vec![Some(format!(r"{EXIM}H={EXIM_HOST} "))],
        "sshd" => vec![
            Some(format!(r" from (?P<host>{ADDR}) port \d{{1,5}} ssh2$")),
            Some(format!(r" from (?P<host>{ADDR})(?: port \d{{1,5}})?$")),
        ],
        "dovecot" => vec![Some(format!(
            r", rip=(?P<host>{ADDR}), lip=[0-9A-Fa-f:.]+(?:, [^,<>]*)*, session=<[^<>]*>$"
        ))],
        _ => Vec::new(),
    };
    // Confirmations: the address after the marker's last occurrence, to the end of the line,
    // must be the same. Exim writes the client address twice on a rate-limit line: in its own
    // H= field at the start and, through the ACL's `$sender_host_address`, at the very end.
    // Requiring both means an attacker must forge text at both ends of the line at once. (A
    // literal and an address parse, not a third regex pass over every matched line.)
    s.confirms = match name {
        "exim-ratelimit" => vec![Some(": Rate limited: ".into())],
        _ => Vec::new(),
    };
    Some(s)
}
