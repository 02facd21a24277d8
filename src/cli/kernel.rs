//! `setup`, `teardown`, `ban`, `unban`, `list`: the kernel commands (`status` lives in
//! `crate::status`). Each loads the configuration (table, set size, IPv6 prefix, priority,
//! ban time), opens one netlink handle and prints one result.
//!
//! One writer: while an agent runs, `ban`, `unban` and `teardown` are sent to it over its
//! control socket, so its store and the kernel never drift; with no agent they act on the
//! kernel directly (and on the agent's store, if it has one). Exit codes: 0 done, 1 runtime
//! error, 2 usage or configuration error — then nothing was changed.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::agent::{manual_target, target_net};
use crate::control::{self, ControlError, Request, Response};
use crate::detect::{LocalAddrs, NeverBan};
use crate::duration::{self, Human};
use crate::nft::{self, Applied, Element, Nft, Schema, Target};
use crate::state::{self, Store, Txn};

/// Options shared by every kernel command.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Configuration file (default: /etc/fwagent/fwagent.toml if it exists).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where a running agent's control socket is (default: the config's state.run_dir,
    /// /run/fwagent; an agent started with --state-dir DIR listens in DIR).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The agent's state directory (default: the config's state.dir, /var/lib/fwagent).
    /// With no agent running, bans and unbans are recorded there too, so the agent finds
    /// them when it starts. Also sets --run-dir unless that is given.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
