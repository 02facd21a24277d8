//! `fwagent run`: the long-running agent (see `crate::agent`).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::agent::{self, RunOptions};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
While the agent runs, `fwagent ban`, `unban`, `teardown` and `status` talk to it over its \
root-only control socket (<run_dir>/control.sock), so its store and the kernel never drift. \
With no agent running they act on the kernel directly, and the agent adopts what it finds \
when it starts. Without a config file the embedded default applies: follow \
/var/log/exim4/mainlog, ban after 3 `Rate limited` lines within 1 h, for 24 h.")]
pub struct RunArgs {
    /// Configuration file [default: /etc/fwagent/fwagent.toml if it exists, else built-in].
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Follow this file with the default rule (exim-ratelimit) instead of the configured
    /// sources. Repeatable.
    #[arg(long = "log", value_name = "PATH")]
    pub logs: Vec<PathBuf>,
    /// State directory [default: /var/lib/fwagent]. Also holds the control socket unless
    /// --run-dir is given.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of the control socket [default: /run/fwagent].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Read followed files from their beginning instead of their end or checkpoint.
    #[arg(long)]
    pub from_start: bool,
    /// Detect and log what would be banned; touch neither the kernel nor the state.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    agent::run(RunOptions {
        config: a.config,
        logs: a.logs,
        state_dir: a.state_dir,
        run_dir: a.run_dir,
        from_start: a.from_start,
        dry_run: a.dry_run,
    })
}
