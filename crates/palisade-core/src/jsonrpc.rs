//! JSON-RPC awareness, for MCP traffic: over MCP's streamable HTTP every
//! call is `POST /mcp` with a JSON-RPC body, so the method and the tool it
//! calls are in the body, not the path. [`peek`] reads a bounded prefix of
//! a request body, learns the call ([`JsonRpcCall`], and the [`ToolName`]
//! of a `tools/call`) as request extensions, and passes the body on
//! untouched; a body that is not JSON-RPC (or too large to peek) passes with
//! nothing learned.
//!
//! # Example
//!
//! ```
//! use palisade_core::jsonrpc::{JsonRpcCall, ToolName, peek};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}"#;
//! let req = http::Request::post("/mcp").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
//! let req = peek(req, 64 * 1024).await;
//! let call = req.extensions().get::<JsonRpcCall>().unwrap();
//! assert_eq!((call.method(), call.id(), call.target()), ("tools/call", Some("7"), Some("search")));
//! assert_eq!(req.extensions().get::<ToolName>().unwrap().as_str(), "search");
//! // The body goes on as it came.
//! let bytes = http_body_util::BodyExt::collect(req.into_body()).await.unwrap().to_bytes();
//! assert_eq!(bytes, body);
//! # }
//! ```

use crate::BoxError;
use crate::body::{PalisadeBody, collect::Read, collect::read_bounded};
use bytes::Bytes;
use http::Request;
use http_body::Body;
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;

/// The tool a request calls: from an MCP `tools/call` body (see [`peek`]),
/// or set by an authentication / routing layer as a request extension. The
/// key of per-tool limits, breakers and caches.
///
/// ```
/// use palisade_core::jsonrpc::ToolName;
///
/// assert_eq!(ToolName::new("search").to_string(), "search");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ToolName(pub Arc<str>);

impl ToolName {
    /// A tool name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A JSON-RPC 2.0 request (or notification) learned from a body; a
/// request extension set by [`peek`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonRpcCall {
    method: Arc<str>,
    id: Option<Arc<str>>,
    target: Option<Arc<str>>,
    arguments: Option<Arc<str>>,
}

impl JsonRpcCall {
    /// Reads a JSON-RPC 2.0 request from `body`; `None` when it is not one
    /// (not JSON, no `"jsonrpc": "2.0"`, no string `method`, a batch).
    ///
    /// ```
    /// use palisade_core::jsonrpc::JsonRpcCall;
    ///
    /// let call = JsonRpcCall::parse(br#"{"jsonrpc":"2.0","id":"a-1","method":"resources/read","params":{"uri":"file:///x"}}"#).unwrap();
    /// assert_eq!((call.id(), call.target()), (Some("\"a-1\""), Some("file:///x")));
    /// assert!(JsonRpcCall::parse(br#"{"method":"x"}"#).is_none());
    /// ```
    pub fn parse(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            jsonrpc: &'a str,
            #[serde(borrow)]
            method: std::borrow::Cow<'a, str>,
            #[serde(default, borrow)]
            id: Option<&'a serde_json::value::RawValue>,
            #[serde(default)]
            params: Option<Params>,
        }
        #[derive(Deserialize)]
        struct Params {
            name: Option<String>,
            uri: Option<String>,
            #[serde(default)]
            arguments: Option<serde_json::Value>,
        }
        let raw: Raw<'_> = serde_json::from_slice(body).ok()?;
        if raw.jsonrpc != "2.0" {
            return None;
        }
        let mut arguments = None;
        let target = raw.params.and_then(|p| match &*raw.method {
            "tools/call" => {
                arguments = Some(crate::mcp::canonical_json(
                    p.arguments.as_ref().unwrap_or(&serde_json::Value::Null),
                ));
                p.name
            }
            "prompts/get" => p.name,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.uri,
            _ => None,
        });
        Some(Self {
            method: raw.method.into(),
            id: raw.id.map(|id| id.get().into()),
            target: target.map(Into::into),
            arguments: arguments.map(Into::into),
        })
    }

    /// The arguments of a `tools/call`, as canonical JSON (object keys
    /// sorted, no spaces; `null` when there are none): equal arguments
    /// give equal text, whatever order the client wrote them in.
    ///
    /// ```
    /// use palisade_core::jsonrpc::JsonRpcCall;
    ///
    /// let a = JsonRpcCall::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"b":[1, {"d":2,"c":3}],"a":"x"}}}"#).unwrap();
    /// assert_eq!(a.arguments(), Some(r#"{"a":"x","b":[1,{"c":3,"d":2}]}"#));
    /// ```
    pub fn arguments(&self) -> Option<&str> {
        self.arguments.as_deref()
    }

    /// The method (`tools/call`, `resources/read`, `initialize` …).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request id as JSON text (`7`, `"a-1"`); `None` for a
    /// notification.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// What the call is about: the tool of `tools/call`, the prompt of
    /// `prompts/get`, the resource URI of `resources/read`.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }
}

