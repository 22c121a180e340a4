//! STUB until the `trail` branch lands (replaced by its mod.rs at the merge).
pub mod net;
