//! MCP tools: what a server says about them, and what layers need to act on
//! it. The pieces every layer shares, so no layer depends on another:
//!
//! - [`ToolAnnotations`]: a tool's `readOnlyHint`, `idempotentHint` and
//!   `destructiveHint`, read from `tools/list` replies ([`tools_in_list`]).
//! - [`ToolFacts`]: a request extension a gateway sets on a `tools/call`
//!   from what it learned (and what its configuration says): the retry
//!   layer reads [`Idempotency`](crate::Idempotency), a tool-result cache
//!   reads the TTL.
//! - [`canonical_json`] (the key of a cached result) and [`with_id`] (a
//!   cached reply answering a new request).
//! - [`ReplyTap`]: a response body passed on untouched, with the JSON-RPC
//!   reply it carries handed to a callback once it is complete (JSON or
//!   server-sent events).
//!
//! Annotations are hints from the server: a gateway trusts the upstream it
//! fronts, and its configuration can override them per tool.
//!
//! # Example
//!
//! ```
//! use palisade_core::mcp::{ToolAnnotations, tools_in_list};
//!
//! let reply = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[
//!     {"name":"search","inputSchema":{},"annotations":{"readOnlyHint":true}},
//!     {"name":"delete","inputSchema":{},"annotations":{"destructiveHint":true}},
//!     {"name":"plain","inputSchema":{}}]}}"#;
//! let tools = tools_in_list(reply).unwrap();
//! assert_eq!(tools[0].0, "search");
//! assert!(tools[0].1.is_read_only() && tools[0].1.is_retry_safe());
//! assert!(!tools[1].1.is_retry_safe());
//! // No annotations: MCP's defaults (not read-only, destructive).
//! assert_eq!(tools[2].1, ToolAnnotations::default());
//! assert!(tools[2].1.is_destructive());
//! ```

use crate::jsonrpc::{JsonRpcReply, ReplyScan};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// What a server says about a tool (MCP's `ToolAnnotations` hints); a field
/// the server left out is `None` and reads as MCP's default: not read-only,
/// not idempotent, destructive.
///
/// ```
/// use palisade_core::mcp::ToolAnnotations;
///
/// let learned = ToolAnnotations { read_only: Some(false), ..Default::default() };
/// let config = ToolAnnotations { read_only: Some(true), ..Default::default() };
/// assert!(learned.overridden_by(&config).is_read_only());
/// assert!(ToolAnnotations { idempotent: Some(true), destructive: Some(true), ..Default::default() }.is_retry_safe());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolAnnotations {
    /// `readOnlyHint`: the tool does not change its environment.
    #[serde(
        rename = "readOnlyHint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only: Option<bool>,
    /// `idempotentHint`: calling it again with the same arguments has no
    /// further effect.
    #[serde(
        rename = "idempotentHint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub idempotent: Option<bool>,
    /// `destructiveHint`: it may delete or overwrite.
    #[serde(
        rename = "destructiveHint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub destructive: Option<bool>,
}

impl ToolAnnotations {
    /// Read-only: may be retried and its results cached.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.read_only == Some(true)
    }

    /// May be called again: read-only or idempotent.
    #[must_use]
    pub fn is_retry_safe(&self) -> bool {
        self.is_read_only() || self.idempotent == Some(true)
    }

    /// Destructive (MCP's default for a tool that is not read-only).
    #[must_use]
    pub fn is_destructive(&self) -> bool {
        !self.is_read_only() && self.destructive != Some(false)
    }

    /// These annotations with every field `over` sets replacing this one's.
    #[must_use]
    pub fn overridden_by(&self, over: &ToolAnnotations) -> Self {
        Self {
            read_only: over.read_only.or(self.read_only),
            idempotent: over.idempotent.or(self.idempotent),
            destructive: over.destructive.or(self.destructive),
        }
    }
}

/// The tools (name and annotations) of a `tools/list` reply; `None` when
/// `message` is not a JSON-RPC result listing tools. A tool without
/// annotations gets [`ToolAnnotations::default`].
pub fn tools_in_list(message: &[u8]) -> Option<Vec<(String, ToolAnnotations)>> {
    #[derive(Deserialize)]
    struct Reply {
        result: Listed,
    }
    #[derive(Deserialize)]
    struct Listed {
        tools: Vec<Tool>,
    }
    #[derive(Deserialize)]
    struct Tool {
        name: String,
        #[serde(default)]
        annotations: Option<ToolAnnotations>,
    }
    let reply: Reply = serde_json::from_slice(message).ok()?;
    Some(
        reply
            .result
            .tools
            .into_iter()
            .map(|t| (t.name, t.annotations.unwrap_or_default()))
            .collect(),
    )
}

