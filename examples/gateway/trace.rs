//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): every
//! request reaches the upstream with a `traceparent` naming the gateway's
//! span as its parent.
//!
//! - no `traceparent`, or one that is not valid (a bad length, a separator
//!   missing, upper-case or non-hex digits, an all-zero id, version `ff`,
//!   two of them): a new trace — version `00`, a random 16-byte trace id, a
//!   random 8-byte parent id, flags `01` (sampled);
//! - a valid one: the same trace id and flags, a new parent id (the
//!   gateway's span). A later version is read by its version-00 fields and
//!   sent on as version 00.
//!
//! `tracestate` passes through as the client sent it. The trace id is a
//! field of the request's `tracing` span, so every log line the request
//! causes names it.

use axum::{body::Body, http::Request, http::Response};
use http::HeaderValue;
use tracing::Instrument;

const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`'s fields the gateway keeps.
#[derive(Debug, PartialEq, Eq)]
struct Incoming {
    trace_id: u128,
    flags: u8,
}

/// Sets the upstream's `traceparent` and runs the request in a span that
/// carries its trace id.
pub async fn traceparent(mut req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let mut values = req.headers().get_all(TRACEPARENT).iter();
    let incoming = match (values.next(), values.next()) {
        (Some(one), None) => parse(one),
        // None, or more than one (which to believe?): a new trace.
        _ => None,
    };
    let (trace_id, flags) = match incoming {
        Some(Incoming { trace_id, flags }) => (trace_id, flags),
        None => (new_trace_id(), 0x01),
    };
    let span_id = new_span_id();
    let value = format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}");
    req.headers_mut().insert(
        TRACEPARENT,
        HeaderValue::from_str(&value).expect("hex digits and dashes"),
    );
    // At ERROR level, so the span is on whatever the filter lets through
    // (`RUST_LOG=warn` included): its fields go on every line the request
    // logs. The formatter logs no line for the span itself.
    let span = tracing::error_span!(
        "request",
        trace_id = %format_args!("{trace_id:032x}"),
        span_id = %format_args!("{span_id:016x}"),
        method = %req.method(),
        path = %req.uri().path(),
    );
    next.run(req).instrument(span).await
}

/// A random trace id, never all zeros (which means "none").
fn new_trace_id() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

/// A random span id, never all zeros.
fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// Lower-case hex digits (the only case the header allows) as a number.
fn hex(s: &[u8]) -> Option<u128> {
    if s.is_empty()
        || !s
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// A valid `traceparent`'s trace id and flags (§3.2, and §3.3's rules
/// for versions after 00).
fn parse(value: &HeaderValue) -> Option<Incoming> {
    let v = value.as_bytes();
    let v = v.trim_ascii();
    // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2.
    if v.len() < 55 {
        return None;
    }
    let version = hex(&v[..2])?;
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 long; a later one may add fields after a dash.
    if (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let parent_id = hex(&v[36..52])?;
    let flags = u8::try_from(hex(&v[53..55])?).ok()?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    // A later version's flags may mean more than this one knows: only the
    // sampled bit is carried over.
    let flags = if version == 0 { flags } else { flags & 0x01 };
    Some(Incoming { trace_id, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Incoming> {
        parse(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn valid_and_invalid_traceparents() {
        let ok = p("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ok.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ok.flags, 1);
        // A later version with an extra field: its version-00 fields.
        let later = p("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what").unwrap();
        assert_eq!((later.trace_id, later.flags), (ok.trace_id, 1));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 is 55 long
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   // no trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   // no parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // version ff
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   // separator
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",   // not hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",    // short
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  // no dash after
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
