//! What a body is, from its headers.

use http::{HeaderMap, header};

/// The kind of a body, from its `Content-Type`: it decides how a layer that
/// inspects bodies reads it (whole, event by event, line by line, as a text
/// stream, or not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MediaKind {
    /// `application/json` or `*/*+json`.
    Json,
    /// `text/event-stream`: server-sent events.
    EventStream,
    /// `application/x-ndjson`, `application/jsonl`, `application/json-seq`
    /// and their aliases: one JSON document a line.
    NdJson,
    /// Any other type that is not known to be binary (`text/*`, XML, forms …).
    Text,
    /// Images, audio, video, fonts, archives, protobuf, gRPC and other binary
    /// types.
    Binary,
    /// No (readable) `Content-Type`.
    Unknown,
}

impl MediaKind {
    /// The kind named by these headers.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
    /// use palisade_core::body::media::MediaKind;
    ///
    /// let mut h = HeaderMap::new();
    /// h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    /// assert_eq!(MediaKind::of(&h), MediaKind::EventStream);
    /// h.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    /// assert_eq!(MediaKind::of(&h), MediaKind::Json);
    /// h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
    /// assert_eq!(MediaKind::of(&h), MediaKind::Binary);
    /// ```
    #[must_use]
    pub fn of(headers: &HeaderMap) -> Self {
        match headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            Some(ct) => Self::of_content_type(ct),
            None => MediaKind::Unknown,
        }
    }

    /// The kind of one `Content-Type` value.
    #[must_use]
    pub fn of_content_type(ct: &str) -> Self {
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some((top, sub)) = essence.split_once('/') else {
            return MediaKind::Unknown;
        };
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if ["image", "audio", "video", "font"]
            .iter()
            .any(|t| eq(top, t))
        {
            return MediaKind::Binary;
        }
        if eq(top, "text") && eq(sub, "event-stream") {
            return MediaKind::EventStream;
        }
        if [
            "x-ndjson",
            "ndjson",
            "jsonl",
            "x-jsonlines",
            "jsonlines",
            "json-seq",
        ]
        .iter()
        .any(|s| eq(sub, s))
        {
            return MediaKind::NdJson;
        }
        if eq(sub, "json") || (sub.len() > 5 && eq(&sub[sub.len() - 5..], "+json")) {
            return MediaKind::Json;
        }
        let binary = [
            "octet-stream",
            "pdf",
            "zip",
            "gzip",
            "x-gzip",
            "x-tar",
            "zstd",
            "wasm",
            "protobuf",
            "x-protobuf",
            "vnd.google.protobuf",
            "msgpack",
            "x-msgpack",
            "cbor",
        ]
        .iter()
        .any(|s| eq(sub, s))
            || (sub.len() >= 4 && eq(&sub[..4], "grpc"));
        if binary {
            MediaKind::Binary
        } else {
            MediaKind::Text
        }
    }

    /// Whether the body is a stream of units a layer inspects one by one
    /// (server-sent events or NDJSON).
    #[must_use]
    pub fn is_framed_stream(self) -> bool {
        matches!(self, MediaKind::EventStream | MediaKind::NdJson)
    }
}

/// The `Content-Length` these headers declare, if valid.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::CONTENT_LENGTH};
/// let mut h = HeaderMap::new();
/// assert_eq!(palisade_core::body::media::content_length(&h), None);
/// h.insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
/// assert_eq!(palisade_core::body::media::content_length(&h), Some(42));
/// ```
#[must_use]
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        use MediaKind::*;
        for (ct, kind) in [
            ("application/json; charset=utf-8", Json),
            ("application/problem+json", Json),
            ("APPLICATION/JSON", Json),
            ("text/plain", Text),
            ("text/event-stream", EventStream),
            ("application/x-ndjson", NdJson),
            ("application/jsonl", NdJson),
            ("application/xml", Text),
            ("image/png", Binary),
            ("application/grpc+proto", Binary),
            ("application/grpc", Binary),
            ("application/octet-stream", Binary),
            ("nonsense", Unknown),
        ] {
            assert_eq!(MediaKind::of_content_type(ct), kind, "{ct}");
        }
        assert_eq!(MediaKind::of(&HeaderMap::new()), Unknown);
    }
}
