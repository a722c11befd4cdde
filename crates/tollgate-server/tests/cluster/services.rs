//! The services a cluster test runs on: a fresh PostgreSQL database of its own and a
//! private `redis-server` (never the machine's shared one: tests restart, pause and
//! flush theirs).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::Connection;

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| PG_ADMIN.to_string())
}

/// A fresh database on the test server; dropped at the end.
pub struct Database {
    name: String,
    pub url: String,
}

impl Database {
    pub async fn create() -> Database {
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (see .ci/run)");
        let name = format!("tollgate_cluster_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(b, _)| b)
            .to_string();
        Database {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("connect")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = pg_admin_url();
        // Best effort, in a thread of its own: the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A `redis-server` of this test alone, without persistence, on a free port: it can be
/// killed, restarted empty, paused and flushed without touching anyone else's.
pub struct PrivateRedis {
    child: Option<Child>,
    pub url: String,
    port: u16,
    /// Its own directory: empty unless the test runs `SAVE`, whose snapshot a restart
    /// then loads.
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = free_port();
        let mut redis = PrivateRedis {
            child: None,
            url: format!("redis://127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        redis.restart().await;
        redis
    }

    /// Starts the server on its port (empty, or from the test's last `SAVE`), and waits
    /// until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let dir = self.dir.path().to_str().expect("dir").to_string();
        self.child = Some(
            Command::new("redis-server")
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &dir,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut conn) = self.try_conn().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the server and everything it held are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal}");
        }
    }

    /// SIGSTOP: the server stops answering, its connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the server runs again and executes what waited.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    async fn try_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        self.try_conn().await.expect("private redis")
    }

    /// The shared budgets' current epoch.
    pub async fn epoch(&self) -> String {
        redis::cmd("GET")
            .arg(tollgate::cluster::EPOCH_KEY)
            .query_async(&mut self.conn().await)
            .await
            .expect("epoch")
    }

    /// A number field of a hash, if set.
    pub async fn field(&self, hash: &str, field: &str) -> Option<i64> {
        redis::cmd("HGET")
            .arg(hash)
            .arg(field)
            .query_async(&mut self.conn().await)
            .await
            .expect("hget")
    }

    /// (granted, charged, reserved) of the account's shared budget.
    pub async fn account_budget(&self, account: i64) -> [i64; 3] {
        let hash = tollgate::cluster::budget_key(&self.epoch().await, "a", account);
        let mut out = [0; 3];
        for (i, field) in ["granted", "charged", "reserved"].into_iter().enumerate() {
            out[i] = self.field(&hash, field).await.unwrap_or(0);
        }
        out
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
