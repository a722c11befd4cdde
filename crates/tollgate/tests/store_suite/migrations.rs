//! Migrations applied to a database that already holds data.

use tollgate::store::{AccountId, ActivityRollup, KeyId, UsageTotals};

use crate::harness::*;

/// A database a newer release migrated (a migration this one does not know) opens: a
/// release can be rolled back, or run beside its successor. sqlx refuses such a database
/// by default, so the previous release could not start once one replica was upgraded.
pub async fn a_migration_of_a_newer_release_does_not_stop_this_one(db: TestDb) {
    let store = db.open().await;
    let empty = if db.url().starts_with("sqlite:") {
        "X''"
    } else {
        "''::BYTEA"
    };
    execute_sql(
        &db,
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99999, 'from a newer release', TRUE, {empty}, 0)"
        ),
    )
    .await;
    store
        .migrate()
        .await
        .expect("migrate beside a newer release's migration");
    let account = store.create_account("acme", 0).await.expect("account");
    assert_eq!(
        store
            .account(account.id)
            .await
            .expect("read")
            .map(|a| a.name),
        Some("acme".into())
    );
}

/// A database that ran only the first migration and holds a daily roll-up is upgraded when
/// a store opens it (0002 rebuilds `usage_daily` on SQLite, its primary key on PostgreSQL):
/// every row survives, the activity roll-ups read them, and new usage adds to the rows that
/// were there.
pub async fn upgrade_keeps_the_daily_rollup(db: TestDb) {
    migrate_up_to(&db, 1).await;
    execute_sql(
        &db,
        "INSERT INTO accounts (id, name, created_at) VALUES (1, 'acme', 0), (2, 'other', 0)",
    )
    .await;
    execute_sql(
        &db,
        "INSERT INTO api_keys (id, account_id, kind, name, key_hash, hint, created_at, \
         updated_at, deleted_at) VALUES (11, 1, 'inference', 'one', 'h11', 'x', 0, 0, NULL), \
         (12, 1, 'inference', 'gone', 'h12', 'x', 0, 0, 5), \
         (21, 2, 'inference', 'theirs', 'h21', 'x', 0, 0, NULL)",
    )
    .await;
    // Row n (from 1) has n requests, n * 1000 nano-dollars, n * 10 and n * 100 tokens.
    let mut rows = Vec::new();
    for day in ["2025-12-30", "2026-01-01", "2026-01-02"] {
        for (account, key) in [(1, 11), (1, 12), (2, 21)] {
            for model in ["m1", "m2"] {
                rows.push((account, day, key, model, rows.len() as i64 + 1));
            }
        }
    }
    let values: Vec<String> = rows
        .iter()
        .map(|(account, day, key, model, n)| {
            format!(
                "({account}, '{day}', {key}, '{model}', {n}, {}, {}, {})",
                n * 1000,
                n * 10,
                n * 100
            )
        })
        .collect();
    execute_sql(
        &db,
        &format!(
            "INSERT INTO usage_daily (account_id, day, key_id, model, requests, cost, \
             input_tokens, output_tokens) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
    let stored = |account: i64| -> Vec<(DailyKey, DailyTotals)> {
        let mut v: Vec<_> = rows
            .iter()
            .filter(|r| r.0 == account)
            .map(|&(_, day, key, model, n)| {
                (
                    (day.to_string(), KeyId(key), model.to_string()),
                    (n, n * 1000, n * 10, n * 100),
                )
            })
            .collect();
        v.sort();
        v
    };
    let sum = |ns: &[i64]| {
        let n: i64 = ns.iter().sum();
        UsageTotals {
            requests: n,
            cost: nanos(n * 1000),
            input_tokens: n * 10,
            output_tokens: n * 100,
            estimated_requests: 0,
            fallback_requests: 0,
        }
    };

    let store = db.open().await;
    assert_eq!(stored_daily_rows(&db, AccountId(1)).await, stored(1));
    assert_eq!(stored_daily_rows(&db, AccountId(2)).await, stored(2));
    assert_eq!(
        store
            .activity(AccountId(1), "2026-01-01")
            .await
            .expect("activity"),
        ActivityRollup {
            days: vec![
                ("2026-01-01".into(), sum(&[7, 8, 9, 10])),
                ("2026-01-02".into(), sum(&[13, 14, 15, 16])),
            ],
            models: vec![
                ("m2".into(), sum(&[8, 10, 14, 16])),
                ("m1".into(), sum(&[7, 9, 13, 15])),
            ],
            keys: vec![
                (KeyId(12), "gone".into(), sum(&[9, 10, 15, 16])),
                (KeyId(11), "one".into(), sum(&[7, 8, 13, 14])),
            ],
        }
    );

    // New usage on a migrated row adds to it; on a new day it starts a row.
    let added = [
        record("after-1", AccountId(1), KeyId(11), "m1", 500, T0 + DAY),
        record("after-2", AccountId(1), KeyId(11), "m1", 700, T0 + 2 * DAY),
    ];
    assert_eq!(
        store.record_usage(&added).await.expect("record"),
        vec![true, true]
    );
    let mut expected = stored(1);
    let row = expected
        .iter_mut()
        .find(|(k, _)| *k == ("2026-01-02".to_string(), KeyId(11), "m1".to_string()))
        .expect("the row of 2026-01-02, key 11, m1");
    row.1 = (
        row.1 .0 + 1,
        row.1 .1 + 500,
        row.1 .2 + added[0].input_tokens,
        row.1 .3 + added[0].output_tokens,
    );
    expected.push((
        ("2026-01-03".to_string(), KeyId(11), "m1".to_string()),
        (1, 700, added[1].input_tokens, added[1].output_tokens),
    ));
    assert_eq!(stored_daily_rows(&db, AccountId(1)).await, expected);
    assert_eq!(stored_daily_rows(&db, AccountId(2)).await, stored(2));
}
