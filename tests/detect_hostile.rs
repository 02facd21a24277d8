//! Hostile lines per built-in rule: attacker-chosen text (SSH user names, HELO names, AUTH
//! ids, sender/recipient addresses, IMAP user names) that contains an address must never make
//! that address counted. The real client is 198.51.100.77; the injected address 203.0.113.9.
//!
//! Each rule runs with `max_hits = 1`, so any count at all would show up as an offence.

use std::net::IpAddr;
use std::time::SystemTime;

use fwagent::detect::{Detector, Extract, Matcher, NeverBan, Rule, builtin, rules};

const REAL: &str = "198.51.100.77";
const FAKE: &str = "203.0.113.9";

fn strict(name: &str) -> Rule {
    let mut spec = builtin::builtin(name).unwrap();
    spec.max_hits = 1;
    Rule::compile(&spec, &|_| String::new()).unwrap()
}

/// Feeds one line to every built-in rule (threshold 1); returns the addresses banned.
fn banned(line: &str) -> Vec<String> {
    let rules: Vec<Rule> = builtin::NAMES.iter().map(|n| strict(n)).collect();
    let matcher = Matcher::all(&rules);
    let mut det = Detector::new(rules, NeverBan::default());
    let mut ids = Vec::new();
    matcher.candidates(line.as_bytes(), &mut ids);
    let mut out = Vec::new();
    for id in ids {
        if let Some(o) = det.observe(id, line.as_bytes(), SystemTime::now()) {
            out.push(format!("{}:{}", det.rules()[id].name, o.addr));
        }
    }
    out
}

/// The line bans exactly the real client under `rule`.
fn bans_real(rule: &str, line: &str) {
    assert_eq!(banned(line), vec![format!("{rule}:{REAL}")], "{line}");
}

/// The line bans nobody (and certainly not the injected address).
fn bans_nobody(line: &str) {
    let b = banned(line);
    assert!(b.is_empty(), "{line}\n banned {b:?}");
}

#[test]
fn exim_ratelimit_helo_sender_recipient() {
    // HELO is an address literal, sender and recipient carry the fake address.
    bans_real(
        "exim-ratelimit",
        "2026-12-03 16:13:57 H=([203.0.113.9]) [198.51.100.77] I=[198.51.100.25]:25 F=<a@[203.0.113.9]> rejected RCPT <x@[203.0.113.9]>: Rate limited: 198.51.100.77",
    );
    // Reverse name that looks like an address, +pid +millisec with ports.
    bans_real(
        "exim-ratelimit",
        "2026-12-03 16:14:22.189 [22356] H=203.0.113.9.example ([203.0.113.9]) [198.51.100.77]:47738 I=[198.51.100.25]:25 F=<b@x> rejected RCPT <c@y>: Rate limited: 198.51.100.77",
    );
    // The recipient carries the whole trailer, the line ends with Exim's own reason.
    bans_nobody(&format!(
        "2026-12-03 16:13:57 H=(x) [{REAL}] F=<a@b> rejected RCPT <\"x>: Rate limited: {FAKE}\"@lab.example>: Unrouteable address"
    ));
    // A callout response (remote text) ends the line: H= and trailer disagree.
    bans_nobody(&format!(
        "2026-12-03 16:13:57 H=(x) [{REAL}] F=<a@evil.example> rejected RCPT <b@lab.example>: response to \"RCPT TO:<a@evil.example>\" was: 550 Rate limited: {FAKE}"
    ));
    // A junk HELO with spaces and brackets (only possible with helo_accept_junk_hosts):
    // H= then names the fake address first, but the trailer written by Exim does not agree.
    bans_nobody(&format!(
        "2026-12-03 16:13:57 H=(x) [{FAKE}] (y) [{REAL}] F=<a@b> rejected RCPT <c@d>: Rate limited: {REAL}"
    ));
    // A `warn` verb's log line.
    bans_real(
        "exim-ratelimit",
        "2026-12-03 16:13:57 H=(x) [198.51.100.77] F=<a@b> Warning: Rate limited: 198.51.100.77",
    );
    // Connect ACL form.
    bans_real(
        "exim-ratelimit",
        "2024-05-01 00:00:01 H=[198.51.100.77] rejected connection in \"connect\" ACL: Rate limited: 198.51.100.77",
    );
    // Not at the start of the message: some other line quoting it.
    bans_nobody(&format!(
        "2026-12-03 16:13:57 SMTP protocol synchronization error (input sent without waiting for greeting): rejected connection from H=[{REAL}] input=\"H=[{FAKE}] rejected x: Rate limited: {FAKE}\""
    ));
}

