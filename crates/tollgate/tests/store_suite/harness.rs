//! Backends for the store suite: a fresh database per test, dropped afterwards.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use tollgate::billing::Credits;
use tollgate::store::{
    self, Account, AccountId, ActivityRollup, KeyId, KeyKind, NewKey, Store, UsageRecord,
    UsageTotals,
};

/// Where the PostgreSQL tests connect to create their databases.
const POSTGRES_URL_VAR: &str = "TOLLGATE_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600;
pub const DAY: i64 = 86_400;

/// A fresh, empty database for one test. Opening it applies the migrations.
#[derive(Clone)]
pub struct TestDb {
    url: String,
}

impl TestDb {
    /// The same database at another URL (through a proxy, say).
    pub fn at(url: String) -> TestDb {
        TestDb { url }
    }

    /// The database URL, as `tollgate serve` would be given it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a store on the database, like one replica starting.
    pub async fn open(&self) -> Arc<dyn Store> {
        store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }
}

/// Runs a case on a fresh SQLite file.
pub async fn run_sqlite<F, Fut>(case: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    case(TestDb { url }).await;
}

/// Runs a case in a new PostgreSQL database, dropped afterwards even when the case fails.
/// An unreachable server fails the test: these tests never skip silently.
pub async fn run_postgres<F, Fut>(case: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let base = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let mut admin =
        match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&base)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => postgres_unavailable(&base, &e.to_string()),
            Err(_) => postgres_unavailable(&base, "timed out after 10 s"),
        };
    let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let url = with_database(&base, &name);

    let outcome = AssertUnwindSafe(case(TestDb { url })).catch_unwind().await;

    let dropped = admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.unwrap_or_else(|e| panic!("DROP DATABASE {name}: {e}"));
}

fn postgres_unavailable(url: &str, error: &str) -> ! {
    let why = if std::env::var_os("CI").is_some() {
        "CI is set, so PostgreSQL is required"
    } else {
        "start PostgreSQL or point the variable at one"
    };
    panic!(
        "\n\n*** PostgreSQL store tests cannot reach {url} ({POSTGRES_URL_VAR}): {error}\n\
         *** {why}; the PostgreSQL variants fail rather than skip.\n\n"
    );
}

/// The same server URL with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = without_query.find("://").map_or(0, |i| i + 3);
    let path_start = without_query[authority_start..]
        .find('/')
        .map_or(without_query.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &without_query[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        with_database("postgresql://u:p@h/test?sslmode=disable", "x"),
        "postgresql://u:p@h/x?sslmode=disable"
    );
}

// ---- fixtures shared by the cases ----

pub fn nanos(n: i64) -> Credits {
    Credits::from_nanos(n)
}

pub async fn account(store: &Arc<dyn Store>, name: &str) -> Account {
    store
        .create_account(name, T0)
        .await
        .unwrap_or_else(|e| panic!("create_account {name}: {e}"))
}

/// A key to insert, with a hash unique to its account, kind and name.
pub fn new_key(account: AccountId, kind: KeyKind, name: &str) -> NewKey {
    NewKey {
        account_id: account,
        kind,
        name: name.to_string(),
        key_hash: format!("hash-{}-{}-{name}", account.0, kind.as_str()),
        hint: format!("tg-...{name}"),
        created_at: T0,
        expires_at: None,
        credit_limit: None,
        rate_limit_rpm: None,
        limit_reset: None,
        allowed_models: None,
        clamp_max_tokens: false,
    }
}

pub async fn inference_key(store: &Arc<dyn Store>, account: AccountId, name: &str) -> KeyId {
    store
        .create_key(new_key(account, KeyKind::Inference, name))
        .await
        .unwrap_or_else(|e| panic!("create_key {name}: {e}"))
        .id
}

/// A usage record; tokens are derived from the cost so that sums are checkable.
pub fn record(
    request_id: &str,
    account: AccountId,
    key: KeyId,
    model: &str,
    cost: i64,
    created_at: i64,
) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_string(),
        account_id: account,
        key_id: key,
        model: model.to_string(),
        endpoint: "/v1/chat/completions".to_string(),
        input_tokens: cost % 1000 + 1,
        cached_input_tokens: cost % 7,
        output_tokens: cost % 100 + 2,
        cost: nanos(cost),
        status: 200,
        latency_ms: cost % 500,
        created_at,
        detail: Default::default(),
    }
}

