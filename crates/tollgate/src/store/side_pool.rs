//! A small pool of its own over the store's database, for a feature whose tables sit
//! beside the store's (the webhooks, the console's sessions): its queries never wait
//! behind the store's connections, and the store has already migrated its tables.

use std::str::FromStr;
use std::time::Duration;

/// A pool on the store's database.
#[derive(Clone)]
pub enum SidePool {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl SidePool {
    /// Two connections to the database at `url`, connected on first use.
    pub fn open(url: &str) -> Result<SidePool, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .busy_timeout(Duration::from_secs(10))
                // As the store's connections: checkpoints run in the store's background task.
                .pragma("wal_autocheckpoint", "0");
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(2)
                .connect_lazy_with(options);
            Ok(SidePool::Sqlite(pool))
        } else {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy(url)?;
            Ok(SidePool::Pg(pool))
        }
    }
}
