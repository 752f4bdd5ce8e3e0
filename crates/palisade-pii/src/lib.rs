//! palisade-pii (under construction).
