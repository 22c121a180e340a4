//! Tests: targets.