#[test]
fn exim_auth_helo_and_set_id() {
    bans_real(
        "exim-auth",
        "2026-12-03 16:13:55 LOGIN authenticator failed for ([203.0.113.9]) [198.51.100.77]:4444 I=[198.51.100.25]:25: 535 Incorrect authentication data (set_id=root@[203.0.113.9])",
    );
    bans_real(
        "exim-auth",
        "2026-12-03 16:13:55 dovecot_plain authenticator failed for (x) [198.51.100.77]: 535 Incorrect authentication data (set_id=203.0.113.9 I=[203.0.113.9]:25: 535 )",
    );
    // HELO with spaces is not Exim's own format: not counted at all.
    bans_nobody(&format!(
        "2026-12-03 16:13:55 LOGIN authenticator failed for (x) [{FAKE}] (y) [{REAL}]:4444 I=[198.51.100.25]:25: 535 Incorrect authentication data (set_id=a)"
    ));
    // 435 is the server's trouble, not the client's.
    bans_nobody(&format!(
        "2026-12-03 16:13:55 LOGIN authenticator failed for (x) [{REAL}]: 435 Unable to authenticate at present (set_id=a)"
    ));
}

#[test]
fn sshd_user_names() {
    for pfx in [
        "2026-12-03T16:18:41.123456+00:00 lab-ssh sshd[1234]: ",
        "Dec  3 16:20:01 lab-ssh sshd[1234]: ",
        "",
    ] {
        let l = |m: &str| format!("{pfx}{m}");
        bans_real(
            "sshd",
            &l(&format!(
                "Failed password for x from {FAKE} port 22 from {REAL} port 4444 ssh2"
            )),
        );
        bans_real(
            "sshd",
            &l(&format!(
                "Failed password for invalid user x from {FAKE} port 22 ssh2 from {REAL} port 4444 ssh2"
            )),
        );
        bans_real(
            "sshd",
            &l(&format!(
                "Invalid user x from {FAKE} port 22 from {REAL} port 4444"
            )),
        );
        // Closings with a user name are never counted (the failures were).
        bans_nobody(&l(&format!(
            "Connection closed by invalid user x {FAKE} port 22 [preauth] {REAL} port 4444 [preauth]"
        )));
        bans_nobody(&l(&format!(
            "Connection closed by authenticating user x {FAKE} port 22 [preauth]"
        )));
        // Successful logins never count, whatever the user name says.
        bans_nobody(&l(&format!(
            "Accepted password for Failed password for x from {FAKE} port 22 ssh2 from {REAL} port 5 ssh2"
        )));
        bans_nobody(&l(&format!(
            "Accepted publickey for x from {FAKE} port 22 ssh2: ED25519 SHA256:abc"
        )));
    }
    // Another program's syslog line with sshd-like text.
    bans_nobody(&format!(
        "2026-12-03T16:18:41.123456+00:00 lab-ssh myapp[99]: Failed password for x from {FAKE} port 22 ssh2"
    ));
    // PAM's line for the same attempt is not counted.
    bans_nobody(&format!(
        "2026-12-03T16:18:41.123456+00:00 lab-ssh sshd[1234]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={FAKE}  user=root"
    ));
    // Pre-auth scanners (no user text at all) are counted.
    bans_real(
        "sshd",
        &format!("Dec  3 16:20:01 h sshd[1]: Connection closed by {REAL} port 4444 [preauth]"),
    );
    bans_real(
        "sshd",
        &format!("Dec  3 16:20:01 h sshd[1]: Disconnected from {REAL} port 4444 [preauth]"),
    );
    // After an authentication attempt the user is named: already counted by its failure.
    bans_nobody(&format!(
        "Dec  3 16:20:01 h sshd[1]: Disconnected from authenticating user root {REAL} port 4444 [preauth]"
    ));
    bans_nobody(&format!(
        "Dec  3 16:20:01 h sshd[1]: Received disconnect from {REAL} port 4444:11: Bye Bye [preauth]"
    ));
    bans_real(
        "sshd",
        &format!(
            "Dec  3 16:20:01 h sshd[1]: Unable to negotiate with {REAL} port 4444: no matching key exchange method found. Their offer: {FAKE} [preauth]"
        ),
    );
}

