//! The command line: `tollgate serve`, `migrate`, and the operator commands.
#![allow(clippy::print_stdout)] // the operator commands print their results on stdout

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::accounts::{Accounts, GrantError};
use crate::auth::Authenticator;
use crate::billing::Credits;
use crate::config::{Config, Overrides};
use crate::server::Server;
use crate::store::{self, Account, KeyId, KeyKind, StoreError};

/// Tollgate: a self-hosted AI API gateway with exact metering.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, global = true, env = "TOLLGATE_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// Redis URL for cluster mode: redis://HOST:PORT
    #[arg(long, global = true, env = "TOLLGATE_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// Address to listen on, HOST:PORT.
        #[arg(long, env = "TOLLGATE_LISTEN", value_name = "HOST:PORT")]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Grant credits to an account, or correct its credits.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Manage provisioning keys.
    #[command(subcommand, name = "provisioning-keys")]
    ProvisioningKeys(ProvisioningKeysCommand),
    /// Manage operator keys (the keys of the operator API, /v1/admin/*).
    #[command(subcommand, name = "operator-keys")]
    OperatorKeys(OperatorKeysCommand),
    /// The models served (the config file's and the built-in catalog's).
    #[command(subcommand)]
    Models(ModelsCommand),
}

#[derive(Debug, Subcommand)]
enum OperatorKeysCommand {
    /// Create an operator key; prints the plaintext key alone on stdout.
    Create {
        #[arg(long, default_value = "operator")]
        name: String,
    },
    /// List the operator keys not revoked (never the secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an operator key by id; it stops working at once.
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List the models served, their providers and prices (USD per million tokens).
    List {
        /// The same objects as `GET /v1/models`, with each model's providers.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Create an account; prints its id.
    Create { name: String },
    /// List accounts with their balances.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CreditsCommand {
    /// Add credits (USD) to an account, e.g. `50` or `12.34`.
    Grant {
        /// Account id or name.
        account: String,
        /// Amount in credits (1 credit = 1 USD), exact decimal, more than zero.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// A note kept with the grant.
        #[arg(long)]
        note: Option<String>,
        /// When the grant's remainder leaves the balance (RFC 3339, in the future).
        #[arg(long, conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// How long until it expires: a whole number and s, m, h, d or w (`60d`).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List an account's grants and corrections with what is left of each.
    List {
        /// Account id or name.
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Correct an account's credits by a positive or negative amount, with a note saying
    /// why. Refused if it would take the balance below zero.
    Adjust {
        /// Account id or name.
        account: String,
        /// Amount in credits, exact decimal, e.g. `-5` or `2.50` (negative allowed).
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Why (required); kept with the adjustment.
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProvisioningKeysCommand {
    /// Create a provisioning key; prints the plaintext key alone on stdout.
    Create {
        /// Account id or name.
        account: String,
        #[arg(long, default_value = "provisioning")]
        name: String,
    },
    /// List an account's provisioning keys (never the secrets).
    List {
        /// Account id or name.
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a provisioning key by id; it stops working at once.
    Revoke { id: i64 },
}

impl GlobalArgs {
    fn overrides(&self, listen: Option<String>, serving: bool) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            listen,
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            without_provider_secrets: !serving,
        }
    }
}

/// Logging to stderr, and the trace export: keep it alive until exit (it flushes what
/// is queued).
pub struct Logging {
    _lines: tracing_appender::non_blocking::WorkerGuard,
    _telemetry: crate::observe::logging::Telemetry,
}

/// Sets up logging to stderr (text or JSON, `[observability] log_format`); `RUST_LOG`
/// picks the level (default `info`); traces are exported when configured
/// (docs/observability.md). Lines are written by a thread of their own, so a slow
/// stderr (a file on a busy disk) never blocks a request.
/// The queue holds `LOG_QUEUE_LINES` lines (about 256 KB, allocated up front; the
/// library's default of 128,000 took 4 MB of an idle server's memory). Lines that
/// arrive while it is full are dropped rather than wait.
pub fn init_logging(config: &crate::config::Observability) -> anyhow::Result<Logging> {
    const LOG_QUEUE_LINES: usize = 8_192;
    // The log thread writes every line queued meanwhile, then flushes: under load, one
    // write to stderr carries many lines instead of one system call each.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let telemetry = crate::observe::logging::init(
        config,
        &|name| std::env::var(name).ok(),
        writer,
        std::io::stderr().is_terminal(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(endpoint) = &telemetry.endpoint {
        tracing::info!(%endpoint, "exporting traces (OTLP over HTTP)");
    }
    Ok(Logging {
        _lines: guard,
        _telemetry: telemetry,
    })
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen } => {
            let config = Config::load(&cli.global.overrides(listen, true))?;
            let _logging = init_logging(&config.observability)?;
            serve(config).await
        }
        Command::Models(ModelsCommand::List { json }) => {
            let config = Config::load(&cli.global.overrides(None, false))?;
            println!("{}", crate::http::public::models_listing(&config, json));
            Ok(())
        }
        command => {
            let config = Config::load(&cli.global.overrides(None, false))?;
            let _logging = init_logging(&config.observability)?;
            let store = store::open(&config.database_url)
                .await
                .with_context(|| "cannot open the database")?;
            let accounts = Accounts::new(store.clone(), Authenticator::new(store));
            operator(command, &accounts).await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let console = format!("http://{}/console", server.local_addr()?);
    if let Some(boot) = server.bootstrap().await? {
        tracing::warn!(
            account = %boot.account_name,
            file = %boot.key_file.display(),
            console = %console,
            "empty database: created account '{}' and its first provisioning key, written to {} (readable by you only); sign in to the console at {} with it",
            boot.account_name,
            boot.key_file.display(),
            console
        );
    }
    tracing::info!(address = %server.local_addr()?, console = %console, "tollgate listening");
    server.run(shutdown_signal()).await?;
    tracing::info!("tollgate stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn find_account(accounts: &Accounts, id_or_name: &str) -> anyhow::Result<Account> {
    match accounts.find_account(id_or_name).await? {
        Some(a) => Ok(a),
        None => bail!("no account with id or name '{id_or_name}' (see `tollgate accounts list`)"),
    }
}

/// An AMOUNT argument, read exactly (never through a float).
fn parse_amount(text: &str) -> anyhow::Result<Credits> {
    Credits::parse_amount(text).map_err(|e| anyhow::anyhow!("AMOUNT '{text}': {e}"))
}

/// The expiry of a grant from `--expires-at` (RFC 3339) or `--expires-in` (`60d`).
fn parse_expiry(at: Option<&str>, within: Option<&str>) -> anyhow::Result<Option<i64>> {
    match (at, within) {
        (Some(at), _) => match crate::parse_rfc3339(at) {
            Some(t) => Ok(Some(t)),
            None => {
                bail!("--expires-at '{at}' is not an RFC 3339 time such as 2027-01-31T00:00:00Z")
            }
        },
        (None, Some(within)) => {
            let seconds = crate::credits::parse_duration(within)
                .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?;
            Ok(Some(crate::now() + seconds))
        }
        (None, None) => Ok(None),
    }
}

/// A refused grant or adjustment, said in the operator's terms.
fn refused(what: &str, amount: Credits, account: &Account, e: GrantError) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot {what} {amount} for account {} ({}): {}",
        account.id.0,
        account.name,
        match e {
            GrantError::Store(StoreError::Grant(why)) => why.to_string(),
            other => other.to_string(),
        }
    )
}

async fn operator(command: Command, accounts: &Accounts) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } | Command::Migrate | Command::Models(_) => {}
        Command::Accounts(AccountsCommand::Create { name }) => {
            if name.trim().is_empty() || name.chars().count() > 255 {
                bail!("account name must be 1 to 255 characters");
            }
            let account = accounts.create_account(&name).await?;
            println!("{}", account.id.0);
        }
        Command::Accounts(AccountsCommand::List { json }) => {
            let list = accounts.list_accounts().await?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|a| {
                        json!({"id": a.id.0, "name": a.name, "created_at": crate::rfc3339(a.created_at),
                               "balance": a.balance().to_string()})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<6} {:<32} {:>16}  CREATED", "ID", "NAME", "BALANCE");
                for a in &list {
                    println!(
                        "{:<6} {:<32} {:>16}  {}",
                        a.id.0,
                        a.name,
                        a.balance().to_string(),
                        crate::rfc3339(a.created_at)
                    );
                }
            }
        }
        Command::Credits(CreditsCommand::Grant {
            account,
            amount,
            note,
            expires_at,
            expires_in,
        }) => {
            let amount = parse_amount(&amount)?;
            if amount <= Credits::ZERO {
                bail!("AMOUNT {amount}: {}", GrantError::NotPositive);
            }
            let expires_at = parse_expiry(expires_at.as_deref(), expires_in.as_deref())?;
            let account = find_account(accounts, &account).await?;
            accounts
                .grant(account.id, amount, note.as_deref(), expires_at)
                .await
                .map_err(|e| refused("grant", amount, &account, e))?;
            let after = find_account(accounts, &account.id.0.to_string()).await?;
            println!(
                "granted {amount} to account {} ({}); balance {}",
                after.id.0,
                after.name,
                after.balance()
            );
        }
        Command::Credits(CreditsCommand::List { account, json }) => {
            let account = find_account(accounts, &account).await?;
            let grants = accounts.credit_grants(account.id).await?;
            if json {
                let list: Vec<serde_json::Value> = grants
                    .iter()
                    .map(crate::http::credits::grant_json)
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for g in &grants {
                    println!(
                        "{}\t{}\tremaining {}\texpired {}\t{}\t{}\t{}",
                        g.id,
                        g.amount,
                        g.remaining(),
                        g.expired,
                        crate::rfc3339(g.created_at),
                        g.expires_at
                            .map_or_else(|| "never".to_string(), crate::rfc3339),
                        g.note.as_deref().unwrap_or("")
                    );
                }
            }
        }
        Command::Credits(CreditsCommand::Adjust {
            account,
            amount,
            note,
        }) => {
            let amount = parse_amount(&amount)?;
            let account = find_account(accounts, &account).await?;
            accounts
                .adjust_credits(account.id, amount, &note)
                .await
                .map_err(|e| refused("adjust", amount, &account, e))?;
            let after = find_account(accounts, &account.id.0.to_string()).await?;
            println!(
                "adjusted account {} ({}) by {amount}; balance {}",
                after.id.0,
                after.name,
                after.balance()
            );
        }
        Command::ProvisioningKeys(ProvisioningKeysCommand::Create { account, name }) => {
            let account = find_account(accounts, &account).await?;
            let (_, plaintext) = accounts.create_provisioning_key(account.id, &name).await?;
            println!("{plaintext}");
        }
        Command::ProvisioningKeys(ProvisioningKeysCommand::List { account, json }) => {
            let account = find_account(accounts, &account).await?;
            let keys = accounts
                .list_keys(account.id, KeyKind::Provisioning)
                .await?;
            if json {
                let rows: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        json!({"id": k.id.0, "name": k.name, "hint": k.hint,
                               "created_at": crate::rfc3339(k.created_at)})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<6} {:<24} {:<24}  CREATED", "ID", "NAME", "HINT");
                for k in &keys {
                    println!(
                        "{:<6} {:<24} {:<24}  {}",
                        k.id.0,
                        k.name,
                        k.hint,
                        crate::rfc3339(k.created_at)
                    );
                }
            }
        }
        Command::OperatorKeys(command) => operator_keys(command, accounts).await?,
        Command::ProvisioningKeys(ProvisioningKeysCommand::Revoke { id }) => {
            if !accounts.revoke_provisioning_key(KeyId(id)).await? {
                bail!("no live provisioning key with id {id}");
            }
            println!("revoked provisioning key {id}");
        }
    }
    Ok(())
}

async fn operator_keys(command: OperatorKeysCommand, accounts: &Accounts) -> anyhow::Result<()> {
    match command {
        OperatorKeysCommand::Create { name } => {
            if name.trim().is_empty() || name.chars().count() > 255 {
                bail!("--name must be 1 to 255 characters");
            }
            let (_, plaintext) = accounts.create_operator_key(&name).await?;
            println!("{plaintext}");
        }
        OperatorKeysCommand::List { json } => {
            let keys = accounts.list_operator_keys().await?;
            if json {
                let rows: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        json!({"id": k.id, "name": k.name, "hint": k.hint,
                               "created_at": crate::rfc3339(k.created_at)})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<6} {:<24} {:<24}  CREATED", "ID", "NAME", "HINT");
                for k in &keys {
                    println!(
                        "{:<6} {:<24} {:<24}  {}",
                        k.id,
                        k.name,
                        k.hint,
                        crate::rfc3339(k.created_at)
                    );
                }
            }
        }
        OperatorKeysCommand::Revoke { id } => {
            if !accounts.revoke_operator_key(id).await? {
                bail!("no live operator key with id {id}");
            }
            println!("revoked operator key {id}");
        }
    }
    Ok(())
}
