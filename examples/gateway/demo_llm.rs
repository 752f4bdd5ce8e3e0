//! The demo upstream's chat model: `POST /v1/chat/completions` speaking
//! OpenAI's Chat Completions wire format, whole (`chat.completion`) or
//! streamed (`chat.completion.chunk` server-sent events ending with
//! `data: [DONE]`, the usage chunk first when `stream_options.include_usage`
//! is set), so token budgets can be shown and tested with any OpenAI client.
//!
//! Its usage figures are deterministic: the prompt costs one token per
//! whitespace-separated word of the messages' text, and the answer one token
//! per word it sends (one word per streamed chunk). The answer is
//! [`ANSWER`], cut at the request's `max_completion_tokens` / `max_tokens`
//! (then `finish_reason` is `length`).
//!
//! Like OpenAI, it keeps a budget per API key (the `Authorization` header)
//! and says on every answer what is left of it: `x-ratelimit-limit-*`,
//! `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` (Go-style durations)
//! for `requests` and `tokens`. The budget is a fixed window:
//! `PALISADE_DEMO_LLM_TOKENS` tokens (default 1 000 000) and
//! `PALISADE_DEMO_LLM_REQUESTS` requests (default 10 000) per
//! `PALISADE_DEMO_LLM_WINDOW` seconds (default 60), starting at the key's
//! first call. A call that may use more tokens than are left (its prompt
//! plus its output cap, twelve without one) or comes when no request is
//! left is answered 429 with `Retry-After` (whole seconds to the window's
//! end) and OpenAI's `rate_limit_exceeded` error, and charged nothing; an
//! answered call is charged its usage.

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// What the demo model always answers (twelve words).
pub const ANSWER: &str =
    "Palisade reserved tokens for this answer before the model saw the prompt.";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The demo budget's size, from the environment (read once).
#[derive(Clone, Copy, Debug)]
struct Limits {
    tokens: u64,
    requests: u64,
    window: Duration,
}

fn limits() -> Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    *LIMITS.get_or_init(|| {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Limits {
            tokens: var("PALISADE_DEMO_LLM_TOKENS", 1_000_000),
            requests: var("PALISADE_DEMO_LLM_REQUESTS", 10_000),
            window: Duration::from_secs(var("PALISADE_DEMO_LLM_WINDOW", 60).max(1)),
        }
    })
}

/// One API key's window: when it started, what was used.
#[derive(Clone, Copy, Debug)]
struct Used {
    since: Instant,
    tokens: u64,
    requests: u64,
}

fn budgets() -> &'static Mutex<HashMap<String, Used>> {
    static BUDGETS: OnceLock<Mutex<HashMap<String, Used>>> = OnceLock::new();
    BUDGETS.get_or_init(Default::default)
}

/// `d` as a Go duration, as OpenAI writes its resets: `59.5s`, `1m0s`,
/// `20ms`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, s, frac) = (ms / 60_000, ms % 60_000 / 1000, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    if m == 0 { secs } else { format!("{m}m{secs}") }
}

/// OpenAI's rate-limit headers for `used` of `limits`, `reset` before the
/// window ends.
fn ratelimit_headers(limits: Limits, used: Used, reset: Duration) -> Vec<(&'static str, String)> {
    let reset = go_duration(reset);
    vec![
        ("x-ratelimit-limit-requests", limits.requests.to_string()),
        ("x-ratelimit-limit-tokens", limits.tokens.to_string()),
        (
            "x-ratelimit-remaining-requests",
            limits.requests.saturating_sub(used.requests).to_string(),
        ),
        (
            "x-ratelimit-remaining-tokens",
            limits.tokens.saturating_sub(used.tokens).to_string(),
        ),
        ("x-ratelimit-reset-requests", reset.clone()),
        ("x-ratelimit-reset-tokens", reset),
    ]
}

