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
    /// The models served (the config file's and the built-in catalog's).
    #[command(subcommand)]
    Models(ModelsCommand),
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

/// Sets up logging to stderr; `RUST_LOG` picks the level (default `info`). Lines are
/// written by a thread of their own, so a slow stderr (a file on a busy disk) never
/// blocks a request; keep the returned guard alive until exit, it flushes what is queued.
/// The queue holds `LOG_QUEUE_LINES` lines (about 256 KB, allocated up front; the
/// library's default of 128,000 took 4 MB of an idle server's memory). Lines that
/// arrive while it is full are dropped rather than wait.
pub fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    const LOG_QUEUE_LINES: usize = 8_192;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The log thread writes every line queued meanwhile, then flushes: under load, one
    // write to stderr carries many lines instead of one system call each.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .try_init();
    guard
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen } => {
            serve(Config::load(&cli.global.overrides(listen, true))?).await
        }
        Command::Models(ModelsCommand::List { json }) => {
            let config = Config::load(&cli.global.overrides(None, false))?;
            println!("{}", crate::http::public::models_listing(&config, json));
            Ok(())
        }
        command => {
            let config = Config::load(&cli.global.overrides(None, false))?;
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
    if let Some(boot) = server.bootstrap().await? {
        tracing::warn!(
            account = %boot.account_name,
            file = %boot.key_file.display(),
            "empty database: created account '{}' and its first provisioning key, written to {} (readable by you only)",
            boot.account_name,
            boot.key_file.display()
        );
    }
    tracing::info!(address = %server.local_addr()?, "tollgate listening");
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
        }) => {
            let amount = parse_amount(&amount)?;
            if amount <= Credits::ZERO {
                bail!("AMOUNT {amount}: {}", GrantError::NotPositive);
            }
            let account = find_account(accounts, &account).await?;
            accounts
                .grant_credits(account.id, amount, note.as_deref())
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
        Command::ProvisioningKeys(ProvisioningKeysCommand::Revoke { id }) => {
            if !accounts.revoke_provisioning_key(KeyId(id)).await? {
                bail!("no live provisioning key with id {id}");
            }
            println!("revoked provisioning key {id}");
        }
    }
    Ok(())
}
