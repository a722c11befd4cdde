//! `GET /v1/account/requests`: an account's request log, newest first, a page at a time
//! from a cursor, filtered by key, model, status and time; as JSON, or as CSV
//! (`?format=csv` or `Accept: text/csv`), which streams every matching row.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::accounts::Accounts;
use crate::error::{quoted, ApiError};
use crate::store::{AccountId, Cursor, KeyId, RequestFilter, RequestRow, StatusFilter};

/// Rows of a JSON page unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;
/// Rows read per query while a CSV export streams.
const CSV_PAGE: u32 = 1_000;

const PARAMS: &[&str] = &[
    "limit", "cursor", "key_id", "model", "status", "from", "to", "format",
];

/// One request of the log.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RequestView {
    pub request_id: String,
    pub created_at: String,
    pub key_id: i64,
    pub key_name: Option<String>,
    /// The model that served.
    pub model: String,
    /// The model asked for, when a fallback served instead; otherwise null.
    pub requested_model: Option<String>,
    pub provider: Option<String>,
    pub endpoint: String,
    pub status: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
    /// Exact decimal credits (USD).
    pub cost: String,
    pub latency_ms: i64,
    pub attempts: i64,
    /// The usage was counted by the gateway (the provider reported none).
    pub estimated: bool,
}

impl RequestView {
    fn new(row: &RequestRow) -> Self {
        let r = &row.record;
        RequestView {
            request_id: r.request_id.clone(),
            created_at: crate::rfc3339(r.created_at),
            key_id: r.key_id.0,
            key_name: row.key_name.clone(),
            model: r.model.clone(),
            requested_model: r.detail.requested_model.clone(),
            provider: r.detail.provider.clone(),
            endpoint: r.endpoint.clone(),
            status: r.status,
            input_tokens: r.input_tokens,
            cached_input_tokens: r.cached_input_tokens,
            output_tokens: r.output_tokens,
            cost: r.cost.to_string(),
            latency_ms: r.latency_ms,
            attempts: r.detail.attempts,
            estimated: r.detail.estimated,
        }
    }
}

/// A JSON page: its rows and the cursor of the next page (null on the last).
#[derive(Serialize, utoipa::ToSchema)]
pub struct RequestPage {
    pub requests: Vec<RequestView>,
    pub next_cursor: Option<String>,
}

/// What the query string asked for.
#[derive(Debug, PartialEq, Eq)]
struct Ask {
    filter: RequestFilter,
    cursor: Option<Cursor>,
    limit: Option<u32>,
    csv: bool,
}

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::invalid_field(param, message)
}

fn encode_cursor(c: Cursor) -> String {
    format!("{}_{}", c.created_at, c.id)
}

fn decode_cursor(text: &str) -> Option<Cursor> {
    let (at, id) = text.split_once('_')?;
    Some(Cursor {
        created_at: at.parse().ok()?,
        id: id.parse().ok()?,
    })
}

