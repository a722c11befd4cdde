//! Fills a ledger with many usage rows fast, by set-based SQL inside one transaction,
//! keeping what the store derives from the ledger consistent: the daily roll-up behind
//! `/v1/account/activity`, the keys' `usage` and the account's `charged`.
//!
//! Shape: half the rows on the account's first inference key (the hot key), the other
//! half spread evenly over its other keys; models cycle through `--models`; times spread
//! over the last `--days` days. Every row costs 7,800 nano-dollars.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use sqlx::{Connection, Executor};

/// Arguments of `tollgate-bench seed-activity`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// sqlite://PATH or postgres://... of a migrated Tollgate database.
    #[arg(long)]
    pub database_url: String,
    /// The account (by name) whose keys get the rows.
    #[arg(long, default_value = "default")]
    pub account: String,
    /// Usage rows to add.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: i64,
    /// Spread over this many days back from now.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Model names to cycle through.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpt-4o-mini,text-embedding-3-small"
    )]
    pub models: Vec<String>,
}

/// What was seeded.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub rows: i64,
    pub keys: usize,
    pub daily_rows: i64,
    pub seconds: f64,
}

impl fmt::Display for Seeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seeded {} usage rows over {} keys in {:.1} s; the account has {} daily roll-up rows",
            self.rows, self.keys, self.seconds, self.daily_rows
        )
    }
}

/// Cost of one seeded row, nano-dollars.
const ROW_COST: i64 = 7_800;

pub async fn seed(args: &SeedArgs) -> anyhow::Result<Seeded> {
    if args.rows < 1 || args.days < 1 || args.models.is_empty() {
        bail!("--rows, --days and --models must be positive");
    }
    let started = Instant::now();
    let tag = format!("{:x}", tollgate::now());
    let (keys, daily_rows) = if args.database_url.starts_with("sqlite:") {
        seed_sqlite(args, &tag).await?
    } else {
        seed_postgres(args, &tag).await?
    };
    Ok(Seeded {
        rows: args.rows,
        keys,
        daily_rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn seed_sqlite(args: &SeedArgs, tag: &str) -> anyhow::Result<(usize, i64)> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&args.database_url)?
        .busy_timeout(std::time::Duration::from_secs(30));
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .context("opening the SQLite file")?;
    let account: i64 = sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1")
        .bind(&args.account)
        .fetch_optional(&mut conn)
        .await?
        .with_context(|| format!("no account named '{}'", args.account))?;
    let keys: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM api_keys WHERE account_id = $1 AND kind = 'inference' \
         AND deleted_at IS NULL ORDER BY id",
    )
    .bind(account)
    .fetch_all(&mut conn)
    .await?;
    if keys.len() < 2 {
        bail!("the account needs at least two inference keys (one hot, one or more cold)");
    }
    let mut tx = conn.begin().await?;
    tx.execute("CREATE TEMP TABLE seed_keys (n INTEGER PRIMARY KEY, key_id INTEGER NOT NULL)")
        .await?;
    tx.execute("CREATE TEMP TABLE seed_models (n INTEGER PRIMARY KEY, model TEXT NOT NULL)")
        .await?;
    for (n, id) in keys.iter().enumerate() {
        sqlx::query("INSERT INTO seed_keys (n, key_id) VALUES ($1, $2)")
            .bind(n as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for (n, model) in args.models.iter().enumerate() {
        sqlx::query("INSERT INTO seed_models (n, model) VALUES ($1, $2)")
            .bind(n as i64)
            .bind(model)
            .execute(&mut *tx)
            .await?;
    }
    let before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM usage_records")
        .fetch_one(&mut *tx)
        .await?;
    let now = tollgate::now();
    sqlx::query(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < $1 - 1) \
         INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, input_tokens, \
           cached_input_tokens, output_tokens, cost, status, latency_ms, created_at) \
         SELECT printf('seed_%s_%012d', $2, i), $3, \
           (SELECT key_id FROM seed_keys WHERE n = CASE WHEN i % 2 = 0 THEN 0 \
              ELSE 1 + (i / 2) % ($4 - 1) END), \
           (SELECT model FROM seed_models WHERE n = (i / 3) % $5), \
           'chat.completions', 20, 0, 8, $6, 200, 1, \
           $7 - (i * 7919) % (($8 - 1) * 86400 + 1) \
         FROM seq",
    )
    .bind(args.rows)
    .bind(tag)
    .bind(account)
    .bind(keys.len() as i64)
    .bind(args.models.len() as i64)
    .bind(ROW_COST)
    .bind(now)
    .bind(args.days)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, input_tokens, output_tokens) \
         SELECT account_id, date(created_at, 'unixepoch'), key_id, model, COUNT(*), SUM(cost), \
           SUM(input_tokens), SUM(output_tokens) \
         FROM usage_records WHERE id > $1 GROUP BY 1, 2, 3, 4 \
         ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET \
           requests = requests + excluded.requests, cost = cost + excluded.cost, \
           input_tokens = input_tokens + excluded.input_tokens, \
           output_tokens = output_tokens + excluded.output_tokens",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE accounts SET charged = charged + \
           (SELECT COALESCE(SUM(cost), 0) FROM usage_records WHERE id > $1) WHERE id = $2",
    )
    .bind(before)
    .bind(account)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE api_keys SET usage = usage + s.total, \
           last_used_at = MAX(COALESCE(last_used_at, 0), s.last) \
         FROM (SELECT key_id, SUM(cost) AS total, MAX(created_at) AS last \
               FROM usage_records WHERE id > $1 GROUP BY key_id) AS s \
         WHERE api_keys.id = s.key_id",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    tx.execute("DROP TABLE seed_keys").await?;
    tx.execute("DROP TABLE seed_models").await?;
    tx.commit().await?;
    let daily: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_daily WHERE account_id = $1")
        .bind(account)
        .fetch_one(&mut conn)
        .await?;
    // Leave the file as a server would find it: the WAL folded into the database.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    conn.close().await?;
    Ok((keys.len(), daily))
}

