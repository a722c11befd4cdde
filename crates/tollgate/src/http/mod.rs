//! HTTP: the router, request ids and access logs, and the handlers of each surface.

pub mod account;
pub mod admin;
pub mod credits;
pub mod extract;
pub mod front;
pub mod inference;
pub mod openapi;
pub mod public;
pub mod requests;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::accounts::Accounts;
use crate::auth::Authenticator;
use crate::billing::meter::{LocalBudgets, Meter};
use crate::cluster::{Cluster, SharedBudgets, SharedRateLimiter};
use crate::config::{Config, Endpoint};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::observe::{access, endpoint, Metrics};
use crate::ratelimit::RateLimiter;
use crate::store::{AccountId, KeyId, KeyRecord, Store};
use crate::usage::UsageWriter;
use crate::webhooks::Webhooks;

/// Everything a handler may need, behind one `Arc`: every request clones it.
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

/// The parts of [`AppState`].
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub accounts: Accounts,
    pub meter: Arc<Meter>,
    pub gateway: Arc<Gateway>,
    pub limiter: Arc<RateLimiter>,
    pub cluster: Option<Cluster>,
    pub writer: UsageWriter,
    pub webhooks: Arc<Webhooks>,
    pub metrics: Arc<Metrics>,
    pub console: crate::console::Console,
}

impl AppState {
    /// Wires the parts together; `writer` is the running usage writer.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        writer: UsageWriter,
        cluster: Option<Cluster>,
        webhooks: Arc<Webhooks>,
    ) -> Self {
        let auth = Authenticator::new(store.clone());
        let accounts = Accounts::new(store.clone(), auth.clone());
        // In a cluster the cache waits for the invalidation bus to be listening.
        auth.set_caching(cluster.is_none());
        let (meter, limiter) = match &cluster {
            Some(cluster) => (
                Meter::Shared(Box::new(SharedBudgets::new(
                    cluster.clone(),
                    store.clone(),
                    config.reservation_lease,
                    config.budget_check_interval,
                    config.clock.clone(),
                ))),
                RateLimiter::Shared(SharedRateLimiter::new(cluster.clone())),
            ),
            None => (
                Meter::Local(LocalBudgets::new(store.clone(), config.clock.clone())),
                RateLimiter::local(),
            ),
        };
        let meter = Arc::new(meter);
        let metrics = Arc::new(Metrics::new(&config, writer.metrics(), &auth.cache_metrics));
        let gateway = Arc::new(Gateway::new(
            config.clone(),
            meter.clone(),
            writer.clone(),
            cluster.as_ref(),
        ));
        let console = crate::console::Console::new(
            &config.database_url,
            config.console.session,
            config.console.secure_cookie,
        );
        AppState(Arc::new(Parts {
            console,
            config,
            store,
            auth,
            accounts,
            meter,
            gateway,
            limiter: Arc::new(limiter),
            cluster,
            writer,
            webhooks,
            metrics,
        }))
    }

    /// A key's settings changed here: other parts and other replicas follow.
    pub async fn on_key_changed(&self, key: &KeyRecord) {
        self.meter.key_changed(key).await;
        self.publish_invalidation(key.id).await;
    }

    /// A key was deleted here: it stops working everywhere.
    pub async fn on_key_deleted(&self, account: AccountId, id: KeyId) {
        self.meter.key_deleted(account, id).await;
        self.publish_invalidation(id).await;
    }

    async fn publish_invalidation(&self, id: KeyId) {
        if let Some(cluster) = &self.cluster {
            if let Err(e) = cluster.publish_invalidation(id).await {
                tracing::error!(error = %e, key = id.0, "could not publish a key invalidation");
            }
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// The request id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for endpoint in Endpoint::ALL {
        router = router.route(
            &format!("/v1{}", endpoint.path()),
            post(move |state, request_id, obs, headers, body| {
                inference::model_call(endpoint, state, request_id, obs, headers, body)
            }),
        );
    }
    // What the ledger says (usage, balance, activity) is read after the usage writer has
    // committed every record handed to it so far: a client that got its answer sees its
    // charge there, although on SQLite the answer did not wait for the commit.
    let account = Router::new()
        .route("/v1/key", get(account::own_key))
        .route(
            "/v1/account/keys",
            get(account::list_keys).post(account::create_key),
        )
        .route(
            "/v1/account/keys/{id}",
            get(account::get_key)
                .patch(account::update_key)
                .delete(account::delete_key),
        )
        .route("/v1/account/keys/{id}/rotate", post(account::rotate_key))
        .route("/v1/account/balance", get(credits::balance))
        .route("/v1/account/credits", get(credits::credits))
        .route(
            "/v1/account/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/v1/account/webhooks/{id}", delete(webhooks::delete))
        .route(
            "/v1/account/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route("/v1/account/activity", get(account::activity))
        .route("/v1/account/requests", get(requests::list))
        .route(
            "/v1/admin/accounts",
            get(admin::list_accounts).post(admin::create_account),
        )
        .route("/v1/admin/accounts/{id}", get(admin::get_account))
        .route(
            "/v1/admin/accounts/{id}/grants",
            get(admin::list_grants).post(admin::create_grant),
        )
        .route(
            "/v1/admin/accounts/{id}/provisioning-keys",
            post(admin::create_provisioning_key),
        )
        .route(
            "/v1/admin/provisioning-keys/{id}",
            delete(admin::revoke_provisioning_key),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ledger_committed_first,
        ));
    let cors = state.config.cors.clone();
    let observability = &state.config.observability;
    if observability.metrics && observability.metrics_listen.is_none() {
        router = router.route("/metrics", get(endpoint::metrics));
    }
    let router = router
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .route("/v1/models", get(public::models))
        .route("/v1/models/{*id}", get(public::model))
        .route("/v1/messages/count_tokens", post(inference::count_tokens))
        .route("/v1/startups", get(public::startups))
        .merge(account)
        .merge(crate::console::router())
        .fallback(front::not_found)
        .method_not_allowed_fallback(front::method_not_allowed)
        .layer(middleware::from_fn(front::api_errors))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            access::layer,
        ))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(front::cors_layer(&cors)),
        None => router,
    }
}

async fn ledger_committed_first(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(e) = state.writer.caught_up().await {
        return ApiError::from(e).into_response();
    }
    next.run(request).await
}