/// The UTC day of a unix time, as the stores roll usage up.
pub fn day(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .expect("valid time")
        .date()
        .to_string()
}

/// A daily roll-up row's identity within an account: (day, key, model).
pub type DailyKey = (String, KeyId, String);
/// A daily roll-up row's sums: (requests, cost, input tokens, output tokens).
pub type DailyTotals = (i64, i64, i64, i64);

/// Applies the migrations up to `version` only, as a database last opened by an older
/// Tollgate would have them; `TestDb::open` then applies the rest.
pub async fn migrate_up_to(db: &TestDb, version: i64) {
    let backend = if db.url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut migrator = sqlx::migrate::Migrator::new(dir)
        .await
        .expect("migrations folder");
    let older: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= version)
        .cloned()
        .collect();
    assert!(!older.is_empty(), "no migration up to {version}");
    migrator.migrations = older.into();
    if backend == "sqlite" {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url)
            .expect("sqlite URL")
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        migrator.run_direct(&mut conn).await.expect("migrate");
    } else {
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        migrator.run_direct(&mut conn).await.expect("migrate");
    }
}

/// Runs one statement on the test database beside the store, e.g. to set up a row the
/// store's API cannot write.
pub async fn execute_sql(db: &TestDb, sql: &str) {
    if db.url.starts_with("sqlite:") {
        let mut conn = SqliteConnection::connect(&db.url).await.expect("connect");
        conn.execute(sql).await.expect(sql);
    } else {
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        conn.execute(sql).await.expect(sql);
    }
}

/// The daily roll-up rows of an account as stored, in (day, key, model) order, read with
/// SQL: the store hands them out only grouped.
pub async fn stored_daily_rows(db: &TestDb, account: AccountId) -> Vec<(DailyKey, DailyTotals)> {
    type Row = (String, i64, String, i64, i64, i64, i64);
    // Summed over PostgreSQL's writer slots (migration 0015): one row per (day, key, model).
    const SQL: &str = "SELECT day, key_id, model, CAST(SUM(requests) AS BIGINT), \
         CAST(SUM(cost) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), \
         CAST(SUM(output_tokens) AS BIGINT) FROM usage_daily WHERE account_id = $1 \
         GROUP BY day, key_id, model";
    let rows: Vec<Row> = if db.url.starts_with("sqlite:") {
        let mut conn = SqliteConnection::connect(&db.url).await.expect("connect");
        sqlx::query_as(SQL)
            .bind(account.0)
            .fetch_all(&mut conn)
            .await
    } else {
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query_as(SQL)
            .bind(account.0)
            .fetch_all(&mut conn)
            .await
    }
    .expect("usage_daily rows");
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|(day, key, model, requests, cost, input, output)| {
            ((day, KeyId(key), model), (requests, cost, input, output))
        })
        .collect();
    rows.sort();
    rows
}

/// The sums of some usage records.
pub fn totals_of<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> UsageTotals {
    let mut t = UsageTotals::default();
    for r in records {
        t.requests += 1;
        t.cost = nanos(t.cost.nanos() + r.cost.nanos());
        t.input_tokens += r.input_tokens;
        t.output_tokens += r.output_tokens;
    }
    t
}

