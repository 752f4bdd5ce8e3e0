//! palisade-store (under construction).
