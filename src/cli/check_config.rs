//! `fwagent check-config`: validate the configuration and print the effective values.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{self, Config};
use crate::detect::{Detector, LocalAddrs};

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
    Ok(ExitCode::SUCCESS)
}
