//! `fwagent run`: the long-running agent that joins followers, detector and kernel.
//!
//! One async loop owns all agent state (detector windows, the mirror of active bans, the
//! per-rule figures) and reacts to five things, in [`Agent::run`]:
//!
//! 1. a batch of lines from a follower → detector → one kernel transaction for the batch's
//!    offences → the bans, their history and the follower's checkpoint queued to the store
//!    (in that order: the kernel write is the latency path, the fsync is not);
//! 2. a request on the control socket (`ban`, `unban`, `status`, `list`, `teardown`);
//! 3. a deletion of our table by someone else (nftables events) → re-install with every
//!    active ban, within milliseconds;
//! 4. a tick: systemd watchdog, a generation check as the safety net for 3, pruning;
//! 5. signals: SIGHUP reloads the config without dropping bans, SIGTERM/SIGINT stop
//!    (bans stay in the kernel; `fwagent teardown` removes them).
//!
//! Start-up order matters and is written out in [`start`]: config → store → kernel table →
//! reconcile kernel and store (restore after a reboot, adopt bans made by the CLI while no
//! agent ran) → control socket → followers from their checkpoints → READY.
//!
//! The kernel socket and the store each live on their own thread behind a handle
//! ([`kernel`], [`store`]); nothing here blocks on them except where a reply is needed.

mod bans;
pub mod kernel;
pub mod server;
pub mod watch;
pub mod web;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch as tokio_watch};

use crate::config::{Config, ConfigError, SourceConfig};
use crate::control::{Request, Response};
use crate::detect::{
    Detector, EXPIRY_SLACK, Key, LocalAddrs, Matcher, NeverBan, Observation, Offence, Protection,
    RuleError,
};
use crate::duration::Human;
use crate::follow::{self, Batch, Checkpoint, FollowOptions, SourceHandle, SourceId, StartAt};
use crate::nft::{self, Applied, Nft, Schema, Target};
use crate::state::{self, Committer, Store, Txn};
use bans::{BanView, Bans};
use kernel::{KernelBan, KernelHandle};

/// The rule `--log PATH` applies (the embedded default's rule).
pub const DEFAULT_RULE: &str = "exim-ratelimit";

/// How `fwagent run` was invoked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    /// Follow these files with [`DEFAULT_RULE`] instead of the configured sources.
    pub logs: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub from_start: bool,
    pub dry_run: bool,
}

impl RunOptions {
    /// Loads the configuration and applies the command-line overrides.
    pub fn load_config(&self) -> Result<Config> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if !self.logs.is_empty() {
            cfg.sources = self
                .logs
                .iter()
                .map(|p| SourceConfig {
                    path: p.clone(),
                    rules: vec![DEFAULT_RULE.to_string()],
                })
                .collect();
        }
        if let Some(dir) = &self.state_dir {
            cfg.state.dir = dir.clone();
            // A private state dir also gets its own control socket, so agents in test
            // namespaces never answer each other's CLI.
            if self.run_dir.is_none() {
                cfg.state.run_dir = dir.clone();
            }
        }
        if let Some(dir) = &self.run_dir {
            cfg.state.run_dir = dir.clone();
        }
        Ok(cfg)
    }
}

/// Runs the agent until SIGTERM/SIGINT (exit 0) or a fatal start-up error.
pub fn run(opts: RunOptions) -> Result<ExitCode> {
    let cfg = opts.load_config()?;
    // One thread for the loop: the work per line is small, and the kernel and store have
    // threads of their own. Keeps RSS and idle cost low on a small VPS.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut agent = start(opts, cfg).await?;
        agent.run().await
    })
}

/// Schema of the kernel objects from the config.
fn schema_of(cfg: &Config) -> Schema {
    Schema {
        table: cfg.firewall.table.clone(),
        set_size: cfg.firewall.set_size,
        ipv6_prefix: cfg.firewall.ipv6_prefix,
        priority: cfg.firewall.priority,
    }
}

/// The kernel target for a stored ban (a /32, the IPv6 prefix length, a /128, or a network).
pub fn net_target(net: IpNet, prefix: u8) -> Target {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => Target::V4(n.addr()),
        IpNet::V4(n) => Target::Net4(n.trunc()),
        IpNet::V6(n) if n.prefix_len() == 128 => Target::V6Exact(n.addr()),
        IpNet::V6(n) if n.prefix_len() == prefix => Target::V6Prefix(n.network()),
        IpNet::V6(n) => Target::Net6(n.trunc()),
    }
}

/// The network a kernel target stands for.
pub fn target_net(t: Target, prefix: u8) -> IpNet {
    match t.normalize(prefix) {
        Target::V4(a) => IpNet::V4(Ipv4Net::from(a)),
        Target::V6Prefix(a) => {
            IpNet::V6(Ipv6Net::new(a, prefix).unwrap_or_else(|_| Ipv6Net::from(a)))
        }
        Target::V6Exact(a) => IpNet::V6(Ipv6Net::from(a)),
        Target::Net4(n) => IpNet::V4(n),
        Target::Net6(n) => IpNet::V6(n),
    }
}

