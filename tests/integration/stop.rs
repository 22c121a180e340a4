//! Tests: stop.