async fn seed_postgres(args: &SeedArgs, tag: &str) -> anyhow::Result<(usize, i64)> {
    let mut conn = sqlx::PgConnection::connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let account: i64 = sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1")
        .bind(&args.account)
        .fetch_optional(&mut conn)
        .await?
        .with_context(|| format!("no account named '{}'", args.account))?;
    let keys: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM api_keys WHERE account_id = $1 AND kind = 'inference' \
         AND deleted_at IS NULL ORDER BY id",
    )
    .bind(account)
    .fetch_all(&mut conn)
    .await?;
    if keys.len() < 2 {
        bail!("the account needs at least two inference keys (one hot, one or more cold)");
    }
    let mut tx = conn.begin().await?;
    let before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM usage_records")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO usage_records (request_id, account_id, key_id, model, endpoint, input_tokens, \
           cached_input_tokens, output_tokens, cost, status, latency_ms, created_at) \
         SELECT 'seed_' || $2 || '_' || lpad(i::text, 12, '0'), $3, \
           CASE WHEN i % 2 = 0 THEN $4[1] ELSE $4[2 + (i / 2) % (cardinality($4) - 1)] END, \
           $5[1 + (i / 3) % cardinality($5)], \
           'chat.completions', 20, 0, 8, $6, 200, 1, \
           $7 - (i * 7919) % (($8 - 1) * 86400 + 1) \
         FROM generate_series(0::bigint, $1 - 1) AS i",
    )
    .bind(args.rows)
    .bind(tag)
    .bind(account)
    .bind(&keys)
    .bind(&args.models)
    .bind(ROW_COST)
    .bind(tollgate::now())
    .bind(args.days)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, input_tokens, output_tokens) \
         SELECT account_id, to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD'), \
           key_id, model, COUNT(*), SUM(cost), SUM(input_tokens), SUM(output_tokens) \
         FROM usage_records WHERE id > $1 GROUP BY 1, 2, 3, 4 \
         ON CONFLICT (account_id, day, key_id, model, slot) DO UPDATE SET \
           requests = usage_daily.requests + excluded.requests, \
           cost = usage_daily.cost + excluded.cost, \
           input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
           output_tokens = usage_daily.output_tokens + excluded.output_tokens",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE accounts SET charged = charged + \
           (SELECT COALESCE(SUM(cost), 0) FROM usage_records WHERE id > $1)::bigint WHERE id = $2",
    )
    .bind(before)
    .bind(account)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE api_keys SET usage = usage + s.total::bigint, \
           last_used_at = GREATEST(COALESCE(last_used_at, 0), s.last) \
         FROM (SELECT key_id, SUM(cost) AS total, MAX(created_at) AS last \
               FROM usage_records WHERE id > $1 GROUP BY key_id) AS s \
         WHERE api_keys.id = s.key_id",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    conn.execute("ANALYZE usage_records; ANALYZE usage_daily")
        .await?;
    let daily: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_daily WHERE account_id = $1")
        .bind(account)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok((keys.len(), daily))
}

/// Arguments of `tollgate-bench activity-breakdown`.
#[derive(Debug, Clone, clap::Args)]
pub struct BreakdownArgs {
    /// sqlite://PATH or postgres://... of a seeded database.
    #[arg(long)]
    pub database_url: String,
    /// The account (by name).
    #[arg(long, default_value = "default")]
    pub account: String,
    /// Repetitions (the median is printed).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
}

/// In-process times of the activity path, medians in milliseconds.
pub struct Breakdown {
    /// Groups `Store::activity` returns: days, models and keys.
    pub groups: (usize, usize, usize),
    /// `Store::activity` alone: the roll-ups grouped by the database.
    pub query_ms: f64,
    /// `Accounts::activity`: the same query plus the total, as the API answers it.
    pub activity_ms: f64,
}

/// Times `Store::activity` alone and `Accounts::activity` in process, without HTTP or
/// JSON.
pub async fn measure_breakdown(args: &BreakdownArgs) -> anyhow::Result<Breakdown> {
    let store = tollgate::store::open(&args.database_url).await?;
    let account = store
        .account_by_name(&args.account)
        .await?
        .with_context(|| format!("no account named '{}'", args.account))?;
    let accounts = tollgate::accounts::Accounts::new(
        store.clone(),
        tollgate::auth::Authenticator::new(store.clone()),
    );
    let today = time::OffsetDateTime::now_utc().date();
    let since = (today - time::Duration::days(29)).to_string();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut query, mut whole) = (Vec::new(), Vec::new());
    let mut groups = (0, 0, 0);
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        let rollup = store.activity(account.id, &since).await?;
        query.push(t.elapsed().as_secs_f64() * 1e3);
        groups = (rollup.days.len(), rollup.models.len(), rollup.keys.len());
        let t = Instant::now();
        accounts.activity(account.id, 30).await?;
        whole.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Breakdown {
        groups,
        query_ms: median(query),
        activity_ms: median(whole),
    })
}

#[allow(clippy::print_stdout)]
pub async fn breakdown(args: &BreakdownArgs) -> anyhow::Result<()> {
    let b = measure_breakdown(args).await?;
    let (days, models, keys) = b.groups;
    println!(
        "{days} days, {models} models, {keys} keys: Store::activity {:.1} ms, Accounts::activity {:.1} ms; medians of {} runs",
        b.query_ms,
        b.activity_ms,
        args.runs.max(1)
    );
    Ok(())
}
