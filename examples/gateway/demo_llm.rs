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

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// What the demo model always answers (twelve words).
pub const ANSWER: &str =
    "Palisade reserved tokens for this answer before the model saw the prompt.";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
pub async fn chat_completions(body: Bytes) -> Response {
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
    let take = cap.map_or(all.len(), |c| all.len().min(c as usize));
    let words = &all[..take];
    let finish = if take < all.len() { "length" } else { "stop" };
    let completion_tokens = words.len() as u64;
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
        return axum::Json(body).into_response();
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
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_has_twelve_words() {
        assert_eq!(ANSWER.split(' ').count(), 12);
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
