//! Configuration: a serde [`MicroBatchConfig`] with the `batch_processor`
//! defaults, and [`MicroBatchLayer::from_config`].

use crate::{Batcher, MicroBatchLayer};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Micro-batch settings, as read from a file or the environment.
///
/// ```
/// use palisade_microbatch::{MicroBatchConfig, MicroBatchLayer, batch_fn};
///
/// let cfg: MicroBatchConfig =
///     serde_json::from_str(r#"{"max_batch_size": 64, "max_wait": "20ms"}"#).unwrap();
/// assert_eq!(cfg.max_queue, 1000);
/// let layer = MicroBatchLayer::from_config(
///     &cfg,
///     batch_fn(|xs: Vec<u32>| xs, |ys: Vec<u32>, _| ys.into_iter().map(Ok::<_, ()>).collect()),
/// );
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MicroBatchConfig {
    /// A batch is sent as soon as it holds this many calls (default 100).
    pub max_batch_size: usize,
    /// A batch is sent at the latest this long after its first call
    /// (default 1 s).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Calls that may wait at once (default 1000); one more is refused.
    pub max_queue: usize,
}

impl Default for MicroBatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 100,
            max_wait: Duration::from_secs(1),
            max_queue: 1000,
        }
    }
}

impl MicroBatchConfig {
    /// The range checks: `(field, what is wrong)`.
    ///
    /// ```
    /// let mut cfg = palisade_microbatch::MicroBatchConfig::default();
    /// cfg.max_batch_size = 0;
    /// assert_eq!(cfg.validate().unwrap_err().0, "max_batch_size");
    /// ```
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_batch_size == 0 {
            return Err(("max_batch_size", "must be at least 1"));
        }
        if self.max_queue == 0 {
            return Err(("max_queue", "must be at least 1"));
        }
        if self.max_wait > Duration::from_secs(3600) {
            return Err(("max_wait", "must be at most 1 hour"));
        }
        Ok(())
    }
}

impl<B: Batcher<Req>, Req> MicroBatchLayer<B, Req> {
    /// The layer `cfg` describes around `batcher` (check `cfg` with
    /// [`MicroBatchConfig::validate`] first: out-of-range values are raised
    /// to 1 here).
    pub fn from_config(cfg: &MicroBatchConfig, batcher: B) -> Self {
        Self::new(batcher)
            .max_batch_size(cfg.max_batch_size)
            .max_wait(cfg.max_wait)
            .max_queue(cfg.max_queue)
    }
}
