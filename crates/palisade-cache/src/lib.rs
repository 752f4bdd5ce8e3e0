//! palisade-cache (under construction).