/// A time bound: RFC 3339, or a date (YYYY-MM-DD) meaning the start of that day (UTC),
/// or for `to`, the end of it.
fn parse_bound(param: &str, text: &str) -> Result<i64, ApiError> {
    if let Some(at) = crate::parse_rfc3339(text) {
        return Ok(at);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(text, &format) {
        Ok(day) => {
            let start = day.midnight().assume_utc().unix_timestamp();
            Ok(if param == "to" { start + 86_400 } else { start })
        }
        Err(_) => Err(invalid(
            param,
            format!(
                "'{param}' must be a date such as 2026-03-31 or an RFC 3339 time such as 2026-03-31T12:00:00Z (got '{}').",
                quoted(text)
            ),
        )),
    }
}

fn parse_ask(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<Ask, ApiError> {
    if let Some(unknown) = query.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!(
                "Unknown query parameter '{}'. Allowed: {}.",
                quoted(unknown),
                PARAMS.join(", ")
            ),
        ));
    }
    let mut filter = RequestFilter::default();
    if let Some(text) = query.get("key_id") {
        filter.key = Some(KeyId(text.parse().map_err(|_| {
            invalid(
                "key_id",
                format!(
                    "'key_id' must be a key's integer id (got '{}').",
                    quoted(text)
                ),
            )
        })?));
    }
    if let Some(model) = query.get("model") {
        if model.is_empty() {
            return Err(invalid("model", "'model' must not be empty.".into()));
        }
        filter.model = Some(model.clone());
    }
    if let Some(text) = query.get("status") {
        filter.status = Some(match text.as_str() {
            "success" => StatusFilter::Success,
            "error" => StatusFilter::Error,
            code => match code.parse::<i64>() {
                Ok(code) if (100..=599).contains(&code) => StatusFilter::Exact(code),
                _ => {
                    return Err(invalid(
                        "status",
                        format!("'status' must be an HTTP status (100 to 599), 'success' or 'error' (got '{}').", quoted(text)),
                    ))
                }
            },
        });
    }
    filter.from = query
        .get("from")
        .map(|t| parse_bound("from", t))
        .transpose()?;
    filter.until = query.get("to").map(|t| parse_bound("to", t)).transpose()?;
    let cursor = match query.get("cursor") {
        None => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            invalid(
                "cursor",
                format!(
                    "'cursor' is not a cursor this API gave (next_cursor of a page): '{}'.",
                    quoted(text)
                ),
            )
        })?),
    };
    let limit = match query.get("limit") {
        None => None,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
            _ => {
                return Err(invalid(
                    "limit",
                    format!(
                        "'limit' must be a whole number from 1 to {MAX_LIMIT} (got '{}').",
                        quoted(text)
                    ),
                ))
            }
        },
    };
    let csv = match query.get("format").map(String::as_str) {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(invalid(
                "format",
                format!(
                    "'format' must be 'json' or 'csv' (got '{}').",
                    quoted(other)
                ),
            ))
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| {
                accept.split(',').any(|t| {
                    t.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/csv"))
                })
            }),
    };
    Ok(Ask {
        filter,
        cursor,
        limit,
        csv,
    })
}

/// `GET /v1/account/requests`
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let owner = state.auth.provisioning(&headers).await?;
    respond(&state, owner.account_id, &query, &headers).await
}

/// The answer of `GET /v1/account/requests` for `account`: a JSON page or the CSV.
pub async fn respond(
    state: &AppState,
    account: AccountId,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let ask = parse_ask(query, headers)?;
    if ask.csv {
        return Ok(csv_response(state.accounts.clone(), account, ask));
    }
    Ok(Json(page_of(state, account, ask).await?).into_response())
}

/// A JSON page of `account`'s request log for a query string of this API (no CSV).
pub async fn page(
    state: &AppState,
    account: AccountId,
    query: &HashMap<String, String>,
) -> Result<RequestPage, ApiError> {
    page_of(state, account, parse_ask(query, &HeaderMap::new())?).await
}

async fn page_of(state: &AppState, account: AccountId, ask: Ask) -> Result<RequestPage, ApiError> {
    let limit = ask.limit.unwrap_or(DEFAULT_LIMIT);
    // One row more than asked says whether there is a next page.
    let mut rows = state
        .accounts
        .requests(account, &ask.filter, ask.cursor, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| encode_cursor(r.cursor()))
    } else {
        None
    };
    Ok(RequestPage {
        requests: rows.iter().map(RequestView::new).collect(),
        next_cursor,
    })
}

const CSV_HEADER: &str = "request_id,created_at,key_id,key_name,model,requested_model,provider,endpoint,status,input_tokens,cached_input_tokens,output_tokens,cost,latency_ms,attempts,estimated\r\n";

