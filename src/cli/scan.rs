//! `fwagent scan`: the detector over files, no kernel.
use std::process::ExitCode;

use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct ScanArgs {}

pub fn scan(_: ScanArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
