//! lortflow language.