/// A CSV field: quoted when it holds a separator, a quote or a line break; text that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a `'` first.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_row(row: &RequestRow) -> String {
    let r = &row.record;
    let fields = [
        csv_field(&r.request_id),
        crate::rfc3339(r.created_at),
        r.key_id.0.to_string(),
        csv_field(row.key_name.as_deref().unwrap_or("")),
        csv_field(&r.model),
        csv_field(r.detail.requested_model.as_deref().unwrap_or("")),
        csv_field(r.detail.provider.as_deref().unwrap_or("")),
        csv_field(&r.endpoint),
        r.status.to_string(),
        r.input_tokens.to_string(),
        r.cached_input_tokens.to_string(),
        r.output_tokens.to_string(),
        r.cost.to_string(),
        r.latency_ms.to_string(),
        r.detail.attempts.to_string(),
        r.detail.estimated.to_string(),
    ];
    let mut line = fields.join(",");
    line.push_str("\r\n");
    line
}

/// Streams the CSV: the header, then pages of rows read one after another, up to `limit`
/// rows when one was given. A failure mid-way cuts the stream (the client sees a broken
/// download, never a silently short file).
fn csv_response(accounts: Accounts, account: AccountId, ask: Ask) -> Response {
    struct Progress {
        accounts: Accounts,
        account: AccountId,
        filter: RequestFilter,
        cursor: Option<Cursor>,
        left: Option<u32>,
        started: bool,
        done: bool,
    }
    let start = Progress {
        accounts,
        account,
        filter: ask.filter,
        cursor: ask.cursor,
        left: ask.limit,
        started: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut p| async move {
        if !p.started {
            p.started = true;
            return Some((Ok::<_, std::io::Error>(CSV_HEADER.to_string()), p));
        }
        if p.done {
            return None;
        }
        let page = p.left.map_or(CSV_PAGE, |left| left.min(CSV_PAGE));
        match p
            .accounts
            .requests(p.account, &p.filter, p.cursor, page)
            .await
        {
            Err(e) => {
                tracing::error!(error = %e, "request log export failed");
                p.done = true;
                Some((Err(std::io::Error::other("request log export failed")), p))
            }
            Ok(rows) => {
                if rows.len() < page as usize {
                    p.done = true;
                }
                if let Some(left) = &mut p.left {
                    *left -= rows.len() as u32;
                    if *left == 0 {
                        p.done = true;
                    }
                }
                p.cursor = rows.last().map(RequestRow::cursor).or(p.cursor);
                if rows.is_empty() {
                    return None;
                }
                let text: String = rows.iter().map(csv_row).collect();
                Some((Ok(text), p))
            }
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"requests.csv\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(pairs: &[(&str, &str)]) -> Result<Ask, ApiError> {
        let query = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_ask(&query, &HeaderMap::new())
    }

    #[test]
    fn query_strings_are_read_or_refused_by_name() {
        let a = ask(&[
            ("key_id", "4"),
            ("model", "m"),
            ("status", "error"),
            ("from", "2026-03-01"),
            ("to", "2026-03-01"),
            ("limit", "10"),
            ("cursor", "100_7"),
        ])
        .expect("valid");
        assert_eq!(a.filter.key, Some(KeyId(4)));
        assert_eq!(a.filter.status, Some(StatusFilter::Error));
        let from = a.filter.from.expect("from");
        assert_eq!(a.filter.until, Some(from + 86_400));
        assert_eq!(
            a.cursor,
            Some(Cursor {
                created_at: 100,
                id: 7
            })
        );
        assert_eq!(a.limit, Some(10));
        assert!(!a.csv);
        for (name, value) in [
            ("limit", "0"),
            ("limit", "501"),
            ("status", "600"),
            ("status", "ok"),
            ("cursor", "abc"),
            ("from", "yesterday"),
            ("key_id", "x"),
            ("format", "xml"),
            ("bogus", "1"),
        ] {
            let e = ask(&[(name, value)]).expect_err(name);
            assert_eq!(e.param.as_deref(), Some(name), "{name}={value}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/csv;q=0.9"),
        );
        assert!(parse_ask(&HashMap::new(), &h).expect("valid").csv);
    }

    #[test]
    fn csv_fields_are_quoted_and_never_run_as_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-1,2"), "\"'-1,2\"");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }
}
