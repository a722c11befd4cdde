//! The credit ledger's transactions on PostgreSQL: the account's row is locked first
//! (`FOR UPDATE`) against the account's other credit transactions. Usage commits add
//! their charges to rows of their own ([`super::counters`]) and do not wait for it: a
//! charge whose commit runs beside this transaction and is not in its read is allocated
//! by the account's next credit transaction, as a charge committed just after it would
//! be, and until its commit returns, its request's hold is still counted as in flight.

use super::counters::account_charged;

type Db = sqlx::Postgres;
const LOCK: &str = " FOR UPDATE";
const CHARGED: &str = account_charged!("accounts");

async fn begin(pool: &sqlx::Pool<Db>) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
    pool.begin().await
}

include!("credits_sql.rs");
