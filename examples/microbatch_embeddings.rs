//! Micro-batching over HTTP: single-text embedding requests, merged into
//! one OpenAI-style `/v1/embeddings` call with many inputs, the answer split
//! back to each caller.
//!
//! It starts two servers on loopback: a stand-in for the provider (it
//! answers `/v1/embeddings` for any number of inputs and prints each call
//! it gets), and the front that clients call with one text each. The front
//! gathers calls into batches of 8 (or whatever has arrived after 30 s) and
//! sends each batch to the provider through a hyper-util client. Then eight
//! clients ask at once, and one call reaches the provider.
//!
//! Run with `cargo run --example microbatch_embeddings`.

use axum::{Json, Router, extract::State, routing::post};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use palisade::StackBuilder;
use palisade::microbatch::{MicroBatchError, MicroBatchLayer, batch_fn};
use serde_json::{Value, json};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tower::{Service, ServiceExt, util::BoxCloneSyncService};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The provider: one embedding per input (here: length, vowels, spaces),
/// in `data[i]` with its `index`, as OpenAI answers.
fn provider(calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/v1/embeddings",
        post(move |Json(body): Json<Value>| {
            let calls = calls.clone();
            async move {
                let inputs: Vec<String> = match &body["input"] {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                    _ => Vec::new(),
                };
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                println!("  [provider] call #{n}: /v1/embeddings with {} inputs", inputs.len());
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let vowels = text.chars().filter(|c| "aeiou".contains(*c)).count();
                        let spaces = text.chars().filter(|c| *c == ' ').count();
                        json!({"object": "embedding", "index": i,
                               "embedding": [text.len() as f32, vowels as f32, spaces as f32]})
                    })
                    .collect();
                Json(json!({"object": "list", "data": data, "model": body["model"],
                            "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}))
            }
        }),
    )
}

/// The service each single-text call goes through: batches of texts, one
/// provider call per batch, an embedding per caller.
type Embed = BoxCloneSyncService<String, Vec<f32>, MicroBatchError<Error, String>>;

fn embedder(provider_url: String) -> Embed {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // One provider call: POST the batch, read the whole answer.
    let call = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = client.request(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                return Err(Error::from(format!("provider answered {status}")));
            }
            Ok::<_, Error>(body)
        }
    });
    let batcher = batch_fn(
        // Many texts, one request.
        move |texts: Vec<String>| {
            let body = json!({"model": "text-embedding-3-small", "input": texts});
            Request::post(format!("{provider_url}/v1/embeddings"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("a valid request")
        },
        // One answer, many embeddings: `data[i].index` says whose.
        |body: Bytes, n: usize| {
            let mut out: Vec<Result<Vec<f32>, String>> = (0..n)
                .map(|i| Err(format!("no embedding for input {i}")))
                .collect();
            let Ok(answer) = serde_json::from_slice::<Value>(&body) else {
                return out;
            };
            for item in answer["data"].as_array().into_iter().flatten() {
                let index = item["index"].as_u64().unwrap_or(u64::MAX) as usize;
                if let (Some(slot), Some(values)) =
                    (out.get_mut(index), item["embedding"].as_array())
                {
                    *slot = Ok(values
                        .iter()
                        .filter_map(|v| v.as_f64().map(|f| f as f32))
                        .collect());
                }
            }
            out
        },
    );
    let svc = StackBuilder::new()
        .micro_batch(
            MicroBatchLayer::new(batcher)
                .max_batch_size(8)
                .max_wait(Duration::from_secs(30)),
        )
        .service(call);
    BoxCloneSyncService::new(svc)
}

/// The front: `POST /v1/embeddings` with one `input` text.
fn front(embed: Embed) -> Router {
    Router::new()
        .route(
            "/v1/embeddings",
            post(
                |State(embed): State<Embed>, Json(body): Json<Value>| async move {
                    let text = body["input"].as_str().unwrap_or_default().to_owned();
                    match embed.oneshot(text).await {
                        Ok(embedding) => (
                            http::StatusCode::OK,
                            Json(json!({"object": "list", "data": [
                            {"object": "embedding", "index": 0, "embedding": embedding}]})),
                        ),
                        Err(err) => {
                            let err: palisade::core::Error = match err {
                                MicroBatchError::Inner(e) => palisade::core::Error::new(
                                    palisade::core::ErrorKind::Upstream,
                                    format!("batch call failed: {e}"),
                                ),
                                other => palisade::core::Error::new(
                                    palisade::core::ErrorKind::Upstream,
                                    other.to_string(),
                                ),
                            };
                            (err.http_status(), Json(json!({"error": err.message()})))
                        }
                    }
                },
            ),
        )
        .with_state(embed)
}

async fn serve(app: Router) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let calls = Arc::new(AtomicUsize::new(0));
    let provider_url = serve(provider(calls.clone())).await?;
    let front_url = serve(front(embedder(provider_url))).await?;
    println!("front listening on {front_url}");

    let texts = [
        "hello world",
        "rust",
        "tower middleware",
        "an embedding",
        "batch me",
        "eight at once",
        "one call",
        "done",
    ];
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let asks = texts.iter().map(|text| {
        let (mut client, url) = (client.clone(), format!("{front_url}/v1/embeddings"));
        let body = json!({"model": "text-embedding-3-small", "input": text}).to_string();
        async move {
            let req = Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let res = client.call(req).await?;
            let answer: Value =
                serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
            Ok::<_, Error>(answer["data"][0]["embedding"].clone())
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    for (text, answer) in texts.iter().zip(answers) {
        println!("{text:?} -> {}", answer?);
    }
    println!(
        "{} single-text requests, {} provider call(s)",
        texts.len(),
        calls.load(Ordering::SeqCst)
    );
    Ok(())
}
