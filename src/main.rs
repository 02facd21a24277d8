use std::process::ExitCode;

fn main() -> ExitCode {
    fwagent::cli::main()
}
