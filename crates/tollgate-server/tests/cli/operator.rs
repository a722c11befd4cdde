//! The operator's commands (accounts, credits with expiries, provisioning and operator
//! keys) run as the `tollgate` binary, and operator keys on a running server's API.

use serde_json::{json, Value};
use sqlx::{Connection, Row};

use super::{free_port, serve, stdout, tollgate, upstream_and_config, Output, Path};

#[test]
fn operator_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert_eq!(stdout(&tollgate(d, &["migrate"])), "");
    let id = stdout(&tollgate(d, &["accounts", "create", "acme"]));
    assert_eq!(id.trim(), "1");
    let duplicate = tollgate(d, &["accounts", "create", "acme"]);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    let granted = stdout(&tollgate(
        d,
        &["credits", "grant", "acme", "12.34", "--note", "trial"],
    ));
    assert!(granted.contains("balance 12.34"), "{granted}");
    stdout(&tollgate(d, &["credits", "grant", "1", "0.000000001"]));
    let bad = tollgate(d, &["credits", "grant", "acme", "12.3456789999"]);
    assert!(!bad.status.success());
    let missing = tollgate(d, &["credits", "grant", "nobody", "1"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account"));

    let list: Value =
        serde_json::from_str(&stdout(&tollgate(d, &["accounts", "list", "--json"]))).expect("json");
    assert_eq!(list[0]["name"], "acme");
    assert_eq!(list[0]["balance"], "12.340000001");
    assert!(stdout(&tollgate(d, &["accounts", "list"])).contains("acme"));

    let key = stdout(&tollgate(
        d,
        &["provisioning-keys", "create", "acme", "--name", "ops"],
    ));
    let key = key.trim_end_matches('\n');
    assert!(
        key.starts_with("tg-prov-") && !key.contains(char::is_whitespace),
        "{key:?}"
    );
    let keys_json = stdout(&tollgate(
        d,
        &["provisioning-keys", "list", "acme", "--json"],
    ));
    assert!(!keys_json.contains(&key[8..]));
    let keys: Value = serde_json::from_str(&keys_json).expect("json");
    assert_eq!(keys[0]["name"], "ops");
    let key_id = keys[0]["id"].as_i64().expect("id").to_string();
    assert!(stdout(&tollgate(d, &["provisioning-keys", "revoke", &key_id])).contains("revoked"));
    let again = tollgate(d, &["provisioning-keys", "revoke", &key_id]);
    assert!(!again.status.success());
    let keys: Value = serde_json::from_str(&stdout(&tollgate(
        d,
        &["provisioning-keys", "list", "acme", "--json"],
    )))
    .expect("json");
    assert_eq!(keys, Value::Array(vec![]));
}

/// The command's failure message (it must fail).
fn refused(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn balance_of(dir: &Path, account: &str) -> String {
    let list: Value =
        serde_json::from_str(&stdout(&tollgate(dir, &["accounts", "list", "--json"])))
            .expect("json");
    let row = list
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["name"] == account)
        .expect("account listed");
    row["balance"].as_str().expect("balance").to_string()
}

/// A grant only adds; a correction is an adjustment with a note, which never takes the
/// balance below zero; amounts are exact and bounded.
#[tokio::test]
async fn grants_only_add_and_adjustments_never_overdraw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    stdout(&tollgate(d, &["accounts", "create", "acme"]));
    stdout(&tollgate(d, &["credits", "grant", "acme", "10"]));

    for args in [
        &["credits", "grant", "acme", "--", "-5"][..],
        &["credits", "grant", "acme", "-5"],
        &["credits", "grant", "acme", "-0.000000001"],
    ] {
        let err = refused(&tollgate(d, args));
        assert!(
            err.contains("more than zero") && err.contains("credits adjust"),
            "{err}"
        );
    }
    assert!(refused(&tollgate(d, &["credits", "grant", "acme", "0"])).contains("more than zero"));
    let err = refused(&tollgate(d, &["credits", "grant", "acme", "0.0000000001"]));
    assert!(err.contains("9 decimal places"), "{err}");
    let err = refused(&tollgate(
        d,
        &["credits", "grant", "acme", "1000000000.000000001"],
    ));
    assert!(err.contains("too large"), "{err}");
    assert_eq!(balance_of(d, "acme"), "10.00");

    // Exact to the last digit, never through a float.
    let granted = stdout(&tollgate(
        d,
        &["credits", "grant", "acme", "12345678.123456789"],
    ));
    assert!(granted.contains("balance 12345688.123456789"), "{granted}");

    // An adjustment needs its note.
    let err = refused(&tollgate(d, &["credits", "adjust", "acme", "-2.5"]));
    assert!(err.contains("--note"), "{err}");
    let err = refused(&tollgate(
        d,
        &["credits", "adjust", "acme", "-2.5", "--note", "  "],
    ));
    assert!(err.contains("note"), "{err}");
    let err = refused(&tollgate(
        d,
        &["credits", "adjust", "acme", "0", "--note", "nothing"],
    ));
    assert!(err.contains("zero"), "{err}");
    let adjusted = stdout(&tollgate(
        d,
        &[
            "credits",
            "adjust",
            "acme",
            "-2.5",
            "--note",
            "refund of a double grant",
        ],
    ));
    assert!(
        adjusted.contains("by -2.50") && adjusted.contains("balance 12345685.623456789"),
        "{adjusted}"
    );
    // Past zero: refused, saying what the balance is; nothing changes.
    let err = refused(&tollgate(
        d,
        &[
            "credits",
            "adjust",
            "acme",
            "--note",
            "too much",
            "--",
            "-12345685.62345679",
        ],
    ));
    assert!(
        err.contains("below zero") && err.contains("12345685.623456789"),
        "{err}"
    );
    assert_eq!(balance_of(d, "acme"), "12345685.623456789");
    // Down to exactly zero is allowed; a positive adjustment too.
    stdout(&tollgate(
        d,
        &[
            "credits",
            "adjust",
            "acme",
            "-12345685.623456789",
            "--note",
            "closing",
        ],
    ));
    assert_eq!(balance_of(d, "acme"), "0.00");
    stdout(&tollgate(
        d,
        &[
            "credits",
            "adjust",
            "1",
            "0.000000001",
            "--note",
            "goodwill",
        ],
    ));
    assert_eq!(balance_of(d, "acme"), "0.000000001");

    // Grants add up to at most 10^9 credits.
    let err = refused(&tollgate(d, &["credits", "grant", "acme", "1000000000"]));
    assert!(err.contains("more than 1000000000"), "{err}");

    // Each adjustment is kept with its note, as an exact amount.
    let url = format!("sqlite://{}", d.join("tollgate-data/tollgate.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let rows = sqlx::query("SELECT amount, note FROM credit_grants ORDER BY id")
        .fetch_all(&mut db)
        .await
        .expect("grants");
    let grants: Vec<(i64, Option<String>)> = rows
        .iter()
        .map(|r| (r.get("amount"), r.get("note")))
        .collect();
    assert_eq!(
        grants,
        vec![
            (10_000_000_000, None),
            (12_345_678_123_456_789, None),
            (-2_500_000_000, Some("refund of a double grant".to_string())),
            (-12_345_685_623_456_789, Some("closing".to_string())),
            (1, Some("goodwill".to_string())),
        ]
    );
}

/// `credits grant --expires-at/--expires-in` and `credits list`: expiring grants from the
/// command line, with their expiry checked before anything is written.
#[test]
fn expiring_grants_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    stdout(&tollgate(d, &["accounts", "create", "acme"]));
    stdout(&tollgate(
        d,
        &[
            "credits",
            "grant",
            "acme",
            "10",
            "--note",
            "monthly",
            "--expires-in",
            "60d",
        ],
    ));
    stdout(&tollgate(
        d,
        &[
            "credits",
            "grant",
            "acme",
            "2.5",
            "--expires-at",
            "2099-01-31T00:00:00Z",
        ],
    ));
    stdout(&tollgate(d, &["credits", "grant", "acme", "1"]));
    for bad in [
        &["credits", "grant", "acme", "1", "--expires-in", "0d"][..],
        &["credits", "grant", "acme", "1", "--expires-in", "60"],
        &["credits", "grant", "acme", "1", "--expires-in", "-3d"],
        &[
            "credits",
            "grant",
            "acme",
            "1",
            "--expires-at",
            "2020-01-01T00:00:00Z",
        ],
        &["credits", "grant", "acme", "1", "--expires-at", "tomorrow"],
        &[
            "credits",
            "grant",
            "acme",
            "1",
            "--expires-at",
            "2099-01-01T00:00:00Z",
            "--expires-in",
            "1d",
        ],
    ] {
        refused(&tollgate(d, bad));
    }
    assert_eq!(balance_of(d, "acme"), "13.50");
    let list: Value = serde_json::from_str(&stdout(&tollgate(
        d,
        &["credits", "list", "acme", "--json"],
    )))
    .expect("json");
    let list = list.as_array().expect("grants");
    assert_eq!(list.len(), 3, "refused grants wrote nothing: {list:?}");
    assert_eq!(list[0]["amount"], "1.00");
    assert_eq!(list[0]["expires_at"], Value::Null);
    assert_eq!(list[1]["amount"], "2.50");
    assert_eq!(list[1]["expires_at"], "2099-01-31T00:00:00Z");
    assert_eq!(list[2]["note"], "monthly");
    assert_eq!(list[2]["remaining"], "10.00");
    let in_60_days = list[2]["expires_at"].as_str().expect("expiry");
    let expires = tollgate::parse_rfc3339(in_60_days).expect("rfc3339");
    let expected = tollgate::now() + 60 * 86_400;
    assert!((expires - expected).abs() < 60, "{in_60_days}");
}

/// `tollgate operator-keys`: the plaintext alone on stdout, a list without secrets, and a
/// key that works on the operator API of a running server until it is revoked.
#[tokio::test]
async fn operator_keys_are_minted_listed_used_and_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_upstream, config) = upstream_and_config(d).await;
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", config.to_str().expect("path")]);
        tollgate(d, &all)
    };
    let port = free_port();
    let _running = serve(d, port, "log.txt", "debug").await;
    let key = stdout(&cli(&["operator-keys", "create", "--name", "automation"]));
    let key = key.trim_end_matches('\n').to_string();
    assert!(
        key.starts_with("tg-op-") && !key.contains(char::is_whitespace),
        "{key:?}"
    );
    let listed = stdout(&cli(&["operator-keys", "list", "--json"]));
    assert!(!listed.contains(&key[6..]));
    let keys: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(keys[0]["name"], "automation");
    assert!(keys[0]["hint"]
        .as_str()
        .expect("hint")
        .ends_with(&key[key.len() - 4..]));
    assert!(stdout(&cli(&["operator-keys", "list"])).contains("automation"));
    let refused_name = refused(&cli(&["operator-keys", "create", "--name", " "]));
    assert!(refused_name.contains("--name"), "{refused_name}");

    let client = reqwest::Client::new();
    let accounts = |key: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/v1/admin/accounts"))
                .bearer_auth(key)
                .send()
                .await
                .expect("request")
        }
    };
    let listed = accounts(key.clone()).await;
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.expect("json");
    assert_eq!(listed["accounts"][0]["name"], "default");

    let id = keys[0]["id"].as_i64().expect("id").to_string();
    assert!(stdout(&cli(&["operator-keys", "revoke", &id])).contains("revoked"));
    assert!(refused(&cli(&["operator-keys", "revoke", &id])).contains("no live operator key"));
    assert_eq!(accounts(key.clone()).await.status(), 401);
    let keys: Value =
        serde_json::from_str(&stdout(&cli(&["operator-keys", "list", "--json"]))).expect("json");
    assert_eq!(keys, json!([]));
    drop(_running);
    let logs = std::fs::read_to_string(d.join("log.txt")).expect("log");
    assert!(
        !logs.contains(&key[6..]),
        "the operator key leaked into the logs"
    );
}
