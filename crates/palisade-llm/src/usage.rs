//! What an LLM call costs: the admission estimate from the request body,
//! and the true usage from the response (whole JSON or a server-sent event
//! stream read event by event).
//!
//! Wire formats read:
//!
//! - **OpenAI Chat Completions**: `usage.prompt_tokens` /
//!   `usage.completion_tokens` in the JSON response; streamed, in the final
//!   chunk when the request set `stream_options.include_usage` (earlier
//!   chunks carry `"usage": null`).
//! - **OpenAI Responses**: `usage.input_tokens` / `usage.output_tokens` in
//!   the JSON response; streamed, in the `response.completed` (or
//!   `response.incomplete` / `response.failed`) event's `response.usage`.
//! - **Anthropic Messages**: `usage.input_tokens` / `usage.output_tokens`
//!   (plus `cache_creation_input_tokens` / `cache_read_input_tokens`, which
//!   are input too); streamed, `message_start`'s `message.usage` then each
//!   `message_delta`'s cumulative `usage`.
//!
//! # Example
//!
//! ```
//! use palisade_llm::usage::{Estimator, Usage, UsageScan};
//!
//! let request = br#"{"model":"gpt-4o","max_tokens":100,
//!     "messages":[{"role":"user","content":"Say hello in twelve words."}]}"#;
//! let estimate = Estimator::default().estimate(request);
//! assert_eq!((estimate.prompt, estimate.output), (7, 100)); // 26 chars / 4, rounded up
//!
//! let mut scan = UsageScan::events();
//! scan.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n");
//! scan.push(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12}}\n\ndata: [DONE]\n\n");
//! assert_eq!(scan.finish().usage, Some(Usage { input: 9, output: 12 }));
//! ```

use bytes::BytesMut;
use palisade_core::body::framing::{Framing, Splitter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens a call used.
///
/// ```
/// let u = palisade_llm::usage::Usage { input: 10, output: 5 };
/// assert_eq!(u.total(), 15);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Prompt / input tokens (cached input included).
    pub input: u64,
    /// Completion / output tokens.
    pub output: u64,
}

impl Usage {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Reads a `usage` object in any of the three formats.
fn usage_object(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    if let (Some(input), Some(output)) = (num(u, "prompt_tokens"), num(u, "completion_tokens")) {
        return Some(Usage { input, output });
    }
    let input = num(u, "input_tokens");
    let output = num(u, "output_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let cached = num(u, "cache_creation_input_tokens").unwrap_or(0)
        + num(u, "cache_read_input_tokens").unwrap_or(0);
    Some(Usage {
        input: input.unwrap_or(0) + cached,
        output: output.unwrap_or(0),
    })
}

/// The usage of a whole (non-streamed) JSON response of any of the three
/// APIs; `None` when it has none.
///
/// ```
/// use palisade_llm::usage::{Usage, from_json};
///
/// let openai = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[],
///     "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}"#;
/// assert_eq!(from_json(openai), Some(Usage { input: 19, output: 10 }));
/// assert_eq!(from_json(b"{}"), None);
/// ```
pub fn from_json(body: &[u8]) -> Option<Usage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("usage").and_then(usage_object)
}

/// Characters of generated text in one streamed event (for the estimate of
/// a stream cut before its usage arrived).
fn streamed_chars(v: &Value) -> usize {
    let str_len = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, |s| s.chars().count());
    // OpenAI Chat Completions chunk.
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        return choices
            .iter()
            .map(|c| {
                let d = c.get("delta");
                str_len(d.and_then(|d| d.get("content")))
                    + str_len(d.and_then(|d| d.get("reasoning_content")))
                    + d.and_then(|d| d.get("tool_calls"))
                        .and_then(Value::as_array)
                        .map_or(0, |calls| {
                            calls
                                .iter()
                                .map(|t| str_len(t.pointer("/function/arguments")))
                                .sum()
                        })
            })
            .sum();
    }
    match v.get("type").and_then(Value::as_str) {
        // OpenAI Responses.
        Some(t) if t.ends_with(".delta") && t.starts_with("response.") => str_len(v.get("delta")),
        // Anthropic Messages.
        Some("content_block_delta") => {
            let d = v.get("delta");
            str_len(d.and_then(|d| d.get("text")))
                + str_len(d.and_then(|d| d.get("partial_json")))
                + str_len(d.and_then(|d| d.get("thinking")))
        }
        _ => 0,
    }
}

