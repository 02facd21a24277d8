//! `setup`, `teardown`, `ban`, `unban`, `list`, `status`: the kernel commands.
use std::process::ExitCode;

use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct SetupArgs {}
#[derive(clap::Args, Debug)]
pub struct TeardownArgs {}
#[derive(clap::Args, Debug)]
pub struct BanArgs {}
#[derive(clap::Args, Debug)]
pub struct UnbanArgs {}
#[derive(clap::Args, Debug)]
pub struct ListArgs {}
#[derive(clap::Args, Debug)]
pub struct StatusArgs {}

pub fn setup(_: SetupArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn teardown(_: TeardownArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn ban(_: BanArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn unban(_: UnbanArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn list(_: ListArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
pub fn status(_: StatusArgs) -> Result<ExitCode> {
    bail!("not implemented yet")
}
