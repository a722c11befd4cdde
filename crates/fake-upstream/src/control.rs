//! The fake's own control paths, for a fake in another process: `POST` and `DELETE
//! /__fake/faults`, `GET /__fake/stats`. They are never counted, recorded or faulted.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::Fault;
use crate::Shared;

/// The body of `POST /__fake/faults`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFault {
    fault: String,
    status: Option<u16>,
    retry_after: Option<u64>,
    ms: Option<u64>,
    count: Option<u64>,
    for_ms: Option<u64>,
}

fn refuse(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

/// `POST /__fake/faults`: `{"fault": "status" | "reset" | "first_byte", "status": 503,
/// "retry_after": 2, "ms": 1000, "count": N}` or `… "for_ms": M}` (one of the two).
pub(crate) async fn set_fault(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let req: SetFault = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(&format!("bad fault request: {e}")),
    };
    let fault = match req.fault.as_str() {
        "status" => match req.status {
            Some(status @ 400..=599) => Fault::Status {
                status,
                retry_after: req.retry_after,
            },
            _ => return refuse("`status` needs a `status` of 400..=599"),
        },
        "reset" => Fault::Reset,
        "first_byte" => match req.ms {
            Some(ms) => Fault::FirstByte(Duration::from_millis(ms)),
            None => return refuse("`first_byte` needs `ms`"),
        },
        "refuse" => {
            return refuse(
                "`refuse` cannot be set over HTTP: a refusing fake cannot be reached to end \
                 it; use FakeUpstream::faults().for_duration or stop()/restart() in process",
            )
        }
        other => return refuse(&format!("unknown fault `{other}`")),
    };
    match (req.count, req.for_ms) {
        (Some(n), None) => s.faults.next(n, fault),
        (None, Some(ms)) => s.faults.for_duration(Duration::from_millis(ms), fault),
        _ => return refuse("give exactly one of `count` and `for_ms`"),
    }
    Json(json!({"ok": true})).into_response()
}

/// `DELETE /__fake/faults`: ends the fault in force.
pub(crate) async fn clear_faults(State(s): State<Arc<Shared>>) -> Response {
    s.faults.clear();
    Json(json!({"ok": true})).into_response()
}

/// `GET /__fake/stats`: the counters and the requests per endpoint.
pub(crate) async fn stats(State(s): State<Arc<Shared>>) -> Response {
    let st = s.stats();
    let endpoints: serde_json::Map<String, Value> = s
        .counters
        .by_endpoint()
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect();
    Json(json!({
        "requests": st.requests,
        "faulted": st.faulted,
        "streams_started": st.streams_started,
        "streams_completed": st.streams_completed,
        "streams_cancelled": st.streams_cancelled,
        "streams_aborted": st.streams_aborted,
        "endpoints": endpoints,
    }))
    .into_response()
}
