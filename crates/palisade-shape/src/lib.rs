//! palisade-shape (under construction).
