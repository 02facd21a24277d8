//! `fwagent status [--json]`: reads the kernel itself (fresh figures, whether or not an agent
//! runs), then asks a running agent for its own figures over the control socket and joins
//! them. Exit codes: 0 healthy; 1 the table or a drop rule is missing or the kernel could not
//! be read (usable from monitoring); 2 configuration error.
//!
//! Order: kernel first, so the agent is asked only about the offenders actually shown.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::{AgentInput, BanMeta, KernelInput, Status, assemble, ban_key, host_name, kernel};
use crate::agent::{AgentFigures, RunOptions};
use crate::control::{self, ControlError, Request};
use crate::nft::{Nft, Schema};

/// How long the CLI waits for the agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `fwagent status`.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(after_help = "\
Figures marked \"since the rules were installed\" are the kernel's own counters; they restart \
when the rules are re-created (a schema change, or a re-install after someone flushed the \
ruleset). The totals are kept by the running agent across those events. Exit code 1 when \
the table or a drop rule is missing, or the kernel cannot be read.")]
pub struct StatusArgs {
    /// Configuration file [default: /etc/fwagent/fwagent.toml if it exists, else built-in].
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (the same document as the dashboard's /api/status).
    #[arg(long)]
    pub json: bool,
    /// The agent's state directory, when it runs with --state-dir (its control socket is
    /// there unless --run-dir is given).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of the agent's control socket [default: from the configuration].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

/// Runs `fwagent status`.
pub fn cli(a: StatusArgs) -> Result<ExitCode> {
    let opts = RunOptions {
        config: a.config.clone(),
        state_dir: a.state_dir.clone(),
        run_dir: a.run_dir.clone(),
        ..RunOptions::default()
    };
    let cfg = match opts.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fwagent: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let schema = Schema {
        table: cfg.firewall.table.clone(),
        set_size: cfg.firewall.set_size,
        ipv6_prefix: cfg.firewall.ipv6_prefix,
        priority: cfg.firewall.priority,
    };
    let st = read(&schema, &cfg.state.run_dir)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &st)?;
        writeln!(out)?;
    } else {
        super::text::render(&mut out, &st)?;
    }
    out.flush()?;
    Ok(if st.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads the kernel and the agent listening in `run_dir` (if any) into one snapshot.
pub fn read(schema: &Schema, run_dir: &Path) -> Result<Status> {
    let nft = Nft::open().context("opening the kernel's nftables interface")?;
    let features = *nft.features();
    drop(nft);
    let kernel = match kernel::read(schema, features) {
        Ok(v) => KernelInput {
            view: Some(v),
            read_at: Some(SystemTime::now()),
            error: None,
        },
        Err(e) => KernelInput {
            view: None,
            read_at: None,
            error: Some(e.to_string()),
        },
    };
    let keys: Vec<String> = kernel
        .view
        .as_ref()
        .map(|v| {
            v.top
                .iter()
                .map(|e| ban_key(&e.target, schema.ipv6_prefix))
                .collect()
        })
        .unwrap_or_default();
    let agent = ask_agent(&control::socket_path(run_dir), keys);
    Ok(assemble(
        schema,
        &kernel,
        agent,
        SystemTime::now(),
        host_name(),
    ))
}

/// The agent's figures and what it knows of `targets`' bans, or why there are none.
pub fn ask_agent(socket: &Path, targets: Vec<String>) -> AgentInput {
    let figures = match control::call(socket, &Request::Status, AGENT_TIMEOUT) {
        Err(ControlError::NoAgent(p)) => {
            return AgentInput::Absent(format!(
                "no agent is running (no control socket at {}): these are the kernel's figures \
                 only; per-rule figures and running totals need `fwagent run`",
                p.display()
            ));
        }
        Err(e) => return AgentInput::Absent(format!("the agent did not answer: {e}")),
        Ok(r) if !r.ok => {
            return AgentInput::Absent(format!("the agent refused: {}", r.message));
        }
        Ok(r) => match serde_json::from_value::<AgentFigures>(r.data) {
            Ok(f) => f,
            Err(e) => {
                return AgentInput::Absent(format!("the agent sent unreadable figures: {e}"));
            }
        },
    };
    let bans = if targets.is_empty() {
        Vec::new()
    } else {
        match control::call(socket, &Request::Bans { targets }, AGENT_TIMEOUT) {
            Ok(r) if r.ok => serde_json::from_value::<Vec<BanMeta>>(r.data).unwrap_or_default(),
            // An agent that cannot say (an older one): the offenders show without rules.
            _ => Vec::new(),
        }
    };
    AgentInput::Running {
        figures: Box::new(figures),
        bans,
    }
}
