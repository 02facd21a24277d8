//! The `fwagent` command line. `main` parses flags, runs one command and turns its result
//! into an exit code; errors are printed once as `fwagent: {err:#}` with the cause chain.
//! Each command group lives in its own file.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check_config;
mod kernel;
mod run;
mod scan;

#[derive(Parser, Debug)]
#[command(
    name = "fwagent",
    version,
    about = "Ban log offenders in the kernel over netlink"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: follow logs, detect offenders, ban them in the kernel.
    Run(run::RunArgs),
    /// Create (or check) fwagent's nftables table, sets and drop rules.
    Setup(kernel::SetupArgs),
    /// Remove fwagent's table and every ban in it (no other table is touched).
    Teardown(kernel::TeardownArgs),
    /// Ban addresses or networks.
    Ban(kernel::BanArgs),
    /// Lift bans.
    Unban(kernel::UnbanArgs),
    /// List banned addresses with remaining time and dropped packets.
    List(kernel::ListArgs),
    /// Show what is enforced: set sizes, drops per hook, top offenders.
    Status(crate::status::cli::StatusArgs),
    /// Run the detector over log files without touching the kernel.
    Scan(scan::ScanArgs),
    /// Validate the configuration and print the effective values.
    CheckConfig(check_config::CheckConfigArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Setup(a) => kernel::setup(a),
        Command::Teardown(a) => kernel::teardown(a),
        Command::Ban(a) => kernel::ban(a),
        Command::Unban(a) => kernel::unban(a),
        Command::List(a) => kernel::list(a),
        Command::Status(a) => crate::status::cli::cli(a),
        Command::Scan(a) => scan::scan(a),
        Command::CheckConfig(a) => check_config::check_config(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("fwagent: {err:#}");
            // Configuration mistakes are usage errors (2), like clap's own.
            if err.chain().any(|c| c.is::<crate::config::ConfigError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Logs go to stderr. Under systemd (JOURNAL_STREAM set) journald adds time and unit, so
/// lines carry neither timestamps nor colours; elsewhere colours only on a terminal.
/// `FWAGENT_LOG` takes a filter such as `debug` or `fwagent::agent=debug`.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FWAGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
