//! The `tollgate` binary: parses the command line and hands over to the library.

use clap::Parser;

/// jemalloc rather than the system allocator: at capacity glibc's malloc and free took
/// about a fifth of the gateway's CPU; with jemalloc, CPU per request fell by about a
/// quarter (docs/benchmarks.md, docs/decisions.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread returns freed pages to the system while the
/// server idles (without it, memory freed after a burst, say 2,000 connections closed at
/// their timeout, stays mapped until the next allocations in its arena). Overridable
/// with `_RJEM_MALLOC_CONF`.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true\0";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    match tollgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
