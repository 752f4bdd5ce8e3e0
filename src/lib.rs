//! palisade: Tower middleware for production services (under construction).
