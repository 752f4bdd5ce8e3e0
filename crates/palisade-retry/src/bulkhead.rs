//! Bulkhead (to do).
