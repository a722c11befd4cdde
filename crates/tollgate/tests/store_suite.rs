//! One suite of store tests, written once against `Arc<dyn Store>` and run against every
//! backend: SQLite on a temporary file and PostgreSQL in a fresh database per test
//! (`TOLLGATE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! Each case becomes one test per backend, e.g. `sqlite::usage::largest_batch` and
//! `postgres::usage::largest_batch`; filter with `cargo test --test store_suite postgres::`.

// A crate root's modules live beside it, so point into the suite's own folder.
#[path = "store_suite/accounts.rs"]
mod accounts;
#[path = "store_suite/admin.rs"]
mod admin;
#[path = "store_suite/concurrency.rs"]
mod concurrency;
#[path = "store_suite/credits.rs"]
mod credits;
#[path = "store_suite/harness.rs"]
mod harness;
#[path = "store_suite/keys.rs"]
mod keys;
#[path = "store_suite/migrations.rs"]
mod migrations;
#[path = "store_suite/overflow.rs"]
mod overflow;
#[path = "store_suite/replicas.rs"]
mod replicas;
#[path = "store_suite/usage.rs"]
mod usage;
#[path = "store_suite/writer_lanes.rs"]
mod writer_lanes;

/// Declares every case once per backend; `postgres_only` cases concern replicas sharing
/// one database, which only PostgreSQL supports.
macro_rules! store_cases {
    (
        both { $($module:ident: [$($case:ident),* $(,)?]),* $(,)? }
        postgres_only { $($pg_module:ident: [$($pg_case:ident),* $(,)?]),* $(,)? }
    ) => {
        mod sqlite {
            $(mod $module {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    crate::harness::run_sqlite(crate::$module::$case).await;
                })*
            })*
        }
        mod postgres {
            $(mod $module {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    crate::harness::run_postgres(crate::$module::$case).await;
                })*
            })*
            $(mod $pg_module {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $pg_case() {
                    crate::harness::run_postgres(crate::$pg_module::$pg_case).await;
                })*
            })*
        }
    };
}

store_cases! {
    both {
        accounts: [
            create_list_and_lookup,
            duplicate_name_conflicts,
            grants_sum_and_balance,
            grants_are_bounded,
            concurrent_corrections_never_overdraw,
        ],
        credits: [
            expiring_credits_follow_the_model,
            an_expiry_keeps_what_requests_in_flight_hold,
            concurrent_charges_grants_and_expiries_stay_exact,
        ],
        keys: [
            create_list_and_get,
            duplicate_hash_conflicts,
            update_absent_vs_null,
            update_is_account_and_kind_scoped,
            delete_is_account_and_kind_scoped,
            key_by_hash_includes_deleted_keys,
            budget_settings_round_trip,
        ],
        usage: [
            idempotent_within_and_across_batches,
            counters_equal_ledger_sums,
            activity_groups_since_day,
            usage_record_lookup,
            records_of_unknown_accounts_or_keys_are_refused,
            day_charges_per_key_and_day,
            largest_batch,
        ],
        concurrency: [
            concurrent_writers_are_exact,
            two_replicas_charge_each_request_once,
            activity_is_consistent_under_writes,
            the_usage_writer_commits_concurrent_records_once_in_shared_batches,
        ],
        migrations: [upgrade_keeps_the_daily_rollup, a_migration_of_a_newer_release_does_not_stop_this_one],
        admin: [
            operator_keys_create_list_revoke,
            grants_are_listed_per_account_in_order,
            request_log_pages_and_filters,
        ],
        overflow: [absurd_usage_is_held_at_the_limit],
    }
    postgres_only {
        replicas: [
            replicas_start_at_once,
            the_usage_writer_reconnects_after_the_database_ends_its_connection,
            the_usage_writer_gives_up_a_connection_attempt_that_hangs,
            commits_of_two_writers_for_one_account_do_not_wait_for_each_other,
            the_previous_usage_function_counts_in_the_slots,
            a_record_whose_key_is_another_accounts_is_refused,
        ],
        writer_lanes: [a_large_commit_in_flight_does_not_hold_back_the_next],
    }
}

/// An unreachable PostgreSQL is an error within the acquire timeout, not a hang.
#[tokio::test]
async fn postgres_unreachable_is_an_error() {
    let started = std::time::Instant::now();
    // Port 1 on loopback refuses connections.
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tollgate::store::open("postgres://postgres@127.0.0.1:1/nothing"),
    )
    .await
    .expect("store::open hung on an unreachable database");
    assert!(result.is_err(), "opening an unreachable database succeeded");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
