//! The usage write path alone: N producers each hand a record to `UsageWriter` and wait
//! for its group commit, as the gateway does after every request. Counts settled
//! records per second, then checks that every one of them is in the ledger.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tollgate::billing::Credits;
use tollgate::store::{KeyId, KeyKind, NewKey, Store, UsageRecord};
use tollgate::usage::UsageWriter;

/// Arguments of `tollgate-bench usage-writer`.
#[derive(Debug, Clone, clap::Args)]
pub struct WriterArgs {
    /// sqlite://PATH or postgres://... (migrated on open).
    #[arg(long)]
    pub database_url: String,
    /// Concurrent producers, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,1024")]
    pub producers: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

/// One run's outcome.
#[derive(Debug, Clone)]
pub struct WriterResult {
    pub database: &'static str,
    pub producers: usize,
    pub settled: u64,
    pub seconds: f64,
    pub in_ledger: u64,
    /// Transactions the writer committed.
    pub commits: u64,
}

impl WriterResult {
    pub fn per_second(&self) -> f64 {
        self.settled as f64 / self.seconds
    }
}

impl fmt::Display for WriterResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "usage writer ({}), {} producers: {:.0} settled records/s ({} in {:.1} s, {} commits; {} found in the ledger)",
            self.database,
            self.producers,
            self.per_second(),
            self.settled,
            self.seconds,
            self.commits,
            self.in_ledger
        )
    }
}

fn database_kind(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "SQLite"
    } else {
        "PostgreSQL"
    }
}

/// Runs the bench once per producer count.
pub async fn bench(args: &WriterArgs) -> anyhow::Result<Vec<WriterResult>> {
    let store = tollgate::store::open(&args.database_url)
        .await
        .with_context(|| format!("opening {}", args.database_url))?;
    let tag = format!(
        "{:x}",
        std::process::id() as u64 * 1_000_003 + tollgate::now() as u64
    );
    let now = tollgate::now();
    let account = store
        .create_account(&format!("writer-bench-{tag}"), now)
        .await?;
    let mut keys = Vec::new();
    for i in 0..10 {
        let key = store
            .create_key(NewKey {
                account_id: account.id,
                kind: KeyKind::Inference,
                name: format!("writer bench {i}"),
                key_hash: format!("writer-bench-{tag}-{i}"),
                hint: "tg-inf-...bench".into(),
                created_at: now,
                expires_at: None,
                credit_limit: None,
                rate_limit_rpm: None,
                clamp_max_tokens: false,
            })
            .await?;
        keys.push(key.id);
    }
    let mut results = Vec::new();
    for (run, &producers) in args.producers.iter().enumerate() {
        let prefix = format!("req_wb{tag}r{run}_");
        let (settled, seconds, commits) = one_run(
            store.clone(),
            producers,
            Duration::from_secs_f64(args.seconds),
            &prefix,
            account.id,
            &keys,
        )
        .await?;
        let in_ledger = count_records(&args.database_url, &prefix).await?;
        results.push(WriterResult {
            database: database_kind(&args.database_url),
            producers,
            settled,
            seconds,
            in_ledger,
            commits,
        });
    }
    Ok(results)
}

async fn one_run(
    store: Arc<dyn Store>,
    producers: usize,
    length: Duration,
    prefix: &str,
    account: tollgate::store::AccountId,
    keys: &[KeyId],
) -> anyhow::Result<(u64, f64, u64)> {
    let (writer, task) = UsageWriter::start(store, tollgate::usage::DEFAULT_LEDGER_WAIT).await?;
    let sequence = Arc::new(AtomicU64::new(0));
    let settled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let writer = writer.clone();
        let sequence = sequence.clone();
        let settled = settled.clone();
        let prefix = prefix.to_string();
        let keys = keys.to_vec();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                // As the gateway does when it admits a request: the writer then knows
                // a record is on its way.
                let coming = writer.coming();
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let record = UsageRecord {
                    // Time-ordered, like the gateway's UUIDv7 request ids.
                    request_id: format!("{prefix}{n:016x}"),
                    account_id: account,
                    key_id: keys[(n % keys.len() as u64) as usize],
                    model: "gpt-4o-mini".into(),
                    endpoint: "chat.completions".into(),
                    input_tokens: 20,
                    cached_input_tokens: 0,
                    output_tokens: 8,
                    cost: Credits::from_nanos(7_800),
                    status: 200,
                    latency_ms: 1,
                    created_at: tollgate::now(),
                    detail: Default::default(),
                };
                if coming.record(record).await.is_ok() {
                    settled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // On SQLite a record is settled once it is in the journal: the run ends when the
    // ledger has committed them all.
    writer.flushed().await;
    let seconds = started.elapsed().as_secs_f64();
    let commits = writer.commits();
    drop(writer);
    let _ = task.await;
    Ok((settled.load(Ordering::Relaxed), seconds, commits))
}

async fn count_records(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let pattern = format!("{prefix}%");
    let n: i64 = if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await?;
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE request_id LIKE $1")
            .bind(&pattern)
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE request_id LIKE $1")
            .bind(&pattern)
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        n
    };
    Ok(n.max(0) as u64)
}
