//! Placeholder so the workspace manifest loads; the breaker bench replaces it.
fn main() {}
