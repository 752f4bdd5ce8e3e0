//! palisade-ratelimit (under construction).
