//! Configuration helpers shared by every layer's serde `Config`.
//!
//! Durations are written the way people write them ("250ms", "60s", "5m").
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     #[serde(with = "palisade_core::config::duration")]
//!     recovery_timeout: Duration,
//! }
//!
//! let c: Config = serde_json::from_str(r#"{"recovery_timeout": "1m 30s"}"#).unwrap();
//! assert_eq!(c.recovery_timeout, Duration::from_secs(90));
//! ```

/// serde `with` module for a `Duration` ("60s", "250ms", "1h 5m").
pub use humantime_serde as duration;