/// What a response said about its cost, once read to its end (or as far as
/// it went).
///
/// ```
/// let end = palisade_llm::usage::UsageScan::json(1024).finish();
/// assert_eq!((end.usage, end.streamed_chars, end.final_usage), (None, 0, false));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanEnd {
    /// The usage the provider reported, if it did.
    pub usage: Option<Usage>,
    /// Characters of generated text seen (streams only; for a whole JSON
    /// response, its length).
    pub streamed_chars: u64,
    /// The usage is the final figure: a whole JSON body held it, or the
    /// stream sent the event that closes it (Chat Completions' usage chunk,
    /// `response.completed` / `.incomplete` / `.failed`, Anthropic's
    /// `message_stop`, or `[DONE]` after the usage). Such a usage stands
    /// even when the client goes away before the body's very end.
    pub final_usage: bool,
}

/// Reads a response's usage as its bytes go by, without holding them:
/// [`events`](UsageScan::events) for a server-sent event stream (one event
/// at a time), [`json`](UsageScan::json) for a whole JSON body (kept up to
/// a limit, parsed at the end).
///
/// ```
/// use palisade_llm::usage::{Usage, UsageScan};
///
/// // Anthropic Messages, streamed.
/// let mut scan = UsageScan::events();
/// scan.push(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
/// scan.push(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n");
/// assert_eq!(scan.finish().usage, Some(Usage { input: 25, output: 15 }));
/// ```
#[derive(Debug)]
pub struct UsageScan {
    kind: ScanKind,
    usage: Option<Usage>,
    chars: u64,
    closed: bool,
}

#[derive(Debug)]
enum ScanKind {
    Events(Splitter),
    Json {
        buf: BytesMut,
        limit: usize,
        over: bool,
    },
}

impl UsageScan {
    /// A scan of a server-sent event stream.
    pub fn events() -> Self {
        Self {
            kind: ScanKind::Events(Splitter::new(Framing::Events)),
            usage: None,
            chars: 0,
            closed: false,
        }
    }

    /// A scan of a whole JSON body of at most `limit` bytes (a larger one
    /// is counted, not parsed).
    pub fn json(limit: usize) -> Self {
        Self {
            kind: ScanKind::Json {
                buf: BytesMut::new(),
                limit,
                over: false,
            },
            usage: None,
            chars: 0,
            closed: false,
        }
    }

    /// The usage read so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Feeds bytes of the body.
    pub fn push(&mut self, data: &[u8]) {
        match &mut self.kind {
            ScanKind::Json { buf, limit, over } => {
                self.chars = self.chars.saturating_add(data.len() as u64);
                if !*over {
                    if buf.len() + data.len() > *limit {
                        *over = true;
                        *buf = BytesMut::new();
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
            }
            ScanKind::Events(splitter) => {
                splitter.push(data);
                while let Some(unit) = splitter.next_unit() {
                    Self::event(&mut self.usage, &mut self.chars, &mut self.closed, &unit);
                }
            }
        }
    }

    fn event(usage: &mut Option<Usage>, chars: &mut u64, closed: &mut bool, unit: &[u8]) {
        let Ok(text) = std::str::from_utf8(unit) else {
            return;
        };
        let mut data = String::new();
        for line in text.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if data == "[DONE]" {
            *closed |= usage.is_some();
            return;
        }
        if data.is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return;
        };
        *chars = chars.saturating_add(streamed_chars(&v) as u64);
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = v.pointer("/message/usage").and_then(usage_object) {
                    *usage = Some(u);
                }
            }
            Some("message_delta") => {
                // Cumulative; input counts are repeated only by newer APIs.
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    let mut cur = usage.unwrap_or_default();
                    if let Some(o) = num(u, "output_tokens") {
                        cur.output = o;
                    }
                    if num(u, "input_tokens").is_some()
                        && let Some(full) = usage_object(u)
                    {
                        cur.input = full.input;
                    }
                    *usage = Some(cur);
                }
            }
            Some("message_stop") => *closed |= usage.is_some(),
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                if let Some(u) = v.pointer("/response/usage").and_then(usage_object) {
                    *usage = Some(u);
                    *closed = true;
                }
            }
            _ => {
                // A Chat Completions chunk: the final one carries usage.
                if let Some(u) = v.get("usage").and_then(usage_object) {
                    *usage = Some(u);
                    *closed = true;
                }
            }
        }
    }

    /// Ends the scan.
    pub fn finish(mut self) -> ScanEnd {
        match &mut self.kind {
            ScanKind::Json { buf, over, .. } => {
                if !*over {
                    self.usage = from_json(buf);
                    // Parsed whole: nothing of it was missing.
                    self.closed = self.usage.is_some();
                }
            }
            ScanKind::Events(splitter) => {
                // A last event without its blank line still counts.
                let rest = splitter.take_pending();
                if !rest.is_empty() {
                    Self::event(&mut self.usage, &mut self.chars, &mut self.closed, &rest);
                }
            }
        }
        ScanEnd {
            usage: self.usage,
            streamed_chars: self.chars,
            final_usage: self.closed,
        }
    }
}