/// What a gateway knows about the tool a `tools/call` calls: a request
/// extension (set next to [`ToolName`](crate::jsonrpc::ToolName)) that
/// layers act on without knowing where it came from.
///
/// ```
/// use palisade_core::mcp::{ToolAnnotations, ToolFacts};
/// use std::time::Duration;
///
/// let facts = ToolFacts::new(ToolAnnotations { read_only: Some(true), ..Default::default() })
///     .cache_ttl(Duration::from_secs(60));
/// assert_eq!(facts.cacheable_for(), Some(Duration::from_secs(60)));
/// let destructive = ToolFacts::new(ToolAnnotations::default()).cache_ttl(Duration::from_secs(60));
/// assert_eq!(destructive.cacheable_for(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolFacts {
    /// The annotations (learned, then overridden by configuration).
    pub annotations: ToolAnnotations,
    /// How long a result may be cached (zero: never); only read-only tools'
    /// results are.
    pub cache_ttl: Duration,
    /// The most tokens a result may take on its way to the client (`None`:
    /// no limit); a larger one is cut to fit.
    pub output_budget: Option<u64>,
}

impl ToolFacts {
    /// Facts with these annotations, never cached.
    #[must_use]
    pub fn new(annotations: ToolAnnotations) -> Self {
        Self {
            annotations,
            cache_ttl: Duration::ZERO,
            output_budget: None,
        }
    }

    /// Sets the token budget of a result.
    #[must_use]
    pub fn output_budget(mut self, tokens: Option<u64>) -> Self {
        self.output_budget = tokens;
        self
    }

    /// Sets the TTL of cached results.
    #[must_use]
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a result of this tool may be cached: `None` unless the tool
    /// is read-only and the TTL is not zero.
    #[must_use]
    pub fn cacheable_for(&self) -> Option<Duration> {
        (self.annotations.is_read_only() && !self.cache_ttl.is_zero()).then_some(self.cache_ttl)
    }

    /// What the retry layer may assume of a call of this tool.
    #[must_use]
    pub fn idempotency(&self) -> crate::Idempotency {
        if self.annotations.is_retry_safe() {
            crate::Idempotency::Idempotent
        } else {
            crate::Idempotency::NotIdempotent
        }
    }
}

/// `value` as canonical JSON: object keys sorted (by their UTF-8 bytes), no
/// spaces, numbers and strings as serde_json writes them.
///
/// ```
/// let v: serde_json::Value = serde_json::from_str(r#"{ "z": 1, "a": { "y": [true, null], "b": "é" } }"#).unwrap();
/// assert_eq!(palisade_core::mcp::canonical_json(&v), r#"{"a":{"b":"é","y":[true,null]},"z":1}"#);
/// ```
#[must_use]
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        use serde_json::Value;
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// A JSON-RPC reply `message` answering the request whose id is `id` (JSON
/// text, as [`JsonRpcCall::id`](crate::jsonrpc::JsonRpcCall::id) gives it);
/// `None` when `message` is not a JSON object or `id` is not JSON.
///
/// ```
/// let cached = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#;
/// let out = palisade_core::mcp::with_id(cached, r#""req-9""#).unwrap();
/// let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
/// assert_eq!(v["id"], "req-9");
/// assert_eq!(v["result"]["content"], serde_json::json!([]));
/// ```
#[must_use]
pub fn with_id(message: &[u8], id: &str) -> Option<Bytes> {
    let mut reply: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(message).ok()?;
    let id: serde_json::Value = serde_json::from_str(id).ok()?;
    reply.insert("id".to_owned(), id);
    serde_json::to_vec(&reply).ok().map(Bytes::from)
}

/// Called once with a body's JSON-RPC reply and its message (see
/// [`ReplyTap`]).
pub type OnReply = Box<dyn FnOnce(JsonRpcReply, Bytes) + Send>;

