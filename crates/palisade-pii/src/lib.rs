//! Single-pass PII masking for palisade (SPEC §5).
//!
//! - [`PiiMasker`]: the engine. Masks a `&str`, bytes, a
//!   [`serde_json::Value`] or serialized JSON, finding **every** pattern in
//!   one scan.
//! - [`PiiMaskLayer`]: a Tower layer that masks request and/or response
//!   bodies (JSON structurally, text as text, binary untouched), refusing
//!   (413) or streaming ([`StreamMasker`]) bodies over the buffering limit.
//!   Streams stay streams: server-sent events are masked event by event,
//!   NDJSON line by line, chunked text with an overlap window flushed when
//!   the upstream pauses. `gzip` / `deflate` / `br` / `zstd` bodies are
//!   decoded (bounded), masked and re-encoded for a client that accepts it.
//! - [`MaskingMakeWriter`]: a `tracing-subscriber` writer wrapper so logs
//!   and error messages never carry PII.
//! - [`PiiMetrics`]: Prometheus counters; [`PiiConfig`]: serde configuration.
//! - [`checksum`]: Luhn, Verhoeff and IBAN mod-97.
//!
//! # Example
//!
//! ```
//! use palisade_pii::PiiMasker;
//!
//! let masker = PiiMasker::new();
//! let text = "Call 9876543210 or mail user@example.com, card 4111111111111111, \
//!             PAN ABCDE1234F, Aadhaar 2345 6789 0124";
//! assert_eq!(
//!     masker.mask_str(text),
//!     "Call 98******10 or mail us***@example.com, card 4111********1111, \
//!      PAN ABC*****4F, Aadhaar 2345 **** 0124"
//! );
//! ```
//!
//! # Overlaps
//!
//! Matches never overlap. The leftmost match wins; at the same position the
//! pattern earlier in [`PatternKind::ALL`] wins (bearer, JWT, API key,
//! e-mail, IBAN, card, Aadhaar, SSN, phone, PAN, IPv6, IPv4, then custom
//! patterns in the order given). A candidate that fails its validation (a
//! checksum, an SSN rule, a context check such as "these 12 digits are part
//! of a longer group") gives the lower-priority patterns an anchored try at
//! the same position before the scan moves on one character, so a failed
//! card never hides the phone number or the Aadhaar it might contain.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod checksum;
mod config;
mod error;
mod fields;
mod fieldstream;
mod json;
mod layer;
mod log;
mod masker;
mod metrics;
mod operator;
mod pattern;
mod prefilter;
mod stream;

pub use config::{Direction, Oversize, PiiConfig};
pub use error::PiiError;
pub use layer::{PiiMask, PiiMaskLayer, ResponseFuture};
pub use log::{MaskingMakeWriter, MaskingWriter};
pub use metrics::PiiMetrics;
pub use stream::{StreamMasker, TokenTooLong};

pub use masker::{
    BuildError, CustomPattern, DEFAULT_SENSITIVE_FIELDS, MaskStats, MaskingConfig, PiiMasker,
    PiiMaskerBuilder, REDACTED,
};
pub use operator::{CustomFn, Operator};
pub use pattern::PatternKind;
