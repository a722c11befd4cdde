//! Setting up a run: PostgreSQL databases, configuration files, fake upstreams, nginx, accounts and keys.

#[allow(unused_imports)]
use super::*;

/// Creates the fresh PostgreSQL database of this run; returns its URL.
pub(super) async fn fresh_pg_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    conn.close().await?;
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    let root = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    Ok(format!("{root}/{name}{query}"))
}

/// Drops a scenario's database once it is done; a failure is only reported (the run's
/// figures stand, and the next run of the scenario drops it before creating it again).
pub(super) async fn drop_pg_database(server_url: &str, name: &str) {
    use sqlx::{Connection, Executor};
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(server_url).await?;
        conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        conn.close().await
    };
    if let Err(e) = dropped.await {
        println!("  (could not drop {name}: {e})");
    }
}

pub(super) fn write_config(
    path: &Path,
    database_url: &str,
    data_dir: &Path,
    fast: &str,
    slow: &str,
    routing: bool,
) -> anyhow::Result<()> {
    let mut text = format!(
        r#"# Written by tollgate-bench.
database_url = "{database_url}"
data_dir = "{data_dir}"

[[providers]]
name = "fake"
kind = "openai"
base_url = "http://{fast}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[providers]]
name = "fake-slow"
kind = "openai"
base_url = "http://{slow}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[models]]
id = "{CHAT_MODEL}"
provider = "fake"
endpoints = ["chat.completions", "responses", "messages"]
max_output_tokens = 16384
pricing = {{ input = "0.15", cached_input = "0.075", output = "0.60" }}

[[models]]
id = "{EMBED_MODEL}"
provider = "fake"
endpoints = ["embeddings"]
pricing = {{ input = "0.02" }}

[[models]]
id = "{SLOW_MODEL}"
provider = "fake-slow"
upstream_model = "{CHAT_MODEL}"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.15", output = "0.60" }}
"#,
        data_dir = data_dir.display()
    );
    if routing {
        text.push_str(&routing_config(fast)?);
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// Two more models for the routing scenario (a binary from before routing reads none of
/// it): `ROUTED_MODEL` on two deployments of equal weight (both the fast fake, under two
/// provider names), and `FAILOVER_MODEL`, whose first deployment refuses connections and
/// never cools down, so every request pays exactly one failed attempt.
fn routing_config(fast: &str) -> anyhow::Result<String> {
    let dead = procs::free_port()?;
    Ok(format!(
        r#"
[[providers]]
name = "fake-gemini"
kind = "gemini"
base_url = "http://{fast}/v1beta"
api_key_env = "BENCH_UPSTREAM_KEY"

[[models]]
id = "{GEMINI_MODEL}"
provider = "fake-gemini"
upstream_model = "gemini-2.5-flash"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.30", cached_input = "0.03", output = "2.50" }}

[[providers]]
name = "fake-bedrock"
kind = "bedrock"
region = "us-east-1"
base_url = "http://{fast}"

[[models]]
id = "{BEDROCK_MODEL}"
provider = "fake-bedrock"
upstream_model = "amazon.nova-pro-v1:0"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.80", cached_input = "0.20", output = "3.20" }}

[routing]
cooldown_failures = 1000000000

[[providers]]
name = "fake-b"
kind = "openai"
base_url = "http://{fast}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[[models]]
id = "{ROUTED_MODEL}"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.15", cached_input = "0.075", output = "0.60" }}

[[models.deployments]]
provider = "fake"
upstream_model = "{CHAT_MODEL}"

[[models.deployments]]
provider = "fake-b"
upstream_model = "{CHAT_MODEL}"

[[models]]
id = "{FAILOVER_MODEL}"
endpoints = ["chat.completions"]
max_output_tokens = 16384
pricing = {{ input = "0.15", cached_input = "0.075", output = "0.60" }}

[[models.deployments]]
provider = "dead"
upstream_model = "{CHAT_MODEL}"
priority = 0

[[models.deployments]]
provider = "fake"
upstream_model = "{CHAT_MODEL}"
priority = 1
"#
    ))
}

pub(super) fn nginx_config(work: &Path, port: u16, upstream: &str) -> String {
    let w = work.display();
    format!(
        r#"# Written by tollgate-bench: a plain reverse proxy, the baseline.
worker_processes 2;
daemon off;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {w}/nginx-access.log;
    client_body_temp_path {w}/nginx-body;
    proxy_temp_path {w}/nginx-proxy;
    upstream fake {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// Creates keys through the account API: returns the plaintexts.
pub(super) async fn create_keys(
    client: &reqwest::Client,
    base: &str,
    provisioning_key: &str,
    names: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    use futures_util::StreamExt;
    let results: Vec<anyhow::Result<String>> = futures_util::stream::iter(names)
        .map(|name| async move {
            let r = client
                .post(format!("{base}/v1/account/keys"))
                .header("authorization", format!("Bearer {provisioning_key}"))
                .json(&json!({"name": name}))
                .send()
                .await?;
            let status = r.status();
            let v: Value = r.json().await?;
            v.get("key")
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("creating a key answered {status}: {v}"))
        })
        .buffered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

pub(super) fn start_fake(
    bin_dir: &Path,
    work: &Path,
    name: &str,
    fast: bool,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(bin_dir.join("fake-upstream"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    if fast {
        cmd.arg("--fast");
    }
    let mut proc = Proc::spawn(name, cmd, &work.join(format!("{name}.log")), true)?;
    let addr = proc.first_line()?;
    Ok((proc, addr))
}

pub(super) async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = client.get(url).send().await {
            if r.status().as_u16() < 500 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{url} did not answer within 10 s")
}

/// Bootstraps a deployment: first start, provisioning key, credits, keys.
pub(super) async fn provision(
    bench: &mut Bench,
    deployment: &Deployment,
    cold: usize,
) -> anyhow::Result<(String, String, Vec<String>)> {
    bench.start_gate(deployment, "warn").await?;
    let key_file = deployment.data_dir.join("provisioning-key.txt");
    let provisioning_key = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?
        .trim()
        .to_string();
    let out = Command::new(&deployment.bin)
        .arg("--config")
        .arg(&deployment.config)
        .args([
            "credits",
            "grant",
            "default",
            "1000000",
            "--note",
            "benchmark",
        ])
        .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream")
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "credits grant failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let base = format!("http://{}", bench.gate()?.addr);
    let mut names = vec!["hot".to_string()];
    names.extend((0..cold).map(|i| format!("cold {i}")));
    let mut keys = create_keys(&bench.client, &base, &provisioning_key, names).await?;
    let hot = keys.remove(0);
    bench.stop_gate();
    Ok((provisioning_key, hot, keys))
}

/// An operator command of the `tollgate` binary; returns its stdout.
pub(super) fn operator(deployment: &Deployment, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(&deployment.bin)
        .arg("--config")
        .arg(&deployment.config)
        .args(args)
        .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream")
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "tollgate {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A second account with a few keys, made with the operator commands and the API;
/// returns its provisioning key.
pub(super) async fn provision_typical(
    bench: &mut Bench,
    deployment: &Deployment,
    keys: usize,
) -> anyhow::Result<String> {
    operator(deployment, &["accounts", "create", TYPICAL_ACCOUNT])?;
    operator(deployment, &["credits", "grant", TYPICAL_ACCOUNT, "1000"])?;
    let provisioning_key = operator(
        deployment,
        &["provisioning-keys", "create", TYPICAL_ACCOUNT],
    )?;
    bench.start_gate(deployment, "warn").await?;
    let base = format!("http://{}", bench.gate()?.addr);
    let names = (0..keys).map(|i| format!("typical {i}")).collect();
    create_keys(&bench.client, &base, &provisioning_key, names).await?;
    bench.stop_gate();
    Ok(provisioning_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration a run writes is one the gateway accepts (with and without the
    /// routing scenario's models): it broke unseen once, when routing moved
    /// `upstream_model` onto each deployment.
    #[test]
    fn the_written_configuration_is_accepted() {
        let dir = tempfile::tempdir().expect("dir");
        for routing in [false, true] {
            let path = dir.path().join("tollgate.toml");
            let url = format!("sqlite://{}/t.db", dir.path().display());
            write_config(
                &path,
                &url,
                dir.path(),
                "127.0.0.1:1",
                "127.0.0.1:2",
                routing,
            )
            .expect("written");
            let text = std::fs::read_to_string(&path).expect("read");
            // What a run gives the gateway (the `tollgate serve` command of a run): the upstream key and
            // the fake's AWS key for the Bedrock provider.
            let env = |name: &str| match name {
                "AWS_ACCESS_KEY_ID" => Some(FAKE_AWS_ACCESS_KEY_ID.to_string()),
                "AWS_SECRET_ACCESS_KEY" => Some(FAKE_AWS_SECRET_ACCESS_KEY.to_string()),
                _ => name.starts_with("BENCH_").then(|| "k".to_string()),
            };
            let config = tollgate::config::Config::from_toml(
                &text,
                &tollgate::config::Overrides::default(),
                &env,
            );
            assert!(config.is_ok(), "routing {routing}: {:?}", config.err());
        }
    }
}
