//! Rows of the webhooks' tables.

/// A webhook of an account holder (the secret is for signing only: never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRow {
    pub id: i64,
    pub account_id: i64,
    pub url: String,
    pub secret: String,
    /// nano-dollars
    pub low_balance: Option<i64>,
    pub created_at: i64,
    pub deleted: bool,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub webhook_id: Option<i64>,
    pub operator_hook: Option<i64>,
    pub payload: String,
    pub attempts: i64,
}

/// A delivery as its log shows it (times in milliseconds).
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub next_attempt_at: i64,
}

/// A key with a limit, as the usage scan reads it.
#[derive(Debug, Clone)]
pub struct KeyUse {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub usage: i64,
    pub limit: i64,
    /// The key's `limit_reset` as stored (`daily`, `weekly`, `monthly`; none: lifetime).
    pub limit_reset: Option<String>,
}
