//! The layer's configuration.

use crate::masker::MaskingConfig;
use serde::{Deserialize, Serialize};

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
    /// Mask it as a text stream, chunk by chunk with an overlap window
    /// (JSON too: patterns are caught, field names are not).
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
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PiiConfig {
    /// Which bodies are masked (default: responses).
    pub direction: Direction,
    /// The most a body is buffered to be masked whole (default 1 MiB).
    pub max_body_bytes: usize,
    /// What happens over that limit (default: refuse with 413).
    pub oversize: Oversize,
    /// Overlap kept between chunks when streaming (default 256 bytes).
    pub stream_window: usize,
    /// What is masked and how.
    pub masking: MaskingConfig,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            direction: Direction::Response,
            max_body_bytes: 1 << 20,
            oversize: Oversize::Refuse,
            stream_window: 256,
            masking: MaskingConfig::default(),
        }
    }
}
