//! Handlers of `/v1/admin/*`, the operator API: what the operator command line does
//! (accounts, grants, provisioning keys), over HTTP with an operator key. Each handler
//! calls the same [`crate::accounts::Accounts`] operation as the command line.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};

use super::account::parse_name;
use super::extract::{json_object, only_fields, raw_member, read_body, type_name};
use super::AppState;
use crate::accounts::GrantError;
use crate::billing::money::MoneyError;
use crate::billing::Credits;
use crate::error::ApiError;
use crate::store::{Account, AccountId, GrantEntry, KeyId, StoreError};

/// An account as the operator sees it; money as exact decimal strings.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub id: i64,
    pub name: String,
    pub created_at: String,
    pub balance: String,
    pub total_granted: String,
    pub total_charged: String,
}

impl AccountView {
    pub fn new(account: &Account) -> Self {
        AccountView {
            id: account.id.0,
            name: account.name.clone(),
            created_at: crate::rfc3339(account.created_at),
            balance: account.balance().to_string(),
            total_granted: account.granted.to_string(),
            total_charged: account.charged.to_string(),
        }
    }
}

/// A credit grant (a negative amount is a correction made with `tollgate credits adjust`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantView {
    pub id: i64,
    pub account_id: i64,
    pub amount: String,
    pub note: Option<String>,
    pub created_at: String,
}

impl GrantView {
    pub fn new(grant: &GrantEntry) -> Self {
        GrantView {
            id: grant.id,
            account_id: grant.account_id.0,
            amount: grant.amount.to_string(),
            note: grant.note.clone(),
            created_at: crate::rfc3339(grant.created_at),
        }
    }
}

/// The answer to a grant: the grant and the balance after it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantCreated {
    #[serde(flatten)]
    pub grant: GrantView,
    pub balance: String,
}

/// A provisioning key; `key` (the plaintext) only in the answer to its creation.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProvisioningKeyView {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub hint: String,
    pub created_at: String,
    pub key: String,
    #[schema(value_type = String)]
    pub message: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountList {
    accounts: Vec<AccountView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantList {
    grants: Vec<GrantView>,
}

fn parse_id(text: &str, example: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().map_err(|_| {
        ApiError::invalid_field(
            "id",
            format!("The id must be an integer, such as {example} (got '{text}')."),
        )
    })
}

fn account_not_found(id: i64) -> ApiError {
    ApiError::not_found("account_not_found", format!("No account with id {id}."))
}

pub(crate) async fn account_of_path(state: &AppState, id: &str) -> Result<Account, ApiError> {
    let id = parse_id(id, "/v1/admin/accounts/3")?;
    state
        .accounts
        .account(AccountId(id))
        .await?
        .ok_or_else(|| account_not_found(id))
}

async fn object_body(
    state: &AppState,
    body: Body,
) -> Result<(Map<String, Value>, bytes::Bytes), ApiError> {
    let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
    Ok((json_object(&bytes)?, bytes))
}

/// `GET /v1/admin/accounts`
pub async fn list_accounts(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AccountList>, ApiError> {
    state.auth.operator(&headers).await?;
    let accounts = state.accounts.list_accounts().await?;
    Ok(Json(AccountList {
        accounts: accounts.iter().map(AccountView::new).collect(),
    }))
}

/// `POST /v1/admin/accounts` `{"name"}` → 201.
pub async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers).await?;
    let (map, _) = object_body(&state, body).await?;
    let account = create_account_from(&state, &map).await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

/// Creates an account from a `POST /v1/admin/accounts` body.
pub async fn create_account_from(
    state: &AppState,
    map: &Map<String, Value>,
) -> Result<AccountView, ApiError> {
    only_fields(map, &["name"])?;
    let name = match map.get("name") {
        Some(v) => parse_name(v)?,
        None => {
            return Err(ApiError::invalid_field(
                "name",
                "'name' is required: the account's unique name, such as \"acme\".",
            ))
        }
    };
    let account = match state.accounts.create_account(&name).await {
        Ok(account) => account,
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "account_exists",
                format!(
                    "An account named '{}' already exists; account names are unique.",
                    crate::error::quoted(&name)
                ),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(AccountView::new(&account))
}

/// `GET /v1/admin/accounts/{id}`
pub async fn get_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    state.auth.operator(&headers).await?;
    let account = account_of_path(&state, &id).await?;
    Ok(Json(AccountView::new(&account)))
}

/// `GET /v1/admin/accounts/{id}/grants`, oldest first.
pub async fn list_grants(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<GrantList>, ApiError> {
    state.auth.operator(&headers).await?;
    let account = account_of_path(&state, &id).await?;
    let grants = state.accounts.grants(account.id).await?;
    Ok(Json(GrantList {
        grants: grants.iter().map(GrantView::new).collect(),
    }))
}

/// The grant's `amount`: a decimal string ("12.50") or a JSON number, read exactly from
/// its text, more than zero.
fn parse_grant_amount(value: &Value, raw: Option<&str>) -> Result<Credits, ApiError> {
    let text = match (value, raw) {
        (Value::String(text), _) => text.as_str(),
        (Value::Number(_), Some(raw)) => raw,
        (other, _) => {
            return Err(ApiError::invalid_field(
                "amount",
                format!(
                    "'amount' must be a decimal string of credits (USD) such as \"12.50\", not {}.",
                    type_name(other)
                ),
            ))
        }
    };
    let shown = crate::error::quoted_up_to(text.trim(), 40);
    let amount = Credits::parse_amount(text.trim()).map_err(|e| {
        ApiError::invalid_field(
            "amount",
            match e {
                MoneyError::TooPrecise => format!("'amount' has more than 9 decimal places (got {shown})."),
                MoneyError::TooLarge => format!(
                    "'amount' is too large: the most is {} credits (got {shown}).",
                    Credits::MAX_AMOUNT.to_decimal_string(0)
                ),
                MoneyError::NotDecimal => {
                    format!("'amount' is not a decimal number of credits such as \"12.50\" (got {shown}).")
                }
            },
        )
    })?;
    if amount <= Credits::ZERO {
        return Err(ApiError::invalid_field(
            "amount",
            format!("'amount' must be more than zero (got {shown}); a correction is `tollgate credits adjust`."),
        ));
    }
    Ok(amount)
}

/// `POST /v1/admin/accounts/{id}/grants` `{"amount": "12.50", "note"}` → 201.
pub async fn create_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers).await?;
    let account = account_of_path(&state, &id).await?;
    let (map, bytes) = object_body(&state, body).await?;
    let created = create_grant_from(&state, &account, &map, &bytes).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Grants credits to `account` from a `POST /v1/admin/accounts/{id}/grants` body.
pub async fn create_grant_from(
    state: &AppState,
    account: &Account,
    map: &Map<String, Value>,
    bytes: &[u8],
) -> Result<GrantCreated, ApiError> {
    only_fields(map, &["amount", "note"])?;
    let amount = match map.get("amount") {
        Some(v) => parse_grant_amount(v, raw_member(bytes, "amount").map(|r| r.get()))?,
        None => {
            return Err(ApiError::invalid_field(
                "amount",
                "'amount' is required: credits (USD) as a decimal string such as \"12.50\".",
            ))
        }
    };
    let note = match map.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(note)) if note.chars().count() <= 1000 => Some(note.as_str()),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid_field(
                "note",
                "'note' must be at most 1000 characters.",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid_field(
                "note",
                format!("'note' must be a string or null, not {}.", type_name(other)),
            ))
        }
    };
    let grant_id = match state.accounts.grant_credits(account.id, amount, note).await {
        Ok(id) => id,
        Err(GrantError::Store(StoreError::Grant(why))) => {
            return Err(ApiError::invalid_field(
                "amount",
                format!("Cannot grant {amount} to account {}: {why}.", account.id.0),
            ))
        }
        Err(GrantError::Store(e)) => return Err(e.into()),
        Err(other) => return Err(ApiError::invalid_field("amount", other.to_string())),
    };
    let after = state
        .accounts
        .account(account.id)
        .await?
        .ok_or_else(|| account_not_found(account.id.0))?;
    let grant = state
        .accounts
        .grants(account.id)
        .await?
        .into_iter()
        .find(|g| g.id == grant_id)
        .ok_or_else(|| ApiError::internal("a grant just written is not in the account's grants"))?;
    let created = GrantCreated {
        grant: GrantView::new(&grant),
        balance: after.balance().to_string(),
    };
    Ok(created)
}

