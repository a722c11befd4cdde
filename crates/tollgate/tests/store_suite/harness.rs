//! Backends for the store suite: a fresh database per test, dropped afterwards.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{Connection, Executor, PgConnection};
use tollgate::billing::Credits;
use tollgate::store::{self, Account, AccountId, KeyId, KeyKind, NewKey, Store, UsageRecord};

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
type DailyKey = (String, KeyId, String);
/// A daily roll-up row's sums: (requests, cost, input tokens, output tokens).
type DailyTotals = (i64, i64, i64, i64);

/// Asserts that every derived counter equals what the ledger implies: `ledger` holds the
/// records that must be in the store (each request id once), for the given accounts.
pub async fn assert_counters_match(
    store: &Arc<dyn Store>,
    accounts: &[AccountId],
    ledger: &[UsageRecord],
) {
    use std::collections::BTreeMap;

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
        for key in store
            .list_keys(account_id, KeyKind::Inference)
            .await
            .expect("list_keys")
        {
            let (usage, last_used) = by_key.get(&key.id).copied().unwrap_or((0, i64::MIN));
            assert_eq!(key.usage, nanos(usage), "usage of key {}", key.id.0);
            let last_used = (last_used != i64::MIN).then_some(last_used);
            assert_eq!(
                key.last_used_at, last_used,
                "last_used_at of key {}",
                key.id.0
            );
        }
        let actual: Vec<_> = store
            .daily_usage(account_id, "0000-00-00")
            .await
            .expect("daily_usage")
            .into_iter()
            .map(|d| {
                (
                    (d.day, d.key_id, d.model),
                    (d.requests, d.cost.nanos(), d.input_tokens, d.output_tokens),
                )
            })
            .collect();
        let expected: Vec<_> = daily.into_iter().collect();
        assert_eq!(
            actual, expected,
            "daily roll-up of account {}",
            account_id.0
        );
    }
}
