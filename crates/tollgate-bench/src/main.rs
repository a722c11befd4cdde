//! `tollgate-bench`: the benchmark driver behind `bench/run.sh`.
//!
//! - `run`: starts the fake upstream, Tollgate and a private nginx, drives load with `oha`
//!   (and, where oha cannot, with the open-loop client of this crate), and prints one table
//!   per scenario: direct to the upstream, through Tollgate, and the difference.
//! - `usage-writer`: the usage write path alone, `UsageWriter` over `store::open(url)`.
//! - `seed-activity`: fills a ledger with many usage rows (and a consistent roll-up).
//! - `recording-cost`: the metrics recording path alone, in process (issue 16).
#![allow(clippy::print_stdout)] // a benchmark tool prints its results

mod load;
mod oha;
mod procs;
mod report;
mod run;
mod seed;
mod writer;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tollgate-bench", about = "Tollgate's benchmark driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every scenario and print the tables (what bench/run.sh calls).
    Run(run::RunArgs),
    /// Settled usage records per second through the group-commit writer.
    UsageWriter(writer::WriterArgs),
    /// Insert many usage rows into a ledger, keeping the roll-up and totals consistent.
    SeedActivity(seed::SeedArgs),
    /// Where the time of `/v1/account/activity` goes: the store's grouped query, then the rest.
    ActivityBreakdown(seed::BreakdownArgs),
    /// The metrics recording path alone, in process: CPU µs per request, off and on.
    RecordingCost {
        #[arg(long, default_value_t = 100_000)]
        requests: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::UsageWriter(args) => {
                let results = writer::bench(&args).await?;
                for r in results {
                    println!("{r}");
                }
                Ok(())
            }
            Command::ActivityBreakdown(args) => seed::breakdown(&args).await,
            Command::RecordingCost { requests } => {
                let (off, on, added) = run::recording_costs(requests).await?;
                println!("metrics off {off:.2} µs/request, on {on:.2} µs/request, added {added:+.2} µs (medians of 3 alternating rounds, this thread's CPU clock)");
                Ok(())
            }
            Command::SeedActivity(args) => {
                let seeded = seed::seed(&args).await?;
                println!("{seeded}");
                Ok(())
            }
        }
    })
}
