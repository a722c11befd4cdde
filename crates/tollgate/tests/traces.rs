//! Traces and request-scoped logs, in a test process of their own (the log subscriber
//! is global): the OTLP export received by a real OTLP/HTTP receiver decoding the
//! OpenTelemetry protobufs; the request span with the GenAI attributes, a child span
//! per upstream attempt, the client's `traceparent` as their parent and the attempt's
//! context reaching the provider; JSON log lines that carry the request id, even a
//! provider's warning; and no prompt or answer in any span or line.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tollgate::config::{Config, LogFormat, Observability, Overrides};
use tollgate::server::Server;

/// Spans received by the fake collector.
type Received = Arc<Mutex<Vec<Span>>>;

async fn receive(State(spans): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf");
    let mut spans = spans.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone());
        assert_eq!(service, Some(Any::StringValue("tollgate-test".into())));
        for scope in resource.scope_spans {
            spans.extend(scope.spans);
        }
    }
    ""
}

async fn collector() -> (SocketAddr, Received) {
    let spans: Received = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, spans)
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn string(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(v)) => v,
        other => panic!("{key}: {other:?} in {}", span.name),
    }
}

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_PARENT: &str = "b7ad6b7169203331";
const PROMPT: &str = "a secret prompt about zebras";

#[tokio::test]
async fn spans_reach_a_collector_and_lines_carry_the_request_id() {
    let (collector_addr, spans) = collector().await;
    let lines = Lines::default();
    let observability = Observability {
        otlp_endpoint: Some(format!("http://{collector_addr}")),
        service_name: "tollgate-test".into(),
        log_format: LogFormat::Json,
        ..Observability::default()
    };
    let writer = lines.clone();
    let telemetry =
        tollgate::observe::logging::init(&observability, &|_| None, move || writer.clone(), false)
            .expect("telemetry");
    assert_eq!(
        telemetry.endpoint.as_deref(),
        Some(format!("http://{collector_addr}/v1/traces").as_str())
    );

    let upstream = fake_upstream::start(fake_upstream::Options {
        openai_api_key: Some("up-secret".into()),
        ..Default::default()
    })
    .await
    .expect("fake upstream");
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        r#"listen = "127.0.0.1:0"
database_url = "sqlite://{db}"
data_dir = "{dir}"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{base}"
api_key_env = "UP"
[[providers]]
name = "wrong-key"
kind = "openai"
base_url = "{base}"
api_key_env = "WRONG"
[[models]]
id = "gpt-test"
provider = "openai"
endpoints = ["chat.completions"]
max_output_tokens = 1000
pricing = {{ input = "0.40", output = "1.60" }}
[[models]]
id = "refused-test"
provider = "wrong-key"
endpoints = ["chat.completions"]
pricing = {{ input = "0.40", output = "1.60" }}
"#,
        db = dir.path().join("t.db").display(),
        dir = dir.path().display(),
        base = upstream.base_url()
    );
    let env = |name: &str| match name {
        "UP" => Some("up-secret".to_string()),
        "WRONG" => Some("not-the-key".to_string()),
        _ => None,
    };
    let config = Config::from_toml(&toml, &Overrides::default(), &env).expect("config");
    let server = Server::bind(config).await.expect("bind");
    let boot = server.bootstrap().await.expect("boot").expect("fresh");
    let prov = std::fs::read_to_string(boot.key_file)
        .expect("key")
        .trim()
        .to_string();
    let addr = server.local_addr().expect("addr");
    let state = server.state.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let account = state
        .accounts
        .find_account("default")
        .await
        .expect("db")
        .expect("acct")
        .id;
    state
        .accounts
        .grant_credits(account, "10".parse().expect("amount"), None)
        .await
        .expect("grant");
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("http://{addr}/v1/account/keys"))
        .bearer_auth(&prov)
        .json(&json!({"name": "t"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let key = created["key"].as_str().expect("key").to_string();
    let key_id = created["id"].as_i64().expect("id");

    // A client in a trace of its own calls the gateway.
    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"))
        .json(&json!({"model": "gpt-test", "max_tokens": 40,
            "messages": [{"role": "user", "content": format!("{PROMPT} [[fake:report_input=12,report_output=3]]")}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let answer = response.text().await.expect("answer");
    // A provider that refuses the operator's credentials: the gateway logs an error.
    let refused = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "refused-test", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 502);
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();

    // The provider got the trace context of the attempt span, in the client's trace.
    let received = upstream.received();
    let traceparent = received
        .iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("report_input=12"))
        .expect("the request reached the fake")
        .headers
        .iter()
        .find(|(name, _)| name == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("a traceparent upstream");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        parts[1], CLIENT_TRACE,
        "the client's trace continues upstream"
    );
    assert_ne!(
        parts[2], CLIENT_PARENT,
        "the provider's parent is the attempt span"
    );

    // The spans arrive at the collector.
    let mut request_span = None;
    for _ in 0..100 {
        telemetry.flush();
        {
            let spans = spans.lock().expect("lock");
            request_span = spans
                .iter()
                .find(|s| attr(s, "gen_ai.response.model").is_some())
                .cloned();
        }
        if request_span.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request_span = request_span.expect("the request span was exported");
    let spans = spans.lock().expect("lock").clone();
    assert_eq!(hex(&request_span.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&request_span.parent_span_id), CLIENT_PARENT);
    assert_eq!(request_span.name, "chat gpt-test");
    assert_eq!(string(&request_span, "gen_ai.operation.name"), "chat");
    assert_eq!(string(&request_span, "gen_ai.request.model"), "gpt-test");
    assert_eq!(string(&request_span, "gen_ai.response.model"), "gpt-test");
    assert_eq!(string(&request_span, "gen_ai.provider.name"), "openai");
    assert_eq!(int(&request_span, "gen_ai.usage.input_tokens"), 12);
    assert_eq!(int(&request_span, "gen_ai.usage.output_tokens"), 3);
    assert_eq!(int(&request_span, "gen_ai.request.max_tokens"), 40);
    assert_eq!(int(&request_span, "tollgate.key_id"), key_id);
    assert_eq!(int(&request_span, "http.response.status_code"), 200);
    let cost: tollgate::billing::Credits = string(&request_span, "tollgate.cost")
        .parse()
        .expect("a decimal");
    // 0.40 and 1.60 USD per million tokens: 400 and 1,600 nano-dollars a token.
    assert_eq!(cost.nanos(), 12 * 400 + 3 * 1600);
    assert!(attr(&request_span, "error.type").is_none());
    // One attempt span, the request span's child, in the same trace; its id is the
    // parent the provider was told.
    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == request_span.span_id)
        .collect();
    assert_eq!(
        attempts.len(),
        1,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let attempt = attempts[0];
    assert_eq!(attempt.trace_id, request_span.trace_id);
    assert_eq!(attempt.name, "upstream openai");
    assert_eq!(hex(&attempt.span_id), parts[2]);
    assert_eq!(string(attempt, "gen_ai.provider.name"), "openai");
    assert_eq!(string(attempt, "tollgate.attempt.outcome"), "success");
    assert_eq!(int(attempt, "tollgate.attempt"), 1);
    // The refused request: error.type on its span, each failed attempt on its own.
    let failed = spans
        .iter()
        .find(|s| {
            attr(s, "gen_ai.request.model") == Some(Any::StringValue("refused-test".into()))
                && s.parent_span_id.is_empty()
        })
        .expect("the failed request's span");
    assert!(
        matches!(attr(failed, "error.type"), Some(Any::StringValue(t)) if t.starts_with("upstream"))
    );
    let failed_attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == failed.span_id)
        .collect();
    assert!(!failed_attempts.is_empty());
    for a in &failed_attempts {
        assert_eq!(string(a, "tollgate.attempt.outcome"), "credentials");
    }
    // Nothing of the prompt or the answer in any span.
    let exported = format!("{spans:?}");
    assert!(!exported.contains("zebras"));
    let answer: Value = serde_json::from_str(&answer).expect("json answer");
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(content.len() > 10, "{content}");
    assert!(!exported.contains(content), "the answer is in a span");

    // The log: JSON lines; every line logged while serving a request carries its id,
    // the provider's credentials error too; no prompt, no key.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = String::from_utf8(lines.0.lock().expect("lock").clone()).expect("utf-8");
    let logged: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |id: &str| -> Vec<&Value> {
        logged
            .iter()
            .filter(|l| {
                l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == id))
            })
            .collect()
    };
    let access = of(&request_id);
    let line = access
        .iter()
        .find(|l| l["fields"]["message"] == "request")
        .expect("the access line");
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["fields"]["model"], "gpt-test");
    assert_eq!(line["fields"]["provider"], "openai");
    assert_eq!(line["fields"]["input_tokens"], 12);
    assert_eq!(line["fields"]["output_tokens"], 3);
    assert_eq!(line["fields"]["cost"], cost.to_string());
    assert_eq!(line["fields"]["outcome"], "complete");
    assert!(line["fields"]["latency_us"].as_u64().expect("latency") > 0);
    assert!(line["fields"]["ttfb_us"].as_u64().expect("ttfb") > 0);
    let refused_lines = of(&refused_id);
    assert!(
        refused_lines.iter().any(|l| l["level"] == "ERROR"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("credentials"))),
        "the provider's error carries the request id: {refused_lines:?}"
    );
    assert!(!text.contains("zebras"), "a prompt was logged");
    assert!(!text.contains(content), "an answer was logged");
    assert!(!text.contains(&key) && !text.contains("up-secret") && !text.contains("not-the-key"));
    let _ = stop.send(());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
