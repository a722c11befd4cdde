//! The key object of API.md, as every key endpoint answers it.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::billing::window::{LimitReset, WindowUsage};
use crate::billing::Credits;
use crate::store::KeyRecord;

/// The key object of API.md; never any key material beyond the hint, except `key`
/// (the plaintext) in the answer to its creation.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub is_enabled: bool,
    /// A JSON number written from the exact decimal.
    #[schema(value_type = Option<f64>)]
    pub credit_limit: Option<Box<RawValue>>,
    pub usage: String,
    pub limit_remaining: Option<String>,
    pub last_used_at: Option<String>,
    pub updated_at: String,
    pub hint: String,
    pub rate_limit_rpm: Option<i64>,
    pub limit_reset: Option<&'static str>,
    pub limit_resets_at: Option<String>,
    pub usage_daily: String,
    pub usage_weekly: String,
    pub usage_monthly: String,
    pub allowed_models: Option<Vec<String>>,
    /// Until when the secret before the last rotation still works (while it does).
    pub previous_key_expires_at: Option<String>,
    pub clamp_max_tokens: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub message: Option<&'static str>,
}

/// An exact decimal written as a JSON number.
pub fn decimal_number(text: String) -> Option<Box<RawValue>> {
    RawValue::from_string(text).ok()
}

impl KeyView {
    /// The key object at the time `now`, with the key's usage in the windows holding it.
    pub fn new(key: &KeyRecord, windows: WindowUsage, now: i64) -> Self {
        // A windowed limit counts the current window; a lifetime one counts everything.
        let counted = key
            .limit_reset
            .map_or(key.usage, |r| Credits::from_nanos(windows.of(r)));
        let remaining = key
            .credit_limit
            .map(|limit| limit.saturating_sub(counted).max(Credits::ZERO).to_string());
        let window = |r: LimitReset| Credits::from_nanos(windows.of(r)).to_string();
        KeyView {
            id: key.id.0,
            name: key.name.clone(),
            key: None,
            created_at: crate::rfc3339(key.created_at),
            expires_at: key.expires_at.map(crate::rfc3339),
            is_enabled: key.is_enabled,
            credit_limit: key
                .credit_limit
                .and_then(|c| decimal_number(c.to_decimal_string(1))),
            usage: key.usage.to_string(),
            limit_remaining: remaining,
            last_used_at: key.last_used_at.map(crate::rfc3339),
            updated_at: crate::rfc3339(key.updated_at),
            hint: key.hint.clone(),
            rate_limit_rpm: key.rate_limit_rpm,
            limit_reset: key.limit_reset.map(LimitReset::as_str),
            limit_resets_at: key
                .limit_reset
                .map(|r| crate::rfc3339(r.window_at(now).resets_at())),
            usage_daily: window(LimitReset::Daily),
            usage_weekly: window(LimitReset::Weekly),
            usage_monthly: window(LimitReset::Monthly),
            allowed_models: key.allowed_models.clone(),
            previous_key_expires_at: key
                .previous_key_expires_at
                .filter(|&t| t > crate::now())
                .map(crate::rfc3339),
            clamp_max_tokens: key.clamp_max_tokens,
            message: None,
        }
    }
}
