//! The web console's pages over the seeded ledger: the `default` account with 1,001 keys
//! and 1,000,000 usage rows over 30 days, each page fetched one at a time with a signed-in
//! session's cookie (issue 18's target: every page rendered in under 100 ms).

#[allow(unused_imports)]
use super::*;

const ACCOUNT_PAGES: &[&str] = &[
    "/console",
    "/console/keys",
    "/console/credits",
    "/console/requests",
    "/console/requests?status=success&model=gpt-4o-mini",
    "/console/models",
    "/console/reference",
];

const OPERATOR_PAGES: &[&str] = &["/console", "/console/accounts/1"];

impl Bench {
    /// Signs in to the console with `key`; the session cookie.
    async fn console_cookie(&self, key: &str) -> anyhow::Result<String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = client
            .post(self.gate_url("/console/sign-in")?)
            .form(&[("key", key)])
            .send()
            .await?;
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .map(str::to_string);
        match cookie {
            Some(c) if response.status().as_u16() == 303 => Ok(c),
            _ => bail!("console sign-in answered {}", response.status()),
        }
    }

    /// One page, `n` times one at a time: latency and size.
    async fn console_page(&self, path: &str, cookie: &str) -> anyhow::Result<(Latency, usize)> {
        let url = self.gate_url(path)?;
        let response = self
            .client
            .get(&url)
            .header("cookie", cookie)
            .send()
            .await?;
        if response.status().as_u16() != 200 {
            bail!("{path} answered {}", response.status());
        }
        let size = response.bytes().await?.len();
        let run = OhaRun {
            url,
            headers: vec![("Cookie".into(), cookie.to_string())],
            body: None,
            method: "GET",
            rate: None,
            connections: 1,
            duration: Duration::from_secs(120),
            requests: Some(self.lengths.activity_requests),
        };
        let r = self.oha.run(&run).await?;
        if r.failed > 0 {
            bail!("{} requests of {path} failed", r.failed);
        }
        Ok((r.latency, size))
    }

    /// Every console page of the account holder (1,001 keys, 1M usage rows) and the
    /// operator's, one request at a time.
    pub(super) async fn console(&mut self) -> anyhow::Result<()> {
        let deployment = self.sqlite.clone();
        self.start_gate(&deployment, "info").await?;
        let holder = self.console_cookie(&self.provisioning_key.clone()).await?;
        let operator_key = operator(&deployment, &["operator-keys", "create", "--name", "bench"])?;
        let op = self.console_cookie(&operator_key).await?;
        let mut t = Table::new(
            "Console pages over one million usage rows",
            format!(
                "Each page fetched one at a time (oha -n {} -c 1) with a signed-in session's cookie: the `default` account has {} inference keys and 1,000,000 seeded usage rows over 30 days (the overview's chart and tables come from the daily roll-up; the request log reads 50 rows by index). The operator pages list every account.",
                self.lengths.activity_requests,
                COLD_KEYS + 1
            ),
            &["page", "session", "answer (bytes)", "p50 (ms)", "p99 (ms)"],
        );
        let mut worst: Option<(String, f64)> = None;
        let pages = ACCOUNT_PAGES
            .iter()
            .map(|p| (*p, "account holder", &holder))
            .chain(OPERATOR_PAGES.iter().map(|p| (*p, "operator", &op)));
        for (path, who, cookie) in pages {
            let (latency, size) = self.console_page(path, cookie).await?;
            t.row(
                path,
                vec![
                    who.to_string(),
                    num(Some(size as f64), 0),
                    num(Some(latency.p50_ms), 2),
                    num(Some(latency.p99_ms), 2),
                ],
            );
            if worst.as_ref().is_none_or(|(_, p99)| latency.p99_ms > *p99) {
                worst = Some((path.to_string(), latency.p99_ms));
            }
        }
        self.emit(t);
        if let Some((path, p99)) = worst {
            self.target(
                "every console page, 1,001 keys and 1M usage rows",
                "< 100 ms",
                format!("slowest p99 {p99:.1} ms ({path})"),
                Some(p99 < 100.0),
            );
        }
        Ok(())
    }
}