/// Admits a call of at most `estimate` tokens on `key`'s budget (a request
/// is counted), or answers OpenAI's 429.
fn admit(key: &str, estimate: u64) -> Result<(), Box<Response>> {
    let limits = limits();
    let now = Instant::now();
    let mut all = budgets().lock().unwrap_or_else(|p| p.into_inner());
    let used = all.entry(key.to_owned()).or_insert(Used {
        since: now,
        tokens: 0,
        requests: 0,
    });
    if now.duration_since(used.since) >= limits.window {
        *used = Used {
            since: now,
            tokens: 0,
            requests: 0,
        };
    }
    let reset = limits.window - now.duration_since(used.since);
    let (kind, spent) = if used.requests >= limits.requests {
        ("requests", true)
    } else {
        ("tokens", used.tokens + estimate > limits.tokens)
    };
    if !spent {
        used.requests += 1;
        return Ok(());
    }
    let message = format!(
        "Rate limit reached for palisade-demo on {kind} per window: Limit {}, Used {}, Requested {estimate}. Please try again in {}.",
        if kind == "tokens" {
            limits.tokens
        } else {
            limits.requests
        },
        if kind == "tokens" {
            used.tokens
        } else {
            used.requests
        },
        go_duration(reset),
    );
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": "rate_limit_exceeded" }
    });
    let mut res = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let retry = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    res.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry));
    for (name, value) in ratelimit_headers(limits, *used, reset) {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
    Err(Box::new(res))
}

/// Charges `tokens` to `key`'s budget; the headers to answer with.
fn charge(key: &str, tokens: u64) -> Vec<(&'static str, String)> {
    let limits = limits();
    let mut all = budgets().lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let used = all.entry(key.to_owned()).or_insert(Used {
        since: now,
        tokens: 0,
        requests: 1,
    });
    used.tokens += tokens;
    let reset = limits.window.saturating_sub(now.duration_since(used.since));
    ratelimit_headers(limits, *used, reset)
}

/// An OpenAI error object (`invalid_request_error`) with `status`.
fn invalid(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": null,
            "code": null,
        }
    });
    (status, axum::Json(body)).into_response()
}

/// Words of a message's `content`: a string, or an array of parts whose
/// `text` parts count.
fn content_words(content: &Value) -> u64 {
    match content {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| t.split_whitespace().count() as u64)
            .sum(),
        _ => 0,
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return invalid(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return invalid(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'messages'.",
        );
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("palisade-demo")
        .to_owned();
    let prompt_tokens: u64 = messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(content_words)
        .sum();
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64));
    let all: Vec<&str> = ANSWER.split(' ').collect();
    let api_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Err(refused) = admit(&api_key, prompt_tokens + cap.unwrap_or(all.len() as u64)) {
        return *refused;
    }
    let take = cap.map_or(all.len(), |c| all.len().min(c as usize));
    let words = &all[..take];
    let finish = if take < all.len() { "length" } else { "stop" };
    let completion_tokens = words.len() as u64;
    let quota = charge(&api_key, prompt_tokens + completion_tokens);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    });
    let id = format!(
        "chatcmpl-demo{:08}",
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": words.join(" "),
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_palisade_demo",
        });
        let mut res = axum::Json(body).into_response();
        add_headers(&mut res, quota);
        return res;
    }

    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    // Every chunk has the same id, created and model; with include_usage
    // every chunk but the last carries `"usage": null`.
    let chunk = |choices: Value, usage: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_palisade_demo",
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let delta = |delta: Value, finish: Value| json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]);
    let mut events = Vec::with_capacity(words.len() + 4);
    events.push(chunk(
        delta(
            json!({ "role": "assistant", "content": "", "refusal": null }),
            Value::Null,
        ),
        Value::Null,
    ));
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(chunk(
            delta(json!({ "content": text }), Value::Null),
            Value::Null,
        ));
    }
    events.push(chunk(delta(json!({}), json!(finish)), Value::Null));
    if include_usage {
        events.push(chunk(json!([]), usage));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    let mut res = (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    add_headers(&mut res, quota);
    res
}

fn add_headers(res: &mut Response, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_has_twelve_words() {
        assert_eq!(ANSWER.split(' ').count(), 12);
    }

    #[test]
    fn resets_are_go_durations() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(59_500)), "59.5s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
        for ms in [0u64, 1, 999, 1000, 59_999, 60_000, 3_599_999] {
            let d = Duration::from_millis(ms);
            assert_eq!(
                palisade::llm::quota::parse_go_duration(&go_duration(d)),
                Some(d)
            );
        }
    }

    #[test]
    fn words_of_string_and_part_contents() {
        assert_eq!(content_words(&json!("two  words")), 2);
        assert_eq!(
            content_words(&json!([{"type": "text", "text": "a b c"}, {"type": "image_url"}])),
            3
        );
    }
}
