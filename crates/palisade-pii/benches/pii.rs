//! Placeholder so the workspace manifest loads; the real bench replaces it.
fn main() {}