/// What a manual ban of `t` covers, refusing loopback, local and allow-listed addresses unless
/// `force`. An IPv6 address is banned by its prefix, or alone when its prefix holds an address
/// we must never ban (the same choice the detector makes). Shared by the agent and the CLI.
pub fn manual_target(never: &NeverBan, t: Target, force: bool) -> Result<Target, String> {
    // Forced: exactly what was asked, even if it covers our own addresses.
    if force {
        return Ok(t);
    }
    let refuse = |what: String, why: Protection, network: bool| {
        let why = match (why, network) {
            (Protection::Local(ip), true) => format!("holds {ip}, an address of this host"),
            (Protection::Local(_), false) => "is an address of this host".to_string(),
            (Protection::AllowListed(n), true) => format!("overlaps allow entry {n}"),
            (Protection::AllowListed(n), false) => format!("is allow-listed (allow entry {n})"),
            (Protection::Special, true) => {
                "overlaps loopback, link-local, multicast or other non-routable addresses"
                    .to_string()
            }
            (Protection::Special, false) => {
                "is a loopback, link-local, multicast or other non-routable address".to_string()
            }
        };
        Err(format!(
            "{what} {why}: refusing to ban it (--force overrides; you may lock yourself out)"
        ))
    };
    let address = |ip: IpAddr| never.why_protected(ip);
    match t {
        Target::V4(a) => match address(IpAddr::V4(a)) {
            Some(why) => refuse(a.to_string(), why, false),
            None => Ok(t),
        },
        Target::V6Exact(a) => match address(IpAddr::V6(a)) {
            Some(why) => refuse(a.to_string(), why, false),
            None => Ok(t),
        },
        Target::V6Prefix(a) => match never.key_for(IpAddr::V6(a)) {
            Some(Key::V6Exact(x)) => Ok(Target::V6Exact(x)),
            Some(_) => Ok(Target::V6Prefix(a)),
            // key_for refuses only protected addresses; when in doubt, do not ban.
            None => refuse(
                a.to_string(),
                address(IpAddr::V6(a)).unwrap_or(Protection::Special),
                false,
            ),
        },
        Target::Net4(n) => match never.why_covered(IpNet::V4(n)) {
            Some(why) => refuse(n.to_string(), why, true),
            None => Ok(t),
        },
        Target::Net6(n) => match never.why_covered(IpNet::V6(n)) {
            Some(why) => refuse(n.to_string(), why, true),
            None => Ok(t),
        },
    }
}

/// The detector key of a stored target (for escalation history).
fn net_key(net: IpNet) -> Key {
    match net {
        IpNet::V4(n) => Key::V4(n.addr()),
        IpNet::V6(n) if n.prefix_len() == 128 => Key::V6Exact(n.addr()),
        IpNet::V6(n) => Key::V6Prefix(n.network(), n.prefix_len()),
    }
}

/// Tells the detector which keys are banned, so lines already on their way are not counted.
/// Network bans (manual CIDRs) have no detector key and are skipped.
fn mark_banned(detector: &mut Detector, bans: &Bans, prefix: u8) {
    for b in bans.iter() {
        mark_one_banned(detector, b.target, b.expires_at, prefix);
    }
}

/// Tells the detector that `target` is banned (a network wider than one detector key is not
/// its concern: its lines are dropped by the kernel anyway).
fn mark_one_banned(
    detector: &mut Detector,
    target: IpNet,
    expires_at: Option<SystemTime>,
    prefix: u8,
) {
    let single = match target {
        IpNet::V4(n) => n.prefix_len() == 32,
        IpNet::V6(n) => n.prefix_len() == 128 || n.prefix_len() == prefix,
    };
    if single {
        detector.mark_banned(net_key(target), expires_at);
    }
}

fn kernel_timeout(ban: &BanView<'_>, now: SystemTime) -> Option<Duration> {
    // A ban about to expire still gets a token second rather than "permanent".
    ban.remaining(now).map(|d| d.max(Duration::from_secs(1)))
}

/// A rule that does not build (unknown name, bad regex, no `host` capture) is a mistake in
/// the configuration like any other: turn it into a [`ConfigError`] so the CLI exits with 2,
/// keeping the `FILE:LINE: key` location and the regex engine's explanation.
pub(crate) fn rule_config_error(e: RuleError) -> ConfigError {
    let location = match &e {
        RuleError::Regex { location, .. }
        | RuleError::NoHost { location, .. }
        | RuleError::NoPatterns { location, .. }
        | RuleError::Unknown { location, .. } => location.clone(),
    };
    let text = e.to_string();
    let mut message = text
        .strip_prefix(&format!("{location}: "))
        .unwrap_or(&text)
        .to_string();
    if let Some(cause) = std::error::Error::source(&e) {
        message = format!("{message}: {cause}");
    }
    ConfigError::Invalid { location, message }
}

/// One followed file.
struct Source {
    path: PathBuf,
    rules: Vec<String>,
    matcher: Matcher,
    handle: SourceHandle,
    /// Position after the last batch we processed (what a restart resumes from).
    checkpoint: Option<Checkpoint>,
    /// Lines of this file that counted towards each rule (for status and metrics).
    matched: BTreeMap<String, u64>,
}

/// Figures for status and metrics (since the agent started).
#[derive(Debug, Default, Clone, Serialize)]
struct RuleFigures {
    hits: u64,
    bans: u64,
    unbans: u64,
}

/// The newest ban, for status.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LastBan {
    pub target: String,
    pub rule: String,
    pub at_unix: u64,
}

struct Agent {
    opts: RunOptions,
    cfg: Config,
    schema: Schema,
    own: bool,
    kernel: Option<KernelHandle>,
    features: nft::Features,
    /// Reads (pruning) go through the store; writes through the committer thread.
    store: Arc<Store>,
    committer: Committer,
    detector: Detector,
    local: LocalAddrs,
    _local_watch: Option<crate::detect::local::LocalWatch>,
    sources: Vec<Source>,
    events: mpsc::Receiver<follow::Event>,
    stop_followers: tokio_watch::Sender<bool>,
    calls: mpsc::Receiver<server::Call>,
    table_events: mpsc::Receiver<()>,
    /// The table name the event watcher looks for (changed by a reload that renames it).
    watched_table: Arc<RwLock<String>>,
    /// Active bans as the agent knows them, by target network.
    bans: Bans,
    rule_figures: HashMap<String, RuleFigures>,
    reinstalls: u64,
    kernel_errors: u64,
    last_ban: Option<LastBan>,
    /// The newest bans (at most [`RECENT_BANS`]), oldest first, for the dashboard.
    recent_bans: VecDeque<LastBan>,
    last_generation: Option<u32>,
    started: Instant,
    socket_path: Option<PathBuf>,
    /// Shared with the status refresher and the web server (running totals, history).
    hub: Arc<web::Hub>,
    /// Work was done since the last tick: give freed heap back to the kernel on the next one.
    trim_pending: bool,
}