/// `POST /v1/admin/accounts/{id}/provisioning-keys` `{"name"}` (optional) → 201 with
/// the plaintext, the only time it is shown.
pub async fn create_provisioning_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers).await?;
    let account = account_of_path(&state, &id).await?;
    let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
    let name = if bytes.iter().all(u8::is_ascii_whitespace) {
        "provisioning".to_string()
    } else {
        let map = json_object(&bytes)?;
        only_fields(&map, &["name"])?;
        match map.get("name") {
            Some(v) => parse_name(v)?,
            None => "provisioning".to_string(),
        }
    };
    let view = create_provisioning_key_named(&state, &account, &name).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Mints a provisioning key of `account`: the answer holds the plaintext, shown once.
pub async fn create_provisioning_key_named(
    state: &AppState,
    account: &Account,
    name: &str,
) -> Result<ProvisioningKeyView, ApiError> {
    let (key, plaintext) = state
        .accounts
        .create_provisioning_key(account.id, name)
        .await?;
    Ok(ProvisioningKeyView {
        id: key.id.0,
        account_id: key.account_id.0,
        name: key.name,
        hint: key.hint,
        created_at: crate::rfc3339(key.created_at),
        key: plaintext,
        message: "Store this key securely. It will not be shown again.",
    })
}

/// `DELETE /v1/admin/provisioning-keys/{id}` → 204; it stops working at once.
pub async fn revoke_provisioning_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.operator(&headers).await?;
    let id = KeyId(parse_id(&id, "/v1/admin/provisioning-keys/4")?);
    revoke_provisioning_key_by_id(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes a provisioning key (404 when there is no live one with that id).
pub async fn revoke_provisioning_key_by_id(state: &AppState, id: KeyId) -> Result<(), ApiError> {
    if !state.accounts.revoke_provisioning_key(id).await? {
        return Err(ApiError::not_found(
            "key_not_found",
            format!("No live provisioning key with id {}.", id.0),
        ));
    }
    Ok(())
}
