//! `ess` (and `essctl`): parse the command line, run it, map errors to exit codes
//! (0 ok, 1 runtime failure, 2 usage or validation error).

use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of glibc's malloc: the delivery path allocates per event (parsed
/// payloads, rendered fields), and glibc's arenas spent 30–35 % of a backlog drain in
/// malloc/free (README "Performance" has the measurement).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
