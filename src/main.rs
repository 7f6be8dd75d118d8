//! `ess` (and `essctl`): parse the command line, run it, map errors to exit codes
//! (0 ok, 1 runtime failure, 2 usage or validation error).

use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of glibc's malloc: the delivery path allocates per event (parsed
/// payloads, rendered fields), and glibc's arenas spent 30–35 % of a backlog drain in
/// malloc/free (README "Performance" has the measurement).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`, a C string read before `main`): one arena instead
/// of four per core. With the default, peak RSS under ingest while draining a backlog reached
/// 68–71 MiB (over the 64 MiB bound); with one arena 56–63 MiB (glibc: 56–58), and the
/// drain keeps jemalloc's speed (README "Performance"). `_RJEM_MALLOC_CONF` in the
/// environment still overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

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
