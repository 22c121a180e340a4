//! Tests: journal.
