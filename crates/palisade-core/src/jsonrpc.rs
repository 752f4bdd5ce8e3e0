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
        }
        let raw: Raw<'_> = serde_json::from_slice(body).ok()?;
        if raw.jsonrpc != "2.0" {
            return None;
        }
        let target = raw.params.and_then(|p| match &*raw.method {
            "tools/call" | "prompts/get" => p.name,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.uri,
            _ => None,
        });
        Some(Self {
            method: raw.method.into(),
            id: raw.id.map(|id| id.get().into()),
            target: target.map(Into::into),
        })
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
}