/// A request's cost as estimated at admission.
///
/// ```
/// let e = palisade_llm::usage::Estimate { prompt: 30, output: 200 };
/// assert_eq!(e.total(), 230);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Prompt tokens (characters / ratio).
    pub prompt: u64,
    /// The output cap the request asked for (or the default).
    pub output: u64,
}

impl Estimate {
    /// Prompt plus output.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }
}

/// How a request's cost is estimated before it is sent: prompt characters
/// divided by [`chars_per_token`](Estimator::chars_per_token), plus the
/// output cap it asks for (`max_tokens`, `max_completion_tokens`,
/// `max_output_tokens`, times `n` choices) or
/// [`default_output`](Estimator::default_output) when it names none.
///
/// ```
/// use palisade_llm::usage::Estimator;
///
/// let e: Estimator = serde_json::from_str(r#"{"chars_per_token": 3.0, "default_output": 512}"#).unwrap();
/// let body = br#"{"input":"abcdefghi","max_output_tokens":64}"#; // OpenAI Responses
/// assert_eq!(e.estimate(body).total(), 3 + 64);
/// assert_eq!(e.estimate(br#"{"messages":[]}"#).output, 512);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Estimator {
    /// Characters per token (default 4, OpenAI's rule of thumb for English).
    pub chars_per_token: f64,
    /// Output tokens reserved when the request names no cap (default 4096).
    pub default_output: u64,
}

impl Default for Estimator {
    fn default() -> Self {
        Self {
            chars_per_token: 4.0,
            default_output: 4096,
        }
    }
}

/// Request fields that hold prompt text.
const PROMPT_FIELDS: [&str; 7] = [
    "messages",
    "input",
    "system",
    "instructions",
    "prompt",
    "tools",
    "functions",
];

fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.iter().map(text_chars).sum(),
        Value::Object(o) => o
            .iter()
            // Structure, not text the model reads as prompt.
            .filter(|(k, _)| !matches!(k.as_str(), "role" | "type" | "id" | "tool_call_id"))
            .map(|(_, v)| text_chars(v))
            .sum(),
        _ => 0,
    }
}

