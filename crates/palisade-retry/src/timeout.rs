//! Timeout (to do).