/// How many recent bans status keeps.
const RECENT_BANS: usize = 10;

/// Brings the agent up; see the module docs for the order.
async fn start(opts: RunOptions, cfg: Config) -> Result<Agent> {
    let now = SystemTime::now();
    let schema = schema_of(&cfg);

    // Local addresses first: nothing may be judged before we know what is ours.
    let local = LocalAddrs::new();
    let local_watch = match local.watch().await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read local addresses; only the allow-list and special ranges are protected");
            None
        }
    };
    let mut detector = Detector::from_config(&cfg, local.clone()).map_err(rule_config_error)?;

    // The store: a bad file is moved aside inside open(); only a second agent is fatal.
    let store = if opts.dry_run {
        Store::in_memory()?
    } else {
        let (store, report) = Store::open(&cfg.state.dir)?;
        tracing::info!(path = %cfg.state.dir.display(), bans = report.bans, outcome = ?report.outcome, "state store opened");
        store
    };
    let stored = store.active_bans(now)?;
    store.for_each_history(|net, _, times: Vec<u64>| {
        detector.restore_history(net_key(net), times);
    })?;
    let checkpoints: HashMap<PathBuf, Checkpoint> = cfg
        .sources
        .iter()
        .filter_map(|s| match store.checkpoint::<Checkpoint>(&s.path) {
            Ok(c) => c.map(|c| (s.path.clone(), c)),
            Err(e) => {
                tracing::warn!(path = %s.path.display(), error = %e, "unreadable checkpoint; starting at the end");
                None
            }
        })
        .collect();
    let store = Arc::new(store);
    let committer = Committer::spawn(store.clone()).context("starting the store thread")?;

    // The kernel.
    let (kernel, features, own) = if opts.dry_run {
        (None, nft::Features::default(), false)
    } else {
        let nft = Nft::open()?;
        let features = *nft.features();
        let own = cfg.firewall.protect && features.persist;
        let k = KernelHandle::start(nft, schema.clone()).context("starting the kernel thread")?;
        (Some(k), features, own)
    };

    let (table_tx, table_events) = mpsc::channel(1);
    let watched_table = Arc::new(RwLock::new(schema.table.clone()));
    if kernel.is_some()
        && let Err(e) = watch::start(watched_table.clone(), table_tx)
    {
        tracing::warn!(error = %e, "cannot listen to nftables events; relying on periodic checks");
    }

    let (_, events) = mpsc::channel(1);
    let (stop_followers, _) = tokio_watch::channel(false);
    // One request channel for the control socket and the status refresher.
    let (calls_tx, calls) = mpsc::channel(16);
    let mut agent = Agent {
        opts,
        cfg,
        schema,
        own,
        kernel,
        features,
        store,
        committer,
        detector,
        local,
        _local_watch: local_watch,
        sources: Vec::new(),
        events,
        stop_followers,
        calls,
        table_events,
        watched_table,
        bans: Bans::new(),
        rule_figures: HashMap::new(),
        reinstalls: 0,
        kernel_errors: 0,
        last_ban: None,
        recent_bans: VecDeque::new(),
        last_generation: None,
        started: Instant::now(),
        socket_path: None,
        hub: web::Hub::new(),
        trim_pending: true,
    };

    agent.reconcile(stored, now).await?;
    agent.unban_protected("start-up").await;
    if !agent.opts.dry_run {
        agent.bind_control(calls_tx.clone())?;
    }
    let feed = web::Feed {
        kernel: agent.kernel.clone(),
        features: agent.features,
        schema: agent.schema.clone(),
        calls: calls_tx,
    };
    if let Err(e) = web::start(&agent.cfg.web, agent.hub.clone(), feed) {
        tracing::error!(
            error = format!("{e:#}"),
            "no dashboard or metrics; the agent runs on without them"
        );
    }
    agent.start_sources(checkpoints);
    // A follower takes its position (the end of the file, on a first start) when its task
    // first runs, not when it is spawned. Let every follower task run once before READY, or
    // lines written just after READY would count as "before the end" and be skipped.
    tokio::task::yield_now().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        table = %agent.schema.table,
        protected = agent.own,
        bans = agent.bans.len(),
        sources = agent.sources.len(),
        dry_run = agent.opts.dry_run,
        "fwagent running"
    );
    Ok(agent)
}

impl Agent {
    /// Makes kernel and store agree: install the table, restore stored bans the kernel lost
    /// (a reboot), adopt kernel bans the store does not know (made by the CLI while no agent
    /// ran). Nothing already in the kernel is added again.
    async fn reconcile(&mut self, stored: Vec<state::Ban>, now: SystemTime) -> Result<()> {
        for b in &stored {
            self.bans.insert(b);
        }
        drop(stored);
        let Some(kernel) = self.kernel.clone() else {
            return Ok(());
        };
        let applied = kernel
            .apply(self.schema.clone(), self.own)
            .await
            .map_err(|e| anyhow::anyhow!("installing table inet {}: {e}", self.schema.table))?;
        tracing::info!(table = %self.schema.table, outcome = ?applied, "kernel table ready");
        let in_kernel = if applied == Applied::Created {
            Vec::new()
        } else {
            self.read_elements().await?
        };
        let mut txn = Txn::new();
        let mut present = std::collections::HashSet::new();
        for el in in_kernel {
            let net = target_net(el.target, self.schema.ipv6_prefix);
            present.insert(net);
            if !self.bans.contains(&net) {
                let ban = state::Ban {
                    target: net,
                    rule: state::MANUAL.to_string(),
                    banned_at: now,
                    expires_at: el.expires.map(|d| now + d),
                    hits: 0,
                    times_banned: 1,
                };
                tracing::info!(address = %net, "adopted a ban found in the kernel");
                txn.put_ban(&ban);
                self.bans.insert(&ban);
            }
        }
        let missing: Vec<KernelBan> = self
            .bans
            .iter()
            .filter(|b| !present.contains(&b.target))
            .map(|b| {
                (
                    net_target(b.target, self.schema.ipv6_prefix),
                    kernel_timeout(&b, now),
                )
            })
            .collect();
        if !missing.is_empty() {
            let n = missing.len();
            let started = Instant::now();
            match kernel.ban(missing).await {
                Ok(_) => tracing::info!(
                    bans = n,
                    ms = started.elapsed().as_millis() as u64,
                    "restored bans the kernel did not have (reboot or table removed)"
                ),
                Err(e) => {
                    self.kernel_errors += 1;
                    tracing::error!(error = %e, bans = n, "restoring bans failed");
                }
            }
        }
        self.committer.submit(txn);
        mark_banned(&mut self.detector, &self.bans, self.schema.ipv6_prefix);
        self.last_generation = kernel.generation().await.ok();
        Ok(())
    }

