//! `GET /metrics`: on the main listener, or on `[observability] metrics_listen` alone;
//! behind a bearer token when `metrics_token_env` names one.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::http::AppState;

/// The content type of the OpenMetrics text format (Prometheus scrapes it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The scrape.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.observability.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_metrics_token",
                "GET /metrics needs the operator's metrics token: Authorization: Bearer <token>.",
            )
            .into_response();
        }
    }
    let text = state.metrics.render(
        &state.config,
        state.gateway.router(),
        state.writer.status().backlog,
    );
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

/// The router of a metrics-only listener.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Checks the database (and Redis, in a cluster) every few seconds for
/// `tollgate_backend_up`, and brings `tollgate_shared_reservations` up to date.
pub async fn watch_backends(state: AppState) {
    use super::labels::{BackendLabel, SourceLabel, Static};
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut counted = (0, 0);
    loop {
        tick.tick().await;
        if let crate::billing::meter::Meter::Shared(shared) = &*state.meter {
            let now = shared.reservations();
            for (source, (was, is)) in
                [("slice", (counted.0, now.0)), ("redis", (counted.1, now.1))]
            {
                state
                    .metrics
                    .shared_reservations
                    .get_or_create(&SourceLabel {
                        source: Static(source),
                    })
                    .inc_by(is - was);
            }
            counted = now;
        }
        let bound = state.writer.wait_bound();
        let database = matches!(
            tokio::time::timeout(bound, state.store.ping()).await,
            Ok(Ok(()))
        );
        state
            .metrics
            .backend_up
            .get_or_create(&BackendLabel {
                backend: Static("database"),
            })
            .set(i64::from(database));
        if let Some(cluster) = &state.cluster {
            let redis = cluster.ping().await.is_ok();
            state
                .metrics
                .backend_up
                .get_or_create(&BackendLabel {
                    backend: Static("redis"),
                })
                .set(i64::from(redis));
        }
    }
}