pin_project! {
    /// A response body passed on untouched and unheld, read by a
    /// [`ReplyScan`] as it streams: the callback gets the JSON-RPC reply and
    /// its message once it is complete (for a server-sent event stream, at
    /// the event carrying it; for JSON, at the end). A body that fails or
    /// is dropped first, or carries no reply, never calls it.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_core::jsonrpc::{JsonRpcReply, ReplyScan};
    /// use palisade_core::mcp::ReplyTap;
    /// use std::sync::{Arc, Mutex};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// let reply = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
    /// let body = ReplyTap::new(
    ///     Full::new(Bytes::from_static(reply.as_bytes())),
    ///     ReplyScan::events(1 << 20),
    ///     Box::new(move |kind, message| *s.lock().unwrap() = Some((kind, message))),
    /// );
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), reply);
    /// let (kind, message) = seen.lock().unwrap().take().unwrap();
    /// assert_eq!((kind, &message[..]), (JsonRpcReply::Result, &br#"{"jsonrpc":"2.0","id":1,"result":{}}"#[..]));
    /// # }
    /// ```
    pub struct ReplyTap<B> {
        #[pin]
        body: B,
        scan: Option<ReplyScan>,
        on_reply: Option<OnReply>,
    }
}

impl<B> ReplyTap<B> {
    /// Taps `body` with `scan` (for its media type: see
    /// [`ReplyScan::for_response`]).
    pub fn new(body: B, scan: ReplyScan, on_reply: OnReply) -> Self {
        Self {
            body,
            scan: Some(scan),
            on_reply: Some(on_reply),
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for ReplyTap<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyTap")
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ReplyTap<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(scan)) = (frame.data_ref(), this.scan.as_mut())
                    && let Some((reply, message)) = scan.push_message(data)
                {
                    *this.scan = None;
                    if let Some(f) = this.on_reply.take() {
                        f(reply, message);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(scan) = this.scan.take()
                    && let Some((reply, message)) = scan.finish_message()
                    && let Some(f) = this.on_reply.take()
                {
                    f(reply, message);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                *this.scan = None;
                *this.on_reply = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // The end must be polled for a JSON reply to be judged.
        self.scan.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_json_reply_is_tapped_at_its_end_in_any_chunking() {
        let reply = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","annotations":{"readOnlyHint":true}}]}}"#;
        for size in [1, 7, reply.len()] {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = reply
                .chunks(size)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let seen = Arc::new(Mutex::new(None));
            let s = seen.clone();
            let body = ReplyTap::new(
                StreamBody::new(futures_util::stream::iter(chunks)),
                ReplyScan::json(1 << 20),
                Box::new(move |kind, message| *s.lock().unwrap() = Some((kind, message))),
            );
            assert_eq!(body.collect().await.unwrap().to_bytes(), &reply[..]);
            let (kind, message) = seen.lock().unwrap().take().expect("tapped");
            assert_eq!(kind, JsonRpcReply::Result);
            let tools = tools_in_list(&message).unwrap();
            assert_eq!(tools.len(), 1);
            assert!(tools[0].1.is_read_only(), "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn a_failed_body_is_not_tapped() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            ))),
            Err(std::io::Error::other("reset")),
        ];
        let called = Arc::new(Mutex::new(false));
        let c = called.clone();
        let body = ReplyTap::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            ReplyScan::json(1 << 20),
            Box::new(move |_, _| *c.lock().unwrap() = true),
        );
        assert!(body.collect().await.is_err());
        assert!(!*called.lock().unwrap());
    }

    #[test]
    fn not_a_tool_list() {
        assert!(tools_in_list(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_none());
        assert!(tools_in_list(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#).is_none());
        assert!(tools_in_list(b"nope").is_none());
    }

    #[test]
    fn destructive_and_idempotent_defaults_follow_mcp() {
        let idem = ToolAnnotations {
            idempotent: Some(true),
            destructive: Some(false),
            ..Default::default()
        };
        assert!(idem.is_retry_safe() && !idem.is_destructive() && !idem.is_read_only());
        assert!(ToolAnnotations::default().is_destructive());
        assert!(!ToolAnnotations::default().is_retry_safe());
        let ro = ToolAnnotations {
            read_only: Some(true),
            destructive: Some(true),
            ..Default::default()
        };
        // readOnlyHint true makes destructiveHint meaningless (MCP).
        assert!(!ro.is_destructive());
        assert_eq!(
            ToolFacts::new(idem).idempotency(),
            crate::Idempotency::Idempotent
        );
        assert_eq!(
            ToolFacts::new(ToolAnnotations::default()).idempotency(),
            crate::Idempotency::NotIdempotent
        );
    }

    #[test]
    fn ids_are_rewritten_and_bad_input_refused() {
        assert!(with_id(b"[1]", "1").is_none());
        assert!(with_id(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, "not json").is_none());
        let out = with_id(br#"{"jsonrpc":"2.0","id":1,"result":{"x":1}}"#, "42").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 42);
    }
}
