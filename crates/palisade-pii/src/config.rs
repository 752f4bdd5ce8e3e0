//! The layer's configuration.

use crate::masker::MaskingConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which bodies the layer masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Direction {
    /// Request bodies only (e.g. on a client, before a prompt leaves for an
    /// LLM provider).
    Request,
    /// Response bodies only (the default: what leaves a server).
    #[default]
    Response,
    /// Both.
    Both,
}

impl Direction {
    pub(crate) fn requests(self) -> bool {
        matches!(self, Direction::Request | Direction::Both)
    }

    pub(crate) fn responses(self) -> bool {
        matches!(self, Direction::Response | Direction::Both)
    }
}

/// What happens to a text body over the buffering limit. Never passes it
/// through unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Oversize {
    /// Answer `413 Payload Too Large` (the default).
    #[default]
    Refuse,
    /// Mask it as a text stream, chunk by chunk with an overlap window;
    /// JSON's sensitive field values are redacted as they pass, as in a
    /// whole document.
    Stream,
}

/// Configuration of [`PiiMaskLayer`](crate::PiiMaskLayer) (serde, `Default` =
/// the SPEC defaults).
///
/// ```
/// use palisade_pii::{Direction, Oversize, PiiConfig};
/// let c: PiiConfig = serde_json::from_str(
///     r#"{"direction": "both", "max_body_bytes": 65536, "oversize": "stream",
///         "masking": {"disabled": ["ipv4"]}}"#,
/// ).unwrap();
/// assert_eq!(c.direction, Direction::Both);
/// assert_eq!(c.oversize, Oversize::Stream);
/// assert_eq!(PiiConfig::default().max_body_bytes, 1 << 20);
/// // A typo is an error, never ignored.
/// assert!(serde_json::from_str::<PiiConfig>(r#"{"max_body_byte": 1}"#).is_err());
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PiiConfig {
    /// `false` turns masking off: bodies pass untouched (default `true`).
    pub enabled: bool,
    /// Which bodies are masked (default: responses).
    pub direction: Direction,
    /// The most a body is buffered to be masked whole (default 1 MiB).
    pub max_body_bytes: usize,
    /// What happens over that limit (default: refuse with 413).
    pub oversize: Oversize,
    /// Overlap kept between chunks when streaming (default 256 bytes).
    pub stream_window: usize,
    /// A text stream (chunked text other than SSE / NDJSON) that pauses this
    /// long has what is held masked and sent, so a slow trickle is never
    /// stuck (default 50 ms; `0s`: only when the window is full or at the
    /// end). A value split across such a pause is masked in parts.
    #[serde(with = "humantime_serde")]
    pub stream_idle_flush: Duration,
    /// The largest server-sent event or NDJSON line held to be masked whole
    /// (default 64 KiB); a larger one is masked as text with the overlap
    /// window, never sent unmasked.
    pub max_event_bytes: usize,
    /// Answer a compressed body (decoded to be masked) in the same coding
    /// when the client accepts it (default on); off, or for a client that
    /// does not accept it, the answer is identity. Off when a compression
    /// layer outside encodes answers anyway (the gateway does).
    pub reencode: bool,
    /// What is masked and how.
    pub masking: MaskingConfig,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            direction: Direction::Response,
            max_body_bytes: 1 << 20,
            oversize: Oversize::Refuse,
            stream_window: 256,
            stream_idle_flush: Duration::from_millis(50),
            max_event_bytes: 64 * 1024,
            reencode: true,
            masking: MaskingConfig::default(),
        }
    }
}