#[test]
fn dovecot_imap_user_names() {
    let pfx = "Dec 03 16:30:01 imap-login: Info: Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): ";
    bans_real(
        "dovecot",
        &format!(
            "{pfx}user=<x rip={FAKE}>, method=PLAIN, rip={REAL}, lip=198.51.100.26, session=<abc>"
        ),
    );
    bans_real(
        "dovecot",
        &format!(
            "{pfx}user=<x>, method=PLAIN, rip={FAKE}, lip=198.51.100.26, session=<abc>, method=PLAIN, rip={REAL}, lip=198.51.100.26, TLS, session=<def>"
        ),
    );
    bans_real(
        "dovecot",
        &format!(
            "{pfx}user=<a, rip={FAKE}, lip=1.2.3.4, TLS>, method=PLAIN, rip={REAL}, lip=198.51.100.26, mpid=7, TLS, session=<s>"
        ),
    );
    // A successful login is never counted.
    bans_nobody(&format!(
        "Dec 03 16:30:01 imap-login: Info: Login: user=<(auth failed, 1 attempts in 1 secs): user=<x>, method=PLAIN, rip={FAKE}, lip=1.2.3.4, session=<a>>, method=PLAIN, rip={REAL}, lip=198.51.100.26, mpid=1, session=<s>"
    ));
    // The auth process's per-attempt line is not counted (the summary line is).
    bans_nobody(&format!(
        "Dec 03 16:29:59 auth: Info: passwd-file(x,{FAKE},<a>): unknown user,{REAL},<WEdLRb1hCuTGM2Qp>): unknown user"
    ));
    // Syslog flavour.
    bans_real(
        "dovecot",
        &format!(
            "Dec  3 16:30:01 mail dovecot: pop3-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<{FAKE}>, method=PLAIN, rip={REAL}, lip=198.51.100.26, session=<abc>"
        ),
    );
}

#[test]
fn postfix_sasl_and_unknown_client_rejects() {
    let pfx = "Dec  3 16:40:01 mx postfix/smtpd[4242]: ";
    bans_real(
        "postfix",
        &format!(
            "{pfx}warning: unknown[{REAL}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=x@[{FAKE}]"
        ),
    );
    bans_real(
        "postfix",
        &format!(
            "2026-12-03T16:40:02.000000+00:00 mx postfix/submission/smtpd[4243]: warning: host.example.net[{REAL}]:587: SASL PLAIN authentication failed: authentication failure"
        ),
    );
    bans_real(
        "postfix",
        &format!(
            "{pfx}NOQUEUE: reject: RCPT from unknown[{REAL}]: 554 5.7.1 <a@[{FAKE}]>: Relay access denied; from=<a@[{FAKE}]> to=<b@[{FAKE}]> proto=ESMTP helo=<[{FAKE}]>"
        ),
    );
    bans_real(
        "postfix",
        &format!(
            "{pfx}4Xyz1234AB: reject: RCPT from unknown[{REAL}]: 450 4.7.25 Client host rejected: cannot find your hostname, [{REAL}]; from=<s@example.net> to=<alice@example.org> proto=ESMTP helo=<[{FAKE}]>"
        ),
    );
    // A client with a verified name is not "unknown": not counted by this rule.
    bans_nobody(&format!(
        "{pfx}NOQUEUE: reject: RCPT from mail.example.com[{REAL}]: 550 5.1.1 <x@example.org>: Recipient address rejected: User unknown; from=<a@b> to=<x@example.org> proto=ESMTP helo=<unknown[{FAKE}]>"
    ));
    // Host name part can never contain brackets: an injected one breaks the match.
    bans_nobody(&format!(
        "{pfx}warning: unknown[{FAKE}]x[{REAL}]: SASL LOGIN authentication failed: x"
    ));
}

