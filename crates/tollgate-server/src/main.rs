//! The `tollgate` binary: parses the command line and hands over to the library.

use clap::Parser;

/// jemalloc rather than the system allocator: at capacity glibc's malloc and free took
/// about a fifth of the gateway's CPU; with jemalloc, CPU per request fell by about a
/// quarter (docs/benchmarks.md, docs/decisions.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _logs = tollgate::cli::init_logging();
    let cli = tollgate::cli::Cli::parse();
    match tollgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
