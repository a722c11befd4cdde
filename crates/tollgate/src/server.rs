//! Start-up: open the store, bootstrap a first provisioning key, bind and serve.

use crate::webhooks::Webhooks;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::billing::meter::Meter;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::store;
use crate::usage::UsageWriter;

/// A running server.
pub struct Server {
    pub state: AppState,
    listener: TcpListener,
    /// `[observability] metrics_listen`, when `/metrics` has a listener of its own.
    metrics_listener: Option<TcpListener>,
    writer_task: tokio::task::JoinHandle<()>,
}

/// What the first start on an empty database created.
#[derive(Debug)]
pub struct Bootstrap {
    pub account_name: String,
    pub key_file: PathBuf,
}

impl Server {
    /// Opens the store (applying migrations) and binds the listen address. A model whose
    /// endpoints its provider cannot serve stops start-up.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        crate::providers::check_catalog(&config).map_err(|e| anyhow::anyhow!(e))?;
        let store = store::open(&config.database_url).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let metrics_listener = match config.observability.metrics_listen {
            Some(address) if config.observability.metrics => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen for /metrics on {address}: {e}"))?,
            ),
            _ => None,
        };
        let cluster = match &config.redis_url {
            Some(url) => Some(
                Cluster::connect(url, &config.database_url)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach redis: {e}"))?,
            ),
            None => None,
        };
        let (writer, writer_task) =
            UsageWriter::start(store.clone(), config.limits.ledger_wait).await?;
        let webhooks = Webhooks::new(&config.database_url, store.clone(), config.webhooks.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the webhooks' tables: {e}"))?
            .with_clock(config.clock.clone());
        let state = AppState::new(Arc::new(config), store, writer, cluster, Arc::new(webhooks));
        Ok(Server {
            state,
            listener,
            metrics_listener,
            writer_task,
        })
    }

    /// The address of the metrics listener, when `/metrics` has one of its own.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// On a database with no account at all, creates a `default` account and a
    /// provisioning key, written to a file only its owner can read.
    pub async fn bootstrap(&self) -> anyhow::Result<Option<Bootstrap>> {
        let accounts = &self.state.accounts;
        if !accounts.list_accounts().await?.is_empty() {
            return Ok(None);
        }
        let account = accounts.create_account("default").await?;
        let (_, plaintext) = accounts
            .create_provisioning_key(account.id, "initial")
            .await?;
        let dir = &self.state.config.data_dir;
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("provisioning-key.txt");
        write_private(&key_file, &format!("{plaintext}\n"))?;
        Ok(Some(Bootstrap {
            account_name: account.name,
            key_file,
        }))
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish and the
    /// usage writer drain.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Server {
            state,
            listener,
            metrics_listener,
            writer_task,
        } = self;
        let mut background = background_tasks(&state);
        background.push(tokio::spawn(crate::observe::endpoint::watch_backends(
            state.clone(),
        )));
        if let Some(metrics_listener) = metrics_listener {
            let app = crate::observe::endpoint::router(state.clone());
            background.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(metrics_listener, app).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }));
        }
        let limits = state.config.server;
        let app = router(state);
        let served = crate::connections::serve(listener, app, limits, shutdown).await;
        for task in background {
            task.abort();
        }
        // The router (and with it every writer handle) is gone: the writer drains and ends.
        if tokio::time::timeout(std::time::Duration::from_secs(10), writer_task)
            .await
            .is_err()
        {
            tracing::warn!("the usage writer did not drain within 10 s");
        }
        served
    }
}

/// Grant refresh, and in cluster mode the shared budgets' background work and the
/// invalidation listener.
fn background_tasks(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Webhook events and deliveries, off the request path.
    tasks.push(tokio::spawn(state.webhooks.clone().run_events()));
    tasks.push(tokio::spawn(state.webhooks.clone().run_deliveries()));
    let meter = state.meter.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = meter.refresh_grants().await {
                tracing::warn!(error = %e, "re-reading credit grants failed");
            }
        }
    }));
    if let Meter::Shared(_) = &*state.meter {
        // Heartbeat, lease renewal and settle retries; then, apart so a slow ledger
        // cannot delay them, the checks of the shared budgets against the ledger.
        let meter = state.meter.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::cluster::TICK);
            loop {
                tick.tick().await;
                if let Meter::Shared(shared) = &*meter {
                    shared.tick().await;
                }
            }
        }));
        let meter = state.meter.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::cluster::TICK);
            loop {
                tick.tick().await;
                if let Meter::Shared(shared) = &*meter {
                    shared.check_due().await;
                }
            }
        }));
        // The change feed of credit grants (a full scan only when it may have missed one).
        let meter = state.meter.clone();
        tasks.push(tokio::spawn(async move {
            if let Meter::Shared(shared) = &*meter {
                shared.run_grant_feed().await;
            }
        }));
    }
    if let Some(cluster) = &state.cluster {
        tasks.push(tokio::spawn(
            cluster
                .clone()
                .run_invalidation_listener(state.auth.clone()),
        ));
    }
    tasks
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