/// What `Store::activity` must return for an account from `since_day` on, computed from
/// the records in the ledger: groups summed in Rust and put in the documented orders
/// (days oldest first; models and keys most expensive first, ties by name and by id).
/// Keys are named from `names`, "" when missing.
pub fn expected_activity(
    ledger: &[UsageRecord],
    account: AccountId,
    since_day: &str,
    names: &std::collections::HashMap<KeyId, String>,
) -> ActivityRollup {
    use std::collections::BTreeMap;

    let mut days: BTreeMap<String, Vec<&UsageRecord>> = BTreeMap::new();
    let mut models: BTreeMap<&str, Vec<&UsageRecord>> = BTreeMap::new();
    let mut keys: BTreeMap<KeyId, Vec<&UsageRecord>> = BTreeMap::new();
    for r in ledger
        .iter()
        .filter(|r| r.account_id == account && day(r.created_at).as_str() >= since_day)
    {
        days.entry(day(r.created_at)).or_default().push(r);
        models.entry(r.model.as_str()).or_default().push(r);
        keys.entry(r.key_id).or_default().push(r);
    }
    let mut models: Vec<(String, UsageTotals)> = models
        .into_iter()
        .map(|(model, rs)| (model.to_string(), totals_of(rs)))
        .collect();
    models.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(&b.0)));
    let mut keys: Vec<(KeyId, String, UsageTotals)> = keys
        .into_iter()
        .map(|(id, rs)| {
            let name = names.get(&id).cloned().unwrap_or_default();
            (id, name, totals_of(rs))
        })
        .collect();
    keys.sort_by(|a, b| b.2.cost.cmp(&a.2.cost).then_with(|| a.0.cmp(&b.0)));
    ActivityRollup {
        days: days
            .into_iter()
            .map(|(day, rs)| (day, totals_of(rs)))
            .collect(),
        models,
        keys,
    }
}

/// Asserts that every derived counter equals what the ledger implies: `ledger` holds the
/// records that must be in the store (each request id once), for the given accounts.
pub async fn assert_counters_match(
    db: &TestDb,
    store: &Arc<dyn Store>,
    accounts: &[AccountId],
    ledger: &[UsageRecord],
) {
    use std::collections::{BTreeMap, HashMap};

    for record in ledger {
        assert_eq!(
            store
                .usage_record(&record.request_id)
                .await
                .expect("usage_record")
                .as_ref(),
            Some(record),
            "ledger row of {}",
            record.request_id
        );
    }
    for &account_id in accounts {
        let mine: Vec<&UsageRecord> = ledger
            .iter()
            .filter(|r| r.account_id == account_id)
            .collect();
        let account = store
            .account(account_id)
            .await
            .expect("account")
            .expect("exists");
        let charged: i64 = mine.iter().map(|r| r.cost.nanos()).sum();
        assert_eq!(
            account.charged,
            nanos(charged),
            "charged of account {}",
            account_id.0
        );

        let mut by_key: BTreeMap<KeyId, (i64, i64)> = BTreeMap::new();
        let mut daily: BTreeMap<DailyKey, DailyTotals> = BTreeMap::new();
        for r in &mine {
            let key = by_key.entry(r.key_id).or_insert((0, i64::MIN));
            key.0 += r.cost.nanos();
            key.1 = key.1.max(r.created_at);
            let row = daily
                .entry((day(r.created_at), r.key_id, r.model.clone()))
                .or_default();
            row.0 += 1;
            row.1 += r.cost.nanos();
            row.2 += r.input_tokens;
            row.3 += r.output_tokens;
        }
        let live_keys = store
            .list_keys(account_id, KeyKind::Inference)
            .await
            .expect("list_keys");
        for key in &live_keys {
            let (usage, last_used) = by_key.get(&key.id).copied().unwrap_or((0, i64::MIN));
            assert_eq!(key.usage, nanos(usage), "usage of key {}", key.id.0);
            let last_used = (last_used != i64::MIN).then_some(last_used);
            assert_eq!(
                key.last_used_at, last_used,
                "last_used_at of key {}",
                key.id.0
            );
        }
        let expected: Vec<_> = daily.into_iter().collect();
        assert_eq!(
            stored_daily_rows(db, account_id).await,
            expected,
            "daily roll-up of account {}",
            account_id.0
        );
        let names: HashMap<KeyId, String> = live_keys.into_iter().map(|k| (k.id, k.name)).collect();
        assert_eq!(
            store
                .activity(account_id, "0000-00-00")
                .await
                .expect("activity"),
            expected_activity(ledger, account_id, "0000-00-00", &names),
            "activity of account {}",
            account_id.0
        );
    }
}
