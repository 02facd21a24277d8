//! `fwagent check-config`: validate the configuration and print the effective values.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{self, Config};
use crate::detect::{Detector, LocalAddrs};
use crate::duration::Human;

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// Configuration file [default: /etc/fwagent/fwagent.toml if it exists, else built-in].
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn check_config(args: CheckConfigArgs) -> Result<ExitCode> {
    let cfg = Config::load(args.config.as_deref())?;
    // Build the rules as the agent would: an unknown rule name or a bad regex is a
    // configuration error too (exit 2), named by file, line and key.
    let det =
        Detector::from_config(&cfg, LocalAddrs::new()).map_err(crate::agent::rule_config_error)?;
    let from = match &args.config {
        Some(p) => p.display().to_string(),
        None if std::path::Path::new(config::DEFAULT_PATH).exists() => {
            config::DEFAULT_PATH.to_string()
        }
        None => "the embedded default (no config file)".to_string(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "# configuration OK: {from}")?;
    write!(out, "{}", cfg.to_toml())?;
    // Built-in rules appear above only where the file overrides them: show every rule as it
    // will run (as comments, so the output stays a valid config).
    writeln!(
        out,
        "\n# Rules in effect (built-in defaults merged with [rules.*]):"
    )?;
    for r in det.rules() {
        let used = cfg.sources.iter().any(|s| s.rules.contains(&r.name));
        writeln!(
            out,
            "#   {:<15} max_hits = {}, find_time = {}, ban_time = {}{}",
            r.name,
            r.max_hits,
            Human(r.find_time),
            Human(r.ban_time),
            if used { "" } else { "  (no source uses it)" }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
