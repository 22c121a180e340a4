//! Tests: fallback.
