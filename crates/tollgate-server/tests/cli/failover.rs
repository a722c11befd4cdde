//! kill -9 of the real server while requests are failing over: a deployment refuses
//! connections, another model's only deployment answers 503 and its fallback serves at
//! its own price. After the restart every delivered response is in the ledger exactly
//! once, at the cost its `x-tollgate-cost` header said; nothing else is charged but
//! requests whose answer the kill cut off; the key, the account and the ledger agree.

use std::collections::BTreeMap;
use std::time::Duration;

use fake_upstream::Fault;
use serde_json::{json, Value};
use sqlx::{Connection, Row};

use super::{free_port, funded_key, nanos, serve, UPSTREAM_SECRET};

/// Requests sent at once; the kill lands while about half are in flight.
const REQUESTS: usize = 60;

fn provider(name: &str, base: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"UP_KEY\"\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_failing_over_loses_no_delivered_charge_and_charges_it_once() {
    let dir = tempfile::tempdir().expect("dir");
    let options = || fake_upstream::Options {
        openai_api_key: Some(UPSTREAM_SECRET.into()),
        ..fake_upstream::Options::default()
    };
    let good = fake_upstream::start(options()).await.expect("fake");
    let sick = fake_upstream::start(options()).await.expect("fake");
    sick.faults()
        .for_duration(
            Duration::from_secs(3600),
            Fault::Status {
                status: 503,
                retry_after: None,
            },
        )
        .await
        .expect("fault");
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let config = format!(
        "[routing]\nmax_attempts = 3\ncooldown_failures = 1000000\n\n{}{}{}\
         [[models]]\nid = \"m\"\nmax_output_tokens = 50\npricing = {{ input = \"1\", output = \"1\" }}\n\
         [[models.deployments]]\nprovider = \"dead\"\npriority = 0\n\
         [[models.deployments]]\nprovider = \"good\"\npriority = 1\n\n\
         [[models]]\nid = \"n\"\nmax_output_tokens = 50\nfallbacks = [\"f\"]\npricing = {{ input = \"1\", output = \"1\" }}\n\
         [[models.deployments]]\nprovider = \"sick\"\n\n\
         [[models]]\nid = \"f\"\nprovider = \"good\"\nmax_output_tokens = 50\npricing = {{ input = \"3\", output = \"7\" }}\n",
        provider("dead", &dead),
        provider("sick", &sick.base_url()),
        provider("good", &good.base_url()),
    );
    let config_path = dir.path().join("tollgate.toml");
    std::fs::write(&config_path, config).expect("config");
    let config = config_path.to_str().expect("path");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = serve(dir.path(), port, "first.log", "info").await;
    let key = funded_key(dir.path(), config, &base, "failover").await;
    let client = reqwest::Client::new();

    // Every request fails over (a refused connection, or a 503 then the fallback model)
    // and its served attempt waits up to 1.2 s for its first byte: the kill at 600 ms
    // finds some answered, some waiting, some between attempts.
    let requests = (0..REQUESTS).map(|i| {
        let (client, key, base) = (client.clone(), key.clone(), base.clone());
        async move {
            let model = if i % 2 == 0 { "m" } else { "n" };
            let wait = (i * 20) % 1200;
            let body = json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": format!("request {i} [[fake:words=6,first_byte_ms={wait}]]")}]});
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .ok()?;
            assert_eq!(r.status(), 200, "a failover that can serve serves");
            let header = |name: &str| r.headers()[name].to_str().expect("header").to_string();
            let id = header("x-request-id");
            let cost = nanos(&header("x-tollgate-cost"));
            let served = header("x-tollgate-model");
            let attempts: u32 = header("x-tollgate-attempts").parse().expect("attempts");
            let answer: Value = r.json().await.ok()?;
            answer["choices"][0]["message"]["content"].as_str()?;
            assert_eq!(served, if model == "m" { "m" } else { "f" });
            assert!(attempts >= 2, "request {i} failed over: {attempts} attempts");
            Some((id, cost))
        }
    });
    let all = tokio::spawn(futures_util::future::join_all(requests));
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(server); // SIGKILL
    let delivered: BTreeMap<String, i64> =
        all.await.expect("requests").into_iter().flatten().collect();
    assert!(
        !delivered.is_empty() && delivered.len() < REQUESTS,
        "the kill landed mid-traffic: {} of {REQUESTS} delivered",
        delivered.len()
    );

    let _server = serve(dir.path(), port, "second.log", "info").await;
    let db = dir.path().join("tollgate-data/tollgate.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open");
    let rows = sqlx::query("SELECT request_id, cost, model, attempts FROM usage_records")
        .fetch_all(&mut conn)
        .await
        .expect("read");
    let mut ledger = BTreeMap::new();
    for row in &rows {
        let id: String = row.get("request_id");
        let model: String = row.get("model");
        let attempts: i64 = row.get("attempts");
        assert!(model == "m" || model == "f", "served by {model}");
        assert!(attempts >= 2, "{id}: {attempts}");
        assert!(
            ledger
                .insert(id.clone(), row.get::<i64, _>("cost"))
                .is_none(),
            "{id} charged twice"
        );
    }
    for (id, cost) in &delivered {
        assert_eq!(
            ledger.get(id),
            Some(cost),
            "delivered {id} is in the ledger at its header's cost"
        );
    }
    // Beyond the delivered ones, only answers the kill cut off in transit may be charged:
    // each was served by an upstream, so the fakes saw at least that many answers.
    let served_upstream = good.stats().requests as usize;
    assert!(
        ledger.len() <= served_upstream,
        "{} charges, {served_upstream} answers upstream",
        ledger.len()
    );
    eprintln!(
        "delivered {} charged {} upstream {}",
        delivered.len(),
        ledger.len(),
        served_upstream
    );
    let total: i64 = ledger.values().sum();
    let row = sqlx::query(
        "SELECT (SELECT charged FROM accounts WHERE name = 'default') AS account, \
         (SELECT usage FROM api_keys WHERE name = 'failover') AS key",
    )
    .fetch_one(&mut conn)
    .await
    .expect("read");
    assert_eq!(row.get::<i64, _>("account"), total);
    assert_eq!(row.get::<i64, _>("key"), total);
}
