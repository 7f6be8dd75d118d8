//! `ess` (and `essctl`): parse the command line, run it, map errors to exit codes
//! (0 ok, 1 runtime failure, 2 usage or validation error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ess::cli::Cli::parse();
    match ess::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(ess::cli::exit_code(&err))
        }
    }
}
