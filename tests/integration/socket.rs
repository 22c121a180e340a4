//! Tests: socket.
