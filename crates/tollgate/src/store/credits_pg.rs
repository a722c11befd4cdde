//! The credit ledger's transactions on PostgreSQL: the account's row is locked first
//! (`FOR UPDATE`), as a usage batch locks it to add its charges.

type Db = sqlx::Postgres;
const LOCK: &str = " FOR UPDATE";

async fn begin(pool: &sqlx::Pool<Db>) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
    pool.begin().await
}

include!("credits_sql.rs");