pub struct TeardownArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
pub struct BanArgs {
    #[command(flatten)]
    common: Common,
    /// Addresses or networks (IPv6 addresses are banned by the configured prefix;
    /// write ADDR/128 for one exact IPv6 address).
    #[arg(value_name = "ADDR|CIDR")]
    targets: Vec<String>,
    /// Ban duration (`90s`, `30m`, `24h`, `7d`, `permanent`); default: the configured ban time.
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// Read more targets from FILE, one per line (`#` comments and blank lines ignored).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Ban even a loopback, local or allow-listed address (you may lock yourself out).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
pub struct UnbanArgs {
    #[command(flatten)]
    common: Common,
    /// Addresses or networks (an IPv6 address also lifts the prefix ban that holds it; a
    /// network ban is lifted by naming the network)
    #[arg(value_name = "ADDR|CIDR", required = true)]
    targets: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the kernel commands take from the configuration.
struct Settings {
    /// The agent's state directory (its store is kept in step when no agent runs).
    state_dir: PathBuf,
    schema: Schema,
    ban_time: Duration,
    allow: Vec<ipnet::IpNet>,
    /// The running agent's control socket, if one listens there.
    socket: PathBuf,
}

const USAGE: u8 = 2;

/// Loads settings, or prints the configuration error and yields exit code 2.
fn settings(c: &Common) -> Result<Settings, ExitCode> {
    load_settings(c).map_err(|e| {
        // ConfigError's message already quotes its cause; print it once.
        eprintln!("fwagent: {e}");
        ExitCode::from(USAGE)
    })
}

fn load_settings(c: &Common) -> Result<Settings> {
    let cfg = crate::config::Config::load(c.config.as_deref())?;
    // The same rule as `fwagent run`: a private state dir holds the socket too.
    let state_dir = c.state_dir.clone().unwrap_or_else(|| cfg.state.dir.clone());
    let run_dir = c
        .run_dir
        .as_deref()
        .or(c.state_dir.as_deref())
        .unwrap_or(&cfg.state.run_dir);
    let fw = &cfg.firewall;
    Ok(Settings {
        schema: Schema {
            table: fw.table.clone(),
            set_size: fw.set_size,
            ipv6_prefix: fw.ipv6_prefix,
            priority: fw.priority,
        },
        ban_time: cfg.ban.time,
        allow: cfg.ban.allow.clone(),
        socket: control::socket_path(run_dir),
        state_dir,
    })
}

/// With no agent running, records a direct change in the agent's store (if it has one), so
/// that the agent neither restores an unbanned address nor forgets a manual ban when it
/// starts. A host where no agent ever ran has no store, and none is created.
fn record(st: &Settings, what: &str, fill: impl FnOnce(&Store, &mut Txn)) -> Result<()> {
    if !st.state_dir.join(state::FILE_NAME).exists() {
        return Ok(());
    }
    let (store, _) = Store::open(&st.state_dir)
        .with_context(|| format!("recording {what} in the agent's state"))?;
    let mut txn = Txn::new();
    fill(&store, &mut txn);
    store
        .apply(txn)
        .with_context(|| format!("recording {what} in the agent's state"))
}

/// Sends `req` to the running agent; `None` when no agent listens.
fn ask_agent(st: &Settings, req: &Request) -> Result<Option<Response>> {
    match control::call(&st.socket, req, Duration::from_secs(60)) {
        Ok(r) => Ok(Some(r)),
        Err(ControlError::NoAgent(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Prints the agent's answer and turns it into an exit code.
fn agent_answer(r: Response) -> ExitCode {
    if r.ok {
        if !r.message.is_empty() {
            println!("{}", r.message);
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("fwagent: {}", r.message);
        ExitCode::from(1)
    }
}

/// How a target travels to the agent: an exact IPv6 ban keeps its /128, a prefix ban is sent
/// as an address (the agent re-applies the never-ban choice of prefix or address).
fn wire_text(t: &Target) -> String {
    match t {
        Target::V6Exact(a) => format!("{a}/128"),
        other => other.to_string(),
    }
}

/// Never-ban policy for a ban made without an agent: allow-list, special ranges and the
/// addresses of this host's interfaces, read once over rtnetlink.
fn never_ban(st: &Settings) -> Result<NeverBan> {
    let local = LocalAddrs::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to read local addresses")?;
    rt.block_on(local.watch())
        .context("reading this host's addresses (to refuse banning them)")?;
    Ok(NeverBan::new(
        st.allow.clone(),
        local,
        st.schema.ipv6_prefix,
    ))
}

fn open() -> Result<Nft> {
    Nft::open().context("opening the kernel's nftables interface")
}

pub fn setup(a: SetupArgs) -> Result<ExitCode> {
    let st = match settings(&a.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let s = &st.schema;
    let mut nft = open()?;
    let how = nft.apply(s, false)?;
    match how {
        Applied::Created => println!("created table inet {}", s.table),
        Applied::Unchanged => println!("table inet {} is up to date", s.table),
        Applied::Rebuilt { carried } => println!(
            "rebuilt table inet {} to match the configuration ({carried} bans carried over)",
            s.table
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn teardown(a: TeardownArgs) -> Result<ExitCode> {
    let st = match settings(&a.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if let Some(r) = ask_agent(&st, &Request::Teardown)? {
        return Ok(agent_answer(r));
    }
    let mut nft = open()?;
    let existed = nft.teardown(&st.schema.table)?;
    record(&st, "the teardown", |store, txn| {
        if let Ok(bans) = store.active_bans(std::time::SystemTime::now()) {
            for b in bans {
                txn.remove_ban(b.target);
            }
        }
    })?;
    if existed {
        println!("removed table inet {}", st.schema.table);
    } else {
        println!("table inet {} did not exist", st.schema.table);
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses one target; an IPv6 network of exactly the configured prefix length is the same
/// ban as any address in it (`banned6`), so `list` output can be pasted back.
fn parse_one(text: &str, prefix: u8) -> Result<Target, String> {
    Ok(match nft::parse_target(text)? {
        Target::Net6(n) if n.prefix_len() == prefix => Target::V6Prefix(n.network()),
        t => t,
    })
}

/// Parses every target first; one bad entry names itself and nothing is changed.
fn parse_targets(texts: &[String], file: Option<&Path>, prefix: u8) -> Result<Vec<Target>, String> {
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        out.push(parse_one(t, prefix)?);
    }
    if let Some(path) = file {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::new(f);
        let mut line = Vec::new();
        let mut n = 0;
        loop {
            line.clear();
            // Bytes, not String: invalid UTF-8 is reported with its line, never a panic.
            // Lines are capped so a file without newlines cannot exhaust memory.
            let got = (&mut reader)
                .take(4096)
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if got == 0 {
                break;
            }
            n += 1;
            if line.len() >= 4096 && !line.ends_with(b"\n") {
                return Err(format!("{}:{n}: line too long", path.display()));
            }
            let text = std::str::from_utf8(&line)
                .map_err(|_| format!("{}:{n}: not valid UTF-8", path.display()))?;
            let text = text.split('#').next().unwrap_or("").trim();
            if text.is_empty() {
                continue;
            }
            out.push(parse_one(text, prefix).map_err(|e| format!("{}:{n}: {e}", path.display()))?);
        }
    }
    Ok(out)
}

pub fn ban(a: BanArgs) -> Result<ExitCode> {
    let st = match settings(&a.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let dur = match a.duration.as_deref().map(duration::parse) {
        None => st.ban_time,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            eprintln!("fwagent: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let targets = match parse_targets(&a.targets, a.from_file.as_deref(), st.schema.ipv6_prefix) {
        Ok(t) if t.is_empty() => {
            eprintln!("fwagent: nothing to ban (give addresses or --from-file)");
            return Ok(ExitCode::from(USAGE));
        }
        Ok(t) => t,
        Err(e) => {
            eprintln!("fwagent: {e}; nothing was banned");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let never = never_ban(&st)?;
    let mut targets = targets;
    for t in &mut targets {
        match manual_target(&never, *t, a.force) {
            Ok(x) => *t = x,
            Err(e) => {
                eprintln!("fwagent: {e}; nothing was banned");
                return Ok(ExitCode::from(USAGE));
            }
        }
    }
    let req = Request::Ban {
        targets: targets.iter().map(wire_text).collect(),
        seconds: Some(dur.as_secs()),
        force: a.force,
    };
    if let Some(r) = ask_agent(&st, &req)? {
        return Ok(agent_answer(r));
    }
    let s = &st.schema;
    let mut nft = open()?;
    // Bans only mean something in the configured ruleset: a banned6 key cut to /48 is
    // useless if the rule still cuts to /64. So apply first: nothing happens when the table
    // matches (the usual case, also when the agent owns it), a missing table is created, a
    // differing one is rebuilt with every ban carried over.
    match nft.apply(s, false)? {
        Applied::Rebuilt { carried } => eprintln!(
            "fwagent: table inet {} differed from the configuration; rebuilt it ({carried}              bans carried over)",
            s.table
        ),
        Applied::Created | Applied::Unchanged => {}
    }
    let bans: Vec<(Target, Option<Duration>)> = targets.iter().map(|t| (*t, Some(dur))).collect();
    let r = nft.ban(s, &bans)?;
    let now = std::time::SystemTime::now();
    record(&st, "the ban", |store, txn| {
        for t in &targets {
            let net = target_net(*t, s.ipv6_prefix);
            let times = store
                .ban(net)
                .ok()
                .flatten()
                .filter(|b| b.is_active(now))
                .map_or(0, |b| b.times_banned);
            txn.put_ban(&state::Ban {
                target: net,
                rule: state::MANUAL.to_string(),
                banned_at: now,
                expires_at: (!dur.is_zero()).then(|| now + dur),
                hits: 0,
                times_banned: times + 1,
            });
        }
    })?;
    let what = if targets.len() == 1 {
        show(&targets[0], s)
    } else {
        format!("{} targets", r.applied)
    };
    let how = if dur.is_zero() {
        "permanently".to_string()
    } else {
        format!("for {}", Human(dur))
    };
    println!("banned {what} {how}");
    if r.covered > 0 {
        println!("{} networks already covered by wider bans", r.covered);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn unban(a: UnbanArgs) -> Result<ExitCode> {
    let st = match settings(&a.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let targets = match parse_targets(&a.targets, None, st.schema.ipv6_prefix) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fwagent: {e}; nothing was unbanned");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let req = Request::Unban {
        targets: targets.iter().map(wire_text).collect(),
    };
    if let Some(r) = ask_agent(&st, &req)? {
        return Ok(agent_answer(r));
    }
    // An IPv6 address may be banned by its prefix or, next to a protected address, alone:
    // lift both (unbanning what is not banned is harmless).
    let asked = targets.len();
    let mut targets = targets;
    for t in targets.clone() {
        if let Target::V6Prefix(a) = t {
            targets.push(Target::V6Exact(a));
        }
    }
    let mut nft = open()?;
    let r = nft.unban(&st.schema, &targets)?;
    record(&st, "the unban", |_, txn| {
        for t in &targets {
            let net = target_net(*t, st.schema.ipv6_prefix);
            txn.remove_ban(net).clear_history(net);
        }
    })?;
    println!(
        "unbanned {}; {} not banned",
        r.removed,
        asked.saturating_sub(r.removed)
    );
    Ok(ExitCode::SUCCESS)
}

/// A target as users write it, so that a listed entry can be pasted into `unban`: IPv6
/// prefix bans with their length, exact IPv6 bans as /128.
fn show(t: &Target, s: &Schema) -> String {
    match t.normalize(s.ipv6_prefix) {
        Target::V6Prefix(a) => format!("{a}/{}", s.ipv6_prefix),
        Target::V6Exact(a) => format!("{a}/128"),
        other => other.to_string(),
    }
}

#[derive(Serialize)]
struct JsonElement {
    target: String,
    set: String,
    /// Ban length in ms; null = permanent.
    timeout_ms: Option<u64>,
    /// Time left in ms; null = permanent.
    expires_ms: Option<u64>,
    packets: u64,
    bytes: u64,
}

fn json_element(e: &Element, s: &Schema) -> JsonElement {
    JsonElement {
        target: show(&e.target, s),
        set: e.set.clone(),
        timeout_ms: e.timeout.map(|d| d.as_millis() as u64),
        expires_ms: e.expires.map(|d| d.as_millis() as u64),
        packets: e.packets,
        bytes: e.bytes,
    }
}

pub fn list(a: ListArgs) -> Result<ExitCode> {
    let st = match settings(&a.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let s = &st.schema;
    let mut nft = open()?;
    let mut elems = match nft.elements(s) {
        Ok(e) => e,
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            eprintln!(
                "fwagent: table inet {} does not exist, so nothing is banned (the agent or `fwagent setup` creates it)",
                s.table
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    // Sets in schema order, addresses in numeric order.
    elems.sort_by_key(|e| (nft::schema::SETS.iter().position(|n| *n == e.set), e.target));
    let mut out = std::io::stdout().lock();
    if a.json {
        let v: Vec<JsonElement> = elems.iter().map(|e| json_element(e, s)).collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<42} {:<9} {:>10} {:>10} {:>12}",
        "TARGET", "SET", "EXPIRES", "PACKETS", "BYTES"
    )?;
    for e in &elems {
        let expires = match e.expires {
            None => "permanent".to_string(),
            Some(d) => Human(Duration::from_secs(d.as_secs().max(1))).to_string(),
        };
        writeln!(
            out,
            "{:<42} {:<9} {:>10} {:>10} {:>12}",
            show(&e.target, s),
            e.set,
            expires,
            e.packets,
            e.bytes
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
