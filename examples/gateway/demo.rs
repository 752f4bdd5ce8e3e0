//! The built-in demo upstream: JSON with PII in it, a flaky endpoint, a slow
//! endpoint, a cacheable one and an OpenAI-compatible chat model, so the
//! gateway shows every layer with nothing to install.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

#[derive(Clone, Default)]
struct Counters {
    hits: Arc<AtomicU64>,
    flaky: Arc<AtomicU64>,
}

/// Starts the demo upstream on `addr` and returns the address it listens on.
pub async fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let counters = Counters::default();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/users/{id}", get(user))
        .route("/catalog", get(catalog))
        .route("/flaky", get(flaky))
        .route("/fail", get(fail))
        .route("/slow", get(slow))
        .route("/echo", post(echo))
        .route("/hits", get(hits))
        .route(
            "/v1/chat/completions",
            post(crate::demo_llm::chat_completions),
        )
        .with_state(counters.clone())
        .layer(axum::middleware::from_fn_with_state(counters, count_hits));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "demo upstream stopped");
        }
    });
    Ok(local)
}

async fn count_hits(
    State(c): State<Counters>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.uri().path() != "/hits" {
        c.hits.fetch_add(1, Ordering::Relaxed);
    }
    next.run(req).await
}

async fn hits(State(c): State<Counters>) -> String {
    c.hits.load(Ordering::Relaxed).to_string()
}

/// A customer record full of PII: the PII layer masks it on the way out.
async fn user(Path(id): Path<u32>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "private, max-age=60")],
        Json(json!({
            "id": id,
            "name": "Asha Rao",
            "email": "asha.rao@example.com",
            "phone": "9876543210",
            "card": "4111 1111 1111 1111",
            "pan": "ABCDE1234F",
            "aadhaar": "2345 6789 0124",
            "password": "hunter2",
            "note": format!("call 9876543210 or mail asha.rao@example.com about order {id}"),
            "address": { "city": "Pune", "zip": "411001", "landmark": null },
            "tags": [],
        })),
    )
}

/// A large, cacheable catalogue: the shaping layer trims it for LLM tools.
async fn catalog(headers: HeaderMap) -> impl IntoResponse {
    const ETAG: &str = "\"catalog-v1\"";
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == ETAG.as_bytes())
    {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, ETAG)],
            Json(Value::Null),
        )
            .into_response();
    }
    let dealers: Vec<Value> = (0..40)
        .map(|i| {
            let city = ["Pune", "Mumbai", "Delhi", "Chennai"][i % 4];
            json!({
                "id": i,
                "name": format!("Dealer {i}"),
                "city": city,
                "rating": 3.5 + (i % 3) as f64 * 0.5,
                "address": { "line1": format!("{i} Ring Road"), "line2": null, "zip": format!("4110{i:02}") },
                "models": [{ "name": "Roadster", "price": 1_200_000 + i * 1000 }, { "name": "Tourer", "price": 900_000 }],
                "promotions": [],
                "notes": null,
            })
        })
        .collect();
    (
        [
            (
                header::CACHE_CONTROL,
                "public, max-age=30, stale-while-revalidate=30",
            ),
            (header::ETAG, ETAG),
        ],
        Json(json!({ "dealers": dealers, "total": 40, "next_page": null, "filters": {} })),
    )
        .into_response()
}

/// Fails with 503 two calls out of three.
async fn flaky(State(c): State<Counters>) -> impl IntoResponse {
    let n = c.flaky.fetch_add(1, Ordering::Relaxed);
    if n % 3 == 2 {
        (StatusCode::OK, Json(json!({ "ok": true, "attempt": n }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable").into_response()
    }
}

/// Always fails with 500 (never retried; trips the breaker).
async fn fail() -> impl IntoResponse {
    (StatusCode::INTERNAL_SERVER_ERROR, "broken")
}

/// Answers after `ms` milliseconds (default 2000).
async fn slow(Query(q): Query<HashMap<String, u64>>) -> Json<Value> {
    let ms = q.get("ms").copied().unwrap_or(2000).min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "slept_ms": ms }))
}

async fn echo(body: axum::body::Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}
