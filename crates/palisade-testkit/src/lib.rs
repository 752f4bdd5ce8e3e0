//! palisade-testkit (under construction).
