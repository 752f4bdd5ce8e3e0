//! `POST /_batch`: many sub-requests through the same stack, in parallel or
//! in sequence, with per-call results and batch statistics.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderName, HeaderValue, Method, Request, StatusCode},
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, Limited};
use palisade::batch::{BatchCall, BatchExecutor, BatchMode, CallError};
use palisade::core::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::AppState;

/// Largest sub-response body kept in a batch answer.
const MAX_SUB_BODY: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    requests: Vec<SubRequest>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    stop_on_error: bool,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Parallel,
    Sequential,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubRequest {
    request_id: String,
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

fn bad_request(msg: String) -> Response {
    Error::new(ErrorKind::BadRequest, msg).into_response()
}

fn build(sub: SubRequest, template: &http::HeaderMap) -> Result<BatchCall<Request<Body>>, String> {
    let id = sub.request_id;
    let method = Method::from_bytes(sub.method.as_bytes())
        .map_err(|_| format!("request {id}: invalid method"))?;
    if !sub.path.starts_with('/') || sub.path.starts_with("/_batch") {
        return Err(format!(
            "request {id}: path must start with / and not be /_batch"
        ));
    }
    let mut req = Request::builder().method(method).uri(&sub.path);
    // Sub-requests keep the caller's identity headers (API key, user).
    for (name, value) in template {
        if name != http::header::CONTENT_LENGTH && name != http::header::CONTENT_TYPE {
            req = req.header(name, value);
        }
    }
    for (name, value) in &sub.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("request {id}: invalid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("request {id}: invalid header value"))?;
        req = req.header(name, value);
    }
    let body = match sub.body {
        Some(v) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(&v).expect("a Value serializes"))
        }
        None => Body::empty(),
    };
    let req = req
        .body(body)
        .map_err(|_| format!("request {id}: invalid path"))?;
    Ok(BatchCall::new(id, req))
}

pub async fn handle(State(state): State<AppState>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, 4 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Error::new(ErrorKind::PayloadTooLarge, "batch body over 4 MiB").into_response();
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(err) => return bad_request(format!("invalid batch JSON: {err}")),
    };
    let executor: &BatchExecutor<_> = &state.batch;
    if batch.requests.len() > executor.batch_limit() {
        return bad_request(format!(
            "batch of {} requests is over the limit of {}",
            batch.requests.len(),
            executor.batch_limit()
        ));
    }
    let mut calls = Vec::with_capacity(batch.requests.len());
    for sub in batch.requests {
        match build(sub, &parts.headers) {
            Ok(call) => calls.push(call),
            Err(msg) => return bad_request(msg),
        }
    }
    let mode = match batch.mode {
        Mode::Parallel => BatchMode::Parallel,
        Mode::Sequential => BatchMode::Sequential {
            stop_on_error: batch.stop_on_error,
        },
    };
    let report = match executor.run(state.stack.clone(), calls, mode).await {
        Ok(r) => r,
        Err(err) => return bad_request(err.to_string()),
    };
    let mut results = Vec::with_capacity(report.results.len());
    for r in report.results {
        let time_ms = r.elapsed.as_secs_f64() * 1000.0;
        let entry = match r.outcome {
            Ok(res) => {
                let status = res.status().as_u16();
                let body = match Limited::new(res.into_body(), MAX_SUB_BODY).collect().await {
                    Ok(b) => {
                        let b = b.to_bytes();
                        serde_json::from_slice::<Value>(&b)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into()))
                    }
                    Err(_) => Value::Null,
                };
                let error = (!r.success).then(|| format!("status {status}"));
                json!({ "request_id": r.id, "status": status, "body": body, "error": error, "time_ms": time_ms })
            }
            Err(CallError::Skipped(_)) => json!({
                "request_id": r.id, "status": null, "body": null,
                "error": "skipped: an earlier request failed", "time_ms": 0.0
            }),
            Err(CallError::Service(never)) => match never {},
        };
        results.push(entry);
    }
    (
        StatusCode::OK,
        Json(json!({ "results": results, "stats": report.stats })),
    )
        .into_response()
}