/// Learns the JSON-RPC call in `req`'s body (at most `limit` bytes are
/// read ahead) as [`JsonRpcCall`] and, for `tools/call`, [`ToolName`]
/// extensions, and returns the request with its body whole: read-ahead
/// bytes first, then the rest as it streams. A tool name set earlier (by
/// an authentication layer) is kept.
pub async fn peek<B>(req: Request<B>, limit: usize) -> Request<PalisadeBody<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let body = match read_bounded(body, limit).await {
        Read::Complete(collected) => {
            if let Some(call) = JsonRpcCall::parse(&collected.data) {
                if call.method() == "tools/call"
                    && let Some(tool) = call.target()
                    && parts.extensions.get::<ToolName>().is_none()
                {
                    parts.extensions.insert(ToolName::new(tool));
                }
                parts.extensions.insert(call);
            }
            PalisadeBody::from(collected)
        }
        Read::Over { prefix, rest } => PalisadeBody::resumed_pinned(prefix, rest),
        Read::Failed { prefix, error } => PalisadeBody::failed(prefix, error),
    };
    Request::from_parts(parts, body)
}

/// What a JSON-RPC response says about the call it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonRpcReply {
    /// A `result` (for a tool call, one without `isError: true`).
    Result,
    /// A tool call whose `result` says `isError: true`: the tool ran and
    /// failed.
    ToolError,
    /// A JSON-RPC `error` object, with its code.
    Error {
        /// The error's `code`.
        code: i64,
    },
}

impl JsonRpcReply {
    /// Reads one JSON-RPC message; `None` when it is not a JSON-RPC 2.0
    /// response (not JSON, a request or notification, no `result` and no
    /// `error`). A batch is judged by its worst reply.
    ///
    /// ```
    /// use palisade_core::jsonrpc::JsonRpcReply;
    ///
    /// let ok = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#;
    /// let tool = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#;
    /// let rpc = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"internal"}}"#;
    /// assert_eq!(JsonRpcReply::parse(ok), Some(JsonRpcReply::Result));
    /// assert_eq!(JsonRpcReply::parse(tool), Some(JsonRpcReply::ToolError));
    /// assert_eq!(JsonRpcReply::parse(rpc), Some(JsonRpcReply::Error { code: -32603 }));
    /// assert_eq!(JsonRpcReply::parse(br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#), None);
    /// ```
    #[must_use]
    pub fn parse(message: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            jsonrpc: std::borrow::Cow<'a, str>,
            #[serde(default)]
            method: Option<serde::de::IgnoredAny>,
            #[serde(default, borrow)]
            result: Option<&'a serde_json::value::RawValue>,
            #[serde(default)]
            error: Option<RawError>,
        }
        #[derive(Deserialize)]
        struct RawError {
            #[serde(default)]
            code: i64,
        }
        #[derive(Deserialize)]
        struct ToolResult {
            #[serde(default, rename = "isError")]
            is_error: bool,
        }
        fn one(raw: Raw<'_>) -> Option<JsonRpcReply> {
            if raw.jsonrpc != "2.0" || raw.method.is_some() {
                return None;
            }
            if let Some(error) = raw.error {
                return Some(JsonRpcReply::Error { code: error.code });
            }
            let result = raw.result?;
            let tool_error =
                serde_json::from_str::<ToolResult>(result.get()).is_ok_and(|r| r.is_error);
            Some(if tool_error {
                JsonRpcReply::ToolError
            } else {
                JsonRpcReply::Result
            })
        }
        let start = message.iter().position(|b| !b.is_ascii_whitespace())?;
        if message[start] == b'[' {
            let batch: Vec<Raw<'_>> = serde_json::from_slice(message).ok()?;
            batch.into_iter().filter_map(one).max_by_key(|r| match r {
                JsonRpcReply::Result => 0,
                JsonRpcReply::ToolError => 1,
                JsonRpcReply::Error { .. } => 2,
            })
        } else {
            one(serde_json::from_slice(message).ok()?)
        }
    }

    /// Whether the error blames the caller (parse error, invalid request,
    /// unknown method, invalid params: codes -32700 and -32600 to -32602),
    /// like an HTTP 4xx: the callee is not unhealthy for it.
    #[must_use]
    pub fn is_caller_fault(self) -> bool {
        matches!(
            self,
            JsonRpcReply::Error {
                code: -32700 | -32602..=-32600
            }
        )
    }
}

