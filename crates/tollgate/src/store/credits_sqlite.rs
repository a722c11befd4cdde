//! The credit ledger's transactions on SQLite: `BEGIN IMMEDIATE` takes the write lock
//! first, so the charges read are the charges written until the commit.

type Db = sqlx::Sqlite;
const LOCK: &str = "";
const CHARGED: &str = "charged";

async fn begin(pool: &sqlx::Pool<Db>) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

include!("credits_sql.rs");
