//! lortflow stages.
