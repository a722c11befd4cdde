//! `fake-upstream`: runs the fake OpenAI + Anthropic upstream until interrupted and
//! prints its bound address on stdout once it is ready. Faults are set over HTTP on
//! `/__fake/faults` and counters read on `/__fake/stats` (see the library docs).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// A fake OpenAI + Anthropic upstream with deterministic answers and injectable faults.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Delay before the first response byte, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between stream chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Serve pre-serialized canned answers (for benchmarks).
    #[arg(long)]
    fast: bool,
    /// Require this key as `Authorization: Bearer` on OpenAI endpoints.
    #[arg(long, env = "FAKE_UPSTREAM_OPENAI_API_KEY")]
    openai_api_key: Option<String>,
    /// Require this key as `x-api-key` on Anthropic endpoints.
    #[arg(long, env = "FAKE_UPSTREAM_ANTHROPIC_API_KEY")]
    anthropic_api_key: Option<String>,
    /// Require this key as `api-key` (or a bearer token) on the Azure paths.
    #[arg(long, env = "FAKE_UPSTREAM_AZURE_API_KEY")]
    azure_api_key: Option<String>,
    /// Require this key as `x-goog-api-key` on the Gemini paths.
    #[arg(long, env = "FAKE_UPSTREAM_GEMINI_API_KEY")]
    gemini_api_key: Option<String>,
    /// The AWS access key id whose SigV4 signatures Bedrock accepts.
    #[arg(long, env = "FAKE_UPSTREAM_AWS_ACCESS_KEY_ID")]
    aws_access_key_id: Option<String>,
    /// Its secret.
    #[arg(long, env = "FAKE_UPSTREAM_AWS_SECRET_ACCESS_KEY")]
    aws_secret_access_key: Option<String>,
    /// A session token Bedrock requests must carry.
    #[arg(long, env = "FAKE_UPSTREAM_AWS_SESSION_TOKEN")]
    aws_session_token: Option<String>,
    /// A bearer token the Vertex paths accept besides those `/token` issues.
    #[arg(long, env = "FAKE_UPSTREAM_VERTEX_ACCESS_TOKEN")]
    vertex_access_token: Option<String>,
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let opts = fake_upstream::Options {
        latency: Duration::from_millis(args.latency_ms),
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        fast: args.fast,
        openai_api_key: args.openai_api_key,
        anthropic_api_key: args.anthropic_api_key,
        azure_api_key: args.azure_api_key,
        gemini_api_key: args.gemini_api_key,
        aws_access_key_id: args.aws_access_key_id,
        aws_secret_access_key: args.aws_secret_access_key,
        aws_session_token: args.aws_session_token,
        vertex_access_token: args.vertex_access_token,
        vertex_token_lifetime: None,
    };
    let upstream = fake_upstream::start_on(args.listen, opts).await?;
    // The one line a launcher waits for.
    println!("{}", upstream.addr());
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    drop(upstream);
    Ok(())
}