/// Finds the JSON-RPC reply in a response body as it streams, without
/// holding the stream back: a JSON body is kept (by reference, up to a
/// limit) and read at its end; a server-sent event stream is read event by
/// event, and the reply is known as soon as the event carrying it is
/// complete (an MCP server may send progress notifications first).
///
/// ```
/// use palisade_core::jsonrpc::{JsonRpcReply, ReplyScan};
///
/// let mut sse = ReplyScan::events(1 << 20);
/// assert_eq!(sse.push(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"), None);
/// assert_eq!(sse.push(b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"isError\":true}}\n\n"), Some(JsonRpcReply::ToolError));
///
/// let mut json = ReplyScan::json(1 << 20);
/// assert_eq!(json.push(br#"{"jsonrpc":"2.0","id":3,"#), None);
/// assert_eq!(json.push(br#""error":{"code":-32000,"message":"down"}}"#), None);
/// assert_eq!(json.finish(), Some(JsonRpcReply::Error { code: -32000 }));
/// ```
#[derive(Debug)]
pub struct ReplyScan {
    splitter: Option<crate::body::framing::Splitter>,
    held: bytes::BytesMut,
    limit: usize,
    /// Over the limit: nothing more is read.
    gave_up: bool,
}

impl ReplyScan {
    /// A scan of one JSON document of at most `limit` bytes (a larger one
    /// is not judged).
    #[must_use]
    pub fn json(limit: usize) -> Self {
        Self {
            splitter: None,
            held: bytes::BytesMut::new(),
            limit,
            gave_up: false,
        }
    }

    /// A scan of a server-sent event stream whose events are at most
    /// `limit` bytes each.
    #[must_use]
    pub fn events(limit: usize) -> Self {
        Self {
            splitter: Some(crate::body::framing::Splitter::new(
                crate::body::framing::Framing::Events,
            )),
            held: bytes::BytesMut::new(),
            limit,
            gave_up: false,
        }
    }

    /// The scan for a response with these headers: JSON or server-sent
    /// events; `None` for any other body.
    #[must_use]
    pub fn for_response(headers: &http::HeaderMap, limit: usize) -> Option<Self> {
        use crate::body::media::MediaKind;
        match MediaKind::of(headers) {
            MediaKind::Json => Some(Self::json(limit)),
            MediaKind::EventStream => Some(Self::events(limit)),
            _ => None,
        }
    }

    /// Reads the next bytes of the body; `Some` once the reply is known
    /// (server-sent events only: a JSON document is judged by
    /// [`finish`](Self::finish)).
    pub fn push(&mut self, data: &[u8]) -> Option<JsonRpcReply> {
        self.push_inner(data)
    }

    /// [`push`](Self::push), with the reply's message (the JSON text of the
    /// event's data) once it is known.
    ///
    /// ```
    /// use palisade_core::jsonrpc::{JsonRpcReply, ReplyScan};
    ///
    /// let mut sse = ReplyScan::events(1 << 20);
    /// let (reply, message) = sse.push_message(b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n").unwrap();
    /// assert_eq!((reply, &message[..]), (JsonRpcReply::Result, &br#"{"jsonrpc":"2.0","id":3,"result":{}}"#[..]));
    /// ```
    pub fn push_message(&mut self, data: &[u8]) -> Option<(JsonRpcReply, Bytes)> {
        let reply = self.push_inner(data)?;
        Some((reply, Bytes::copy_from_slice(&self.held)))
    }

    /// [`finish`](Self::finish), with the reply's message.
    #[must_use]
    pub fn finish_message(mut self) -> Option<(JsonRpcReply, Bytes)> {
        let reply = self.finish_inner()?;
        Some((reply, std::mem::take(&mut self.held).freeze()))
    }

    fn push_inner(&mut self, data: &[u8]) -> Option<JsonRpcReply> {
        if self.gave_up {
            return None;
        }
        let Some(splitter) = &mut self.splitter else {
            if self.held.len() + data.len() > self.limit {
                self.give_up();
            } else {
                self.held.extend_from_slice(data);
            }
            return None;
        };
        splitter.push(data);
        while let Some(event) = splitter.next_unit() {
            if let Some(reply) = event_reply(&event, &mut self.held) {
                return Some(reply);
            }
        }
        if splitter.pending() > self.limit {
            self.give_up();
        }
        None
    }

