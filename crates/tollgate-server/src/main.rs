//! The `tollgate` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    serve()
}

#[tokio::main]
async fn serve() -> std::process::ExitCode {
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

/// glibc gives each thread that allocates an arena of its own, up to 8 per core, and
/// memory freed in one arena cannot serve another, so a server whose connections hop
/// between threads keeps a little more of each arena than it uses. One arena per core
/// (as many as tokio has worker threads) keeps the contention the same and cut the
/// memory of 2,000 open streams by 3.5 MB (docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = i32::try_from(cores).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets an allocator parameter, and runs before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
