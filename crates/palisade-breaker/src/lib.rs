//! palisade-breaker (under construction).