    /// The reply, at the end of the body.
    #[must_use]
    pub fn finish(mut self) -> Option<JsonRpcReply> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Option<JsonRpcReply> {
        if self.gave_up {
            return None;
        }
        match &mut self.splitter {
            None => JsonRpcReply::parse(&self.held),
            Some(splitter) => {
                let rest = splitter.take_pending();
                event_reply(&rest, &mut self.held)
            }
        }
    }

    fn give_up(&mut self) {
        self.gave_up = true;
        self.held = bytes::BytesMut::new();
        self.splitter = None;
    }
}

/// The reply carried by one server-sent event (its `data:` lines joined
/// by newlines, as the event-stream format says), if any.
fn event_reply(event: &[u8], data: &mut bytes::BytesMut) -> Option<JsonRpcReply> {
    data.clear();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.extend_from_slice(b"\n");
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    JsonRpcReply::parse(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[test]
    fn only_json_rpc_2_requests_are_read() {
        for not in [
            &b"not json"[..],
            br#"{"jsonrpc":"1.0","method":"x"}"#,
            br#"{"jsonrpc":"2.0","method":7}"#,
            br#"[{"jsonrpc":"2.0","method":"tools/call"}]"#,
            br#"{"jsonrpc":"2.0"}"#,
        ] {
            assert_eq!(
                JsonRpcCall::parse(not),
                None,
                "{}",
                String::from_utf8_lossy(not)
            );
        }
        let note = JsonRpcCall::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .unwrap();
        assert_eq!(
            (note.method(), note.id(), note.target()),
            ("notifications/initialized", None, None)
        );
        let escaped = JsonRpcCall::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"se\u0061rch"}}"#,
        )
        .unwrap();
        assert_eq!(
            (escaped.method(), escaped.target()),
            ("tools/call", Some("search"))
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_passes_whole_with_nothing_learned() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"x":"{}"}}}}}}"#,
            "a".repeat(10_000)
        );
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = big
            .as_bytes()
            .chunks(1000)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let req = Request::new(StreamBody::new(futures_util::stream::iter(chunks)));
        let req = peek(req, 4096).await;
        assert!(req.extensions().get::<JsonRpcCall>().is_none());
        assert!(req.extensions().get::<ToolName>().is_none());
        let out = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(out, big.as_bytes());
    }

    #[tokio::test]
    async fn a_tool_name_set_earlier_is_kept() {
        let mut req = Request::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"from-body"}}"#,
        )));
        req.extensions_mut().insert(ToolName::new("from-auth"));
        let req = peek(req, 4096).await;
        assert_eq!(
            req.extensions().get::<ToolName>().unwrap().as_str(),
            "from-auth"
        );
        assert_eq!(
            req.extensions().get::<JsonRpcCall>().unwrap().target(),
            Some("from-body")
        );
    }

    #[test]
    fn replies_are_found_in_any_chunking() {
        let stream = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\n: ping\n\nid: 9\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\n\
data: \"error\":{\"code\":-32001,\"message\":\"x\"}}\n\n";
        for size in 1..stream.len() {
            let mut scan = ReplyScan::events(4096);
            let mut found = None;
            for chunk in stream.as_bytes().chunks(size) {
                if let Some(r) = scan.push(chunk) {
                    found = Some(r);
                    break;
                }
            }
            assert_eq!(
                found,
                Some(JsonRpcReply::Error { code: -32001 }),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn oversize_bodies_and_non_replies_are_not_judged() {
        let mut json = ReplyScan::json(8);
        assert_eq!(
            json.push(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#),
            None
        );
        assert_eq!(json.finish(), None);
        let mut sse = ReplyScan::events(16);
        assert_eq!(sse.push(&[b'x'; 64]), None);
        assert_eq!(
            sse.push(b"\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"),
            None
        );
        let mut request = ReplyScan::json(1024);
        let _ = request.push(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        assert_eq!(request.finish(), None);
        assert_eq!(JsonRpcReply::parse(br#"{"id":1,"result":{}}"#), None);
        assert_eq!(
            JsonRpcReply::parse(br#"{"jsonrpc":"2.0","id":1,"result":7}"#),
            Some(JsonRpcReply::Result)
        );
        let batch = br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"result":{"isError":true}}]"#;
        assert_eq!(JsonRpcReply::parse(batch), Some(JsonRpcReply::ToolError));
    }

    #[test]
    fn caller_faults_are_the_protocol_codes() {
        for code in [-32700, -32600, -32601, -32602] {
            assert!(JsonRpcReply::Error { code }.is_caller_fault(), "{code}");
        }
        for code in [-32603, -32000, -32099, 1] {
            assert!(!JsonRpcReply::Error { code }.is_caller_fault(), "{code}");
        }
        assert!(!JsonRpcReply::ToolError.is_caller_fault());
    }
}