    /// Reads our elements on a socket of their own (a dump never delays bans).
    async fn read_elements(&self) -> Result<Vec<nft::Element>> {
        let schema = self.schema.clone();
        let features = self.features;
        tokio::task::spawn_blocking(move || -> Result<Vec<nft::Element>> {
            let mut nft = Nft::open_with(features)?;
            Ok(nft.elements(&schema)?)
        })
        .await
        .context("reading kernel elements")?
    }

    fn bind_control(&mut self, tx: mpsc::Sender<server::Call>) -> Result<()> {
        let path = crate::control::socket_path(&self.cfg.state.run_dir);
        let listener = server::bind(&path)?;
        tokio::spawn(server::serve(listener, path.clone(), tx));
        self.socket_path = Some(path);
        Ok(())
    }

    /// Starts one follower per configured source, each from its checkpoint.
    fn start_sources(&mut self, mut checkpoints: HashMap<PathBuf, Checkpoint>) {
        let (tx, rx) = mpsc::channel(64);
        self.events = rx;
        let (stop, _) = tokio_watch::channel(false);
        let old = std::mem::replace(&mut self.stop_followers, stop);
        let _ = old.send(true);
        self.sources.clear();
        for (i, src) in self.cfg.sources.iter().enumerate() {
            let start = if self.opts.from_start {
                StartAt::Beginning
            } else {
                match checkpoints.remove(&src.path) {
                    Some(c) => StartAt::Checkpoint(c),
                    None => StartAt::End,
                }
            };
            let from = match &start {
                StartAt::Beginning => "the beginning".to_string(),
                StartAt::End => "the end".to_string(),
                StartAt::Checkpoint(Checkpoint::File(p)) => {
                    format!("byte {} (checkpoint)", p.offset)
                }
            };
            if src.path.exists() {
                tracing::info!(path = %src.path.display(), rules = ?src.rules, from = %from, "following");
            } else {
                tracing::warn!(path = %src.path.display(), rules = ?src.rules, "following a file that does not exist yet; it will be read from its first line when it appears");
            }
            let mut rx = self.stop_followers.subscribe();
            let handle = follow::spawn_file(
                SourceId(i),
                src.path.clone(),
                start.clone(),
                FollowOptions::default(),
                tx.clone(),
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                },
            );
            self.sources.push(Source {
                path: src.path.clone(),
                rules: src.rules.clone(),
                matcher: self.detector.matcher(&src.rules),
                handle,
                checkpoint: match start {
                    StartAt::Checkpoint(c) => Some(c),
                    _ => None,
                },
                matched: BTreeMap::new(),
            });
        }
    }

    /// The main loop. Returns the exit code on shutdown.
    async fn run(&mut self) -> Result<ExitCode> {
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let watchdog = sd_notify::watchdog_enabled();
        let tick_every = watchdog
            .map(|w| (w / 2).min(Duration::from_secs(10)))
            .unwrap_or(Duration::from_secs(10));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                Some(ev) = self.events.recv() => match ev {
                    follow::Event::Batch(b) => {
                        self.trim_pending = true;
                        self.on_batch(b).await
                    }
                    follow::Event::Error { source, error } => {
                        let path = self.sources.get(source.0).map(|s| s.path.display().to_string());
                        tracing::warn!(path = path.as_deref().unwrap_or("?"), %error, "follower");
                    }
                },
                Some((req, reply)) = self.calls.recv() => {
                    let stop = matches!(req, Request::Teardown);
                    self.trim_pending = true;
                    let answer = self.on_request(req).await;
                    let ok = answer.ok;
                    let _ = reply.send(answer);
                    if stop && ok {
                        tracing::info!("table removed on request; stopping");
                        // Let the connection task write the answer before the runtime ends.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return self.shutdown().await;
                    }
                }
                Some(()) = self.table_events.recv() => self.ensure_table("nftables event").await,
                _ = tick.tick() => {
                    if watchdog.is_some() {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                    self.check_generation().await;
                    if last_prune.elapsed() >= Duration::from_secs(3600) {
                        last_prune = Instant::now();
                        self.prune();
                    }
                    if std::mem::take(&mut self.trim_pending) {
                        release_free_memory();
                    }
                }
                _ = hup.recv() => self.reload().await,
                _ = term.recv() => return self.shutdown().await,
                _ = int.recv() => return self.shutdown().await,
            }
        }
    }

    async fn shutdown(&mut self) -> Result<ExitCode> {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = self.stop_followers.send(true);
        if let Err(e) = self.committer.flush() {
            tracing::error!(error = %e, "saving state at shutdown failed");
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        if self.opts.dry_run {
            tracing::info!(
                would_ban = self.bans.len(),
                "fwagent stopped (dry run: nothing was banned)"
            );
        } else if self.bans.is_empty() {
            tracing::info!("fwagent stopped");
        } else {
            tracing::info!(
                bans = self.bans.len(),
                "fwagent stopped; bans stay in the kernel (`fwagent teardown` removes them)"
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Lines → offences → one kernel transaction → store (bans, history, checkpoint).
    async fn on_batch(&mut self, batch: Batch) {
        let now = SystemTime::now();
        let Some(src) = self.sources.get(batch.source.0) else {
            return;
        };
        let mut ids = Vec::new();
        let mut offences = Vec::new();
        // Hits per rule id, folded into the named figures once per batch.
        let mut hits = vec![0u64; self.detector.rules().len()];
        for line in batch.lines.iter() {
            ids.clear();
            src.matcher.candidates(line.bytes, &mut ids);
            for &id in &ids {
                match self.detector.observe_detail(id, line.bytes, now) {
                    // A line from an address banned right now still matched the rule.
                    Observation::Counted { .. } | Observation::Banned { .. } => hits[id] += 1,
                    Observation::Offence(o) => {
                        hits[id] += 1;
                        offences.push(o);
                    }
                    _ => {}
                }
            }
        }
        for (id, n) in hits.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            let name = self.detector.rules()[id].name.clone();
            *self.sources[batch.source.0]
                .matched
                .entry(name.clone())
                .or_default() += n;
            self.rule_figures.entry(name).or_default().hits += n;
        }
        let mut txn = Txn::new();
        if !offences.is_empty() {
            self.ban_offences(offences, now, &mut txn).await;
        }
        if let Some(cp) = batch.checkpoint {
            let path = &self.sources[batch.source.0].path;
            if let Err(e) = txn.set_checkpoint(path, &cp) {
                tracing::error!(error = %e, "checkpoint not saved");
            }
            self.sources[batch.source.0].checkpoint = Some(cp);
        }
        if !self.opts.dry_run {
            self.committer.submit(txn);
        }
    }

    async fn ban_offences(&mut self, offences: Vec<Offence>, now: SystemTime, txn: &mut Txn) {
        let mut bans: Vec<KernelBan> = Vec::new();
        let mut records: Vec<(state::Ban, Key, u32)> = Vec::new();
        for o in offences {
            let net = o.key.net();
            // Already banned. The detector does not count lines of keys it knows are banned,
            // so this is a safety net (e.g. a key banned under another form); it recorded
            // the offence in the escalation history, and no ban follows: take it back, or
            // the next real ban would escalate once per extra batch of lines.
            // A ban about to end (the kernel may already have dropped it) is renewed.
            if self
                .bans
                .get(&net)
                .is_some_and(|b| b.is_active(now + EXPIRY_SLACK))
                || records.iter().any(|(r, _, _)| r.target == net)
            {
                self.detector.unrecord(o.key);
                continue;
            }
            let rule = self.detector.rules()[o.rule].name.clone();
            let timeout = (!o.ban_time.is_zero()).then_some(o.ban_time);
            bans.push((net_target(net, self.schema.ipv6_prefix), timeout));
            let times_banned = o.repeat + 1;
            records.push((
                state::Ban {
                    target: net,
                    rule,
                    banned_at: now,
                    expires_at: timeout.map(|d| now + d),
                    hits: u64::from(o.hits),
                    times_banned,
                },
                o.key,
                o.hits,
            ));
        }
        if records.is_empty() {
            return;
        }
        if let Some(kernel) = &self.kernel
            && let Err(e) = kernel.ban(bans).await
        {
            self.kernel_errors += 1;
            tracing::error!(error = %e, bans = records.len(), "ban failed");
            return;
        }
        for (ban, key, hits) in records {
            let duration = match ban.expires_at {
                Some(t) => Human(t.duration_since(now).unwrap_or_default()).to_string(),
                None => "permanent".into(),
            };
            if self.opts.dry_run {
                tracing::info!(address = %ban.target, rule = %ban.rule, hits, %duration, repeat = ban.times_banned - 1, "would ban (dry run)");
                // Remember it as banned (in memory only), so later lines of the same bot
                // are skipped as in a real run instead of "escalating" again and again.
                self.bans.insert(&ban);
                continue;
            }
            tracing::info!(address = %ban.target, rule = %ban.rule, hits, %duration, repeat = ban.times_banned - 1, "banned");
            self.rule_figures.entry(ban.rule.clone()).or_default().bans += 1;
            self.note_ban(ban.target, &ban.rule, now);
            txn.put_ban(&ban);
            if let Some(times) = self.detector.history_of(key)
                && let Err(e) = txn.set_history(ban.target, now, times)
            {
                tracing::error!(error = %e, "history not saved");
            }
            self.bans.insert(&ban);
        }
    }

    /// Re-installs the table if someone removed it (or any part of it), with every active ban.
    async fn ensure_table(&mut self, why: &str) {
        let Some(kernel) = self.kernel.clone() else {
            return;
        };
        let applied = self.reapply(&kernel, self.schema.clone(), self.own).await;
        match applied {
            Ok(Applied::Unchanged) => {}
            Ok(outcome) => {
                self.reinstalls += 1;
                let now = SystemTime::now();
                let present: std::collections::HashSet<IpNet> = match outcome {
                    Applied::Created => Default::default(),
                    _ => match self.read_elements().await {
                        Ok(els) => els
                            .into_iter()
                            .map(|e| target_net(e.target, self.schema.ipv6_prefix))
                            .collect(),
                        Err(e) => {
                            tracing::error!(error = %e, "reading elements after a rebuild");
                            Default::default()
                        }
                    },
                };
                let missing: Vec<KernelBan> = self
                    .bans
                    .iter()
                    .filter(|b| b.is_active(now) && !present.contains(&b.target))
                    .map(|b| {
                        (
                            net_target(b.target, self.schema.ipv6_prefix),
                            kernel_timeout(&b, now),
                        )
                    })
                    .collect();
                let n = missing.len();
                let result = if missing.is_empty() {
                    Ok(Default::default())
                } else {
                    kernel.ban(missing).await
                };
                match result {
                    Ok(_) => {
                        tracing::warn!(table = %self.schema.table, reason = why, ?outcome, restored = n,
                        "our table was removed or changed by someone else; re-installed with every active ban")
                    }
                    Err(e) => {
                        self.kernel_errors += 1;
                        tracing::error!(error = %e, "re-installing bans failed");
                    }
                }
            }
            Err(e) => {
                self.kernel_errors += 1;
                tracing::error!(error = %e, "checking table inet {}", self.schema.table);
            }
        }
        if let Some(k) = &self.kernel {
            self.last_generation = k.generation().await.ok();
        }
    }

    /// Applies `schema` for a running agent, bracketed for the running drop totals: the last
    /// sample of the current rules first (while they can still be read), then the apply,
    /// then whether the rules were created anew (their counters restarted).
    async fn reapply(
        &self,
        kernel: &KernelHandle,
        schema: Schema,
        own: bool,
    ) -> Result<Applied, kernel::KernelError> {
        let last = web::counters(kernel.schema(), self.features).await;
        self.hub.begin_reinstall(last.as_deref());
        let applied = kernel.apply(schema, own).await;
        self.hub.end_reinstall(matches!(
            applied,
            Ok(Applied::Created | Applied::Rebuilt { .. })
        ));
        applied
    }

    /// Records a ban for status: the newest, and the short list of recent ones.
    fn note_ban(&mut self, target: IpNet, rule: &str, now: SystemTime) {
        let b = LastBan {
            target: target.to_string(),
            rule: rule.to_string(),
            at_unix: unix(now),
        };
        if self.recent_bans.len() == RECENT_BANS {
            self.recent_bans.pop_front();
        }
        self.recent_bans.push_back(b.clone());
        self.last_ban = Some(b);
    }

    /// The safety net for missed events: if the ruleset generation moved, check our table.
    async fn check_generation(&mut self) {
        let Some(kernel) = &self.kernel else { return };
        match kernel.generation().await {
            Ok(g) if Some(g) != self.last_generation => {
                self.ensure_table("generation changed").await
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the ruleset generation"),
        }
    }

    fn prune(&mut self) {
        let now = SystemTime::now();
        let figures = &mut self.rule_figures;
        self.bans.retain(|b| {
            let active = b.is_active(now);
            if !active {
                figures.entry(b.rule.to_string()).or_default().unbans += 1;
            }
            active
        });
        self.detector.prune(now);
        let (store, window) = (self.store.clone(), self.cfg.escalation.history);
        tokio::task::spawn_blocking(move || match store.prune(now, window) {
            Ok(r) => tracing::debug!(report = ?r, "state pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning state failed"),
        });
    }

    /// Unbans every active ban that now covers an address we must never ban (a config
    /// reload that allow-lists it, or a start with a new allow-list).
    async fn unban_protected(&mut self, why: &str) {
        let never = self.detector.never().clone();
        let hit: Vec<IpNet> = self
            .bans
            .keys()
            .filter(|net| never.covers_protected(**net))
            .copied()
            .collect();
        if hit.is_empty() {
            return;
        }
        for net in &hit {
            tracing::warn!(address = %net, reason = why, "unbanning: now allow-listed or local");
        }
        self.unban_nets(&hit).await;
    }

    /// Removes bans from kernel, mirror, store and history.
    async fn unban_nets(&mut self, nets: &[IpNet]) -> (usize, usize) {
        let targets: Vec<Target> = nets
            .iter()
            .map(|n| net_target(*n, self.schema.ipv6_prefix))
            .collect();
        let (mut removed, mut absent) = (0, nets.len());
        if let Some(kernel) = &self.kernel {
            match kernel.unban(targets).await {
                Ok(r) => (removed, absent) = (r.removed, r.absent),
                Err(e) => {
                    self.kernel_errors += 1;
                    tracing::error!(error = %e, "unban failed");
                }
            }
        }
        let mut txn = Txn::new();
        for net in nets {
            if let Some(b) = self.bans.remove(net) {
                tracing::info!(address = %show_net(*net), rule = %b.rule, "unbanned");
                self.rule_figures.entry(b.rule).or_default().unbans += 1;
            }
            self.detector.forgive(net_key(*net));
            txn.remove_ban(*net);
            txn.clear_history(*net);
        }
        self.committer.submit(txn);
        (removed, absent)
    }

    async fn reload(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match self.try_reload().await {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "reload failed; keeping the old configuration"
            ),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn try_reload(&mut self) -> Result<()> {
        let cfg = self.opts.load_config()?;
        let mut detector = Detector::from_config(&cfg, self.local.clone())?;
        detector.set_history(self.detector.history().clone());
        mark_banned(&mut detector, &self.bans, cfg.firewall.ipv6_prefix);
        let schema = schema_of(&cfg);
        let own = cfg.firewall.protect && self.features.persist;
        if let Some(kernel) = self.kernel.clone()
            && (schema != self.schema || own != self.own)
        {
            let old_table = self.schema.table.clone();
            let applied = self
                .reapply(&kernel, schema.clone(), own)
                .await
                .map_err(|e| anyhow::anyhow!("applying the new schema: {e}"))?;
            tracing::info!(?applied, table = %schema.table, "kernel objects follow the new configuration");
            self.schema = schema;
            self.own = own;
            *self
                .watched_table
                .write()
                .unwrap_or_else(|e| e.into_inner()) = self.schema.table.clone();
            if old_table != self.schema.table {
                // A new table starts empty: carry every ban over, then drop the old one.
                self.ensure_bans_present().await;
                if let Err(e) = kernel.teardown(old_table.clone()).await {
                    tracing::error!(error = %e, table = %old_table, "removing the old table");
                }
            }
            self.last_generation = kernel.generation().await.ok();
        }
        let sources_changed = cfg.sources != self.cfg.sources;
        self.detector = detector;
        self.cfg = cfg;
        self.unban_protected("configuration reload").await;
        if sources_changed {
            let cps = self
                .sources
                .iter()
                .filter_map(|s| s.checkpoint.clone().map(|c| (s.path.clone(), c)))
                .collect();
            self.start_sources(cps);
            // As at start-up: new followers take their position before "reloaded".
            tokio::task::yield_now().await;
        } else {
            // Same files, new rules: keep the followers, rebuild the matchers.
            for s in &mut self.sources {
                s.matcher = self.detector.matcher(&s.rules);
            }
        }
        Ok(())
    }

    async fn ensure_bans_present(&mut self) {
        let Some(kernel) = &self.kernel else { return };
        let now = SystemTime::now();
        let all: Vec<KernelBan> = self
            .bans
            .iter()
            .filter(|b| b.is_active(now))
            .map(|b| {
                (
                    net_target(b.target, self.schema.ipv6_prefix),
                    kernel_timeout(&b, now),
                )
            })
            .collect();
        if !all.is_empty()
            && let Err(e) = kernel.ban(all).await
        {
            self.kernel_errors += 1;
            tracing::error!(error = %e, "carrying bans over");
        }
    }

    async fn on_request(&mut self, req: Request) -> Response {
        match req {
            Request::Ban {
                targets,
                seconds,
                force,
            } => self.manual_ban(&targets, seconds, force).await,
            Request::Unban { targets } => self.manual_unban(&targets).await,
            Request::Status => Response::ok(
                "",
                serde_json::to_value(self.figures_json()).unwrap_or_default(),
            ),
            Request::List => Response::ok("", self.list_json()),
            Request::Bans { targets } => Response::ok("", self.bans_json(&targets)),
            Request::Teardown => {
                let Some(kernel) = &self.kernel else {
                    return Response::err("dry run: no kernel table to remove");
                };
                match kernel.teardown(self.schema.table.clone()).await {
                    Ok(existed) => {
                        let mut txn = Txn::new();
                        for net in self.bans.keys() {
                            txn.remove_ban(*net);
                        }
                        self.committer.submit(txn);
                        self.bans.clear();
                        let msg = if existed {
                            format!("removed table inet {}; the agent stops", self.schema.table)
                        } else {
                            format!(
                                "table inet {} did not exist; the agent stops",
                                self.schema.table
                            )
                        };
                        Response::ok(msg, serde_json::Value::Null)
                    }
                    Err(e) => {
                        Response::err(format!("removing table inet {}: {e}", self.schema.table))
                    }
                }
            }
        }
    }

    /// `fwagent ban` through the agent: same protections as the detector unless `force`.
    async fn manual_ban(
        &mut self,
        texts: &[String],
        seconds: Option<u64>,
        force: bool,
    ) -> Response {
        let never = self.detector.never().clone();
        let mut nets = Vec::new();
        for text in texts {
            let target = nft::parse_target(text)
                .and_then(|t| manual_target(&never, t, force))
                .map(|t| target_net(t, self.schema.ipv6_prefix));
            match target {
                Ok(net) => nets.push(net),
                Err(e) => return Response::err(format!("{e}; nothing was banned")),
            }
        }
        if nets.is_empty() {
            return Response::err("nothing to ban");
        }
        let now = SystemTime::now();
        let dur = seconds
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.ban.time);
        let timeout = (!dur.is_zero()).then_some(dur);
        let bans: Vec<KernelBan> = nets
            .iter()
            .map(|n| (net_target(*n, self.schema.ipv6_prefix), timeout))
            .collect();
        let Some(kernel) = &self.kernel else {
            return Response::err("dry run: nothing is banned");
        };
        if let Err(e) = kernel.ban(bans).await {
            self.kernel_errors += 1;
            return Response::err(format!("banning: {e}"));
        }
        let mut txn = Txn::new();
        for net in &nets {
            let times = self.bans.get(net).map(|b| b.times_banned).unwrap_or(0) + 1;
            let ban = state::Ban {
                target: *net,
                rule: state::MANUAL.to_string(),
                banned_at: now,
                expires_at: timeout.map(|d| now + d),
                hits: 0,
                times_banned: times,
            };
            tracing::info!(address = %net, rule = %state::MANUAL, duration = %Human(dur), "banned");
            mark_one_banned(
                &mut self.detector,
                ban.target,
                ban.expires_at,
                self.schema.ipv6_prefix,
            );
            txn.put_ban(&ban);
            self.bans.insert(&ban);
            self.note_ban(*net, state::MANUAL, now);
        }
        self.committer.submit(txn);
        let what = if nets.len() == 1 {
            show_net(nets[0])
        } else {
            format!("{} targets", nets.len())
        };
        let how = if dur.is_zero() {
            "permanently".to_string()
        } else {
            format!("for {}", Human(dur))
        };
        Response::ok(format!("banned {what} {how}"), serde_json::Value::Null)
    }

    async fn manual_unban(&mut self, texts: &[String]) -> Response {
        let mut nets = Vec::new();
        for text in texts {
            match nft::parse_target(text) {
                // An IPv6 address may be banned by its prefix or exactly: lift both.
                Ok(Target::V6Prefix(a)) => {
                    nets.push(IpNet::V6(Ipv6Net::from(a)));
                    if let Ok(p) = Ipv6Net::new(a, self.schema.ipv6_prefix) {
                        nets.push(IpNet::V6(p.trunc()));
                    }
                    // A detector ban made under an earlier ipv6_prefix (before a reload)
                    // covers the address by another prefix length: lift such prefix bans
                    // (≥ /48, the widest setting) that hold it. Manual network bans are
                    // lifted only by naming them, as for IPv4.
                    nets.extend(
                        self.bans
                            .iter()
                            .filter(|b| {
                                b.rule != state::MANUAL
                                    && matches!(b.target, IpNet::V6(p)
                                        if p.prefix_len() >= 48 && p.contains(&a))
                            })
                            .map(|b| b.target),
                    );
                }
                Ok(t) => nets.push(target_net(t, self.schema.ipv6_prefix)),
                Err(e) => return Response::err(format!("{e}; nothing was unbanned")),
            }
        }
        nets.sort();
        nets.dedup();
        let known: Vec<String> = nets
            .iter()
            .filter(|n| self.bans.contains(n))
            .map(|n| show_net(*n))
            .collect();
        let (removed, _) = self.unban_nets(&nets).await;
        let mut msg = format!(
            "unbanned {removed}; {} not banned",
            texts.len().saturating_sub(removed)
        );
        if removed > 0 && !known.is_empty() {
            const SHOWN: usize = 10;
            msg.push_str(&format!(
                " (lifted {}",
                known[..known.len().min(SHOWN)].join(", ")
            ));
            if known.len() > SHOWN {
                msg.push_str(&format!(" and {} more", known.len() - SHOWN));
            }
            msg.push(')');
        }
        Response::ok(msg, serde_json::Value::Null)
    }

    /// The agent's own figures, for `status` (the kernel's are read by the caller).
    fn figures_json(&self) -> AgentFigures {
        let mut rules: Vec<RuleJson> = self
            .detector
            .rules()
            .iter()
            .map(|r| {
                let f = self.rule_figures.get(&r.name).cloned().unwrap_or_default();
                RuleJson {
                    name: r.name.clone(),
                    hits: f.hits,
                    bans: f.bans,
                    unbans: f.unbans,
                }
            })
            .filter(|r| self.sources.iter().any(|s| s.rules.contains(&r.name)))
            .collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        AgentFigures {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            dry_run: self.opts.dry_run,
            table_owned: self.own,
            // Expired bans stay in the mirror until the hourly prune: do not count them.
            active_bans: {
                let now = SystemTime::now();
                self.bans.iter().filter(|b| b.is_active(now)).count()
            },
            reinstalls: self.reinstalls,
            kernel_errors: self.kernel_errors,
            last_ban: self.last_ban.clone(),
            recent_bans: self.recent_bans.iter().cloned().collect(),
            drop_counters: self.hub.carried(),
            history: self.hub.history(),
            rules,
            sources: self
                .sources
                .iter()
                .map(|s| {
                    let st = s.handle.stats.snapshot();
                    SourceJson {
                        path: s.path.display().to_string(),
                        rules: s.rules.clone(),
                        lines: st.lines,
                        bytes: st.bytes,
                        lines_cut: st.lines_cut,
                        errors: st.errors,
                        rotations: st.rotations,
                        offset: st.offset,
                        matched: s.matched.clone(),
                    }
                })
                .collect(),
        }
    }

    fn list_json(&self) -> serde_json::Value {
        let now = SystemTime::now();
        let mut v: Vec<_> = self
            .bans
            .iter()
            .filter(|b| b.is_active(now))
            .map(|b| ban_json(&b))
            .collect();
        v.sort_by(|a, b| a["target"].as_str().cmp(&b["target"].as_str()));
        serde_json::Value::Array(v)
    }

    /// The `list` entries of the named bans only (status's top offenders).
    fn bans_json(&self, targets: &[String]) -> serde_json::Value {
        let v = targets
            .iter()
            .filter_map(|t| t.parse::<IpNet>().ok())
            .filter_map(|net| self.bans.get(&net.trunc()))
            .map(|b| ban_json(&b))
            .collect();
        serde_json::Value::Array(v)
    }
}

fn ban_json(b: &BanView<'_>) -> serde_json::Value {
    serde_json::json!({
        "target": b.target.to_string(),
        "rule": b.rule,
        "hits": b.hits,
        "times_banned": b.times_banned,
        "banned_at_unix": unix(b.banned_at),
        "expires_at_unix": b.expires_at.map(unix),
    })
}

/// Hands memory freed since the last call back to the kernel. glibc keeps the peak of a bulk
/// operation (a 100,000-ban request, a restore, a burst of batches) in its arenas for good,
/// which measured 78 MiB RSS for 39 MiB in use with 100,000 bans. Called from the tick only
/// after work was done, so a quiet agent never pays for it.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A ban target as users write it: a bare IPv4 address for a /32, otherwise the network.
fn show_net(net: IpNet) -> String {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => n.addr().to_string(),
        other => other.to_string(),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The agent's part of `status --json` (field names are part of the documented format).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AgentFigures {
    pub pid: u32,
    #[serde(skip_deserializing, default = "version")]
    pub version: &'static str,
    pub uptime_secs: u64,
    pub dry_run: bool,
    pub table_owned: bool,
    pub active_bans: usize,
    pub reinstalls: u64,
    pub kernel_errors: u64,
    pub last_ban: Option<LastBan>,
    /// The newest bans, oldest first (at most 10).
    #[serde(default)]
    pub recent_bans: Vec<LastBan>,
    /// Drop counters carried across re-created rules (see `crate::status::totals`).
    #[serde(default)]
    pub drop_counters: Vec<crate::status::totals::Carried>,
    /// Bans and drops over the last 24 h.
    #[serde(default)]
    pub history: crate::status::totals::HistoryJson,
    pub rules: Vec<RuleJson>,
    pub sources: Vec<SourceJson>,
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RuleJson {
    pub name: String,
    pub hits: u64,
    pub bans: u64,
    #[serde(default)]
    pub unbans: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SourceJson {
    pub path: String,
    pub rules: Vec<String>,
    pub lines: u64,
    pub bytes: u64,
    pub lines_cut: u64,
    pub errors: u64,
    pub rotations: u64,
    pub offset: u64,
    /// Lines that counted towards each rule.
    #[serde(default)]
    pub matched: BTreeMap<String, u64>,
}