impl Estimator {
    /// Checks the settings.
    ///
    /// # Errors
    /// A ratio that is not a positive finite number, named by its key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.chars_per_token.is_finite() && self.chars_per_token > 0.0) {
            return Err(format!(
                "chars_per_token must be a positive number, got {}",
                self.chars_per_token
            ));
        }
        Ok(())
    }

    /// Tokens for `chars` characters, rounded up.
    pub fn tokens_for_chars(&self, chars: u64) -> u64 {
        if chars == 0 {
            return 0;
        }
        let t = (chars as f64 / self.chars_per_token).ceil();
        if t >= u64::MAX as f64 {
            u64::MAX
        } else {
            t as u64
        }
    }

    /// The estimate of a request body. A body that is not JSON counts its
    /// bytes as prompt characters and reserves the default output.
    pub fn estimate(&self, body: &[u8]) -> Estimate {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Estimate {
                prompt: self.tokens_for_chars(body.len() as u64),
                output: self.default_output,
            };
        };
        let chars: usize = PROMPT_FIELDS
            .iter()
            .filter_map(|f| v.get(*f))
            .map(text_chars)
            .sum();
        let cap = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| num(&v, k))
            .unwrap_or(self.default_output);
        let n = num(&v, "n").unwrap_or(1).clamp(1, 128);
        Estimate {
            prompt: self.tokens_for_chars(chars as u64),
            output: cap.saturating_mul(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenAI Chat Completions, streamed with `include_usage`, as the API
    /// documents it (one chunk per event, the usage chunk with empty
    /// `choices` before `[DONE]`).
    const CHAT_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n",
        "data: [DONE]\n\n",
    );

    /// OpenAI Responses, streamed.
    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi there\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":48}}}\n\n",
    );

    /// Anthropic Messages, streamed (with a ping and CRLF line ends).
    const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n",
        "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
        "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello!\"}}\r\n\r\n",
        "event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
        "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
        "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
    );

    fn scan_in_pieces(stream: &str, piece: usize) -> ScanEnd {
        let mut scan = UsageScan::events();
        for chunk in stream.as_bytes().chunks(piece) {
            scan.push(chunk);
        }
        scan.finish()
    }

    #[test]
    fn chat_completions_stream_with_include_usage() {
        for piece in [1, 7, 64, 4096] {
            let end = scan_in_pieces(CHAT_STREAM, piece);
            assert_eq!(
                end.usage,
                Some(Usage {
                    input: 9,
                    output: 12
                }),
                "pieces of {piece}"
            );
            assert_eq!(end.streamed_chars, 5);
            assert!(end.final_usage, "pieces of {piece}");
        }
    }

    #[test]
    fn chat_completions_stream_without_usage_counts_text() {
        let no_usage: String = CHAT_STREAM
            .split("\n\n")
            .filter(|e| !e.contains("total_tokens"))
            .map(|e| format!("{e}\n\n"))
            .collect();
        let end = scan_in_pieces(&no_usage, 13);
        assert_eq!(end.usage, None);
        assert!(!end.final_usage, "[DONE] without a usage closes nothing");
        assert_eq!(end.streamed_chars, 5);
    }

    #[test]
    fn responses_stream() {
        let end = scan_in_pieces(RESPONSES_STREAM, 5);
        assert_eq!(
            end.usage,
            Some(Usage {
                input: 37,
                output: 11
            })
        );
        assert_eq!(end.streamed_chars, 8);
        assert!(end.final_usage);
    }

    #[test]
    fn anthropic_stream() {
        let end = scan_in_pieces(ANTHROPIC_STREAM, 3);
        assert_eq!(
            end.usage,
            Some(Usage {
                input: 30,
                output: 15
            })
        );
        assert_eq!(end.streamed_chars, 6);
        assert!(end.final_usage, "closed by message_stop");
        // Cut after message_start: the initial output count only, not final.
        let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: content_block_start").unwrap()];
        let end = scan_in_pieces(cut, 10);
        assert_eq!(
            end.usage,
            Some(Usage {
                input: 30,
                output: 1
            })
        );
        assert!(!end.final_usage);
        // Cut after message_delta, before message_stop: not final either.
        let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: message_stop").unwrap()];
        assert!(!scan_in_pieces(cut, 10).final_usage);
    }

    #[test]
    fn whole_json_responses() {
        let chat = br#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}"#;
        let responses = br#"{"id":"resp_67ccd2bed1ec8190b14f964abc054267","object":"response","created_at":1741476542,"status":"completed","output":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
        let anthropic = br#"{"content":[{"text":"Hi! My name is Claude.","type":"text"}],"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","model":"claude-sonnet-4-5","role":"assistant","stop_reason":"end_turn","stop_sequence":null,"type":"message","usage":{"input_tokens":2095,"output_tokens":503}}"#;
        for (body, want) in [
            (
                &chat[..],
                Usage {
                    input: 1117,
                    output: 46,
                },
            ),
            (
                &responses[..],
                Usage {
                    input: 36,
                    output: 87,
                },
            ),
            (
                &anthropic[..],
                Usage {
                    input: 2095,
                    output: 503,
                },
            ),
        ] {
            let mut scan = UsageScan::json(1 << 20);
            for c in body.chunks(100) {
                scan.push(c);
            }
            assert_eq!(scan.finish().usage, Some(want));
        }
        // Over the limit: counted, not parsed.
        let mut scan = UsageScan::json(10);
        scan.push(chat);
        let end = scan.finish();
        assert_eq!((end.usage, end.streamed_chars), (None, chat.len() as u64));
    }

    #[test]
    fn estimates() {
        let e = Estimator::default();
        // Chat with parts, a system message and n = 2.
        let body = br#"{"model":"m","n":2,"max_completion_tokens":50,"max_tokens":999,
            "messages":[{"role":"system","content":"12345678"},
                        {"role":"user","content":[{"type":"text","text":"abcd"}]}]}"#;
        assert_eq!(
            e.estimate(body),
            Estimate {
                prompt: 3,
                output: 100
            }
        );
        // Anthropic: top-level system, max_tokens.
        let body = br#"{"model":"claude","max_tokens":1024,"system":"abcd","messages":[{"role":"user","content":"efgh"}]}"#;
        assert_eq!(
            e.estimate(body),
            Estimate {
                prompt: 2,
                output: 1024
            }
        );
        // Not JSON: bytes, and the default cap.
        assert_eq!(
            e.estimate(b"hello there"),
            Estimate {
                prompt: 3,
                output: 4096
            }
        );
        assert!(
            Estimator {
                chars_per_token: 0.0,
                ..e
            }
            .validate()
            .is_err()
        );
        assert!(e.validate().is_ok());
    }
}
