//! The console's tables and read-only roll-up queries, on a small pool of their own over
//! the store's database (the queries are in `sql.rs`, written once for both databases).

use crate::store::side_pool::SidePool;

mod sqlite {
    type Db = sqlx::Sqlite;
    include!("sql.rs");
}

mod pg {
    type Db = sqlx::Postgres;
    include!("sql.rs");
}

/// A session as stored (the token itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The account of an account holder's session.
    pub account_id: Option<i64>,
    /// The provisioning key an account holder signed in with.
    pub key_id: Option<i64>,
    /// The operator key the operator signed in with.
    pub operator_key_id: Option<i64>,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What an account spent on one model on one day (nano-USD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayModelCost {
    pub day: String,
    pub model: String,
    pub cost: i64,
}

/// A pool on the store's database.
#[derive(Clone)]
pub struct Db(SidePool);

macro_rules! each {
    ($self:expr, $f:ident($($arg:expr),*)) => {
        match &$self.0 {
            SidePool::Sqlite(p) => sqlite::$f(p, $($arg),*).await,
            SidePool::Pg(p) => pg::$f(p, $($arg),*).await,
        }
    };
}

impl Db {
    /// The pool on the database at `url` (already migrated by the store).
    pub fn open(url: &str) -> Result<Db, sqlx::Error> {
        SidePool::open(url).map(Db)
    }

    pub async fn create_session(&self, row: &SessionRow, token_hash: &str) -> sqlx::Result<()> {
        each!(self, create_session(row, token_hash))
    }
    pub async fn session(&self, token_hash: &str, now: i64) -> sqlx::Result<Option<SessionRow>> {
        each!(self, session(token_hash, now))
    }
    pub async fn delete_session(&self, token_hash: &str) -> sqlx::Result<()> {
        each!(self, delete_session(token_hash))
    }
    pub async fn delete_expired(&self, now: i64) -> sqlx::Result<u64> {
        each!(self, delete_expired(now))
    }
    pub async fn day_model_costs(
        &self,
        account: i64,
        since_day: &str,
    ) -> sqlx::Result<Vec<DayModelCost>> {
        each!(self, day_model_costs(account, since_day))
    }
    pub async fn account_costs(&self, since_day: &str) -> sqlx::Result<Vec<(i64, i64)>> {
        each!(self, account_costs(since_day))
    }
}
