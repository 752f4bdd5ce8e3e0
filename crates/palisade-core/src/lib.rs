//! palisade-core (under construction).
