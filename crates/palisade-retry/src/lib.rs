//! palisade-retry (under construction).
