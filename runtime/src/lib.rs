//! lortflow runtime.