#[test]
fn glued_and_malformed_addresses_never_count() {
    // With a sloppy custom rule, glued digits still do not yield a shorter address.
    let spec = fwagent::detect::RuleSpec {
        name: "sloppy".into(),
        patterns: vec![r"client (?P<host>\d+\.\d+\.\d+\.\d+)".into()],
        locators: vec![],
        confirms: vec![],
        ignore: vec![],
        prefilter: vec![],
        max_hits: 1,
        find_time: std::time::Duration::from_secs(60),
        ban_time: std::time::Duration::from_secs(60),
        timestamp: fwagent::detect::TimestampFormat::None,
    };
    let rule = Rule::compile(&spec, &|_| String::new()).unwrap();
    let real: IpAddr = REAL.parse().unwrap();
    assert_eq!(rule.extract(b"client 198.51.100.77 x"), Extract::Host(real));
    for bad in [
        "client 198.51.100.775 x",
        "client 198.51.100.77.5 x",
        "client 198.51.100.077 x",
        "client 198.51.100.256 x",
        "client 198.51.100.77a x",
    ] {
        assert!(
            matches!(rule.extract(bad.as_bytes()), Extract::BadHost(_)),
            "{bad}: {:?}",
            rule.extract(bad.as_bytes())
        );
    }
    // Built-in rules: an IPv4-mapped client is the IPv4 address; invalid forms are refused.
    bans_real(
        "sshd",
        "Dec  3 16:20:01 h sshd[1]: Invalid user x from ::ffff:198.51.100.77 port 4444",
    );
    bans_nobody("Dec  3 16:20:01 h sshd[1]: Invalid user x from 198.51.100.0077 port 4444");
    bans_nobody("Dec  3 16:20:01 h sshd[1]: Invalid user x from 2001:db8::1::2 port 4444");
    // Loopback and link-local clients are never counted.
    bans_nobody("Dec  3 16:20:01 h sshd[1]: Invalid user x from 127.0.0.1 port 4444");
    bans_nobody("Dec  3 16:20:01 h sshd[1]: Invalid user x from fe80::1%eth0 port 4444");
}

#[test]
fn garbage_never_panics() {
    let rules = rules::builtins();
    let matcher = Matcher::all(&rules);
    let mut det = Detector::new(rules, NeverBan::default());
    let mut ids = Vec::new();
    let mut long = b"2026-12-03 16:13:57 H=[198.51.100.77] rejected x: Rate limited: ".to_vec();
    long.extend(std::iter::repeat_n(b'9', 100_000));
    let lines: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00, b'\n'],
        b"Rate limited: \xff\xff\xff".to_vec(),
        b"Failed password for \xc3\x28 from 198.51.100.77 port 1 ssh2".to_vec(),
        long,
        vec![b'['; 50_000],
        b"".to_vec(),
    ];
    for line in &lines {
        matcher.candidates(line, &mut ids);
        for &id in &ids {
            let _ = det.observe(id, line, SystemTime::now());
        }
    }
    // Invalid UTF-8 in the user name does not stop an sshd line from counting.
    let rule = strict("sshd");
    assert_eq!(
        rule.extract(b"Failed password for \xc3\x28 from 198.51.100.77 port 1 ssh2"),
        Extract::Host(REAL.parse().unwrap())
    );
}
